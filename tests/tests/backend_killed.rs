//! A real nginx in front of a backend that dies of SIGSEGV: the agent's events name the
//! crash and count exactly the refused connects nginx itself logs.

use std::time::Duration;

use serde_json::Value;
use why502_e2e::{agent::Agent, backend::Backend, can_load_ebpf, free_port, http, nginx::Nginx};

/// How long an extra (invented) event gets to show up after the expected ones arrived.
const STRAGGLER_GRACE: Duration = Duration::from_millis(300);

#[test]
fn nginx_backend_killed_by_sigsegv() {
    if !can_load_ebpf() {
        return;
    }
    let agent = Agent::start();
    let mut backend = Backend::start(free_port());
    let backend_pid = backend.pid();
    let upstream = format!("127.0.0.1:{}", backend.port);
    let nginx = Nginx::start(free_port(), &upstream);
    assert_eq!(http::get_status(nginx.port).unwrap(), 200);

    let status = backend.kill_with(libc::SIGSEGV);
    assert!(!status.success());
    const REQUESTS: usize = 5;
    for _ in 0..REQUESTS {
        assert_eq!(http::get_status(nginx.port).unwrap(), 502);
    }

    // The crash: the backend's exit by signal 11.
    let exits = agent.wait_for(1, Duration::from_secs(5), |e| {
        e["kind"] == "process_exit" && e["process"]["pid"] == backend_pid
    });
    assert_eq!(exits.len(), 1, "backend exit: {:?}", agent.log());
    assert_eq!(exits[0]["signal"], "SIGSEGV");
    assert_eq!(exits[0]["signal_number"], 11);

    // Its listener closing: an event of its own, which may arrive after the exit.
    let closed = agent.wait_for(1, Duration::from_secs(5), |e| {
        e["kind"] == "listener_closed"
            && e["endpoint"] == upstream
            && e["process"]["pid"] == backend_pid
    });
    assert_eq!(closed.len(), 1, "listener closed events: {closed:?}");
    let backend_exe = closed[0]["process"]["exe"].as_str().unwrap_or_default();
    assert!(
        backend_exe.ends_with("why502-test-backend"),
        "details of the dead backend kept: {:?}",
        agent.events(|e| e["process"]["pid"] == backend_pid)
    );

    // nginx's refused connects, counted against nginx's own error.log.
    let is_refused = |e: &Value| {
        e["kind"] == "tcp_connect_failure"
            && e["dst"] == upstream
            && e["process"]["comm"] == "nginx"
    };
    let logged = nginx.count_errors("connect() failed (111: Connection refused)");
    assert_eq!(logged, REQUESTS, "nginx error.log:\n{}", nginx.error_log());
    // Nothing lost: wait until all of them have arrived.
    let refused = agent.wait_for(logged, Duration::from_secs(5), is_refused);
    assert_eq!(refused.len(), logged, "refused connects: {refused:?}");
    // Nothing invented: no further one within a grace period (the wait ends early if one
    // shows up).
    let refused = agent.wait_for(logged + 1, STRAGGLER_GRACE, is_refused);
    assert_eq!(refused.len(), logged, "refused connects: {refused:?}");
    for event in &refused {
        assert_eq!(event["errno"]["name"], "ECONNREFUSED");
        assert_eq!(event["process"]["exe"], "/usr/sbin/nginx");
    }
}
