//! A local user flooding the ring buffer with the events anyone can make at will cannot
//! drown the failure evidence: while processes of user `nobody` call `listen(2)` in a loop
//! (and fork short-lived listeners that exit with a code, each a fresh process with a
//! budget of its own), the refused connects another process makes meanwhile all reach
//! the ring, and the flood is counted as throttled and dropped.
//!
//! Nobody reads the ring while the flood runs: the slowest reader there can be. The
//! records that arrive are then the kernel's doing alone.

mod common;

use std::{
    ffi::CString,
    net::TcpStream,
    os::unix::process::CommandExt,
    time::{Duration, Instant},
};

use common::closed_port;
use why502::{
    config::Config,
    model::event::EventDetail,
    sources::{
        decode::{decode, Decoded},
        probes::{
            maps::{KernelCounters, KernelMaps},
            ProbeSet,
        },
    },
};

/// `nobody` and `nogroup` on Debian.
const NOBODY_UID: libc::uid_t = 65534;
const NOGROUP_GID: libc::gid_t = 65534;

/// Refused connects made during the flood, and how many of them must arrive (99.5 %).
const CONNECTS: u64 = 200;
const MUST_ARRIVE: u64 = 199;

/// How long a flooder runs at most, even if this test dies without killing it.
const FLOOD_LIMIT: Duration = Duration::from_secs(20);
/// How long the flood may take to fill the ring to its low-priority share.
const FILL_DEADLINE: Duration = Duration::from_secs(15);

/// The flooding processes, killed and reaped when the test ends, however it ends.
struct Flooders(Vec<libc::pid_t>);

impl Drop for Flooders {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: plain syscalls on our own children.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// What a flooder does once it is `nobody`.
#[derive(Clone, Copy)]
enum Flood {
    /// `listen(fd, 1)` in a loop on one bound unix socket: re-listens, each a success.
    Relisten,
    /// Makes new listeners in a loop: socket, bind (autobind, abstract), listen, close.
    /// Every `listen(2)` a first one, all from one process.
    NewListeners,
    /// Forks children that each bind a unix socket (autobind, abstract), listen on it
    /// and exit with code 1: every `listen(2)` from a new process, every exit non-zero.
    ForkListeners,
}

/// Children of one parent exiting with a code: more than the parent's budget allows in
/// the few windows they take.
const CODE_EXITS: u32 = 1500;
/// After each third of them, a listener's owner of the same parent exits with code 3:
/// its exit is evidence (a restart, a crash) and spends no share of the parent's budget.
const LISTENER_EXITS: u32 = 3;
/// Children of the same parent dying of a signal: over the budget too, and all reported.
const SIGNAL_DEATHS: u32 = 300;

/// The tests load probes of their own and flood the host: one at a time, so that one's
/// flood is not counted in the other's counters.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A test's own probes, loaded alone (one test of this binary at a time: each reads the
/// ring only after its flood), or `None`, with the reason printed, where the test cannot
/// run: not root, or (`needs_btf`: why) no kernel BTF.
struct OwnProbes {
    _one: std::sync::MutexGuard<'static, ()>,
    _probes: ProbeSet,
    maps: KernelMaps,
}

fn own_probes(ring_buffer_bytes: Option<u32>, needs_btf: Option<&str>) -> Option<OwnProbes> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: not root: kernel tests need root to load eBPF programs");
        return None;
    }
    if let Some(why) = needs_btf {
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            eprintln!("skipped: no kernel BTF: {why}");
            return None;
        }
    }
    let one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut config = Config::default();
    if let Some(bytes) = ring_buffer_bytes {
        config.probes.ring_buffer_bytes = bytes;
    }
    let mut probes = ProbeSet::load(&config).expect("probes load");
    let maps = probes.take_maps().unwrap();
    Some(OwnProbes {
        _one: one,
        _probes: probes,
        maps,
    })
}

fn monotonic_now() -> libc::timespec {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now
}

/// Forks a flooder: root binds `path` (when given), then the child becomes `nobody` and
/// floods until killed or [`FLOOD_LIMIT`]. The child makes only raw syscalls (this test
/// process has threads: nothing that allocates or locks may run after the fork).
fn spawn_flooder(flood: Flood, path: Option<&std::path::Path>) -> libc::pid_t {
    // Everything the child needs is prepared before the fork.
    // SAFETY: sockaddr_un is plain data, all zeroes a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if let Some(path) = path {
        let bytes = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let bytes = bytes.as_bytes_with_nul();
        assert!(bytes.len() <= addr.sun_path.len(), "socket path too long");
        for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
    }
    let parent = std::process::id() as libc::pid_t;
    let start = monotonic_now();
    let limit = FLOOD_LIMIT.as_secs() as libc::time_t;
    // SAFETY: the child only makes async-signal-safe syscalls and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid > 0 {
        return pid;
    }
    // SAFETY: the child: raw syscalls on its own memory and descriptors, prepared above;
    // it never returns (`_exit`).
    unsafe {
        let fail = |code| libc::_exit(code);
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        if fd < 0 {
            fail(10);
        }
        if matches!(flood, Flood::Relisten)
            && libc::bind(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            ) != 0
        {
            fail(11);
        }
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(NOGROUP_GID) != 0
            || libc::setuid(NOBODY_UID) != 0
        {
            fail(12);
        }
        // After the uid change, which clears it; and in case the parent died before it.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            fail(13);
        }
        // Children reaped by the kernel: no zombies, no wait loop.
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
        let family = libc::AF_UNIX as libc::sa_family_t;
        loop {
            if monotonic_now().tv_sec - start.tv_sec >= limit {
                libc::_exit(0);
            }
            match flood {
                Flood::Relisten => {
                    for _ in 0..1024 {
                        libc::listen(fd, 1);
                    }
                }
                Flood::NewListeners => {
                    let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                    libc::bind(
                        fd,
                        (&family as *const libc::sa_family_t).cast(),
                        std::mem::size_of::<libc::sa_family_t>() as libc::socklen_t,
                    );
                    libc::listen(fd, 1);
                    libc::close(fd);
                }
                Flood::ForkListeners => {
                    if libc::fork() == 0 {
                        let child = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                        // An address of the family alone: the kernel picks a free
                        // abstract name (autobind).
                        libc::bind(
                            child,
                            (&family as *const libc::sa_family_t).cast(),
                            std::mem::size_of::<libc::sa_family_t>() as libc::socklen_t,
                        );
                        libc::listen(child, 1);
                        libc::_exit(1);
                    }
                }
            }
        }
    }
}

fn counters(maps: &KernelMaps) -> KernelCounters {
    maps.counters.read().expect("read the kernel counters")
}

/// Reads every record in the ring, returning how many are refused connects to `port`
/// and how many are `listen(2)` calls of each of `listeners`.
fn drain(maps: &mut KernelMaps, port: Option<u16>, listeners: &[u32]) -> (u64, Vec<u64>) {
    let mut refused = 0;
    let mut listens = vec![0; listeners.len()];
    while let Some(record) = maps.events.next() {
        match decode(&record) {
            Ok(Decoded::Event(event)) => {
                if matches!(&event.detail, EventDetail::TcpConnectFailure(f)
                    if Some(f.dst.port()) == port)
                {
                    refused += 1;
                }
            }
            Ok(Decoded::ListenCall { process, .. }) => {
                if let Some(i) = listeners.iter().position(|&pid| pid == process.pid) {
                    listens[i] += 1;
                }
            }
            _ => {}
        }
    }
    (refused, listens)
}

#[test]
fn failures_arrive_through_a_flood_of_listens_and_exits() {
    // Small enough for the flood to fill its share within a second or two, large enough
    // that other processes' failures on a busy host do not fill the rest meanwhile.
    let Some(OwnProbes {
        mut maps,
        _one,
        _probes,
    }) = own_probes(Some(1 << 19), None)
    else {
        return;
    };
    // What the host wrote since the load is not the test's.
    drain(&mut maps, None, &[]);
    let before = counters(&maps);

    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let flooders = Flooders(vec![
        spawn_flooder(Flood::Relisten, Some(&dir.path().join("flood-1.sock"))),
        spawn_flooder(Flood::Relisten, Some(&dir.path().join("flood-2.sock"))),
        spawn_flooder(Flood::NewListeners, None),
        spawn_flooder(Flood::ForkListeners, None),
        spawn_flooder(Flood::ForkListeners, None),
    ]);
    let relisteners = [flooders.0[0] as u32, flooders.0[1] as u32];

    // The connects are made once the flood holds the ring at its share: the flood's
    // records are being refused for room (dropped), not only for budget.
    let deadline = Instant::now() + FILL_DEADLINE;
    loop {
        let grown = counters(&maps).growth_since(&before);
        if grown.dropped["listen_call"] > 0 {
            break;
        }
        for &pid in &flooders.0 {
            let mut status = 0;
            // SAFETY: a non-blocking wait on our own child.
            let exited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            assert_eq!(
                exited, 0,
                "flooder {pid} ended early (wait status {status:#x})"
            );
        }
        assert!(
            Instant::now() < deadline,
            "the flood did not fill the ring within {FILL_DEADLINE:?}: {grown:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..CONNECTS {
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }
    drop(flooders);

    let (arrived, relistens) = drain(&mut maps, Some(port), &relisteners);
    let grown = counters(&maps).growth_since(&before);
    assert!(
        arrived >= MUST_ARRIVE,
        "only {arrived} of {CONNECTS} refused connects arrived during the flood: {grown:?}"
    );
    // The re-listen loops made one record each, their first listen...
    assert_eq!(
        relistens,
        [1, 1],
        "listen calls reported from the re-listen loops: {grown:?}"
    );
    // ...the loop making new listeners spent its budget...
    assert!(
        grown.throttled["listen_call"] > 0,
        "no listen_call throttled: {grown:?}"
    );
    // ...and the forking flooder's children, each with a budget of its own, were held to
    // the ring's share.
    assert!(
        grown.dropped["listen_call"] > 0,
        "no listen_call dropped: {grown:?}"
    );
    // The failure evidence is never throttled, and none of it was lost.
    assert_eq!(grown.throttled["tcp_connect_failure"], 0, "{grown:?}");
    assert_eq!(grown.dropped["tcp_connect_failure"], 0, "{grown:?}");
}

#[test]
fn exits_with_a_code_are_held_to_the_parents_budget_deaths_by_signal_are_not() {
    // Room for every record of the test in the low-priority share: what is missing was
    // throttled, not lost for room. Without BTF neither the parent nor the exit status is
    // known.
    let Some(OwnProbes {
        mut maps,
        _one,
        _probes,
    }) = own_probes(Some(1 << 20), Some("exits carry no parent to budget by"))
    else {
        return;
    };
    drain(&mut maps, None, &[]);
    let before = counters(&maps);

    // A shell of `nobody`'s, which forks cheaply (this test binary is large): each `(exit
    // 1)` is a child exiting with a code, each perl a listener's owner exiting with code 3
    // (each after a block of exits the budget cannot hold, at least one of them within a
    // window the block spent), each `(exec sh -c 'kill -KILL $$')` a child that dies of a
    // signal.
    const LISTENER: &str = "perl -MSocket -e 'socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die; \
        bind($s, pack_sockaddr_un(\"\\0why502-flood-$$\")) or die; listen($s, 1) or die; exit 3'";
    let block = CODE_EXITS / LISTENER_EXITS;
    let script = format!(
        "for b in $(seq {LISTENER_EXITS}); do \
           i=0; while [ $i -lt {block} ]; do (exit 1); i=$((i+1)); done; {LISTENER}; \
         done; \
         i=0; while [ $i -lt {SIGNAL_DEATHS} ]; do (exec sh -c 'kill -KILL $$'); \
         i=$((i+1)); done"
    );
    let started = Instant::now();
    let mut shell = std::process::Command::new("sh")
        .args(["-c", &script])
        .uid(NOBODY_UID)
        .gid(NOGROUP_GID)
        // sh says "Killed" for each death by a signal.
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run sh");
    let pid = shell.id();
    let status = loop {
        if let Some(status) = shell.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > FILL_DEADLINE {
            let _ = shell.kill();
            let _ = shell.wait();
            panic!("the children took over {FILL_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    assert!(status.success(), "the forking shell failed: {status}");

    let (mut code_exits, mut listener_exits, mut signal_deaths) = (0u64, 0u64, 0u64);
    while let Some(record) = maps.events.next() {
        let Ok(Decoded::Event(event)) = decode(&record) else {
            continue;
        };
        if let EventDetail::ProcessExit(exit) = &event.detail {
            if exit.ppid != Some(pid) {
                continue;
            }
            match (exit.code, exit.signal_number) {
                (Some(1), _) => code_exits += 1,
                (Some(3), _) => listener_exits += 1,
                (_, Some(9)) => signal_deaths += 1,
                other => panic!("an exit the children did not make: {other:?}"),
            }
        }
    }
    let grown = counters(&maps).growth_since(&before);
    // The budget restarts at most once a second: that many windows' worth got through.
    let windows = elapsed.as_secs() + 1;
    let allowed = agent_common::budget::RECORDS_PER_WINDOW * windows;
    assert!(
        (CODE_EXITS as u64) > allowed,
        "the children took {elapsed:?}: too slow to go over the budget"
    );
    assert!(
        code_exits >= agent_common::budget::RECORDS_PER_WINDOW && code_exits <= allowed,
        "{code_exits} exits with a code reported in {elapsed:?} ({windows} budget windows \
         of {}): {grown:?}",
        agent_common::budget::RECORDS_PER_WINDOW
    );
    // Each one not reported is counted.
    assert!(
        grown.throttled["process_exit"] >= CODE_EXITS as u64 - code_exits,
        "{code_exits} of {CODE_EXITS} reported, the rest not all counted: {grown:?}"
    );
    assert_eq!(
        listener_exits, LISTENER_EXITS as u64,
        "listeners' owners exiting with a code spend no share of their parent's budget: \
         {grown:?}"
    );
    assert_eq!(
        signal_deaths, SIGNAL_DEATHS as u64,
        "deaths by a signal are failure evidence, never budgeted: {grown:?}"
    );
}

#[test]
fn only_the_first_listen_of_a_socket_is_reported() {
    let Some(OwnProbes {
        mut maps,
        _one,
        _probes,
    }) = own_probes(None, Some("the socket's state cannot be read at listen(2)"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Two sockets, each listening once as it binds, then re-listened.
    let bound = std::os::unix::net::UnixListener::bind(dir.path().join("a.sock")).unwrap();
    let fresh = std::os::unix::net::UnixListener::bind(dir.path().join("b.sock")).unwrap();
    use std::os::fd::AsRawFd;
    for fd in [bound.as_raw_fd(), fresh.as_raw_fd()] {
        for backlog in [1, 5, 64] {
            // SAFETY: a listening socket of ours.
            assert_eq!(unsafe { libc::listen(fd, backlog) }, 0, "re-listen on {fd}");
        }
    }
    let me = std::process::id();
    let mut reported = std::collections::BTreeMap::<i32, u32>::new();
    while let Some(record) = maps.events.next() {
        if let Ok(Decoded::ListenCall { process, fd, .. }) = decode(&record) {
            if process.pid == me {
                *reported.entry(fd).or_default() += 1;
            }
        }
    }
    assert_eq!(
        reported,
        std::collections::BTreeMap::from([(bound.as_raw_fd(), 1), (fresh.as_raw_fd(), 1)]),
        "listen calls reported per fd (each socket listened once, then three re-listens)"
    );
}

#[test]
fn one_users_exits_do_not_spend_another_users_budget() {
    // The default ring: its low-priority share holds every exec and exit the test makes
    // (each setpriv is two execs of 312-byte records), so a missing one was throttled.
    let Some(OwnProbes {
        mut maps,
        _one,
        _probes,
    }) = own_probes(None, Some("exits carry no parent to budget by"))
    else {
        return;
    };
    drain(&mut maps, None, &[]);
    let before = counters(&maps);

    // One parent (root's perl, which forks cheaply), children of two users: blocks of
    // `nobody`'s exiting with code 2, more than a window's budget, each followed by a few
    // of root's exiting with code 4, which must all be reported (orphans of every user
    // share init as a parent).
    const BLOCKS: u32 = 3;
    const NOBODY_EXITS: u32 = 400;
    const ROOT_EXITS: u32 = 5;
    let script = format!(
        "use POSIX; \
         for my $b (1..{BLOCKS}) {{ \
           for (1..{NOBODY_EXITS}) {{ \
             my $p = fork // die; \
             if (!$p) {{ setgid({NOGROUP_GID}); setuid({NOBODY_UID}) or _exit(9); _exit(2) }} \
             waitpid($p, 0); \
           }} \
           for (1..{ROOT_EXITS}) {{ my $p = fork // die; _exit(4) if !$p; waitpid($p, 0) }} \
         }}"
    );
    let started = Instant::now();
    let mut shell = std::process::Command::new("perl")
        .args(["-e", &script])
        .spawn()
        .expect("run perl");
    let pid = shell.id();
    let status = loop {
        if let Some(status) = shell.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > FILL_DEADLINE {
            let _ = shell.kill();
            let _ = shell.wait();
            panic!("the children took over {FILL_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "perl failed: {status}");

    let (mut nobody_exits, mut root_exits) = (0u64, 0u64);
    while let Some(record) = maps.events.next() {
        let Ok(Decoded::Event(event)) = decode(&record) else {
            continue;
        };
        if let EventDetail::ProcessExit(exit) = &event.detail {
            if exit.ppid == Some(pid) {
                match exit.code {
                    Some(2) => nobody_exits += 1,
                    Some(4) => root_exits += 1,
                    other => panic!("an exit the children did not make: {other:?}"),
                }
            }
        }
    }
    let grown = counters(&maps).growth_since(&before);
    assert_eq!(grown.dropped["process_exit"], 0, "{grown:?}");
    assert!(
        nobody_exits < (BLOCKS * NOBODY_EXITS) as u64,
        "nobody's exits were not throttled ({nobody_exits} reported): {grown:?}"
    );
    assert_eq!(
        root_exits,
        (BLOCKS * ROOT_EXITS) as u64,
        "root's exits spent nobody's budget: {grown:?}"
    );
}
