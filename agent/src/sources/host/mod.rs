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

pub mod cgroup_memory;
pub mod netstat;
pub mod psi;
pub mod sampling;
pub mod sock_diag;

use std::sync::atomic::{AtomicBool, Ordering};

/// One host-wide reading.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HostSample {
    pub memory_pressure: Option<psi::Pressure>,
    pub listen: Option<netstat::ListenStats>,
    pub queues: Vec<sock_diag::ListenQueue>,
}

/// Reads everything host-wide; each part that fails is logged once at debug and left empty.
pub fn sample() -> HostSample {
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
        let s = sample();
        assert!(s.listen.is_some(), "/proc/net/netstat is always there");
        let json = serde_json::to_value(&s).unwrap();
        assert!(json.get("memory_pressure").is_some());
        assert!(json["queues"].is_array());
    }
}
