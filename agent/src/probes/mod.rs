//! Loading and attaching the kernel programs, and reading the maps they aggregate into.
//!
//! Each probe degrades on its own: a tracepoint the kernel lacks, or a program the verifier
//! rejects, leaves that probe off with a warning naming it while the others run.

pub mod btf;
pub mod layout;
pub mod tracefs;

use std::collections::BTreeMap;

use agent_common::{
    config::Probe,
    connect::{ConnectKey, ConnectStats, LATENCY_BUCKETS},
    event::{counter, EventKind, EVENT_KIND_SLOTS},
    http::ResponseKey,
};
use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TracePoint,
    Ebpf, EbpfLoader,
};
use serde::Serialize;

use crate::config::Config;

/// The compiled kernel programs, built by `build.rs` (empty when built with
/// `AYA_BUILD_SKIP=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/why502"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error("this binary was built without its kernel programs (AYA_BUILD_SKIP was set)")]
    NoObject,
    #[error("cannot load the kernel programs: {source}")]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error("no probe could be attached: {0}")]
    NoneAttached(String),
    #[error("kernel map {name} is missing or of the wrong type: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// How a probe ended up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum ProbeStatus {
    Attached,
    /// Turned off in the configuration.
    Disabled,
    /// The kernel lacks the tracepoint or one of its fields.
    Unavailable(String),
    /// Loading (verifier) or attaching failed.
    Failed(String),
}

/// The loaded programs and their maps.
pub struct ProbeSet {
    ebpf: Ebpf,
    pub status: BTreeMap<Probe, ProbeStatus>,
    /// Kernel struct fields BTF did not give (their features degrade).
    pub missing_kernel_fields: Vec<&'static str>,
    /// Whether the agent mounted tracefs itself.
    pub mounted_tracefs: bool,
}

/// Drops and errors counted by the kernel programs since load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KernelCounters {
    /// Records lost to a full ring buffer, by event kind.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Failed reads of kernel or user memory, by probe.
    pub probe_errors: BTreeMap<&'static str, u64>,
}

impl KernelCounters {
    pub fn total_dropped(&self) -> u64 {
        self.dropped.values().sum()
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

impl ProbeSet {
    /// Mounts tracefs if needed, resolves offsets, loads the programs and attaches every
    /// enabled probe the kernel supports.
    pub fn load(config: &Config) -> Result<Self, ProbeError> {
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        let mounted_tracefs = tracefs::ensure_mounted(config.agent.mount_tracefs)?;
        raise_memlock_limit();

        let enabled = config.enabled_probes();
        let root = std::path::Path::new(tracefs::TRACEFS);
        let mut formats = layout::Formats::new();
        for &probe in &enabled {
            if let Some(format) = tracefs::Format::read(root, probe.category(), probe.name())? {
                formats.insert(probe, format);
            }
        }
        let btf = match btf::Btf::from_file(btf::VMLINUX) {
            Ok(btf) => Some(btf),
            Err(err) => {
                log::warn!("kernel BTF unavailable ({err}): errno, ppid and exit codes degrade");
                None
            }
        };
        let layout = layout::build(&enabled, &formats, btf.as_ref(), config.signal_mask());

        let probes = &config.probes;
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &layout.config, true)
            .map_max_entries("EVENTS", probes.ring_buffer_bytes)
            .map_max_entries("TRACKED", probes.connect_table_entries)
            .map_max_entries("CONNECT_STATS", probes.connect_stats_entries)
            .load(OBJECT)
            .map_err(|source| ProbeError::Load { source })?;

        let mut status = BTreeMap::new();
        for probe in Probe::ALL {
            let outcome = if !enabled.contains(&probe) {
                ProbeStatus::Disabled
            } else if let Some(reason) = layout.unavailable.get(&probe) {
                ProbeStatus::Unavailable(reason.clone())
            } else {
                match attach(&mut ebpf, probe) {
                    Ok(()) => ProbeStatus::Attached,
                    Err(reason) => ProbeStatus::Failed(reason),
                }
            };
            match &outcome {
                ProbeStatus::Attached => log::debug!("probe {} attached", probe.name()),
                ProbeStatus::Disabled => log::info!("probe {} disabled by config", probe.name()),
                ProbeStatus::Unavailable(r) | ProbeStatus::Failed(r) => {
                    log::warn!("probe {} is off: {r}", probe.name())
                }
            }
            status.insert(probe, outcome);
        }
        if !status.values().any(|s| *s == ProbeStatus::Attached) {
            let reasons: Vec<String> = status
                .iter()
                .filter_map(|(p, s)| match s {
                    ProbeStatus::Failed(r) | ProbeStatus::Unavailable(r) => {
                        Some(format!("{}: {r}", p.name()))
                    }
                    _ => None,
                })
                .collect();
            return Err(ProbeError::NoneAttached(reasons.join("; ")));
        }
        for field in &layout.missing_kernel_fields {
            log::warn!("kernel BTF lacks {field}; the features that use it degrade");
        }
        Ok(Self {
            ebpf,
            status,
            missing_kernel_fields: layout.missing_kernel_fields,
            mounted_tracefs,
        })
    }

    pub fn attached(&self) -> impl Iterator<Item = Probe> + '_ {
        self.status
            .iter()
            .filter(|(_, s)| **s == ProbeStatus::Attached)
            .map(|(p, _)| *p)
    }

    /// The event ring buffer; taken once, by the pipeline.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self.ebpf.take_map("EVENTS").ok_or(ProbeError::Map {
            name: "EVENTS",
            source: aya::maps::MapError::InvalidName {
                name: "EVENTS".into(),
            },
        })?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            name: "EVENTS",
            source,
        })
    }

    /// Marks processes whose clean exits are worth reporting (listeners found at start-up;
    /// the kernel marks later ones itself).
    pub fn watch_processes(
        &mut self,
        tgids: impl IntoIterator<Item = u32>,
    ) -> Result<(), ProbeError> {
        let map_err = |source| ProbeError::Map {
            name: "WATCHED",
            source,
        };
        let map =
            self.ebpf
                .map_mut("WATCHED")
                .ok_or(map_err(aya::maps::MapError::InvalidName {
                    name: "WATCHED".into(),
                }))?;
        let mut watched: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(map).map_err(map_err)?;
        for tgid in tgids {
            watched.insert(tgid, 1, 0).map_err(map_err)?;
        }
        Ok(())
    }

    /// Marks processes whose writes are inspected for HTTP responses (their forked
    /// children are marked by the kernel).
    pub fn mark_proxies(&mut self, tgids: impl IntoIterator<Item = u32>) -> Result<(), ProbeError> {
        let map_err = |source| ProbeError::Map {
            name: "PROXIES",
            source,
        };
        let map =
            self.ebpf
                .map_mut("PROXIES")
                .ok_or(map_err(aya::maps::MapError::InvalidName {
                    name: "PROXIES".into(),
                }))?;
        let mut proxies: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(map).map_err(map_err)?;
        for tgid in tgids {
            proxies.insert(tgid, 1, 0).map_err(map_err)?;
        }
        Ok(())
    }

    /// HTTP responses written by proxies, per (tgid, status code), summed over CPUs.
    pub fn response_counts(&self) -> Result<Vec<(ResponseKey, u64)>, ProbeError> {
        let map_err = |source| ProbeError::Map {
            name: "RESPONSES",
            source,
        };
        let map = self
            .ebpf
            .map("RESPONSES")
            .ok_or(map_err(aya::maps::MapError::InvalidName {
                name: "RESPONSES".into(),
            }))?;
        let counts: PerCpuHashMap<_, ResponseKey, u64> =
            PerCpuHashMap::try_from(map).map_err(map_err)?;
        Ok(counts
            .iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| (key, per_cpu.iter().sum()))
            .collect())
    }

    /// Drop and error counters, summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        let map_err = |source| ProbeError::Map {
            name: "COUNTERS",
            source,
        };
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(map_err(aya::maps::MapError::InvalidName {
                name: "COUNTERS".into(),
            }))?;
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(map_err)?;
        let slot = |i: u32| -> Result<u64, ProbeError> {
            Ok(array.get(&i, 0).map_err(map_err)?.iter().sum())
        };
        let mut counters = KernelCounters::default();
        for kind in 1..EVENT_KIND_SLOTS {
            if let Some(kind_enum) = EventKind::from_u32(kind) {
                counters
                    .dropped
                    .insert(kind_name(kind_enum), slot(counter::DROPPED_BASE + kind)?);
            }
        }
        for probe in Probe::ALL {
            counters.probe_errors.insert(
                probe.name(),
                slot(counter::PROBE_ERROR_BASE + probe as u32)?,
            );
        }
        Ok(counters)
    }

    /// The kernel's success aggregates per (process, destination).
    pub fn connect_aggregates(&self) -> Result<Vec<ConnectAggregate>, ProbeError> {
        let map_err = |source| ProbeError::Map {
            name: "CONNECT_STATS",
            source,
        };
        let map =
            self.ebpf
                .map("CONNECT_STATS")
                .ok_or(map_err(aya::maps::MapError::InvalidName {
                    name: "CONNECT_STATS".into(),
                }))?;
        let stats: PerCpuHashMap<_, ConnectKey, ConnectStats> =
            PerCpuHashMap::try_from(map).map_err(map_err)?;
        let mut out = Vec::new();
        for entry in stats.iter() {
            // An entry evicted between listing keys and reading it is simply gone.
            let Ok((key, per_cpu)) = entry else { continue };
            let mut agg = ConnectAggregate {
                key,
                established: 0,
                latency_sum_ns: 0,
                retransmits: 0,
                latency_hist: [0; LATENCY_BUCKETS],
            };
            for cpu in per_cpu.iter() {
                agg.established += cpu.established;
                agg.latency_sum_ns += cpu.latency_sum_ns;
                agg.retransmits += cpu.retransmits;
                for (sum, v) in agg.latency_hist.iter_mut().zip(cpu.latency_hist) {
                    *sum += v;
                }
            }
            out.push(agg);
        }
        Ok(out)
    }
}

fn attach(ebpf: &mut Ebpf, probe: Probe) -> Result<(), String> {
    let program: &mut TracePoint = ebpf
        .program_mut(probe.name())
        .ok_or_else(|| "program missing from the object file".to_string())?
        .try_into()
        .map_err(|e| format!("not a tracepoint program: {e}"))?;
    program
        .load()
        .map_err(|e| format!("the kernel refused the program: {}", error_chain(&e)))?;
    program
        .attach(probe.category(), probe.name())
        .map_err(|e| format!("attach failed: {}", error_chain(&e)))?;
    Ok(())
}

/// An error with its sources, on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The event kind's name as used in counters and JSON.
pub fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::TcpConnectFailure => "tcp_connect_failure",
        EventKind::ConnectSyscallError => "connect_syscall_error",
        EventKind::TcpResetReceived => "tcp_reset_received",
        EventKind::TcpResetSent => "tcp_reset_sent",
        EventKind::TcpSynRetransmit => "tcp_syn_retransmit",
        EventKind::TcpSynAckRetransmit => "tcp_synack_retransmit",
        EventKind::ListenerOpened => "listener_opened",
        EventKind::ListenerClosed => "listener_closed",
        EventKind::ListenCall => "listen_call",
        EventKind::ProcessExec => "process_exec",
        EventKind::ProcessExit => "process_exit",
        EventKind::Signal => "signal",
        EventKind::OomKill => "oom_kill",
    }
}

/// Kernels before 5.11 charge BPF maps against RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        log::debug!(
            "cannot raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}
