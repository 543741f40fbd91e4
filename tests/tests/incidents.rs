//! Incidents end to end: a real nginx, a backend that dies (SIGSEGV, OOM kill), and
//! `why502 explain --last` naming the cause, the process and nginx's own counts; the
//! incident survives an agent restart.

use std::{
    process::Output,
    time::{Duration, Instant},
};

use serde_json::Value;
use why502_e2e::{
    agent::Agent, backend::Backend, can_load_ebpf, cgroup::MemoryCgroup, free_port, http,
    nginx::Nginx, serial,
};

const REFUSED: &str = "connect() failed (111: Connection refused)";

fn json(out: &Output) -> Option<Value> {
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Polls `why502 explain --last --json` until `done` accepts the incident.
fn wait_for_incident(agent: &Agent, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let out = agent.cli(&["explain", "--last", "--json"]);
        if let Some(incident) = json(&out) {
            if done(&incident) {
                return incident;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no matching incident within {limit:?}: {} {}\nagent log: {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn requests(nginx: &Nginx, n: usize, expect: u16) {
    for _ in 0..n {
        assert_eq!(http::get_status(nginx.port).unwrap(), expect);
    }
}

#[test]
fn backend_crash_is_explained_and_survives_a_restart() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    let agent = Agent::start();
    let mut backend = Backend::start(free_port());
    let upstream = format!("127.0.0.1:{}", backend.port);
    let nginx = Nginx::start(free_port(), &upstream);
    requests(&nginx, 1, 200);
    assert!(!backend.kill_with(libc::SIGSEGV).success());

    // Five failures in a second open an incident; it must be queryable within a second.
    requests(&nginx, 5, 502);
    let opened = Instant::now();
    let first = wait_for_incident(&agent, Duration::from_secs(5), |i| {
        i["upstream"] == upstream
    });
    let latency = opened.elapsed();
    assert!(
        latency < Duration::from_secs(1),
        "incident queryable after {latency:?}"
    );
    assert_eq!(first["causes"][0]["cause"], "crash", "{first:#}");

    requests(&nginx, 15, 502);
    let logged = nginx.count_errors(REFUSED) as u64;
    assert_eq!(logged, 20, "{}", nginx.error_log());
    let incident = wait_for_incident(&agent, Duration::from_secs(3), |i| {
        i["failures"].as_u64() == Some(logged)
    });
    assert_eq!(incident["failure_kinds"]["ECONNREFUSED"], logged);
    // What the failures became: every 502 in nginx's access.log, counted in the kernel.
    let access = std::fs::read_to_string(nginx.path("access.log")).unwrap();
    let bad_gateways = access.lines().filter(|l| l.contains("\" 502 ")).count() as u64;
    assert_eq!(bad_gateways, 20, "{access}");
    let incident = wait_for_incident(&agent, Duration::from_secs(3), |i| {
        i["responses"]["502"].as_u64() == Some(bad_gateways)
    });
    assert_eq!(incident["proxy"]["comm"], "nginx");
    assert_eq!(incident["proxy"]["known_proxy"], "nginx");
    let cause = &incident["causes"][0];
    assert_eq!(cause["cause"], "crash");
    assert_eq!(cause["confidence"], "high");
    assert_eq!(cause["process"]["pid"], backend.pid());
    assert!(
        cause["summary"].as_str().unwrap().contains("SIGSEGV"),
        "{cause:#}"
    );

    // The human form says the same, at a glance.
    let human = agent.cli(&["explain", "--last"]);
    assert!(human.status.success());
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(text.contains(&format!("nginx → {upstream}")), "{text}");
    assert!(text.contains(&format!("ECONNREFUSED ×{logged}")), "{text}");
    assert!(text.contains("Cause (high)"), "{text}");
    assert!(text.contains(&format!("pid {}", backend.pid())), "{text}");
    let listing = agent.cli(&["incidents"]);
    assert!(String::from_utf8_lossy(&listing.stdout).contains("crash"));

    // History survives the agent; the incident still open when it stopped (it closes
    // after 10 quiet seconds) is closed at start-up, at its last failure.
    let id = incident["id"].as_u64().unwrap();
    assert_eq!(incident["state"], "open", "{incident:#}");
    let before = agent.cli_json(&["incidents", "--limit", "1000"]);
    let max_before = incident_ids(&before).into_iter().max().unwrap();
    let upstreams_before = upstreams_by_id(&before);
    let agent = agent.restart();
    let out = agent.cli(&["explain", &id.to_string(), "--json"]);
    let kept = json(&out).unwrap_or_else(|| panic!("{out:?}"));
    assert_eq!(kept["id"], id);
    assert_eq!(kept["failures"], logged);
    assert_eq!(kept["causes"][0]["cause"], "crash");
    assert_eq!(kept["state"], "closed", "{kept:#}");
    assert_eq!(kept["closed_at"], kept["last_failure_at"], "{kept:#}");

    // The next incident's id continues after the last one (ids are never reused).
    let mut backend = Backend::start(free_port());
    let upstream = format!("127.0.0.1:{}", backend.port);
    let nginx = Nginx::start(free_port(), &upstream);
    requests(&nginx, 1, 200);
    assert!(!backend.kill_with(libc::SIGSEGV).success());
    requests(&nginx, 5, 502);
    let next = wait_for_incident(&agent, Duration::from_secs(5), |i| {
        i["upstream"] == upstream
    });
    let next_id = next["id"].as_u64().unwrap();
    assert!(
        next_id > max_before,
        "incident {next_id} after a restart, the last one before was {max_before}"
    );
    // None of the ids handed out since (other processes' incidents too: the agent sees
    // the whole host) took the place of one from before.
    let after = upstreams_by_id(&agent.cli_json(&["incidents", "--limit", "1000"]));
    for (id, upstream) in &upstreams_before {
        assert_eq!(
            after.get(id),
            Some(upstream),
            "incident {id} after the restart"
        );
    }
}

/// Each incident's upstream, by id, from `why502 incidents --json`.
fn upstreams_by_id(listing: &Value) -> std::collections::BTreeMap<u64, String> {
    listing["incidents"]
        .as_array()
        .expect("incidents")
        .iter()
        .map(|i| {
            let upstream = i["upstream"].as_str().expect("an upstream").to_owned();
            (i["id"].as_u64().expect("an id"), upstream)
        })
        .collect()
}

/// The ids of `why502 incidents --json`.
fn incident_ids(listing: &Value) -> Vec<u64> {
    listing["incidents"]
        .as_array()
        .expect("incidents")
        .iter()
        .map(|i| i["id"].as_u64().expect("an id"))
        .collect()
}

/// Retention: with `store.max_incidents = 1`, the incidents the last run left (closed at
/// start-up) are pruned to the newest one when the agent starts again.
#[test]
fn old_incidents_beyond_the_retention_are_pruned() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    let agent = Agent::start_with(&[("store", "max_incidents = 1")]);
    let mut opened = Vec::new();
    for _ in 0..2 {
        let mut backend = Backend::start(free_port());
        let upstream = format!("127.0.0.1:{}", backend.port);
        let nginx = Nginx::start(free_port(), &upstream);
        requests(&nginx, 1, 200);
        assert!(!backend.kill_with(libc::SIGSEGV).success());
        requests(&nginx, 5, 502);
        let incident = wait_for_incident(&agent, Duration::from_secs(5), |i| {
            i["upstream"] == upstream
        });
        // Open incidents are never pruned: both are kept while this agent runs.
        assert_eq!(incident["state"], "open");
        opened.push(incident["id"].as_u64().unwrap());
    }
    let listing = agent.cli_json(&["incidents", "--limit", "1000"]);
    let ids = incident_ids(&listing);
    assert!(
        opened.iter().all(|id| ids.contains(id)),
        "{opened:?} not all in {ids:?}"
    );
    let newest = *ids.iter().max().unwrap();

    // The agent sees the whole host, so the newest may be another's; exactly one is left.
    let agent = agent.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    let kept = loop {
        let kept = incident_ids(&agent.cli_json(&["incidents", "--limit", "1000"]));
        if kept.len() == 1 || Instant::now() > deadline {
            break kept;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(kept.len(), 1, "kept {kept:?} of {ids:?}");
    assert!(kept[0] >= newest, "kept {kept:?}, the newest was {newest}");
    let oldest = opened[0].to_string();
    let gone = agent.cli(&["explain", &oldest]);
    assert_eq!(gone.status.code(), Some(4), "incident {oldest}: {gone:?}");
}

#[test]
fn oom_killed_backend_is_explained() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    let agent = Agent::start();
    let cgroup = MemoryCgroup::new("e2e-oom", 64 << 20);
    let mut backend = Backend::start_in_cgroup(free_port(), &cgroup);
    let upstream = format!("127.0.0.1:{}", backend.port);
    let nginx = Nginx::start(free_port(), &upstream);
    requests(&nginx, 1, 200);

    // This request makes the backend allocate past its cgroup's limit.
    let status = http::get_status_of(nginx.port, "/alloc").unwrap();
    assert_eq!(status, 502);
    let exit = backend.wait_exit(Duration::from_secs(10));
    assert!(!exit.success());
    requests(&nginx, 10, 502);

    let logged = nginx.count_errors(REFUSED) as u64;
    assert_eq!(logged, 10, "{}", nginx.error_log());
    let incident = wait_for_incident(&agent, Duration::from_secs(5), |i| {
        i["upstream"] == upstream && i["failure_kinds"]["ECONNREFUSED"].as_u64() == Some(logged)
    });
    let cause = &incident["causes"][0];
    assert_eq!(cause["cause"], "oom_kill", "{incident:#}");
    assert_eq!(cause["confidence"], "high");
    assert_eq!(cause["process"]["pid"], backend.pid());
    assert!(cause["summary"].as_str().unwrap().contains("OOM killer"));
    let text = String::from_utf8(agent.cli(&["explain", "--last"]).stdout).unwrap();
    assert!(text.contains("killed by the OOM killer"), "{text}");
}
