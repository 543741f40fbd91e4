//! TCP listeners' accept queues, as `ss -ltn` shows them: for a socket in LISTEN, the
//! kernel reports the connections waiting for `accept()` as `idiag_rqueue` and the backlog
//! it was given to `listen()` (capped by `net.core.somaxconn`) as `idiag_wqueue`. A queue at
//! its backlog means new connections are being dropped: a 502 in the making.
//!
//! Uses NETLINK_SOCK_DIAG with `inet_diag_req_v2` (Linux 3.3; the `tcp_diag` module, i.e.
//! `CONFIG_INET_DIAG`), IPv4 and IPv6, in the agent's own network namespace.
//! See <https://man7.org/linux/man-pages/man7/sock_diag.7.html>.
//!
//! Also the name of one unix socket by its inode ([`unix_socket_name`]: `unix_diag_req`
//! with `udiag_ino`, the `unix_diag` module), what a `listen(2)` on a unix socket is
//! resolved with: one answer for one socket, however many the host has.

use std::{
    io,
    net::{SocketAddr, SocketAddrV6},
};

use netlink_packet_core::{
    DecodeError, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags},
    unix::{self, nlas::UnixDiagName, UnixRequest},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket};

/// More listeners than this on one host is not a web server; stop reading rather than
/// grow without bound.
pub const MAX_ENTRIES: usize = 100_000;

/// The kernel sizes a dump's messages to the largest buffer userspace has offered, up to
/// 32 KiB per message; twice that never truncates.
const RECV_BUFFER: usize = 64 * 1024;

/// One listening socket's accept queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListenQueue {
    pub local: SocketAddr,
    pub inode: u64,
    /// Connections completed and waiting for `accept()` (`idiag_rqueue`).
    pub queued: u32,
    /// The effective `listen()` backlog (`idiag_wqueue`).
    pub backlog: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    #[error("cannot open a NETLINK_SOCK_DIAG socket")]
    Socket {
        #[source]
        source: io::Error,
    },
    #[error("cannot send the {family} TCP listener dump request")]
    Send {
        family: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot receive the {family} TCP listener dump")]
    Recv {
        family: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("a {family} sock_diag message of {len} bytes did not fit the receive buffer")]
    Truncated { family: &'static str, len: usize },
    #[error("the kernel refused the {family} TCP listener dump (is tcp_diag available?)")]
    Kernel {
        family: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot decode a {family} sock_diag message")]
    Decode {
        family: &'static str,
        #[source]
        source: DecodeError,
    },
}

/// Every TCP listener in the agent's network namespace, IPv4 first, at most
/// [`MAX_ENTRIES`].
pub fn listen_queues() -> Result<Vec<ListenQueue>, SockDiagError> {
    let socket =
        Socket::new(NETLINK_SOCK_DIAG).map_err(|source| SockDiagError::Socket { source })?;
    let mut queues = Vec::new();
    for (sequence, family) in [(1, AF_INET), (2, AF_INET6)] {
        // Stopping mid-dump leaves the rest of it queued on the socket, so a capped dump
        // ends the whole listing; the socket is closed with it.
        if !dump(&socket, family, sequence, &mut queues)? {
            break;
        }
    }
    Ok(queues)
}

fn family_name(family: u8) -> &'static str {
    if family == AF_INET {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Runs one dump into `out`; false if it stopped at [`MAX_ENTRIES`].
fn dump(
    socket: &Socket,
    family: u8,
    sequence: u32,
    out: &mut Vec<ListenQueue>,
) -> Result<bool, SockDiagError> {
    let name = family_name(family);
    let request = request(family, sequence);
    // Unconnected netlink sockets send to the kernel (port 0) by default.
    socket
        .send_to(&request, &netlink_sys::SocketAddr::new(0, 0), 0)
        .map_err(|source| SockDiagError::Send {
            family: name,
            source,
        })?;

    let mut buf = Vec::with_capacity(RECV_BUFFER);
    loop {
        buf.clear();
        // MSG_TRUNC makes recv report a datagram's full length, so truncation shows.
        let len = socket
            .recv(&mut buf, libc::MSG_TRUNC)
            .map_err(|source| SockDiagError::Recv {
                family: name,
                source,
            })?;
        if len > buf.len() {
            return Err(SockDiagError::Truncated { family: name, len });
        }
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let message =
                NetlinkMessage::<SockDiagMessage>::deserialize(rest).map_err(|source| {
                    SockDiagError::Decode {
                        family: name,
                        source,
                    }
                })?;
            // The header's length was checked against the buffer by the decoder; messages
            // are padded to 4 bytes.
            let advance = (message.header.length as usize).next_multiple_of(4);
            rest = rest.get(advance..).unwrap_or_default();
            if message.header.sequence_number != sequence {
                continue;
            }
            match message.payload {
                NetlinkPayload::Done(done) if done.code == 0 => return Ok(true),
                NetlinkPayload::Done(done) => {
                    return Err(kernel_error(name, done.code));
                }
                NetlinkPayload::Error(e) => match e.code {
                    Some(code) => return Err(kernel_error(name, code.get())),
                    None => return Ok(true),
                },
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    out.push(queue(&response));
                    if out.len() >= MAX_ENTRIES {
                        return Ok(false);
                    }
                }
                _ => {}
            }
        }
    }
}

/// `inet_diag_req_v2` for TCP sockets of `family` in LISTEN.
fn request(family: u8, sequence: u32) -> Vec<u8> {
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::LISTEN,
            socket_id,
        })
        .into(),
    );
    message.finalize();
    let mut buf = vec![0; message.header.length as usize];
    message.serialize(&mut buf);
    buf
}

/// Netlink carries errors as negative errnos.
fn kernel_error(family: &'static str, code: i32) -> SockDiagError {
    SockDiagError::Kernel {
        family,
        source: io::Error::from_raw_os_error(code.saturating_abs()),
    }
}

fn queue(response: &InetResponse) -> ListenQueue {
    let id = &response.header.socket_id;
    let local = match id.source_address {
        // Keep a link-local listener's interface, as `ss` does with `%eth0`.
        std::net::IpAddr::V6(ip) => {
            SocketAddr::V6(SocketAddrV6::new(ip, id.source_port, 0, id.interface_id))
        }
        ip => SocketAddr::new(ip, id.source_port),
    };
    ListenQueue {
        local,
        inode: u64::from(response.header.inode),
        queued: response.header.recv_queue,
        backlog: response.header.send_queue,
    }
}

/// What the kernel knows of one unix socket of the agent's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixLookup {
    /// The socket exists; what it is bound to, as `/proc/net/unix` shows it (a path, or
    /// `@` and an abstract name), or `None` when it is not bound.
    Found(Option<String>),
    /// No socket of that inode here: closed already, or in another network namespace (or
    /// the kernel has no `unix_diag`: it answers the same).
    NoSuchSocket,
}

/// The name of the unix socket of `inode`, from one `SOCK_DIAG_BY_FAMILY` request for
/// that socket alone (`udiag_ino`, any cookie), answered before `send` returns.
pub fn unix_socket_name(inode: u64) -> Result<UnixLookup, SockDiagError> {
    const FAMILY: &str = "unix";
    // Socket inodes are 32-bit numbers (get_next_ino); a larger one names no socket.
    let Ok(inode) = u32::try_from(inode) else {
        return Ok(UnixLookup::NoSuchSocket);
    };
    let socket =
        Socket::new(NETLINK_SOCK_DIAG).map_err(|source| SockDiagError::Socket { source })?;
    let sequence = 1;
    socket
        .send_to(
            &unix_request(inode, sequence),
            &netlink_sys::SocketAddr::new(0, 0),
            0,
        )
        .map_err(|source| SockDiagError::Send {
            family: FAMILY,
            source,
        })?;
    let mut buf = Vec::with_capacity(RECV_BUFFER);
    // The kernel handles the request inside `send` and queues its one answer (the socket
    // or an error) first; never waiting makes a missing answer an error, not a hang.
    let len = socket
        .recv(&mut buf, libc::MSG_TRUNC | libc::MSG_DONTWAIT)
        .map_err(|source| SockDiagError::Recv {
            family: FAMILY,
            source,
        })?;
    if len > buf.len() {
        return Err(SockDiagError::Truncated {
            family: FAMILY,
            len,
        });
    }
    let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[..]).map_err(|source| {
        SockDiagError::Decode {
            family: FAMILY,
            source,
        }
    })?;
    match message.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::UnixResponse(response))
            if response.header.inode == inode =>
        {
            Ok(UnixLookup::Found(response.name().map(unix_name)))
        }
        NetlinkPayload::Error(e) if e.code.is_some_and(|c| c.get() == -libc::ENOENT) => {
            Ok(UnixLookup::NoSuchSocket)
        }
        NetlinkPayload::Error(e) => Err(kernel_error(FAMILY, e.code.map_or(0, |c| c.get()))),
        _ => Err(SockDiagError::Decode {
            family: FAMILY,
            source: DecodeError::from("not the answer about the socket asked for"),
        }),
    }
}

/// `unix_diag_req` for the one socket `inode`, with its name.
fn unix_request(inode: u32, sequence: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(
        header,
        SockDiagMessage::UnixRequest(UnixRequest {
            state_flags: unix::StateFlags::all(),
            inode,
            show_flags: unix::ShowFlags::NAME,
            // INET_DIAG_NOCOOKIE twice: any socket of that inode.
            cookie: [0xff; 8],
        })
        .into(),
    );
    message.finalize();
    let mut buf = vec![0; message.header.length as usize];
    message.serialize(&mut buf);
    buf
}

/// A name the way `/proc/net/unix` prints it: an abstract one as `@` and the name, its
/// NULs as `@` too.
fn unix_name(name: &UnixDiagName) -> String {
    use std::os::unix::ffi::OsStrExt;
    match name {
        UnixDiagName::Pathname(path) => String::from_utf8_lossy(path.as_bytes()).into_owned(),
        UnixDiagName::Abstract(bytes) => {
            let name: Vec<u8> = bytes
                .iter()
                .map(|&b| if b == 0 { b'@' } else { b })
                .collect();
            format!("@{}", String::from_utf8_lossy(&name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_an_inet_diag_req_v2_dump() {
        let buf = request(AF_INET6, 7);
        // nlmsghdr (16) + inet_diag_req_v2 (56).
        assert_eq!(buf.len(), 72);
        assert_eq!(u32::from_ne_bytes(buf[0..4].try_into().unwrap()), 72);
        // SOCK_DIAG_BY_FAMILY
        assert_eq!(u16::from_ne_bytes(buf[4..6].try_into().unwrap()), 20);
        assert_eq!(
            u16::from_ne_bytes(buf[6..8].try_into().unwrap()),
            NLM_F_REQUEST | NLM_F_DUMP
        );
        assert_eq!(u32::from_ne_bytes(buf[8..12].try_into().unwrap()), 7);
        assert_eq!(buf[16], AF_INET6);
        assert_eq!(buf[17], IPPROTO_TCP);
        // idiag_states: only TCP_LISTEN (10).
        assert_eq!(u32::from_ne_bytes(buf[20..24].try_into().unwrap()), 1 << 10);
    }

    #[test]
    fn kernel_errors_are_positive_errnos() {
        let SockDiagError::Kernel { source, .. } = kernel_error("IPv4", -libc::ENOENT) else {
            panic!("not a kernel error");
        };
        assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
    }

    /// A listener of the test's own, with a backlog and a queue it chose: its entry in the
    /// dump must be exact.
    #[test]
    fn live_listing_shows_a_known_queue() {
        use std::os::{fd::AsRawFd, unix::fs::MetadataExt};

        const BACKLOG: u32 = 7;
        const QUEUED: u32 = 3;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // A second listen() on a listening socket sets its backlog anew.
        // SAFETY: the fd is a valid socket, owned by `listener` for this whole test.
        let listened = unsafe { libc::listen(listener.as_raw_fd(), BACKLOG as i32) };
        assert_eq!(listened, 0);
        let local = listener.local_addr().unwrap();
        // Socket inodes are what fstat reports for the fd (`socket:[inode]`).
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .unwrap()
            .ino();
        // Handshakes complete without accept(); the connections wait in the queue.
        let _clients: Vec<_> = (0..QUEUED)
            .map(|_| std::net::TcpStream::connect(local).unwrap())
            .collect();
        let expected = ListenQueue {
            local,
            inode,
            queued: QUEUED,
            backlog: BACKLOG,
        };
        // The last ACK may still be on its way to the listener when connect() returns.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            // Unprivileged processes may dump their own namespace's sockets too.
            let queues = listen_queues().unwrap();
            assert!(queues.len() <= MAX_ENTRIES);
            let ours: Vec<_> = queues.iter().filter(|q| q.local == local).collect();
            if ours == [&expected] || std::time::Instant::now() > deadline {
                assert_eq!(ours, [&expected]);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn unix_request_asks_for_one_socket_by_inode() {
        let buf = unix_request(0x1234_5678, 3);
        // nlmsghdr (16) + unix_diag_req (24).
        assert_eq!(buf.len(), 40);
        // SOCK_DIAG_BY_FAMILY, a request and not a dump.
        assert_eq!(u16::from_ne_bytes(buf[4..6].try_into().unwrap()), 20);
        assert_eq!(
            u16::from_ne_bytes(buf[6..8].try_into().unwrap()),
            NLM_F_REQUEST
        );
        assert_eq!(buf[16], libc::AF_UNIX as u8);
        // udiag_ino, udiag_show (UDIAG_SHOW_NAME), the cookie that matches any socket.
        assert_eq!(
            u32::from_ne_bytes(buf[24..28].try_into().unwrap()),
            0x1234_5678
        );
        assert_eq!(u32::from_ne_bytes(buf[28..32].try_into().unwrap()), 1);
        assert_eq!(&buf[32..40], &[0xff; 8]);
    }

    /// Sockets of the test's own, by inode: a bound path, an abstract name, an unbound
    /// one, and an inode that names no socket.
    #[test]
    fn live_unix_sockets_are_named_by_inode() {
        use std::os::{
            fd::AsRawFd,
            linux::net::SocketAddrExt,
            unix::{fs::MetadataExt, net::UnixListener},
        };
        let inode = |fd: i32| {
            std::fs::metadata(format!("/proc/self/fd/{fd}"))
                .unwrap()
                .ino()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diag.sock");
        let bound = UnixListener::bind(&path).unwrap();
        assert_eq!(
            unix_socket_name(inode(bound.as_raw_fd())).unwrap(),
            UnixLookup::Found(Some(path.display().to_string()))
        );
        let name = format!("why502-sock-diag-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let abstract_ = UnixListener::bind_addr(&address).unwrap();
        assert_eq!(
            unix_socket_name(inode(abstract_.as_raw_fd())).unwrap(),
            UnixLookup::Found(Some(format!("@{name}")))
        );
        let (unbound, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(
            unix_socket_name(inode(unbound.as_raw_fd())).unwrap(),
            UnixLookup::Found(None)
        );
        // A regular file's inode is no socket's.
        let file = std::fs::metadata(&path).unwrap().ino();
        assert_ne!(file, inode(bound.as_raw_fd()));
        let gone = inode(unbound.as_raw_fd());
        drop((unbound, _peer));
        assert_eq!(unix_socket_name(gone).unwrap(), UnixLookup::NoSuchSocket);
    }
}
