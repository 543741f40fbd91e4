//! Kernel integration test: the real destination behind a DNAT'd service address, read
//! from the host's conntrack table over ctnetlink.
//!
//! Two network namespaces of the test's own stand for a node's pods, each joined to the
//! host's namespace by a veth pair with a host route (forwarding on for those two
//! interfaces only), and a DNAT rule in the HOST's `nat PREROUTING` chain maps a service
//! address to the server pod, as kube-proxy's rules do. A connect from the client pod to
//! the service address then has a conntrack entry in the host's table whose reply source
//! is the server pod. The test's rules carry a comment unique to the test process and
//! are deleted on drop; the namespaces take their veths, addresses and rules with them.

mod common;

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    process::Command,
    time::Duration,
};

use std::sync::Arc;

use why502::{
    model::{clock::monotonic_ns, event::EventDetail},
    sources::conntrack::{
        netlink::{decode_answer, encode_get, Conntrack, CtTcpState, Decoded, OriginalTuple},
        resolver::QUERY_TIMEOUT,
        ConntrackStats, NatResolver, Outcome,
    },
};
use why502_e2e::netns::Netns;

/// A connect to a dropped port is given up after this (a proxy's connect timeout).
const GIVE_UP: Duration = Duration::from_millis(1200);

/// The service's ports and the server pod's, one pair per case.
const OPEN: (u16, u16) = (80, 8080);
const REFUSED: (u16, u16) = (81, 8081);
const DROPPED: (u16, u16) = (82, 8082);

/// The client pod, the server pod, and the host's side of it: veths and DNAT rules.
/// One at a time in this binary (`why502_e2e::serial`): its names and addresses are the
/// test process's.
struct Node {
    client: Netns,
    server: Netns,
    /// The third octet of every address of this test process (198.18.N.x for the pods,
    /// 198.19.N.10 for the service): concurrent runs stay apart.
    net: u8,
    comment: String,
    rules: Vec<Vec<String>>,
    veths: Vec<String>,
}

impl Node {
    fn new() -> Self {
        let pid = std::process::id();
        let net = (pid % 200) as u8 + 20;
        let mut node = Self {
            client: Netns::new("ct-client"),
            server: Netns::new("ct-server"),
            net,
            comment: format!("why502-test-{pid}-conntrack"),
            rules: Vec::new(),
            veths: Vec::new(),
        };
        node.join(true, 1);
        node.join(false, 5);
        for (service, pod) in [OPEN, REFUSED, DROPPED] {
            node.dnat(service, pod);
        }
        // The dropped case: the server pod's firewall drops the SYNs (the rule goes with
        // the namespace).
        node.server.exec(&[
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            &DROPPED.1.to_string(),
            "-j",
            "DROP",
        ]);
        node
    }

    fn pod_ip(&self, host_octet: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.net, host_octet + 1)
    }

    fn client_ip(&self) -> Ipv4Addr {
        self.pod_ip(1)
    }

    fn server_ip(&self) -> Ipv4Addr {
        self.pod_ip(5)
    }

    fn service(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(198, 19, self.net, 10),
            port,
        ))
    }

    /// A veth pair from the host to the pod, /30: the host side `.host_octet`, the pod's
    /// `.host_octet + 1`, the pod's default route through the host.
    fn join(&mut self, client: bool, host_octet: u8) {
        let (ns, side) = if client {
            (&self.client, "c")
        } else {
            (&self.server, "s")
        };
        let host_if = format!("w5ct{side}{}", std::process::id() % 100_000);
        let host_ip = Ipv4Addr::new(198, 18, self.net, host_octet);
        let pod_ip = self.pod_ip(host_octet);
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns",
            &ns.name,
        ]);
        self.veths.push(host_if.clone());
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &host_if,
        ]);
        run(&["ip", "link", "set", &host_if, "up"]);
        // Forwarding for these two interfaces only (IPv4 decides by the incoming one): the
        // host's net.ipv4.ip_forward stays as it is.
        run(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{host_if}.forwarding=1"),
        ]);
        ns.exec(&["ip", "addr", "add", &format!("{pod_ip}/30"), "dev", "eth0"]);
        ns.exec(&["ip", "link", "set", "eth0", "up"]);
        ns.exec(&["ip", "route", "add", "default", "via", &host_ip.to_string()]);
    }

    /// kube-proxy's rule, reduced: the service address to the server pod, in the host's
    /// nat PREROUTING chain.
    fn dnat(&mut self, service_port: u16, pod_port: u16) {
        let rule: Vec<String> = [
            "PREROUTING",
            "-d",
            &format!("{}/32", self.service(service_port).ip()),
            "-p",
            "tcp",
            "--dport",
            &service_port.to_string(),
            "-m",
            "comment",
            "--comment",
            &self.comment,
            "-j",
            "DNAT",
            "--to-destination",
            &format!("{}:{pod_port}", self.server_ip()),
        ]
        .map(String::from)
        .to_vec();
        let mut add = vec!["iptables", "-t", "nat", "-A"];
        add.extend(rule.iter().map(String::as_str));
        run(&add);
        self.rules.push(rule);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = Command::new("iptables")
                .args(["-t", "nat", "-D"])
                .args(rule)
                .output();
        }
        for veth in &self.veths {
            let _ = Command::new("ip").args(["link", "del", veth]).output();
        }
    }
}

fn run(args: &[&str]) {
    why502_e2e::netns::run(Command::new(args[0]).args(&args[1..]));
}

/// `linux/capability.h`.
const CAP_NET_ADMIN: u32 = 12;

/// Runs `f` on a thread that entered `ns`: the sockets it creates belong to that
/// namespace.
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on a namespace file we hold open; it moves only this thread.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the thread in the namespace")
}

/// Connects from `src_ip` (an ephemeral port bound first, so that it is known even when
/// the connect fails) to `dst`, giving up after [`GIVE_UP`]; returns the source address
/// and the connect's result. The socket is closed before returning.
fn connect_from(src_ip: Ipv4Addr, dst: SocketAddr) -> (SocketAddr, io::Result<()>) {
    // SAFETY: plain socket calls on a descriptor this function owns and closes; the
    // address structures live for each call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: GIVE_UP.as_secs() as libc::time_t,
            tv_usec: GIVE_UP.subsec_micros() as libc::suseconds_t,
        };
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "SO_SNDTIMEO: {}", io::Error::last_os_error());
        let mut local = sockaddr(SocketAddrV4::new(src_ip, 0));
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
        let mut got = len;
        libc::getsockname(fd, (&mut local as *mut libc::sockaddr_in).cast(), &mut got);
        let src = SocketAddr::V4(SocketAddrV4::new(src_ip, u16::from_be(local.sin_port)));
        let SocketAddr::V4(dst) = dst else {
            unreachable!("IPv4 only")
        };
        let remote = sockaddr(dst);
        let rc = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len);
        let result = if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        };
        libc::close(fd);
        (src, result)
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The conntrack entry of `src → dst`, as the agent asks for it.
fn lookup(src: SocketAddr, dst: SocketAddr) -> Option<why502::sources::conntrack::netlink::Entry> {
    let tuple = OriginalTuple::new(src, dst).unwrap();
    Conntrack::open(QUERY_TIMEOUT)
        .expect("a ctnetlink socket")
        .get(&tuple)
        .expect("conntrack answers")
}

#[test]
fn a_dnat_d_connect_resolves_to_the_pod_behind_the_service() {
    if !why502_e2e::can_load_ebpf() {
        return;
    }
    let _serial = why502_e2e::serial();
    let node = Node::new();
    let server_ip = node.server_ip();
    let listener = in_netns(&node.server, move || {
        TcpListener::bind((server_ip, OPEN.1)).expect("the server pod's listener")
    });
    let (client_ip, service) = (node.client_ip(), node.service(OPEN.0));
    let (src, connected) = in_netns(&node.client, move || connect_from(client_ip, service));
    connected.expect("the client pod reaches the service");
    drop(listener);

    let entry = lookup(src, service).expect("the host's conntrack has the connection");
    let pod = SocketAddr::new(server_ip.into(), OPEN.1);
    assert_eq!(entry.reply_src, pod, "{entry:?}");
    assert_eq!(entry.reply_dst, src, "{entry:?}");
    assert!(entry.dst_nat, "{entry:?}");
    let tuple = OriginalTuple::new(src, service).unwrap();
    assert_eq!(entry.real_destination(&tuple), Some(pod));

    // The pod's address directly: an entry, but nothing rewritten.
    let listener = in_netns(&node.server, move || {
        TcpListener::bind((server_ip, OPEN.1)).expect("the server pod's listener")
    });
    let (direct_src, connected) = in_netns(&node.client, move || connect_from(client_ip, pod));
    connected.expect("the client pod reaches the pod");
    drop(listener);
    let direct = lookup(direct_src, pod).expect("an entry for the direct connection");
    let tuple = OriginalTuple::new(direct_src, pod).unwrap();
    assert!(!direct.dst_nat, "{direct:?}");
    assert_eq!(direct.real_destination(&tuple), None);

    // A tuple no connection had: no entry (ENOENT), not an error.
    let unused = SocketAddr::new(client_ip.into(), 1);
    assert_eq!(lookup(unused, service), None);
}

#[test]
fn a_refused_connect_s_entry_is_gone_and_a_dropped_one_stays_in_syn_sent() {
    if !why502_e2e::can_load_ebpf() {
        return;
    }
    let _serial = why502_e2e::serial();
    let node = Node::new();
    let (client_ip, server_ip) = (node.client_ip(), node.server_ip());
    let pod = SocketAddr::new(server_ip.into(), REFUSED.1);

    // Nothing listens on the pod's port: its kernel answers the SYN with an RST, and
    // conntrack deletes an entry whose only answer was an RST at once
    // (nf_conntrack_proto_tcp.c, `nf_ct_kill_acct` when !IPS_SEEN_REPLY and th->rst).
    let service = node.service(REFUSED.0);
    let (src, refused) = in_netns(&node.client, move || connect_from(client_ip, service));
    let err = refused.expect_err("nothing listens behind the service");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED), "{err}");
    assert_eq!(
        lookup(src, service),
        None,
        "a refused connect's entry is gone"
    );
    // Nor has the client any other connection to the service to go by.
    let others = Conntrack::entries_to(QUERY_TIMEOUT, client_ip.into(), service).unwrap();
    assert!(others.is_empty(), "{others:?}");

    // Once the client had a connection to the service that conntrack still holds (a
    // request answered, then closed: TIME_WAIT keeps it), the refused connect's
    // destination is that connection's.
    let listener = in_netns(&node.server, move || {
        TcpListener::bind(pod).expect("the server pod's listener")
    });
    let (earlier, connected) = in_netns(&node.client, move || connect_from(client_ip, service));
    connected.expect("the client pod reaches the service");
    drop(listener);
    let (src, refused) = in_netns(&node.client, move || connect_from(client_ip, service));
    assert!(refused.is_err());
    assert_eq!(lookup(src, service), None);
    let others = Conntrack::entries_to(QUERY_TIMEOUT, client_ip.into(), service).unwrap();
    assert_eq!(
        others
            .iter()
            .map(|e| (e.reply_src, e.reply_dst, e.dst_nat))
            .collect::<Vec<_>>(),
        vec![(pod, earlier, true)],
        "only the earlier connection, not the other services' or the other pod's"
    );
    let stats = Arc::new(ConntrackStats::default());
    let mut resolver = NatResolver::open(10, stats.clone());
    assert_eq!(
        resolver.real_destination(src, service, monotonic_ns()),
        Some(pod)
    );
    assert_eq!(stats.get(Outcome::DnatOfOtherConnections), 1);

    // The pod drops the SYNs: the client gives up (as a proxy's connect timeout does),
    // and the entry stays in SYN_SENT.
    let service = node.service(DROPPED.0);
    let (src, timed_out) = in_netns(&node.client, move || connect_from(client_ip, service));
    let err = timed_out.expect_err("the SYNs are dropped");
    assert_eq!(err.raw_os_error(), Some(libc::EINPROGRESS), "{err}");
    let entry = lookup(src, service).expect("a timed-out connect's entry is still there");
    assert_eq!(entry.tcp_state, Some(CtTcpState::SynSent), "{entry:?}");
    let dropped_pod = SocketAddr::new(server_ip.into(), DROPPED.1);
    let tuple = OriginalTuple::new(src, service).unwrap();
    assert_eq!(entry.real_destination(&tuple), Some(dropped_pod));
    assert_eq!(
        resolver.real_destination(src, service, monotonic_ns()),
        Some(dropped_pod)
    );
    assert_eq!(stats.get(Outcome::Dnat), 1);
}

/// The request and answer bytes of a real exchange decode as the agent decodes them (the
/// unit tests in `sources/conntrack/netlink.rs` hold a recorded answer; this one checks
/// the encoder against the running kernel).
#[test]
fn the_encoded_request_is_answered_by_the_kernel() {
    if !why502_e2e::can_load_ebpf() {
        return;
    }
    let _serial = why502_e2e::serial();
    let node = Node::new();
    let (client_ip, service) = (node.client_ip(), node.service(DROPPED.0));
    let (src, _) = in_netns(&node.client, move || connect_from(client_ip, service));
    let tuple = OriginalTuple::new(src, service).unwrap();
    let socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER).unwrap();
    let request = encode_get(&tuple, 77);
    socket
        .send_to(&request, &netlink_sys::SocketAddr::new(0, 0), 0)
        .unwrap();
    let mut buf = Vec::with_capacity(8192);
    let len = socket.recv(&mut buf, 0).unwrap();
    if std::env::var_os("WHY502_PRINT_CONNTRACK").is_some() {
        eprintln!("request {request:02x?}\nanswer {:02x?}", &buf[..len]);
    }
    match decode_answer(&buf[..len], 77).unwrap() {
        Decoded::Found(entry) => {
            assert_eq!(
                entry.reply_src,
                SocketAddr::new(node.server_ip().into(), DROPPED.1)
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(decode_answer(&buf[..len], 78).unwrap(), Decoded::Stale);
}

/// Without CAP_NET_ADMIN (dropped from this thread's effective set: capabilities are per
/// thread) the kernel refuses the query, which the agent takes as conntrack unavailable.
#[test]
fn without_cap_net_admin_conntrack_is_unavailable() {
    if !why502_e2e::can_load_ebpf() {
        return;
    }
    let err = std::thread::spawn(|| {
        drop_effective(CAP_NET_ADMIN);
        let tuple = OriginalTuple::new(
            "198.18.0.1:1".parse().unwrap(),
            "198.19.0.1:80".parse().unwrap(),
        )
        .unwrap();
        Conntrack::open(QUERY_TIMEOUT)
            .and_then(|mut c| c.get(&tuple))
            .expect_err("refused without CAP_NET_ADMIN")
    })
    .join()
    .unwrap();
    assert!(err.is_unavailable(), "{err:?}");
}

/// Drops `cap` from the calling thread's effective capabilities.
fn drop_effective(cap: u32) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and the two data words v3 takes.
    unsafe {
        assert_eq!(
            libc::syscall(
                libc::SYS_capget,
                &mut header as *mut Header,
                data.as_mut_ptr()
            ),
            0
        );
        data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()),
            0,
            "capset: {}",
            io::Error::last_os_error()
        );
    }
}

/// The running agent puts the real destination on the failure events themselves, and
/// counts its lookups: a connect given up against dropped SYNs (its entry stays), and a
/// refused one after an answered connection to the same service (its own entry is gone:
/// the answered one's stands in).
#[test]
fn the_agent_s_failure_events_carry_the_pod_behind_the_service() {
    let Some(h) = common::harness() else {
        return;
    };
    let _serial = why502_e2e::serial();
    let node = Node::new();
    let (client_ip, server_ip) = (node.client_ip(), node.server_ip());
    let mut events = h.subscribe();
    let failure_from = |src: SocketAddr| move |e: &why502::model::event::Event| matches!(&e.detail, EventDetail::TcpConnectFailure(f) if f.src == src);
    let nat_of = |e: &why502::model::event::Event| match &e.detail {
        EventDetail::TcpConnectFailure(f) => f.nat_destination.as_ref().map(|d| d.to_string()),
        _ => None,
    };

    let service = node.service(DROPPED.0);
    let (src, _) = in_netns(&node.client, move || connect_from(client_ip, service));
    let event = h.wait_for(
        &mut events,
        Duration::from_secs(5),
        "given-up connect",
        failure_from(src),
    );
    assert_eq!(
        nat_of(&event),
        Some(format!("{server_ip}:{}", DROPPED.1)),
        "{event:?}"
    );
    let json = serde_json::to_string(&*event).unwrap();
    assert!(
        json.contains(&format!(
            "\"nat_destination\":\"{server_ip}:{}\"",
            DROPPED.1
        )),
        "{json}"
    );

    let service = node.service(REFUSED.0);
    let pod = SocketAddr::new(server_ip.into(), REFUSED.1);
    let listener = in_netns(&node.server, move || TcpListener::bind(pod).unwrap());
    let (_, answered) = in_netns(&node.client, move || connect_from(client_ip, service));
    answered.expect("the service answers while its pod listens");
    drop(listener);
    let (src, refused) = in_netns(&node.client, move || connect_from(client_ip, service));
    assert!(refused.is_err());
    let event = h.wait_for(
        &mut events,
        Duration::from_secs(5),
        "refused connect",
        failure_from(src),
    );
    assert_eq!(nat_of(&event), Some(pod.to_string()), "{event:?}");

    let text = h.scrape();
    for result in ["dnat", "dnat_of_other_connections"] {
        let n = common::sample(
            &text,
            "why502_conntrack_lookups_total",
            &[("result", result)],
        );
        assert!(n.is_some_and(|n| n >= 1.0), "{result}: {n:?}");
    }
}
