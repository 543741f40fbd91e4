//! Which events get a real destination: the failures of TCP connections (a failed
//! handshake, a reset received, an upstream end without an answer), each once per
//! connection, never a packet (SYN retransmissions are not asked about: the failure that
//! ends them is). A `connect(2)` error carries no source port, so it cannot be asked
//! about; it takes the answer for the same process's failed handshake to the same
//! address in the second before, which is what a non-blocking connect's error asked
//! again is.

use std::{net::SocketAddr, num::NonZeroUsize};

use lru::LruCache;

use super::NatResolver;
use crate::model::{
    event::{Endpoint, Event, EventDetail},
    namespace::NetNs,
};

/// How long a handshake's answer stands for the `connect(2)` error that follows it.
const SYSCALL_FOLLOW_NS: u64 = 1_000_000_000;
/// Processes' latest answers kept for them (one per process and address).
const RECENT_ENTRIES: usize = 1024;

/// The resolver, and the latest answers by (process, namespace, address).
pub struct Annotator {
    resolver: NatResolver,
    recent: LruCache<(u32, NetNs, SocketAddr), (u64, Option<SocketAddr>)>,
}

impl Annotator {
    pub fn new(resolver: NatResolver) -> Self {
        Self {
            resolver,
            recent: LruCache::new(NonZeroUsize::new(RECENT_ENTRIES).expect("non-zero")),
        }
    }

    /// Sets the event's `nat_destination` where it is a failure conntrack may know of.
    pub fn annotate(&mut self, event: &mut Event) {
        let pid = event.process.as_ref().map_or(0, |p| p.pid);
        let now = event.mono_ns;
        let (src, dst, netns, slot) = match &mut event.detail {
            EventDetail::TcpConnectFailure(f) => (f.src, f.dst, f.netns, &mut f.nat_destination),
            EventDetail::TcpResetReceived(r) => (r.src, r.dst, r.netns, &mut r.nat_destination),
            EventDetail::UpstreamEnd(e) => (e.src, e.dst, e.netns, &mut e.nat_destination),
            EventDetail::ConnectSyscallError(e) => {
                if let Endpoint::Tcp(netns, dst) = e.dst {
                    e.nat_destination = self
                        .recent
                        .get(&(pid, netns, dst))
                        .filter(|(at, _)| now.saturating_sub(*at) < SYSCALL_FOLLOW_NS)
                        .and_then(|(_, real)| *real)
                        .map(host_endpoint);
                }
                return;
            }
            _ => return,
        };
        if !crosses_the_host(netns, dst) {
            return;
        }
        let real = self.resolver.real_destination(src, dst, now);
        *slot = real.map(host_endpoint);
        if matches!(event.detail, EventDetail::TcpConnectFailure(_)) {
            self.recent.put((pid, netns, dst), (now, real));
        }
    }
}

/// Conntrack's addresses are the agent's namespace's (the table asked is its own).
fn host_endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::Tcp(NetNs::own(), addr)
}

/// Whether the connection's packets can have passed the agent's namespace: not a
/// loopback connection inside another namespace (it never leaves it, and the same
/// 127.0.0.1 tuple in the host's table would be another connection).
fn crosses_the_host(netns: NetNs, dst: SocketAddr) -> bool {
    netns.is_own() || !dst.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::{
        model::event::{ConnectFailure, ConnectSyscallError, Errno, ProcessRef},
        sources::conntrack::{
            netlink::{ConntrackError, Entry, OriginalTuple},
            resolver::{ConntrackStats, Lookup},
        },
    };

    /// Every tuple is DNAT'd to POD.
    struct AlwaysPod;

    const POD: &str = "10.244.1.5:8080";

    impl Lookup for AlwaysPod {
        fn get(&mut self, t: &OriginalTuple) -> Result<Option<Entry>, ConntrackError> {
            Ok(Some(Entry {
                reply_src: POD.parse().unwrap(),
                reply_dst: t.src,
                dst_nat: true,
                tcp_state: None,
            }))
        }

        fn entries_to(
            &mut self,
            _: std::net::IpAddr,
            _: SocketAddr,
        ) -> Result<Vec<Entry>, ConntrackError> {
            Ok(Vec::new())
        }
    }

    fn annotator() -> (Annotator, Arc<ConntrackStats>) {
        let stats = Arc::new(ConntrackStats::default());
        let resolver = NatResolver::with_lookup(Some(Box::new(AlwaysPod)), 100, stats.clone());
        (Annotator::new(resolver), stats)
    }

    fn event(mono_ns: u64, detail: EventDetail) -> Event {
        Event {
            time: std::time::SystemTime::now(),
            mono_ns,
            process: Some(ProcessRef {
                pid: 42,
                tid: 42,
                comm: "nginx".into(),
                thread: None,
                cgroup_id: 0,
                info: None,
            }),
            detail,
        }
    }

    fn failure(netns: NetNs, dst: &str) -> EventDetail {
        EventDetail::TcpConnectFailure(ConnectFailure {
            src: "10.244.0.7:40000".parse().unwrap(),
            dst: dst.parse().unwrap(),
            netns,
            nat_destination: None,
            errno: Errno(libc::ECONNREFUSED),
            errno_source: "sk_err",
            duration: Duration::ZERO,
            syn_retransmits: 0,
        })
    }

    fn nat_of(event: &Event) -> Option<String> {
        match &event.detail {
            EventDetail::TcpConnectFailure(f) => f.nat_destination.as_ref(),
            EventDetail::ConnectSyscallError(e) => e.nat_destination.as_ref(),
            _ => None,
        }
        .map(ToString::to_string)
    }

    #[test]
    fn a_failed_handshake_gets_the_pod_and_the_syscall_error_after_it_too() {
        let (mut a, _) = annotator();
        let mut e = event(1_000, failure(NetNs(4026532398), "10.96.0.10:80"));
        a.annotate(&mut e);
        // In the agent's namespace: printed as a plain address.
        assert_eq!(nat_of(&e).as_deref(), Some(POD));

        let syscall = |mono| {
            event(
                mono,
                EventDetail::ConnectSyscallError(ConnectSyscallError {
                    dst: Endpoint::Tcp(NetNs(4026532398), "10.96.0.10:80".parse().unwrap()),
                    nat_destination: None,
                    errno: Errno(libc::ECONNREFUSED),
                    fd: 3,
                    duration: Duration::ZERO,
                }),
            )
        };
        let mut soon = syscall(2_000);
        a.annotate(&mut soon);
        assert_eq!(nat_of(&soon).as_deref(), Some(POD));
        // Much later it is another connection, of which nothing is known.
        let mut late = syscall(1_000 + SYSCALL_FOLLOW_NS);
        a.annotate(&mut late);
        assert_eq!(nat_of(&late), None);
    }

    #[test]
    fn a_pod_s_own_loopback_is_not_asked_about() {
        let (mut a, stats) = annotator();
        let mut e = event(1, failure(NetNs(4026532398), "127.0.0.1:9000"));
        a.annotate(&mut e);
        assert_eq!(nat_of(&e), None);
        let asked: u64 = crate::sources::conntrack::Outcome::ALL
            .iter()
            .map(|o| stats.get(*o))
            .sum();
        assert_eq!(asked, 0);
        // The agent's own loopback may be DNAT'd (a NodePort on localhost): asked.
        let mut own = event(2, failure(NetNs::own(), "127.0.0.1:9000"));
        a.annotate(&mut own);
        assert_eq!(nat_of(&own).as_deref(), Some(POD));
    }
}
