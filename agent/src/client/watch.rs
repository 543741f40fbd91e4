//! `why502 watch`: polls the incidents every second and prints what changed, until Ctrl-C.
//! An agent that goes away meanwhile (a restart) is waited for, not given up on.

use std::{collections::HashMap, time::Duration};

use serde_json::json;

use super::{
    print,
    render::{self, Change, Style},
    ApiClient, ClientError, IncidentQuery,
};
use crate::{
    cli::WatchArgs,
    model::incident::{Cause, Confidence, Incident, IncidentState},
    sinks::store::MAX_LIMIT,
};

const POLL_INTERVAL: Duration = Duration::from_secs(1);

pub async fn watch(args: WatchArgs) -> Result<(), ClientError> {
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => {
            interrupted.map_err(|source| ClientError::Signal { source })
        }
        failed = poll(args) => failed,
    }
}

async fn poll(args: WatchArgs) -> Result<(), ClientError> {
    let client = ApiClient::new(&args.api.socket);
    let json = args.api.json;
    let style = Style::for_stdout();
    // Incidents still open when the watch starts, and those that change after.
    let since = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    let query = IncidentQuery {
        since: Some(since),
        limit: Some(MAX_LIMIT),
        ..IncidentQuery::default()
    };
    let mut tracker = Tracker::default();
    // The first answer must come: watching an agent that is not there would look like
    // a quiet host.
    let mut answer: Result<_, ClientError> = Ok(client.incidents(&query).await?);
    if !json {
        eprintln!("Watching for incidents (Ctrl-C to stop)…");
    }
    let mut unreachable = false;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        match answer {
            Ok(incidents) => {
                if unreachable {
                    eprintln!("why502: the agent answers again");
                    unreachable = false;
                }
                for (change, incident) in tracker.update(&incidents) {
                    if json {
                        let line = json!({ "change": change.name(), "incident": incident });
                        print(&render::terminal_safe_json(&line.to_string()))?;
                    } else {
                        print(&render::watch_line(change, incident, &style))?;
                    }
                }
            }
            Err(err) if err.is_unreachable() => {
                if !unreachable {
                    eprintln!(
                        "why502: {}; retrying every second",
                        crate::error_chain(&err)
                    );
                    unreachable = true;
                }
            }
            Err(err) => return Err(err),
        }
        ticker.tick().await;
        answer = client.incidents(&query).await;
    }
}

/// What an incident looked like at the last poll: the fields whose change is news.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    state: IncidentState,
    failures: u64,
    top: Option<(Cause, Confidence)>,
}

impl Snapshot {
    fn of(incident: &Incident) -> Self {
        Self {
            state: incident.state,
            failures: incident.failures,
            top: incident.top_cause().map(|c| (c.cause, c.confidence)),
        }
    }
}

/// Turns successive incident lists into changes.
#[derive(Debug, Default)]
struct Tracker {
    known: HashMap<u64, Snapshot>,
}

impl Tracker {
    /// The changes since the last call, oldest incident first. An incident not seen before
    /// has opened (and, if it is already closed, closed too).
    fn update<'a>(&mut self, incidents: &'a [Incident]) -> Vec<(Change, &'a Incident)> {
        let mut changes = Vec::new();
        // The API lists newest first.
        for incident in incidents.iter().rev() {
            let now = Snapshot::of(incident);
            let before = self.known.insert(incident.id, now.clone());
            let closed = now.state == IncidentState::Closed;
            match before {
                None => {
                    changes.push((Change::Opened, incident));
                    if closed {
                        changes.push((Change::Closed, incident));
                    }
                }
                Some(before) if before == now => {}
                Some(before) if closed && before.state == IncidentState::Open => {
                    changes.push((Change::Closed, incident));
                }
                Some(_) => changes.push((Change::Updated, incident)),
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::store::testing;

    fn open(id: u64, failures: u64) -> Incident {
        let mut incident = testing::recent_incident(id, 1);
        incident.state = IncidentState::Open;
        incident.closed_at = None;
        incident.failures = failures;
        incident
    }

    fn changes(tracker: &mut Tracker, incidents: &[Incident]) -> Vec<(Change, u64)> {
        tracker
            .update(incidents)
            .into_iter()
            .map(|(change, incident)| (change, incident.id))
            .collect()
    }

    #[test]
    fn opens_updates_and_closes_are_reported_once() {
        let mut tracker = Tracker::default();
        assert_eq!(changes(&mut tracker, &[]), []);
        assert_eq!(changes(&mut tracker, &[open(1, 5)]), [(Change::Opened, 1)]);
        assert_eq!(changes(&mut tracker, &[open(1, 5)]), []);
        assert_eq!(changes(&mut tracker, &[open(1, 9)]), [(Change::Updated, 1)]);

        let mut recaused = open(1, 9);
        recaused.causes.swap(0, 1);
        assert_eq!(
            changes(&mut tracker, &[recaused.clone()]),
            [(Change::Updated, 1)]
        );

        let mut closed = recaused;
        closed.state = IncidentState::Closed;
        closed.closed_at = Some(closed.last_failure_at);
        // Newest first, as the API answers: 2 opened after 1 closed... and is reported after.
        assert_eq!(
            changes(&mut tracker, &[open(2, 5), closed.clone()]),
            [(Change::Closed, 1), (Change::Opened, 2)]
        );
        assert_eq!(changes(&mut tracker, &[open(2, 5), closed]), []);
    }

    #[test]
    fn an_incident_over_between_polls_opens_and_closes() {
        let mut tracker = Tracker::default();
        let brief = testing::recent_incident(7, 1);
        assert_eq!(
            changes(&mut tracker, &[brief]),
            [(Change::Opened, 7), (Change::Closed, 7)]
        );
    }
}
