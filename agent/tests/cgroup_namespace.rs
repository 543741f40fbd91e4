//! Kernel integration test: an agent started in a cgroup namespace of its own (a
//! DaemonSet pod's) enters the host's at start-up, after which other processes' cgroup
//! paths read as the host has them, not relative to the agent's cgroup (`/..`).
//!
//! The "pod" is a forked child of the test moved into a cgroup v2 directory of the test's
//! own and unshared into a new cgroup namespace there. The test process itself, left in
//! the host's namespace, stands for the node's init: the sandbox this suite runs in may
//! not let anyone read PID 1's namespace links.

use std::{fs, path::PathBuf};

use why502::sources::enrich::cgroup_ns::{enter_namespace_of, Outcome};

/// Where this host mounts cgroup v2: hybrid hosts under `unified`, pure v2 at the top.
fn v2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|root| root.join("cgroup.procs").exists() && root.join("cgroup.controllers").exists())
}

/// A cgroup of the test's own, removed when dropped (after its process has exited).
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// `pid`'s v2 cgroup path as the calling thread's cgroup namespace shows it.
fn path_of(pid: u32) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("?")
        .to_string()
}

/// What the child saw, as its exit code: 10 + the step that failed, 0 when all held.
fn child(cgroup: &std::path::Path, host: u32) -> i32 {
    if fs::write(cgroup.join("cgroup.procs"), "0").is_err() {
        return 11;
    }
    // SAFETY: unshare of the calling process's own cgroup namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
        return 12;
    }
    // Inside: the host's init is above the namespace's root.
    if !path_of(host).starts_with("/..") {
        return 13;
    }
    if enter_namespace_of(host) != Outcome::Entered {
        return 14;
    }
    let path = path_of(host);
    if path.contains("..") || !path.starts_with('/') {
        return 15;
    }
    // Entered once, there is nothing left to enter.
    if enter_namespace_of(host) != Outcome::AlreadyHost {
        return 16;
    }
    0
}

#[test]
fn an_agent_in_its_own_cgroup_namespace_enters_the_hosts() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let Some(root) = v2_root() else {
        eprintln!("skipped: no cgroup v2 hierarchy");
        return;
    };
    let dir = root.join(format!("why502-test-cgns-{}", std::process::id()));
    fs::create_dir(&dir).expect("create the test's cgroup");
    let cgroup = TestCgroup(dir);

    let host = std::process::id();
    // SAFETY: the child only makes syscalls and small allocations (glibc's malloc is
    // fork-safe) before _exit; it never returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = child(&cgroup.0, host);
        // SAFETY: ends the forked child without running the harness's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(libc::WIFEXITED(status), "child died: status {status}");
    let code = libc::WEXITSTATUS(status);
    let steps = [
        "",
        "move into the test's cgroup",
        "unshare(CLONE_NEWCGROUP)",
        "see PID 1 above the new namespace (/..)",
        "enter the host's namespace",
        "read the host process's path without /.. afterwards",
        "find nothing left to enter",
    ];
    assert_eq!(
        code,
        0,
        "the child failed to {}",
        steps.get((code - 10).max(0) as usize).unwrap_or(&"?")
    );
    // The test's own process never left the host's namespace.
    assert_eq!(enter_namespace_of(host), Outcome::AlreadyHost);
}
