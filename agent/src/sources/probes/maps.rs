//! The kernel maps userspace reads or writes, each an owned handle taken out of the loaded
//! object (`Ebpf::take_map`, as aya documents for maps used from async tasks): whoever
//! holds a handle is its only user, so no lock is shared between tasks.

use std::collections::BTreeMap;

use agent_common::{
    config::Probe,
    connect::{ConnectKey, ConnectStats, LATENCY_BUCKETS},
    event::{counter, EventKind},
    http::ResponseKey,
};
use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    Ebpf,
};
use serde::Serialize;

use super::ProbeError;

/// Every map userspace uses, taken out of the loaded object.
pub struct KernelMaps {
    /// The event ring buffer: for the ring-buffer pipeline.
    pub events: RingBuf<MapData>,
    /// Drop and error counters.
    pub counters: CounterMap,
    /// Successful connects, aggregated per (process, destination).
    pub connects: ConnectStatsMap,
    /// Proxies' HTTP responses, per (process, status code).
    pub responses: ResponseMap,
    /// Processes whose clean exits are reported.
    pub watched: TgidSet,
    /// Processes whose writes are inspected for HTTP responses.
    pub proxies: TgidSet,
}

impl KernelMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        Ok(Self {
            events: take(ebpf, "EVENTS", RingBuf::try_from)?,
            counters: CounterMap(take(ebpf, "COUNTERS", PerCpuArray::try_from)?),
            connects: ConnectStatsMap(take(ebpf, "CONNECT_STATS", PerCpuHashMap::try_from)?),
            responses: ResponseMap(take(ebpf, "RESPONSES", PerCpuHashMap::try_from)?),
            watched: TgidSet(take(ebpf, "WATCHED", BpfHashMap::try_from)?),
            proxies: TgidSet(take(ebpf, "PROXIES", BpfHashMap::try_from)?),
        })
    }
}

fn take<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(Map) -> Result<T, MapError>,
) -> Result<T, ProbeError> {
    let map = ebpf.take_map(name).ok_or(ProbeError::Map {
        name,
        source: MapError::InvalidName { name: name.into() },
    })?;
    convert(map).map_err(|source| ProbeError::Map { name, source })
}

/// Drops and errors counted by the kernel programs since load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KernelCounters {
    /// Records lost to a full ring buffer (for the budgeted kinds: to a ring past their
    /// share), by event kind.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Records refused because their producer spent its budget (`agent_common::budget`),
    /// by event kind: a flood of one process's listens, execs, exits or signals.
    pub throttled: BTreeMap<&'static str, u64>,
    /// Failed reads of kernel or user memory, by probe.
    pub probe_errors: BTreeMap<&'static str, u64>,
    /// Inserts refused by a full kernel table, by table (`counter::Table`).
    pub tables_full: BTreeMap<&'static str, u64>,
}

impl KernelCounters {
    pub fn total_dropped(&self) -> u64 {
        self.dropped.values().sum()
    }

    /// What grew since `before` (counters only grow: the kernel never resets them).
    pub fn growth_since(&self, before: &KernelCounters) -> KernelCounters {
        let grown = |now: &BTreeMap<&'static str, u64>, then: &BTreeMap<&'static str, u64>| {
            now.iter()
                .map(|(k, n)| (*k, n.saturating_sub(then.get(k).copied().unwrap_or(0))))
                .collect()
        };
        KernelCounters {
            dropped: grown(&self.dropped, &before.dropped),
            throttled: grown(&self.throttled, &before.throttled),
            probe_errors: grown(&self.probe_errors, &before.probe_errors),
            tables_full: grown(&self.tables_full, &before.tables_full),
        }
    }
}

/// The `COUNTERS` per-CPU array.
pub struct CounterMap(PerCpuArray<MapData, u64>);

impl CounterMap {
    /// Drop and error counters, summed over CPUs.
    pub fn read(&self) -> Result<KernelCounters, ProbeError> {
        let map_err = |source| ProbeError::Map {
            name: "COUNTERS",
            source,
        };
        let slot = |i: u32| -> Result<u64, ProbeError> {
            Ok(self.0.get(&i, 0).map_err(map_err)?.iter().sum())
        };
        let mut counters = KernelCounters::default();
        for kind in EventKind::ALL {
            counters
                .dropped
                .insert(kind.name(), slot(counter::DROPPED_BASE + kind as u32)?);
            counters
                .throttled
                .insert(kind.name(), slot(counter::THROTTLED_BASE + kind as u32)?);
        }
        for probe in Probe::ALL {
            counters.probe_errors.insert(
                probe.name(),
                slot(counter::PROBE_ERROR_BASE + probe as u32)?,
            );
        }
        for table in counter::Table::ALL {
            counters
                .tables_full
                .insert(table.name(), slot(counter::TABLE_FULL_BASE + table as u32)?);
        }
        Ok(counters)
    }
}

/// Successful connects of one process to one destination, summed over CPUs.
#[derive(Debug, Clone)]
pub struct ConnectAggregate {
    pub key: ConnectKey,
    pub established: u64,
    pub latency_sum_ns: u64,
    pub retransmits: u64,
    pub latency_hist: [u64; LATENCY_BUCKETS],
}

/// How the followed connections of one (process, destination) ended, summed over CPUs:
/// a proxy's upstream connections (`agent_common::connect`). The bad ends are events
/// (`UpstreamEnd`, resets with traffic); these are the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectEnds {
    /// Ended normally: at CLOSE, with no bad end reported and no socket error.
    pub closed_ok: u64,
}

/// The `CONNECT_STATS` per-CPU LRU hash.
pub struct ConnectStatsMap(PerCpuHashMap<MapData, ConnectKey, ConnectStats>);

impl ConnectStatsMap {
    /// The kernel's success aggregates per (process, destination).
    pub fn read(&self) -> Vec<ConnectAggregate> {
        self.read_with_ends()
            .into_iter()
            .map(|(agg, _)| agg)
            .collect()
    }

    /// [`ConnectStatsMap::read`] with how each key's followed connections ended, from
    /// the same pass over the map.
    pub fn read_with_ends(&self) -> Vec<(ConnectAggregate, ConnectEnds)> {
        let mut out = Vec::new();
        for entry in self.0.iter() {
            // An entry evicted between listing keys and reading it is simply gone.
            let Ok((key, per_cpu)) = entry else { continue };
            let mut agg = ConnectAggregate {
                key,
                established: 0,
                latency_sum_ns: 0,
                retransmits: 0,
                latency_hist: [0; LATENCY_BUCKETS],
            };
            let mut ends = ConnectEnds::default();
            for cpu in per_cpu.iter() {
                agg.established += cpu.established;
                agg.latency_sum_ns += cpu.latency_sum_ns;
                agg.retransmits += cpu.retransmits;
                ends.closed_ok += cpu.closed_ok;
                for (sum, v) in agg.latency_hist.iter_mut().zip(cpu.latency_hist) {
                    *sum += v;
                }
            }
            out.push((agg, ends));
        }
        out
    }
}

/// The `RESPONSES` per-CPU LRU hash.
pub struct ResponseMap(PerCpuHashMap<MapData, ResponseKey, u64>);

impl ResponseMap {
    /// HTTP responses written by proxies, per (tgid, status code), summed over CPUs.
    pub fn read(&self) -> Vec<(ResponseKey, u64)> {
        self.0
            .iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| (key, per_cpu.iter().sum()))
            .collect()
    }
}

/// A set of processes (tgid → 1): `WATCHED` or `PROXIES`, plain hashes whose entries the
/// kernel deletes at each process's exit.
pub struct TgidSet(BpfHashMap<MapData, u32, u8>);

impl TgidSet {
    /// Adds running processes to the set (the kernel adds later ones itself). A process
    /// that exited before its entry was in is taken out again: its exit, already past,
    /// would never delete it. A full table refuses the rest (logged): a start-up with
    /// more listeners than the table holds still runs.
    pub fn insert_all(&mut self, tgids: impl IntoIterator<Item = u32>) -> Result<(), MapError> {
        let mut refused = 0usize;
        for tgid in tgids {
            match self.0.insert(tgid, 1, 0) {
                Ok(()) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::E2BIG) =>
                {
                    refused += 1;
                    continue;
                }
                Err(err) => return Err(err),
            }
            if !running(tgid) {
                let _ = self.0.remove(&tgid);
            }
        }
        if refused > 0 {
            log::warn!("kernel process table full: {refused} running processes left out");
        }
        Ok(())
    }
}

/// Whether process `pid` has not exited yet (a zombie has: its exit was traced).
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which may hold anything but ends at the last ')'.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}

#[cfg(test)]
mod tests {
    use super::running;

    #[test]
    fn running_tells_live_processes_from_gone_and_zombies() {
        assert!(running(std::process::id()));
        // Above the largest pid_max Linux allows.
        assert!(!running(u32::MAX - 1));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie once it has exited, waited for below (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while running(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "pid {pid} never exited"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert!(!running(pid));
    }
}
