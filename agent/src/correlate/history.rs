//! What happened to processes lately: exits, OOM kills and the signals sent to them, by
//! pid, kept for the look-back period and bounded in count.
//!
//! The bound is shared fairly: each record has a [`Holder`] (the user it is about, and
//! whether the process serves clients), and when a kind is full the holder with the most
//! records of it gives up its oldest, those of processes that serve nobody first. A user
//! whose processes die or signal each other in a loop evicts its own records, not the
//! backend's death a minute ago that explains a 502.

use std::{
    collections::{HashMap, VecDeque},
    time::SystemTime,
};

use crate::model::{
    event::{Exit, ListenQueueFull, MemoryPressure, OomKill, SignalSent},
    incident::ProcessSummary,
    namespace::NetNs,
};

/// Records of each kind kept at most.
const CAPACITY: usize = 4096;

#[derive(Debug, Clone)]
pub struct Dated<T> {
    pub mono: u64,
    pub time: SystemTime,
    pub value: T,
}

#[derive(Debug, Clone)]
pub struct ExitRecord {
    pub pid: u32,
    /// Its parent when it exited, from the kernel or else procfs.
    pub ppid: Option<u32>,
    pub process: ProcessSummary,
    pub exit: Exit,
}

impl ExitRecord {
    /// Died of a signal or with a non-zero code.
    pub fn abnormal(&self) -> bool {
        self.exit.signal.is_some() || self.exit.code.is_some_and(|c| c != 0)
    }
}

#[derive(Debug, Clone)]
pub struct SignalRecord {
    pub target_pid: u32,
    pub sender: ProcessSummary,
    pub signal: SignalSent,
}

/// Whose a record is, for sharing the bound: the real uid of the process it is about (of
/// the sender, for a signal; `None` when procfs did not say) and whether that process
/// serves clients (a known proxy, a listener or a listener's worker), whose records are
/// kept longest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Holder {
    pub uid: Option<u32>,
    pub serves: bool,
}

/// One kind of record, bounded, each holder's oldest first.
#[derive(Debug)]
struct Records<T> {
    by_holder: HashMap<Holder, VecDeque<Dated<T>>>,
    len: usize,
    capacity: usize,
}

impl<T> Default for Records<T> {
    fn default() -> Self {
        Self {
            by_holder: HashMap::new(),
            len: 0,
            capacity: CAPACITY,
        }
    }
}

impl<T> Records<T> {
    fn push(&mut self, holder: Holder, item: Dated<T>) {
        if self.len >= self.capacity {
            self.evict_one();
        }
        let queue = self.by_holder.entry(holder).or_default();
        // Events of different CPUs arrive slightly out of order: keep each queue sorted,
        // which the range queries rely on.
        let at = queue.partition_point(|d| d.mono <= item.mono);
        queue.insert(at, item);
        self.len += 1;
    }

    /// The oldest record of the holder with the most, among processes that serve nobody
    /// first.
    fn evict_one(&mut self) {
        let victim = self
            .by_holder
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .max_by_key(|(h, q)| (!h.serves, q.len()))
            .map(|(h, _)| *h);
        let Some(victim) = victim else { return };
        if let Some(queue) = self.by_holder.get_mut(&victim) {
            queue.pop_front();
            self.len -= 1;
            if queue.is_empty() {
                self.by_holder.remove(&victim);
            }
        }
    }

    fn prune(&mut self, before_mono: u64) {
        let mut len = 0;
        self.by_holder.retain(|_, queue| {
            while queue.front().is_some_and(|d| d.mono < before_mono) {
                queue.pop_front();
            }
            len += queue.len();
            !queue.is_empty()
        });
        self.len = len;
    }

    /// Records between the two times (inclusive), newest first.
    fn between(&self, mono_min: u64, mono_max: u64) -> Vec<&Dated<T>> {
        let mut found: Vec<&Dated<T>> = self
            .by_holder
            .values()
            .flat_map(|queue| {
                let from = queue.partition_point(|d| d.mono < mono_min);
                let to = queue.partition_point(|d| d.mono <= mono_max).max(from);
                queue.range(from..to)
            })
            .collect();
        found.sort_by_key(|d| std::cmp::Reverse(d.mono));
        found
    }

    /// The latest record at or before `mono_max` that `matches`.
    fn latest(&self, mono_max: u64, matches: impl Fn(&T) -> bool) -> Option<&Dated<T>> {
        self.by_holder
            .values()
            .filter_map(|queue| {
                let to = queue.partition_point(|d| d.mono <= mono_max);
                queue.range(..to).rev().find(|d| matches(&d.value))
            })
            .max_by_key(|d| d.mono)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }
}

#[derive(Debug, Default)]
pub struct ProcessHistory {
    exits: Records<ExitRecord>,
    kills: Records<OomKill>,
    signals: Records<SignalRecord>,
    pressure: Records<MemoryPressure>,
    full_queues: Records<ListenQueueFull>,
}

impl ProcessHistory {
    pub fn exited(&mut self, holder: Holder, record: Dated<ExitRecord>) {
        self.exits.push(holder, record);
    }

    pub fn oom_killed(&mut self, holder: Holder, kill: Dated<OomKill>) {
        self.kills.push(holder, kill);
    }

    pub fn signalled(&mut self, holder: Holder, record: Dated<SignalRecord>) {
        self.signals.push(holder, record);
    }

    /// The agent's own samples (one per scope or listener and interval): one holder.
    pub fn memory_pressure(&mut self, record: Dated<MemoryPressure>) {
        self.pressure.push(Holder::default(), record);
    }

    pub fn queue_full(&mut self, record: Dated<ListenQueueFull>) {
        self.full_queues.push(Holder::default(), record);
    }

    /// Forgets everything older than `before_mono`.
    pub fn prune(&mut self, before_mono: u64) {
        self.exits.prune(before_mono);
        self.kills.prune(before_mono);
        self.signals.prune(before_mono);
        self.pressure.prune(before_mono);
        self.full_queues.prune(before_mono);
    }

    /// The latest memory pressure in one of `scopes` between the two times.
    pub fn pressure_in(
        &self,
        scopes: &[&str],
        mono_min: u64,
        mono_max: u64,
    ) -> Option<&Dated<MemoryPressure>> {
        self.pressure
            .latest(mono_max, |p| scopes.contains(&p.scope.as_str()))
            .filter(|d| d.mono >= mono_min)
    }

    /// The latest full accept queue on `port` (any address) of network namespace `netns`
    /// between the two times: another pod's full queue on the same port is not this one's.
    pub fn queue_full_on(
        &self,
        netns: NetNs,
        port: u16,
        mono_min: u64,
        mono_max: u64,
    ) -> Option<&Dated<ListenQueueFull>> {
        self.full_queues
            .latest(mono_max, |q| q.netns == netns && q.endpoint.port() == port)
            .filter(|d| d.mono >= mono_min)
    }

    /// The latest exit of `pid` at or before `mono_max`.
    pub fn exit_of(&self, pid: u32, mono_max: u64) -> Option<&Dated<ExitRecord>> {
        self.exits.latest(mono_max, |e| e.pid == pid)
    }

    /// Abnormal exits between the two times, newest first.
    pub fn deaths_between(
        &self,
        mono_min: u64,
        mono_max: u64,
    ) -> impl Iterator<Item = &Dated<ExitRecord>> {
        self.exits
            .between(mono_min, mono_max)
            .into_iter()
            .filter(|d| d.value.abnormal())
    }

    /// The latest OOM kill of `pid` at or before `mono_max`.
    pub fn oom_kill_of(&self, pid: u32, mono_max: u64) -> Option<&Dated<OomKill>> {
        self.kills.latest(mono_max, |k| k.victim_pid == pid)
    }

    /// The latest delivered signal from `sender` to `pid` at or before `mono_max` (a
    /// process that re-raises a signal it got sends itself one too: php-fpm's workers).
    pub fn signal_from(
        &self,
        sender: u32,
        pid: u32,
        mono_max: u64,
    ) -> Option<&Dated<SignalRecord>> {
        self.signals.latest(mono_max, |s| {
            s.target_pid == pid && s.sender.pid == sender && s.signal.result == "delivered"
        })
    }

    /// The latest delivered signal to `pid` at or before `mono_max`.
    pub fn signal_to(&self, pid: u32, mono_max: u64) -> Option<&Dated<SignalRecord>> {
        self.signals.latest(mono_max, |s| {
            s.target_pid == pid && s.signal.result == "delivered"
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn death(pid: u32, mono: u64) -> Dated<ExitRecord> {
        Dated {
            mono,
            time: UNIX_EPOCH,
            value: ExitRecord {
                pid,
                ppid: Some(1),
                process: ProcessSummary {
                    pid,
                    ..Default::default()
                },
                exit: Exit::from_wait_status(libc::SIGKILL),
            },
        }
    }

    const SERVER: Holder = Holder {
        uid: Some(33),
        serves: true,
    };
    const JUNK: Holder = Holder {
        uid: Some(65534),
        serves: false,
    };

    /// A server whose workers died often holds more records than a flooding user that
    /// serves nobody: the junk goes first all the same, the server's records all stay.
    #[test]
    fn records_of_processes_that_serve_nobody_go_first() {
        let mut history = ProcessHistory::default();
        let served = CAPACITY as u32 * 3 / 4;
        for pid in 0..served {
            history.exited(SERVER, death(pid, u64::from(pid)));
        }
        for n in 0..100_000u32 {
            history.exited(JUNK, death(1_000_000 + n, 10_000 + u64::from(n)));
        }
        assert_eq!(history.exits.len(), CAPACITY);
        assert!((0..served).all(|pid| history.exit_of(pid, u64::MAX).is_some()));
        assert!(history.exit_of(1_000_000 + 99_999, u64::MAX).is_some());
        assert!(history.exit_of(1_000_000, u64::MAX).is_none());
    }

    /// Between holders of one tier the one with the most records pays: the flooding
    /// user's oldest go, the other user's one record stays.
    #[test]
    fn the_holder_with_the_most_records_gives_up_its_oldest() {
        let mut history = ProcessHistory::default();
        let junk_server = Holder {
            uid: Some(65534),
            serves: true,
        };
        history.exited(SERVER, death(7, 1));
        for n in 0..100_000u32 {
            history.exited(junk_server, death(1_000 + n, 2 + u64::from(n)));
        }
        assert_eq!(history.exits.len(), CAPACITY);
        assert_eq!(history.exit_of(7, u64::MAX).map(|d| d.mono), Some(1));
        // Nobody kept its newest, in order across holders.
        let newest: Vec<u64> = history
            .deaths_between(0, u64::MAX)
            .take(2)
            .map(|d| d.mono)
            .collect();
        assert_eq!(newest, [100_001, 100_000]);
        assert_eq!(history.deaths_between(0, 1).count(), 1);
    }

    /// Records that arrive out of order (events of different CPUs) are found by time all
    /// the same, and pruning forgets the old ones of every holder.
    #[test]
    fn out_of_order_records_are_ranged_and_pruned_by_time() {
        let mut history = ProcessHistory::default();
        history.exited(JUNK, death(1, 30));
        history.exited(JUNK, death(2, 10));
        history.exited(SERVER, death(3, 20));
        let order: Vec<u32> = history
            .deaths_between(0, u64::MAX)
            .map(|d| d.value.pid)
            .collect();
        assert_eq!(order, [1, 3, 2]);
        assert_eq!(history.exit_of(1, 29).map(|d| d.value.pid), None);
        assert_eq!(
            history
                .deaths_between(15, 25)
                .map(|d| d.value.pid)
                .collect::<Vec<_>>(),
            [3]
        );
        history.prune(15);
        assert_eq!(history.exits.len(), 2);
        assert!(history.exit_of(2, u64::MAX).is_none());
        history.prune(u64::MAX);
        assert_eq!(history.exits.len(), 0);
        assert!(history.exits.by_holder.is_empty());
    }
}
