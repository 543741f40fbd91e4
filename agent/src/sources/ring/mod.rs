//! The event ring buffer: records the kernel programs write → [`decode`] →
//! [`enrich`](super::enrich) → [`EventBus`]. Only the rare crosses the ring (failures, resets, listener changes,
//! process deaths); the frequent is aggregated in kernel maps, read by
//! [`super::kernel_maps`].
//!
//! The reader runs on a thread of its own ([`ENRICH_THREAD`]), not on the async workers:
//! enrichment reads procfs (command lines, executables, cgroups, sockets), and a procfs
//! read can block for as long as its target wants (a `/proc/<pid>/cmdline` waits for that
//! process's memory). Stalled there, it must stall only the ring, never the API, the
//! metrics or the correlation.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use aya::maps::{MapData, RingBuf};
use tokio::sync::oneshot;

use super::{decode, enrich::Enricher};
use crate::bus::EventBus;

/// The name of the thread that reads the ring and enriches its records (what
/// `/proc/<pid>/task/<tid>/comm` shows: at most 15 bytes).
pub const ENRICH_THREAD: &str = "why502-enrich";

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

/// The running reader thread. Dropping it stops the thread at its next wake-up (it is not
/// joined: a thread stuck in a procfs read must not hang whoever drops the agent).
pub struct Pipeline {
    /// Written to on drop: wakes the thread's `poll` to stop it.
    stop: OwnedFd,
    /// The thread's result; closed without one if it panicked.
    done: oneshot::Receiver<io::Result<()>>,
}

impl Pipeline {
    /// Waits for the reader to fail (it does not end otherwise).
    pub async fn wait(&mut self) -> io::Error {
        match (&mut self.done).await {
            Ok(Ok(())) => io::Error::other("the event pipeline stopped"),
            Ok(Err(err)) => err,
            Err(_) => io::Error::other("the event pipeline panicked"),
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: an eventfd takes 8-byte writes from a valid buffer; a failure (the
        // counter full) still leaves it readable, which is all the thread looks at.
        unsafe {
            libc::write(
                self.stop.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

/// Starts the thread that consumes the ring buffer until the [`Pipeline`] is dropped or
/// the ring fails.
pub fn spawn(
    ring: RingBuf<MapData>,
    enricher: Enricher,
    bus: EventBus,
    stats: Arc<PipelineStats>,
) -> io::Result<Pipeline> {
    // SAFETY: eventfd has no memory preconditions; a valid fd is owned from here on.
    let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if stop < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `stop` is a fresh fd that nothing else owns.
    let stop = unsafe { OwnedFd::from_raw_fd(stop) };
    let thread_stop = stop.try_clone()?;
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name(ENRICH_THREAD.into())
        .spawn(move || {
            let result = read(ring, enricher, &bus, &stats, &thread_stop);
            let _ = done_tx.send(result);
        })?;
    Ok(Pipeline { stop, done })
}

/// The reader's loop: drain the ring, then sleep in `poll` until it has records again or
/// the pipeline is stopped. The ring's readiness is level-triggered (records left unread
/// keep it readable), so no record is left behind between a drain and the next `poll`.
fn read(
    mut ring: RingBuf<MapData>,
    mut enricher: Enricher,
    bus: &EventBus,
    stats: &PipelineStats,
    stop: &OwnedFd,
) -> io::Result<()> {
    loop {
        let mut batch = 0usize;
        while let Some(record) = ring.next() {
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
        // In a flood (a storm of refused connects), waking up for every few records
        // costs more than the records: each wake-up also wakes every bus subscriber. A
        // short pause after a large batch lets the next wake-up collect a large one too;
        // the rare events of normal operation are read as soon as they come.
        if batch >= FLOOD_BATCH {
            std::thread::sleep(FLOOD_PAUSE);
        }
        if wait_readable(ring.as_fd().as_raw_fd(), stop.as_raw_fd())? == Wake::Stop {
            return Ok(());
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Wake {
    Records,
    Stop,
}

/// Blocks until the ring has records or `stop` was written to.
fn wait_readable(ring: i32, stop: i32) -> io::Result<Wake> {
    let mut fds = [
        libc::pollfd {
            fd: ring,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfds for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if fds[1].revents != 0 {
            return Ok(Wake::Stop);
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            return Err(io::Error::other(format!(
                "the event ring buffer failed (poll revents {:#x})",
                fds[0].revents
            )));
        }
        if fds[0].revents != 0 {
            return Ok(Wake::Records);
        }
    }
}

/// A batch this large means a flood: see [`FLOOD_PAUSE`].
const FLOOD_BATCH: usize = 256;
/// How long the reader lets a flood accumulate before reading on (bounded by the ring's
/// size: at 100,000 records/s of ~100 bytes, 2 ms is 20 KiB of a 4 MiB ring).
const FLOOD_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

#[cfg(test)]
mod tests {
    use super::*;

    /// The stop eventfd ends the wait, whatever the other fd does.
    #[test]
    fn a_written_stop_fd_ends_the_wait() {
        // SAFETY: as in `spawn`.
        let stop = unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)) };
        let (never, _writer) = std::io::pipe().unwrap();
        let waiter = {
            let (stop, never) = (stop.try_clone().unwrap(), never.as_raw_fd());
            std::thread::spawn(move || wait_readable(never, stop.as_raw_fd()).unwrap())
        };
        let one = 1u64.to_ne_bytes();
        // SAFETY: 8 bytes from a valid buffer to an eventfd.
        let written = unsafe { libc::write(stop.as_raw_fd(), one.as_ptr().cast(), 8) };
        assert_eq!(written, 8);
        assert_eq!(waiter.join().unwrap(), Wake::Stop);
        drop(never);
    }
}
