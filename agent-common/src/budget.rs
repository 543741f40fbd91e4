//! Per-process budgets for the event kinds any local user can produce at will (`listen(2)`
//! calls, execs, exits that are not by a signal, signals), and the share of the ring buffer
//! they may fill: a flood of them must neither fill the ring nor crowd out the failure
//! evidence (failed connects, resets, deaths by signal, OOM kills), which has no budget.
//!
//! The kernel keeps one [`Budget`] per [`BudgetKey`] in an LRU hash: a flood from many
//! fresh processes evicts old entries (each starting a new budget), which is why the ring
//! share ([`LOW_PRIORITY_RING_SHARE`]) backs the budgets up.

/// A budget's window: counts start again from zero once it has passed.
pub const WINDOW_NS: u64 = 1_000_000_000;

/// Records of one kind one producer may send per window. High enough for a proxy's
/// start-up (nginx listens once per `listen` directive, a supervisor spawns its workers),
/// low enough that a loop of `listen(2)` calls costs the ring a few KiB a second.
pub const RECORDS_PER_WINDOW: u64 = 256;

/// Budgeted records are refused once the ring holds more than `1 / LOW_PRIORITY_RING_SHARE`
/// of its size unread: the rest is kept for the failure evidence.
pub const LOW_PRIORITY_RING_SHARE: u64 = 2;

/// The kinds the kernel budgets (its `reserve_budgeted` callers): the only ones whose
/// throttled counters (`counter::THROTTLED_BASE + kind`) can grow, so the only ones the
/// agent reports them for.
pub const BUDGETED_KINDS: [crate::event::EventKind; 4] = [
    crate::event::EventKind::ListenCall,
    crate::event::EventKind::ProcessExec,
    crate::event::EventKind::ProcessExit,
    crate::event::EventKind::Signal,
];

/// Who a budget belongs to: the producing process and the kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetKey {
    /// The process that produced the records: the caller for `listen(2)` and signals, the
    /// parent for execs and exits (a `fork`+`exec` loop makes a new process each time,
    /// its parent is the same), the process itself when the parent is unknown and for the
    /// exit of a process that listened (its exit is evidence: one exit never exceeds a
    /// budget of its own).
    pub tgid: u32,
    /// The uid the record's process runs as: processes of one parent but different users
    /// (orphans of any user all have init for a parent) do not share a budget, so that a
    /// user's flood never spends a service's.
    pub uid: u32,
    /// [`crate::event::EventKind`] as a number.
    pub kind: u32,
    pub _pad: u32,
}

/// What a producer spent in its current window.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// `CLOCK_MONOTONIC` nanoseconds at the window's first record.
    pub window_start_ns: u64,
    /// Records sent in the window (over-budget ones are not counted here).
    pub sent: u64,
}

#[cfg(feature = "user")]
crate::impl_pod!(BudgetKey, Budget);
