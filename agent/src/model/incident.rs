//! What the correlation engine produces: an incident (a spike of failures from one proxy to
//! one upstream) with its ranked explanations. This is what the store keeps, the API serves
//! and the CLI shows.

use std::{collections::BTreeMap, time::SystemTime};

use serde::{Deserialize, Serialize};

use super::failure::FailureKind;
// Where they were first defined: old paths (`model::incident::Pod`) keep working.
pub use super::identity::{Pod, Qos, Runtime};

/// One spike of upstream failures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Unique and increasing, also across agent restarts.
    pub id: u64,
    pub state: IncidentState,
    /// The first failure of the spike.
    #[serde(with = "humantime_serde")]
    pub started_at: SystemTime,
    /// The last failure seen so far.
    #[serde(with = "humantime_serde")]
    pub last_failure_at: SystemTime,
    /// When the incident was declared over (after a quiet period); `None` while open.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub closed_at: Option<SystemTime>,
    /// The process failing to reach its upstream.
    pub proxy: ProcessSummary,
    /// `127.0.0.1:9000` or `unix:/run/php/php-fpm.sock`; [`NO_UPSTREAM`] for a spike of
    /// 5xx responses with no upstream failure.
    pub upstream: String,
    /// All failures in the incident.
    pub failures: u64,
    /// Failures by kind: errno names (`ECONNREFUSED`), `timeout` (the proxy gave up while
    /// the SYN went unanswered), `reset` (RST on an established connection).
    pub failure_kinds: BTreeMap<FailureKind, u64>,
    /// 5xx responses the proxy sent its clients meanwhile, by status code (`"502"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub responses: BTreeMap<u16, u64>,
    /// Ranked, most likely first. Never empty: when nothing on the host explains the
    /// failures, the only candidate says so.
    pub causes: Vec<Candidate>,
}

/// The upstream of an incident made of 5xx responses alone.
pub const NO_UPSTREAM: &str = "(no upstream failure)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    Open,
    Closed,
}

/// A process as incidents name it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProcessSummary {
    pub pid: u32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// The real uid. `None` when procfs did not say, and in incidents stored before it
    /// was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// systemd unit, if any: `nginx.service`, or `user@1000.service/nginx.service` for
    /// one that uid 1000's user manager runs (not the host's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The cgroup path (`/system.slice/nginx.service`): with the uid, which proxy this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The runtime that made the container (`docker`, `containerd`, `cri-o`, `podman`),
    /// when its cgroup says. A string, not [`Runtime`], so that an incident stored by a
    /// later agent that knows more runtimes still reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// The Kubernetes pod the process runs in, from its cgroup (its UID and QoS class) and,
    /// where the API was reachable, its namespace and name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    /// `nginx`, `haproxy`, `envoy`, `apache`, `caddy`, `traefik` for known proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_proxy: Option<String>,
}

/// One possible explanation, with the events that support it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub cause: Cause,
    pub confidence: Confidence,
    /// One sentence, e.g. "php-fpm (pid 1234, php8.2-fpm.service), listener of
    /// 127.0.0.1:9000, was killed by the OOM killer at 14:02:02.871 (anon RSS 1.9 GiB)".
    pub summary: String,
    /// What to do about it.
    pub hint: String,
    /// The listener's owner (or other process) the cause is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSummary>,
    /// The supporting events, in time order.
    pub evidence: Vec<Evidence>,
}

/// Why a proxy failed to reach its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The listener's owner died of a fatal signal or a non-zero exit.
    Crash,
    /// The listener's owner was killed by the OOM killer.
    OomKill,
    /// The listener's owner was killed by its own parent (worker recycling, supervisor).
    KilledByParent,
    /// The listener went away and came back (or is expected back): a restart or deploy.
    Restart,
    /// Nothing ever listened on the upstream since the agent started.
    WrongPort,
    /// Connects refused or unreachable while the listener is alive: a firewall REJECT.
    FirewallReject,
    /// SYNs unanswered while the listener is alive: a firewall DROP or a full accept queue.
    SynTimeout,
    /// The listener's accept queue was seen full: the backend accepts slower than
    /// connections arrive.
    Overload,
    /// Memory pressure on the host or in the backend's cgroup (stalls, no kill).
    MemoryPressure,
    /// A unix socket's backlog is full (`EAGAIN`): the backend is not accepting fast enough.
    UnixBacklogFull,
    /// `EADDRNOTAVAIL`: the proxy ran out of local ports.
    PortExhaustion,
    /// Established connections reset by the upstream (for example a keepalive race).
    ConnectionResets,
    /// Nothing on this host explains the failures.
    NoLocalCause,
    /// The proxy answered 502/503/504 without any failed upstream connect or reset: no
    /// connect was attempted (DNS, no live upstreams, configuration), or TLS failed.
    NoUpstreamConnect,
    /// The upstream accepted the requests and did not answer within the proxy's read
    /// timeout: a slow or hung worker.
    SlowUpstream,
    /// The upstream closed connections before answering, and nothing died.
    UpstreamClosed,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::Crash => "crash",
            Cause::OomKill => "oom_kill",
            Cause::KilledByParent => "killed_by_parent",
            Cause::Restart => "restart",
            Cause::WrongPort => "wrong_port",
            Cause::FirewallReject => "firewall_reject",
            Cause::SynTimeout => "syn_timeout",
            Cause::Overload => "overload",
            Cause::MemoryPressure => "memory_pressure",
            Cause::UnixBacklogFull => "unix_backlog_full",
            Cause::PortExhaustion => "port_exhaustion",
            Cause::ConnectionResets => "connection_resets",
            Cause::NoLocalCause => "no_local_cause",
            Cause::NoUpstreamConnect => "no_upstream_connect",
            Cause::SlowUpstream => "slow_upstream",
            Cause::UpstreamClosed => "upstream_closed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    Low,
    Medium,
    High,
}

impl Confidence {
    pub fn name(self) -> &'static str {
        match self {
            Confidence::Low => "low",
            Confidence::Medium => "medium",
            Confidence::High => "high",
        }
    }
}

/// One event in an explanation's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    #[serde(with = "humantime_serde")]
    pub time: SystemTime,
    /// The event kind (`oom_kill`, `process_exit`, `listener_closed`, `tcp_connect_failure`…).
    pub kind: String,
    /// Human-readable, e.g. "OOM kill of php-fpm (pid 1234)".
    pub text: String,
}

impl Incident {
    pub fn top_cause(&self) -> Option<&Candidate> {
        self.causes.first()
    }

    /// From the first failure to the last: how long the proxy was failing.
    pub fn duration(&self) -> std::time::Duration {
        self.last_failure_at
            .duration_since(self.started_at)
            .unwrap_or_default()
    }
}

/// What an event or a tick of the correlation engine changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    Opened(Incident),
    Updated(Incident),
    Closed(Incident),
}

impl Update {
    pub fn incident(&self) -> &Incident {
        match self {
            Update::Opened(i) | Update::Updated(i) | Update::Closed(i) => i,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Incidents stored before the proxy's uid and cgroup were recorded still read, with
    /// neither; new ones keep both.
    #[test]
    fn a_process_without_uid_or_cgroup_reads_back() {
        let old = r#"{"pid": 812, "comm": "nginx", "unit": "nginx.service"}"#;
        let read: ProcessSummary = serde_json::from_str(old).unwrap();
        assert_eq!((read.uid, read.cgroup.as_deref()), (None, None));
        assert_eq!(read.unit.as_deref(), Some("nginx.service"));
        let new = ProcessSummary {
            uid: Some(33),
            cgroup: Some("/system.slice/nginx.service".into()),
            ..read
        };
        let json = serde_json::to_value(&new).unwrap();
        assert_eq!(json["uid"], 33);
        assert_eq!(json["cgroup"], "/system.slice/nginx.service");
        assert_eq!(serde_json::from_value::<ProcessSummary>(json).unwrap(), new);
    }

    /// Incidents stored before pods and runtimes were recorded read with neither; a pod's
    /// identity round-trips, and a runtime this agent does not know still reads.
    #[test]
    fn a_pod_and_its_runtime_round_trip() {
        let old = r#"{"pid": 812, "comm": "nginx", "container": "abc"}"#;
        let read: ProcessSummary = serde_json::from_str(old).unwrap();
        assert_eq!((read.runtime.as_deref(), read.pod.as_ref()), (None, None));
        let new = ProcessSummary {
            runtime: Some(Runtime::Containerd.name().into()),
            pod: Some(Pod {
                uid: "0b7f2c8e-1d3a-4c5b-9e6f-7a8b9c0d1e2f".into(),
                qos: Some(Qos::BestEffort),
                namespace: Some("shop".into()),
                name: Some("web-7d9f".into()),
            }),
            ..read
        };
        let json = serde_json::to_value(&new).unwrap();
        assert_eq!(json["runtime"], "containerd");
        assert_eq!(json["pod"]["qos"], "besteffort");
        assert_eq!(json["pod"]["uid"], "0b7f2c8e-1d3a-4c5b-9e6f-7a8b9c0d1e2f");
        assert_eq!(serde_json::from_value::<ProcessSummary>(json).unwrap(), new);
        let future = r#"{"pid": 1, "comm": "x", "runtime": "kata", "pod": {"uid": "u"}}"#;
        let read: ProcessSummary = serde_json::from_str(future).unwrap();
        assert_eq!(read.runtime.as_deref(), Some("kata"));
        assert_eq!(read.pod.unwrap().label(), "u");
        assert_eq!(new.pod.unwrap().label(), "shop/web-7d9f");
    }
}
