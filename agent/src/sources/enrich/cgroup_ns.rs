//! The host's cgroup namespace, for reading other processes' cgroup paths as the host has
//! them.
//!
//! `/proc/<pid>/cgroup` shows a path relative to the root of the *reading* thread's cgroup
//! namespace. A DaemonSet pod has one of its own (containerd and CRI-O give every
//! container one on cgroup v2), so there the other processes' paths read
//! `/../../kubepods.slice/…` and the host's services `/../../../system.slice/nginx.service`.
//! [`super::cgroup`] still parses those, but the QoS parent of a cgroupfs pod and the
//! cgroup directory itself (memory limits, pressure, the cgroup id) are lost: so at
//! start-up the agent enters the host's namespace, that of PID 1 (the node's init, with
//! `hostPID`). A systemd unit already runs in it and has nothing to do.
//!
//! `setns(2)` changes the calling thread only; threads started afterwards inherit it. It
//! is therefore called on the main thread before the async runtime and the enrichment
//! thread exist, and refused when the process already has other threads.

use std::{fs, os::fd::AsRawFd, os::unix::fs::MetadataExt};

/// What [`enter_host`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The agent already shares PID 1's cgroup namespace (a systemd unit, a plain root
    /// shell), or the kernel has no cgroup namespaces.
    AlreadyHost,
    /// PID 1 is not above the agent's namespace (a pod without `hostPID`: PID 1 is the
    /// pod's own): there is no host namespace to enter.
    NoHostInit,
    /// The agent moved into PID 1's cgroup namespace.
    Entered,
    /// It could not (no `CAP_SYS_ADMIN`, other threads already running): paths are read
    /// relative to the agent's own cgroup.
    Failed(String),
}

/// A namespace file's identity: its device and inode (what `readlink` shows as `cgroup:[N]`).
fn namespace_of(pid: &str) -> Option<(u64, u64)> {
    let meta = fs::metadata(format!("/proc/{pid}/ns/cgroup")).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Whether PID 1's cgroup path, as this thread's namespace shows it, lies outside that
/// namespace (`0::/..` or `0::/../init.scope`): then PID 1 is the host's init, above us.
fn init_is_above(proc_1_cgroup: &str) -> bool {
    proc_1_cgroup.lines().any(|line| {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        path == "/.." || path.starts_with("/../")
    })
}

fn threads() -> usize {
    fs::read_dir("/proc/self/task").map_or(1, |dir| dir.count())
}

/// Enters PID 1's cgroup namespace when it differs from the agent's and PID 1 is above
/// it. Call from the main thread before any other thread starts.
pub fn enter_host() -> Outcome {
    enter_namespace_of(1)
}

/// [`enter_host`] with another process standing for the host's init (`pid`; tests).
pub fn enter_namespace_of(pid: u32) -> Outcome {
    let target = pid.to_string();
    let (Some(own), Some(init)) = (namespace_of("self"), namespace_of(&target)) else {
        return Outcome::AlreadyHost;
    };
    if own == init {
        return Outcome::AlreadyHost;
    }
    let above = fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| init_is_above(&c));
    if !above {
        return Outcome::NoHostInit;
    }
    let running = threads();
    if running > 1 {
        return Outcome::Failed(format!(
            "{running} threads already run (setns changes only the caller's)"
        ));
    }
    let file = match fs::File::open(format!("/proc/{pid}/ns/cgroup")) {
        Ok(file) => file,
        Err(e) => return Outcome::Failed(format!("/proc/{pid}/ns/cgroup: {e}")),
    };
    // SAFETY: a valid open descriptor of a namespace file, and a namespace type flag.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWCGROUP) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Outcome::Failed(format!(
            "setns(CLONE_NEWCGROUP): {err} (needs CAP_SYS_ADMIN)"
        ));
    }
    Outcome::Entered
}

/// [`enter_host`], said in the log.
pub fn enter_host_and_log() -> Outcome {
    let outcome = enter_host();
    match &outcome {
        Outcome::AlreadyHost => log::debug!("cgroup namespace: the host's"),
        Outcome::NoHostInit => log::warn!(
            "the agent has a cgroup namespace of its own and PID 1 is not the host's init \
             (no hostPID?): other processes' cgroup paths are read relative to the agent's"
        ),
        Outcome::Entered => log::info!(
            "entered the host's cgroup namespace (PID 1's): processes' cgroup paths, units, \
             containers and pods are read as the host has them"
        ),
        Outcome::Failed(why) => log::warn!(
            "cannot enter the host's cgroup namespace ({why}): other processes' cgroup paths \
             are read relative to the agent's own cgroup (/../..), which loses a cgroupfs \
             pod's QoS class and the cgroups' memory readings"
        ),
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_above_the_namespace_is_told_from_init_inside_it() {
        assert!(init_is_above("0::/..\n"));
        assert!(init_is_above(
            "1:name=systemd:/../../init.scope\n0::/../../init.scope\n"
        ));
        assert!(!init_is_above("0::/\n"));
        assert!(!init_is_above("0::/init.scope\n"));
        // A cgroup that merely starts with two dots is inside.
        assert!(!init_is_above("0::/..hidden/x\n"));
    }
}
