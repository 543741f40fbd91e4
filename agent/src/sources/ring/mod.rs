//! The event ring buffer: records the kernel programs write → [`decode`] →
//! [`enrich`](super::enrich) → [`EventBus`]. Only the rare crosses the ring (failures, resets, listener changes,
//! process deaths); the frequent is aggregated in kernel maps, read by
//! [`super::kernel_maps`].

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use super::{decode, enrich::Enricher};
use crate::bus::EventBus;

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
        let inner = guard.get_inner_mut();
        let mut batch = 0usize;
        while let Some(record) = inner.next() {
            batch += 1;
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
        drop(guard);
        // In a flood (a storm of refused connects), waking up for every few records
        // costs more than the records: each wake-up also wakes every bus subscriber. A
        // short pause after a large batch lets the next wake-up collect a large one too;
        // the rare events of normal operation are read as soon as they come.
        if batch >= FLOOD_BATCH {
            tokio::time::sleep(FLOOD_PAUSE).await;
        }
    }
}

/// A batch this large means a flood: see [`FLOOD_PAUSE`].
const FLOOD_BATCH: usize = 256;
/// How long the reader lets a flood accumulate before reading on (bounded by the ring's
/// size: at 100,000 records/s of ~100 bytes, 2 ms is 20 KiB of a 4 MiB ring).
const FLOOD_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);
