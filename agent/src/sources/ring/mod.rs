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
