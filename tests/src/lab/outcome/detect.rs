//! How soon the agent's incident became queryable: a poller of the CLI running alongside
//! the scenario, and the time from the response of nginx's `open_threshold()`-th logged
//! failure to the poller's first sight of an incident. Changes with how detection latency is measured.

use std::{
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
    super::{client::Exchange, logs::ErrorLog, Scenario},
    open_threshold,
};

/// Polls `why502 incidents --json --upstream U` every 50 ms until one shows up: when the
/// incident became queryable.
pub(super) struct Detector {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Option<Instant>>,
}

impl Detector {
    pub(super) fn spawn(socket: PathBuf, upstream: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let binary = crate::sibling_binary("why502");
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let limit = Duration::from_secs(120);
            let mut tick = 0u32;
            while !flag.load(Ordering::SeqCst) && !super::super::stop_requested() {
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

    /// Stops polling; when the incident was first seen, if it was. When the caller has
    /// seen the incident already (`exists`), the poller gets a bounded while to see it too
    /// rather than being stopped between two polls (a CLI call can take longer than the
    /// 50 ms between them on a busy host).
    pub(super) fn finish(self, exists: bool) -> Option<Instant> {
        let deadline = Instant::now() + Duration::from_secs(2);
        while exists && !self.handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().ok().flatten()
    }
}

/// From the response that made nginx's `open_threshold()`-th counted failure (for a
/// scenario of 5xx alone, its `open_threshold()`-th 5xx: there is no failure) to the
/// incident's appearance (`seen`); `None` without either.
pub(super) fn detection_time(
    scenario: Scenario,
    seen: Option<Instant>,
    exchanges: &[Exchange],
    errors: &ErrorLog,
) -> Option<Duration> {
    let mut failed: Vec<&Exchange> = exchanges
        .iter()
        .filter(|e| {
            if scenario.responses_only() {
                scenario.failure_status().is_some_and(|s| e.status == Ok(s))
            } else {
                errors.requests.contains_key(&e.seq)
            }
        })
        .collect();
    failed.sort_by_key(|e| e.done);
    match (seen, failed.get(open_threshold() - 1)) {
        (Some(seen), Some(nth)) => Some(seen.saturating_duration_since(nth.done)),
        _ => None,
    }
}
