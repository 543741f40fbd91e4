//! The maps shared by the programs. Sizes are defaults; the agent overrides them at load
//! time from its configuration.
//!
//! Tables whose every entry is deleted by a later program (a socket's CLOSE, a syscall's
//! exit) are plain hashes: an LRU hash pays its list upkeep on every insert and delete,
//! the cost that dominated the per-connect programs, and could evict an entry still in
//! use. When one is full the insert fails and is counted (`counter::TABLE_FULL_BASE`).
//! Aggregates keyed by traffic (destinations, status codes) stay LRU: nothing deletes
//! them, so eviction is what bounds them.

use agent_common::{
    budget::{Budget, BudgetKey},
    config::KernelConfig,
    connect::{ConnectCall, ConnectKey, ConnectStats, TrackedConnect},
    event::counter::{self, Table},
    http::ResponseKey,
    net::SockTuple,
};
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};

/// Field offsets and options, written by the agent before load (see `agent_common::config`).
#[unsafe(no_mangle)]
pub static CONFIG: KernelConfig = KernelConfig::UNSET;

/// Reads one field of [`CONFIG`] without letting the compiler fold in the default value.
macro_rules! config {
    ($($field:ident).+) => {
        $crate::maps::load(&$crate::maps::CONFIG.$($field).+)
    };
}
pub(crate) use config;

#[inline(always)]
pub fn load<T: Copy>(value: &T) -> T {
    // SAFETY: a reference is valid for reads.
    unsafe { core::ptr::read_volatile(value) }
}

/// Events for the agent.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// TCP sockets from CLOSE→SYN_SENT until CLOSE, by kernel address: who connected, when.
/// Every TCP socket passes through CLOSE before it is freed (`inet_csk_destroy_sock`
/// warns otherwise), and that transition deletes the entry.
#[map]
pub static TRACKED: HashMap<u64, TrackedConnect> = HashMap::with_max_entries(65536, 0);

/// `connect(2)` calls in flight, by pid_tgid; deleted at the syscall's exit, which every
/// entered syscall reaches (a fatal signal is acted on after it).
#[map]
pub static CALLS: HashMap<u64, ConnectCall> = HashMap::with_max_entries(8192, 0);

/// `listen(2)` calls in flight, by pid_tgid: the fd.
#[map]
pub static LISTEN_CALLS: HashMap<u64, i32> = HashMap::with_max_entries(1024, 0);

/// errno from `inet_sk_error_report`, by connection, for kernels where `sk_err` cannot be
/// read (no BTF).
#[map]
pub static SOCK_ERRORS: LruHashMap<SockTuple, i32> = LruHashMap::with_max_entries(4096, 0);

/// Successful connects aggregated per (process, destination), per CPU.
#[map]
pub static CONNECT_STATS: LruPerCpuHashMap<ConnectKey, ConnectStats> =
    LruPerCpuHashMap::with_max_entries(4096, 0);

/// Processes that listened on a socket (tgid → 1): their clean exits matter (exits with a
/// non-zero code or by signal are always reported), and they serve clients, so a failed
/// upstream connect of theirs or of their children marks a proxy. A plain hash: a flood
/// of a user's listeners must not evict a real listener's owner (a full table refuses the
/// newcomer, counted); every entry goes at its process's exit (`process.rs`).
#[map]
pub static WATCHED: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Proxy processes (tgid → 1) whose writes are inspected for HTTP status lines and whose
/// upstream connections are followed (see `agent_common::proxy` for who is marked). A
/// plain hash, like [`WATCHED`]: deleted at the process's exit. Only processes are keys,
/// except on the classic `sched_process_fork` (which cannot tell a thread from a process):
/// there a proxy's threads are inserted too, and deleted at the thread's exit.
#[map]
pub static PROXIES: HashMap<u32, u8> = HashMap::with_max_entries(8192, 0);

/// HTTP responses written by proxies, per (tgid, status code), per CPU.
#[map]
pub static RESPONSES: LruPerCpuHashMap<ResponseKey, u64> =
    LruPerCpuHashMap::with_max_entries(4096, 0);

/// What each producer of a budgeted kind spent in its current window (see
/// `agent_common::budget`). LRU: nothing deletes entries, and a flood of fresh processes
/// evicting old ones only starts them new budgets (the ring share still holds).
#[map]
pub static BUDGETS: LruHashMap<BudgetKey, Budget> = LruHashMap::with_max_entries(16384, 0);

/// Drop and error counters, see `agent_common::event::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::SLOTS, 0);

/// Inserts `value` at `key` in a plain hash `table`, counting a refusal (the table is
/// full) against it.
#[inline(always)]
pub fn insert_or_count<K, V>(map: &HashMap<K, V>, table: Table, key: &K, value: &V) {
    if map.insert(key, value, 0).is_err() {
        count(counter::TABLE_FULL_BASE + table as u32);
    }
}

/// Adds `tgid` to a set of processes (`PROXIES`, `WATCHED`) unless it is there: the lookup
/// takes no lock, an insert takes the bucket's, and a full table counts only newcomers.
#[inline(always)]
pub fn add_process(set: &HashMap<u32, u8>, table: Table, tgid: u32) {
    if tgid != 0 && set.get_ptr(&tgid).is_none() {
        insert_or_count(set, table, &tgid, &1);
    }
}

#[inline(always)]
pub fn count(slot: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(slot) {
        unsafe { *value += 1 };
    }
}

/// Inserted by reference: a fresh entry built on the stack would not fit there.
static ZERO_STATS: ConnectStats = ConnectStats::ZERO;

/// The calling CPU's aggregates for `key`, created (zeroed) when missing.
#[inline(always)]
pub fn stats_for(key: ConnectKey) -> Option<&'static mut ConnectStats> {
    let stats = match CONNECT_STATS.get_ptr_mut(key) {
        Some(stats) => stats,
        None => {
            let _ = CONNECT_STATS.insert(key, &ZERO_STATS, 0);
            CONNECT_STATS.get_ptr_mut(key)?
        }
    };
    // Per-CPU values: no other CPU writes this copy, plain adds are enough.
    Some(unsafe { &mut *stats })
}
