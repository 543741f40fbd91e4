//! What happened to processes lately: exits, OOM kills and the signals sent to them, by
//! pid, kept for the look-back period and bounded in count.

use std::{collections::VecDeque, time::SystemTime};

use crate::model::{
    event::{Exit, ListenQueueFull, MemoryPressure, OomKill, SignalSent},
    incident::ProcessSummary,
};

/// Records of each kind kept at most (the oldest go first).
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

#[derive(Debug, Default)]
pub struct ProcessHistory {
    exits: VecDeque<Dated<ExitRecord>>,
    kills: VecDeque<Dated<OomKill>>,
    signals: VecDeque<Dated<SignalRecord>>,
    pressure: VecDeque<Dated<MemoryPressure>>,
    full_queues: VecDeque<Dated<ListenQueueFull>>,
}

fn push<T>(queue: &mut VecDeque<Dated<T>>, item: Dated<T>) {
    if queue.len() == CAPACITY {
        queue.pop_front();
    }
    queue.push_back(item);
}

fn prune<T>(queue: &mut VecDeque<Dated<T>>, before_mono: u64) {
    while queue.front().is_some_and(|d| d.mono < before_mono) {
        queue.pop_front();
    }
}

impl ProcessHistory {
    pub fn exited(&mut self, record: Dated<ExitRecord>) {
        push(&mut self.exits, record);
    }

    pub fn oom_killed(&mut self, kill: Dated<OomKill>) {
        push(&mut self.kills, kill);
    }

    pub fn signalled(&mut self, record: Dated<SignalRecord>) {
        push(&mut self.signals, record);
    }

    pub fn memory_pressure(&mut self, record: Dated<MemoryPressure>) {
        push(&mut self.pressure, record);
    }

    pub fn queue_full(&mut self, record: Dated<ListenQueueFull>) {
        push(&mut self.full_queues, record);
    }

    /// Forgets everything older than `before_mono`.
    pub fn prune(&mut self, before_mono: u64) {
        prune(&mut self.exits, before_mono);
        prune(&mut self.kills, before_mono);
        prune(&mut self.signals, before_mono);
        prune(&mut self.pressure, before_mono);
        prune(&mut self.full_queues, before_mono);
    }

    /// The latest memory pressure in one of `scopes` between the two times.
    pub fn pressure_in(
        &self,
        scopes: &[&str],
        mono_min: u64,
        mono_max: u64,
    ) -> Option<&Dated<MemoryPressure>> {
        self.pressure.iter().rev().find(|d| {
            d.mono >= mono_min && d.mono <= mono_max && scopes.contains(&d.value.scope.as_str())
        })
    }

    /// The latest full accept queue on `port` (any address) between the two times.
    pub fn queue_full_on(
        &self,
        port: u16,
        mono_min: u64,
        mono_max: u64,
    ) -> Option<&Dated<ListenQueueFull>> {
        self.full_queues
            .iter()
            .rev()
            .find(|d| d.mono >= mono_min && d.mono <= mono_max && d.value.endpoint.port() == port)
    }

    /// The latest exit of `pid` at or before `mono_max`.
    pub fn exit_of(&self, pid: u32, mono_max: u64) -> Option<&Dated<ExitRecord>> {
        self.exits
            .iter()
            .rev()
            .find(|d| d.value.pid == pid && d.mono <= mono_max)
    }

    /// Abnormal exits between the two times, newest first.
    pub fn deaths_between(
        &self,
        mono_min: u64,
        mono_max: u64,
    ) -> impl Iterator<Item = &Dated<ExitRecord>> {
        self.exits
            .iter()
            .rev()
            .skip_while(move |d| d.mono > mono_max)
            .take_while(move |d| d.mono >= mono_min)
            .filter(|d| d.value.abnormal())
    }

    /// The latest OOM kill of `pid` at or before `mono_max`.
    pub fn oom_kill_of(&self, pid: u32, mono_max: u64) -> Option<&Dated<OomKill>> {
        self.kills
            .iter()
            .rev()
            .find(|d| d.value.victim_pid == pid && d.mono <= mono_max)
    }

    /// The latest delivered signal from `sender` to `pid` at or before `mono_max` (a
    /// process that re-raises a signal it got sends itself one too: php-fpm's workers).
    pub fn signal_from(
        &self,
        sender: u32,
        pid: u32,
        mono_max: u64,
    ) -> Option<&Dated<SignalRecord>> {
        self.signals.iter().rev().find(|d| {
            d.value.target_pid == pid
                && d.value.sender.pid == sender
                && d.mono <= mono_max
                && d.value.signal.result == "delivered"
        })
    }

    /// The latest delivered signal to `pid` at or before `mono_max`.
    pub fn signal_to(&self, pid: u32, mono_max: u64) -> Option<&Dated<SignalRecord>> {
        self.signals.iter().rev().find(|d| {
            d.value.target_pid == pid && d.mono <= mono_max && d.value.signal.result == "delivered"
        })
    }
}
