//! One conntrack entry by its original tuple, over ctnetlink: `IPCTNL_MSG_CT_GET` with
//! `CTA_TUPLE_ORIG` (TCP, source and destination address and port) on a
//! `NETLINK_NETFILTER` socket, what `conntrack -G -p tcp -s … --sport … -d … --dport …`
//! sends. The kernel answers with the entry (an `IPCTNL_MSG_CT_NEW` message: both tuples,
//! the status bits, the TCP state) or `ENOENT`, in the same `sendmsg` call: the answer is
//! queued before `send` returns, so the receive timeout only guards against the
//! unexpected.
//!
//! The query runs in the agent's own network namespace, whose conntrack table it reads;
//! the kernel asks for `CAP_NET_ADMIN` there (`nfnetlink_rcv`), for reading too.
//! Message types and attributes: `include/uapi/linux/netfilter/nfnetlink_conntrack.h`.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    time::Duration,
};

use netlink_packet_core::{
    DecodeError, DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLA_F_NESTED,
    NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::{
    conntrack::{
        ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple,
        Protocol, Status, Tuple,
    },
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

/// One answer is a few hundred bytes; an error answer quotes the request too.
const RECV_BUFFER: usize = 8 * 1024;

/// `CTA_FILTER` (`enum ctattr_type`), `CTA_FILTER_ORIG_FLAGS` in it, and the flags of
/// the original tuple's fields it compares (`CTA_FILTER_F_*`, net/netfilter/
/// nf_conntrack_netlink.c): source and destination address, protocol, destination port.
const CTA_FILTER: u16 = 25;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const FILTER_SRC_DST_PROTO_DPORT: u32 = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 5);
/// A filtered dump reads at most this many entries (one client's recent connections to
/// one service); the rest is dropped with the socket.
pub const MAX_DUMPED: usize = 256;

/// A TCP connection as the connecting socket saw it: the conntrack entry's original
/// direction, before any NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OriginalTuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl OriginalTuple {
    /// `None` for a tuple conntrack cannot hold: mixed address families (an IPv6 socket
    /// connecting to an IPv4-mapped address is IPv4 on the wire, and is taken as such).
    pub fn new(src: SocketAddr, dst: SocketAddr) -> Option<Self> {
        let (src, dst) = (unmapped(src), unmapped(dst));
        (src.is_ipv4() == dst.is_ipv4()).then_some(Self { src, dst })
    }
}

/// `::ffff:a.b.c.d` is the IPv4 address a.b.c.d on the wire, and in conntrack.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// The TCP states of conntrack (`enum tcp_conntrack`), not the socket's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtTcpState {
    None,
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    LastAck,
    TimeWait,
    Close,
    SynSent2,
    Other(u8),
}

impl From<u8> for CtTcpState {
    fn from(n: u8) -> Self {
        match n {
            0 => Self::None,
            1 => Self::SynSent,
            2 => Self::SynRecv,
            3 => Self::Established,
            4 => Self::FinWait,
            5 => Self::CloseWait,
            6 => Self::LastAck,
            7 => Self::TimeWait,
            8 => Self::Close,
            9 => Self::SynSent2,
            n => Self::Other(n),
        }
    }
}

/// What the kernel keeps about one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The reply direction: its source is where the connection really went.
    pub reply_src: SocketAddr,
    pub reply_dst: SocketAddr,
    /// The kernel rewrote the destination (`IPS_DST_NAT`: a DNAT rule, kube-proxy's).
    pub dst_nat: bool,
    pub tcp_state: Option<CtTcpState>,
}

impl Entry {
    /// The destination behind the one the socket connected to, when a DNAT rewrote it.
    pub fn real_destination(&self, original: &OriginalTuple) -> Option<SocketAddr> {
        (self.dst_nat && self.reply_src != original.dst).then_some(self.reply_src)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("cannot open a NETLINK_NETFILTER socket (no nfnetlink in this kernel?)")]
    Socket(#[source] io::Error),
    #[error("cannot send the conntrack query")]
    Send(#[source] io::Error),
    #[error("no answer to the conntrack query")]
    Recv(#[source] io::Error),
    #[error("the kernel refused the conntrack query")]
    Kernel(#[source] io::Error),
    #[error("cannot decode the conntrack answer")]
    Decode(#[source] DecodeError),
    #[error("the conntrack answer has no reply tuple")]
    Incomplete,
}

impl ConntrackError {
    /// An error that every later query would meet too: no conntrack to ask, or no right
    /// to ask it. The caller stops asking (and says so once).
    pub fn is_unavailable(&self) -> bool {
        let code = match self {
            Self::Socket(err) | Self::Kernel(err) => err.raw_os_error(),
            _ => None,
        };
        matches!(
            code,
            Some(
                libc::EPERM
                    | libc::EACCES
                    | libc::EPROTONOSUPPORT
                    | libc::EAFNOSUPPORT
                    | libc::EOPNOTSUPP
            )
        )
    }
}

/// The `IPCTNL_MSG_CT_GET` request for `tuple`, ready to send.
pub fn encode_get(tuple: &OriginalTuple, sequence: u32) -> Vec<u8> {
    let original = ConntrackAttribute::CtaTupleOrig(vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(tuple.src.ip()),
            IPTuple::DestinationAddress(tuple.dst.ip()),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::Tcp),
            ProtoTuple::SourcePort(tuple.src.port()),
            ProtoTuple::DestinationPort(tuple.dst.port()),
        ]),
    ]);
    encode(tuple.src.is_ipv4(), NLM_F_REQUEST, sequence, vec![original])
}

/// The dump of the TCP entries from `src` (any port) to `dst`, filtered in the kernel
/// (`CTA_FILTER`, Linux 5.8+; an older kernel ignores the filter, so the answer is
/// filtered again by [`decode_dump`]).
pub fn encode_dump_to(src: IpAddr, dst: SocketAddr, sequence: u32) -> Vec<u8> {
    let original = ConntrackAttribute::CtaTupleOrig(vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(src),
            IPTuple::DestinationAddress(dst.ip()),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::Tcp),
            ProtoTuple::DestinationPort(dst.port()),
        ]),
    ]);
    // CTA_FILTER { CTA_FILTER_ORIG_FLAGS: u32 in host order }.
    let mut flags = Vec::with_capacity(8);
    flags.extend_from_slice(&8u16.to_ne_bytes());
    flags.extend_from_slice(&CTA_FILTER_ORIG_FLAGS.to_ne_bytes());
    let f: u32 = std::env::var("K3F")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FILTER_SRC_DST_PROTO_DPORT);
    flags.extend_from_slice(&f.to_ne_bytes());
    let filter = ConntrackAttribute::Other(DefaultNla::new(CTA_FILTER, flags));
    let mut buf = encode(
        src.is_ipv4(),
        NLM_F_REQUEST | NLM_F_DUMP,
        sequence,
        vec![original, filter],
    );
    // The kernel parses CTA_FILTER strictly (`nla_parse_nested`), which wants the nested
    // flag that the crate's DefaultNla drops from its type: set it on the last attribute,
    // the filter (its 4-byte header, then the 8-byte flags attribute).
    let at = buf.len() - FILTER_LEN + 2;
    let kind = u16::from_ne_bytes([buf[at], buf[at + 1]]) | NLA_F_NESTED;
    buf[at..at + 2].copy_from_slice(&kind.to_ne_bytes());
    buf
}

/// CTA_FILTER's length in the request: its header and one u32 attribute.
const FILTER_LEN: usize = 4 + 8;

fn encode(ipv4: bool, flags: u16, sequence: u32, attributes: Vec<ConntrackAttribute>) -> Vec<u8> {
    let family = if ipv4 {
        NetfilterProtoFamily::IPv4
    } else {
        NetfilterProtoFamily::IPv6
    };
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            ConntrackMessage::Get(attributes),
        )),
    );
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    buf
}

/// The kernel's answer to the request numbered `sequence`, from one received datagram.
pub fn decode_answer(datagram: &[u8], sequence: u32) -> Result<Decoded, ConntrackError> {
    let message = NetlinkMessage::<NetfilterMessage>::deserialize(datagram)
        .map_err(ConntrackError::Decode)?;
    if message.header.sequence_number != sequence {
        return Ok(Decoded::Stale);
    }
    match message.payload {
        NetlinkPayload::Error(err) if err.raw_code() == -libc::ENOENT => Ok(Decoded::NotFound),
        NetlinkPayload::Error(err) => Err(ConntrackError::Kernel(err.to_io())),
        NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attributes)),
            ..
        }) => entry(&attributes).map(|(_, e)| Decoded::Found(e)),
        _ => Err(ConntrackError::Incomplete),
    }
}

/// What one datagram of a dump held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DumpPart {
    /// Entries whose original tuple goes from `src` to `dst` (the filter's), in order.
    pub entries: Vec<Entry>,
    /// The dump's end (`NLMSG_DONE`) was in this datagram.
    pub done: bool,
}

/// One datagram of the answer to [`encode_dump_to`]`(src, dst, sequence)`.
pub fn decode_dump(
    mut datagram: &[u8],
    sequence: u32,
    src: IpAddr,
    dst: SocketAddr,
) -> Result<DumpPart, ConntrackError> {
    let mut part = DumpPart::default();
    while !datagram.is_empty() {
        let message = NetlinkMessage::<NetfilterMessage>::deserialize(datagram)
            .map_err(ConntrackError::Decode)?;
        // The decoder checked the length against the buffer; messages are 4-byte aligned.
        let advance = (message.header.length as usize).next_multiple_of(4);
        datagram = datagram.get(advance..).unwrap_or_default();
        if message.header.sequence_number != sequence {
            continue;
        }
        match message.payload {
            NetlinkPayload::Done(_) => {
                part.done = true;
                break;
            }
            NetlinkPayload::Error(err) => return Err(ConntrackError::Kernel(err.to_io())),
            NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attributes)),
                ..
            }) => {
                let (original, entry) = entry(&attributes)?;
                if original.is_some_and(|(s, d)| s.ip() == src && d == dst) {
                    part.entries.push(entry);
                }
            }
            _ => {}
        }
    }
    Ok(part)
}

/// One datagram's meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Found(Entry),
    NotFound,
    /// The answer to an earlier request (one that timed out): to be skipped.
    Stale,
}

/// The entry, and its original tuple's (source, destination).
type Described = (Option<(SocketAddr, SocketAddr)>, Entry);

fn entry(attributes: &[ConntrackAttribute]) -> Result<Described, ConntrackError> {
    let mut original = None;
    let mut reply = None;
    let mut status = Status::empty();
    let mut tcp_state = None;
    for attribute in attributes {
        match attribute {
            ConntrackAttribute::CtaTupleOrig(tuple) => original = endpoints(tuple),
            ConntrackAttribute::CtaTupleReply(tuple) => reply = endpoints(tuple),
            ConntrackAttribute::CtaStatus(s) => status = *s,
            ConntrackAttribute::CtaProtoInfo(info) => {
                tcp_state = info.iter().find_map(|i| match i {
                    ProtoInfo::TCP(tcp) => tcp.iter().find_map(|t| match t {
                        ProtoInfoTCP::State(s) => Some(CtTcpState::from(*s)),
                        _ => None,
                    }),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    let (reply_src, reply_dst) = reply.ok_or(ConntrackError::Incomplete)?;
    let entry = Entry {
        reply_src,
        reply_dst,
        dst_nat: status.contains(Status::DstNat),
        tcp_state,
    };
    Ok((original, entry))
}

/// A tuple's (source, destination), when it has both addresses and ports.
fn endpoints(tuple: &[Tuple]) -> Option<(SocketAddr, SocketAddr)> {
    let (mut src_ip, mut dst_ip, mut src_port, mut dst_port) = (None, None, None, None);
    for part in tuple {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src_ip = Some(*a),
                        IPTuple::DestinationAddress(a) => dst_ip = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(protos) => {
                for proto in protos {
                    match proto {
                        ProtoTuple::SourcePort(p) => src_port = Some(*p),
                        ProtoTuple::DestinationPort(p) => dst_port = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        SocketAddr::new(src_ip?, src_port?),
        SocketAddr::new(dst_ip?, dst_port?),
    ))
}

/// A ctnetlink socket in the agent's network namespace, blocking, with a receive
/// timeout. Not for async workers: each [`Conntrack::get`] waits on the kernel.
pub struct Conntrack {
    socket: Socket,
    sequence: u32,
}

impl Conntrack {
    pub fn open(timeout: Duration) -> Result<Self, ConntrackError> {
        let socket = Socket::new(NETLINK_NETFILTER).map_err(ConntrackError::Socket)?;
        set_receive_timeout(&socket, timeout).map_err(ConntrackError::Socket)?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// The entry of `tuple`, `None` when conntrack has none.
    pub fn get(&mut self, tuple: &OriginalTuple) -> Result<Option<Entry>, ConntrackError> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let request = encode_get(tuple, sequence);
        // Unconnected netlink sockets send to the kernel (port 0).
        self.socket
            .send_to(&request, &netlink_sys::SocketAddr::new(0, 0), 0)
            .map_err(ConntrackError::Send)?;
        let mut buf = Vec::with_capacity(RECV_BUFFER);
        loop {
            buf.clear();
            let len = self
                .socket
                .recv(&mut buf, 0)
                .map_err(ConntrackError::Recv)?;
            match decode_answer(&buf[..len.min(buf.len())], sequence)? {
                Decoded::Found(entry) => return Ok(Some(entry)),
                Decoded::NotFound => return Ok(None),
                Decoded::Stale => continue,
            }
        }
    }
}

impl Conntrack {
    /// The entries of the TCP connections from `src` (any port) to `dst` that conntrack
    /// holds, at most [`MAX_DUMPED`]: a client's other connections to a service, among
    /// them those in `TIME_WAIT` (120 s). A dump stopped early leaves its rest on the
    /// socket, so each dump has a socket of its own.
    pub fn entries_to(
        timeout: Duration,
        src: IpAddr,
        dst: SocketAddr,
    ) -> Result<Vec<Entry>, ConntrackError> {
        let Self { socket, .. } = Self::open(timeout)?;
        let sequence = 1;
        socket
            .send_to(
                &encode_dump_to(src, dst, sequence),
                &netlink_sys::SocketAddr::new(0, 0),
                0,
            )
            .map_err(ConntrackError::Send)?;
        let mut entries = Vec::new();
        // A dump's datagrams are sized to the largest buffer offered, up to 32 KiB.
        let mut buf = Vec::with_capacity(64 * 1024);
        while entries.len() < MAX_DUMPED {
            buf.clear();
            let len = socket.recv(&mut buf, 0).map_err(ConntrackError::Recv)?;
            let part = decode_dump(&buf[..len.min(buf.len())], sequence, src, dst)?;
            entries.extend(part.entries);
            if part.done {
                break;
            }
        }
        entries.truncate(MAX_DUMPED);
        Ok(entries)
    }
}

fn set_receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket fd and a timeval that lives for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real exchange (`agent/tests/conntrack.rs` with WHY502_PRINT_CONNTRACK=1): the
    /// client pod 198.18.93.2:39915 gave up connecting to the service 198.19.93.10:82,
    /// DNAT'd to 198.18.93.6:8082, which dropped its SYNs; sequence 0x4d.
    const REQUEST: &[u8] = &[
        0x48, 0x00, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00, 0x4d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x02, 0x00, 0x00, 0x00, 0x34, 0x00, 0x01, 0x80, 0x14, 0x00, 0x01, 0x80, 0x08, 0x00,
        0x01, 0x00, 0xc6, 0x12, 0x5d, 0x02, 0x08, 0x00, 0x02, 0x00, 0xc6, 0x13, 0x5d, 0x0a, 0x1c,
        0x00, 0x02, 0x80, 0x05, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, 0x06, 0x00, 0x02, 0x00,
        0x9b, 0xeb, 0x00, 0x00, 0x06, 0x00, 0x03, 0x00, 0x00, 0x52, 0x00, 0x00,
    ];
    const ANSWER: &[u8] = &[
        0xd4, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x4d, 0x00, 0x00, 0x00, 0x59, 0x72, 0x00,
        0x00, 0x02, 0x00, 0x00, 0x00, 0x34, 0x00, 0x01, 0x80, 0x14, 0x00, 0x01, 0x80, 0x08, 0x00,
        0x01, 0x00, 0xc6, 0x12, 0x5d, 0x02, 0x08, 0x00, 0x02, 0x00, 0xc6, 0x13, 0x5d, 0x0a, 0x1c,
        0x00, 0x02, 0x80, 0x05, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, 0x06, 0x00, 0x02, 0x00,
        0x9b, 0xeb, 0x00, 0x00, 0x06, 0x00, 0x03, 0x00, 0x00, 0x52, 0x00, 0x00, 0x34, 0x00, 0x02,
        0x80, 0x14, 0x00, 0x01, 0x80, 0x08, 0x00, 0x01, 0x00, 0xc6, 0x12, 0x5d, 0x06, 0x08, 0x00,
        0x02, 0x00, 0xc6, 0x12, 0x5d, 0x02, 0x1c, 0x00, 0x02, 0x80, 0x05, 0x00, 0x01, 0x00, 0x06,
        0x00, 0x00, 0x00, 0x06, 0x00, 0x02, 0x00, 0x1f, 0x92, 0x00, 0x00, 0x06, 0x00, 0x03, 0x00,
        0x9b, 0xeb, 0x00, 0x00, 0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01, 0xa8, 0x08, 0x00, 0x08,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x0c, 0x00, 0x84, 0x90, 0x21, 0x17, 0x08, 0x00,
        0x0b, 0x00, 0x00, 0x00, 0x00, 0x02, 0x08, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x76, 0x30,
        0x00, 0x04, 0x80, 0x2c, 0x00, 0x01, 0x80, 0x05, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00,
        0x05, 0x00, 0x02, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x05, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x06, 0x00, 0x04, 0x00, 0x03, 0x00, 0x00, 0x00, 0x06, 0x00, 0x05, 0x00, 0x00, 0x00,
        0x00, 0x00,
    ];
    const SEQUENCE: u32 = 0x4d;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn recorded_tuple() -> OriginalTuple {
        OriginalTuple::new(addr("198.18.93.2:39915"), addr("198.19.93.10:82")).unwrap()
    }

    /// An `NLMSG_ERROR` answer to the request, as the kernel sends one: the error, then
    /// the request's header.
    fn error_answer(errno: i32, sequence: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&36u32.to_ne_bytes());
        out.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
        out.extend_from_slice(&0x100u16.to_ne_bytes()); // NLM_F_CAPPED
        out.extend_from_slice(&sequence.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&(-errno).to_ne_bytes());
        out.extend_from_slice(&REQUEST[..16]);
        out
    }

    #[test]
    fn the_get_request_is_the_bytes_the_kernel_answered() {
        assert_eq!(encode_get(&recorded_tuple(), SEQUENCE), REQUEST);
    }

    #[test]
    fn the_kernel_s_answer_decodes_to_the_pod_behind_the_service() {
        let Decoded::Found(entry) = decode_answer(ANSWER, SEQUENCE).unwrap() else {
            panic!("an entry");
        };
        assert_eq!(
            entry,
            Entry {
                reply_src: addr("198.18.93.6:8082"),
                reply_dst: addr("198.18.93.2:39915"),
                dst_nat: true,
                tcp_state: Some(CtTcpState::SynSent),
            }
        );
        assert_eq!(
            entry.real_destination(&recorded_tuple()),
            Some(addr("198.18.93.6:8082"))
        );
        // An answer to another request is skipped, not taken.
        assert_eq!(decode_answer(ANSWER, SEQUENCE + 1).unwrap(), Decoded::Stale);
    }

    #[test]
    fn only_an_entry_the_kernel_flags_dst_nat_names_another_destination() {
        let Decoded::Found(mut entry) = decode_answer(ANSWER, SEQUENCE).unwrap() else {
            panic!("an entry");
        };
        // IPS_DST_NAT (0x20) cleared from the recorded status 0x1a8: the reply source is
        // not taken for a rewritten destination, however it differs.
        let mut plain = ANSWER.to_vec();
        let status = 124;
        assert_eq!(&plain[status..status + 8], &[8, 0, 3, 0, 0, 0, 1, 0xa8]);
        plain[status + 7] = 0x88;
        let Decoded::Found(unflagged) = decode_answer(&plain, SEQUENCE).unwrap() else {
            panic!("an entry");
        };
        assert!(!unflagged.dst_nat);
        assert_eq!(unflagged.real_destination(&recorded_tuple()), None);
        entry.dst_nat = false;
        assert_eq!(entry, unflagged);
    }

    #[test]
    fn enoent_is_no_entry_and_eperm_is_unavailable() {
        let none = error_answer(libc::ENOENT, SEQUENCE);
        assert_eq!(decode_answer(&none, SEQUENCE).unwrap(), Decoded::NotFound);
        let refused = error_answer(libc::EPERM, SEQUENCE);
        let err = decode_answer(&refused, SEQUENCE).unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
        let busy = error_answer(libc::EBUSY, SEQUENCE);
        assert!(!decode_answer(&busy, SEQUENCE).unwrap_err().is_unavailable());
    }

    #[test]
    fn the_dump_request_carries_a_nested_filter_on_source_destination_and_port() {
        let dump = encode_dump_to(addr("198.18.93.2:0").ip(), addr("198.19.93.10:82"), 7);
        // NLM_F_REQUEST | NLM_F_DUMP.
        assert_eq!(u16::from_ne_bytes([dump[6], dump[7]]), 0x301);
        let filter = &dump[dump.len() - FILTER_LEN..];
        assert_eq!(
            u16::from_ne_bytes([filter[0], filter[1]]),
            FILTER_LEN as u16
        );
        assert_eq!(
            u16::from_ne_bytes([filter[2], filter[3]]),
            CTA_FILTER | NLA_F_NESTED
        );
        assert_eq!(
            u32::from_ne_bytes(filter[8..12].try_into().unwrap()),
            FILTER_SRC_DST_PROTO_DPORT
        );
    }

    #[test]
    fn a_dump_datagram_keeps_the_filter_s_entries_until_done() {
        // The recorded entry (flagged NLM_F_MULTI, as in a dump), then NLMSG_DONE.
        let mut datagram = ANSWER.to_vec();
        datagram.extend_from_slice(&20u32.to_ne_bytes());
        datagram.extend_from_slice(&3u16.to_ne_bytes()); // NLMSG_DONE
        datagram.extend_from_slice(&2u16.to_ne_bytes());
        datagram.extend_from_slice(&SEQUENCE.to_ne_bytes());
        datagram.extend_from_slice(&[0; 8]);
        let client = addr("198.18.93.2:0").ip();
        let part = decode_dump(&datagram, SEQUENCE, client, addr("198.19.93.10:82")).unwrap();
        assert!(part.done);
        assert_eq!(part.entries.len(), 1);
        assert_eq!(part.entries[0].reply_src, addr("198.18.93.6:8082"));
        // An entry to another address (a kernel that ignored the filter) is left out.
        let other = decode_dump(&datagram, SEQUENCE, client, addr("198.19.93.10:80")).unwrap();
        assert!(other.entries.is_empty() && other.done);
    }
}
