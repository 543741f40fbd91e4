//! Running a scenario and what came of it: the client's view, nginx's logs, the agent's
//! incidents and metrics, and the checks that hold them against each other.
//!
//! One run goes through these steps, each in a module of its own:
//! [`drive`] makes the requests and injects the fault; [`detect`] times how soon the
//! agent's incident became queryable; [`gather`] waits until the agent has counted what
//! nginx logged and collects both records into an [`Outcome`]; [`check`] holds the
//! outcome to the scenario's expectations; [`report`] puts it in words.

mod check;
mod detect;
mod drive;
mod gather;
mod report;

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;

use super::{
    client::Exchange,
    logs::{AccessLog, ErrorLog},
    metrics, Interrupted, Lab, Scenario,
};

/// The metric of the responses nginx sent, by status code.
pub const RESPONSES_METRIC: &str = "why502_http_responses_total";
/// An incident must be queryable this soon after the failure that opened it.
pub const DETECTION_LIMIT: Duration = Duration::from_secs(1);
/// The agent opens an incident at this many failures within a second.
const OPEN_THRESHOLD: usize = 5;

/// What one scenario run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: Scenario,
    /// From the agent's start to the end of the checks (teardown not included).
    pub elapsed: Duration,
    pub upstream: String,
    /// Backends in start order (a restarted one after the first).
    pub backend_pids: Vec<u32>,
    pub nginx_worker_pid: Option<u32>,
    /// Every request the client made.
    pub exchanges: Vec<Exchange>,
    /// nginx's counts: access.log statuses, error.log failures by the agent's kind names.
    pub access: AccessLog,
    pub errors: ErrorLog,
    /// The agent's incidents for this upstream (`why502 incidents --json --upstream`).
    pub incidents: Vec<Value>,
    /// Incidents of this nginx for other upstreams (or for none: 5xx alone), which a
    /// scenario should not cause.
    pub stray_incidents: Vec<Value>,
    /// `why502 explain ID --json` of the (first) incident.
    pub incident: Option<Value>,
    /// `why502 explain --last` as a human reads it.
    pub explain_text: String,
    /// From the response that was nginx's 5th logged failure to the incident being
    /// queryable through the CLI (polled every 50 ms).
    pub detection: Option<Duration>,
    /// Increase of `why502_http_responses_total{proxy="nginx",code}` over the run, for 502
    /// and 504; `None` when the agent does not export the series.
    pub responses_delta: BTreeMap<u16, Option<f64>>,
    pub error_log: String,
    pub agent_log: Vec<String>,
    /// The agent's events about the upstream's listeners and the backends' processes, and
    /// the first failures.
    pub listener_events: Vec<Value>,
    /// Events the agent's correlation missed because it fell behind (a busy host: then
    /// counts can come up short and causes miss their evidence).
    pub uncorrelated_events: u64,
    /// Incidents the agent opened during the run, for any proxy and upstream.
    pub host_incidents: usize,
}

pub(super) fn exercise(lab: &mut Lab) -> Result<Outcome, Interrupted> {
    let say = lab.narrator;
    let scenario = lab.scenario;
    let upstream = lab.topology.upstream.clone();

    let mut exchanges: Vec<Exchange> = drive::warm_up(lab).into_iter().collect();
    let before = metrics::scrape(lab.agent.metrics_addr()).unwrap_or_default();
    let detector = detect::Detector::spawn(lab.agent.socket(), upstream.clone());
    exchanges.extend(drive::run_fault(lab)?);
    exchanges.sort_by_key(|e| e.seq);
    say.say(format!(
        "client got: {}",
        report::client_summary(&exchanges)
    ));

    let (incidents, errors) = gather::settled_incidents(lab, &upstream)?;
    say.say(format!(
        "agent: {} incident(s) for {upstream}{}",
        incidents.len(),
        incidents
            .first()
            .map(|i| format!(
                ", {} failures counted (nginx logged {})",
                i["failures"],
                errors.total()
            ))
            .unwrap_or_default()
    ));
    let detection_seen = detector.finish();
    let nginx = &lab.topology.nginx;
    let access = AccessLog::parse(&nginx.access_log());
    let responses_delta = gather::responses_delta(lab, &before, &access)?;
    let (host_incidents, stray_incidents) = gather::host_incidents(lab, &upstream);
    let incident = gather::explained(lab, &incidents);
    let explain_text = gather::explain_text(lab, incident.as_ref());
    let detection = detect::detection_time(detection_seen, &exchanges, &errors);
    let listener_events = gather::listener_events(lab);

    let nginx = &lab.topology.nginx;
    let outcome = Outcome {
        scenario,
        elapsed: say.elapsed(),
        upstream,
        backend_pids: lab.topology.backends.iter().map(|b| b.pid).collect(),
        nginx_worker_pid: nginx.worker_pid(),
        exchanges,
        access,
        errors,
        incidents,
        stray_incidents,
        incident,
        explain_text,
        detection,
        responses_delta,
        error_log: nginx.error_log(),
        agent_log: lab.agent.log(),
        listener_events,
        uncorrelated_events: gather::uncorrelated_events(&lab.agent.log()),
        host_incidents,
    };
    for line in outcome.summary().lines() {
        say.say(line);
    }
    Ok(outcome)
}

impl Outcome {
    /// The top cause's name, if there is an incident.
    pub fn top_cause(&self) -> Option<&str> {
        self.incident.as_ref()?["causes"][0]["cause"].as_str()
    }
}

/// An incident's `failure_kinds`: failures by the agent's kind names.
fn kinds_of(incident: &Value) -> BTreeMap<String, u64> {
    incident["failure_kinds"]
        .as_object()
        .map(|kinds| {
            kinds
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}
