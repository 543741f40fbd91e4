//! Kernel integration tests: exits, fatal signals and OOM kills.

mod common;

use std::{process::Command, time::Duration};

use common::{harness, pid_of};
use why502::model::event::EventDetail;
use why502_e2e::cgroup::MemoryCgroup;

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn exit_with_code_3() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let mut child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
    let pid = child.id();
    assert_eq!(child.wait().unwrap().code(), Some(3));
    let exit = h.wait_for(&mut events, WAIT, "exit", |e| {
        matches!(e.detail, EventDetail::ProcessExit(_)) && pid_of(e) == Some(pid)
    });
    let EventDetail::ProcessExit(exit) = &exit.detail else {
        unreachable!()
    };
    assert_eq!(exit.code, Some(3));
    assert_eq!(exit.signal, None);
    assert_eq!(
        exit.ppid,
        Some(std::process::id()),
        "the kernel names the parent"
    );
}

#[test]
fn killed_by_sigsegv() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    let exec = h.wait_for(&mut events, WAIT, "exec", |e| {
        matches!(e.detail, EventDetail::ProcessExec(_)) && pid_of(e) == Some(pid)
    });
    let EventDetail::ProcessExec(exec) = &exec.detail else {
        unreachable!()
    };
    assert!(exec.filename.ends_with("sleep"), "{}", exec.filename);
    assert_eq!(exec.ppid, std::process::id());

    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSEGV) }, 0);
    child.wait().unwrap();

    // The signal and the exit it caused, in whichever order they arrive.
    let [signal, exit] = h.wait_for_each(
        &mut events,
        WAIT,
        [
            (
                "signal",
                &|e| matches!(&e.detail, EventDetail::Signal(s) if s.target_pid == pid as i32),
            ),
            ("exit", &|e| {
                matches!(e.detail, EventDetail::ProcessExit(_)) && pid_of(e) == Some(pid)
            }),
        ],
    );
    let EventDetail::Signal(s) = &signal.detail else {
        unreachable!()
    };
    assert_eq!(s.signal, "SIGSEGV");
    assert_eq!(s.origin, "user");
    assert_eq!(
        pid_of(&signal),
        Some(std::process::id()),
        "the sender is this test"
    );

    let EventDetail::ProcessExit(exit) = &exit.detail else {
        unreachable!()
    };
    assert_eq!(exit.signal.as_deref(), Some("SIGSEGV"));
    assert_eq!(exit.signal_number, Some(11));
    assert_eq!(exit.code, None);
}

#[test]
fn oom_kill_in_a_memory_cgroup() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let cgroup = MemoryCgroup::new("oom", 32 << 20);
    // The shell moves itself into the cgroup, then becomes `tail`, which buffers an endless
    // line from /dev/zero until the cgroup's OOM killer stops it.
    let script = format!(
        "echo $$ > {} && exec tail /dev/zero",
        cgroup.procs().display()
    );
    let mut child = Command::new("sh").args(["-c", &script]).spawn().unwrap();
    let pid = child.id();
    let status = wait_bounded(&mut child, Duration::from_secs(30));
    assert!(!status.success(), "tail should have been killed");

    // The kill and the victim's exit, in whichever order they arrive.
    let [kill, exit] = h.wait_for_each(
        &mut events,
        WAIT,
        [
            (
                "OOM kill",
                &|e| matches!(&e.detail, EventDetail::OomKill(k) if k.victim_pid == pid),
            ),
            ("victim's exit", &|e| {
                matches!(e.detail, EventDetail::ProcessExit(_)) && pid_of(e) == Some(pid)
            }),
        ],
    );
    let EventDetail::OomKill(kill) = &kill.detail else {
        unreachable!()
    };
    assert_eq!(kill.victim_comm, "tail");
    assert!(kill.anon_rss_kb > 16 << 10, "{} KiB", kill.anon_rss_kb);

    let EventDetail::ProcessExit(exit) = &exit.detail else {
        unreachable!()
    };
    assert_eq!(exit.signal.as_deref(), Some("SIGKILL"));
}

/// Waits for `child`, killing it if it outlives `limit`.
fn wait_bounded(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("child {} still running after {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
