//! `GET /v1/status`: what the agent is watching and what it lost. Plain data, so that the
//! CLI can read it back.

use std::{
    collections::BTreeMap,
    sync::atomic::Ordering,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{
    sources::probes::{maps::KernelCounters, ProbeStatus},
    sources::ring::PipelineStats,
};

/// This build's version, for [`StatusReport::version`].
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    #[serde(with = "humantime_serde")]
    pub started_at: SystemTime,
    pub uptime_seconds: u64,
    /// By probe name.
    pub probes: BTreeMap<String, ProbeStatusReport>,
    pub events: EventCounts,
    pub kernel: KernelReport,
    pub incidents_open: u64,
    /// Events the correlation engine missed because it fell behind.
    #[serde(default)]
    pub correlation_lagged_events: u64,
    /// New listeners the correlation's listener table had no room for (full of current
    /// listeners): failures to them are not tied to their process.
    #[serde(default)]
    pub listener_table_refused: u64,
    /// Incident saves lost because the store could not keep up.
    pub store_dropped_writes: u64,
    /// Whether incidents survive a restart, and saves the store refused.
    #[serde(default)]
    pub store: StoreReport,
}

/// The incident store's state ([`crate::sinks::store::Persistence`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreReport {
    /// False when the file could not be used and incidents live in memory, lost at stop.
    pub persistent: bool,
    /// Why not persistent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Incident saves the store refused (a full disk, an I/O error).
    #[serde(default)]
    pub write_errors: u64,
}

impl Default for StoreReport {
    /// What an agent that does not report it had: its file.
    fn default() -> Self {
        Self {
            persistent: true,
            reason: None,
            write_errors: 0,
        }
    }
}

/// A probe's [`ProbeStatus`], flattened so that it reads back without the agent's types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStatusReport {
    /// `attached`, `disabled`, `superseded` (not needed here), `unavailable` or `failed`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How an attached probe is attached: `tp_btf` or `tracepoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<String>,
}

/// The pipeline's counters ([`PipelineStats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    pub records: u64,
    pub decode_errors: u64,
    pub filtered: u64,
}

/// The kernel programs' counters ([`KernelCounters`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelReport {
    /// Records lost to a full ring buffer, by event kind.
    pub dropped: BTreeMap<String, u64>,
    /// Records the kernel refused because their process spent its budget, by event kind:
    /// only the budgeted kinds (`agent_common::budget::BUDGETED_KINDS`).
    #[serde(default)]
    pub throttled: BTreeMap<String, u64>,
    /// Failed reads of kernel or user memory, by probe.
    pub probe_errors: BTreeMap<String, u64>,
    /// Inserts refused by a full kernel table (what went untracked), by table.
    #[serde(default)]
    pub tables_full: BTreeMap<String, u64>,
}

impl StatusReport {
    /// Seconds from `started_at` to now (0 if the clock went back).
    pub fn uptime_since(started_at: SystemTime) -> u64 {
        SystemTime::now()
            .duration_since(started_at)
            .unwrap_or(Duration::ZERO)
            .as_secs()
    }
}

impl From<&ProbeStatus> for ProbeStatusReport {
    fn from(probe: &ProbeStatus) -> Self {
        let attachment = match probe {
            ProbeStatus::Attached(how) => Some(how.name().to_string()),
            _ => None,
        };
        let (status, reason) = match probe {
            ProbeStatus::Attached(_) => ("attached", None),
            ProbeStatus::Disabled => ("disabled", None),
            ProbeStatus::Superseded(reason) => ("superseded", Some(reason.clone())),
            ProbeStatus::Unavailable(reason) => ("unavailable", Some(reason.clone())),
            ProbeStatus::Failed(reason) => ("failed", Some(reason.clone())),
        };
        Self {
            status: status.into(),
            reason,
            attachment,
        }
    }
}

impl From<&PipelineStats> for EventCounts {
    fn from(stats: &PipelineStats) -> Self {
        Self {
            records: stats.records.load(Ordering::Relaxed),
            decode_errors: stats.decode_errors.load(Ordering::Relaxed),
            filtered: stats.filtered.load(Ordering::Relaxed),
        }
    }
}

impl From<&KernelCounters> for KernelReport {
    fn from(counters: &KernelCounters) -> Self {
        let owned = |map: &BTreeMap<&'static str, u64>| {
            map.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        Self {
            dropped: owned(&counters.dropped),
            throttled: agent_common::budget::BUDGETED_KINDS
                .iter()
                .map(|kind| {
                    let n = counters.throttled.get(kind.name()).copied().unwrap_or(0);
                    (kind.name().to_string(), n)
                })
                .collect(),
            probe_errors: owned(&counters.probe_errors),
            tables_full: owned(&counters.tables_full),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_counts_are_reported_for_the_budgeted_kinds_only() {
        let mut counters = KernelCounters::default();
        for kind in agent_common::event::EventKind::ALL {
            counters.throttled.insert(kind.name(), 0);
        }
        counters.throttled.insert("listen_call", 344);
        counters.throttled.insert("oom_kill", 9);
        let report = KernelReport::from(&counters);
        assert_eq!(
            report.throttled,
            BTreeMap::from(
                [
                    ("listen_call", 344),
                    ("process_exec", 0),
                    ("process_exit", 0),
                    ("signal", 0)
                ]
                .map(|(k, n)| (k.to_string(), n))
            )
        );
        // An agent from before the field reads back with none.
        let old: KernelReport =
            serde_json::from_str(r#"{"dropped": {}, "probe_errors": {}}"#).unwrap();
        assert!(old.throttled.is_empty());
    }
}
