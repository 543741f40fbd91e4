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
/// The proxy's responses whose counts are held to its access log: its 200s too, which the
/// agent counts as it counts the rest (and which every scenario with a backend has).
pub const RESPONSE_CODES: [u16; 4] = [200, 502, 503, 504];
/// The proxy's answers for an upstream it could not use, counted on the incident
/// (`responses`).
pub const BAD_GATEWAY_CODES: [u16; 3] = [502, 503, 504];
/// An incident must be queryable this soon after the failure that opened it.
pub const DETECTION_LIMIT: Duration = Duration::from_secs(1);
/// The same for an incident of 5xx responses alone ([`Scenario::responses_only`]), which
/// waits for what the kernel counts: up to 250 ms until the responses are polled, their
/// 500 ms grace (for failures that might still come), 250 ms to the engine's next tick, and
/// the CLI's 50 ms poll.
pub const RESPONSES_DETECTION_LIMIT: Duration = Duration::from_millis(1500);

/// The example configuration, which says the agent's defaults (the agent's test
/// `the_example_config_is_valid_and_says_the_defaults` holds it to `Config::default()`),
/// and the lab's agent runs with the default `[incidents]`.
const EXAMPLE_CONFIG: &str = include_str!("../../../../deploy/why502.toml");

/// The agent opens an incident at this many failures of a proxy within its window
/// (`incidents.open_threshold`): detection is timed from the response of the failure that
/// made this many (strong evidence, a listener gone or its owner or a worker dead, opens
/// it sooner). Read from [`EXAMPLE_CONFIG`] rather than from `why502::config`: the tests
/// crate cannot depend on the agent, whose tests depend on it.
pub fn open_threshold() -> usize {
    static THRESHOLD: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THRESHOLD.get_or_init(|| {
        config_value(EXAMPLE_CONFIG, "incidents", "open_threshold")
            .and_then(|v| v.parse().ok())
            .expect("deploy/why502.toml: [incidents] open_threshold = N")
    })
}

/// The value of `key` in `[section]` of a TOML text (a bare value: a number or a word),
/// without its comment.
fn config_value<'a>(toml: &'a str, section: &str, key: &str) -> Option<&'a str> {
    let header = format!("[{section}]");
    toml.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim())
        })
}

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
    /// From the response that was nginx's [`open_threshold`]-th logged failure (or 5xx, see
    /// [`Scenario::responses_only`]) to the
    /// incident being queryable through the CLI (polled every 50 ms).
    pub detection: Option<Duration>,
    /// What the agent did not answer, or answered with something unreadable (a CLI call
    /// that failed, a scrape of its metrics, its status): each a failed check, since no
    /// answer must not pass for "no incident" or "nothing counted".
    pub agent_faults: Vec<String>,
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
    /// Processes of the proxy's name on the host that are not the lab's: the agent's
    /// `proxy` label and its flows name proxies by name, so their responses and failures
    /// count with the lab's (host noise, for the report).
    pub other_proxies: Vec<u32>,
}

pub(super) fn exercise(lab: &mut Lab) -> Result<Outcome, Interrupted> {
    let say = lab.narrator;
    let scenario = lab.scenario;
    let upstream = lab.topology.upstream.clone();

    let mut faults = Vec::new();
    // Before the first request: every response of the run is in the increase, as every
    // one is in access.log.
    let before = metrics::scrape(lab.agent.metrics_addr()).unwrap_or_else(|| {
        faults.push("GET /metrics failed before the run".to_string());
        String::new()
    });
    let mut exchanges: Vec<Exchange> = drive::warm_up(lab).into_iter().collect();
    let detector = detect::Detector::spawn(lab.agent.socket(), upstream.clone());
    exchanges.extend(drive::run_fault(lab)?);
    exchanges.sort_by_key(|e| e.seq);
    say.say(format!(
        "client got: {}",
        report::client_summary(&exchanges)
    ));

    let (incidents, errors) = gather::settled_incidents(lab, &upstream, &mut faults)?;
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
    let detection_seen = detector.finish(!incidents.is_empty());
    let access = lab.topology.front.access();
    let responses_delta = gather::responses_delta(lab, &before, &access, &mut faults)?;
    let last_response = exchanges.iter().map(|e| e.done).max();
    let (host_incidents, stray_incidents) =
        gather::host_incidents(lab, &upstream, last_response, &mut faults)?;
    let incident = gather::explained(lab, &incidents, &mut faults);
    let explain_text = gather::explain_text(lab, incident.as_ref());
    gather::check_alive(lab, &mut faults);
    let detection = detect::detection_time(scenario, detection_seen, &exchanges, &errors);
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
        agent_faults: faults,
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
        other_proxies: gather::other_proxies(lab),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_key_of_one_section() {
        let toml =
            "[a]\nopen_threshold = 9\n[incidents]\n# open_threshold = 7\nwindow_ms = 1 # x\n\
                    open_threshold = 5   # comment\n[b]\nopen_threshold = 8\n";
        assert_eq!(config_value(toml, "incidents", "open_threshold"), Some("5"));
        assert_eq!(config_value(toml, "incidents", "window_ms"), Some("1"));
        assert_eq!(config_value(toml, "incidents", "missing"), None);
        assert_eq!(config_value(toml, "none", "open_threshold"), None);
        // The example's value, whatever it is (a copy of it here would be the copied
        // constant this replaces): it parses, and the agent refuses 0.
        assert!(open_threshold() > 0);
    }
}
