//! Growth of the kernel's LRU aggregates between polls. An entry the kernel evicts and
//! recreates starts again from zero, so each poll adds only what grew since the last one
//! (or the whole value of an entry that restarted).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use agent_common::connect::{ConnectKey, LATENCY_BUCKETS};

use crate::{
    model::{event::Endpoint, namespace::NetNs},
    sources::probes::maps::ConnectAggregate,
};

/// Where the connects of `key` went, in the connecting socket's network namespace.
pub fn upstream(key: &ConnectKey) -> Endpoint {
    Endpoint::Tcp(NetNs::from_kernel(key.netns), destination(key))
}

/// Where the connects of `key` went (the address alone).
pub fn destination(key: &ConnectKey) -> SocketAddr {
    let ip = if key.family == agent_common::net::AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(key.daddr))
    } else {
        IpAddr::V4(Ipv4Addr::new(
            key.daddr[0],
            key.daddr[1],
            key.daddr[2],
            key.daddr[3],
        ))
    };
    SocketAddr::new(ip, key.dport)
}

/// What one entry showed at the last poll.
#[derive(Debug, Clone, Copy)]
struct Seen {
    established: u64,
    latency_sum_ns: u64,
    hist: [u64; LATENCY_BUCKETS],
}

/// Growth of one kernel entry since the previous poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Growth {
    pub key: ConnectKey,
    pub established: u64,
    pub latency_sum_ns: u64,
    pub hist: [u64; LATENCY_BUCKETS],
}

#[derive(Debug, Default)]
pub struct KernelDeltas {
    seen: HashMap<ConnectKey, Seen>,
}

impl KernelDeltas {
    /// The growth of every entry in `current`; forgets entries no longer there.
    pub fn advance(&mut self, current: &[ConnectAggregate]) -> Vec<Growth> {
        let mut next = HashMap::with_capacity(current.len());
        let mut growth = Vec::new();
        for agg in current {
            let now = Seen {
                established: agg.established,
                latency_sum_ns: agg.latency_sum_ns,
                hist: agg.latency_hist,
            };
            let before = self.seen.get(&agg.key).copied();
            // A smaller count than before: the entry was evicted and recreated.
            let restarted = before.is_none_or(|b| b.established > now.established);
            let base = if restarted {
                Seen {
                    established: 0,
                    latency_sum_ns: 0,
                    hist: [0; LATENCY_BUCKETS],
                }
            } else {
                before.expect("checked")
            };
            if now.established > base.established {
                let mut hist = [0; LATENCY_BUCKETS];
                for (i, h) in hist.iter_mut().enumerate() {
                    *h = now.hist[i].saturating_sub(base.hist[i]);
                }
                growth.push(Growth {
                    key: agg.key,
                    established: now.established - base.established,
                    latency_sum_ns: now.latency_sum_ns.saturating_sub(base.latency_sum_ns),
                    hist,
                });
            }
            next.insert(agg.key, now);
        }
        self.seen = next;
        growth
    }
}

/// Growth of plain kernel counters that may be evicted and recreated.
#[derive(Debug)]
pub struct CounterDeltas<K> {
    seen: HashMap<K, u64>,
}

impl<K> Default for CounterDeltas<K> {
    fn default() -> Self {
        Self {
            seen: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Copy> CounterDeltas<K> {
    /// `(key, growth)` for every counter that grew; forgets counters no longer there.
    pub fn advance(&mut self, current: &[(K, u64)]) -> Vec<(K, u64)> {
        let mut next = HashMap::with_capacity(current.len());
        let mut growth = Vec::new();
        for &(key, now) in current {
            let before = self.seen.get(&key).copied().unwrap_or(0);
            // Smaller than before: evicted and recreated, all of it is new.
            let grew = if now >= before { now - before } else { now };
            if grew > 0 {
                growth.push((key, grew));
            }
            next.insert(key, now);
        }
        self.seen = next;
        growth
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counter_deltas() {
        let mut d = super::CounterDeltas::default();
        assert_eq!(d.advance(&[(1u32, 3)]), vec![(1, 3)]);
        assert_eq!(d.advance(&[(1, 5)]), vec![(1, 2)]);
        assert_eq!(d.advance(&[(1, 5)]), vec![]);
        assert_eq!(d.advance(&[(1, 1)]), vec![(1, 1)]);
    }

    use super::*;

    fn agg(tgid: u32, established: u64) -> ConnectAggregate {
        let mut hist = [0; LATENCY_BUCKETS];
        hist[3] = established;
        ConnectAggregate {
            key: ConnectKey {
                tgid,
                netns: 0,
                family: 2,
                dport: 9000,
                daddr: [0; 16],
            },
            established,
            latency_sum_ns: established * 10_000,
            retransmits: 0,
            latency_hist: hist,
        }
    }

    #[test]
    fn counts_only_growth_and_survives_eviction() {
        let mut d = KernelDeltas::default();
        let g = d.advance(&[agg(1, 5)]);
        assert_eq!(g[0].established, 5);
        assert_eq!(g[0].hist[3], 5);
        assert!(d.advance(&[agg(1, 5)]).is_empty());
        assert_eq!(d.advance(&[agg(1, 8)])[0].established, 3);
        // Evicted, recreated with 2: two new connects, not minus six.
        assert_eq!(d.advance(&[agg(1, 2)])[0].established, 2);
        // Gone, then back: counted from zero again.
        assert!(d.advance(&[]).is_empty());
        assert_eq!(d.advance(&[agg(1, 4)])[0].established, 4);
    }
}
