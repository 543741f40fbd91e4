//! Loading and attaching the kernel programs, and handing out the maps they share with
//! userspace ([`maps`]).
//!
//! Each probe degrades on its own: a tracepoint the kernel lacks, or a program the verifier
//! rejects, leaves that probe off with a warning naming it while the others run. A probe
//! with a `tp_btf` program (`Probe::btf_program`) attaches that where the kernel has BTF
//! and what it reads, and its classic tracepoint otherwise (or when `probes.btf_tracepoints`
//! is off).

pub mod btf;
pub mod layout;
pub mod maps;
pub mod tracefs;

use std::collections::BTreeMap;

use agent_common::config::Probe;
use aya::{
    programs::{BtfTracePoint, TracePoint},
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
    Attached(Attachment),
    /// Turned off in the configuration.
    Disabled,
    /// Not needed: another probe does its work here (the reason says which).
    Superseded(String),
    /// The kernel lacks the tracepoint or one of its fields.
    Unavailable(String),
    /// Loading (verifier) or attaching failed.
    Failed(String),
}

/// How an attached probe is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attachment {
    /// A classic tracepoint (`perf_event_open` on a tracefs event).
    Tracepoint,
    /// A BTF-enabled raw tracepoint (`tp_btf`).
    TpBtf,
}

impl Attachment {
    pub fn name(self) -> &'static str {
        match self {
            Attachment::Tracepoint => "tracepoint",
            Attachment::TpBtf => "tp_btf",
        }
    }
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
        const WITHOUT_BTF: &str = "errno, ppid and exit codes degrade, proxies' upstream \
            connections are not followed to their end, and every probe is a classic tracepoint";
        let btf = if !config.probes.kernel_btf {
            log::warn!("kernel BTF ignored (probes.kernel_btf = false): {WITHOUT_BTF}");
            None
        } else {
            match btf::Btf::from_file(btf::VMLINUX) {
                Ok(btf) => Some(btf),
                Err(err) => {
                    log::warn!(
                        "kernel BTF unavailable ({}): {WITHOUT_BTF}",
                        crate::error_chain(&err)
                    );
                    None
                }
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

        let kernel_btf = if config.probes.btf_tracepoints && btf.is_some() {
            aya::Btf::from_sys_fs()
                .map_err(|e| log::warn!("tp_btf programs are off: {}", crate::error_chain(&e)))
                .ok()
        } else {
            None
        };
        let mut status = BTreeMap::new();
        // tcp_sendmsg_locked first: where it attaches, the write-syscall probes are not needed.
        let mut order = Probe::ALL.to_vec();
        order.sort_by_key(|p| *p != Probe::TcpSendmsgLocked);
        for probe in order {
            let outcome = if !enabled.contains(&probe) {
                ProbeStatus::Disabled
            } else if let Some(reason) = layout.unavailable.get(&probe) {
                ProbeStatus::Unavailable(reason.clone())
            } else if Probe::WRITE_SYSCALLS.contains(&probe)
                && matches!(
                    status.get(&Probe::TcpSendmsgLocked),
                    Some(ProbeStatus::Attached(_))
                )
            {
                ProbeStatus::Superseded(
                    "HTTP responses are counted by tcp_sendmsg_locked".to_string(),
                )
            } else {
                attach_either(&mut ebpf, probe, kernel_btf.as_ref(), &layout)
            };
            match &outcome {
                ProbeStatus::Attached(how) => {
                    log::debug!("probe {} attached ({})", probe.name(), how.name())
                }
                ProbeStatus::Disabled => log::info!("probe {} disabled by config", probe.name()),
                ProbeStatus::Superseded(r) => log::debug!("probe {} not needed: {r}", probe.name()),
                ProbeStatus::Unavailable(r) | ProbeStatus::Failed(r) => {
                    log::warn!("probe {} is off: {r}", probe.name())
                }
            }
            status.insert(probe, outcome);
        }
        if !status
            .values()
            .any(|s| matches!(s, ProbeStatus::Attached(_)))
        {
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
            .filter(|(_, s)| matches!(s, ProbeStatus::Attached(_)))
            .map(|(p, _)| *p)
    }

    /// The attached probes with how each is attached.
    pub fn attached_with_attachment(&self) -> impl Iterator<Item = (Probe, Attachment)> + '_ {
        self.status.iter().filter_map(|(p, s)| match s {
            ProbeStatus::Attached(how) => Some((*p, *how)),
            _ => None,
        })
    }

    /// Hands out the kernel maps, each to own by the one task that reads or writes it
    /// (`Ebpf::take_map`): taken once. The programs keep running with the maps.
    pub fn take_maps(&mut self) -> Result<maps::KernelMaps, ProbeError> {
        maps::KernelMaps::take(&mut self.ebpf)
    }
}

/// Attaches `probe` as `tp_btf` where `btf` (the kernel's, unless turned off) and the
/// layout allow, falling back to its classic tracepoint.
fn attach_either(
    ebpf: &mut Ebpf,
    probe: Probe,
    btf: Option<&aya::Btf>,
    layout: &layout::Layout,
) -> ProbeStatus {
    if let Some(program) = probe.btf_program() {
        let why_not = match (btf, layout.btf_unavailable.get(&probe)) {
            (_, Some(reason)) => reason.clone(),
            (None, None) => "tp_btf programs are off (probes.btf_tracepoints = false, or no \
                             kernel BTF)"
                .to_string(),
            (Some(btf), None) => match attach_btf(ebpf, probe, program, btf) {
                Ok(()) => return ProbeStatus::Attached(Attachment::TpBtf),
                Err(reason) => reason,
            },
        };
        if probe.btf_only() {
            return ProbeStatus::Unavailable(why_not);
        }
        log::info!(
            "probe {} attaches as a classic tracepoint: {why_not}",
            probe.name()
        );
    }
    match attach(ebpf, probe) {
        Ok(()) => ProbeStatus::Attached(Attachment::Tracepoint),
        Err(reason) => ProbeStatus::Failed(reason),
    }
}

fn attach_btf(ebpf: &mut Ebpf, probe: Probe, name: &str, btf: &aya::Btf) -> Result<(), String> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object file"))?
        .try_into()
        .map_err(|e| format!("{name} is not a tp_btf program: {e}"))?;
    program
        .load(probe.name(), btf)
        .map_err(|e| format!("the kernel refused {name}: {}", crate::error_chain(&e)))?;
    program
        .attach()
        .map_err(|e| format!("attaching {name} failed: {}", crate::error_chain(&e)))?;
    Ok(())
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
