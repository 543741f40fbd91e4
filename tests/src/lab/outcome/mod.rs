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

/// The metric of the responses the proxy sent, by status code.
pub const RESPONSES_METRIC: &str = "why502_http_responses_total";
/// The proxy's responses whose counts are held to its access log.
pub const RESPONSE_CODES: [u16; 3] = [502, 503, 504];
/// An incident must be queryable this soon after the failure that opened it.
pub const DETECTION_LIMIT: Duration = Duration::from_secs(1);
/// The agent opens an incident at this many failures of a proxy within its window
/// (`incidents.open_threshold`, `incidents.window_ms` 30 s): detection is timed from the
/// response of the failure that made this many (strong evidence, a listener gone or its
/// owner or a worker dead, opens it sooner).
const OPEN_THRESHOLD: usize = 3;

/// What one scenario run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: Scenario,
    /// From the agent's start to the end of the checks (teardown not included).
    pub elapsed: Duration,
    pub upstream: String,
    /// Backends in start order (a restarted one after the first).
    pub backend_pids: Vec<u32>,
    /// Workers of the first backend the fault killed (a pre-forking backend), or the
    /// php-fpm workers its log says died.
    pub killed_workers: Vec<u32>,
    /// The proxy as the agent names it (its `proxy` label): `nginx` or `haproxy`.
    pub proxy: &'static str,
    /// What the summary calls the proxy's records: its statuses and its upstream errors
    /// (`nginx access.log`, `nginx error.log`).
    pub record_names: (&'static str, &'static str),
    /// The proxy's process that connects upstream: nginx's worker, or HAProxy.
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
    /// From the response that was nginx's [`OPEN_THRESHOLD`]-th logged failure to the
    /// incident being queryable through the CLI (polled every 50 ms).
    pub detection: Option<Duration>,
    /// Increase of `why502_http_responses_total{proxy,code}` over the run, for
    /// [`RESPONSE_CODES`]; `None` when the agent does not export the series.
    pub responses_delta: BTreeMap<u16, Option<f64>>,
    /// The proxy's log of upstream errors (nginx's error.log, HAProxy's log).
    pub error_log: String,
    /// php-fpm's log, for the php-fpm scenarios (empty otherwise).
    pub backend_log: String,
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
                ", {} failures counted ({} logged {})",
                i["failures"],
                lab.topology.front.name(),
                errors.total()
            ))
            .unwrap_or_default()
    ));
    let detection_seen = detector.finish();
    let access = lab.topology.front.access();
    let responses_delta = gather::responses_delta(lab, &before, &access)?;
    let (host_incidents, stray_incidents) = gather::host_incidents(lab, &upstream);
    let incident = gather::explained(lab, &incidents);
    let explain_text = gather::explain_text(lab, incident.as_ref());
    let detection = detect::detection_time(detection_seen, &exchanges, &errors);
    let listener_events = gather::listener_events(lab);

    let front = &lab.topology.front;
    let outcome = Outcome {
        scenario,
        elapsed: say.elapsed(),
        upstream,
        backend_pids: lab.topology.backends.iter().map(|b| b.pid).collect(),
        killed_workers: lab.topology.killed_workers.clone(),
        proxy: front.name(),
        record_names: front.record_names(),
        nginx_worker_pid: front.worker_pid(),
        exchanges,
        access,
        errors,
        incidents,
        stray_incidents,
        incident,
        explain_text,
        detection,
        responses_delta,
        error_log: front.log_text(),
        backend_log: lab
            .topology
            .phpfpm
            .as_ref()
            .map(|fpm| fpm.log())
            .unwrap_or_default(),
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

/// An incident's `responses`: the proxy's 5xx by status code.
fn responses_of(incident: &Value) -> BTreeMap<u16, u64> {
    incident["responses"]
        .as_object()
        .map(|codes| {
            codes
                .iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_u64().unwrap_or(0))))
                .collect()
        })
        .unwrap_or_default()
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
