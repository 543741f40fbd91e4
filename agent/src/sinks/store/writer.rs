//! The incident updates' way into the store: [`follow`] takes them off the bus, saves go
//! over a bounded queue to a thread that owns its own connection, so nothing waits for the
//! disk, and a disk too slow to keep up costs counted writes rather than unbounded memory.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError, TrySendError},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use tokio::{
    sync::broadcast::{error::RecvError, Receiver},
    task::JoinHandle,
};

use super::{Store, StoreError};
use crate::model::incident::{Incident, Update};

/// Saves that may wait for the writer thread before further ones are dropped.
pub const QUEUE_CAPACITY: usize = 1024;

/// How often old incidents are deleted (and once at start).
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// New incidents, as a share of `max_incidents`, after which the store is pruned before
/// the hour is up: a flood of incidents grows the file by a tenth of the bound at most.
const PRUNE_AFTER_NEW_DIVISOR: u32 = 10;

/// The writer thread's side.
pub struct StoreWriter {
    store: Arc<Store>,
    queue: mpsc::Receiver<Incident>,
    write_errors: Arc<AtomicU64>,
    max_age: Duration,
    max_incidents: u32,
}

/// The engine's side: [`StoreWriterHandle::save`] never blocks. Dropping it writes what is
/// queued, then stops the thread.
pub struct StoreWriterHandle {
    queue: Option<mpsc::SyncSender<Incident>>,
    dropped: Arc<AtomicU64>,
    write_errors: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl StoreWriter {
    /// Opens the store at `path` (so that a bad path fails here, not in the thread) and
    /// starts the writer thread. `retention` is (max age of closed incidents, max count).
    pub fn spawn(
        path: impl AsRef<Path>,
        retention: (Duration, u32),
    ) -> Result<StoreWriterHandle, StoreError> {
        Self::spawn_on(Arc::new(Store::open(path)?), retention)
    }

    /// Starts the writer thread on an open store: the in-memory one, which has no file for
    /// a second connection to open.
    pub fn spawn_on(
        store: Arc<Store>,
        retention: (Duration, u32),
    ) -> Result<StoreWriterHandle, StoreError> {
        let (sender, queue) = mpsc::sync_channel(QUEUE_CAPACITY);
        let write_errors = Arc::<AtomicU64>::default();
        let writer = StoreWriter {
            store,
            queue,
            write_errors: write_errors.clone(),
            max_age: retention.0,
            max_incidents: retention.1,
        };
        let thread = thread::Builder::new()
            .name("why502-store".into())
            .spawn(move || writer.run())
            .map_err(|source| StoreError::Thread { source })?;
        Ok(StoreWriterHandle {
            queue: Some(sender),
            dropped: Arc::default(),
            write_errors,
            thread: Some(thread),
        })
    }

    fn run(self) {
        let mut next_prune = Instant::now();
        // Incidents are numbered upwards: a save above the highest id seen is a new one.
        let mut highest_id = self.store.max_id().unwrap_or(0);
        let mut new_since_prune = 0u32;
        let prune_after_new = (self.max_incidents / PRUNE_AFTER_NEW_DIVISOR).max(1);
        loop {
            if Instant::now() >= next_prune || new_since_prune >= prune_after_new {
                self.prune();
                next_prune = Instant::now() + PRUNE_INTERVAL;
                new_since_prune = 0;
            }
            let first = match self
                .queue
                .recv_timeout(next_prune.saturating_duration_since(Instant::now()))
            {
                Ok(incident) => incident,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let batch = coalesce(first, self.queue.try_iter().take(QUEUE_CAPACITY));
            for incident in &batch {
                if incident.id > highest_id {
                    highest_id = incident.id;
                    new_since_prune = new_since_prune.saturating_add(1);
                }
            }
            self.save(&batch);
        }
    }

    fn save(&self, batch: &[Incident]) {
        if self.store.upsert_all(batch).is_ok() {
            return;
        }
        // One at a time, so that one incident the store refuses does not lose the others.
        for incident in batch {
            if let Err(err) = self.store.upsert(incident) {
                let before = self.write_errors.fetch_add(1, Ordering::Relaxed);
                // A full disk fails every save: one line per hundred, not per incident.
                if before.is_multiple_of(100) {
                    log::warn!(
                        "incident store {}: {} ({} saves failed so far)",
                        self.store.path().display(),
                        crate::error_chain(&err),
                        before + 1
                    );
                }
            }
        }
    }

    fn prune(&self) {
        match self.store.prune(self.max_age, self.max_incidents) {
            Ok(0) => {}
            Ok(n) => log::info!("incident store: deleted {n} old incidents"),
            Err(err) => log::warn!(
                "incident store {}: {}",
                self.store.path().display(),
                crate::error_chain(&err)
            ),
        }
    }
}

/// The saves in queue order, each incident once, in its latest version: the engine saves
/// an open incident on every change, and only the last one matters.
fn coalesce(first: Incident, rest: impl Iterator<Item = Incident>) -> Vec<Incident> {
    let mut batch = vec![first];
    let mut index: HashMap<u64, usize> = HashMap::from([(batch[0].id, 0)]);
    for incident in rest {
        match index.get(&incident.id) {
            Some(&i) => batch[i] = incident,
            None => {
                index.insert(incident.id, batch.len());
                batch.push(incident);
            }
        }
    }
    batch
}

impl StoreWriterHandle {
    /// Queues the incident for saving; drops (and counts) it when the queue is full.
    pub fn save(&self, incident: Incident) {
        let Some(queue) = &self.queue else {
            return;
        };
        let why = match queue.try_send(incident) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "the store cannot keep up",
            Err(TrySendError::Disconnected(_)) => "the store writer stopped",
        };
        let before = self.dropped.fetch_add(1, Ordering::Relaxed);
        if before.is_multiple_of(100) {
            log::warn!(
                "incident not saved: {why} ({} saves dropped so far)",
                before + 1
            );
        }
    }

    /// Saves dropped because the queue was full.
    pub fn dropped_writes(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The counter behind [`StoreWriterHandle::dropped_writes`], for status reports that
    /// outlive a borrow of the handle.
    pub fn dropped_writes_counter(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }

    /// Incident saves the store refused (a full disk, an I/O error): counted per incident.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    /// The counter behind [`StoreWriterHandle::write_errors`].
    pub fn write_errors_counter(&self) -> Arc<AtomicU64> {
        self.write_errors.clone()
    }

    /// Writes what is queued and stops the thread (what dropping the handle does too).
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // Closing the queue lets the thread drain it and return.
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the incident store writer thread panicked");
            }
        }
    }
}

/// Saves every incident update from `updates` until the topic closes; updates lost to lag
/// count as dropped writes.
pub fn follow(
    writer: Arc<StoreWriterHandle>,
    mut updates: Receiver<Arc<Update>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match updates.recv().await {
                Ok(update) => writer.save(update.incident().clone()),
                Err(RecvError::Lagged(n)) => {
                    writer.dropped.fetch_add(n, Ordering::Relaxed);
                    log::warn!("incident store fell behind: {n} incident updates not saved");
                }
                Err(RecvError::Closed) => return,
            }
        }
    })
}

impl Drop for StoreWriterHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
