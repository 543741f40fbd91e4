//! A real Prometheus scraping the real agent while a real nginx's backend dies: the
//! refused connects nginx logs show up, exactly, in Prometheus; the open incident too;
//! the exposition passes `promtool check metrics`; and the alert rules evaluate cleanly.

use std::time::Duration;

use why502_e2e::{
    agent::Agent,
    backend::Backend,
    can_load_ebpf, free_port, http,
    nginx::Nginx,
    prometheus::{deploy_dir, http_get, promtool_check_metrics, PrometheusServer},
    serial,
};

const REFUSED: &str = "connect() failed (111: Connection refused)";
const REQUESTS: usize = 10;

#[test]
fn prometheus_sees_connect_errors_rise_after_a_backend_is_killed() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    let agent = Agent::start();
    let mut backend = Backend::start(free_port());
    let upstream = format!("127.0.0.1:{}", backend.port);
    let nginx = Nginx::start(free_port(), &upstream);
    let rules = deploy_dir("prometheus").join("why502.rules.yml");
    let prometheus = PrometheusServer::start_with_rules(agent.metrics_addr(), &[&rules]);

    assert_eq!(http::get_status(nginx.port).unwrap(), 200);
    assert!(!backend.kill_with(libc::SIGSEGV).success());
    for _ in 0..REQUESTS {
        assert_eq!(http::get_status(nginx.port).unwrap(), 502);
    }
    let logged = nginx.count_errors(REFUSED);
    assert_eq!(logged, REQUESTS, "nginx error.log:\n{}", nginx.error_log());

    // Exactly nginx's refused connects: nothing lost on the way, nothing invented. (Only
    // nginx's: the harness's own connects while waiting for the backend to listen were
    // refused too, and the agent counts them against the test process.)
    let errors = format!(
        r#"sum(why502_upstream_connect_errors_total{{proxy="nginx",upstream="{upstream}",errno="ECONNREFUSED"}})"#
    );
    let by_proxy = format!(
        r#"sum by (proxy, errno) (why502_upstream_connect_errors_total{{upstream="{upstream}"}})"#
    );
    let seen = prometheus.wait_for_value(&errors, Duration::from_secs(20), |v| {
        v.is_some_and(|v| v >= REQUESTS as f64)
    });
    assert_eq!(
        seen,
        Some(REQUESTS as f64),
        "{:?}\nagent log: {:?}",
        prometheus.query_vector(&by_proxy),
        agent.log()
    );
    // Attempts include the failures: the one connect that got the 200, read from the
    // kernel's aggregates (every second), and the refused ones. Waited for until at least
    // that many, then exact: a success counted twice, or a failure counted as an attempt
    // twice, is wrong too.
    let attempts = (REQUESTS + 1) as f64;
    let connects_query =
        format!(r#"sum(why502_upstream_connects_total{{proxy="nginx",upstream="{upstream}"}})"#);
    let connects = prometheus.wait_for_value(&connects_query, Duration::from_secs(10), |v| {
        v.is_some_and(|v| v >= attempts)
    });
    assert_eq!(connects, Some(attempts), "connect attempts of nginx");
    // The successful one went through the latency histogram, once.
    let handshakes = prometheus.query_value(&format!(
        r#"sum(why502_upstream_connect_duration_seconds_count{{proxy="nginx",upstream="{upstream}"}})"#
    ));
    assert_eq!(handshakes, Some(1.0), "successful handshakes of nginx");

    // The incident those failures opened (it stays open for the quiet period).
    prometheus.wait_for_value(
        &format!(r#"why502_incident_open{{proxy="nginx",upstream="{upstream}"}}"#),
        Duration::from_secs(10),
        |v| v == Some(1.0),
    );

    // The exposition itself, as Prometheus got it, passes promtool's lint.
    let (status, body) = http_get(agent.metrics_addr(), "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("upstream=\"{upstream}\"")),
        "no series for {upstream}:\n{body}"
    );
    if let Err(problems) = promtool_check_metrics(&body) {
        panic!("{problems}\n{body}");
    }

    // Every alert and recording rule evaluates without error on the agent's series (once
    // evaluated at all: the first evaluation may come after the first scrapes).
    let groups = prometheus.wait_for_rules_evaluated(Duration::from_secs(10));
    for group in groups["data"]["groups"].as_array().expect("rule groups") {
        for rule in group["rules"].as_array().expect("rules") {
            assert_eq!(rule["health"], "ok", "{rule}");
        }
    }
}
