//! Linux namespaces, by inode number (`net:[4026531840]` in `readlink /proc/<pid>/ns/net`,
//! `ns.inum` in the kernel): on a node of containers many network namespaces hold the same
//! `0.0.0.0:8080`, and many mount namespaces the same `/run/app.sock`, so endpoints are only
//! the same when their namespaces are.

use std::{fmt, sync::OnceLock};

/// A network namespace's inode number; 0 when the kernel could not say (no BTF).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NetNs(pub u32);

/// A mount namespace's inode number (unix socket paths resolve in it); 0 when not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MntNs(pub u32);

/// The agent's own namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Own {
    pub net: NetNs,
    pub mnt: MntNs,
}

/// The agent's own namespaces, read once from `/proc/self/ns` (a process does not change
/// them behind the agent's back; 0 where procfs could not tell).
pub fn own() -> Own {
    static OWN: OnceLock<Own> = OnceLock::new();
    *OWN.get_or_init(|| Own {
        net: NetNs(inode_of("/proc/self/ns/net").unwrap_or(0)),
        mnt: MntNs(inode_of("/proc/self/ns/mnt").unwrap_or(0)),
    })
}

/// The namespace inode a `/proc/<pid>/ns/<kind>` link names (`net:[4026531840]`).
pub fn inode_of(link: &str) -> Option<u32> {
    let target = std::fs::read_link(link).ok()?;
    parse_link(target.to_str()?)
}

/// `net:[4026531840]` → 4026531840.
pub fn parse_link(target: &str) -> Option<u32> {
    let (_, rest) = target.split_once(":[")?;
    rest.strip_suffix(']')?.parse().ok()
}

impl NetNs {
    /// The namespace a kernel record names: 0 (a kernel without BTF cannot read it) is
    /// taken for the agent's own, so that such hosts key everything as before.
    pub fn from_kernel(inum: u32) -> Self {
        if inum == 0 {
            own().net
        } else {
            NetNs(inum)
        }
    }

    /// The agent's own network namespace.
    pub fn own() -> Self {
        own().net
    }

    /// Printed without its number: the agent's own, or not known.
    pub fn is_own(self) -> bool {
        self.0 == 0 || self == own().net
    }
}

impl MntNs {
    /// As [`NetNs::from_kernel`], for mount namespaces.
    pub fn from_kernel(inum: u32) -> Self {
        if inum == 0 {
            own().mnt
        } else {
            MntNs(inum)
        }
    }

    /// The agent's own mount namespace.
    pub fn own() -> Self {
        own().mnt
    }

    pub fn is_own(self) -> bool {
        self.0 == 0 || self == own().mnt
    }
}

impl fmt::Display for NetNs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "netns {}", self.0)
    }
}

impl fmt::Display for MntNs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mntns {}", self.0)
    }
}

/// Serialized as the number, for events' `netns` fields.
impl serde::Serialize for NetNs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl serde::Serialize for MntNs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_parse() {
        assert_eq!(parse_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_link("mnt:[4026531841]"), Some(4026531841));
        assert_eq!(parse_link("net:4026531840"), None);
        assert_eq!(parse_link("net:[x]"), None);
    }

    #[test]
    fn own_namespaces_are_read() {
        let own = own();
        assert_eq!(Some(own.net.0), inode_of("/proc/self/ns/net"));
        assert_ne!(own.net.0, 0);
        assert_ne!(own.mnt.0, 0);
        assert!(own.net.is_own() && NetNs(0).is_own());
        assert!(!NetNs(own.net.0.wrapping_add(1)).is_own());
        assert_eq!(NetNs::from_kernel(0), own.net);
        assert_eq!(NetNs::from_kernel(7), NetNs(7));
    }
}
