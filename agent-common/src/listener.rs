//! Sockets entering and leaving LISTEN.

use crate::{header::EventHeader, net::SockTuple};

/// A TCP socket entered or left LISTEN: the layout of [`ListenerOpened`] and
/// [`ListenerClosed`]. The header names the process that called `listen(2)` or closed the
/// socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ListenerChange {
    pub header: EventHeader,
    /// The local address in `saddr`/`sport`.
    pub tuple: SockTuple,
}

/// [`EventKind::ListenerOpened`](crate::event::EventKind::ListenerOpened): a TCP socket
/// entered LISTEN.
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct ListenerOpened(pub ListenerChange);

/// [`EventKind::ListenerClosed`](crate::event::EventKind::ListenerClosed): a TCP socket left
/// LISTEN.
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct ListenerClosed(pub ListenerChange);

/// `listen(2)` returned 0 on `fd`. TCP listeners are reported by [`ListenerOpened`] too;
/// this is how the agent learns of unix-socket listeners, which have no tracepoint.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ListenCall {
    pub header: EventHeader,
    pub fd: i32,
    /// The caller's mount namespace (`ns.inum`), where the socket's path resolves; 0 when
    /// not known (no BTF).
    pub mntns: u32,
}

#[cfg(feature = "user")]
crate::impl_pod!(ListenerChange, ListenerOpened, ListenerClosed, ListenCall);
