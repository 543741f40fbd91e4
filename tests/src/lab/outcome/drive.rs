//! The client's side of a run: the request that shows nginx reaches the backend before the
//! fault, then each scenario's schedule of load, fault and bursts. Changes when a scenario
//! is added or its traffic pattern changes.

use std::time::{Duration, Instant};

use super::super::{
    client::Exchange,
    pause,
    topology::{
        status_text, BACKEND_IDLE_MS, EXHAUSTION_REQUESTS, KEEPALIVE, KILLED_WORKERS,
        SLOW_BACKEND_MS, SLOW_MS, WORKER_SLOW_MS,
    },
    Front, HaproxyLog, Interrupted, Lab, Scenario,
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
    ) && !scenario.responses_only();
    if !serves_first || scenario == Scenario::KeepaliveRace {
        return None;
    }
    let warm = lab.topology.client.request("GET", "/");
    lab.narrator
        .say(format!("check: GET / → {}", status_text(&warm.status)));
    assert_eq!(
        warm.status,
        Ok(200),
        "{} does not reach the backend before the fault:\n{}",
        lab.topology.front.name(),
        lab.topology.front.log_text()
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
        | Scenario::Healthy
        | Scenario::QuietSite
        | Scenario::HealthyLow
        | Scenario::HealthyHigh => {
            let duration = match scenario {
                Scenario::Deploy => Duration::from_millis(3500),
                Scenario::Healthy => Duration::from_secs(2),
                // At 1 request per second: 8 requests, the fault after the 3rd.
                Scenario::QuietSite => Duration::from_secs(8),
                Scenario::HealthyLow | Scenario::HealthyHigh => Duration::from_secs(10),
                _ => Duration::from_millis(2500),
            };
            let load = lab.load(duration);
            pause(match scenario {
                Scenario::QuietSite => Duration::from_millis(2500),
                _ => Duration::from_millis(500),
            })?;
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
        | Scenario::TcpBacklogOverflow
        | Scenario::NoUpstreamConnect
        | Scenario::ProxyStartedFirst => {
            exchanges.extend(lab.inject()?);
            if scenario == Scenario::TcpBacklogOverflow {
                wait_for_full_queue(lab)?;
            }
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
        Scenario::SlowBackend => {
            exchanges.extend(lab.inject()?);
            let path = format!("/slow/{SLOW_BACKEND_MS}");
            exchanges.extend(lab.load_on(&path, Duration::from_millis(1500)).finish());
            // The backend answers late, to connections nginx has closed (whose kernel
            // resets them): part of the fault, which the agent must not count again.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while lab.topology.slow_requests_in_backend() > 0
                && std::time::Instant::now() < deadline
            {
                pause(Duration::from_millis(50))?;
            }
            say.say(format!(
                "the backend has written its late answers ({} still pending)",
                lab.topology.slow_requests_in_backend()
            ));
        }
        Scenario::ClosesWithoutAnswer => {
            exchanges.extend(lab.inject()?);
            exchanges.extend(lab.load_on("/close", Duration::from_secs(2)).finish());
        }
        Scenario::WorkerCrashMidRequest => {
            let load = lab.load(Duration::from_secs(3));
            pause(Duration::from_millis(500))?;
            say.say(format!(
                "burst: {KILLED_WORKERS} concurrent GET /slow/{WORKER_SLOW_MS}, one per worker \
                 (each serves one connection at a time)"
            ));
            let slow = client.burst_in_background(
                KILLED_WORKERS,
                "GET",
                &format!("/slow/{WORKER_SLOW_MS}"),
            );
            exchanges.extend(lab.inject()?);
            exchanges.extend(slow.finish());
            exchanges.extend(load.finish());
            let after = client.request("GET", "/");
            say.say(format!(
                "check: GET / after the kills → {} (the master still listens, new workers \
                 serve)",
                status_text(&after.status)
            ));
            exchanges.push(after);
        }
        Scenario::PortExhaustion => {
            exchanges.extend(lab.inject()?);
            say.say(format!(
                "burst: {EXHAUSTION_REQUESTS} concurrent GET /slow/{SLOW_MS}, no upstream keepalive"
            ));
            exchanges.extend(client.burst(EXHAUSTION_REQUESTS, "GET", &format!("/slow/{SLOW_MS}")));
        }
        Scenario::HaproxyRetries => {
            // 10 requests at 2/s, the backend killed after the 3rd: every later one is
            // retried for 3 s before its 503, so the load ends about 3 s after its last.
            let load = lab.load(Duration::from_secs(5));
            pause(Duration::from_millis(1200))?;
            exchanges.extend(lab.inject()?);
            exchanges.extend(load.finish());
            if let Front::Haproxy(haproxy) = &lab.topology.front {
                say.say(format!(
                    "haproxy log: {}",
                    HaproxyLog::parse(&haproxy.log()).summary()
                ));
            }
        }
        Scenario::PhpfpmOomUnix | Scenario::PhpfpmRequestTimeout => {
            // GET / (index.php) alongside: the workers not hit keep serving.
            let load = lab.load(Duration::from_secs(4));
            pause(Duration::from_millis(500))?;
            exchanges.extend(lab.inject()?);
            exchanges.extend(load.finish());
        }
    }
    Ok(exchanges)
}

/// Waits (bounded) until the agent has reported the backend's full accept queue (its
/// `listen_queue_full`, from sampling every 500 ms in the harness), as it would have for
/// a backend stuck for a while: what makes the cause `overload` rather than a bare
/// `syn_timeout`. Past the bound the load goes on, and the cause check says what the
/// agent made of it.
fn wait_for_full_queue(lab: &Lab) -> Result<(), Interrupted> {
    let endpoint = lab.topology.upstream.clone();
    let start = Instant::now();
    let seen = loop {
        let seen = !lab
            .agent
            .events(|e| {
                e["kind"].as_str() == Some("listen_queue_full")
                    && e["endpoint"].as_str() == Some(endpoint.as_str())
            })
            .is_empty();
        if seen || start.elapsed() > Duration::from_secs(5) {
            break seen;
        }
        pause(Duration::from_millis(20))?;
    };
    lab.narrator.say(if seen {
        format!(
            "agent: listen_queue_full {endpoint} after {} ms",
            start.elapsed().as_millis()
        )
    } else {
        format!("agent: no listen_queue_full for {endpoint} within 5 s")
    });
    Ok(())
}
