//! Outbound connects: failures (ring buffer), successes (per-CPU aggregates), the
//! kernel-side bookkeeping that ties an asynchronous outcome back to the connecting process,
//! and how proxies' upstream connections end ([`UpstreamEnd`]).
//!
//! # Following a proxy's upstream connections
//!
//! A TCP connection whose connecting process is a proxy (in the kernel's `PROXIES` map at
//! CLOSE→SYN_SENT) is *followed*: its [`TrackedConnect`] records when it was established,
//! and its end is judged from two counters of `struct tcp_sock`, both `u64` and both added
//! in Linux 4.1 (Eric Dumazet, 2015, commits 0df48c26d841 "tcp: add tcpi_bytes_acked to
//! tcp_info" and bdd1f9edacb5 "tcp: add tcpi_bytes_received to tcp_info"; RFC 4898's
//! `tcpEStatsAppHCThruOctetsAcked` / `...Received`):
//!
//! - `bytes_acked`, the sum of all advances of `snd_una`: the peer's acknowledgement of
//!   our SYN counts 1, so the request bytes the upstream acknowledged are `bytes_acked - 1`
//!   (and a FIN of ours, once acknowledged, one more).
//! - `bytes_received`, the sum of all advances of `rcv_nxt` after the handshake (the
//!   peer's SYN is not counted): response bytes, plus 1 once the peer's FIN is in. The
//!   kernel advances `rcv_nxt` past a FIN before it moves the socket to CLOSE_WAIT, so at
//!   ESTABLISHED→CLOSE_WAIT `bytes_received <= 1` means no response byte (verified on
//!   Linux 6.18).
//!
//! The offsets come from BTF (`KernelOffsets::tcp_bytes_received`, `tcp_bytes_acked`);
//! without them nothing is followed and the agent warns. The counters are per connection:
//! on a keepalive connection that already carried a response, a later request's failure is
//! not seen this way (`bytes_received` is no longer 0).

use crate::{
    header::EventHeader,
    net::{RawSockAddr, SockTuple},
};

/// Where the errno of a [`TcpConnectFailure`] came from.
pub mod errno_source {
    /// Neither source had one: the connecting process closed the socket itself (for example
    /// a proxy's own connect timeout).
    pub const NONE: u8 = 0;
    /// `sock.sk_err`, read at the SYN_SENT→CLOSE transition.
    pub const SK_ERR: u8 = 1;
    /// `sock:inet_sk_error_report` seen for the same connection.
    pub const ERROR_REPORT: u8 = 2;
}

/// A TCP socket went SYN_SENT→CLOSE: the handshake never completed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpConnectFailure {
    pub header: EventHeader,
    pub tuple: SockTuple,
    /// Time spent in SYN_SENT.
    pub duration_ns: u64,
    /// Positive errno (`ECONNREFUSED`, `ETIMEDOUT`, `EHOSTUNREACH`…), 0 when none was set.
    pub errno: i32,
    pub syn_retransmits: u16,
    pub errno_source: u8,
    /// 1 when the agent saw the socket enter SYN_SENT (so the process fields are known).
    pub owner_known: u8,
}

/// `connect(2)` returned an error itself, for any socket family we decode.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectSyscallError {
    pub header: EventHeader,
    pub addr: RawSockAddr,
    pub duration_ns: u64,
    pub fd: i32,
    /// Positive errno.
    pub errno: i32,
    /// The caller's mount namespace (`ns.inum`), where a unix socket path resolves; 0 when
    /// not known (no BTF).
    pub mntns: u32,
    pub _pad: u32,
}

/// Kernel bookkeeping for one TCP socket from CLOSE→SYN_SENT until CLOSE, keyed by the
/// socket's kernel address. The connecting process is only `current` at SYN_SENT, so it is
/// remembered here for the events that fire later in softirq context.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TrackedConnect {
    /// CLOSE→SYN_SENT (`bpf_ktime_get_ns`).
    pub start_ns: u64,
    /// SYN_SENT→ESTABLISHED, 0 before.
    pub established_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    /// The connecting process's parent (`real_parent->tgid`), 0 when unknown (no BTF) or
    /// not needed (the process is a proxy already): a failure marks the process as a
    /// proxy only when it or this parent listens (see `agent_common::proxy`).
    pub ppid: u32,
    pub _pad_ppid: u32,
    pub comm: [u8; crate::COMM_LEN],
    pub syn_retransmits: u16,
    /// 1 once the handshake completed.
    pub established: u8,
    /// 1 when the connection is followed to its end (a proxy's upstream connection, see
    /// the module documentation).
    pub follow: u8,
    /// 1 once the end of a followed connection was reported (an [`UpstreamEnd`] or a reset
    /// received): it is then not counted as [`ConnectStats::closed_ok`].
    pub end_reported: u8,
    pub _pad: [u8; 3],
}

/// What crossed a followed connection, from `tcp_sock`'s counters (see the module
/// documentation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Time since SYN_SENT→ESTABLISHED.
    pub duration_ns: u64,
    /// Bytes the upstream acknowledged: `bytes_acked` without our SYN (and without our
    /// FIN once that is acknowledged).
    pub bytes_sent: u64,
    /// Bytes received from the upstream: `bytes_received` without its FIN.
    pub bytes_received: u64,
}

/// How a followed upstream connection ended badly ([`UpstreamEnd::how`]).
pub mod end_how {
    /// ESTABLISHED→CLOSE_WAIT with no response byte: the upstream sent its FIN first
    /// (nginx: "upstream prematurely closed connection").
    pub const CLOSED_BY_UPSTREAM: u32 = 1;
    /// ESTABLISHED→FIN_WAIT1 after the request was acknowledged, no response byte, at
    /// least `KernelConfig::response_timeout_ns` after the handshake: the proxy stopped
    /// waiting (nginx: "upstream timed out … while reading response header").
    pub const PROXY_GAVE_UP: u32 = 2;
}

/// A followed upstream connection ended without a response (resets are reported as
/// [`crate::tcp::TcpResetReceived`], with their [`Traffic`]). The header is the
/// connecting process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UpstreamEnd {
    pub header: EventHeader,
    pub tuple: SockTuple,
    pub traffic: Traffic,
    /// One of [`end_how`].
    pub how: u32,
    pub _pad: u32,
}

/// Kernel bookkeeping for one `connect(2)` call in flight, keyed by pid_tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectCall {
    pub start_ns: u64,
    /// The caller's `struct sockaddr *`: the address is only read (at the syscall's exit)
    /// when the call failed, not on every connect of the host.
    pub uaddr: u64,
    pub addrlen: u32,
    pub fd: i32,
    /// What the TCP state machine did with this call's handshake failure
    /// ([`call_outcome`]), so that it is reported once, by one of the two.
    pub reported: u32,
    pub _pad: u32,
}

/// Values of [`ConnectCall::reported`].
pub mod call_outcome {
    /// Nothing yet: the syscall's error return is reported unless it is a TCP handshake
    /// failure (refused, timed out), which the state machine reports, also when a
    /// non-blocking proxy (HAProxy) asks for it with a second `connect(2)`.
    pub const PENDING: u32 = 0;
    /// The state machine reported the failure (it knew the errno).
    pub const REPORTED: u32 = 1;
    /// The state machine saw the handshake fail without an errno (no BTF for `sk_err`,
    /// and the error report comes after the move to CLOSE; or no SYN was sent) and left
    /// the report to the syscall's return, whatever the errno.
    pub const DEFERRED: u32 = 2;
}

/// Key of the per-CPU success aggregates: who connected where.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectKey {
    pub tgid: u32,
    /// The socket's network namespace (`ns.inum`, 0 without BTF): two pods' `10.0.0.2:80`
    /// are two destinations.
    pub netns: u32,
    pub family: u16,
    pub dport: u16,
    pub daddr: [u8; 16],
}

/// Buckets of the connect-latency histogram: bucket `i` counts handshakes that took
/// `[2^i, 2^(i+1))` microseconds (bucket 0 also takes < 1 µs, the last one everything above).
/// 2^20 µs ≈ 1.05 s, so the 1 s / 3 s / 7 s SYN-retransmit steps land in distinct buckets.
pub const LATENCY_BUCKETS: usize = 24;

/// Per-CPU success aggregates for one [`ConnectKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectStats {
    pub established: u64,
    pub latency_sum_ns: u64,
    /// Retransmitted segments on established connections of this key.
    pub retransmits: u64,
    /// Followed connections (a proxy's upstream connections) of this key that ended
    /// normally: at CLOSE, with no [`UpstreamEnd`] or reset reported and no socket error.
    pub closed_ok: u64,
    pub latency_hist: [u64; LATENCY_BUCKETS],
}

impl ConnectStats {
    pub const ZERO: Self = Self {
        established: 0,
        latency_sum_ns: 0,
        retransmits: 0,
        closed_ok: 0,
        latency_hist: [0; LATENCY_BUCKETS],
    };
}

/// The histogram bucket for a latency in nanoseconds, without loops (the verifier prefers
/// straight-line code) and without `leading_zeros` (no BPF instruction for it).
#[inline(always)]
pub fn latency_bucket(ns: u64) -> usize {
    let mut us = ns / 1000;
    let mut bucket = 0usize;
    if us >= 1 << 16 {
        us >>= 16;
        bucket += 16;
    }
    if us >= 1 << 8 {
        us >>= 8;
        bucket += 8;
    }
    if us >= 1 << 4 {
        us >>= 4;
        bucket += 4;
    }
    if us >= 1 << 2 {
        us >>= 2;
        bucket += 2;
    }
    if us >= 1 << 1 {
        bucket += 1;
    }
    if bucket >= LATENCY_BUCKETS {
        LATENCY_BUCKETS - 1
    } else {
        bucket
    }
}

#[cfg(feature = "user")]
crate::impl_pod!(
    TcpConnectFailure,
    ConnectSyscallError,
    TrackedConnect,
    Traffic,
    UpstreamEnd,
    ConnectCall,
    ConnectKey,
    ConnectStats
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_follow_powers_of_two() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1_999), 0);
        assert_eq!(latency_bucket(2_000), 1);
        assert_eq!(latency_bucket(3_999), 1);
        assert_eq!(latency_bucket(4_000), 2);
        assert_eq!(latency_bucket(1_000_000), 9);
        // SYN retransmit steps: ~1 s, ~3 s, ~7 s are in different buckets.
        let one = latency_bucket(1_020_000_000);
        let three = latency_bucket(3_020_000_000);
        let seven = latency_bucket(7_020_000_000);
        assert!(one < three && three < seven, "{one} {three} {seven}");
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }
}
