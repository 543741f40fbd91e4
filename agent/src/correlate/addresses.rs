//! Which network namespace each IP address of the node is local to: a pod's veth address
//! is in that pod's namespace and no other (a node gives each address to one namespace),
//! so a connect from one namespace to another pod's IP reaches the listener there.
//! Loopback and the unspecified addresses are every namespace's and are never recorded.
//!
//! Learned from the host sampler's reading of each namespace (its interfaces, replacing
//! what was known of it), from listeners bound to one address, and from the local
//! address of connecting sockets.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use crate::model::namespace::NetNs;

/// Addresses remembered; a node of pods has a few per pod.
const CAPACITY: usize = 65_536;

#[derive(Debug, Default)]
pub struct NamespaceAddresses {
    by_ip: HashMap<IpAddr, NetNs>,
    by_ns: HashMap<NetNs, BTreeSet<IpAddr>>,
    /// Addresses not recorded because the map was full.
    refused: u64,
}

/// Whether `ip` can belong to a single namespace.
fn is_specific(ip: IpAddr) -> bool {
    !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast()
}

impl NamespaceAddresses {
    /// The namespace `ip` is local to, if known.
    pub fn namespace_of(&self, ip: IpAddr) -> Option<NetNs> {
        self.by_ip.get(&ip).copied()
    }

    /// `ip` is local to `ns` (it moved there if it was known elsewhere: an address freed
    /// by a deleted pod is given to the next one).
    pub fn learn(&mut self, ns: NetNs, ip: IpAddr) {
        if !is_specific(ip) || self.by_ip.get(&ip) == Some(&ns) {
            return;
        }
        if !self.by_ip.contains_key(&ip) && self.by_ip.len() >= CAPACITY {
            self.refused += 1;
            return;
        }
        if let Some(previous) = self.by_ip.insert(ip, ns) {
            self.forget_in(previous, ip);
        }
        self.by_ns.entry(ns).or_default().insert(ip);
    }

    /// Everything `ns` has now, as read from it: addresses it no longer has are forgotten.
    pub fn replace(&mut self, ns: NetNs, ips: impl IntoIterator<Item = IpAddr>) {
        let now: BTreeSet<IpAddr> = ips.into_iter().filter(|ip| is_specific(*ip)).collect();
        let before = self.by_ns.get(&ns).cloned().unwrap_or_default();
        for gone in before.difference(&now) {
            if self.by_ip.get(gone) == Some(&ns) {
                self.by_ip.remove(gone);
            }
            self.forget_in(ns, *gone);
        }
        for ip in now {
            self.learn(ns, ip);
        }
    }

    #[cfg(test)]
    pub fn refused(&self) -> u64 {
        self.refused
    }

    fn forget_in(&mut self, ns: NetNs, ip: IpAddr) {
        if let Some(set) = self.by_ns.get_mut(&ns) {
            set.remove(&ip);
            if set.is_empty() {
                self.by_ns.remove(&ns);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_is_in_one_namespace() {
        let mut map = NamespaceAddresses::default();
        let (a, b) = (NetNs(1), NetNs(2));
        map.replace(
            a,
            [ip("10.0.0.1"), ip("127.0.0.1"), ip("::1"), ip("0.0.0.0")],
        );
        map.learn(b, ip("10.0.0.2"));
        assert_eq!(map.namespace_of(ip("10.0.0.1")), Some(a));
        assert_eq!(map.namespace_of(ip("10.0.0.2")), Some(b));
        assert_eq!(map.namespace_of(ip("127.0.0.1")), None, "everyone's");
        // A deleted pod's address given to a new one moves with it.
        map.learn(NetNs(3), ip("10.0.0.2"));
        assert_eq!(map.namespace_of(ip("10.0.0.2")), Some(NetNs(3)));
        assert!(!map.by_ns.contains_key(&b));
        // A namespace read again without an address loses it.
        map.replace(a, [ip("10.0.0.9")]);
        assert_eq!(map.namespace_of(ip("10.0.0.1")), None);
        assert_eq!(map.namespace_of(ip("10.0.0.9")), Some(a));
    }

    #[test]
    fn bounded() {
        let mut map = NamespaceAddresses::default();
        for n in 0..(CAPACITY as u32 + 10) {
            map.learn(NetNs(n % 7), IpAddr::from((0x0a00_0000 + n).to_be_bytes()));
        }
        assert_eq!(map.by_ip.len(), CAPACITY);
        assert_eq!(map.refused(), 10);
    }
}
