//! The ring-buffer record: a fixed header followed by one typed payload.
//!
//! The kernel programs reserve a whole record (`header` + payload) and fill it in place; the
//! agent reads `header.kind` and reinterprets the bytes as the matching record type.
//!
//! Every kind is defined once, in the `event_kinds!` invocation below: its stable number,
//! its name (counters, logs), its record type and where that type keeps its header. The
//! enum, [`EventKind::ALL`], [`EventKind::name`], [`EventKind::from_u32`],
//! [`EVENT_KIND_SLOTS`] and the [`Record`] impls all come from it, so the kernel (which
//! reserves by record type) and the agent (which decodes by kind) cannot disagree. Kinds
//! are fixed numbers: never renumber one, only add.

use core::mem::{align_of, offset_of, size_of};

pub use crate::header::{counter, EventHeader};
use crate::{connect, listener, process, tcp};

/// A ring-buffer record type: `#[repr(C)]` (or `#[repr(transparent)]`) plain old data that
/// starts with an [`EventHeader`], and the one kind it is written as.
///
/// Implemented only by `event_kinds!`, once per kind: a record type has exactly one kind
/// and a kind exactly one record type.
pub trait Record: Copy + 'static {
    /// The kind in this record's header.
    const KIND: EventKind;
}

/// Type-level helper of the layout checks: accepts only a path to an [`EventHeader`] field.
const fn is_header<T>(_field: fn(&T) -> &EventHeader) {}

/// Defines the event kinds; see the module documentation.
///
/// Each entry: `Variant = number, "name", RecordType { path.to.header };`. The checks it
/// emits per record: the header path names an [`EventHeader`] at offset 0, and the record's
/// alignment is what the ring buffer gives (8 bytes) with a size that is a multiple of it.
macro_rules! event_kinds {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident = $number:literal, $name:literal, $record:ty { $($header:tt).+ };
    )+) => {
        /// The kind of a ring-buffer record. Values are stable.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventKind {
            $(
                $(#[doc = $doc])*
                $variant = $number,
            )+
        }

        impl EventKind {
            /// Number of kinds.
            pub const COUNT: usize = [$($number),+].len();

            /// Every kind, in number order.
            pub const ALL: [EventKind; Self::COUNT] = [$(Self::$variant),+];

            /// The kind's name in counters, metrics and logs (snake_case).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }

            /// Decodes a raw kind number (`EventHeader::kind`).
            pub const fn from_u32(kind: u32) -> Option<Self> {
                match kind {
                    $($number => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        $(
            impl Record for $record {
                const KIND: EventKind = EventKind::$variant;
            }

            const _: () = {
                is_header::<$record>(|record| &record.$($header).+);
                assert!(
                    offset_of!($record, $($header).+) == 0,
                    concat!("the header of ", stringify!($record), " is not at offset 0"),
                );
                assert!(
                    align_of::<$record>() == align_of::<EventHeader>(),
                    concat!(stringify!($record), " is not 8-byte aligned like the ring buffer"),
                );
                assert!(
                    size_of::<$record>() % align_of::<$record>() == 0,
                    concat!("the size of ", stringify!($record), " is not a multiple of 8"),
                );
            };
        )+
    };
}

event_kinds! {
    /// A TCP connect that left SYN_SENT for CLOSE (refused, unreachable, timed out, aborted).
    TcpConnectFailure = 1, "tcp_connect_failure", connect::TcpConnectFailure { header };
    /// `connect(2)` itself returned an error (TCP or unix socket), other than `EINPROGRESS`.
    ConnectSyscallError = 2, "connect_syscall_error", connect::ConnectSyscallError { header };
    /// RST received on a connection that was past SYN_SENT.
    TcpResetReceived = 3, "tcp_reset_received", tcp::TcpResetReceived { header };
    /// RST sent on a socket (the kernel's `reason` says why).
    TcpResetSent = 4, "tcp_reset_sent", tcp::TcpResetSent { header };
    /// SYN retransmitted by a connecting socket.
    TcpSynRetransmit = 5, "tcp_syn_retransmit", tcp::TcpSynRetransmit { 0.header };
    /// SYN-ACK retransmitted by a listener (the client did not complete the handshake).
    TcpSynAckRetransmit = 6, "tcp_synack_retransmit", tcp::TcpSynAckRetransmit { 0.header };
    /// A TCP socket entered LISTEN.
    ListenerOpened = 7, "listener_opened", listener::ListenerOpened { 0.header };
    /// A TCP socket left LISTEN.
    ListenerClosed = 8, "listener_closed", listener::ListenerClosed { 0.header };
    /// `listen(2)` succeeded; userspace resolves the fd (this is how unix listeners are seen).
    ListenCall = 9, "listen_call", listener::ListenCall { header };
    /// A process called `execve(2)` successfully.
    ProcessExec = 10, "process_exec", process::ProcessExec { header };
    /// The last thread of a process exited.
    ProcessExit = 11, "process_exit", process::ProcessExit { header };
    /// A watched (usually fatal) signal was generated.
    Signal = 12, "signal", process::Signal { header };
    /// The OOM killer chose a victim.
    OomKill = 13, "oom_kill", process::OomKill { header };
    /// A proxy's upstream connection ended without a response byte: the upstream closed
    /// first, or the proxy gave up waiting (see [`connect::UpstreamEnd`]).
    UpstreamEnd = 14, "upstream_end", connect::UpstreamEnd { header };
}

/// The highest kind number plus one (kinds start at 1): the length of per-kind counter
/// arrays. Computed from [`EventKind::ALL`].
pub const EVENT_KIND_SLOTS: u32 = {
    let mut max = 0;
    let mut i = 0;
    while i < EventKind::ALL.len() {
        let number = EventKind::ALL[i] as u32;
        // 0 is what a zeroed record says: never a valid kind.
        assert!(number >= 1, "event kind numbers start at 1");
        if number > max {
            max = number;
        }
        i += 1;
    }
    max + 1
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The stable numbers and names: a record written by one version must mean the same to
    /// another, and counter names are part of the metrics.
    const STABLE: [(u32, &str); 14] = [
        (1, "tcp_connect_failure"),
        (2, "connect_syscall_error"),
        (3, "tcp_reset_received"),
        (4, "tcp_reset_sent"),
        (5, "tcp_syn_retransmit"),
        (6, "tcp_synack_retransmit"),
        (7, "listener_opened"),
        (8, "listener_closed"),
        (9, "listen_call"),
        (10, "process_exec"),
        (11, "process_exit"),
        (12, "signal"),
        (13, "oom_kill"),
        (14, "upstream_end"),
    ];

    #[test]
    fn numbers_and_names_are_stable() {
        assert_eq!(EventKind::ALL.len(), STABLE.len());
        for (kind, (number, name)) in EventKind::ALL.into_iter().zip(STABLE) {
            assert_eq!((kind as u32, kind.name()), (number, name));
        }
        assert_eq!(EVENT_KIND_SLOTS, 15);
    }

    #[test]
    fn from_u32_inverts_the_numbers() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_u32(kind as u32), Some(kind));
        }
        assert_eq!(EventKind::from_u32(0), None);
        assert_eq!(EventKind::from_u32(EVENT_KIND_SLOTS), None);
        assert_eq!(EventKind::from_u32(u32::MAX), None);
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in EventKind::ALL.iter().enumerate() {
            for b in &EventKind::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }

    #[test]
    fn every_record_type_has_its_own_kind() {
        fn kind<T: Record>() -> EventKind {
            T::KIND
        }
        let kinds = [
            kind::<connect::TcpConnectFailure>(),
            kind::<connect::ConnectSyscallError>(),
            kind::<tcp::TcpResetReceived>(),
            kind::<tcp::TcpResetSent>(),
            kind::<tcp::TcpSynRetransmit>(),
            kind::<tcp::TcpSynAckRetransmit>(),
            kind::<listener::ListenerOpened>(),
            kind::<listener::ListenerClosed>(),
            kind::<listener::ListenCall>(),
            kind::<process::ProcessExec>(),
            kind::<process::ProcessExit>(),
            kind::<process::Signal>(),
            kind::<process::OomKill>(),
            kind::<connect::UpstreamEnd>(),
        ];
        assert_eq!(kinds, EventKind::ALL);
    }
}
