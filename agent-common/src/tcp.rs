//! Resets and retransmits on TCP connections.

use crate::{connect::Traffic, header::EventHeader, net::SockTuple};

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const FIN_WAIT1: i32 = 4;
    pub const FIN_WAIT2: i32 = 5;
    pub const TIME_WAIT: i32 = 6;
    pub const CLOSE: i32 = 7;
    pub const CLOSE_WAIT: i32 = 8;
    pub const LAST_ACK: i32 = 9;
    pub const LISTEN: i32 = 10;
    pub const CLOSING: i32 = 11;
    pub const NEW_SYN_RECV: i32 = 12;
}

/// `tcp:tcp_receive_reset` on a socket past SYN_SENT (refused connects are reported as
/// [`crate::connect::TcpConnectFailure`] instead).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpResetReceived {
    pub header: EventHeader,
    pub tuple: SockTuple,
    /// TCP state when the RST arrived, -1 when unknown.
    pub state: i32,
    /// 1 when the socket's owner was recorded at connect time.
    pub owner_known: u32,
    /// What had crossed the connection when the RST arrived: whether the upstream had
    /// answered. Only meaningful when `followed` is 1, zero otherwise.
    pub traffic: Traffic,
    /// 1 when the connection was followed from its connect (a proxy's upstream
    /// connection, see [`crate::connect`]).
    pub followed: u32,
    pub _pad: u32,
}

/// `tcp:tcp_send_reset` on a full socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpResetSent {
    pub header: EventHeader,
    pub tuple: SockTuple,
    pub state: i32,
    /// `enum sk_rst_reason` (Linux 6.10+), -1 when the kernel does not report it.
    pub reason: i32,
    pub owner_known: u32,
    pub _pad: u32,
}

/// A SYN (client side) or SYN-ACK (listener side) retransmission: the layout of
/// [`TcpSynRetransmit`] and [`TcpSynAckRetransmit`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpHandshakeRetransmit {
    pub header: EventHeader,
    pub tuple: SockTuple,
    /// Retransmissions of this SYN so far (SYN only; 0 for SYN-ACK).
    pub count: u32,
    pub owner_known: u32,
}

/// [`EventKind::TcpSynRetransmit`](crate::event::EventKind::TcpSynRetransmit): a connecting
/// socket retransmitted its SYN.
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct TcpSynRetransmit(pub TcpHandshakeRetransmit);

/// [`EventKind::TcpSynAckRetransmit`](crate::event::EventKind::TcpSynAckRetransmit): a
/// listener retransmitted a SYN-ACK (`count` is 0).
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct TcpSynAckRetransmit(pub TcpHandshakeRetransmit);

#[cfg(feature = "user")]
crate::impl_pod!(
    TcpResetReceived,
    TcpResetSent,
    TcpHandshakeRetransmit,
    TcpSynRetransmit,
    TcpSynAckRetransmit
);
