//! The local IP addresses of another network namespace, read through a process in it:
//! which pod a connect to `10.244.1.5:8080` reaches, when several pods listen on
//! `0.0.0.0:8080`. An address is local to one namespace of a node (a port is not: every
//! namespace has its own `127.0.0.1`).
//!
//! IPv4 from `/proc/<pid>/net/fib_trie`: a leaf `|-- 10.244.1.5` followed by the line
//! `/32 host LOCAL` is an address of the namespace's interfaces (the kernel's local
//! routes, `fib_trie_seq_show` in net/ipv4/fib_trie.c). IPv6 from
//! `/proc/<pid>/net/if_inet6`: one address per line, 32 hex digits first. Loopback
//! addresses are left out: they say nothing about which namespace an address is in.

use std::{
    collections::BTreeSet,
    io::{self, BufRead, BufReader, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// The most lines read from one file: a pod's tables are a few dozen lines.
const MAX_LINES: usize = 20_000;

/// The namespace's own IPv4 addresses, from its `fib_trie`.
pub fn ipv4_from_fib_trie(table: impl Read) -> io::Result<BTreeSet<IpAddr>> {
    let mut out = BTreeSet::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in BufReader::new(table).lines().take(MAX_LINES) {
        let line = line?;
        let line = line.trim();
        if let Some(ip) = line.strip_prefix("|-- ") {
            leaf = ip.parse().ok();
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(ip) = leaf.filter(|ip| !ip.is_loopback()) {
                out.insert(IpAddr::V4(ip));
            }
        }
    }
    Ok(out)
}

/// The namespace's own IPv6 addresses, from its `if_inet6`.
pub fn ipv6_from_if_inet6(table: impl Read) -> io::Result<BTreeSet<IpAddr>> {
    let mut out = BTreeSet::new();
    for line in BufReader::new(table).lines().take(MAX_LINES) {
        let line = line?;
        let Some(hex) = line.split_whitespace().next() else {
            continue;
        };
        let Ok(bits) = u128::from_str_radix(hex, 16) else {
            continue;
        };
        // Printed as the address's 16 bytes in order (`%pi6`-like, no colons).
        let ip = Ipv6Addr::from(bits);
        if hex.len() == 32 && !ip.is_loopback() {
            out.insert(IpAddr::V6(ip));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod's fib_trie (Linux 6.18): its veth address 10.244.1.5, loopback, broadcasts.
    const FIB_TRIE: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.244.1.0/24 2 0 2
        +-- 10.244.1.0/29 2 0 2
           |-- 10.244.1.0
              /24 link UNICAST
           |-- 10.244.1.5
              /32 host LOCAL
        |-- 10.244.1.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.244.1.5
        /32 host LOCAL
";

    const IF_INET6: &str = "fd000000000000000000000000000002 04 40 00 82     eth0
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
nonsense
";

    #[test]
    fn local_ipv4_addresses_are_the_host_local_leaves() {
        let ips = ipv4_from_fib_trie(FIB_TRIE.as_bytes()).unwrap();
        assert_eq!(
            ips.into_iter().collect::<Vec<_>>(),
            ["10.244.1.5".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn ipv6_addresses_but_loopback() {
        let ips = ipv6_from_if_inet6(IF_INET6.as_bytes()).unwrap();
        assert_eq!(
            ips.into_iter().collect::<Vec<_>>(),
            [
                "fd00::2".parse::<IpAddr>().unwrap(),
                "fe80::fc:ff:fe00:1".parse().unwrap()
            ]
        );
    }

    /// This process's own namespace, through its own procfs: what getifaddrs says, but
    /// loopback.
    #[test]
    fn live_addresses_match_the_interfaces() {
        let v4 =
            ipv4_from_fib_trie(std::fs::File::open("/proc/self/net/fib_trie").unwrap()).unwrap();
        let v6 = ipv6_from_if_inet6(std::fs::File::open("/proc/self/net/if_inet6").unwrap())
            .unwrap_or_default();
        let expected: BTreeSet<IpAddr> = crate::sources::enrich::interfaces::local_ips()
            .unwrap()
            .into_iter()
            .filter(|ip| !ip.is_loopback())
            // getifaddrs lists each IPv6 address once per interface; fib_trie has no v6.
            .collect();
        let got: BTreeSet<IpAddr> = v4.union(&v6).copied().collect();
        assert_eq!(got, expected);
    }
}
