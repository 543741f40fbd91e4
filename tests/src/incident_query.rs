//! The agent's incidents as the container tests read them: by the proxy process they are
//! about (the agent sees the whole host, so other tests' incidents are there too), waited
//! for until their counts agree with nginx's own logs, and the processes each one names.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    agent::Agent,
    lab::{AccessLog, ErrorLog},
};

/// The proxy's answers for an upstream it could not use, counted on an incident.
pub const BAD_GATEWAY_CODES: [u16; 3] = [502, 503, 504];

/// Every incident of the agent (`why502 incidents --json`), newest first.
pub fn all(agent: &Agent) -> Vec<Value> {
    agent.cli_json(&["incidents", "--limit", "1000"])["incidents"]
        .as_array()
        .cloned()
        .expect("why502 incidents --json: an incidents list")
}

/// The incidents whose proxy is the process `pid` (nginx's worker).
pub fn of_proxy(agent: &Agent, pid: u32) -> Vec<Value> {
    all(agent)
        .into_iter()
        .filter(|i| i["proxy"]["pid"].as_u64() == Some(u64::from(pid)))
        .collect()
}

/// `why502 explain ID --json`: the incident with its causes and evidence.
pub fn explain(agent: &Agent, incident: &Value) -> Value {
    let id = incident["id"].as_u64().expect("an incident id").to_string();
    agent.cli_json(&["explain", &id])
}

/// `why502 explain ID` as a person reads it.
pub fn explain_text(agent: &Agent, incident: &Value) -> String {
    let id = incident["id"].as_u64().expect("an incident id").to_string();
    let out = agent.cli(&["explain", &id]);
    assert!(out.status.success(), "why502 explain {id}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (up to `limit`) until the proxy `pid` has exactly one incident and its
/// explanation satisfies `settled`; that explanation, or what there was at the deadline
/// (every incident of the proxy, explained).
pub fn wait_for_one(
    agent: &Agent,
    pid: u32,
    limit: Duration,
    settled: impl Fn(&Value) -> bool,
) -> Result<Value, Vec<Value>> {
    let deadline = Instant::now() + limit;
    loop {
        let mine: Vec<Value> = of_proxy(agent, pid)
            .iter()
            .map(|i| explain(agent, i))
            .collect();
        if let [one] = mine.as_slice() {
            if settled(one) {
                return Ok(one.clone());
            }
        }
        if Instant::now() > deadline {
            return Err(mine);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `incident` counts what nginx logged: its 502/503/504 responses (access.log) and
/// its failures by kind (error.log, by the agent's kind names), as the lab holds it.
pub fn counts_as_logged(incident: &Value, access: &AccessLog, errors: &ErrorLog) -> bool {
    count_mismatches(incident, access, errors).is_empty()
}

/// Where `incident`'s counts differ from nginx's logs, in words.
pub fn count_mismatches(incident: &Value, access: &AccessLog, errors: &ErrorLog) -> Vec<String> {
    let mut wrong = Vec::new();
    for code in BAD_GATEWAY_CODES {
        let counted = incident["responses"][code.to_string()]
            .as_u64()
            .unwrap_or(0);
        if counted != access.count(code) {
            wrong.push(format!(
                "responses[{code}] = {counted}, access.log has {}",
                access.count(code)
            ));
        }
    }
    let kinds: BTreeMap<String, u64> = incident["failure_kinds"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    if kinds != errors.kinds {
        wrong.push(format!(
            "failure_kinds {kinds:?}, error.log has {:?}",
            errors.kinds
        ));
    }
    let failures = incident["failures"].as_u64().unwrap_or(0);
    if failures != errors.total() {
        wrong.push(format!(
            "failures = {failures}, error.log has {}",
            errors.total()
        ));
    }
    wrong
}

/// Every process an incident names: its `pid` and `ppid` fields, anywhere in it, and
/// `pid N` in its texts (summaries, evidence).
pub fn named_pids(incident: &Value) -> BTreeSet<u64> {
    let mut pids = BTreeSet::new();
    collect_pids(incident, &mut pids);
    pids
}

fn collect_pids(value: &Value, pids: &mut BTreeSet<u64>) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                match (key.as_str(), field.as_u64()) {
                    ("pid" | "ppid", Some(pid)) => {
                        pids.insert(pid);
                    }
                    _ => collect_pids(field, pids),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_pids(v, pids)),
        Value::String(text) => pids.extend(pids_in_text(text)),
        _ => {}
    }
}

/// The N of every `pid N` in `text`.
pub fn pids_in_text(text: &str) -> Vec<u64> {
    text.match_indices("pid ")
        .filter_map(|(at, _)| {
            let digits: String = text[at + 4..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            digits.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_found_in_fields_and_texts() {
        let incident = serde_json::json!({
            "proxy": {"pid": 10, "comm": "nginx"},
            "causes": [{
                "process": {"pid": 20, "ppid": 1},
                "summary": "why502-test-bac (pid 30), listener of 127.0.0.1:9000, died",
                "evidence": [{"text": "SIGSEGV to pid 40 from bash (pid 50)"}],
            }],
            "failures": 7,
        });
        let pids: Vec<u64> = named_pids(&incident).into_iter().collect();
        assert_eq!(pids, [1, 10, 20, 30, 40, 50]);
    }

    #[test]
    fn counts_are_held_to_the_logs() {
        let access = AccessLog::parse("502 GET x\n502 GET x\n200 GET x\n");
        let errors = ErrorLog::parse(
            "2026/11/21 18:52:01 [error] 1#1: *3 connect() failed (111: Connection refused) \
             while connecting to upstream, client: 127.0.0.1, request: \"GET / HTTP/1.1\", \
             upstream: \"http://127.0.0.1:9000/\"\n"
                .repeat(2)
                .as_str(),
        );
        let right = serde_json::json!({
            "responses": {"502": 2},
            "failure_kinds": {"ECONNREFUSED": 2},
            "failures": 2,
        });
        assert!(counts_as_logged(&right, &access, &errors));
        let short = serde_json::json!({
            "responses": {"502": 1},
            "failure_kinds": {"ECONNREFUSED": 2},
            "failures": 2,
        });
        assert_eq!(count_mismatches(&short, &access, &errors).len(), 1);
    }
}
