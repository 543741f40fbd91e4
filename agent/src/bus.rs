//! The bus: one [`Topic`] per kind of message, the only way stages talk to each other.
//!
//! Sources publish, later stages subscribe; nobody holds another stage's state. Each
//! subscriber gets every message of its topic, in order. One that falls behind loses the
//! oldest messages and learns how many ([`broadcast::error::RecvError::Lagged`]), so a slow
//! sink never slows the sources.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::model::event::Event;

/// Events a slow subscriber may fall behind by before it loses some. Every slot keeps its
/// event alive until overwritten, so this is also memory: about 350 bytes a slot.
pub const BUS_CAPACITY: usize = 1 << 14;

/// Readings (host samples, kernel map polls) a subscriber may fall behind by: they come
/// a few per second, so this is minutes.
pub const READING_CAPACITY: usize = 256;

/// Incident updates a subscriber may fall behind by.
pub const INCIDENT_CAPACITY: usize = 4096;

/// Fan-out of one kind of message to every subscriber.
pub struct Topic<T> {
    tx: broadcast::Sender<Arc<T>>,
}

// Not derived: a topic clones for any `T`.
impl<T> Clone for Topic<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T> Topic<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity).0,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<T>> {
        self.tx.subscribe()
    }

    pub fn publish(&self, message: T) {
        // No subscriber is not an error: the message is simply not needed then.
        let _ = self.tx.send(Arc::new(message));
    }
}

/// The enriched events: what the kernel and the host saw.
pub type EventBus = Topic<Event>;

impl EventBus {
    /// The event topic, with room for [`BUS_CAPACITY`] events per subscriber.
    pub fn events() -> Self {
        Self::new(BUS_CAPACITY)
    }
}
