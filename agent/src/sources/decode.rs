//! Ring-buffer records → [`Event`]s.

use std::{
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use agent_common::{
    connect::{self, end_how, errno_source},
    event::{EventHeader, EventKind, Record},
    listener, net, process, tcp,
};

use crate::model::{
    clock,
    event::{
        ConnectFailure, ConnectSyscallError, EndHow, Endpoint, Errno, Event, EventDetail, Exec,
        Exit, HandshakeRetransmit, Listener, OomKill, ProcessRef, SignalSent, Source, TcpReset,
        Traffic, UpstreamEnd,
    },
    namespace::{MntNs, NetNs},
    signal,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is too short for {what} ({need} bytes)")]
    Truncated {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("connect(2) address of family {0} cannot be decoded")]
    Family(u16),
    #[error("unknown way {0} for an upstream connection to end")]
    EndHow(u32),
}

/// What a record decodes to.
#[derive(Debug, Clone)]
pub enum Decoded {
    Event(Event),
    /// A successful `listen(2)`: the enrichment stage resolves the fd to a unix socket path
    /// (TCP listeners arrive as [`EventDetail::ListenerOpened`] already).
    ListenCall {
        process: ProcessRef,
        mono_ns: u64,
        fd: i32,
        /// The caller's mount namespace, where the socket's path resolves.
        mntns: MntNs,
    },
}

/// The record of type `T` at the start of `bytes`; a short record is reported under the
/// name of `T`'s kind.
fn read<T: Record>(bytes: &[u8]) -> Result<T, DecodeError> {
    read_pod(bytes, T::KIND.name())
}

/// The header every record starts with.
fn read_header(bytes: &[u8]) -> Result<EventHeader, DecodeError> {
    read_pod(bytes, "header")
}

/// Only for agent-common's ring-buffer types: `#[repr(C)]` plain old data, valid for any
/// bit pattern.
fn read_pod<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Truncated {
            what,
            len: bytes.len(),
            need: size_of::<T>(),
        });
    }
    // SAFETY: the length was checked; T is a #[repr(C)] plain-old-data record (the callers
    // above) and the read is unaligned-safe.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let header = read_header(bytes)?;
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    // The socket's namespace for records about a socket, the task's for the others.
    let netns = NetNs::from_kernel(header.netns);
    let detail = match kind {
        EventKind::TcpConnectFailure => {
            let r = read::<connect::TcpConnectFailure>(bytes)?;
            let (src, dst) = tuple_addrs(&r.tuple);
            let header = owned(header, r.owner_known != 0);
            return Ok(event(
                header,
                EventDetail::TcpConnectFailure(ConnectFailure {
                    nat_destination: None,
                    src,
                    dst,
                    netns,
                    errno: Errno(r.errno),
                    errno_source: match r.errno_source {
                        errno_source::SK_ERR => "sk_err",
                        errno_source::ERROR_REPORT => "error_report",
                        _ => "none",
                    },
                    duration: Duration::from_nanos(r.duration_ns),
                    syn_retransmits: r.syn_retransmits,
                }),
            ));
        }
        EventKind::ConnectSyscallError => {
            let r = read::<connect::ConnectSyscallError>(bytes)?;
            EventDetail::ConnectSyscallError(ConnectSyscallError {
                nat_destination: None,
                dst: sockaddr_endpoint(&r.addr, netns, MntNs::from_kernel(r.mntns))?,
                errno: Errno(r.errno),
                fd: r.fd,
                duration: Duration::from_nanos(r.duration_ns),
            })
        }
        EventKind::TcpResetReceived => {
            let r = read::<tcp::TcpResetReceived>(bytes)?;
            let (src, dst) = tuple_addrs(&r.tuple);
            let header = owned(header, r.owner_known != 0);
            return Ok(event(
                header,
                EventDetail::TcpResetReceived(TcpReset {
                    nat_destination: None,
                    src,
                    dst,
                    netns,
                    state: tcp_state_name(r.state),
                    reason: None,
                    // Only a followed connection (a proxy's upstream) has its traffic.
                    traffic: (r.followed != 0).then(|| traffic(&r.traffic)),
                }),
            ));
        }
        EventKind::TcpResetSent => {
            let r = read::<tcp::TcpResetSent>(bytes)?;
            let (src, dst) = tuple_addrs(&r.tuple);
            let header = owned(header, r.owner_known != 0);
            return Ok(event(
                header,
                EventDetail::TcpResetSent(TcpReset {
                    nat_destination: None,
                    src,
                    dst,
                    netns,
                    state: tcp_state_name(r.state),
                    reason: (r.reason >= 0).then_some(r.reason),
                    traffic: None,
                }),
            ));
        }
        EventKind::TcpSynRetransmit => {
            let tcp::TcpSynRetransmit(r) = read(bytes)?;
            let (header, retransmit) = handshake_retransmit(header, netns, &r);
            return Ok(event(header, EventDetail::TcpSynRetransmit(retransmit)));
        }
        EventKind::TcpSynAckRetransmit => {
            let tcp::TcpSynAckRetransmit(r) = read(bytes)?;
            let (header, retransmit) = handshake_retransmit(header, netns, &r);
            return Ok(event(header, EventDetail::TcpSynackRetransmit(retransmit)));
        }
        EventKind::ListenerOpened => {
            let listener::ListenerOpened(r) = read(bytes)?;
            EventDetail::ListenerOpened(kernel_listener(&r, netns))
        }
        EventKind::ListenerClosed => {
            let listener::ListenerClosed(r) = read(bytes)?;
            EventDetail::ListenerClosed(kernel_listener(&r, netns))
        }
        EventKind::ListenCall => {
            let r = read::<listener::ListenCall>(bytes)?;
            return Ok(Decoded::ListenCall {
                process: process_ref(&header),
                mono_ns: header.ts_ns,
                fd: r.fd,
                mntns: MntNs::from_kernel(r.mntns),
            });
        }
        EventKind::ProcessExec => {
            let r = read::<process::ProcessExec>(bytes)?;
            EventDetail::ProcessExec(Exec {
                ppid: r.ppid,
                filename: c_string(&r.filename),
            })
        }
        EventKind::ProcessExit => {
            let r = read::<process::ProcessExit>(bytes)?;
            let mut exit = Exit::from_wait_status(r.exit_code);
            exit.ppid = (r.ppid != 0).then_some(r.ppid);
            EventDetail::ProcessExit(exit)
        }
        EventKind::Signal => {
            let r = read::<process::Signal>(bytes)?;
            let tgid = signal_target_process(&r);
            EventDetail::Signal(SignalSent {
                signal: signal::signal_name(r.signal),
                signal_number: r.signal,
                target_pid: tgid,
                target_tid: (tgid != r.target_pid).then_some(r.target_pid),
                target_comm: c_string(&r.target_comm),
                origin: signal_origin(r.code),
                group: r.group != 0,
                result: match r.result {
                    0 => "delivered",
                    1 => "ignored",
                    2 => "already_pending",
                    3 => "overflow",
                    4 => "lost_info",
                    _ => "unknown",
                },
                target: None,
            })
        }
        EventKind::OomKill => {
            let r = read::<process::OomKill>(bytes)?;
            EventDetail::OomKill(OomKill {
                victim_pid: r.victim_pid,
                victim_comm: c_string(&r.victim_comm),
                total_vm_kb: r.total_vm_kb,
                anon_rss_kb: r.anon_rss_kb,
                file_rss_kb: r.file_rss_kb,
                shmem_rss_kb: r.shmem_rss_kb,
                pgtables_kb: r.pgtables_kb,
                uid: r.uid,
                oom_score_adj: r.oom_score_adj,
                victim: None,
            })
        }
        EventKind::UpstreamEnd => {
            let r = read::<connect::UpstreamEnd>(bytes)?;
            let (src, dst) = tuple_addrs(&r.tuple);
            EventDetail::UpstreamEnd(UpstreamEnd {
                nat_destination: None,
                src,
                dst,
                netns,
                how: match r.how {
                    end_how::CLOSED_BY_UPSTREAM => EndHow::ClosedByUpstream,
                    end_how::PROXY_GAVE_UP => EndHow::ProxyGaveUp,
                    other => return Err(DecodeError::EndHow(other)),
                },
                traffic: traffic(&r.traffic),
            })
        }
    };
    Ok(event(header, detail))
}

fn traffic(t: &connect::Traffic) -> Traffic {
    Traffic {
        duration: Duration::from_nanos(t.duration_ns),
        bytes_sent: t.bytes_sent,
        bytes_received: t.bytes_received,
    }
}

/// A SYN or SYN-ACK retransmission, with its owner if the kernel knew it.
fn handshake_retransmit(
    header: EventHeader,
    netns: NetNs,
    r: &tcp::TcpHandshakeRetransmit,
) -> (EventHeader, HandshakeRetransmit) {
    let (src, dst) = tuple_addrs(&r.tuple);
    let retransmit = HandshakeRetransmit {
        src,
        dst,
        netns,
        count: r.count,
    };
    (owned(header, r.owner_known != 0), retransmit)
}

/// A TCP listener the kernel saw open or close.
fn kernel_listener(r: &listener::ListenerChange, netns: NetNs) -> Listener {
    Listener {
        endpoint: tuple_addrs(&r.tuple).0,
        netns,
        source: Source::Kernel,
    }
}

/// The header, with no process when the kernel did not know the socket's owner.
fn owned(mut header: EventHeader, owner_known: bool) -> EventHeader {
    if !owner_known {
        header.tgid = 0;
    }
    header
}

fn event(header: EventHeader, detail: EventDetail) -> Decoded {
    Decoded::Event(Event {
        time: clock::wall_time(header.ts_ns),
        mono_ns: header.ts_ns,
        process: (header.tgid != 0).then(|| process_ref(&header)),
        detail,
    })
}

fn process_ref(header: &EventHeader) -> ProcessRef {
    ProcessRef {
        pid: header.tgid,
        tid: header.pid,
        comm: c_string(&header.comm),
        thread: None,
        cgroup_id: header.cgroup_id,
        info: None,
    }
}

/// A NUL-terminated (or full) byte array as text.
pub fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn ip(family: u16, bytes: &[u8; 16]) -> IpAddr {
    if family == net::AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

fn tuple_addrs(t: &net::SockTuple) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(ip(t.family, &t.saddr), t.sport),
        SocketAddr::new(ip(t.family, &t.daddr), t.dport),
    )
}

/// A `connect(2)` address: an IP one in `netns`, a unix path in `mntns` (the caller's).
fn sockaddr_endpoint(
    addr: &net::RawSockAddr,
    netns: NetNs,
    mntns: MntNs,
) -> Result<Endpoint, DecodeError> {
    let b = &addr.bytes;
    let port = u16::from_be_bytes([b[2], b[3]]);
    match addr.family {
        net::AF_INET => Ok(Endpoint::Tcp(
            netns,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(b[4], b[5], b[6], b[7])), port),
        )),
        net::AF_INET6 => {
            let mut ip6 = [0u8; 16];
            ip6.copy_from_slice(&b[8..24]);
            Ok(Endpoint::Tcp(
                netns,
                SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip6)), port),
            ))
        }
        net::AF_UNIX => {
            let path = &b[2..110];
            if path[0] == 0 {
                // Abstract: the name is the bytes after the NUL, as long as addrlen says.
                let len = (addr.len as usize).saturating_sub(3).min(path.len() - 1);
                Ok(Endpoint::Unix(
                    mntns,
                    format!("@{}", String::from_utf8_lossy(&path[1..1 + len])),
                ))
            } else {
                Ok(Endpoint::Unix(mntns, c_string(path)))
            }
        }
        other => Err(DecodeError::Family(other)),
    }
}

pub fn tcp_state_name(state: i32) -> &'static str {
    match state {
        tcp::state::ESTABLISHED => "ESTABLISHED",
        tcp::state::SYN_SENT => "SYN_SENT",
        tcp::state::SYN_RECV => "SYN_RECV",
        tcp::state::FIN_WAIT1 => "FIN_WAIT1",
        tcp::state::FIN_WAIT2 => "FIN_WAIT2",
        tcp::state::TIME_WAIT => "TIME_WAIT",
        tcp::state::CLOSE => "CLOSE",
        tcp::state::CLOSE_WAIT => "CLOSE_WAIT",
        tcp::state::LAST_ACK => "LAST_ACK",
        tcp::state::LISTEN => "LISTEN",
        tcp::state::CLOSING => "CLOSING",
        tcp::state::NEW_SYN_RECV => "NEW_SYN_RECV",
        _ => "unknown",
    }
}

/// The process a signal's target thread belongs to, which deaths are matched by: the
/// kernel's (`target_tgid`) when it knew it; for a signal aimed at another process's
/// thread on the classic tracepoint, `/proc/<tid>/status` while the thread is there (a
/// fatal one may have taken the process already: then the thread id stands); a
/// process-wide signal's target is its process.
fn signal_target_process(r: &process::Signal) -> i32 {
    if r.target_tgid != 0 {
        return r.target_tgid as i32;
    }
    if r.group != 0 || r.target_pid <= 0 {
        return r.target_pid;
    }
    thread_group_of(r.target_pid).unwrap_or(r.target_pid)
}

/// The `Tgid:` of `/proc/<tid>/status`.
fn thread_group_of(tid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|value| value.trim().parse().ok())
}

/// `si_code` → who sent it.
fn signal_origin(code: i32) -> &'static str {
    match code {
        0 => "user",           // SI_USER: kill(2)
        0x80 => "kernel",      // SI_KERNEL
        -1 => "queue",         // SI_QUEUE: sigqueue(3)
        -6 => "tkill",         // SI_TKILL: tgkill(2)
        c if c > 0 => "fault", // SEGV_MAPERR, BUS_ADRALN…: a hardware fault
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{connect::TcpConnectFailure, net::SockTuple, COMM_LEN};

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-old-data value.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn header(kind: EventKind, tgid: u32) -> EventHeader {
        let mut comm = [0u8; COMM_LEN];
        comm[..5].copy_from_slice(b"nginx");
        EventHeader {
            kind: kind as u32,
            pid: tgid + 1,
            tgid,
            netns: 0,
            ts_ns: clock::monotonic_ns(),
            cgroup_id: 42,
            comm,
        }
    }

    fn v4_tuple() -> SockTuple {
        let mut t = SockTuple {
            family: net::AF_INET,
            sport: 41000,
            dport: 9000,
            ..Default::default()
        };
        t.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        t.daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        t
    }

    #[test]
    fn connect_failure_decodes_with_owner() {
        let record = TcpConnectFailure {
            header: header(EventKind::TcpConnectFailure, 1234),
            tuple: v4_tuple(),
            duration_ns: 1_500_000,
            errno: 111,
            syn_retransmits: 2,
            errno_source: errno_source::SK_ERR,
            owner_known: 1,
        };
        let Decoded::Event(event) = decode(&bytes_of(&record)).unwrap() else {
            panic!("not an event")
        };
        let process = event.process.as_ref().unwrap();
        assert_eq!((process.pid, process.tid), (1234, 1235));
        assert_eq!(process.comm, "nginx");
        let EventDetail::TcpConnectFailure(f) = &event.detail else {
            panic!("{:?}", event.detail)
        };
        assert_eq!(f.dst, "127.0.0.2:9000".parse().unwrap());
        assert_eq!(f.src, "127.0.0.1:41000".parse().unwrap());
        assert_eq!(f.errno.name(), "ECONNREFUSED");
        assert_eq!(f.errno_source, "sk_err");
        assert_eq!(f.syn_retransmits, 2);
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "tcp_connect_failure");
        assert_eq!(json["errno"]["name"], "ECONNREFUSED");
        assert_eq!(json["process"]["comm"], "nginx");
        assert_eq!(json["duration_seconds"], 0.0015);
    }

    /// The header's namespace reaches the event (and its JSON) for a socket of another
    /// namespace; 0 (no BTF) is the agent's own, printed and serialized as before.
    #[test]
    fn the_records_namespace_reaches_the_event() {
        let other = NetNs::own().0.wrapping_add(1);
        for (netns, expected) in [(other, NetNs(other)), (0, NetNs::own())] {
            let mut record = TcpConnectFailure {
                header: header(EventKind::TcpConnectFailure, 1234),
                tuple: v4_tuple(),
                duration_ns: 0,
                errno: 111,
                syn_retransmits: 0,
                errno_source: errno_source::SK_ERR,
                owner_known: 1,
            };
            record.header.netns = netns;
            let Decoded::Event(event) = decode(&bytes_of(&record)).unwrap() else {
                panic!("not an event")
            };
            let EventDetail::TcpConnectFailure(f) = &event.detail else {
                panic!("{:?}", event.detail)
            };
            assert_eq!(f.netns, expected);
            let json = serde_json::to_value(&event).unwrap();
            let shown = (netns != 0).then_some(serde_json::json!(other));
            assert_eq!(json.get("netns").cloned(), shown, "{json}");
        }
        let mut listen = listener::ListenCall {
            header: header(EventKind::ListenCall, 1234),
            fd: 3,
            mntns: 4026532777,
        };
        let Decoded::ListenCall { mntns, .. } = decode(&bytes_of(&listen)).unwrap() else {
            panic!("not a listen call")
        };
        assert_eq!(mntns, MntNs(4026532777));
        listen.mntns = 0;
        let Decoded::ListenCall { mntns, .. } = decode(&bytes_of(&listen)).unwrap() else {
            panic!("not a listen call")
        };
        assert_eq!(mntns, MntNs::own());
    }

    #[test]
    fn unknown_owner_has_no_process() {
        let record = TcpConnectFailure {
            header: header(EventKind::TcpConnectFailure, 0),
            tuple: v4_tuple(),
            duration_ns: 0,
            errno: 110,
            syn_retransmits: 0,
            errno_source: errno_source::NONE,
            owner_known: 0,
        };
        let Decoded::Event(event) = decode(&bytes_of(&record)).unwrap() else {
            panic!()
        };
        assert!(event.process.is_none());
    }

    fn raw_addr(family: u16, body: &[u8], len: u32) -> net::RawSockAddr {
        let mut bytes = [0u8; net::SOCKADDR_MAX];
        bytes[..2].copy_from_slice(&family.to_ne_bytes());
        bytes[2..2 + body.len()].copy_from_slice(body);
        net::RawSockAddr {
            len,
            family,
            _pad: 0,
            bytes,
        }
    }

    #[test]
    fn sockaddrs_decode() {
        let v4 = raw_addr(net::AF_INET, &[0x23, 0x28, 10, 0, 0, 7], 16);
        assert_eq!(
            sockaddr_endpoint(&v4, NetNs(7), MntNs(8)).unwrap(),
            Endpoint::Tcp(NetNs(7), "10.0.0.7:9000".parse().unwrap())
        );
        let mut v6body = vec![0x00, 0x50, 0, 0, 0, 0];
        v6body.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        let v6 = raw_addr(net::AF_INET6, &v6body, 28);
        assert_eq!(
            sockaddr_endpoint(&v6, NetNs(7), MntNs(8)).unwrap(),
            Endpoint::Tcp(NetNs(7), "[::1]:80".parse().unwrap())
        );
        let unix = raw_addr(net::AF_UNIX, b"/run/php/fpm.sock\0", 110);
        assert_eq!(
            sockaddr_endpoint(&unix, NetNs(7), MntNs(8)).unwrap(),
            Endpoint::Unix(MntNs(8), "/run/php/fpm.sock".into())
        );
        let abstract_ = raw_addr(net::AF_UNIX, b"\0backend", 2 + 8);
        assert_eq!(
            sockaddr_endpoint(&abstract_, NetNs(7), MntNs(8)).unwrap(),
            Endpoint::Unix(MntNs(8), "@backend".into())
        );
        assert_eq!(
            sockaddr_endpoint(&raw_addr(16, &[], 12), NetNs(7), MntNs(8)).unwrap_err(),
            DecodeError::Family(16)
        );
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert!(matches!(
            decode(&[0u8; 8]),
            Err(DecodeError::Truncated { .. })
        ));
        let bad = header(EventKind::OomKill, 1);
        let mut bytes = bytes_of(&bad);
        bytes[0] = 99;
        assert_eq!(decode(&bytes).unwrap_err(), DecodeError::UnknownKind(99));
        let short = bytes_of(&header(EventKind::OomKill, 1));
        assert!(matches!(
            decode(&short),
            Err(DecodeError::Truncated {
                what: "oom_kill",
                ..
            })
        ));
    }

    /// Each kind is decoded as its own record type: a record cut after the header is
    /// reported under the kind's name, a full one (zeroed payload) decodes.
    #[test]
    fn every_kind_decodes_as_its_record() {
        for kind in EventKind::ALL {
            let mut bytes = bytes_of(&header(kind, 7));
            match decode(&bytes) {
                Err(DecodeError::Truncated { what, .. }) => assert_eq!(what, kind.name()),
                other => panic!("{kind:?}: {other:?}"),
            }
            bytes.resize(512, 0);
            match decode(&bytes) {
                Ok(_) => {}
                // A zeroed sockaddr has family 0: decoding got past the record itself.
                Err(DecodeError::Family(0)) if kind == EventKind::ConnectSyscallError => {}
                // Likewise a zeroed `how`.
                Err(DecodeError::EndHow(0)) if kind == EventKind::UpstreamEnd => {}
                Err(err) => panic!("{kind:?}: {err}"),
            }
        }
    }

    #[test]
    fn shared_layouts_decode_by_kind() {
        let retransmit = tcp::TcpHandshakeRetransmit {
            header: header(EventKind::TcpSynRetransmit, 1234),
            tuple: v4_tuple(),
            count: 3,
            owner_known: 1,
        };
        let Decoded::Event(syn) = decode(&bytes_of(&tcp::TcpSynRetransmit(retransmit))).unwrap()
        else {
            panic!()
        };
        assert!(
            matches!(&syn.detail, EventDetail::TcpSynRetransmit(r) if r.count == 3),
            "{:?}",
            syn.detail
        );
        assert_eq!(syn.process.map(|p| p.pid), Some(1234));
        let synack = tcp::TcpSynAckRetransmit(tcp::TcpHandshakeRetransmit {
            header: header(EventKind::TcpSynAckRetransmit, 1234),
            owner_known: 0,
            count: 0,
            ..retransmit
        });
        let Decoded::Event(synack) = decode(&bytes_of(&synack)).unwrap() else {
            panic!()
        };
        assert!(matches!(synack.detail, EventDetail::TcpSynackRetransmit(_)));
        assert!(synack.process.is_none());

        let change = |kind| listener::ListenerChange {
            header: header(kind, 1234),
            tuple: v4_tuple(),
        };
        let opened = listener::ListenerOpened(change(EventKind::ListenerOpened));
        let Decoded::Event(opened) = decode(&bytes_of(&opened)).unwrap() else {
            panic!()
        };
        let EventDetail::ListenerOpened(l) = &opened.detail else {
            panic!("{:?}", opened.detail)
        };
        assert_eq!(l.endpoint, "127.0.0.1:41000".parse().unwrap());
        let closed = listener::ListenerClosed(change(EventKind::ListenerClosed));
        let Decoded::Event(closed) = decode(&bytes_of(&closed)).unwrap() else {
            panic!()
        };
        assert!(matches!(closed.detail, EventDetail::ListenerClosed(_)));
    }

    fn traffic_record(duration_ns: u64, bytes_sent: u64, bytes_received: u64) -> connect::Traffic {
        connect::Traffic {
            duration_ns,
            bytes_sent,
            bytes_received,
        }
    }

    #[test]
    fn upstream_ends_decode() {
        for (how, expected) in [
            (end_how::CLOSED_BY_UPSTREAM, EndHow::ClosedByUpstream),
            (end_how::PROXY_GAVE_UP, EndHow::ProxyGaveUp),
        ] {
            let record = connect::UpstreamEnd {
                header: header(EventKind::UpstreamEnd, 1234),
                tuple: v4_tuple(),
                traffic: traffic_record(1_250_000_000, 78, 0),
                how,
                _pad: 0,
            };
            let Decoded::Event(event) = decode(&bytes_of(&record)).unwrap() else {
                panic!("not an event")
            };
            assert_eq!(event.process.as_ref().map(|p| p.pid), Some(1234));
            let EventDetail::UpstreamEnd(end) = &event.detail else {
                panic!("{:?}", event.detail)
            };
            assert_eq!(end.how, expected);
            assert_eq!(end.src, "127.0.0.1:41000".parse().unwrap());
            assert_eq!(end.dst, "127.0.0.2:9000".parse().unwrap());
            assert_eq!(
                end.traffic,
                Traffic {
                    duration: Duration::from_millis(1250),
                    bytes_sent: 78,
                    bytes_received: 0,
                }
            );
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["kind"], "upstream_end");
            assert_eq!(json["bytes_sent"], 78);
        }
        let bad = connect::UpstreamEnd {
            header: header(EventKind::UpstreamEnd, 1234),
            tuple: v4_tuple(),
            traffic: traffic_record(0, 0, 0),
            how: 7,
            _pad: 0,
        };
        assert_eq!(decode(&bytes_of(&bad)).unwrap_err(), DecodeError::EndHow(7));
    }

    #[test]
    fn reset_traffic_only_on_followed_connections() {
        let mut record = tcp::TcpResetReceived {
            header: header(EventKind::TcpResetReceived, 1234),
            tuple: v4_tuple(),
            state: tcp::state::ESTABLISHED,
            owner_known: 1,
            traffic: traffic_record(2_000_000, 40, 0),
            followed: 1,
            _pad: 0,
        };
        let reset = |record: &tcp::TcpResetReceived| {
            let Decoded::Event(event) = decode(&bytes_of(record)).unwrap() else {
                panic!("not an event")
            };
            let EventDetail::TcpResetReceived(reset) = event.detail else {
                panic!("{:?}", event.detail)
            };
            reset
        };
        assert_eq!(
            reset(&record).traffic,
            Some(Traffic {
                duration: Duration::from_millis(2),
                bytes_sent: 40,
                bytes_received: 0,
            })
        );
        record.followed = 0;
        record.traffic = traffic_record(0, 0, 0);
        assert_eq!(reset(&record).traffic, None);
    }

    #[test]
    fn exits_carry_their_parent() {
        let mut record = process::ProcessExit {
            header: header(EventKind::ProcessExit, 1234),
            exit_code: 9,
            ppid: 77,
        };
        let exit = |record: &process::ProcessExit| {
            let Decoded::Event(event) = decode(&bytes_of(record)).unwrap() else {
                panic!("not an event")
            };
            let EventDetail::ProcessExit(exit) = event.detail else {
                panic!("{:?}", event.detail)
            };
            exit
        };
        let killed = exit(&record);
        assert_eq!(killed.ppid, Some(77));
        assert_eq!(killed.signal_number, Some(9));
        record.ppid = 0;
        assert_eq!(exit(&record).ppid, None);
    }

    fn signal_record(target_pid: i32, target_tgid: u32, group: i32) -> process::Signal {
        process::Signal {
            header: header(EventKind::Signal, 1234),
            signal: 11,
            code: -6,
            target_pid,
            group,
            result: 0,
            target_tgid,
            target_comm: [0; COMM_LEN],
        }
    }

    fn decoded_signal(record: &process::Signal) -> SignalSent {
        let Decoded::Event(event) = decode(&bytes_of(record)).unwrap() else {
            panic!("not an event")
        };
        let EventDetail::Signal(signal) = event.detail else {
            panic!("{:?}", event.detail)
        };
        signal
    }

    /// A signal to a worker thread names its process (what deaths are matched by), and
    /// keeps the thread.
    #[test]
    fn signals_to_threads_name_their_process() {
        let target = |record| {
            let signal = decoded_signal(&record);
            (signal.target_pid, signal.target_tid)
        };
        // From the kernel (tp_btf, or the target was the running task).
        assert_eq!(target(signal_record(5001, 5000, 0)), (5000, Some(5001)));
        assert_eq!(target(signal_record(5000, 5000, 1)), (5000, None));
        // Classic, another process's thread: procfs, while the thread is there. This
        // test's own threads: the one running it is not the process's first.
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let me = std::process::id() as i32;
        assert_ne!(tid, me, "libtest runs tests on threads of their own");
        assert_eq!(target(signal_record(tid, 0, 0)), (me, Some(tid)));
        // A process-wide signal is not looked up; a thread gone leaves its id.
        assert_eq!(target(signal_record(tid, 0, 1)), (tid, None));
        let gone = i32::MAX - 1;
        assert_eq!(target(signal_record(gone, 0, 0)), (gone, None));
    }

    #[test]
    fn signal_origins() {
        assert_eq!(signal_origin(0), "user");
        assert_eq!(signal_origin(0x80), "kernel");
        assert_eq!(signal_origin(1), "fault");
    }
}
