//! The real destination of failed connections, asked of conntrack at a bounded cost: a
//! small cache by original tuple (the same connection reported twice is asked once), a
//! rate limit on queries per second (a storm of refused connects is one of the events
//! this agent exists for: it must not become a storm of netlink queries), a receive
//! timeout on each, and counters by outcome. Once conntrack turns out to be unavailable
//! (no nfnetlink, no `CAP_NET_ADMIN`) it is said once and never asked again.

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use lru::LruCache;

use super::netlink::{Conntrack, ConntrackError, Entry, OriginalTuple};

/// Original tuples whose answer is kept.
pub const CACHE_ENTRIES: usize = 1024;
/// How long an answer is kept: conntrack keeps a closed TCP entry for 10 s
/// (`nf_conntrack_tcp_timeout_close`), after which the tuple may be a new connection to
/// another backend.
pub const CACHE_TTL_NS: u64 = 10_000_000_000;
/// The kernel answers within the `send` (see [`super::netlink`]); waiting longer than
/// this means something is wrong, and the event path must not wait for it.
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(20);

/// How one resolution ended, for `why502_conntrack_lookups_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The entry was found and its destination had been rewritten (DNAT).
    Dnat,
    /// The entry was found, without DNAT: the socket's destination is the real one.
    NoDnat,
    /// The entry was gone (conntrack deletes a connection whose only answer was an RST:
    /// every refused connect), and the same client's other connections to the same
    /// address that conntrack still holds (`TIME_WAIT` keeps them 120 s) all went to
    /// one destination: that one.
    DnatOfOtherConnections,
    /// Conntrack has no entry for the tuple (gone, never tracked, or a DNAT in another
    /// network namespace's table, which the agent does not enter), and no single
    /// destination of other connections stands in.
    NoEntry,
    /// The query failed (a timeout, an undecodable answer).
    Error,
    /// Answered from the cache, no query.
    Cached,
    /// Over the rate limit: not asked.
    RateLimited,
    /// Conntrack cannot be asked on this host (said once in the log).
    Unavailable,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Dnat,
        Outcome::NoDnat,
        Outcome::DnatOfOtherConnections,
        Outcome::NoEntry,
        Outcome::Error,
        Outcome::Cached,
        Outcome::RateLimited,
        Outcome::Unavailable,
    ];

    /// The metric's label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Dnat => "dnat",
            Outcome::NoDnat => "no_dnat",
            Outcome::DnatOfOtherConnections => "dnat_of_other_connections",
            Outcome::NoEntry => "no_entry",
            Outcome::Error => "error",
            Outcome::Cached => "cached",
            Outcome::RateLimited => "rate_limited",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// Resolutions by outcome, shared with the metrics.
#[derive(Debug, Default)]
pub struct ConntrackStats {
    counts: [AtomicU64; Outcome::ALL.len()],
}

impl ConntrackStats {
    pub fn count(&self, outcome: Outcome) {
        self.counts[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, outcome: Outcome) -> u64 {
        self.counts[outcome as usize].load(Ordering::Relaxed)
    }
}

/// Where the resolver asks: the kernel's table, or a stand-in in tests.
pub trait Lookup: Send {
    fn get(&mut self, tuple: &OriginalTuple) -> Result<Option<Entry>, ConntrackError>;
    /// The entries from `src` (any port) to `dst`.
    fn entries_to(&mut self, src: IpAddr, dst: SocketAddr) -> Result<Vec<Entry>, ConntrackError>;
}

impl Lookup for Conntrack {
    fn get(&mut self, tuple: &OriginalTuple) -> Result<Option<Entry>, ConntrackError> {
        Conntrack::get(self, tuple)
    }

    fn entries_to(&mut self, src: IpAddr, dst: SocketAddr) -> Result<Vec<Entry>, ConntrackError> {
        Conntrack::entries_to(QUERY_TIMEOUT, src, dst)
    }
}

/// The one destination `entries` were DNAT'd to, if they agree on one.
fn only_destination(entries: &[Entry]) -> Option<SocketAddr> {
    let mut rewritten = entries.iter().filter(|e| e.dst_nat).map(|e| e.reply_src);
    let first = rewritten.next()?;
    rewritten.all(|d| d == first).then_some(first)
}

/// At most `per_second` queries in any second, allowing a burst of as many.
#[derive(Debug)]
struct RateLimit {
    per_second: u32,
    tokens: f64,
    last_ns: u64,
}

impl RateLimit {
    fn new(per_second: u32) -> Self {
        Self {
            per_second,
            tokens: f64::from(per_second),
            last_ns: 0,
        }
    }

    fn take(&mut self, now_ns: u64) -> bool {
        let elapsed = now_ns.saturating_sub(self.last_ns) as f64 / 1e9;
        self.last_ns = self.last_ns.max(now_ns);
        let cap = f64::from(self.per_second);
        self.tokens = (self.tokens + elapsed * cap).min(cap);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Resolves original tuples to the real destination behind a DNAT.
pub struct NatResolver {
    /// `None` once conntrack proved unavailable: never asked again.
    lookup: Option<Box<dyn Lookup>>,
    cache: LruCache<OriginalTuple, (u64, Option<SocketAddr>)>,
    limit: RateLimit,
    stats: Arc<ConntrackStats>,
}

impl NatResolver {
    /// Over the kernel's table: opening the socket needs nothing yet (the kernel checks
    /// `CAP_NET_ADMIN` at the first query), so unavailability shows at the first query
    /// or here.
    pub fn open(per_second: u32, stats: Arc<ConntrackStats>) -> Self {
        if per_second > 0 && has_net_admin() == Some(false) {
            // Expected under the systemd unit (it leaves CAP_NET_ADMIN to a drop-in): said
            // as what it is, not as the kernel's EPERM at the first failure.
            log::info!(
                "conntrack: off, the agent has no CAP_NET_ADMIN (the kernel asks for it to                  read conntrack): a DNAT'd service address is shown without the pod behind it"
            );
            return Self::with_lookup(None, per_second, stats);
        }
        let lookup: Option<Box<dyn Lookup>> = match Conntrack::open(QUERY_TIMEOUT) {
            Ok(conntrack) => Some(Box::new(conntrack)),
            Err(err) => {
                say_unavailable(&err);
                None
            }
        };
        Self::with_lookup(lookup, per_second, stats)
    }

    pub fn with_lookup(
        lookup: Option<Box<dyn Lookup>>,
        per_second: u32,
        stats: Arc<ConntrackStats>,
    ) -> Self {
        Self {
            lookup,
            cache: LruCache::new(NonZeroUsize::new(CACHE_ENTRIES).expect("non-zero")),
            limit: RateLimit::new(per_second),
            stats,
        }
    }

    pub fn stats(&self) -> &Arc<ConntrackStats> {
        &self.stats
    }

    /// The destination the connection `src → dst` really went to, when a DNAT in the
    /// agent's network namespace rewrote `dst`; `None` when it was not rewritten or
    /// nothing is known.
    pub fn real_destination(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        now_ns: u64,
    ) -> Option<SocketAddr> {
        let tuple = OriginalTuple::new(src, dst)?;
        let (outcome, found) = self.resolve(&tuple, now_ns);
        self.stats.count(outcome);
        found
    }

    fn resolve(&mut self, tuple: &OriginalTuple, now_ns: u64) -> (Outcome, Option<SocketAddr>) {
        if let Some(&(at, found)) = self.cache.get(tuple) {
            if now_ns.saturating_sub(at) < CACHE_TTL_NS {
                return (Outcome::Cached, found);
            }
            self.cache.pop(tuple);
        }
        let Some(lookup) = self.lookup.as_mut() else {
            return (Outcome::Unavailable, None);
        };
        if !self.limit.take(now_ns) {
            return (Outcome::RateLimited, None);
        }
        let answer = lookup.get(tuple).and_then(|found| match found {
            Some(entry) => Ok(match entry.real_destination(tuple) {
                Some(real) => (Outcome::Dnat, Some(real)),
                None => (Outcome::NoDnat, None),
            }),
            // The fallback is a second query: it needs a token of its own.
            None if self.limit.take(now_ns) => {
                let others = lookup.entries_to(tuple.src.ip(), tuple.dst)?;
                Ok(match only_destination(&others) {
                    Some(real) => (Outcome::DnatOfOtherConnections, Some(real)),
                    None => (Outcome::NoEntry, None),
                })
            }
            None => Ok((Outcome::NoEntry, None)),
        });
        let (outcome, found) = match answer {
            Ok(answer) => answer,
            Err(err) if err.is_unavailable() => {
                say_unavailable(&err);
                self.lookup = None;
                return (Outcome::Unavailable, None);
            }
            Err(err) => {
                if self.stats.get(Outcome::Error) == 0 {
                    log::warn!(
                        "conntrack: {} (further errors are counted only)",
                        crate::error_chain(&err)
                    );
                }
                // Not cached: the next report of the tuple may get an answer.
                return (Outcome::Error, None);
            }
        };
        self.cache.put(*tuple, (now_ns, found));
        (outcome, found)
    }
}

/// `CAP_NET_ADMIN`'s bit in the capability sets (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;

/// Whether the calling thread (`/proc/thread-self`: capabilities are per thread) holds
/// `CAP_NET_ADMIN` in its effective set; `None` when its status cannot be read.
fn has_net_admin() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    effective_has(&status, CAP_NET_ADMIN)
}

/// Whether the `CapEff:` line of a `/proc/<pid>/status` text has capability `bit`.
fn effective_has(status: &str, bit: u32) -> Option<bool> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let set = u64::from_str_radix(hex, 16).ok()?;
    Some(set & (1 << bit) != 0)
}

fn say_unavailable(err: &ConntrackError) {
    log::warn!(
        "conntrack: {}; the real destination behind a DNAT'd service address will not be \
         known (the agent needs CAP_NET_ADMIN and the nf_conntrack_netlink module)",
        crate::error_chain(err)
    );
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use super::*;

    /// Answers from a fixed table, counting the queries.
    struct Table {
        entries: Vec<(OriginalTuple, Result<Option<Entry>, i32>)>,
        /// What a dump finds (other connections, the tuple's own entry being gone).
        others: Vec<(OriginalTuple, Entry)>,
        queries: Arc<Mutex<u32>>,
    }

    impl Lookup for Table {
        fn get(&mut self, tuple: &OriginalTuple) -> Result<Option<Entry>, ConntrackError> {
            *self.queries.lock().unwrap() += 1;
            match self.entries.iter().find(|(t, _)| t == tuple) {
                Some((_, Ok(entry))) => Ok(entry.clone()),
                Some((_, Err(code))) => Err(if *code == libc::EAGAIN {
                    ConntrackError::Recv(io::Error::from_raw_os_error(*code))
                } else {
                    ConntrackError::Kernel(io::Error::from_raw_os_error(*code))
                }),
                None => Ok(None),
            }
        }

        fn entries_to(
            &mut self,
            src: IpAddr,
            dst: SocketAddr,
        ) -> Result<Vec<Entry>, ConntrackError> {
            *self.queries.lock().unwrap() += 1;
            Ok(self
                .others
                .iter()
                .filter(|(t, _)| t.src.ip() == src && t.dst == dst)
                .map(|(_, e)| e.clone())
                .collect())
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const CLIENT: &str = "10.244.0.7:40000";
    const SERVICE: &str = "10.96.0.10:80";
    const POD: &str = "10.244.1.5:8080";

    fn dnat_entry() -> Entry {
        Entry {
            reply_src: addr(POD),
            reply_dst: addr(CLIENT),
            dst_nat: true,
            tcp_state: None,
        }
    }

    fn resolver(
        entries: Vec<(OriginalTuple, Result<Option<Entry>, i32>)>,
        per_second: u32,
    ) -> (NatResolver, Arc<Mutex<u32>>) {
        let queries = Arc::new(Mutex::new(0));
        let table = Table {
            entries,
            others: Vec::new(),
            queries: queries.clone(),
        };
        let stats = Arc::new(ConntrackStats::default());
        (
            NatResolver::with_lookup(Some(Box::new(table)), per_second, stats),
            queries,
        )
    }

    fn tuple(src: &str, dst: &str) -> OriginalTuple {
        OriginalTuple::new(addr(src), addr(dst)).unwrap()
    }

    #[test]
    fn effective_capabilities_are_read_from_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000001000\n";
        assert_eq!(effective_has(status, CAP_NET_ADMIN), Some(true));
        let status = "CapEff:\t000001ffffffefff\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(effective_has(status, CAP_NET_ADMIN), Some(false));
        assert_eq!(effective_has("CapEff:\tzz\n", CAP_NET_ADMIN), None);
        assert_eq!(effective_has("Name:\tx\n", CAP_NET_ADMIN), None);
    }

    #[test]
    fn a_dnat_entry_gives_the_reply_source_and_is_cached() {
        let (mut r, queries) = resolver(vec![(tuple(CLIENT, SERVICE), Ok(Some(dnat_entry())))], 10);
        let found = r.real_destination(addr(CLIENT), addr(SERVICE), 1);
        assert_eq!(found, Some(addr(POD)));
        assert_eq!(r.stats().get(Outcome::Dnat), 1);
        // The same connection reported again: from the cache, no second query.
        let again = r.real_destination(addr(CLIENT), addr(SERVICE), 2);
        assert_eq!(again, Some(addr(POD)));
        assert_eq!(*queries.lock().unwrap(), 1);
        assert_eq!(r.stats().get(Outcome::Cached), 1);
        // After the TTL the tuple may be another connection: asked again.
        r.real_destination(addr(CLIENT), addr(SERVICE), 2 + CACHE_TTL_NS);
        assert_eq!(*queries.lock().unwrap(), 2);
    }

    #[test]
    fn an_entry_without_dnat_or_no_entry_gives_nothing() {
        let direct = Entry {
            reply_src: addr(POD),
            reply_dst: addr(CLIENT),
            dst_nat: false,
            tcp_state: None,
        };
        let (mut r, _) = resolver(vec![(tuple(CLIENT, POD), Ok(Some(direct)))], 10);
        assert_eq!(r.real_destination(addr(CLIENT), addr(POD), 1), None);
        assert_eq!(r.stats().get(Outcome::NoDnat), 1);
        assert_eq!(r.real_destination(addr(CLIENT), addr(SERVICE), 1), None);
        assert_eq!(r.stats().get(Outcome::NoEntry), 1);
    }

    #[test]
    fn a_gone_entry_takes_the_one_destination_of_the_client_s_other_connections() {
        let (mut r, queries) = resolver(vec![], 10);
        let other = |port: u16, pod: &str| {
            let t = tuple(&format!("10.244.0.7:{port}"), SERVICE);
            let mut e = dnat_entry();
            e.reply_src = addr(pod);
            (t, e)
        };
        // No entry, and nothing else to go by: unknown.
        assert_eq!(r.real_destination(addr(CLIENT), addr(SERVICE), 1), None);
        assert_eq!(r.stats().get(Outcome::NoEntry), 1);
        assert_eq!(*queries.lock().unwrap(), 2, "a get, then a dump");

        let (mut r, _) = resolver(vec![], 10);
        // (The stand-in's dump is set after construction.)
        let table = Table {
            entries: vec![],
            others: vec![other(41000, POD), other(41001, POD)],
            queries: Arc::default(),
        };
        r.lookup = Some(Box::new(table));
        assert_eq!(
            r.real_destination(addr(CLIENT), addr(SERVICE), 1),
            Some(addr(POD))
        );
        assert_eq!(r.stats().get(Outcome::DnatOfOtherConnections), 1);

        // Two pods behind the service: which one refused is not known.
        let table = Table {
            entries: vec![],
            others: vec![other(41000, POD), other(41001, "10.244.2.9:8080")],
            queries: Arc::default(),
        };
        r.lookup = Some(Box::new(table));
        assert_eq!(
            r.real_destination(addr("10.244.0.7:40001"), addr(SERVICE), 2),
            None
        );
        assert_eq!(r.stats().get(Outcome::NoEntry), 1);
    }

    #[test]
    fn queries_are_rate_limited_per_second() {
        let (mut r, queries) = resolver(vec![], 10);
        // A storm of distinct refused connects within one second: ten queries (five gets
        // whose entries are gone, each with its dump).
        for port in 0..100u16 {
            let src = SocketAddr::new(addr(CLIENT).ip(), 30000 + port);
            r.real_destination(src, addr(SERVICE), 1_000 + u64::from(port));
        }
        assert_eq!(*queries.lock().unwrap(), 10);
        assert_eq!(r.stats().get(Outcome::RateLimited), 95);
        // A second later there is room again.
        r.real_destination(addr("10.244.0.9:1"), addr(SERVICE), 1_000_001_100);
        assert_eq!(*queries.lock().unwrap(), 12);
    }

    #[test]
    fn no_permission_stops_the_queries_and_errors_are_not_cached() {
        let (mut r, queries) = resolver(
            vec![
                (tuple(CLIENT, SERVICE), Err(libc::EAGAIN)),
                (tuple("10.244.0.8:1", SERVICE), Err(libc::EPERM)),
            ],
            100,
        );
        assert_eq!(r.real_destination(addr(CLIENT), addr(SERVICE), 1), None);
        assert_eq!(r.real_destination(addr(CLIENT), addr(SERVICE), 2), None);
        assert_eq!(r.stats().get(Outcome::Error), 2);
        assert_eq!(*queries.lock().unwrap(), 2);
        // EPERM: every later query would fail the same way.
        r.real_destination(addr("10.244.0.8:1"), addr(SERVICE), 3);
        r.real_destination(addr("10.244.0.8:2"), addr(SERVICE), 4);
        assert_eq!(*queries.lock().unwrap(), 3);
        assert_eq!(r.stats().get(Outcome::Unavailable), 2);
    }

    #[test]
    fn ipv4_mapped_sockets_are_looked_up_as_ipv4() {
        let (mut r, _) = resolver(vec![(tuple(CLIENT, SERVICE), Ok(Some(dnat_entry())))], 10);
        let mapped = |s: &str| match addr(s) {
            SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
            v6 => v6,
        };
        assert_eq!(
            r.real_destination(mapped(CLIENT), mapped(SERVICE), 1),
            Some(addr(POD))
        );
        // Mixed families never reach conntrack.
        assert!(OriginalTuple::new(addr(CLIENT), addr("[2001:db8::1]:80")).is_none());
    }
}
