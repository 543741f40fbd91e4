//! Two "pods" on one host: network namespaces of the test's own, each with a backend on
//! the *same* address and port and an nginx in front of it (the same port too), and a
//! client inside each sending a low, steady load. Pod A's backend dies of SIGSEGV: A's
//! nginx answers 502 (its access.log is the oracle) while B keeps answering 200. A's
//! incident names A's backend and A's nginx, and its upstream carries A's namespace; B
//! has no incident; no incident names B's processes, nor those of a decoy listening on the
//! same address in the host's namespace.

use std::time::{Duration, Instant};

use why502_e2e::{
    agent::Agent,
    can_load_ebpf, free_port,
    incident_query::{self, counts_as_logged, named_pids},
    lab::DetachedBackend,
    pods::{own_netns_inode, Pod},
    serial,
};

/// Requests each pod's client sends under load, and how many per second.
const REQUESTS: u32 = 20;
const RATE: u32 = 10;
/// When A's backend is killed after the load started: about 5 requests in.
const KILL_AFTER: Duration = Duration::from_millis(450);
/// How long the agent gets to count what A's nginx logged.
const SETTLE: Duration = Duration::from_secs(5);
/// How long after the last response an incident that should not exist is waited for (one
/// of 5xx alone opens up to about a second after them; twice that).
const STRAY_WINDOW: Duration = Duration::from_secs(2);

#[test]
fn same_loopback_address_in_two_pods() {
    two_pods_one_backend_crashes("127.0.0.1");
}

#[test]
fn same_wildcard_port_in_two_pods() {
    two_pods_one_backend_crashes("0.0.0.0");
}

/// The two-pod crash, both backends bound to `bind_ip` (`127.0.0.1` or the wildcard) and
/// the same port, each pod's nginx proxying to `127.0.0.1:<that port>`.
fn two_pods_one_backend_crashes(bind_ip: &str) {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    // Both ports free on the host too, for the decoy; taken before the agent starts, so
    // that its listener table never saw the moment free_port listened.
    let backend_port = free_port();
    let nginx_port = loop {
        let port = free_port();
        if port != backend_port {
            break port;
        }
    };
    let agent = Agent::start();
    let bind = format!("{bind_ip}:{backend_port}");
    let upstream = format!("127.0.0.1:{backend_port}");
    let a = Pod::start("pod-a", &bind, nginx_port);
    let b = Pod::start("pod-b", &bind, nginx_port);
    let decoy_dir = tempfile::tempdir().expect("temporary directory");
    let decoy = DetachedBackend::start(&upstream, &[], None, decoy_dir.path(), "decoy");
    let (a_netns, b_netns) = (a.netns_inode(), b.netns_inode());
    assert!(
        a_netns != b_netns && a_netns != own_netns_inode(),
        "pod A's namespace {a_netns}, B's {b_netns}"
    );

    for pod in [&a, &b] {
        let first = pod.client.request("GET", "/");
        assert_eq!(first.status, Ok(200), "{}: {first:?}", pod.netns.name);
    }
    let load_a = a.client.steady(RATE, REQUESTS, "GET", "/");
    let load_b = b.client.steady(RATE, REQUESTS, "GET", "/");
    std::thread::sleep(KILL_AFTER);
    a.backend.signal(libc::SIGSEGV);
    assert!(
        a.backend.wait_gone(Duration::from_secs(5)),
        "A's backend survived SIGSEGV"
    );
    let got_b = load_b.finish();
    load_a.finish();
    let last_response = Instant::now();

    // The setup did what it should: A's nginx answered 502 (enough to open an incident),
    // B's only 200.
    let (access_a, errors_a, access_b) = (a.access(), a.errors(), b.access());
    assert!(
        access_a.count(502) >= 3 && access_a.count(200) >= 1,
        "A's access.log: {:?}",
        access_a.statuses
    );
    assert_eq!(
        errors_a.kinds.keys().collect::<Vec<_>>(),
        ["ECONNREFUSED"],
        "A's error.log:\n{}",
        a.nginx.error_log()
    );
    assert!(
        got_b.iter().all(|e| e.status == Ok(200)),
        "B's client got {:?}",
        got_b.iter().map(|e| &e.status).collect::<Vec<_>>()
    );
    assert_eq!(
        access_b.statuses.into_iter().collect::<Vec<_>>(),
        [(200, u64::from(REQUESTS) + 1)],
        "B's access.log"
    );

    // A's incident: one, counting what A's nginx logged, its cause A's backend's crash.
    let incident = incident_query::wait_for_one(&agent, a.worker_pid(), SETTLE, |i| {
        counts_as_logged(i, &access_a, &errors_a)
    })
    .unwrap_or_else(|seen| {
        panic!(
            "no single incident of A's nginx (pid {}) counting A's access.log {:?} and \
             error.log {:?} within {SETTLE:?}; its incidents: {seen:#?}\nall: {:#?}",
            a.worker_pid(),
            access_a.statuses,
            errors_a.kinds,
            incident_query::all(&agent)
        )
    });
    // Every check below is collected, so that a failure says all that is wrong at once.
    let mut failed = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failed.push(what);
        }
    };
    check(
        incident["proxy"]["comm"] == "nginx",
        format!("the proxy is {}, not nginx", incident["proxy"]["comm"]),
    );
    let a_upstream = format!("{upstream} [netns {a_netns}]");
    check(
        incident["upstream"] == a_upstream.as_str(),
        format!(
            "the upstream is {}, not {a_upstream:?}",
            incident["upstream"]
        ),
    );
    let cause = &incident["causes"][0];
    check(
        cause["cause"] == "crash" && cause["confidence"] == "high",
        format!(
            "the top cause is {} ({})",
            cause["cause"], cause["confidence"]
        ),
    );
    check(
        cause["process"]["pid"] == a.backend.pid,
        format!(
            "the top cause names pid {}, not A's backend {}",
            cause["process"]["pid"], a.backend.pid
        ),
    );
    let text = incident_query::explain_text(&agent, &incident);
    check(
        text.contains(&format!("pid {}", a.backend.pid)) && text.contains(&a_upstream),
        format!(
            "why502 explain does not name pid {} and {a_upstream}",
            a.backend.pid
        ),
    );

    // B: no incident, and nothing of B's (nor the decoy) in any incident's explanation.
    let until = last_response + STRAY_WINDOW;
    if let Some(wait) = until.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    let b_pids: Vec<u64> = b
        .pids()
        .into_iter()
        .chain([decoy.pid])
        .map(u64::from)
        .collect();
    let mut explained_all = Vec::new();
    for listed in incident_query::all(&agent) {
        let explained = incident_query::explain(&agent, &listed);
        let mixed: Vec<u64> = named_pids(&explained)
            .into_iter()
            .filter(|p| b_pids.contains(p))
            .collect();
        check(
            mixed.is_empty(),
            format!(
                "incident #{} names B's or the decoy's processes {mixed:?}",
                explained["id"]
            ),
        );
        check(
            !explained.to_string().contains(&format!("netns {b_netns}")),
            format!("incident #{} is about B's namespace", explained["id"]),
        );
        explained_all.push(explained);
    }
    assert!(
        failed.is_empty(),
        "{failed:#?}\npods: A netns {a_netns} (backend {}, nginx {:?}), B netns {b_netns} \
         (backend {}, nginx {:?}), decoy on the host {}\nA's incident: {incident:#}\n\
         why502 explain:\n{text}\nall incidents: {explained_all:#?}",
        a.backend.pid,
        a.pids(),
        b.backend.pid,
        b.pids(),
        decoy.pid
    );
}
