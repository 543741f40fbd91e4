//! Loading and attaching the kernel programs, and handing out the maps they share with
//! userspace ([`maps`]).
//!
//! Each probe degrades on its own: a tracepoint the kernel lacks, or a program the verifier
//! rejects, leaves that probe off with a warning naming it while the others run.

pub mod btf;
pub mod layout;
pub mod maps;
pub mod tracefs;

use std::collections::BTreeMap;

use agent_common::config::Probe;
use aya::{programs::TracePoint, Ebpf, EbpfLoader};
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
    #[error("cannot load the kernel programs")]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error("no probe could be attached: {0}")]
    NoneAttached(String),
    #[error("kernel map {name} is missing or of the wrong type")]
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
                log::warn!(
                    "kernel BTF unavailable ({}): errno, ppid and exit codes degrade, and \
                     proxies' upstream connections are not followed to their end",
                    crate::error_chain(&err)
                );
                None
            }
        };
        let options = layout::Options {
            signal_mask: config.signal_mask(),
            response_timeout_ns: config.probes.response_timeout_ms.saturating_mul(1_000_000),
        };
        let layout = layout::build(&enabled, &formats, btf.as_ref(), options);

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
            log::warn!("kernel BTF lacks {}: {}", field.name, field.degrades);
        }
        Ok(Self {
            ebpf,
            status,
            missing_kernel_fields: layout
                .missing_kernel_fields
                .iter()
                .map(|f| f.name)
                .collect(),
            mounted_tracefs,
        })
    }

    pub fn attached(&self) -> impl Iterator<Item = Probe> + '_ {
        self.status
            .iter()
            .filter(|(_, s)| **s == ProbeStatus::Attached)
            .map(|(p, _)| *p)
    }

    /// Hands out the kernel maps, each to own by the one task that reads or writes it
    /// (`Ebpf::take_map`): taken once. The programs keep running with the maps.
    pub fn take_maps(&mut self) -> Result<maps::KernelMaps, ProbeError> {
        maps::KernelMaps::take(&mut self.ebpf)
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
        .map_err(|e| format!("the kernel refused the program: {}", crate::error_chain(&e)))?;
    program
        .attach(probe.category(), probe.name())
        .map_err(|e| format!("attach failed: {}", crate::error_chain(&e)))?;
    Ok(())
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
