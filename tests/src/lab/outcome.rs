//! Running a scenario and what came of it: the client's view, nginx's logs, the agent's
//! incidents and metrics, and the checks that hold them against each other.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{
    client::Exchange,
    logs::{AccessLog, ErrorLog},
    metrics, pause,
    topology::{status_text, BACKEND_IDLE_MS, EXHAUSTION_REQUESTS, KEEPALIVE, SLOW_MS},
    Culprit, Interrupted, Lab, Scenario,
};

/// The metric of the responses nginx sent, by status code.
pub const RESPONSES_METRIC: &str = "why502_http_responses_total";
/// An incident must be queryable this soon after the failure that opened it.
pub const DETECTION_LIMIT: Duration = Duration::from_secs(1);
/// The agent opens an incident at this many failures within a second.
const OPEN_THRESHOLD: usize = 5;
/// How long the agent gets to count everything nginx logged.
const SETTLE: Duration = Duration::from_secs(3);

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
    let client = lab.topology.client.clone();
    let mut exchanges = Vec::new();

    let serves_first = !matches!(
        scenario,
        Scenario::WrongPort
            | Scenario::MissingUnixSocket
            | Scenario::UnixBacklogFull
            | Scenario::TcpBacklogOverflow
    );
    if serves_first && scenario != Scenario::KeepaliveRace {
        let warm = client.request("GET", "/");
        say.say(format!("check: GET / → {}", status_text(&warm.status)));
        assert_eq!(
            warm.status,
            Ok(200),
            "nginx does not reach the backend before the fault:\n{}",
            lab.topology.nginx.error_log()
        );
        exchanges.push(warm);
    }
    let before = metrics::scrape(lab.agent.metrics_addr()).unwrap_or_default();
    let detector = Detector::spawn(lab.agent.socket(), upstream.clone());

    match scenario {
        Scenario::Crash
        | Scenario::Oom
        | Scenario::Deploy
        | Scenario::FirewallReject
        | Scenario::FirewallDrop
        | Scenario::Healthy => {
            let duration = match scenario {
                Scenario::Deploy => Duration::from_millis(3500),
                Scenario::Healthy => Duration::from_secs(2),
                _ => Duration::from_millis(2500),
            };
            let load = lab.load(duration);
            pause(Duration::from_millis(500))?;
            exchanges.extend(lab.inject()?);
            if scenario == Scenario::Deploy {
                say.say("deploy: the new version starts in 2 s");
                pause(Duration::from_secs(2))?;
                lab.topology.restart_backend(&say);
            }
            exchanges.extend(load.finish());
        }
        Scenario::WrongPort
        | Scenario::MissingUnixSocket
        | Scenario::UnixBacklogFull
        | Scenario::TcpBacklogOverflow => {
            exchanges.extend(lab.inject()?);
            exchanges.extend(lab.load(Duration::from_millis(1500)).finish());
        }
        Scenario::KeepaliveRace => {
            say.say(format!(
                "warm-up: {KEEPALIVE} concurrent GET /slow/200: nginx opens {KEEPALIVE} upstream \
                 connections and keeps them"
            ));
            exchanges.extend(client.burst(KEEPALIVE as usize, "GET", "/slow/200"));
            exchanges.extend(lab.inject()?);
            say.say(format!(
                "idle for 1.2 s: past the backend's {BACKEND_IDLE_MS} ms idle timeout, within \
                 nginx's keepalive_timeout"
            ));
            pause(Duration::from_millis(1200))?;
            say.say(format!(
                "burst: {KEEPALIVE} concurrent POST / (not retried by nginx once sent)"
            ));
            exchanges.extend(client.burst(KEEPALIVE as usize, "POST", "/"));
        }
        Scenario::PortExhaustion => {
            exchanges.extend(lab.inject()?);
            say.say(format!(
                "burst: {EXHAUSTION_REQUESTS} concurrent GET /slow/{SLOW_MS}, no upstream keepalive"
            ));
            exchanges.extend(client.burst(EXHAUSTION_REQUESTS, "GET", &format!("/slow/{SLOW_MS}")));
        }
    }
    exchanges.sort_by_key(|e| e.seq);
    say.say(format!("client got: {}", client_summary(&exchanges)));

    // Settle: the agent has counted everything nginx logged, or SETTLE has passed.
    let nginx = &lab.topology.nginx;
    let mut errors;
    let expects_incident = !scenario.expected_causes().is_empty();
    let deadline = Instant::now() + SETTLE;
    let mut incidents;
    loop {
        incidents = cli_json(lab, &["incidents", "--json", "--upstream", &upstream])
            .and_then(|v| v["incidents"].as_array().cloned())
            .unwrap_or_default();
        errors = ErrorLog::parse(&nginx.error_log());
        let counted = incidents.len() == 1 && kinds_of(&incidents[0]) == errors.kinds;
        if (expects_incident && counted) || Instant::now() > deadline {
            break;
        }
        pause(Duration::from_millis(100))?;
    }
    // Incidents come newest first: the first one opened is the last.
    incidents.reverse();
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
    let access = AccessLog::parse(&nginx.access_log());
    let deltas = |text: &str| -> BTreeMap<u16, Option<f64>> {
        [502u16, 504]
            .into_iter()
            .map(|code| {
                let count = |t: &str| {
                    metrics::sum(
                        t,
                        RESPONSES_METRIC,
                        &[("proxy", "nginx"), ("code", &code.to_string())],
                    )
                };
                let after = count(text);
                (code, after.map(|a| a - count(&before).unwrap_or(0.0)))
            })
            .collect()
    };
    let deadline = Instant::now() + SETTLE;
    let responses_delta = loop {
        let after = metrics::scrape(lab.agent.metrics_addr()).unwrap_or_default();
        let delta = deltas(&after);
        let equal = delta
            .iter()
            .all(|(code, d)| d.unwrap_or(0.0) == access.count(*code) as f64);
        if equal || Instant::now() > deadline {
            break delta;
        }
        pause(Duration::from_millis(100))?;
    };

    let all = cli_json(lab, &["incidents", "--json"])
        .and_then(|v| v["incidents"].as_array().cloned())
        .unwrap_or_default();
    let host_incidents = all.len();
    // This nginx's (other nginx processes on the host share its name, not its worker).
    let worker = nginx.worker_pid();
    let stray_incidents = all
        .into_iter()
        .filter(|i| {
            i["proxy"]["pid"].as_u64() == worker.map(u64::from)
                && i["upstream"] != upstream.as_str()
        })
        .collect();
    let incident = incidents.first().and_then(|i| {
        let id = i["id"].as_u64()?.to_string();
        cli_json(lab, &["explain", &id, "--json"])
    });
    // `explain --last`, unless something else on the host opened a later incident: then
    // this scenario's own, by id.
    let last_id = cli_json(lab, &["explain", "--last", "--json"]).and_then(|i| i["id"].as_u64());
    let own_id = incident.as_ref().and_then(|i| i["id"].as_u64());
    let explain_text = {
        let id = own_id.map(|id| id.to_string());
        let args = match (&id, own_id == last_id) {
            (Some(id), false) => vec!["explain", id.as_str()],
            _ => vec!["explain", "--last"],
        };
        let out = lab.agent.cli(&args);
        format!(
            "{}{}{}",
            if args[1] == "--last" {
                String::new()
            } else {
                format!("(not the last incident: why502 {})\n", args.join(" "))
            },
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    // From the response that made nginx's 5th counted failure to the incident's appearance.
    let mut failed: Vec<&Exchange> = exchanges
        .iter()
        .filter(|e| errors.requests.contains_key(&e.seq))
        .collect();
    failed.sort_by_key(|e| e.done);
    let detection = match (detection_seen, failed.get(OPEN_THRESHOLD - 1)) {
        (Some(seen), Some(fifth)) => Some(seen.saturating_duration_since(fifth.done)),
        _ => None,
    };

    let listener_events = {
        let pids: Vec<u64> = lab
            .topology
            .backends
            .iter()
            .map(|b| u64::from(b.pid))
            .collect();
        let endpoint = lab
            .topology
            .upstream
            .trim_start_matches("unix:")
            .to_string();
        let failures = std::cell::Cell::new(0);
        lab.agent.events(|e| {
            let kind = e["kind"].as_str().unwrap_or_default();
            // The first few failures too, to compare their times with the listener's.
            let failure = matches!(
                kind,
                "tcp_connect_failure" | "connect_syscall_error" | "tcp_reset_received"
            ) && e["dst"].as_str() == Some(upstream.as_str());
            if failure && failures.get() < 3 {
                failures.set(failures.get() + 1);
                return true;
            }
            let about_endpoint = e["endpoint"].as_str() == Some(endpoint.as_str())
                || e["path"].as_str() == Some(endpoint.as_str());
            let about_backend = e["process"]["pid"]
                .as_u64()
                .is_some_and(|p| pids.contains(&p))
                && !kind.starts_with("tcp_");
            about_endpoint || about_backend
        })
    };
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
        uncorrelated_events: lab
            .agent
            .log()
            .iter()
            .filter_map(|l| {
                let n = l.split("correlation fell behind: ").nth(1)?;
                n.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum(),
        host_incidents,
    };
    for line in outcome.summary().lines() {
        say.say(line);
    }
    Ok(outcome)
}

/// Runs the CLI against the lab's agent; its JSON answer if it succeeded.
fn cli_json(lab: &Lab, args: &[&str]) -> Option<Value> {
    let out = lab.agent.cli(args);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

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

fn client_summary(exchanges: &[Exchange]) -> String {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for e in exchanges {
        *counts.entry(status_text(&e.status)).or_default() += 1;
    }
    counts_text(counts)
}

/// `502 ×40, 200 ×11`.
fn counts_text<K: std::fmt::Display>(counts: impl IntoIterator<Item = (K, u64)>) -> String {
    let text: Vec<String> = counts
        .into_iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect();
    if text.is_empty() {
        "none".into()
    } else {
        text.join(", ")
    }
}

/// Polls `why502 incidents --json --upstream U` every 50 ms until one shows up: when the
/// incident became queryable.
struct Detector {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Option<Instant>>,
}

impl Detector {
    fn spawn(socket: PathBuf, upstream: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let binary = crate::sibling_binary("why502");
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let limit = Duration::from_secs(120);
            let mut tick = 0u32;
            while !flag.load(Ordering::SeqCst) && !super::stop_requested() {
                if start.elapsed() > limit {
                    return None;
                }
                let out = Command::new(&binary)
                    .args(["incidents", "--json", "--upstream", &upstream, "--socket"])
                    .arg(&socket)
                    .env("NO_COLOR", "1")
                    .output();
                let found = out.ok().is_some_and(|out| {
                    serde_json::from_slice::<Value>(&out.stdout)
                        .ok()
                        .and_then(|v| v["incidents"].as_array().map(|a| !a.is_empty()))
                        .unwrap_or(false)
                });
                if found {
                    return Some(Instant::now());
                }
                tick += 1;
                let next = start + Duration::from_millis(50) * tick;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            None
        });
        Self { stop, handle }
    }

    fn finish(self) -> Option<Instant> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().ok().flatten()
    }
}

impl Outcome {
    /// The expectations this run did not meet (empty: the scenario passed).
    pub fn failed_checks(&self) -> Vec<String> {
        let mut failed = Vec::new();
        let scenario = self.scenario;
        let expected = scenario.expected_causes();

        // The fault did what it should to nginx (otherwise the rest means nothing).
        match scenario.failure_status() {
            Some(status) => {
                if (self.access.count(status) as usize) < OPEN_THRESHOLD {
                    failed.push(format!(
                        "setup: nginx answered {status} only {} times (access.log {:?})",
                        self.access.count(status),
                        self.access.statuses
                    ));
                }
            }
            None => {
                let bad: Vec<_> = self
                    .exchanges
                    .iter()
                    .filter(|e| e.status != Ok(200))
                    .map(|e| format!("{} {} → {}", e.method, e.path, status_text(&e.status)))
                    .collect();
                if !bad.is_empty() {
                    failed.push(format!("setup: not every request got 200: {bad:?}"));
                }
            }
        }
        if scenario == Scenario::Deploy
            && self.exchanges.last().map(|e| e.status.clone()) != Some(Ok(200))
        {
            failed.push("setup: the restarted backend does not serve".into());
        }

        // a. Exactly one incident (none when healthy), queryable within a second.
        if expected.is_empty() {
            if !self.incidents.is_empty() {
                failed.push(format!(
                    "a: expected no incident, got {}",
                    self.incidents.len()
                ));
            }
        } else if self.incidents.len() != 1 {
            failed.push(format!(
                "a: expected exactly one incident for nginx → {}, got {}",
                self.upstream,
                self.incidents.len()
            ));
        }
        if !self.stray_incidents.is_empty() {
            failed.push(format!(
                "a: incidents of nginx for other upstreams: {:?}",
                self.stray_incidents
                    .iter()
                    .map(|i| format!("#{} {}", i["id"], i["upstream"]))
                    .collect::<Vec<_>>()
            ));
        }
        if !expected.is_empty() {
            match self.detection {
                Some(d) if d < DETECTION_LIMIT => {}
                Some(d) => failed.push(format!(
                    "a: incident queryable {} ms after the 5th failed response (limit {} ms)",
                    d.as_millis(),
                    DETECTION_LIMIT.as_millis()
                )),
                None => failed.push(
                    "a: no detection time: no incident seen, or fewer than 5 failures in \
                     nginx's error.log"
                        .into(),
                ),
            }
        }

        // b. The top cause is the injected one and names the right process.
        if let Some(incident) = &self.incident {
            let top = &incident["causes"][0];
            let cause = top["cause"].as_str().unwrap_or("(none)");
            if !expected.contains(&cause) {
                failed.push(format!(
                    "b: top cause is {cause} ({}), expected {}",
                    top["summary"].as_str().unwrap_or_default(),
                    expected.join(" or ")
                ));
            }
            let pid = top["process"]["pid"].as_u64();
            let want = match scenario.culprit() {
                Culprit::Backend => self.backend_pids.first().map(|p| u64::from(*p)),
                Culprit::Proxy => self.nginx_worker_pid.map(u64::from),
                Culprit::Nobody => None,
            };
            if scenario.culprit() != Culprit::Nobody && pid != want {
                failed.push(format!(
                    "b: top cause names pid {pid:?}, expected {want:?} ({:?})",
                    scenario.culprit()
                ));
            }
        } else if !expected.is_empty() {
            failed.push("b: no incident to explain".into());
        }

        // c. Counts agree with nginx's own logs.
        if let Some(incident) = &self.incident {
            let kinds = kinds_of(incident);
            let mut names: Vec<&String> = kinds.keys().chain(self.errors.kinds.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let agent = kinds.get(name).copied().unwrap_or(0);
                let nginx = self.errors.kinds.get(name).copied().unwrap_or(0);
                if agent != nginx {
                    failed.push(format!(
                        "c: failure_kinds[{name}] = {agent}, nginx's error.log has {nginx}"
                    ));
                }
            }
            let failures = incident["failures"].as_u64().unwrap_or(0);
            if failures != self.errors.total() {
                failed.push(format!(
                    "c: the incident has {failures} failures, nginx's error.log {}",
                    self.errors.total()
                ));
            }
        }
        for (code, delta) in &self.responses_delta {
            let logged = self.access.count(*code);
            match delta {
                Some(d) if *d == logged as f64 => {}
                Some(d) => failed.push(format!(
                    "c: {RESPONSES_METRIC}{{proxy=\"nginx\",code=\"{code}\"}} rose by {d}, \
                     access.log has {logged}"
                )),
                None if logged == 0 => {}
                None => failed.push(format!(
                    "c: {RESPONSES_METRIC}{{proxy=\"nginx\",code=\"{code}\"}} is not exported; \
                     access.log has {logged}"
                )),
            }
        }
        failed
    }

    /// The top cause's name, if there is an incident.
    pub fn top_cause(&self) -> Option<&str> {
        self.incident.as_ref()?["causes"][0]["cause"].as_str()
    }

    /// A few lines: what the client got, what nginx logged, what the agent said.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let statuses = counts_text(self.access.statuses.clone());
        out.push_str(&format!("nginx access.log: {statuses}\n"));
        out.push_str(&format!(
            "nginx error.log: {}{}\n",
            counts_text(self.errors.kinds.clone()),
            if self.errors.other.is_empty() {
                String::new()
            } else {
                format!("; other: {}", counts_text(self.errors.other.clone()))
            }
        ));
        match &self.incident {
            Some(i) => {
                out.push_str(&format!(
                    "incident #{}: {} → {}, {} failures ({}){}\n",
                    i["id"],
                    i["proxy"]["comm"].as_str().unwrap_or("?"),
                    i["upstream"].as_str().unwrap_or("?"),
                    i["failures"],
                    counts_text(kinds_of(i)),
                    match i.get("responses") {
                        Some(r) => format!(", responses {r}"),
                        None => String::new(),
                    }
                ));
                let top = &i["causes"][0];
                out.push_str(&format!(
                    "top cause: {} ({}), pid {}: {}\n",
                    top["cause"].as_str().unwrap_or("?"),
                    top["confidence"].as_str().unwrap_or("?"),
                    top["process"]["pid"],
                    top["summary"].as_str().unwrap_or("")
                ));
            }
            None => out.push_str(&format!("incidents: {}\n", self.incidents.len())),
        }
        if let Some(d) = self.detection {
            out.push_str(&format!(
                "incident queryable {} ms after the response of the 5th failure\n",
                d.as_millis()
            ));
        }
        let deltas: Vec<String> = self
            .responses_delta
            .iter()
            .map(|(code, d)| {
                format!(
                    "{code} {} (access.log {})",
                    d.map(|d| format!("+{d}"))
                        .unwrap_or_else(|| "not exported".into()),
                    self.access.count(*code)
                )
            })
            .collect();
        out.push_str(&format!(
            "{RESPONSES_METRIC}{{proxy=\"nginx\"}}: {}\n",
            deltas.join(", ")
        ));
        if self.uncorrelated_events > 0 || self.host_incidents > self.incidents.len() {
            out.push_str(&format!(
                "host noise: the agent's correlation fell behind by {} events; it opened {} \
                 incidents in all during the run\n",
                self.uncorrelated_events, self.host_incidents
            ));
        }
        out
    }

    /// Everything, for a failed test: summary, checks, the incident, nginx's and the
    /// agent's logs.
    pub fn report(&self) -> String {
        let failed = self.failed_checks();
        format!(
            "scenario {} ({:.1} s): {}\n{}checks: {}\n\nincident: {}\n\nexplain --last:\n{}\n\
             nginx error.log:\n{}\nagent log (last 20 lines):\n{}\n\nagent events about the \
             upstream's listeners and the backends:\n{}\n",
            self.scenario,
            self.elapsed.as_secs_f64(),
            self.scenario.description(),
            self.summary(),
            if failed.is_empty() {
                "all passed".to_string()
            } else {
                format!("FAILED\n  {}", failed.join("\n  "))
            },
            self.incident
                .as_ref()
                .map(|i| serde_json::to_string_pretty(i).unwrap_or_default())
                .unwrap_or_else(|| "none".into()),
            self.explain_text,
            self.error_log,
            self.agent_log
                .iter()
                .rev()
                .take(20)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
            self.listener_events
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}
