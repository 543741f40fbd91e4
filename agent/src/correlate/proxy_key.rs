//! Who a proxy is, for keying its flows and incidents: what a local user cannot forge
//! about it (its cgroup, its uid) rather than what it calls itself.

use crate::{model::incident::ProcessSummary, sources::enrich::cgroup};

/// Who a proxy is, as far as a local user cannot forge it: names are anyone's to choose
/// (`prctl(PR_SET_NAME)`, `systemd-run --user --unit=nginx`), cgroups outside the
/// subtrees systemd delegates are root's, and uids are the kernel's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProxyKey {
    /// A service of the host's systemd (`/system.slice/nginx.service`), by its cgroup, or
    /// by its unit when the cgroup is not known: only root starts processes there, so
    /// every process in it is that service, whatever user it runs as. nginx's master runs
    /// as root and its workers as www-data: one proxy, so no uid here.
    SystemService(String),
    /// Anywhere else: a user manager's units (`user@1000.service/…`, which only uid 1000
    /// and root can start processes in), login sessions (a user's processes next to what
    /// they ran with sudo), containers' scopes, the root cgroup, or nothing known. Any
    /// user may run a process of any name there, so its uid and name are part of who it
    /// is, next to its unit's cgroup (else its cgroup, else its unit).
    Process {
        cgroup: Option<String>,
        uid: Option<u32>,
        comm: String,
    },
}

impl ProxyKey {
    pub fn of(proxy: &ProcessSummary) -> Self {
        // The unit's cgroup (all of the unit's processes share it), else the cgroup, else
        // the unit's name.
        let place = match &proxy.cgroup {
            Some(path) => Some(cgroup::placement(path).unit_cgroup.unwrap_or(path)),
            None => proxy.unit.as_deref(),
        };
        if cgroup::in_system_service(proxy) {
            return ProxyKey::SystemService(place.unwrap_or_default().to_string());
        }
        ProxyKey::Process {
            cgroup: place.map(String::from),
            uid: proxy.uid,
            comm: proxy.comm.clone(),
        }
    }
}
