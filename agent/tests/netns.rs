//! Kernel integration tests: every socket event carries its network namespace. Two
//! namespaces of the test's own, the same `127.0.0.1:<port>` refused in each and in the
//! agent's: three endpoints, told apart by the namespaces' inode numbers, the host's
//! printed as before.

mod common;

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpStream},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use common::{closed_port, harness, pid_of};
use why502::model::{
    event::{Endpoint, Event, EventDetail},
    namespace::{self, MntNs, NetNs},
};
use why502_e2e::netns::Netns;

const WAIT: Duration = Duration::from_secs(5);

/// A process inside a namespace, killed and reaped on drop (also when the test fails).
struct InNamespace(Child);

impl InNamespace {
    /// `bash -c script` inside `ns` (`ip netns exec` execs it: the child's pid is the
    /// script's).
    fn bash(ns: &Netns, script: &str) -> Self {
        let child = ns
            .command("bash")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn ip netns exec");
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// The inode of the child's `ns/<kind>` once it runs inside the namespace (`ip netns
    /// exec` enters it before it execs the script, so this waits for that moment).
    fn namespace(&self, kind: &str, not: u32) -> u32 {
        let deadline = Instant::now() + WAIT;
        loop {
            let link = format!("/proc/{}/ns/{kind}", self.pid());
            if let Some(inode) = namespace::inode_of(&link).filter(|&i| i != not) {
                return inode;
            }
            assert!(
                Instant::now() < deadline,
                "pid {} never left ns {not}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for InNamespace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn the_same_refused_address_in_three_namespaces_is_three_endpoints() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let port = closed_port();
    let own = namespace::own().net;
    let (a, b) = (Netns::new("refused-a"), Netns::new("refused-b"));
    // `:` is a builtin: the connect is the script's own pid's, which then stays alive for
    // its namespace to be read.
    let script = format!(": <>/dev/tcp/127.0.0.1/{port}; sleep 30");
    let (in_a, in_b) = (
        InNamespace::bash(&a, &script),
        InNamespace::bash(&b, &script),
    );
    let (ns_a, ns_b) = (in_a.namespace("net", own.0), in_b.namespace("net", own.0));
    assert_ne!(ns_a, ns_b);
    let err = TcpStream::connect(localhost(port)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));

    let refused_by = |pid: u32| {
        move |e: &Event| {
            pid_of(e) == Some(pid)
                && matches!(&e.detail, EventDetail::TcpConnectFailure(f) if f.dst.port() == port)
        }
    };
    let [from_a, from_b, from_host] = h.wait_for_each(
        &mut events,
        WAIT,
        [
            ("refused connect in namespace a", &refused_by(in_a.pid())),
            ("refused connect in namespace b", &refused_by(in_b.pid())),
            (
                "refused connect in the host",
                &refused_by(std::process::id()),
            ),
        ],
    );
    let upstream = |e: &Event| {
        let EventDetail::TcpConnectFailure(f) = &e.detail else {
            unreachable!()
        };
        assert_eq!(f.errno.0, libc::ECONNREFUSED);
        assert_eq!(f.dst, localhost(port));
        Endpoint::Tcp(f.netns, f.dst)
    };
    let (up_a, up_b, up_host) = (upstream(&from_a), upstream(&from_b), upstream(&from_host));
    assert_eq!(up_a, Endpoint::Tcp(NetNs(ns_a), localhost(port)));
    assert_eq!(up_b, Endpoint::Tcp(NetNs(ns_b), localhost(port)));
    assert_eq!(up_host, Endpoint::Tcp(own, localhost(port)));
    assert_eq!(up_a.to_string(), format!("127.0.0.1:{port} [netns {ns_a}]"));
    assert_eq!(up_b.to_string(), format!("127.0.0.1:{port} [netns {ns_b}]"));
    // The agent's own namespace prints, and serializes, exactly as before namespaces.
    assert_eq!(up_host.to_string(), format!("127.0.0.1:{port}"));
    let json = |e: &Event| serde_json::to_value(e).unwrap();
    assert_eq!(json(&from_a)["netns"], ns_a);
    assert_eq!(json(&from_host).get("netns"), None, "{}", json(&from_host));
}

#[test]
fn a_listener_reports_its_namespace_opening_and_closing() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let port = closed_port();
    let own = namespace::own().net;
    let ns = Netns::new("listener");
    let script = format!(
        "exec /usr/bin/python3 -c 'import socket, time; s = socket.socket(); \
         s.bind((\"127.0.0.1\", {port})); s.listen(); time.sleep(30)'"
    );
    let mut listener = InNamespace::bash(&ns, &script);
    let inode = listener.namespace("net", own.0);
    let addr = localhost(port);
    let opened = h.wait_for(
        &mut events,
        WAIT,
        "listener opened in the namespace",
        // By pid: the same address may be listened on in the host meanwhile (the port
        // was free there too), which is the point.
        |e| {
            pid_of(e) == Some(listener.pid())
                && matches!(&e.detail, EventDetail::ListenerOpened(l) if l.endpoint == addr)
        },
    );
    let EventDetail::ListenerOpened(l) = &opened.detail else {
        unreachable!()
    };
    assert_eq!(l.netns, NetNs(inode));
    // Closed by its process's death: the socket's namespace, whichever task frees it.
    let _ = listener.0.kill();
    let _ = listener.0.wait();
    let closed = h.wait_for(&mut events, WAIT, "listener closed in the namespace", |e| {
        matches!(&e.detail, EventDetail::ListenerClosed(l)
            if l.endpoint == addr && l.netns != own)
    });
    let EventDetail::ListenerClosed(l) = &closed.detail else {
        unreachable!()
    };
    assert_eq!(l.netns, NetNs(inode));
}

#[test]
fn unix_sockets_carry_the_callers_mount_namespace() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let own = namespace::own();
    let dir = tempfile::tempdir().unwrap();
    let (listening, missing) = (dir.path().join("app.sock"), dir.path().join("gone.sock"));
    // `ip netns exec` gives its command a mount namespace of its own (it remounts /sys).
    let ns = Netns::new("unix");
    let script = format!(
        "exec /usr/bin/python3 -c 'import socket, time; s = socket.socket(socket.AF_UNIX); \
         s.bind(\"{}\"); s.listen(); c = socket.socket(socket.AF_UNIX); \
         c.connect_ex(\"{}\"); time.sleep(30)'",
        listening.display(),
        missing.display()
    );
    let child = InNamespace::bash(&ns, &script);
    let mnt = child.namespace("mnt", own.mnt.0);
    let (path, gone) = (
        listening.display().to_string(),
        missing.display().to_string(),
    );
    let [opened, refused] = h.wait_for_each(
        &mut events,
        WAIT,
        [
            ("unix listener opened", &|e: &Event| {
                matches!(&e.detail, EventDetail::UnixListenerOpened(l) if l.path == path)
            }),
            ("unix connect refused", &|e: &Event| {
                matches!(&e.detail, EventDetail::ConnectSyscallError(c)
                    if matches!(&c.dst, Endpoint::Unix(_, p) if *p == gone))
            }),
        ],
    );
    assert_eq!(pid_of(&opened), Some(child.pid()));
    let EventDetail::UnixListenerOpened(l) = &opened.detail else {
        unreachable!()
    };
    assert_eq!(l.mntns, MntNs(mnt));
    assert_eq!(serde_json::to_value(&*opened).unwrap()["mntns"], mnt);
    let EventDetail::ConnectSyscallError(c) = &refused.detail else {
        unreachable!()
    };
    assert_eq!(c.errno.0, libc::ENOENT);
    assert_eq!(c.dst, Endpoint::Unix(MntNs(mnt), gone.clone()));
    assert_eq!(c.dst.to_string(), format!("unix:{gone} [mntns {mnt}]"));
}

#[test]
fn successful_connects_are_counted_per_namespace() {
    let Some(h) = harness() else { return };
    // The poller reports growth: subscribed before the connects, it adds up to them.
    let mut readings = h.agent.kernel.subscribe();
    let port = closed_port();
    let own = namespace::own().net;
    let ns = Netns::new("counted");
    let script = format!(
        "exec /usr/bin/python3 -c 'import socket, time; s = socket.socket(); \
         s.bind((\"127.0.0.1\", {port})); s.listen(); \
         c = [socket.create_connection((\"127.0.0.1\", {port})) for _ in range(3)]; \
         time.sleep(30)'"
    );
    let child = InNamespace::bash(&ns, &script);
    let inode = child.namespace("net", own.0);
    let mut established = HashMap::<u32, u64>::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while established.values().sum::<u64>() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let reading = h
            .runtime
            .block_on(async { tokio::time::timeout(left, readings.recv()).await })
            .expect("a kernel reading before the deadline")
            .expect("the reading topic is open");
        for c in reading.connects.iter().map(|c| &c.growth) {
            if c.key.tgid == child.pid() && c.key.dport == port {
                *established.entry(c.key.netns).or_default() += c.established;
            }
        }
    }
    // All under the child's namespace, none under 0 or the host's.
    assert_eq!(established, HashMap::from([(inode, 3)]));
}
