//! What the agent recorded once the traffic is over, read back the way a user reads it
//! (the CLI, `GET /metrics`, `--print-events`): waited for, within a bound, until its
//! counts agree with nginx's logs, since the agent counts asynchronously. Changes with the
//! agent's interfaces and with what a run keeps as evidence.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{
    super::{
        logs::{AccessLog, ErrorLog},
        metrics, pause, Interrupted, Lab,
    },
    kinds_of, responses_of, BAD_GATEWAY_CODES, RESPONSES_METRIC, RESPONSE_CODES,
};

/// How long the agent gets to count everything nginx logged.
const SETTLE: Duration = Duration::from_secs(3);

/// How long after the last response an incident the scenario should not cause is looked
/// for: one of 5xx alone opens up to about a second after them (250 ms until the kernel's
/// counts are polled, their 500 ms grace, 250 ms to the engine's tick); twice that.
pub(super) const STRAY_WINDOW: Duration = Duration::from_secs(2);

/// The agent's incidents for `upstream`, oldest first, and the proxy's upstream errors
/// (nginx's error.log, HAProxy's log): polled until the one incident a scenario expects
/// counts exactly what the proxy logged (its failure kinds where those are compared, and
/// its 5xx responses against the access log), or [`SETTLE`] has passed (always, for a
/// scenario that expects none). A CLI call that fails is a fault, not "no incident".
pub(super) fn settled_incidents(
    lab: &Lab,
    upstream: &str,
    faults: &mut Vec<String>,
) -> Result<(Vec<Value>, ErrorLog), Interrupted> {
    let front = &lab.topology.front;
    let mut errors;
    let expects_incident = !lab.scenario.expected_causes().is_empty();
    let deadline = Instant::now() + SETTLE;
    let mut incidents;
    let mut failed_call;
    loop {
        incidents = match incident_list(lab, &["incidents", "--json", "--upstream", upstream]) {
            Ok(list) => {
                failed_call = None;
                list
            }
            Err(e) => {
                failed_call = Some(e);
                Vec::new()
            }
        };
        errors = front.errors();
        let access = front.access();
        let counted = incidents.len() == 1
            && (!lab.scenario.compares_failure_kinds() || kinds_of(&incidents[0]) == errors.kinds)
            && bad_gateway_counted(&incidents[0], &access);
        if (expects_incident && counted) || Instant::now() > deadline {
            break;
        }
        pause(Duration::from_millis(100))?;
    }
    // Only the last answer counts: an agent busy at first may answer later.
    faults.extend(failed_call);
    // Incidents come newest first: the first one opened is the last.
    incidents.reverse();
    Ok((incidents, errors))
}

/// Whether `incident`'s `responses` has every 5xx access.log has.
fn bad_gateway_counted(incident: &Value, access: &AccessLog) -> bool {
    let responses = responses_of(incident);
    BAD_GATEWAY_CODES
        .into_iter()
        .all(|code| responses.get(&code).copied().unwrap_or(0) == access.count(code))
}

/// The increase of the agent's counts of the proxy's 502, 503 and 504 responses since
/// `before` (a scrape): scraped until it equals the access log's counts, or [`SETTLE`] has
/// passed.
pub(super) fn responses_delta(
    lab: &Lab,
    before: &str,
    access: &AccessLog,
    faults: &mut Vec<String>,
) -> Result<BTreeMap<u16, Option<f64>>, Interrupted> {
    let proxy = lab.topology.front.name();
    let deltas = |text: &str| -> BTreeMap<u16, Option<f64>> {
        RESPONSE_CODES
            .into_iter()
            .map(|code| {
                let count = |t: &str| {
                    metrics::sum(
                        t,
                        RESPONSES_METRIC,
                        &[("proxy", proxy), ("code", &code.to_string())],
                    )
                };
                let after = count(text);
                (code, after.map(|a| a - count(before).unwrap_or(0.0)))
            })
            .collect()
    };
    let deadline = Instant::now() + SETTLE;
    loop {
        let after = metrics::scrape(lab.agent.metrics_addr());
        let delta = deltas(after.as_deref().unwrap_or_default());
        let equal = delta
            .iter()
            .all(|(code, d)| d.unwrap_or(0.0) == access.count(*code) as f64);
        if (after.is_some() && equal) || Instant::now() > deadline {
            if after.is_none() {
                faults.push("GET /metrics failed after the run".into());
            }
            return Ok(delta);
        }
        pause(Duration::from_millis(100))?;
    }
}

/// How many incidents the agent has (any proxy, any upstream), and those of this proxy for
/// other upstreams than `upstream`: watched until [`STRAY_WINDOW`] after the run's last
/// response (an incident of 5xx alone opens late), or until one shows up.
pub(super) fn host_incidents(
    lab: &Lab,
    upstream: &str,
    last_response: Option<Instant>,
    faults: &mut Vec<String>,
) -> Result<(usize, Vec<Value>), Interrupted> {
    // This proxy's (other nginx processes on the host share its name, not its worker).
    let worker = lab.topology.front.worker_pid().map(u64::from);
    let until = last_response.unwrap_or_else(Instant::now) + STRAY_WINDOW;
    loop {
        let all = match incident_list(lab, &["incidents", "--json"]) {
            Ok(all) => all,
            Err(e) => {
                faults.push(e);
                return Ok((0, Vec::new()));
            }
        };
        let count = all.len();
        let stray: Vec<Value> = all
            .into_iter()
            .filter(|i| {
                i["proxy"]["pid"].as_u64() == worker && !is_upstream(&i["upstream"], upstream)
            })
            .collect();
        if !stray.is_empty() || Instant::now() >= until {
            return Ok((count, stray));
        }
        pause(Duration::from_millis(100))?;
    }
}

/// `why502 explain ID --json` of the first of `incidents`.
pub(super) fn explained(lab: &Lab, incidents: &[Value], faults: &mut Vec<String>) -> Option<Value> {
    let id = incidents.first()?["id"].as_u64()?.to_string();
    cli_json(lab, &["explain", &id, "--json"])
        .map_err(|e| faults.push(e))
        .ok()
}

/// Checks that the agent still runs and reads events: `why502 status --json` answers,
/// with events read from the kernel (a run makes hundreds). Without this, an agent that
/// died or stopped reading would pass every scenario that expects nothing.
pub(super) fn check_alive(lab: &Lab, faults: &mut Vec<String>) {
    match cli_json(lab, &["status", "--json"]) {
        Ok(status) => {
            if status["events"]["records"].as_u64().unwrap_or(0) == 0 {
                faults.push(format!("the agent read no events: status {status}"));
            }
        }
        Err(e) => faults.push(e),
    }
}

/// `why502 explain --last` as a human reads it, unless something else on the host opened
/// a later incident than `own`: then this scenario's own, by id.
pub(super) fn explain_text(lab: &Lab, own: Option<&Value>) -> String {
    let last_id = cli_json(lab, &["explain", "--last", "--json"])
        .ok()
        .and_then(|i| i["id"].as_u64());
    let own_id = own.and_then(|i| i["id"].as_u64());
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
}

/// The agent's events about the upstream's listeners and the backends' processes, and the
/// first few failures (to compare their times with the listener's), for the report.
pub(super) fn listener_events(lab: &Lab) -> Vec<Value> {
    let upstream = lab.topology.upstream.as_str();
    let pids: Vec<u64> = lab
        .topology
        .backends
        .iter()
        .map(|b| b.pid)
        .chain(lab.topology.phpfpm.iter().map(|fpm| fpm.master_pid()))
        .chain(lab.topology.killed_workers.iter().copied())
        .map(u64::from)
        .collect();
    let endpoint = upstream.trim_start_matches("unix:").to_string();
    let failures = std::cell::Cell::new(0);
    lab.agent.events(|e| {
        let kind = e["kind"].as_str().unwrap_or_default();
        // The first few failures too, to compare their times with the listener's (and,
        // for failures after the connect, their count with nginx's).
        let failure = matches!(
            kind,
            "tcp_connect_failure"
                | "connect_syscall_error"
                | "tcp_reset_received"
                | "tcp_reset_sent"
                | "upstream_end"
        ) && e["dst"].as_str() == Some(upstream);
        if failure && failures.get() < 12 {
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
}

/// Processes named as the lab's proxy (`nginx`, `haproxy`) that are neither its worker nor
/// that worker's parent (nginx's master).
pub(super) fn other_proxies(lab: &Lab) -> Vec<u32> {
    let name = lab.topology.front.name();
    let worker = lab.topology.front.worker_pid();
    let master = worker.and_then(|w| {
        let stat = std::fs::read_to_string(format!("/proc/{w}/stat")).ok()?;
        // After the parenthesised comm: state, then the parent's pid.
        stat.rsplit_once(") ")?
            .1
            .split_whitespace()
            .nth(1)?
            .parse::<u32>()
            .ok()
    });
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| Some(*pid) != worker && Some(*pid) != master)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The events the agent's correlation says it missed, from its log.
pub(super) fn uncorrelated_events(agent_log: &[String]) -> u64 {
    agent_log
        .iter()
        .filter_map(|l| {
            let n = l.split("correlation fell behind: ").nth(1)?;
            n.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// `why502 ARGS` (an `incidents` command) against the lab's agent: its incidents.
fn incident_list(lab: &Lab, args: &[&str]) -> Result<Vec<Value>, String> {
    let answer = cli_json(lab, args)?;
    answer["incidents"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("why502 {}: no incidents list in {answer}", args.join(" ")))
}

/// Runs the CLI against the lab's agent: its JSON answer, or what went wrong (exit status,
/// stderr, or output that is not JSON).
fn cli_json(lab: &Lab, args: &[&str]) -> Result<Value, String> {
    let out = lab.agent.cli(args);
    let command = format!("why502 {}", args.join(" "));
    if !out.status.success() {
        return Err(format!(
            "{command} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{command}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Whether an incident's `upstream` is the scenario's: the address itself, or in a
/// scenario that runs in a network namespace of its own, that address in it
/// (`127.0.0.1:PORT [netns N]`), as `why502 incidents --upstream` matches it.
fn is_upstream(shown: &Value, upstream: &str) -> bool {
    shown.as_str().is_some_and(|shown| {
        shown == upstream
            || shown
                .strip_prefix(upstream)
                .is_some_and(|rest| rest.starts_with(" [netns "))
    })
}
