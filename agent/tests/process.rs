//! Kernel integration tests: exits, fatal signals and OOM kills.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{harness, pid_of};
use why502::events::EventDetail;

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

    let signal = h.wait_for(
        &mut events,
        WAIT,
        "signal",
        |e| matches!(&e.detail, EventDetail::Signal(s) if s.target_pid == pid as i32),
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

    let exit = h.wait_for(&mut events, WAIT, "exit", |e| {
        matches!(e.detail, EventDetail::ProcessExit(_)) && pid_of(e) == Some(pid)
    });
    let EventDetail::ProcessExit(exit) = &exit.detail else {
        unreachable!()
    };
    assert_eq!(exit.signal.as_deref(), Some("SIGSEGV"));
    assert_eq!(exit.signal_number, Some(11));
    assert_eq!(exit.code, None);
}

/// A memory cgroup of the test's own (v2 `memory.max` where the memory controller is on
/// the v2 hierarchy, v1 `memory.limit_in_bytes` otherwise), removed on drop.
struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    fn new(limit_bytes: u64) -> Self {
        let name = format!("why502-test-{}", std::process::id());
        let v2_root = Path::new("/sys/fs/cgroup");
        let v2_has_memory = std::fs::read_to_string(v2_root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let (dir, limit_file) = if v2_has_memory {
            (v2_root.join(&name), "memory.max")
        } else {
            (
                Path::new("/sys/fs/cgroup/memory").join(&name),
                "memory.limit_in_bytes",
            )
        };
        std::fs::create_dir_all(&dir).unwrap();
        let cgroup = Self { dir };
        std::fs::write(cgroup.dir.join(limit_file), limit_bytes.to_string()).unwrap();
        if v2_has_memory {
            let _ = std::fs::write(cgroup.dir.join("memory.swap.max"), "0");
        }
        cgroup
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

#[test]
fn oom_kill_in_a_memory_cgroup() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let cgroup = MemoryCgroup::new(32 << 20);
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

    let kill = h.wait_for(
        &mut events,
        WAIT,
        "OOM kill",
        |e| matches!(&e.detail, EventDetail::OomKill(k) if k.victim_pid == pid),
    );
    let EventDetail::OomKill(kill) = &kill.detail else {
        unreachable!()
    };
    assert_eq!(kill.victim_comm, "tail");
    assert!(kill.anon_rss_kb > 16 << 10, "{} KiB", kill.anon_rss_kb);
    let victim = pid;

    let exit = h.wait_for(&mut events, WAIT, "victim's exit", |e| {
        matches!(e.detail, EventDetail::ProcessExit(_)) && pid_of(e) == Some(victim)
    });
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
