//! The metrics' one subscriber task: every topic of the bus into [`Metrics`].

use std::sync::Arc;

use tokio::{
    sync::broadcast::{error::RecvError, Receiver},
    task::JoinHandle,
};

use super::Metrics;
use crate::{
    model::{event::Event, incident::Update},
    sources::{host::sampling::Sample, kernel_maps::KernelReading},
};

/// What the metrics subscribe to.
pub struct Subscriptions {
    pub events: Receiver<Arc<Event>>,
    pub incidents: Receiver<Arc<Update>>,
    pub kernel: Receiver<Arc<KernelReading>>,
    pub host: Receiver<Arc<Sample>>,
}

/// Feeds `metrics` until every topic has closed.
pub fn spawn(metrics: Arc<Metrics>, mut from: Subscriptions) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut open = [true; 4];
        while open.iter().any(|o| *o) {
            tokio::select! {
                r = from.events.recv(), if open[0] => match r {
                    Ok(event) => metrics.event(&event),
                    Err(e) => open[0] = lost("events", e),
                },
                r = from.incidents.recv(), if open[1] => match r {
                    Ok(update) => metrics.incident(&update),
                    Err(e) => open[1] = lost("incident updates", e),
                },
                r = from.kernel.recv(), if open[2] => match r {
                    Ok(reading) => metrics.kernel(&reading),
                    Err(e) => open[2] = lost("kernel readings", e),
                },
                r = from.host.recv(), if open[3] => match r {
                    Ok(sample) => metrics.host(&sample),
                    Err(e) => open[3] = lost("host samples", e),
                },
            }
        }
    })
}

/// Whether the topic is still open after `err`.
fn lost(what: &str, err: RecvError) -> bool {
    match err {
        RecvError::Lagged(n) => {
            log::warn!("metrics fell behind: {n} {what} not counted");
            true
        }
        RecvError::Closed => false,
    }
}
