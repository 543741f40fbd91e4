//! The engine on synthetic event streams, one per cause of `shared/502-causes.md`.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::engine::Engine;
use crate::{
    config::IncidentConfig,
    model::event::{
        ConnectFailure, ConnectSyscallError, EndHow, Endpoint, Errno, Event, EventDetail, Exit,
        HttpResponses, ListenQueueFull, Listener, MemoryPressure, OomKill, ProcessInfo, ProcessRef,
        SignalSent, Source, TcpReset, Traffic, UnixListener, UpstreamEnd,
    },
    model::{
        failure::FailureKind,
        incident::{Cause, Confidence, Incident, IncidentState, Update},
        namespace::{MntNs, NetNs},
    },
    sources::kernel_maps::{connects::Growth, ConnectGrowth, KernelReading},
};

const SEC: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const BACKEND: &str = "127.0.0.1:9000";

fn at(mono: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_nanos(mono)
}

fn process(pid: u32, comm: &str, ppid: u32, unit: Option<&str>) -> ProcessRef {
    ProcessRef {
        pid,
        tid: pid,
        comm: comm.into(),
        thread: None,
        cgroup_id: 7,
        info: Some(Arc::new(ProcessInfo {
            ppid: Some(ppid),
            exe: Some(format!("/usr/sbin/{comm}")),
            unit: unit.map(String::from),
            ..Default::default()
        })),
    }
}

fn nginx() -> ProcessRef {
    process(500, "nginx", 499, Some("nginx.service"))
}

fn fpm() -> ProcessRef {
    process(100, "php-fpm", 50, Some("php8.2-fpm.service"))
}

fn event(mono: u64, process: Option<ProcessRef>, detail: EventDetail) -> Event {
    Event {
        time: at(mono),
        mono_ns: mono,
        process,
        detail,
    }
}

fn listening(mono: u64, owner: ProcessRef, addr: &str, source: Source) -> Event {
    event(
        mono,
        Some(owner),
        EventDetail::ListenerOpened(Listener {
            netns: NetNs::own(),
            endpoint: addr.parse().unwrap(),
            source,
        }),
    )
}

fn closed(mono: u64, owner: ProcessRef, addr: &str) -> Event {
    event(
        mono,
        Some(owner),
        EventDetail::ListenerClosed(Listener {
            netns: NetNs::own(),
            endpoint: addr.parse().unwrap(),
            source: Source::Kernel,
        }),
    )
}

fn exit(mono: u64, who: ProcessRef, status: i32) -> Event {
    event(
        mono,
        Some(who),
        EventDetail::ProcessExit(Exit::from_wait_status(status)),
    )
}

fn signal(mono: u64, sender: ProcessRef, target: u32, sig: i32, name: &str) -> Event {
    event(
        mono,
        Some(sender),
        EventDetail::Signal(SignalSent {
            signal: name.into(),
            signal_number: sig,
            target_pid: target as i32,
            target_tid: None,
            target_comm: "php-fpm".into(),
            origin: "user",
            group: true,
            result: "delivered",
            target: None,
        }),
    )
}

fn refused(mono: u64, dst: &str, errno: i32) -> Event {
    event(
        mono,
        Some(nginx()),
        EventDetail::TcpConnectFailure(ConnectFailure {
            nat_destination: None,
            netns: NetNs::own(),
            src: "127.0.0.1:40000".parse().unwrap(),
            dst: dst.parse().unwrap(),
            errno: Errno(errno),
            errno_source: "sk_err",
            duration: Duration::from_micros(50),
            syn_retransmits: if errno == 0 { 2 } else { 0 },
        }),
    )
}

fn syscall_error(mono: u64, dst: Endpoint, errno: i32) -> Event {
    event(
        mono,
        Some(nginx()),
        EventDetail::ConnectSyscallError(ConnectSyscallError {
            nat_destination: None,
            dst,
            errno: Errno(errno),
            fd: 12,
            duration: Duration::from_micros(5),
        }),
    )
}

fn engine() -> Engine {
    Engine::new(
        IncidentConfig::default(),
        1,
        vec!["127.0.0.1".parse().unwrap(), "10.9.8.7".parse().unwrap()],
        at(0),
    )
}

/// Feeds `events`, then ticks just after the last one; returns the open incident.
fn run(engine: &mut Engine, events: &[Event]) -> Incident {
    let mut last = None;
    for e in events {
        for update in engine.observe(e) {
            last = Some(update.incident().clone());
        }
    }
    let end = events.last().unwrap().mono_ns + 10 * MS;
    for update in engine.tick(end, at(end)) {
        last = Some(update.incident().clone());
    }
    last.expect("an incident")
}

/// Ten refused connects 10 ms apart from `start`.
fn burst(start: u64, dst: &str, errno: i32) -> Vec<Event> {
    (0..10)
        .map(|i| refused(start + i * 10 * MS, dst, errno))
        .collect()
}

/// A kernel reading: `count` successful connects from nginx to `dst`.
fn succeeded(mono: u64, dst: &str, count: u64) -> KernelReading {
    let dst: std::net::SocketAddr = dst.parse().unwrap();
    let std::net::IpAddr::V4(ip) = dst.ip() else {
        panic!("IPv4 only")
    };
    let mut daddr = [0; 16];
    daddr[..4].copy_from_slice(&ip.octets());
    KernelReading {
        mono_ns: mono,
        connects: vec![ConnectGrowth {
            process: nginx(),
            growth: Growth {
                key: agent_common::connect::ConnectKey {
                    tgid: nginx().pid,
                    netns: 0,
                    family: agent_common::net::AF_INET,
                    dport: dst.port(),
                    daddr,
                },
                established: count,
                latency_sum_ns: count * 1000,
                hist: [0; agent_common::connect::LATENCY_BUCKETS],
            },
        }],
        ..Default::default()
    }
}

fn top(incident: &Incident) -> (Cause, Confidence) {
    let c = &incident.causes[0];
    (c.cause, c.confidence)
}

#[test]
fn crash_by_sigsegv() {
    let mut e = engine();
    let mut events = vec![
        listening(SEC, fpm(), BACKEND, Source::Kernel),
        signal(10 * SEC, fpm(), 100, 11, "SIGSEGV"),
        exit(10 * SEC + MS, fpm(), 11 | 0x80),
        closed(10 * SEC + 2 * MS, fpm(), BACKEND),
    ];
    events.extend(burst(10 * SEC + 100 * MS, BACKEND, libc::ECONNREFUSED));
    let incident = run(&mut e, &events);
    assert_eq!(top(&incident), (Cause::Crash, Confidence::High));
    let cause = &incident.causes[0];
    assert_eq!(cause.process.as_ref().unwrap().pid, 100);
    assert!(
        cause
            .summary
            .contains("php-fpm (pid 100, php8.2-fpm.service)"),
        "{}",
        cause.summary
    );
    assert!(
        cause.summary.contains("died of SIGSEGV (core dumped)"),
        "{}",
        cause.summary
    );
    let kinds: Vec<&str> = cause.evidence.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["signal", "process_exit", "listener_closed", "first_failure"]
    );
    assert_eq!(incident.failures, 10);
    assert_eq!(incident.failure_kinds[&FailureKind::ECONNREFUSED], 10);
    assert_eq!(incident.proxy.known_proxy.as_deref(), Some("nginx"));
    assert_eq!(incident.upstream, BACKEND);
    assert_eq!(incident.started_at, at(10 * SEC + 100 * MS));
}

#[test]
fn a_crash_long_before_the_failures_is_less_certain() {
    let mut e = engine();
    let mut events = vec![
        listening(SEC, fpm(), BACKEND, Source::Kernel),
        exit(10 * SEC, fpm(), 3 << 8),
        closed(10 * SEC + MS, fpm(), BACKEND),
    ];
    events.extend(burst(40 * SEC, BACKEND, libc::ECONNREFUSED));
    let incident = run(&mut e, &events);
    assert_eq!(top(&incident), (Cause::Crash, Confidence::Medium));
    assert!(incident.causes[0].summary.contains("exited with code 3"));
}

#[test]
fn oom_kill() {
    let mut e = engine();
    let mut events = vec![
        listening(SEC, fpm(), BACKEND, Source::Snapshot),
        event(
            10 * SEC,
            Some(process(777, "php-fpm", 50, None)),
            EventDetail::OomKill(OomKill {
                victim_pid: 100,
                victim_comm: "php-fpm".into(),
                total_vm_kb: 3 << 20,
                anon_rss_kb: 1_992_294,
                file_rss_kb: 0,
                shmem_rss_kb: 0,
                pgtables_kb: 0,
                uid: 33,
                oom_score_adj: 0,
                victim: None,
            }),
        ),
        signal(
            10 * SEC,
            process(777, "php-fpm", 50, None),
            100,
            9,
            "SIGKILL",
        ),
        exit(10 * SEC + MS, fpm(), 9),
        closed(10 * SEC + 2 * MS, fpm(), BACKEND),
    ];
    events.extend(burst(10 * SEC + 100 * MS, BACKEND, libc::ECONNREFUSED));
    let incident = run(&mut e, &events);
    assert_eq!(top(&incident), (Cause::OomKill, Confidence::High));
    let summary = &incident.causes[0].summary;
    assert!(summary.contains("killed by the OOM killer"), "{summary}");
    assert!(summary.contains("anon RSS 1.9 GiB"), "{summary}");
    assert_eq!(incident.causes[0].evidence[0].kind, "oom_kill");
}

#[test]
fn killed_by_its_parent() {
    let mut e = engine();
    let parent = process(50, "php-fpm", 1, Some("php8.2-fpm.service"));
    let mut events = vec![
        listening(SEC, fpm(), BACKEND, Source::Kernel),
        signal(10 * SEC, parent, 100, 9, "SIGKILL"),
        exit(10 * SEC + MS, fpm(), 9),
        closed(10 * SEC + 2 * MS, fpm(), BACKEND),
    ];
    events.extend(burst(10 * SEC + 100 * MS, BACKEND, libc::ECONNREFUSED));
    let incident = run(&mut e, &events);
    assert_eq!(top(&incident), (Cause::KilledByParent, Confidence::High));
    assert!(incident.causes[0]
        .summary
        .contains("its own parent: SIGKILL"));
}

#[test]
fn restart_with_a_gap() {
    let mut e = engine();
    let systemd = process(1, "systemd", 0, None);
    let mut events = vec![
        listening(SEC, fpm(), BACKEND, Source::Kernel),
        signal(10 * SEC, systemd, 100, 15, "SIGTERM"),
        exit(10 * SEC + 5 * MS, fpm(), 0),
        closed(10 * SEC + 6 * MS, fpm(), BACKEND),
    ];
    events.extend(burst(10 * SEC + 100 * MS, BACKEND, libc::ECONNREFUSED));
    let before_back = run(&mut e, &events);
    assert_eq!(top(&before_back), (Cause::Restart, Confidence::Medium));
    assert!(before_back.causes[0]
        .summary
        .contains("nothing has listened there since"));

    // The new master listens 2 s later: the restart's closed window is known.
    let new = process(101, "php-fpm", 1, Some("php8.2-fpm.service"));
    let back = listening(12 * SEC + 6 * MS, new, BACKEND, Source::Kernel);
    assert!(e.observe(&back).is_empty());
    let updates = e.tick(12 * SEC + 10 * MS, at(12 * SEC + 10 * MS));
    let Some(Update::Updated(after)) = updates.last() else {
        panic!("{updates:?}")
    };
    assert_eq!(top(after), (Cause::Restart, Confidence::High));
    let summary = &after.causes[0].summary;
    assert!(
        summary.contains("came back") && summary.contains("after 2.0 s"),
        "{summary}"
    );
    assert!(
        summary.contains("SIGTERM sent by systemd (pid 1)"),
        "{summary}"
    );
    assert_eq!(
        after.causes[0].evidence.last().unwrap().kind,
        "listener_back"
    );
    assert_eq!(after.id, before_back.id);
}

#[test]
fn wrong_port() {
    let mut e = engine();
    let incident = run(
        &mut e,
        &burst(5 * SEC, "127.0.0.1:9999", libc::ECONNREFUSED),
    );
    assert_eq!(top(&incident), (Cause::WrongPort, Confidence::High));
    assert!(incident.causes[0]
        .summary
        .contains("nothing has listened on 127.0.0.1:9999"));
}

#[test]
fn firewall_reject_with_a_live_listener() {
    let mut e = engine();
    let mut events = vec![listening(SEC, fpm(), "0.0.0.0:9000", Source::Snapshot)];
    events.extend(burst(5 * SEC, BACKEND, libc::ECONNREFUSED));
    let incident = run(&mut e, &events);
    assert_eq!(top(&incident), (Cause::FirewallReject, Confidence::High));
    assert!(incident.causes[0].summary.contains("is alive"));
}

#[test]
fn syn_timeouts_with_a_live_listener() {
    let mut e = engine();
    let mut events = vec![listening(SEC, fpm(), BACKEND, Source::Kernel)];
    events.extend(burst(5 * SEC, BACKEND, 0));
    let incident = run(&mut e, &events);
    assert_eq!(top(&incident), (Cause::SynTimeout, Confidence::Medium));
    assert_eq!(incident.failure_kinds[&FailureKind::Timeout], 10);
}

#[test]
fn unix_backlog_full() {
    let mut e = engine();
    let sock = Endpoint::own_unix("/run/php/php-fpm.sock");
    let mut events = vec![event(
        SEC,
        Some(fpm()),
        EventDetail::UnixListenerOpened(UnixListener {
            mntns: MntNs::own(),
            path: "/run/php/php-fpm.sock".into(),
            source: Source::Kernel,
        }),
    )];
    events.extend((0..10).map(|i| syscall_error(5 * SEC + i * MS, sock.clone(), libc::EAGAIN)));
    let incident = run(&mut e, &events);
    assert_eq!(top(&incident), (Cause::UnixBacklogFull, Confidence::High));
    assert_eq!(incident.upstream, "unix:/run/php/php-fpm.sock");
}

#[test]
fn unix_socket_of_a_dead_owner() {
    let mut e = engine();
    let sock = Endpoint::own_unix("/run/php/php-fpm.sock");
    let mut events = vec![
        event(
            SEC,
            Some(fpm()),
            EventDetail::UnixListenerOpened(UnixListener {
                mntns: MntNs::own(),
                path: "/run/php/php-fpm.sock".into(),
                source: Source::Snapshot,
            }),
        ),
        exit(10 * SEC, fpm(), 6 | 0x80),
    ];
    events.extend((0..10).map(|i| {
        syscall_error(
            10 * SEC + 50 * MS + i * MS,
            sock.clone(),
            libc::ECONNREFUSED,
        )
    }));
    let incident = run(&mut e, &events);
    assert_eq!(top(&incident), (Cause::Crash, Confidence::High));
    assert!(incident.causes[0].summary.contains("SIGABRT"));
}

#[test]
fn port_exhaustion() {
    let mut e = engine();
    let events: Vec<Event> = (0..10)
        .map(|i| {
            syscall_error(
                5 * SEC + i * MS,
                Endpoint::own_tcp(BACKEND.parse().unwrap()),
                libc::EADDRNOTAVAIL,
            )
        })
        .collect();
    let incident = run(&mut e, &events);
    assert_eq!(top(&incident), (Cause::PortExhaustion, Confidence::High));
}

#[test]
fn resets_on_established_connections() {
    let mut e = engine();
    let mut events = vec![listening(SEC, fpm(), BACKEND, Source::Kernel)];
    events.extend((0..10).map(|i| {
        event(
            5 * SEC + i * 20 * MS,
            Some(nginx()),
            EventDetail::TcpResetReceived(TcpReset {
                nat_destination: None,
                netns: NetNs::own(),
                traffic: None,
                src: "127.0.0.1:40000".parse().unwrap(),
                dst: BACKEND.parse().unwrap(),
                state: "ESTABLISHED",
                reason: None,
            }),
        )
    }));
    let incident = run(&mut e, &events);
    assert_eq!(
        top(&incident),
        (Cause::ConnectionResets, Confidence::Medium)
    );
}

#[test]
fn remote_upstream_has_no_local_cause() {
    let mut e = engine();
    let incident = run(
        &mut e,
        &burst(5 * SEC, "203.0.113.5:80", libc::EHOSTUNREACH),
    );
    assert_eq!(top(&incident), (Cause::NoLocalCause, Confidence::Low));
    assert!(incident.causes[0].summary.contains("another host"));
}

#[test]
fn a_few_failures_are_not_an_incident() {
    let mut e = engine();
    // Two: under the threshold of three.
    for i in 0..2 {
        assert!(e.observe(&refused(SEC + i * SEC, BACKEND, 111)).is_empty());
    }
    // Then one every 20 s for a while: never three in a 30 s window.
    for i in 0..10 {
        assert!(e
            .observe(&refused(40 * SEC + i * 20 * SEC, BACKEND, 111))
            .is_empty());
    }
    assert_eq!(e.open_incidents(), 0);
    // Three within a second: an incident, opened by the third.
    let opened: Vec<_> = (0..3)
        .map(|i| e.observe(&refused(300 * SEC + i * 100 * MS, BACKEND, 111)))
        .collect();
    assert!(opened[0].is_empty() && opened[1].is_empty());
    assert!(matches!(opened[2][..], [Update::Opened(_)]));
}

#[test]
fn a_quiet_site_opens_on_a_handful_in_tens_of_seconds() {
    let mut e = engine();
    // One request every 8 s failing: the third failure, 16 s after the first, opens it.
    let opened: Vec<_> = (0..3)
        .map(|i| e.observe(&refused(10 * SEC + i * 8 * SEC, BACKEND, 111)))
        .collect();
    assert!(opened[0].is_empty() && opened[1].is_empty());
    let [Update::Opened(incident)] = &opened[2][..] else {
        panic!("{:?}", opened[2])
    };
    assert_eq!(incident.failures, 3);
    assert_eq!(incident.started_at, at(10 * SEC));
}

#[test]
fn a_steady_failure_rate_raises_the_bar() {
    let mut e = engine();
    // One failure every 16 s for two minutes: never three in a window, but a baseline:
    // three in the minute before the window, 1.5 a window, so a spike takes 4.5 (five).
    for i in 0..8 {
        assert!(e
            .observe(&refused(SEC + i * 16 * SEC, BACKEND, 111))
            .is_empty());
    }
    // Two more in a second: four in the window (with 97 s and 113 s), under the bar.
    let two: Vec<_> = (0..2)
        .flat_map(|i| e.observe(&refused(125 * SEC + i * 100 * MS, BACKEND, 111)))
        .collect();
    assert!(two.is_empty(), "{two:?}");
    let fifth = e.observe(&refused(125 * SEC + 300 * MS, BACKEND, 111));
    assert!(matches!(fifth[..], [Update::Opened(_)]), "{fifth:?}");
}

#[test]
fn failures_among_many_successes_are_not_an_incident() {
    let mut e = engine();
    // 50 successful connects a second to the backend, from nginx.
    for s in 1..40 {
        e.observe_reading(&succeeded(s * SEC, BACKEND, 50));
    }
    // Five failures in 30 s: 0.3 % of its attempts.
    for i in 0..5 {
        assert!(e
            .observe(&refused(35 * SEC + i * 500 * MS, BACKEND, 111))
            .is_empty());
    }
    assert_eq!(e.open_incidents(), 0);
    // The same five with no successes around them (another upstream) open one.
    let other = "127.0.0.1:9001";
    let opened: Vec<_> = (0..5)
        .flat_map(|i| e.observe(&refused(35 * SEC + i * 500 * MS, other, 111)))
        .collect();
    assert_eq!(opened.len(), 1);
}

#[test]
fn processes_that_are_not_proxies_open_no_incident() {
    let mut e = engine();
    // A script probing closed ports, and runuser missing /dev/log: many failures, no
    // listener, not a known proxy.
    let script = process(900, "python3", 899, None);
    let runuser = process(901, "runuser", 1, None);
    for i in 0..50 {
        let mut probe = refused(SEC + i * 10 * MS, "127.0.0.1:4000", 111);
        probe.process = Some(script.clone());
        assert!(e.observe(&probe).is_empty());
        let mut log = syscall_error(
            SEC + i * 10 * MS,
            Endpoint::own_unix("/dev/log"),
            libc::ENOENT,
        );
        log.process = Some(runuser.clone());
        assert!(e.observe(&log).is_empty());
    }
    assert_eq!(e.open_incidents(), 0);
    // A process that listens (it serves clients) and connects upstream is a proxy.
    let gateway = process(902, "gateway", 1, None);
    e.observe(&listening(
        2 * SEC,
        gateway.clone(),
        "0.0.0.0:8080",
        Source::Kernel,
    ));
    let opened: Vec<_> = (0..3)
        .flat_map(|i| {
            let mut f = refused(3 * SEC + i * 10 * MS, "127.0.0.1:4001", 111);
            f.process = Some(gateway.clone());
            e.observe(&f)
        })
        .collect();
    assert_eq!(opened.len(), 1);
}

#[test]
fn a_first_failure_after_the_listener_died_opens_at_once() {
    let mut e = engine();
    let events = [
        listening(SEC, fpm(), BACKEND, Source::Kernel),
        exit(10 * SEC, fpm(), 11),
        closed(10 * SEC + MS, fpm(), BACKEND),
    ];
    for ev in &events {
        assert!(e.observe(ev).is_empty());
    }
    let opened = e.observe(&refused(10 * SEC + 500 * MS, BACKEND, 111));
    let [Update::Opened(incident)] = &opened[..] else {
        panic!("{opened:?}")
    };
    assert_eq!(incident.failures, 1);
    assert_eq!(top(incident), (Cause::Crash, Confidence::High));
}

#[test]
fn closes_after_a_quiet_period_and_ids_continue() {
    let mut e = Engine::new(IncidentConfig::default(), 41, vec![], at(0));
    let first = run(&mut e, &burst(5 * SEC, "127.0.0.1:9999", 111));
    assert_eq!(first.id, 41);
    assert!(
        e.tick(10 * SEC, at(10 * SEC)).is_empty(),
        "not quiet long enough yet"
    );
    let updates = e.tick(16 * SEC, at(16 * SEC));
    let Some(Update::Closed(closed)) = updates.first() else {
        panic!("{updates:?}")
    };
    assert_eq!(closed.state, IncidentState::Closed);
    assert_eq!(closed.closed_at, Some(at(16 * SEC)));
    assert_eq!(e.open_incidents(), 0);
    let second = run(&mut e, &burst(30 * SEC, "127.0.0.1:9999", 111));
    assert_eq!(second.id, 42);
}

#[test]
fn failures_during_an_incident_are_counted_once_and_updated_by_tick() {
    let mut e = engine();
    let opened = run(&mut e, &burst(5 * SEC, "127.0.0.1:9999", 111));
    assert_eq!(opened.failures, 10);
    for i in 0..7 {
        assert!(e
            .observe(&refused(6 * SEC + i * MS, "127.0.0.1:9999", 111))
            .is_empty());
    }
    let updates = e.tick(7 * SEC, at(7 * SEC));
    let Some(Update::Updated(updated)) = updates.first() else {
        panic!("{updates:?}")
    };
    assert_eq!(updated.failures, 17);
    assert_eq!(updated.failure_kinds[&FailureKind::ECONNREFUSED], 17);
    assert!(
        e.tick(8 * SEC, at(8 * SEC)).is_empty(),
        "nothing changed: no update"
    );
}

#[test]
fn nscd_probes_are_ignored() {
    let mut e = engine();
    let nscd = Endpoint::own_unix("/var/run/nscd/socket");
    for i in 0..50 {
        assert!(e
            .observe(&syscall_error(SEC + i * MS, nscd.clone(), libc::ENOENT))
            .is_empty());
    }
}

fn pressure(mono: u64, scope: &str, avg10: f64) -> Event {
    event(
        mono,
        None,
        EventDetail::MemoryPressure(MemoryPressure {
            scope: scope.into(),
            pid: None,
            some_avg10: avg10,
            full_avg10: Some(avg10 / 2.0),
        }),
    )
}

#[test]
fn overload_when_the_accept_queue_was_full() {
    let mut e = engine();
    let mut events = vec![
        listening(SEC, fpm(), "0.0.0.0:9000", Source::Snapshot),
        event(
            4 * SEC,
            None,
            EventDetail::ListenQueueFull(ListenQueueFull {
                endpoint: "0.0.0.0:9000".parse().unwrap(),
                netns: NetNs::own(),
                service: Some("php8.2-fpm.service".into()),
                queued: 129,
                backlog: Some(128),
                overflows: None,
            }),
        ),
    ];
    events.extend(burst(5 * SEC, BACKEND, 0));
    let incident = run(&mut e, &events);
    assert_eq!(top(&incident), (Cause::Overload, Confidence::High));
    assert!(
        incident.causes[0].summary.contains("129/128"),
        "{}",
        incident.causes[0].summary
    );
    // Without the queue evidence the same failures are only a medium SYN timeout.
    let mut plain = engine();
    let mut events = vec![listening(SEC, fpm(), "0.0.0.0:9000", Source::Snapshot)];
    events.extend(burst(5 * SEC, BACKEND, 0));
    assert_eq!(
        top(&run(&mut plain, &events)),
        (Cause::SynTimeout, Confidence::Medium)
    );
}

#[test]
fn memory_pressure_joins_an_oom_kill_and_stands_on_its_own() {
    let mut e = engine();
    let mut events = vec![
        listening(SEC, fpm(), BACKEND, Source::Kernel),
        pressure(9 * SEC, "php8.2-fpm.service", 43.0),
        event(
            10 * SEC,
            Some(fpm()),
            EventDetail::OomKill(OomKill {
                victim_pid: 100,
                victim_comm: "php-fpm".into(),
                total_vm_kb: 0,
                anon_rss_kb: 1 << 20,
                file_rss_kb: 0,
                shmem_rss_kb: 0,
                pgtables_kb: 0,
                uid: 0,
                oom_score_adj: 0,
                victim: None,
            }),
        ),
        exit(10 * SEC + MS, fpm(), 9),
        closed(10 * SEC + 2 * MS, fpm(), BACKEND),
    ];
    events.extend(burst(10 * SEC + 100 * MS, BACKEND, libc::ECONNREFUSED));
    let incident = run(&mut e, &events);
    assert_eq!(top(&incident), (Cause::OomKill, Confidence::High));
    assert_eq!(incident.causes[0].evidence[0].kind, "memory_pressure");
    assert_eq!(incident.causes[1].cause, Cause::MemoryPressure);

    // Host pressure, a live listener, slow handshakes: pressure is among the candidates.
    let mut e = engine();
    let mut events = vec![
        listening(SEC, fpm(), BACKEND, Source::Kernel),
        pressure(4 * SEC, "host", 60.0),
    ];
    events.extend(burst(5 * SEC, BACKEND, 0));
    let incident = run(&mut e, &events);
    let causes: Vec<Cause> = incident.causes.iter().map(|c| c.cause).collect();
    assert!(causes.contains(&Cause::MemoryPressure), "{causes:?}");
    // Pressure long before the look-back does not count.
    let mut e = engine();
    let mut events = vec![
        listening(SEC, fpm(), BACKEND, Source::Kernel),
        pressure(2 * SEC, "host", 60.0),
    ];
    events.extend(burst(400 * SEC, BACKEND, 0));
    let incident = run(&mut e, &events);
    assert!(incident
        .causes
        .iter()
        .all(|c| c.cause != Cause::MemoryPressure));
}

fn responses(mono: u64, code: u16, count: u64) -> Event {
    event(
        mono,
        Some(nginx()),
        EventDetail::HttpResponses(HttpResponses { code, count }),
    )
}

#[test]
fn bad_gateway_responses_are_linked_to_the_failures_behind_them() {
    let mut e = engine();
    let mut events = vec![
        listening(SEC, fpm(), BACKEND, Source::Kernel),
        exit(10 * SEC, fpm(), 11),
        closed(10 * SEC + MS, fpm(), BACKEND),
    ];
    // Three failures, their 502s counted by the kernel before the incident opens...
    events.extend((0..3).map(|i| refused(10 * SEC + 100 * MS + i * MS, BACKEND, 111)));
    events.push(responses(10 * SEC + 104 * MS, 502, 3));
    // ...then seven more, the incident opens at the fifth, and their 502s follow.
    events.extend((3..10).map(|i| refused(10 * SEC + 100 * MS + i * MS, BACKEND, 111)));
    events.push(responses(10 * SEC + 350 * MS, 502, 7));
    events.push(responses(10 * SEC + 350 * MS, 200, 4));
    let incident = run(&mut e, &events);
    assert_eq!(top(&incident).0, Cause::Crash);
    assert_eq!(incident.failures, 10);
    assert_eq!(incident.responses.get(&502), Some(&10));
    assert!(!incident.responses.contains_key(&200));
}

#[test]
fn bad_gateway_without_upstream_failures_is_its_own_incident() {
    let mut e = engine();
    assert!(e.observe(&responses(SEC, 502, 2)).is_empty());
    assert!(
        e.tick(SEC + 600 * MS, at(SEC + 600 * MS)).is_empty(),
        "two are not a spike"
    );
    // Responses wait half a second for the failures behind them before they count alone.
    assert!(e.observe(&responses(SEC + 700 * MS, 502, 20)).is_empty());
    assert!(
        e.tick(SEC + 900 * MS, at(SEC + 900 * MS)).is_empty(),
        "still in grace"
    );
    let opened = e.tick(SEC + 1300 * MS, at(SEC + 1300 * MS));
    let Some(Update::Opened(incident)) = opened.first() else {
        panic!("{opened:?}")
    };
    assert_eq!(incident.upstream, crate::model::incident::NO_UPSTREAM);
    assert_eq!(incident.failures, 0);
    assert_eq!(incident.responses.get(&502), Some(&22));
    assert_eq!(
        top(incident),
        (Cause::NoUpstreamConnect, Confidence::Medium)
    );
    assert!(
        incident.causes[0].summary.contains("502 ×22"),
        "{}",
        incident.causes[0].summary
    );
    // More of them count on the same incident.
    assert!(e.observe(&responses(SEC + 1400 * MS, 504, 2)).is_empty());
    let updates = e.tick(SEC + 2 * SEC, at(SEC + 2 * SEC));
    let Some(Update::Updated(updated)) = updates.first() else {
        panic!("{updates:?}")
    };
    assert_eq!(updated.responses.get(&504), Some(&2));
}

#[test]
fn responses_polled_before_their_failures_are_not_an_incident_of_their_own() {
    let mut e = engine();
    // The kernel's counts arrive before the ring buffer's failures (a busy host).
    assert!(e.observe(&responses(10 * SEC, 502, 10)).is_empty());
    let mut events: Vec<Event> = (0..10)
        .map(|i| refused(10 * SEC + 100 * MS + i * MS, "127.0.0.1:9999", 111))
        .collect();
    events.push(responses(10 * SEC + 400 * MS, 502, 5));
    let incident = run(&mut e, &events);
    assert_eq!(incident.upstream, "127.0.0.1:9999");
    assert_eq!(incident.responses.get(&502), Some(&15));
    let later = e.tick(12 * SEC, at(12 * SEC));
    assert!(
        later
            .iter()
            .all(|u| u.incident().upstream != crate::model::incident::NO_UPSTREAM),
        "{later:?}"
    );
}

#[test]
fn an_in_flight_reset_just_before_the_listener_closes_still_blames_the_crash() {
    let mut e = engine();
    let reset = event(
        10 * SEC + 50_000,
        Some(nginx()),
        EventDetail::TcpResetReceived(TcpReset {
            nat_destination: None,
            netns: NetNs::own(),
            traffic: None,
            src: "127.0.0.1:40000".parse().unwrap(),
            dst: BACKEND.parse().unwrap(),
            state: "ESTABLISHED",
            reason: None,
        }),
    );
    let mut events = vec![
        listening(SEC, fpm(), BACKEND, Source::Kernel),
        exit(10 * SEC, fpm(), 11),
        reset,
        // The listener closes 28 µs after nginx saw the reset.
        closed(10 * SEC + 78_000, fpm(), BACKEND),
    ];
    events.extend(burst(10 * SEC + 100 * MS, BACKEND, libc::ECONNREFUSED));
    let incident = run(&mut e, &events);
    assert_eq!(
        top(&incident),
        (Cause::Crash, Confidence::High),
        "{incident:#?}"
    );
    assert_eq!(incident.failure_kinds[&FailureKind::Reset], 1);
}

#[test]
fn a_connect_given_up_after_the_initial_rto_is_a_timeout() {
    let failure = |duration_ms, retransmits| ConnectFailure {
        nat_destination: None,
        netns: NetNs::own(),
        src: "127.0.0.1:40000".parse().unwrap(),
        dst: BACKEND.parse().unwrap(),
        errno: Errno(0),
        errno_source: "none",
        duration: Duration::from_millis(duration_ms),
        syn_retransmits: retransmits,
    };
    assert_eq!(FailureKind::of_connect(&failure(2000, 0)).name(), "timeout");
    assert_eq!(FailureKind::of_connect(&failure(200, 1)).name(), "timeout");
    assert_eq!(FailureKind::of_connect(&failure(3, 0)).name(), "aborted");
}

fn ended(mono: u64, how: EndHow, received: u64) -> Event {
    event(
        mono,
        Some(nginx()),
        EventDetail::UpstreamEnd(UpstreamEnd {
            nat_destination: None,
            netns: NetNs::own(),
            src: "127.0.0.1:40000".parse().unwrap(),
            dst: BACKEND.parse().unwrap(),
            how,
            traffic: Traffic {
                duration: Duration::from_secs(2),
                bytes_sent: 120,
                bytes_received: received,
            },
        }),
    )
}

/// A worker of `fpm()` (pid 100): pid `pid`, its parent the master.
fn worker(pid: u32) -> ProcessRef {
    process(pid, "php-fpm", fpm().pid, Some("php8.2-fpm.service"))
}

fn worker_exit(mono: u64, pid: u32, status: i32) -> Event {
    let mut exit = Exit::from_wait_status(status);
    exit.ppid = Some(fpm().pid);
    event(mono, Some(worker(pid)), EventDetail::ProcessExit(exit))
}

#[test]
fn a_worker_crashing_mid_request_is_blamed_while_its_master_listens() {
    let mut e = engine();
    let mut events = vec![
        listening(SEC, fpm(), BACKEND, Source::Kernel),
        worker_exit(10 * SEC, 101, 11),
    ];
    events.extend((0..2).map(|i| ended(10 * SEC + (i + 1) * MS, EndHow::ClosedByUpstream, 0)));
    let incident = run(&mut e, &events);
    assert_eq!(top(&incident), (Cause::Crash, Confidence::High));
    let c = &incident.causes[0];
    assert_eq!(c.process.as_ref().map(|p| p.pid), Some(101), "the worker");
    assert!(
        c.summary.contains("worker of php-fpm (pid 100"),
        "{}",
        c.summary
    );
    assert!(
        c.summary.contains("while serving 2 requests"),
        "{}",
        c.summary
    );
    assert_eq!(
        incident.failure_kinds[&FailureKind::ClosedBeforeResponse],
        2
    );
}

#[test]
fn a_worker_killed_by_its_master_is_killed_by_parent() {
    let mut e = engine();
    let events = vec![
        listening(SEC, fpm(), BACKEND, Source::Kernel),
        signal(10 * SEC, fpm(), 102, 15, "SIGTERM"),
        // php-fpm's worker re-raises the signal to itself before it dies.
        signal(10 * SEC + MS / 2, worker(102), 102, 15, "SIGTERM"),
        worker_exit(10 * SEC + MS, 102, 15),
        ended(10 * SEC + 2 * MS, EndHow::ClosedByUpstream, 0),
    ];
    let incident = run(&mut e, &events);
    assert_eq!(top(&incident), (Cause::KilledByParent, Confidence::High));
    assert_eq!(
        incident.causes[0].process.as_ref().map(|p| p.pid),
        Some(102)
    );
}

#[test]
fn a_unix_worker_oom_killed_mid_request_takes_the_proxys_502s() {
    let mut e = engine();
    let sock = "/run/php/php-fpm.sock";
    let events = vec![
        event(
            SEC,
            Some(fpm()),
            EventDetail::UnixListenerOpened(UnixListener {
                mntns: MntNs::own(),
                path: sock.into(),
                source: Source::Kernel,
            }),
        ),
        event(
            10 * SEC,
            None,
            EventDetail::OomKill(OomKill {
                victim_pid: 103,
                victim_comm: "php-fpm".into(),
                total_vm_kb: 300_000,
                anon_rss_kb: 200_000,
                file_rss_kb: 0,
                shmem_rss_kb: 0,
                pgtables_kb: 0,
                uid: 33,
                oom_score_adj: 0,
                victim: None,
            }),
        ),
        worker_exit(10 * SEC + MS, 103, 9),
        // No failed connect and no TCP end: only nginx's 502s.
        responses(10 * SEC + 250 * MS, 502, 3),
    ];
    for ev in &events {
        assert!(e.observe(ev).is_empty());
    }
    let opened = e.tick(11 * SEC, at(11 * SEC));
    let [Update::Opened(incident)] = &opened[..] else {
        panic!("{opened:?}")
    };
    assert_eq!(incident.upstream, format!("unix:{sock}"));
    assert_eq!(incident.responses.get(&502), Some(&3));
    assert_eq!(incident.failures, 0);
    assert_eq!(top(incident), (Cause::OomKill, Confidence::High));
    let c = &incident.causes[0];
    assert_eq!(c.process.as_ref().map(|p| p.pid), Some(103));
    assert!(
        c.summary.contains("while serving 3 requests"),
        "{}",
        c.summary
    );
}

#[test]
fn an_upstream_that_does_not_answer_in_time_is_slow() {
    let mut e = engine();
    let mut events = vec![listening(SEC, fpm(), BACKEND, Source::Kernel)];
    events.extend((0..3).map(|i| ended(10 * SEC + i * 100 * MS, EndHow::ProxyGaveUp, 0)));
    let incident = run(&mut e, &events);
    assert_eq!(top(&incident), (Cause::SlowUpstream, Confidence::Medium));
    let c = &incident.causes[0];
    assert_eq!(c.process.as_ref().map(|p| p.pid), Some(100));
    assert!(
        c.summary.contains("is alive and accepted 3 requests"),
        "{}",
        c.summary
    );
    assert_eq!(incident.failure_kinds[&FailureKind::ResponseTimeout], 3);
}

#[test]
fn an_upstream_closing_before_answering_with_nothing_dying_is_low() {
    let mut e = engine();
    let mut events = vec![listening(SEC, fpm(), BACKEND, Source::Kernel)];
    events.extend((0..3).map(|i| ended(10 * SEC + i * 100 * MS, EndHow::ClosedByUpstream, 0)));
    let incident = run(&mut e, &events);
    assert_eq!(top(&incident), (Cause::UpstreamClosed, Confidence::Low));
}

#[test]
fn every_502_of_unix_workers_dying_one_after_the_other_is_counted() {
    let mut e = engine();
    let sock = "/run/php/php-fpm.sock";
    e.observe(&event(
        SEC,
        Some(fpm()),
        EventDetail::UnixListenerOpened(UnixListener {
            mntns: MntNs::own(),
            path: sock.into(),
            source: Source::Kernel,
        }),
    ));
    // Five workers OOM-killed 350 ms apart; the kernel's response counts are polled every
    // 250 ms, correlation ticks every 250 ms.
    let deaths: Vec<u64> = (0..5).map(|i| 10 * SEC + i * 350 * MS).collect();
    let mut updates = Vec::new();
    let mut answered = 0;
    for step in 0..40 {
        let now = 10 * SEC + step * 250 * MS;
        for (i, &d) in deaths.iter().enumerate() {
            if d > now.saturating_sub(250 * MS) && d <= now {
                updates.extend(e.observe(&worker_exit(d, 110 + i as u32, 9)));
            }
        }
        // The 502s of the deaths since the last poll.
        let new = deaths
            .iter()
            .filter(|&&d| d + 5 * MS > now.saturating_sub(250 * MS) && d + 5 * MS <= now)
            .count() as u64;
        if new > 0 {
            answered += new;
            updates.extend(e.observe(&responses(now, 502, new)));
        }
        updates.extend(e.tick(now, at(now)));
    }
    assert_eq!(answered, 5);
    let opened: Vec<_> = updates
        .iter()
        .filter(|u| matches!(u, Update::Opened(_)))
        .collect();
    assert_eq!(opened.len(), 1, "{updates:?}");
    let last = updates.last().unwrap().incident();
    assert_eq!(last.upstream, format!("unix:{sock}"));
    assert_eq!(last.responses.get(&502), Some(&5), "{last:?}");
    assert!(
        last.causes[0]
            .summary
            .contains("5 of its workers died so, with 5 requests"),
        "{}",
        last.causes[0].summary
    );
}

// ---- Proxies by identity (cgroup and uid), not by name: a forged unit is not the real one.

const SYSTEM_NGINX: &str = "/system.slice/nginx.service";
const USER_NGINX: &str = "/user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service";

/// An nginx process (a known proxy by name) with the uid and cgroup procfs gave it.
fn nginx_as(pid: u32, ppid: u32, uid: u32, cgroup: &str) -> ProcessRef {
    ProcessRef {
        pid,
        tid: pid,
        comm: "nginx".into(),
        thread: None,
        cgroup_id: 7,
        info: Some(Arc::new(ProcessInfo {
            ppid: Some(ppid),
            uid: Some(uid),
            exe: Some("/usr/sbin/nginx".into()),
            unit: crate::sources::enrich::cgroup::unit(cgroup),
            cgroup: Some(cgroup.into()),
            ..Default::default()
        })),
    }
}

fn refused_from(mono: u64, who: &ProcessRef) -> Event {
    let mut e = refused(mono, BACKEND, libc::ECONNREFUSED);
    e.process = Some(who.clone());
    e
}

/// Feeds `events` (and a tick after them); each incident as last updated, by id.
fn incidents_of(e: &mut Engine, events: &[Event]) -> std::collections::BTreeMap<u64, Incident> {
    let mut by_id = std::collections::BTreeMap::new();
    for event in events {
        for update in e.observe(event) {
            by_id.insert(update.incident().id, update.incident().clone());
        }
    }
    let end = events.last().unwrap().mono_ns + 10 * MS;
    for update in e.tick(end, at(end)) {
        by_id.insert(update.incident().id, update.incident().clone());
    }
    by_id
}

#[test]
fn proxies_of_one_name_and_unit_in_different_users_hands_are_apart() {
    // (real, forged): each pair has the same name, and the same unit name or none.
    let pairs = [
        // `systemd-run --user --unit=nginx` next to the system's nginx.service.
        (
            nginx_as(501, 500, 33, SYSTEM_NGINX),
            nginx_as(7001, 7000, 1000, USER_NGINX),
        ),
        // The same uid too (workers as nobody, a user manager of nobody's): the cgroup
        // alone tells them apart.
        (
            nginx_as(501, 500, 65534, SYSTEM_NGINX),
            nginx_as(
                7001,
                7000,
                65534,
                "/user.slice/user-65534.slice/user@65534.service/app.slice/nginx.service",
            ),
        ),
        // No unit at all (no systemd: everything in the root cgroup), another user.
        (nginx_as(501, 500, 0, "/"), nginx_as(7001, 7000, 1000, "/")),
        // One login session: root's nginx (started with sudo) and the user's own.
        (
            nginx_as(501, 500, 0, "/user.slice/user-1000.slice/session-3.scope"),
            nginx_as(
                7001,
                7000,
                1000,
                "/user.slice/user-1000.slice/session-3.scope",
            ),
        ),
    ];
    for (real, forged) in pairs {
        let mut e = engine();
        let mut events = vec![listening(SEC, fpm(), BACKEND, Source::Kernel)];
        // Interleaved: 6 failures of the real one, 4 of the forged one, 10 ms apart.
        for i in 0..10u64 {
            let who = if i % 5 < 3 { &real } else { &forged };
            events.push(refused_from(10 * SEC + i * 10 * MS, who));
        }
        let incidents = incidents_of(&mut e, &events);
        let what = format!("{:?} and {:?}", real.info, forged.info);
        assert_eq!(incidents.len(), 2, "{what}: {incidents:#?}");
        for (who, failures) in [(&real, 6), (&forged, 4)] {
            let info = who.info.as_deref().unwrap();
            let mine: Vec<&Incident> = incidents
                .values()
                .filter(|i| i.proxy.pid == who.pid)
                .collect();
            assert_eq!(mine.len(), 1, "{what}: {incidents:#?}");
            let incident = mine[0];
            assert_eq!(incident.failures, failures, "{what}: {incident:#?}");
            assert_eq!(incident.proxy.uid, info.uid, "{what}");
            assert_eq!(incident.proxy.cgroup, info.cgroup, "{what}");
            assert_eq!(incident.proxy.unit, info.unit, "{what}");
        }
    }
}

#[test]
fn a_user_managers_unit_is_named_after_its_manager() {
    let mut e = engine();
    let forged = nginx_as(7001, 7000, 1000, USER_NGINX);
    let events: Vec<Event> = (0..5)
        .map(|i| refused_from(10 * SEC + i * 10 * MS, &forged))
        .collect();
    let incident = run(&mut e, &events);
    assert_eq!(
        incident.proxy.unit.as_deref(),
        Some("user@1000.service/nginx.service")
    );
    assert_eq!(incident.proxy.uid, Some(1000));
}

#[test]
fn a_masters_and_its_workers_failures_in_one_system_unit_are_one_incident() {
    let mut e = engine();
    // The master as root, its workers as www-data (one in a sub-cgroup of the unit).
    let master = nginx_as(500, 1, 0, SYSTEM_NGINX);
    let workers = [
        nginx_as(501, 500, 33, SYSTEM_NGINX),
        nginx_as(502, 500, 33, &format!("{SYSTEM_NGINX}/worker")),
    ];
    let mut events = vec![listening(SEC, fpm(), BACKEND, Source::Kernel)];
    for i in 0..9u64 {
        let who = match i % 3 {
            0 => &master,
            n => &workers[n as usize - 1],
        };
        events.push(refused_from(10 * SEC + i * 10 * MS, who));
    }
    let incidents = incidents_of(&mut e, &events);
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    let incident = incidents.values().next().unwrap();
    assert_eq!(incident.failures, 9, "{incident:#?}");
    assert_eq!(incident.proxy.unit.as_deref(), Some("nginx.service"));
}

#[test]
fn a_forged_proxys_bad_gateways_are_not_the_real_ones() {
    let mut e = engine();
    let real = nginx_as(501, 500, 33, SYSTEM_NGINX);
    let forged = nginx_as(7001, 7000, 1000, USER_NGINX);
    let mut events = vec![listening(SEC, fpm(), BACKEND, Source::Kernel)];
    events.extend((0..5).map(|i| refused_from(10 * SEC + i * 10 * MS, &real)));
    let with = |who: &ProcessRef, mut e: Event| {
        e.process = Some(who.clone());
        e
    };
    events.push(with(&real, responses(10 * SEC + 100 * MS, 502, 5)));
    // The forged one answers 502 a thousand times while the real one's incident is open.
    events.push(with(&forged, responses(10 * SEC + 100 * MS, 502, 1000)));
    let incidents = incidents_of(&mut e, &events);
    let real_incident = incidents
        .values()
        .find(|i| i.proxy.pid == real.pid)
        .expect("the real nginx's incident");
    assert_eq!(real_incident.failures, 5);
    assert_eq!(
        real_incident.responses.get(&502),
        Some(&5),
        "{real_incident:#?}"
    );
}

#[test]
fn a_forged_proxys_successes_do_not_hide_the_real_ones_failures() {
    let mut e = engine();
    let real = nginx_as(501, 500, 33, SYSTEM_NGINX);
    let forged = nginx_as(7001, 7000, 1000, USER_NGINX);
    // Nobody's nginx connects to the same upstream a million times, and it works: were it
    // the real one's flow, 5 failures would be far under 1 % of its attempts.
    let mut reading = succeeded(9 * SEC, BACKEND, 1_000_000);
    reading.connects[0].process = forged.clone();
    e.observe_reading(&reading);
    let events: Vec<Event> = (0..5)
        .map(|i| refused_from(10 * SEC + i * 10 * MS, &real))
        .collect();
    let incidents = incidents_of(&mut e, &events);
    let opened: Vec<&Incident> = incidents.values().collect();
    assert_eq!(opened.len(), 1, "{incidents:#?}");
    assert_eq!(opened[0].proxy.pid, real.pid);
    assert_eq!(opened[0].failures, 5);
}
