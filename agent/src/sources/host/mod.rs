//! Host state that explains 502s without being an event: memory pressure, a process's
//! memory cgroup against its limit, listen queue overflow counters and the accept queues
//! of TCP listeners. Sampled, not traced.
//!
//! Minimum kernels, per part (each missing part reads as empty, never as a crash):
//! - [`psi`]: Linux 4.20 with `CONFIG_PSI` (`/proc/pressure/memory`, cgroup v2
//!   `memory.pressure`); <https://docs.kernel.org/accounting/psi.html>
//! - [`cgroup_memory`]: cgroup v2 (4.5) or the v1 memory controller;
//!   <https://docs.kernel.org/admin-guide/cgroup-v2.html>
//! - [`netstat`]: `/proc/net/netstat` `TcpExt`, any supported kernel;
//!   <https://docs.kernel.org/networking/snmp_counter.html>
//! - [`sock_diag`]: NETLINK_SOCK_DIAG `inet_diag_req_v2` for TCP (3.3, `CONFIG_INET_DIAG`);
//!   <https://man7.org/linux/man-pages/man7/sock_diag.7.html>
//! - [`namespaces`]: other network namespaces' `/proc/<pid>/net/{tcp,tcp6,netstat}`
//!   ([`proc_net`]), any kernel; <https://docs.kernel.org/filesystems/proc.html>
//!
//! sock_diag and `/proc/net/netstat` answer for the agent's own network namespace; the
//! namespaces of pods and containers are read through a process in each.

pub mod addresses;
pub mod cgroup_memory;
pub mod edges;
pub mod namespaces;
pub mod netstat;
pub mod proc_net;
pub mod psi;
pub mod sample;
pub mod sampling;
pub mod sock_diag;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::model::namespace::NetNs;

/// One host-wide reading.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HostSample {
    pub memory_pressure: Option<psi::Pressure>,
    /// The agent's own network namespace's counters (the host's, outside containers).
    pub listen: Option<netstat::ListenStats>,
    /// The agent's own network namespace's listeners, with their backlogs (sock_diag).
    pub queues: Vec<sock_diag::ListenQueue>,
    /// The other network namespaces read this round.
    pub namespaces: Vec<namespaces::NamespaceSample>,
    /// Other namespaces with a known listener left out of this round: over
    /// [`namespaces::MAX_NAMESPACES`], or none of their processes left to read through.
    pub namespaces_skipped: usize,
}

/// Reads everything host-wide, and the other network namespaces in `others` (each with
/// processes in it); each part that fails is logged once at debug and left empty.
/// `skipped` namespaces were left out before the reading.
pub fn sample(others: &[(NetNs, &[u32])], skipped: usize) -> HostSample {
    let namespaces: Vec<_> = others
        .iter()
        .filter_map(|&(netns, pids)| namespaces::read(netns, pids))
        .collect();
    let namespaces_skipped = skipped + (others.len() - namespaces.len());
    static PSI_FAILED: AtomicBool = AtomicBool::new(false);
    static NETSTAT_FAILED: AtomicBool = AtomicBool::new(false);
    static SOCK_DIAG_FAILED: AtomicBool = AtomicBool::new(false);
    HostSample {
        memory_pressure: psi::read_host_memory()
            .map_err(|e| log_failure(&PSI_FAILED, "memory pressure", &e))
            .ok()
            .flatten(),
        listen: netstat::read()
            .map_err(|e| log_failure(&NETSTAT_FAILED, "listen counters", &e))
            .ok(),
        queues: sock_diag::listen_queues()
            .map_err(|e| log_failure(&SOCK_DIAG_FAILED, "listen queues", &e))
            .unwrap_or_default(),
        namespaces,
        namespaces_skipped,
    }
}

/// Sampling repeats every few seconds and a failure (no permission, a module missing)
/// usually persists, so only the first one of each part reaches the debug log.
fn log_failure(logged: &AtomicBool, part: &str, error: &dyn std::error::Error) {
    let level = if logged.swap(true, Ordering::Relaxed) {
        log::Level::Trace
    } else {
        log::Level::Debug
    };
    log::log!(
        level,
        "host sample: no {part}: {}",
        crate::error_chain(error)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_sample_serializes() {
        let me = [std::process::id()];
        let gone = NetNs(NetNs::own().0.wrapping_add(1));
        let s = sample(&[(NetNs::own(), &me), (gone, &me)], 2);
        assert!(s.listen.is_some(), "/proc/net/netstat is always there");
        assert_eq!(s.namespaces.len(), 1, "the namespace this process is in");
        assert_eq!(s.namespaces[0].netns, NetNs::own());
        assert_eq!(s.namespaces_skipped, 3, "2 left out, 1 not readable");
        let json = serde_json::to_value(&s).unwrap();
        assert!(json.get("memory_pressure").is_some());
        assert!(json["queues"].is_array());
        assert_eq!(json["namespaces"][0]["netns"], NetNs::own().0);
    }
}
