//! Well-known proxies, by the name their processes carry: `comm` after exec, or the file
//! name of the executable.
//!
//! The kernel programs mark a process as a proxy (its responses are counted, its upstream
//! connections followed) when it execs under one of these names ([`is_known_comm`]), when
//! a proxy forks it (a process, not a thread), or when it serves clients (it, or its
//! parent, listens on a socket) and an upstream connect of its fails or is reset: the
//! rule `Knowledge::is_proxy` applies in the agent. A process that only connects (a CLI
//! probing a closed port, glibc's nscd probe) is never marked. The agent labels incidents
//! with the proxy's family ([`family`]).

use crate::COMM_LEN;

/// A known proxy name and the family it is reported as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownProxy {
    /// Process name (shorter than [`COMM_LEN`], so a `comm` holds it whole).
    pub name: &'static str,
    /// The family incidents name (`nginx` for OpenResty too, `apache` for `httpd`).
    pub family: &'static str,
}

const fn proxy(name: &'static str, family: &'static str) -> KnownProxy {
    KnownProxy { name, family }
}

/// Every known proxy name.
pub const KNOWN: &[KnownProxy] = &[
    proxy("nginx", "nginx"),
    proxy("openresty", "nginx"),
    proxy("haproxy", "haproxy"),
    proxy("envoy", "envoy"),
    proxy("httpd", "apache"),
    proxy("apache2", "apache"),
    proxy("caddy", "caddy"),
    proxy("traefik", "traefik"),
];

/// Whether the known `name` is what a NUL-padded `comm` holds.
#[inline(always)]
const fn comm_is(comm: &[u8; COMM_LEN], name: &[u8]) -> bool {
    // Names are shorter than COMM_LEN (checked below): the NUL after the name is in bounds.
    if comm[name.len()] != 0 {
        return false;
    }
    let mut i = 0;
    while i < name.len() {
        if comm[i] != name[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The known proxy a NUL-padded `comm` (as `bpf_get_current_comm` returns it) names.
///
/// Usable from the kernel programs: loops bounded by the constant table and name lengths,
/// no slices of runtime length.
#[inline(always)]
pub const fn by_comm(comm: &[u8; COMM_LEN]) -> Option<&'static KnownProxy> {
    let mut i = 0;
    while i < KNOWN.len() {
        if comm_is(comm, KNOWN[i].name.as_bytes()) {
            return Some(&KNOWN[i]);
        }
        i += 1;
    }
    None
}

/// Whether a NUL-padded `comm` is a known proxy's name; see [`by_comm`].
#[inline(always)]
pub const fn is_known_comm(comm: &[u8; COMM_LEN]) -> bool {
    by_comm(comm).is_some()
}

/// The family of a known proxy name: a process's `comm` as text, or an executable's file
/// name (`nginx`, `openresty` → `nginx`; `httpd`, `apache2` → `apache`; …).
pub fn family(name: &str) -> Option<&'static str> {
    KNOWN
        .iter()
        .find(|known| known.name == name)
        .map(|known| known.family)
}

const _: () = {
    let mut i = 0;
    while i < KNOWN.len() {
        let name = KNOWN[i].name.as_bytes();
        assert!(
            !name.is_empty() && name.len() < COMM_LEN,
            "a known proxy name must fit in comm with its NUL"
        );
        let mut j = 0;
        while j < name.len() {
            assert!(name[j] != 0, "a known proxy name has no NUL");
            j += 1;
        }
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    fn comm(name: &[u8]) -> [u8; COMM_LEN] {
        let mut comm = [0u8; COMM_LEN];
        comm[..name.len()].copy_from_slice(name);
        comm
    }

    #[test]
    fn families() {
        assert_eq!(family("nginx"), Some("nginx"));
        assert_eq!(family("openresty"), Some("nginx"));
        assert_eq!(family("haproxy"), Some("haproxy"));
        assert_eq!(family("envoy"), Some("envoy"));
        assert_eq!(family("httpd"), Some("apache"));
        assert_eq!(family("apache2"), Some("apache"));
        assert_eq!(family("caddy"), Some("caddy"));
        assert_eq!(family("traefik"), Some("traefik"));
        assert_eq!(family("curl"), None);
        assert_eq!(family("nginx: worker"), None);
        assert_eq!(family(""), None);
    }

    #[test]
    fn comms() {
        for known in KNOWN {
            assert_eq!(by_comm(&comm(known.name.as_bytes())), Some(known));
            assert!(is_known_comm(&comm(known.name.as_bytes())));
        }
        assert!(!is_known_comm(&comm(b"nginx2")));
        assert!(!is_known_comm(&comm(b"ngin")));
        assert!(!is_known_comm(&comm(b"")));
        assert!(!is_known_comm(&comm(b"curl")));
        // A full comm (no NUL at all) matches nothing.
        assert!(!is_known_comm(&[b'x'; COMM_LEN]));
        assert_eq!(by_comm(&comm(b"apache2")).map(|k| k.family), Some("apache"));
    }

    // The matcher runs at compile time too (it is what the kernel programs call).
    const _: () = {
        let mut comm = [0u8; COMM_LEN];
        comm[0] = b'h';
        comm[1] = b't';
        comm[2] = b't';
        comm[3] = b'p';
        comm[4] = b'd';
        assert!(is_known_comm(&comm));
        comm[5] = b'x';
        assert!(by_comm(&comm).is_none());
    };
}
