//! What every ring-buffer record starts with, and the kernel's counter slots. Apart from
//! the kinds (the `event` module) so that the record types of each domain can use it.

use crate::COMM_LEN;

/// Common to every record.
///
/// `tgid`/`pid`/`comm`/`cgroup_id` describe the process the event is *about* (the connecting
/// process for a connect failure, the sender for a signal), which is not always the task that
/// was running when the tracepoint fired. A zero `tgid` means the kernel did not know it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// The event kind's number: the kernel sets it from the record type (`Record::KIND`).
    pub kind: u32,
    /// Thread id (the kernel's `pid`).
    pub pid: u32,
    /// Process id (the kernel's `tgid`).
    pub tgid: u32,
    /// The network namespace's inode number (`ns.inum`): the socket's for records about a
    /// socket, the task's for the others; 0 when the kernel could not read it (no BTF).
    pub netns: u32,
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    /// cgroup v2 id of the process (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// Counters kept per CPU in the `COUNTERS` array, indexed by these slots.
pub mod counter {
    /// Records lost because the ring buffer was full, or, for the budgeted kinds, had no
    /// room left outside the failure evidence's share: slot `DROPPED_BASE + kind`.
    pub const DROPPED_BASE: u32 = 0;
    /// Records refused because their producer spent its budget (`crate::budget`): slot
    /// `THROTTLED_BASE + kind`. Only the kinds any user can produce at will have one.
    pub const THROTTLED_BASE: u32 = 16;
    /// Probe errors (a failed read of kernel or user memory): slot `PROBE_ERROR_BASE + probe`.
    pub const PROBE_ERROR_BASE: u32 = 32;
    /// Inserts refused because a bounded kernel table was full: slot `TABLE_FULL_BASE +
    /// table` (see [`Table`]).
    pub const TABLE_FULL_BASE: u32 = 56;
    /// Total number of slots.
    pub const SLOTS: u32 = 64;

    /// The kernel tables that are plain (not LRU) hashes: an insert into a full one fails
    /// and is counted rather than evicting an entry another program still needs (or, for
    /// `PROXIES` and `WATCHED`, that a flood of a user's processes could push out).
    #[repr(u32)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Table {
        /// `TRACKED`: TCP sockets from SYN_SENT to CLOSE.
        Tracked = 0,
        /// `CALLS`: `connect(2)` calls in flight.
        ConnectCalls = 1,
        /// `LISTEN_CALLS`: `listen(2)` calls in flight.
        ListenCalls = 2,
        /// `PROXIES`: processes whose responses are counted.
        Proxies = 3,
        /// `WATCHED`: processes that listen on a socket.
        Watched = 4,
    }

    impl Table {
        pub const ALL: [Table; 5] = [
            Table::Tracked,
            Table::ConnectCalls,
            Table::ListenCalls,
            Table::Proxies,
            Table::Watched,
        ];

        pub const fn name(self) -> &'static str {
            match self {
                Table::Tracked => "tracked_connects",
                Table::ConnectCalls => "connect_calls",
                Table::ListenCalls => "listen_calls",
                Table::Proxies => "proxies",
                Table::Watched => "listener_owners",
            }
        }
    }
}

#[cfg(feature = "user")]
crate::impl_pod!(EventHeader);
