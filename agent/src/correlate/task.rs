//! The engine as a task of the agent: fed from the event topic, ticked on a timer, its
//! incident updates published for the sinks (store, metrics) to take.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use tokio::sync::broadcast::{self, error::RecvError};

use super::engine::Engine;
use crate::{
    bus::Topic,
    model::{clock, event::Event, incident::Update, text::describe},
    sources::{host::sampling::Sample, kernel_maps::KernelReading},
};

/// How often quiet incidents are closed and changed ones re-explained (and saved).
pub const TICK: Duration = Duration::from_millis(250);

/// Falling behind is logged at most this often.
const LAG_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the correlation task exposes to status and metrics.
#[derive(Debug, Default)]
pub struct CorrelationStats {
    pub open_incidents: AtomicU64,
    /// Events the engine missed because it fell behind the bus.
    pub lagged_events: AtomicU64,
    /// New listeners the listener table had no room for without evicting a current one
    /// ([`super::listeners::ListenerTable::refused`]).
    pub listener_table_refused: AtomicU64,
}

/// Runs until the event topic closes, publishing every incident update, in order.
pub async fn run(
    mut engine: Engine,
    mut events: broadcast::Receiver<Arc<Event>>,
    mut readings: broadcast::Receiver<Arc<KernelReading>>,
    mut samples: broadcast::Receiver<Arc<Sample>>,
    stats: Arc<CorrelationStats>,
    updates_out: Topic<Update>,
) {
    let mut last_lag_log = std::time::Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let updates = tokio::select! {
            received = events.recv() => match received {
                Ok(event) => engine.observe(&event),
                Err(RecvError::Lagged(n)) => {
                    let before = stats.lagged_events.fetch_add(n, Ordering::Relaxed);
                    // Once per storm, not once per lag: the count is in the status.
                    if before == 0 || last_lag_log.elapsed() >= LAG_LOG_INTERVAL {
                        log::warn!(
                            "correlation fell behind: {} events not correlated so far",
                            before + n
                        );
                        last_lag_log = std::time::Instant::now();
                    }
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
            received = readings.recv() => match received {
                Ok(reading) => {
                    engine.observe_reading(&reading);
                    continue;
                }
                // Successes only temper thresholds: a lost reading costs nothing lasting.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
            received = samples.recv() => match received {
                Ok(sample) => {
                    engine.observe_sample(&sample);
                    continue;
                }
                // The next round says the same of the namespaces' addresses.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => engine.tick(clock::monotonic_ns(), SystemTime::now()),
        };
        for update in updates {
            log_update(&update);
            updates_out.publish(update);
        }
        stats
            .open_incidents
            .store(engine.open_incidents() as u64, Ordering::Relaxed);
        stats
            .listener_table_refused
            .store(engine.listener_table_refused(), Ordering::Relaxed);
    }
}

fn log_update(update: &Update) {
    let incident = update.incident();
    let cause = incident
        .top_cause()
        .map(|c| {
            format!(
                "{} ({}): {}",
                c.cause.name(),
                c.confidence.name(),
                c.summary
            )
        })
        .unwrap_or_default();
    match update {
        Update::Opened(_) => log::info!(
            "incident {} opened: {} → {}, {} failures; {cause}",
            incident.id,
            describe(&incident.proxy),
            incident.upstream,
            incident.failures
        ),
        Update::Closed(_) => log::info!(
            "incident {} closed after {:.1} s: {} failures; {cause}",
            incident.id,
            incident.duration().as_secs_f64(),
            incident.failures
        ),
        Update::Updated(_) => log::debug!(
            "incident {} updated: {} failures; {cause}",
            incident.id,
            incident.failures
        ),
    }
}
