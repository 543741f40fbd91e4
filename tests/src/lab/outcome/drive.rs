//! The client's side of a run: the request that shows nginx reaches the backend before the
//! fault, then each scenario's schedule of load, fault and bursts. Changes when a scenario
//! is added or its traffic pattern changes.

use std::time::Duration;

use super::super::{
    client::Exchange,
    pause,
    topology::{status_text, BACKEND_IDLE_MS, EXHAUSTION_REQUESTS, KEEPALIVE, SLOW_MS},
    Interrupted, Lab, Scenario,
};

/// `GET /` before the fault, for the scenarios whose backend serves at first (asserting
/// that it does); `None` for the others.
pub(super) fn warm_up(lab: &Lab) -> Option<Exchange> {
    let scenario = lab.scenario;
    let serves_first = !matches!(
        scenario,
        Scenario::WrongPort
            | Scenario::MissingUnixSocket
            | Scenario::UnixBacklogFull
            | Scenario::TcpBacklogOverflow
    );
    if !serves_first || scenario == Scenario::KeepaliveRace {
        return None;
    }
    let warm = lab.topology.client.request("GET", "/");
    lab.narrator
        .say(format!("check: GET / → {}", status_text(&warm.status)));
    assert_eq!(
        warm.status,
        Ok(200),
        "nginx does not reach the backend before the fault:\n{}",
        lab.topology.nginx.error_log()
    );
    Some(warm)
}

/// Runs the scenario's load and injects its fault; every request made meanwhile.
pub(super) fn run_fault(lab: &mut Lab) -> Result<Vec<Exchange>, Interrupted> {
    let say = lab.narrator;
    let scenario = lab.scenario;
    let client = lab.topology.client.clone();
    let mut exchanges = Vec::new();
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
    Ok(exchanges)
}
