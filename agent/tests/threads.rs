//! Kernel integration tests: threads are not processes. A proxy's thread is not marked as
//! a process (with `sched_process_fork` as `tp_btf`; the classic tracepoint cannot tell
//! and marks it until it exits), its exit neither unmarks nor ends its process, and a
//! fatal signal sent to a worker thread is reported against the process (its tgid), which
//! deaths are matched by.

mod common;
mod marking;

use std::{sync::Arc, time::Duration};

use common::{closed_port, harness, pid_of, Harness};
use marking::{ProcessSet, Script};
use tokio::sync::broadcast;
use why502::model::event::{Event, EventDetail, SignalSent};

const WAIT: Duration = Duration::from_secs(5);

/// Python that becomes a proxy the way a generic one does (it listens, an upstream
/// connect fails), then runs `body` (which may use `thread_id()`).
fn proxy_script(body: &str) -> String {
    let refused = closed_port();
    format!(
        "import os, resource, signal, socket, sys, threading
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
listener = socket.socket()
listener.bind(('127.0.0.1', 0))
listener.listen(8)
upstream = socket.socket()
try:
    upstream.connect(('127.0.0.1', {refused}))
except OSError:
    pass
{body}"
    )
}

/// The first event of `pid` among those that `matches`, waited for (bounded), with every
/// event of `pid` before it.
fn events_until(
    h: &Harness,
    events: &mut broadcast::Receiver<Arc<Event>>,
    pid: u32,
    what: &str,
    matches: impl Fn(&Event) -> bool,
) -> Vec<Arc<Event>> {
    let seen = std::cell::RefCell::new(Vec::new());
    let last = h.wait_for(events, WAIT, what, |e| {
        if pid_of(e) != Some(pid) {
            return false;
        }
        if matches(e) {
            return true;
        }
        seen.borrow_mut().push(Arc::new(e.clone()));
        false
    });
    let mut seen = seen.into_inner();
    seen.push(last);
    seen
}

fn classic() -> bool {
    why502_e2e::classic_tracepoints_only()
}

/// Where the kernel has BTF and the run is not classic-only, `probe` is the `tp_btf`
/// program: what the default run tests.
fn assert_tp_btf(h: &Harness, probe: agent_common::config::Probe) {
    use why502::sources::probes::{Attachment, ProbeStatus};
    if !classic() && std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        assert_eq!(
            h.agent.probe_status()[&probe],
            ProbeStatus::Attached(Attachment::TpBtf),
            "{}",
            probe.name()
        );
    }
}

/// A proxy's thread: not in `PROXIES` as a process (where fork is `tp_btf`), not after
/// it exited (either way); its exit leaves the process marked and watched, and is not
/// reported as the process's exit. The process's exit takes it out of both.
#[test]
fn a_proxys_thread_is_no_process() {
    let Some(h) = harness() else { return };
    assert_tp_btf(h, agent_common::config::Probe::SchedProcessFork);
    let (proxies, watched) = (ProcessSet::proxies(), ProcessSet::watched());
    let mut events = h.subscribe();
    let marker = closed_port();
    let mut script = Script::start(&proxy_script(&format!(
        "def work():
    print(threading.get_native_id(), flush=True)
    sys.stdin.readline()
thread = threading.Thread(target=work)
thread.start()
thread.join()
# After the thread's exit: a failure the test waits for.
try:
    socket.create_connection(('127.0.0.1', {marker}))
except OSError:
    pass
signal.pause()
"
    )));
    let pid = script.pid();
    let [tid] = script.numbers()[..] else {
        panic!("expected the thread's id")
    };
    assert_ne!(tid, pid);
    proxies.wait_contains(pid, "the proxy");
    watched.wait_contains(pid, "the proxy (a listener owner)");
    if classic() {
        // The documented fallback: the thread is in until it exits.
        proxies.wait_contains(tid, "the proxy's thread (classic fork tracepoint)");
    } else {
        assert!(
            !proxies.contains(tid),
            "thread {tid} of proxy {pid} is in PROXIES as a process"
        );
    }
    script.send("exit");
    let seen = events_until(
        h,
        &mut events,
        pid,
        "the failure after the thread's exit",
        |e| matches!(&e.detail, EventDetail::TcpConnectFailure(f) if f.dst.port() == marker),
    );
    // Records arrive in the order the kernel wrote them: an exit reported for the
    // thread's would be among these.
    let exits: Vec<_> = seen
        .iter()
        .filter(|e| matches!(e.detail, EventDetail::ProcessExit(_)))
        .collect();
    assert!(
        exits.is_empty(),
        "the thread's exit was reported: {exits:?}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists(),
        "the thread is still there"
    );
    assert!(!proxies.contains(tid), "thread {tid} left in PROXIES");
    assert!(
        proxies.contains(pid),
        "the thread's exit unmarked proxy {pid}"
    );
    assert!(watched.contains(pid), "the thread's exit unwatched {pid}");
    // The process's own exit deletes its entries (plain hashes: a leak would fill them).
    script.kill();
    proxies.wait_absent(pid, "the exited proxy");
    watched.wait_absent(pid, "the exited listener owner");
}

fn signal_of(event: &Event) -> Option<&SignalSent> {
    match &event.detail {
        EventDetail::Signal(s) => Some(s),
        _ => None,
    }
}

/// The death of `pid` by `signal` (its number), waited for (bounded).
fn wait_death(h: &Harness, events: &mut broadcast::Receiver<Arc<Event>>, pid: u32, signal: i32) {
    let death = h.wait_for(events, WAIT, "the process's death", |e| {
        pid_of(e) == Some(pid) && matches!(e.detail, EventDetail::ProcessExit(_))
    });
    let EventDetail::ProcessExit(exit) = &death.detail else {
        unreachable!()
    };
    assert_eq!(exit.signal_number, Some(signal), "{exit:?}");
}

/// SIGSEGV sent by another process to a worker thread (`tgkill(2)`) is reported against
/// the thread's process, the thread kept. The thread blocks it until the test has seen
/// the signal: then it dies of it.
#[test]
fn a_signal_to_a_worker_thread_names_its_process() {
    let Some(h) = harness() else { return };
    assert_tp_btf(h, agent_common::config::Probe::SignalGenerate);
    let mut events = h.subscribe();
    let mut script = Script::start(&proxy_script(
        "def work():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGSEGV})
    print(threading.get_native_id(), flush=True)
    sys.stdin.readline()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGSEGV})
thread = threading.Thread(target=work)
thread.start()
thread.join()
",
    ));
    let pid = script.pid();
    let [tid] = script.numbers()[..] else {
        panic!("expected the thread's id")
    };
    assert_ne!(tid, pid);
    // SAFETY: tgkill(2) on the script's own thread.
    let sent = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGSEGV) };
    assert_eq!(sent, 0, "tgkill: {}", std::io::Error::last_os_error());
    let me = std::process::id();
    let event = h.wait_for(&mut events, WAIT, "the SIGSEGV sent", |e| {
        // This process sends no other SIGSEGV aimed at a thread.
        pid_of(e) == Some(me)
            && signal_of(e).is_some_and(|s| s.signal_number == libc::SIGSEGV && !s.group)
    });
    let signal = signal_of(&event).unwrap();
    assert_eq!(
        (signal.target_pid, signal.target_tid),
        (pid as i32, Some(tid as i32)),
        "{signal:?}"
    );
    script.send("die");
    wait_death(h, &mut events, pid, libc::SIGSEGV);
}

/// A worker thread that aborts (abort(3): SIGABRT to itself) names its process too, on
/// either tracepoint: the target is the running task.
#[test]
fn a_worker_thread_aborting_names_its_process() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let script = Script::start(&proxy_script(
        "def work():
    print(threading.get_native_id(), flush=True)
    os.abort()
thread = threading.Thread(target=work)
thread.start()
thread.join()
",
    ));
    let pid = script.pid();
    let [tid] = script.numbers()[..] else {
        panic!("expected the thread's id")
    };
    let event = h.wait_for(&mut events, WAIT, "the SIGABRT raised", |e| {
        pid_of(e) == Some(pid) && signal_of(e).is_some_and(|s| s.signal_number == libc::SIGABRT)
    });
    let signal = signal_of(&event).unwrap();
    assert_eq!(
        (signal.target_pid, signal.target_tid),
        (pid as i32, Some(tid as i32)),
        "{signal:?}"
    );
    wait_death(h, &mut events, pid, libc::SIGABRT);
}
