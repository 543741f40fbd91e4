//! The engine on synthetic streams of a node of network namespaces (pods): which
//! listener a failure belongs to when many listen on the same address.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::engine::Engine;
use crate::{
    config::IncidentConfig,
    model::{
        event::{
            ConnectFailure, ConnectSyscallError, Endpoint, Errno, Event, EventDetail, Exit,
            Listener, ProcessInfo, ProcessRef, Source, UnixListener,
        },
        incident::{Cause, Incident, Pod, ProcessSummary},
        namespace::{MntNs, NetNs},
    },
    sources::host::{namespaces::NamespaceSample, sampling::Sample},
};

const SEC: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const POD_A: NetNs = NetNs(4026532001);
const POD_B: NetNs = NetNs(4026532002);
const POD_C: NetNs = NetNs(4026532003);

fn at(mono: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_nanos(mono)
}

fn process(pid: u32, comm: &str) -> ProcessRef {
    ProcessRef {
        pid,
        tid: pid,
        comm: comm.into(),
        thread: None,
        cgroup_id: 7,
        info: Some(Arc::new(ProcessInfo {
            ppid: Some(1),
            exe: Some(format!("/usr/bin/{comm}")),
            ..Default::default()
        })),
    }
}

/// nginx in a pod of its own (one per namespace, told apart by pid and cgroup).
fn nginx(pid: u32) -> ProcessRef {
    let mut p = process(pid, "nginx");
    let info = Arc::make_mut(p.info.as_mut().unwrap());
    info.cgroup = Some(format!("/kubepods/pod-nginx-{pid}"));
    p
}

/// A backend in a Kubernetes pod: its container and pod are named in explanations.
fn backend(pid: u32, pod_name: &str) -> ProcessRef {
    let mut p = process(pid, "backend");
    let info = Arc::make_mut(p.info.as_mut().unwrap());
    info.container = Some(format!("{pid:012x}abcdef"));
    info.pod = Some(Pod {
        uid: format!("uid-{pod_name}"),
        qos: None,
        namespace: Some("shop".into()),
        name: Some(pod_name.into()),
    });
    p
}

fn event(mono: u64, process: Option<ProcessRef>, detail: EventDetail) -> Event {
    Event {
        time: at(mono),
        mono_ns: mono,
        process,
        detail,
    }
}

fn listener(netns: NetNs, addr: &str) -> Listener {
    Listener {
        netns,
        endpoint: addr.parse().unwrap(),
        source: Source::Kernel,
    }
}

fn listening(mono: u64, owner: &ProcessRef, netns: NetNs, addr: &str) -> Event {
    event(
        mono,
        Some(owner.clone()),
        EventDetail::ListenerOpened(listener(netns, addr)),
    )
}

/// `owner` dies of SIGSEGV and its listener closes.
fn crash(mono: u64, owner: &ProcessRef, netns: NetNs, addr: &str) -> Vec<Event> {
    vec![
        event(
            mono,
            Some(owner.clone()),
            EventDetail::ProcessExit(Exit::from_wait_status(11)),
        ),
        event(
            mono + MS,
            Some(owner.clone()),
            EventDetail::ListenerClosed(listener(netns, addr)),
        ),
    ]
}

/// Ten refused connects from `proxy`'s socket in `netns` to `dst`.
fn refused(
    start: u64,
    proxy: &ProcessRef,
    netns: NetNs,
    src: &str,
    dst: &str,
    nat: Option<Endpoint>,
) -> Vec<Event> {
    (0..10)
        .map(|i| {
            event(
                start + i * 10 * MS,
                Some(proxy.clone()),
                EventDetail::TcpConnectFailure(ConnectFailure {
                    src: format!("{src}:{}", 40000 + i).parse().unwrap(),
                    dst: dst.parse().unwrap(),
                    netns,
                    nat_destination: nat.clone(),
                    errno: Errno(libc::ECONNREFUSED),
                    errno_source: "sk_err",
                    duration: Duration::from_micros(50),
                    syn_retransmits: 0,
                }),
            )
        })
        .collect()
}

fn engine() -> Engine {
    Engine::new(
        IncidentConfig::default(),
        1,
        vec!["127.0.0.1".parse().unwrap(), "192.0.2.2".parse().unwrap()],
        at(0),
    )
}

/// Every incident the events open (and the tick after them updates).
fn run(engine: &mut Engine, events: &[Event]) -> Vec<Incident> {
    let mut incidents: Vec<Incident> = Vec::new();
    let mut keep = |incident: &Incident| match incidents.iter_mut().find(|i| i.id == incident.id) {
        Some(known) => *known = incident.clone(),
        None => incidents.push(incident.clone()),
    };
    for e in events {
        for update in engine.observe(e) {
            keep(update.incident());
        }
    }
    let end = events.last().unwrap().mono_ns + 10 * MS;
    for update in engine.tick(end, at(end)) {
        keep(update.incident());
    }
    incidents
}

fn top_process(incident: &Incident) -> &ProcessSummary {
    incident.causes[0].process.as_ref().expect("a process")
}

/// A pod's sampled addresses: what the host sampler read from its namespace.
fn sampled(addresses: &[(NetNs, &str)]) -> Sample {
    let mut sample = Sample::default();
    sample.host.namespaces = addresses
        .iter()
        .map(|(netns, ip)| NamespaceSample {
            netns: *netns,
            pid: 1,
            listen: None,
            queues: Vec::new(),
            addresses: [ip.parse().unwrap()].into(),
        })
        .collect();
    sample
}

/// Two pods, each an nginx in front of a backend on the same 0.0.0.0:8080: the backend
/// of pod B crashes. B's nginx has an incident naming B's backend; A's nginx, whose
/// backend is alive, connects fine and has none; and A's later refusals (a firewall in
/// A) are explained by A's live listener, never by B's crash.
#[test]
fn the_same_address_in_two_namespaces_is_two_listeners() {
    let mut e = engine();
    let (backend_a, backend_b) = (backend(10, "web-a"), backend(20, "web-b"));
    let (nginx_a, nginx_b) = (nginx(11), nginx(21));
    let mut events = vec![
        listening(SEC, &backend_a, POD_A, "0.0.0.0:8080"),
        listening(SEC, &backend_b, POD_B, "0.0.0.0:8080"),
        listening(SEC, &nginx_a, POD_A, "0.0.0.0:80"),
        listening(SEC, &nginx_b, POD_B, "0.0.0.0:80"),
    ];
    events.extend(crash(10 * SEC, &backend_b, POD_B, "0.0.0.0:8080"));
    events.extend(refused(
        10 * SEC + 100 * MS,
        &nginx_b,
        POD_B,
        "127.0.0.1",
        "127.0.0.1:8080",
        None,
    ));
    let incidents = run(&mut e, &events);
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    let b = &incidents[0];
    assert_eq!(b.causes[0].cause, Cause::Crash);
    assert_eq!(top_process(b).pid, 20);
    assert_eq!(b.proxy.pid, 21);
    let summary = &b.causes[0].summary;
    assert!(
        summary.contains(&format!("listener of 0.0.0.0:8080 [netns {}]", POD_B.0)),
        "{summary}"
    );
    assert!(summary.contains("pod shop/web-b"), "{summary}");
    assert!(summary.contains("container 000000000014"), "{summary}");
    assert!(!summary.contains("web-a"), "{summary}");

    // Pod A's backend is alive: A's refusals are a firewall in A, not B's crash.
    let later = refused(
        20 * SEC,
        &nginx_a,
        POD_A,
        "127.0.0.1",
        "127.0.0.1:8080",
        None,
    );
    let a = run(&mut e, &later);
    let a = a.iter().find(|i| i.proxy.pid == 11).expect("A's incident");
    assert_eq!(a.causes[0].cause, Cause::FirewallReject, "{a:#?}");
    assert_eq!(top_process(a).pid, 10);
    assert!(!a.causes.iter().any(|c| c.summary.contains("web-b")));
}

/// A wildcard listener of pod B serves B's addresses only: nginx in pod A connecting to
/// its own 127.0.0.1:8080, where nothing of A listens, is a wrong port, not B's.
#[test]
fn loopback_never_leaves_its_namespace() {
    let mut e = engine();
    let backend_b = backend(20, "web-b");
    let nginx_a = nginx(11);
    let mut events = vec![
        listening(SEC, &backend_b, POD_B, "0.0.0.0:8080"),
        listening(SEC, &nginx_a, POD_A, "0.0.0.0:80"),
    ];
    events.extend(refused(
        10 * SEC,
        &nginx_a,
        POD_A,
        "127.0.0.1",
        "127.0.0.1:8080",
        None,
    ));
    let incidents = run(&mut e, &events);
    assert_eq!(incidents.len(), 1);
    assert_eq!(
        incidents[0].causes[0].cause,
        Cause::WrongPort,
        "{incidents:#?}"
    );
    assert!(incidents[0].causes[0].process.is_none());
}

/// A proxy in pod A reaches pod B's IP through a veth: the listener is B's wildcard,
/// found through the address B's namespace has (sampled), not pod C's wildcard on the
/// same port; and the same through a DNAT'd service address, where conntrack gave the
/// pod's address.
#[test]
fn a_pod_ip_is_served_by_the_namespace_it_belongs_to() {
    for nat in [false, true] {
        let mut e = engine();
        e.observe_sample(&sampled(&[(POD_B, "10.244.1.5"), (POD_C, "10.244.1.6")]));
        let (backend_b, backend_c) = (backend(20, "web-b"), backend(30, "web-c"));
        let nginx_a = nginx(11);
        let mut events = vec![
            listening(SEC, &backend_c, POD_C, "0.0.0.0:8080"),
            listening(SEC, &backend_b, POD_B, "0.0.0.0:8080"),
            listening(SEC, &nginx_a, POD_A, "0.0.0.0:80"),
        ];
        events.extend(crash(10 * SEC, &backend_b, POD_B, "0.0.0.0:8080"));
        let (dst, real) = if nat {
            let real = Endpoint::Tcp(POD_A, "10.244.1.5:8080".parse().unwrap());
            ("10.96.0.10:80", Some(real))
        } else {
            ("10.244.1.5:8080", None)
        };
        events.extend(refused(
            10 * SEC + 100 * MS,
            &nginx_a,
            POD_A,
            "10.244.1.4",
            dst,
            real,
        ));
        let incidents = run(&mut e, &events);
        assert_eq!(incidents.len(), 1, "{incidents:#?}");
        let incident = &incidents[0];
        assert_eq!(
            incident.causes[0].cause,
            Cause::Crash,
            "nat {nat}: {incident:#?}"
        );
        assert_eq!(top_process(incident).pid, 20, "nat {nat}");
        // The incident is about the address the proxy used; the DNAT says where it went.
        assert_eq!(incident.upstream, format!("{dst} [netns {}]", POD_A.0));
        let texts: Vec<&str> = incident.causes[0]
            .evidence
            .iter()
            .map(|e| e.text.as_str())
            .collect();
        let first = texts
            .iter()
            .find(|t| t.starts_with("first failed"))
            .unwrap();
        assert_eq!(
            first.contains("which a DNAT sent to 10.244.1.5:8080"),
            nat,
            "{first}"
        );
    }
}

/// Without a sample of the namespaces' addresses, a listener bound to exactly the pod's
/// address is found in its namespace; the connecting socket's own address is its own
/// namespace's (learned from its failures) and never leaves it.
#[test]
fn an_exactly_bound_listener_is_found_across_namespaces() {
    let mut e = engine();
    let backend_b = backend(20, "web-b");
    let nginx_a = nginx(11);
    let mut events = vec![
        listening(SEC, &backend_b, POD_B, "10.244.1.5:8080"),
        listening(SEC, &nginx_a, POD_A, "0.0.0.0:80"),
    ];
    events.extend(crash(10 * SEC, &backend_b, POD_B, "10.244.1.5:8080"));
    events.extend(refused(
        10 * SEC + 100 * MS,
        &nginx_a,
        POD_A,
        "10.244.1.4",
        "10.244.1.5:8080",
        None,
    ));
    let incidents = run(&mut e, &events);
    assert_eq!(top_process(&incidents[0]).pid, 20, "{incidents:#?}");

    // A's own address: a port nobody in A serves is A's wrong port, though B listens on
    // that port on all of its addresses.
    let backend_c = backend(30, "web-c");
    let mut events = vec![listening(20 * SEC, &backend_c, POD_C, "0.0.0.0:9090")];
    events.extend(refused(
        30 * SEC,
        &nginx_a,
        POD_A,
        "10.244.1.4",
        "10.244.1.4:9090",
        None,
    ));
    let incidents = run(&mut e, &events);
    let own = incidents
        .iter()
        .find(|i| i.upstream.starts_with("10.244.1.4:9090"))
        .expect("the incident of A's own address");
    assert_eq!(own.causes[0].cause, Cause::WrongPort, "{own:#?}");
}

/// Unix sockets by (mount namespace, path): two containers' /run/app.sock are two
/// sockets; the one whose owner died explains its own container's proxy only.
#[test]
fn unix_sockets_are_per_mount_namespace() {
    let (mnt_x, mnt_y) = (MntNs(4026533001), MntNs(4026533002));
    let path = "/run/app.sock";
    let mut e = engine();
    let (app_x, app_y) = (backend(40, "app-x"), backend(50, "app-y"));
    let (nginx_x, nginx_y) = (nginx(41), nginx(51));
    let unix_listening = |owner: &ProcessRef, mntns| {
        event(
            SEC,
            Some(owner.clone()),
            EventDetail::UnixListenerOpened(UnixListener {
                path: path.into(),
                mntns,
                source: Source::Kernel,
            }),
        )
    };
    let mut events = vec![
        unix_listening(&app_x, mnt_x),
        unix_listening(&app_y, mnt_y),
        listening(SEC, &nginx_x, POD_A, "0.0.0.0:80"),
        listening(SEC, &nginx_y, POD_B, "0.0.0.0:80"),
        event(
            10 * SEC,
            Some(app_x.clone()),
            EventDetail::ProcessExit(Exit::from_wait_status(11)),
        ),
    ];
    let fail = |mono: u64, proxy: &ProcessRef, mntns| {
        event(
            mono,
            Some(proxy.clone()),
            EventDetail::ConnectSyscallError(ConnectSyscallError {
                dst: Endpoint::Unix(mntns, path.into()),
                nat_destination: None,
                errno: Errno(libc::ENOENT),
                fd: 12,
                duration: Duration::from_micros(5),
            }),
        )
    };
    events.extend((0..5).map(|i| fail(10 * SEC + (i + 1) * 10 * MS, &nginx_x, mnt_x)));
    let incidents = run(&mut e, &events);
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    assert_eq!(incidents[0].proxy.pid, 41);
    assert_eq!(top_process(&incidents[0]).pid, 40, "{incidents:#?}");
    assert!(
        incidents[0]
            .upstream
            .ends_with(&format!("[mntns {}]", mnt_x.0)),
        "{}",
        incidents[0].upstream
    );
    // In Y the socket of the same path is alive: Y's failures are not X's crash.
    let later: Vec<Event> = (0..5)
        .map(|i| fail(20 * SEC + i * 10 * MS, &nginx_y, mnt_y))
        .collect();
    let y = run(&mut e, &later);
    if let Some(y) = y.iter().find(|i| i.proxy.pid == 51) {
        assert!(
            y.causes
                .iter()
                .all(|c| c.process.as_ref().is_none_or(|p| p.pid != 40)),
            "{y:#?}"
        );
    }
}

/// The rule at the table itself: loopback stays, an address known local to the connecting
/// namespace stays, another namespace's address goes there.
#[test]
fn lookup_rules_at_the_table() {
    use super::listeners::{ListenerTable, Owner};
    let owner = |pid| Owner {
        process: ProcessSummary {
            pid,
            comm: "backend".into(),
            ..Default::default()
        },
        ppid: None,
        uid: None,
        since_mono: 0,
        since: UNIX_EPOCH,
        from_snapshot: false,
    };
    let mut table = ListenerTable::new(64);
    let wildcard: SocketAddr = "0.0.0.0:8080".parse().unwrap();
    table.opened(Endpoint::Tcp(POD_A, wildcard), owner(10));
    table.opened(Endpoint::Tcp(POD_B, wildcard), owner(20));
    table.addresses.learn(POD_A, "10.0.0.1".parse().unwrap());
    table.addresses.learn(POD_B, "10.0.0.2".parse().unwrap());
    fn pid_for(table: &ListenerTable, ns: NetNs, dst: &str) -> Option<u32> {
        table
            .lookup(&Endpoint::Tcp(ns, dst.parse().unwrap()))
            .and_then(|(_, r)| r.current.as_ref().map(|o| o.process.pid))
    }
    assert_eq!(pid_for(&table, POD_A, "127.0.0.1:8080"), Some(10));
    assert_eq!(pid_for(&table, POD_B, "127.0.0.1:8080"), Some(20));
    assert_eq!(
        pid_for(&table, POD_A, "10.0.0.2:8080"),
        Some(20),
        "B's address: B's wildcard"
    );
    assert_eq!(
        pid_for(&table, POD_A, "10.0.0.1:8080"),
        Some(10),
        "A's own address"
    );
    assert_eq!(
        pid_for(&table, POD_C, "10.0.0.2:8080"),
        Some(20),
        "from C: B's address"
    );
    assert_eq!(pid_for(&table, POD_C, "10.0.0.1:8080"), Some(10));
    assert_eq!(
        pid_for(&table, POD_C, "127.0.0.1:8080"),
        None,
        "C's own loopback"
    );
    assert_eq!(
        pid_for(&table, POD_C, "10.0.0.3:8080"),
        None,
        "nobody's address"
    );
    table.addresses.learn(POD_C, "10.0.0.3".parse().unwrap());
    assert_eq!(
        pid_for(&table, POD_C, "10.0.0.3:8080"),
        None,
        "C's own address"
    );
}
