//! The HTTP/1.1 serving loop of the local API and of `/metrics`, bounded so that no
//! client can exhaust the agent: at most [`Limits::max_connections`] connections are
//! held, each must send its request head within [`Limits::header_read_timeout`], and none
//! lives longer than [`Limits::max_lifetime`].
//!
//! A connection arriving at the cap takes the slot of the connection that has been idle
//! the longest (no request in its handler), which is closed: a flood of idle connections
//! then only pushes out itself, and a real client (which sends its request at once)
//! still gets its answer. Only when every held connection is in a handler is the new one
//! closed unanswered.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::{serve::Listener, Router};
use hyper::service::Service as _;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::sync::Notify;

/// How a server bounds its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections held at once: each costs a file descriptor and a task.
    pub max_connections: usize,
    /// Time a client has to send a whole request head, from the connect or from the end
    /// of its previous response (hyper's timer runs while it waits for a head).
    pub header_read_timeout: Duration,
    /// Time after which a connection is closed even while busy (a client that never reads
    /// its answer holds its slot no longer).
    pub max_lifetime: Duration,
}

/// The limits of the agent's servers: the CLI, a scraper or a curl need one connection
/// each and send their request at once.
pub const LIMITS: Limits = Limits {
    max_connections: 64,
    header_read_timeout: Duration::from_secs(3),
    max_lifetime: Duration::from_secs(60),
};

/// How long a connection being closed (evicted, or past its lifetime) gets to finish the
/// answer in flight.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Accepts on `listener` and serves `app` within `limits`, forever.
pub async fn serve<L: Listener>(mut listener: L, app: Router, limits: Limits) {
    let slots = Arc::new(Slots::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let (io, _) = listener.accept().await;
        let Some(slot) = slots.admit() else {
            // Every held connection is in a handler: this one is refused (closed).
            log::debug!(
                "HTTP server: {} connections busy, one refused",
                limits.max_connections
            );
            continue;
        };
        let app = TowerToHyperService::new(app.clone());
        let http = http.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            let _held = Held {
                slots: &slots,
                id: slot.id,
            };
            let tracked = slot.clone();
            let service = hyper::service::service_fn(move |request| {
                let answer = app.call(request);
                let slot = tracked.clone();
                slot.busy.fetch_add(1, Ordering::SeqCst);
                async move {
                    let answer = answer.await;
                    slot.busy.fetch_sub(1, Ordering::SeqCst);
                    slot.touch();
                    answer
                }
            });
            let connection = http.serve_connection(TokioIo::new(io), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = slot.evict.notified() => {}
                _ = tokio::time::sleep(limits.max_lifetime) => {}
            }
            // Closes at once when idle, after the answer in flight otherwise.
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        });
    }
}

/// One held connection.
struct Slot {
    id: u64,
    /// Requests of this connection in a handler now: not to be evicted.
    busy: AtomicUsize,
    /// When it last started or ended a request, in ms since [`Slots::epoch`].
    last_active_ms: AtomicU64,
    epoch: Instant,
    evict: Notify,
}

impl Slot {
    fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_active_ms.store(now, Ordering::SeqCst);
    }
}

/// The connections held, by id.
struct Slots {
    max: usize,
    epoch: Instant,
    next_id: AtomicU64,
    held: Mutex<HashMap<u64, Arc<Slot>>>,
}

impl Slots {
    fn new(max: usize) -> Self {
        Self {
            max,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for a new connection, evicting the longest-idle one at the cap; `None` when
    /// all are busy.
    fn admit(&self) -> Option<Arc<Slot>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.len() >= self.max {
            let idlest = held
                .values()
                .filter(|slot| slot.busy.load(Ordering::SeqCst) == 0)
                .min_by_key(|slot| slot.last_active_ms.load(Ordering::SeqCst))
                .map(|slot| slot.id)?;
            if let Some(evicted) = held.remove(&idlest) {
                // A stored permit: the connection's task sees it even if not waiting yet.
                evicted.evict.notify_one();
            }
        }
        let slot = Arc::new(Slot {
            id: self.next_id.fetch_add(1, Ordering::SeqCst),
            busy: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
            epoch: self.epoch,
            evict: Notify::new(),
        });
        slot.touch();
        held.insert(slot.id, slot.clone());
        Some(slot)
    }

    fn release(&self, id: u64) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

/// Gives the slot back when the connection's task ends, however it ends.
struct Held<'a> {
    slots: &'a Slots,
    id: u64,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.slots.release(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room() {
        let slots = Slots::new(2);
        let first = slots.admit().expect("room");
        let second = slots.admit().expect("room");
        first.last_active_ms.store(5, Ordering::SeqCst);
        second.last_active_ms.store(1, Ordering::SeqCst);
        let third = slots.admit().expect("an idle one makes room");
        let held = slots.held.lock().unwrap();
        assert_eq!(held.len(), 2);
        assert!(held.contains_key(&first.id) && held.contains_key(&third.id));
        assert!(!held.contains_key(&second.id), "the idlest one was evicted");
    }

    #[test]
    fn at_the_cap_with_every_connection_busy_the_new_one_is_refused() {
        let slots = Slots::new(2);
        let first = slots.admit().expect("room");
        let second = slots.admit().expect("room");
        first.busy.store(1, Ordering::SeqCst);
        second.busy.store(1, Ordering::SeqCst);
        assert!(slots.admit().is_none());
        second.busy.store(0, Ordering::SeqCst);
        assert!(slots.admit().is_some(), "an idle one makes room again");
        assert!(slots.held.lock().unwrap().contains_key(&first.id));
    }
}
