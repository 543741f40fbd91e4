//! Known proxies, named as such in incidents. A process that serves clients (it, or its
//! parent, listens) and connects upstream is a proxy too (`Knowledge::is_proxy`, and the
//! kernel's marking, `agent_common::proxy`); a known name is what makes one without that.
//! The names are `agent_common::proxy`'s, which the kernel programs match too.

/// The proxy family of a process, from its command name or executable.
pub fn known_proxy(comm: &str, exe: Option<&str>) -> Option<&'static str> {
    let exe_name = exe.and_then(|e| e.rsplit('/').next()).unwrap_or("");
    [comm, exe_name]
        .into_iter()
        .find_map(agent_common::proxy::family)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(known_proxy("nginx", None), Some("nginx"));
        assert_eq!(known_proxy("apache2", None), Some("apache"));
        assert_eq!(
            known_proxy("worker-3", Some("/usr/bin/envoy")),
            Some("envoy")
        );
        assert_eq!(known_proxy("curl", Some("/usr/bin/curl")), None);
    }
}
