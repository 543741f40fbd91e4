//! The ring-buffer record: a fixed header followed by one typed payload.
//!
//! The kernel programs reserve a whole record (`header` + payload) and fill it in place; the
//! agent reads `header.kind` and reinterprets the bytes as the matching record type. Kinds
//! are fixed numbers: never renumber one, only add.

use crate::COMM_LEN;

/// The kind of a ring-buffer record. Values are stable.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A TCP connect that left SYN_SENT for CLOSE (refused, unreachable, timed out, aborted).
    TcpConnectFailure = 1,
    /// `connect(2)` itself returned an error (TCP or unix socket), other than `EINPROGRESS`.
    ConnectSyscallError = 2,
    /// RST received on a connection that was past SYN_SENT.
    TcpResetReceived = 3,
    /// RST sent on a socket (the kernel's `reason` says why).
    TcpResetSent = 4,
    /// SYN retransmitted by a connecting socket.
    TcpSynRetransmit = 5,
    /// SYN-ACK retransmitted by a listener (the client did not complete the handshake).
    TcpSynAckRetransmit = 6,
    /// A TCP socket entered LISTEN.
    ListenerOpened = 7,
    /// A TCP socket left LISTEN.
    ListenerClosed = 8,
    /// `listen(2)` succeeded; userspace resolves the fd (this is how unix listeners are seen).
    ListenCall = 9,
    /// A process called `execve(2)` successfully.
    ProcessExec = 10,
    /// The last thread of a process exited.
    ProcessExit = 11,
    /// A watched (usually fatal) signal was generated.
    Signal = 12,
    /// The OOM killer chose a victim.
    OomKill = 13,
}

/// Number of event kinds, plus one (kinds start at 1): the length of per-kind counter arrays.
pub const EVENT_KIND_SLOTS: u32 = 14;

impl EventKind {
    /// Decodes a raw kind number.
    pub fn from_u32(kind: u32) -> Option<Self> {
        Some(match kind {
            1 => Self::TcpConnectFailure,
            2 => Self::ConnectSyscallError,
            3 => Self::TcpResetReceived,
            4 => Self::TcpResetSent,
            5 => Self::TcpSynRetransmit,
            6 => Self::TcpSynAckRetransmit,
            7 => Self::ListenerOpened,
            8 => Self::ListenerClosed,
            9 => Self::ListenCall,
            10 => Self::ProcessExec,
            11 => Self::ProcessExit,
            12 => Self::Signal,
            13 => Self::OomKill,
            _ => return None,
        })
    }
}

/// Common to every record.
///
/// `tgid`/`pid`/`comm`/`cgroup_id` describe the process the event is *about* (the connecting
/// process for a connect failure, the sender for a signal), which is not always the task that
/// was running when the tracepoint fired. A zero `tgid` means the kernel did not know it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    /// Thread id (the kernel's `pid`).
    pub pid: u32,
    /// Process id (the kernel's `tgid`).
    pub tgid: u32,
    pub _pad: u32,
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    /// cgroup v2 id of the process (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// Counters kept per CPU in the `COUNTERS` array, indexed by these slots.
pub mod counter {
    /// Records lost because the ring buffer was full: slot `DROPPED_BASE + kind`.
    pub const DROPPED_BASE: u32 = 0;
    /// Probe errors (a failed read of kernel or user memory): slot `PROBE_ERROR_BASE + probe`.
    pub const PROBE_ERROR_BASE: u32 = 32;
    /// Total number of slots.
    pub const SLOTS: u32 = 64;
}

#[cfg(feature = "user")]
crate::impl_pod!(EventHeader);
