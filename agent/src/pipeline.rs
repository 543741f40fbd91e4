//! The event pipeline: ring buffer → decode → enrich → [`EventBus`].
//!
//! The bus is the one interface later stages use: each subscriber (the JSON printer, the
//! correlation engine, the API's recent-events ring) gets every event, in order. A
//! subscriber that falls behind loses the oldest events and learns how many.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::broadcast};

use crate::{
    enrich::Enricher,
    events::{decode, Event},
};

/// Events a slow subscriber may fall behind by before it loses some. Every slot keeps its
/// event alive until overwritten, so this is also memory: about 350 bytes a slot.
pub const BUS_CAPACITY: usize = 1 << 14;

/// Fan-out of enriched events to the later stages.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(BUS_CAPACITY).0,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    pub fn publish(&self, event: Event) {
        // No subscriber is not an error: events are simply not needed then.
        let _ = self.tx.send(Arc::new(event));
    }
}

/// What the pipeline has processed, for status and metrics.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Records read from the ring buffer.
    pub records: AtomicU64,
    /// Records that could not be decoded (a kernel/agent version mismatch).
    pub decode_errors: AtomicU64,
    /// Records that described nothing to report (a `listen(2)` on a TCP socket).
    pub filtered: AtomicU64,
}

/// Consumes the ring buffer until the task is cancelled or the ring fails.
pub async fn run(
    ring: RingBuf<MapData>,
    mut enricher: Enricher,
    bus: EventBus,
    stats: Arc<PipelineStats>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd, which stays open and the same for as long
    // as the `RingBuf` lives, and the `AsyncFd` owns the `RingBuf`.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }?;
    loop {
        let mut guard = ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(record) = ring.next() {
            stats.records.fetch_add(1, Ordering::Relaxed);
            match decode::decode(&record) {
                Ok(decoded) => match enricher.enrich(decoded) {
                    Some(event) => bus.publish(event),
                    None => {
                        stats.filtered.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Err(err) => {
                    if stats.decode_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        log::warn!(
                            "cannot decode a kernel event: {err} (further ones are counted only)"
                        );
                    }
                }
            }
        }
        guard.clear_ready();
    }
}
