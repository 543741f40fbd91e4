//! The last events off the bus, kept for `GET /v1/events`: what happened just now, without
//! a store of every event.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::SystemTime,
};

use tokio::{
    sync::broadcast::{self, error::RecvError},
    task::JoinHandle,
};

use crate::model::event::Event;

/// Events kept by default.
pub const RECENT_CAPACITY: usize = 10_000;

/// Where [`RecentEvents::since`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventCut {
    /// `CLOCK_MONOTONIC` nanoseconds, as in [`Event::mono_ns`].
    Mono(u64),
    Time(SystemTime),
}

/// A bounded ring of the newest events; the oldest go first.
pub struct RecentEvents {
    ring: Mutex<VecDeque<Arc<Event>>>,
    capacity: usize,
    lagged: AtomicU64,
}

impl Default for RecentEvents {
    fn default() -> Self {
        Self::new(RECENT_CAPACITY)
    }
}

impl RecentEvents {
    pub fn new(capacity: usize) -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(RECENT_CAPACITY))),
            capacity: capacity.max(1),
            lagged: AtomicU64::new(0),
        }
    }

    pub fn push(&self, event: Arc<Event>) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() >= self.capacity {
            ring.pop_front();
        }
        ring.push_back(event);
    }

    /// Keeps the ring filled from the bus until the bus closes.
    pub fn collect_from(
        self: &Arc<Self>,
        mut events: broadcast::Receiver<Arc<Event>>,
    ) -> JoinHandle<()> {
        let recent = self.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => recent.push(event),
                    // Losing some of a history kept for browsing is harmless: count and go on.
                    Err(RecvError::Lagged(n)) => {
                        recent.lagged.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }

    /// The newest `limit` events at or after `cut`, oldest first.
    pub fn since(&self, cut: EventCut, limit: usize) -> Vec<Arc<Event>> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let mut events: Vec<_> = ring
            .iter()
            .rev()
            .filter(|event| match cut {
                EventCut::Mono(ns) => event.mono_ns >= ns,
                EventCut::Time(time) => event.time >= time,
            })
            .take(limit)
            .cloned()
            .collect();
        events.reverse();
        events
    }

    /// Events missed because the collector fell behind the bus.
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::{
        bus::EventBus,
        model::event::{EventDetail, Exit},
    };

    /// A process exit at `secs` after the epoch, `mono_ns` = `secs` seconds.
    pub(crate) fn exit_event(secs: u64) -> Event {
        Event {
            time: UNIX_EPOCH + Duration::from_secs(secs),
            mono_ns: secs * 1_000_000_000,
            process: None,
            detail: EventDetail::ProcessExit(Exit::from_wait_status(9)),
        }
    }

    #[test]
    fn the_ring_keeps_the_newest() {
        let recent = RecentEvents::new(3);
        for secs in 1..=5 {
            recent.push(Arc::new(exit_event(secs)));
        }
        assert_eq!(recent.len(), 3);
        let monos = |events: Vec<Arc<Event>>| -> Vec<u64> {
            events.iter().map(|e| e.mono_ns / 1_000_000_000).collect()
        };
        assert_eq!(monos(recent.since(EventCut::Mono(0), 100)), [3, 4, 5]);
        assert_eq!(
            monos(recent.since(EventCut::Mono(4_000_000_000), 100)),
            [4, 5]
        );
        let at_4 = UNIX_EPOCH + Duration::from_secs(4);
        assert_eq!(monos(recent.since(EventCut::Time(at_4), 100)), [4, 5]);
        assert_eq!(monos(recent.since(EventCut::Mono(0), 2)), [4, 5], "newest");
        assert_eq!(monos(recent.since(EventCut::Mono(u64::MAX), 2)), [0u64; 0]);
    }

    #[tokio::test]
    async fn the_collector_follows_the_bus() {
        let bus = EventBus::events();
        let recent = Arc::new(RecentEvents::default());
        let task = recent.collect_from(bus.subscribe());
        for secs in 1..=3 {
            bus.publish(exit_event(secs));
        }
        drop(bus);
        task.await.unwrap();
        assert_eq!(recent.len(), 3);
        assert_eq!(recent.lagged(), 0);
    }
}
