//! The 502 lab: one test per fault-injection scenario (see `why502_e2e::lab`). Each runs a
//! real nginx, small backends, a bounded load and one fault under an agent of its own, and
//! holds the agent's incident to nginx's own logs:
//!
//! a. exactly one incident for the scenario's upstream (none when healthy), queryable
//!    within a second of the response that made the 3rd failure;
//! b. its top cause is the injected one and names the right process;
//! c. its failure kinds and its 5xx `responses` equal what nginx logged, and the agent's
//!    count of nginx's 200, 502, 503 and 504 responses rose by what access.log shows;
//!
//! and none of it from silence: a CLI call or a scrape that fails, or an agent that reads
//! no events, fails the scenario.

use why502_e2e::{
    can_load_ebpf,
    lab::{self, Scenario},
    serial,
};

fn scenario(scenario: Scenario) {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    let outcome = lab::run(scenario).expect("not interrupted");
    let failed = outcome.failed_checks();
    assert!(failed.is_empty(), "{}", outcome.report());
}

#[test]
fn crash() {
    scenario(Scenario::Crash);
}

#[test]
fn oom() {
    scenario(Scenario::Oom);
}

#[test]
fn deploy() {
    scenario(Scenario::Deploy);
}

#[test]
fn wrong_port() {
    scenario(Scenario::WrongPort);
}

#[test]
fn missing_unix_socket() {
    scenario(Scenario::MissingUnixSocket);
}

#[test]
fn unix_backlog_full() {
    scenario(Scenario::UnixBacklogFull);
}

#[test]
fn tcp_backlog_overflow() {
    scenario(Scenario::TcpBacklogOverflow);
}

#[test]
fn firewall_reject() {
    scenario(Scenario::FirewallReject);
}

#[test]
fn firewall_drop() {
    scenario(Scenario::FirewallDrop);
}

#[test]
fn keepalive_race() {
    scenario(Scenario::KeepaliveRace);
}

#[test]
fn port_exhaustion() {
    scenario(Scenario::PortExhaustion);
}

#[test]
fn healthy() {
    scenario(Scenario::Healthy);
}

#[test]
fn quiet_site() {
    scenario(Scenario::QuietSite);
}

#[test]
fn slow_backend() {
    scenario(Scenario::SlowBackend);
}

#[test]
fn closes_without_answer() {
    scenario(Scenario::ClosesWithoutAnswer);
}

#[test]
fn worker_crash_mid_request() {
    scenario(Scenario::WorkerCrashMidRequest);
}

#[test]
fn healthy_low() {
    scenario(Scenario::HealthyLow);
}

#[test]
fn healthy_high() {
    scenario(Scenario::HealthyHigh);
}

#[test]
fn haproxy_retries() {
    scenario(Scenario::HaproxyRetries);
}

#[test]
fn phpfpm_oom_unix() {
    scenario(Scenario::PhpfpmOomUnix);
}

#[test]
fn phpfpm_request_timeout() {
    scenario(Scenario::PhpfpmRequestTimeout);
}

#[test]
fn no_upstream_connect() {
    scenario(Scenario::NoUpstreamConnect);
}

#[test]
fn proxy_started_first() {
    scenario(Scenario::ProxyStartedFirst);
}

#[test]
fn every_scenario_has_a_test_and_a_name() {
    for s in Scenario::ALL {
        assert_eq!(Scenario::from_name(s.name()), Some(s));
        assert!(!s.description().is_empty());
    }
    assert_eq!(
        Scenario::from_name("port-exhaustion"),
        Some(Scenario::PortExhaustion)
    );
    let source = include_str!("lab.rs");
    for s in Scenario::ALL {
        assert!(
            source.contains(&format!("fn {}() {{", s.name())),
            "no test for {s}"
        );
    }
}
