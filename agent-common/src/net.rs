//! Socket addresses as the kernel programs capture them.

/// `AF_UNIX`.
pub const AF_UNIX: u16 = 1;
/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// A TCP connection's two ends, IPv4 or IPv6.
///
/// Ports are in host byte order. IPv4 addresses use the first four bytes of `saddr`/`daddr`
/// (network order); the rest is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockTuple {
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Room for the largest address `connect(2)` takes that we decode (`sockaddr_un`: 110 bytes).
pub const SOCKADDR_MAX: usize = 112;

/// A `struct sockaddr` copied from the caller's memory, as passed to `connect(2)`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawSockAddr {
    /// Bytes the caller said the address has (`addrlen`).
    pub len: u32,
    pub family: u16,
    pub _pad: u16,
    /// The address itself, starting with `sa_family`.
    pub bytes: [u8; SOCKADDR_MAX],
}

#[cfg(feature = "user")]
crate::impl_pod!(SockTuple, RawSockAddr);
