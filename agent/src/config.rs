//! The agent's configuration: a TOML file (`/etc/why502/why502.toml` by default) with every
//! key optional. Unknown keys and bad values are errors that name the key.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use agent_common::config::Probe;
use serde::Deserialize;

/// Where the agent looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/why502/why502.toml";

/// Conntrack lookups run on the enrichment thread: a thousand a second is already a
/// share of it no failure storm should take.
pub const MAX_CONNTRACK_LOOKUPS_PER_SECOND: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    pub probes: ProbeConfig,
    pub enrich: EnrichConfig,
    pub incidents: IncidentConfig,
    pub store: StoreConfig,
    pub api: ApiConfig,
    pub metrics: MetricsConfig,
    pub kubernetes: KubernetesConfig,
}

/// Pod names from the Kubernetes API (`sources::kubernetes`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Ask the API at all, when credentials exist (the pod's service account, or
    /// `kubeconfig`); without any nothing is tried either way.
    pub enabled: bool,
    /// A kubeconfig whose current context to use instead of the service account (token or
    /// client-certificate users; exec plugins are not run).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name as the API knows it; else `NODE_NAME`, else the host name.
    pub node_name: Option<String>,
    /// The least time between two lists of the node's pods (one is made only when a pod
    /// UID not in the last list is seen).
    pub refresh_interval_ms: u64,
    /// How long one list may take.
    pub timeout_ms: u64,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            kubeconfig: None,
            node_name: None,
            refresh_interval_ms: 30_000,
            timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics at all.
    pub enabled: bool,
    /// Where `GET /metrics` is served; loopback by default.
    pub listen: std::net::SocketAddr,
    /// Distinct `upstream` label values; later ones are folded into `other`.
    pub max_upstreams: usize,
    /// Distinct `proxy` label values.
    pub max_proxies: usize,
    /// Distinct `service` label values (process exits, OOM kills, listeners, memory).
    pub max_services: usize,
    /// How often host signals (memory pressure, listen queues, cgroup memory) are sampled.
    pub sample_interval_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9502)),
            max_upstreams: 100,
            max_proxies: 50,
            max_services: 100,
            sample_interval_ms: 5000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentConfig {
    /// Failures from one proxy to one upstream within `window_ms` that open an incident
    /// (one is enough when the upstream's listener is gone or its worker just died).
    pub open_threshold: u32,
    /// The spike-detection window.
    pub window_ms: u64,
    /// The least share of failures among a flow's attempts (failures plus the kernel's
    /// successful connects) in the window that opens an incident: an upstream that always
    /// fails a little does not.
    pub min_failure_ratio: f64,
    /// An incident closes after this long without a failure.
    pub quiet_seconds: u64,
    /// How far back evidence (exits, kills, listener changes) is looked for.
    pub lookback_seconds: u64,
    /// Memory pressure (PSI `some` avg10, percent) from which it counts as evidence.
    pub memory_pressure_percent: f64,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        Self {
            open_threshold: 3,
            window_ms: 30_000,
            min_failure_ratio: 0.01,
            quiet_seconds: 10,
            lookback_seconds: 300,
            memory_pressure_percent: 10.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The SQLite database of incidents.
    pub path: PathBuf,
    /// Incidents older than this are deleted.
    pub max_age_days: u32,
    /// At most this many incidents are kept (the oldest go first).
    pub max_incidents: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/why502/why502.db"),
            max_age_days: 30,
            max_incidents: 10000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The unix socket the local API listens on: mode 0600 (root only), or 0660 with
    /// `socket_group`.
    pub socket: PathBuf,
    /// A group whose members may use the API (the CLI without sudo): the socket gets
    /// that group and mode 0660. Unset: root only.
    pub socket_group: Option<String>,
}

/// Where the agent's API socket is unless configured otherwise; the CLI's default too.
pub const DEFAULT_SOCKET: &str = "/run/why502/why502.sock";

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_group: None,
        }
    }
}

/// The id of the group `name` in the host's group database (`getgrnam_r`: /etc/group,
/// or whatever NSS says), `None` when there is no such group.
pub fn group_id(name: &str) -> std::io::Result<Option<u32>> {
    let name = std::ffi::CString::new(name)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL in the name"))?;
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: a zeroed `group` is valid (null pointers).
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `getgrnam_r` writes into `group` and `buf`, both alive and of the sizes
        // given; `name` is NUL-terminated.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut group,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Ok(None),
            0 => return Ok(Some(group.gr_gid)),
            // A group with many members: its entry needs a larger buffer.
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            // Some NSS modules say "not found" this way.
            libc::ENOENT | libc::ESRCH => return Ok(None),
            errno => return Err(std::io::Error::from_raw_os_error(errno)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub log_level: String,
    /// Mount tracefs at `/sys/kernel/tracing` when it is not mounted (the tracepoint
    /// attach needs it).
    pub mount_tracefs: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            mount_tracefs: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Probe names to leave off.
    pub disable: Vec<String>,
    /// Size of the kernel→agent ring buffer in bytes.
    pub ring_buffer_bytes: u32,
    /// Attach the hot-path probes as BTF-enabled tracepoints (`tp_btf`) where the kernel
    /// allows; `false` attaches the classic tracepoints only (and counts HTTP responses
    /// from the write syscalls), as on a kernel without BTF.
    pub btf_tracepoints: bool,
    /// Use the kernel's BTF (`/sys/kernel/btf/vmlinux`) for struct offsets and `tp_btf`;
    /// `false` runs the agent as on a kernel without BTF (to check what degrades).
    pub kernel_btf: bool,
    /// Connections tracked from SYN_SENT to CLOSE (a bounded table: a connect beyond it
    /// is not tracked, and counted).
    pub connect_table_entries: u32,
    /// Success aggregates per (process, destination), per CPU (LRU).
    pub connect_stats_entries: u32,
    /// Signals reported by `signal_generate`, by name.
    pub signals: Vec<String>,
    /// A proxy's upstream connection that the proxy closes first, with its request
    /// acknowledged and no response byte, at least this long after the handshake is
    /// reported as the proxy giving up (`upstream_end`, how = `proxy_gave_up`). Below
    /// proxies' read timeouts (nginx: 60 s, and its timers fire a few ms early: a floor of
    /// exactly 1 s would miss a 1 s `proxy_read_timeout`), above most clients' aborts.
    pub response_timeout_ms: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            disable: Vec::new(),
            ring_buffer_bytes: 4 << 20,
            btf_tracepoints: true,
            kernel_btf: true,
            connect_table_entries: 65536,
            connect_stats_entries: 4096,
            signals: [
                "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGABRT", "SIGBUS", "SIGFPE", "SIGKILL",
                "SIGSEGV", "SIGTERM",
            ]
            .map(String::from)
            .to_vec(),
            response_timeout_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichConfig {
    /// Processes whose procfs details are kept (LRU).
    pub process_cache_entries: usize,
    /// Argument names whose values are replaced by `***` in reported command lines.
    pub redact_keys: Vec<String>,
    /// Conntrack queries per second at most, for the real destination behind a DNAT'd
    /// address of a failed connection (`sources/conntrack`); 0: never asked.
    pub conntrack_lookups_per_second: u32,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        Self {
            process_cache_entries: 8192,
            conntrack_lookups_per_second: 50,
            redact_keys: [
                "password",
                "passwd",
                "pass",
                "token",
                "secret",
                "key",
                "apikey",
                "api_key",
                "auth",
                "credential",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl Config {
    /// Loads `path`, or the defaults when `path` is `None` and the default file is absent.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match path {
            Some(path) => (path.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if !required && err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default())
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let config = Self::parse(&text, &path)?;
        config.check_host(&path)?;
        Ok(config)
    }

    /// What only the host can say: the configured socket group exists. Checked when the
    /// file is loaded, before anything starts, so that a typo is one line and no side
    /// effect (the agent also checks again when it creates the socket).
    fn check_host(&self, path: &Path) -> Result<(), ConfigError> {
        let Some(group) = &self.api.socket_group else {
            return Ok(());
        };
        let invalid = |message| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: "api.socket_group",
            message,
        };
        match group_id(group) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(invalid(format!(
                "no group {group:?} on this host (create it with groupadd, or remove the key \
                 for a socket only root can use)"
            ))),
            Err(err) => Err(invalid(format!("cannot look up group {group:?}: {err}"))),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_for_cpus(text, path, possible_cpus())
    }

    /// [`Config::parse`] for a host with `cpus` possible CPUs (per-CPU maps scale with it).
    fn parse_for_cpus(text: &str, path: &Path, cpus: usize) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            message: err.message().to_string()
                + &err
                    .span()
                    .map(|span| format!(" (at {})", line_col(text, span.start)))
                    .unwrap_or_default(),
        })?;
        config.validate(path, cpus)?;
        Ok(config)
    }

    fn validate(&self, path: &Path, cpus: usize) -> Result<(), ConfigError> {
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        if log_level(&self.agent.log_level).is_none() {
            return Err(invalid(
                "agent.log_level",
                format!(
                    "{:?} is not one of error, warn, info, debug, trace",
                    self.agent.log_level
                ),
            ));
        }
        let probes = &self.probes;
        for name in &probes.disable {
            if !Probe::ALL.iter().any(|p| p.name() == name) {
                return Err(invalid(
                    "probes.disable",
                    format!("unknown probe {name:?} (known: {})", probe_names()),
                ));
            }
        }
        // Probes that only work as a pair: the enter half records the call, the exit half
        // reports it; one alone fills its kernel table or reports nothing. Rejected rather
        // than silently completed, so that the file says what runs.
        for pair in PROBE_PAIRS {
            let off = pair.map(|p| probes.disable.iter().any(|d| d == p.name()));
            if off[0] != off[1] {
                let (gone, kept) = if off[0] {
                    (pair[0], pair[1])
                } else {
                    (pair[1], pair[0])
                };
                return Err(invalid(
                    "probes.disable",
                    format!(
                        "{} without {}: they only work together, disable both or neither",
                        gone.name(),
                        kept.name()
                    ),
                ));
            }
        }
        let ring = probes.ring_buffer_bytes;
        if !ring.is_power_of_two() || !(65536..=MAX_RING_BUFFER_BYTES).contains(&ring) {
            return Err(invalid(
                "probes.ring_buffer_bytes",
                format!("{ring} is not a power of two between 65536 and {MAX_RING_BUFFER_BYTES}"),
            ));
        }
        for (key, value, max) in [
            (
                "probes.connect_table_entries",
                probes.connect_table_entries,
                MAX_CONNECT_TABLE_ENTRIES,
            ),
            (
                "probes.connect_stats_entries",
                probes.connect_stats_entries,
                max_connect_stats_entries(cpus),
            ),
        ] {
            if value == 0 || value > max {
                return Err(invalid(key, format!("{value} is not between 1 and {max}")));
            }
        }
        for name in &probes.signals {
            if signal_number(name).is_none() {
                return Err(invalid(
                    "probes.signals",
                    format!("unknown signal {name:?} (use names such as SIGTERM)"),
                ));
            }
        }
        let cache = self.enrich.process_cache_entries;
        if cache == 0 || cache > MAX_PROCESS_CACHE_ENTRIES {
            return Err(invalid(
                "enrich.process_cache_entries",
                format!("{cache} is not between 1 and {MAX_PROCESS_CACHE_ENTRIES}"),
            ));
        }
        let conntrack = self.enrich.conntrack_lookups_per_second;
        if conntrack > MAX_CONNTRACK_LOOKUPS_PER_SECOND {
            return Err(invalid(
                "enrich.conntrack_lookups_per_second",
                format!("{conntrack} is more than {MAX_CONNTRACK_LOOKUPS_PER_SECOND}"),
            ));
        }
        let inc = &self.incidents;
        for (key, value, min, max) in [
            (
                "probes.response_timeout_ms",
                probes.response_timeout_ms,
                10,
                3_600_000,
            ),
            (
                "incidents.open_threshold",
                u64::from(inc.open_threshold),
                1,
                1_000_000,
            ),
            ("incidents.window_ms", inc.window_ms, 10, 60_000),
            (
                "kubernetes.refresh_interval_ms",
                self.kubernetes.refresh_interval_ms,
                1_000,
                86_400_000,
            ),
            (
                "kubernetes.timeout_ms",
                self.kubernetes.timeout_ms,
                100,
                60_000,
            ),
            ("incidents.quiet_seconds", inc.quiet_seconds, 1, 86_400),
            (
                "incidents.lookback_seconds",
                inc.lookback_seconds,
                1,
                86_400,
            ),
            (
                "store.max_age_days",
                u64::from(self.store.max_age_days),
                1,
                3650,
            ),
            (
                "store.max_incidents",
                u64::from(self.store.max_incidents),
                1,
                10_000_000,
            ),
            (
                "metrics.max_upstreams",
                self.metrics.max_upstreams as u64,
                1,
                100_000,
            ),
            (
                "metrics.max_proxies",
                self.metrics.max_proxies as u64,
                1,
                100_000,
            ),
            (
                "metrics.max_services",
                self.metrics.max_services as u64,
                1,
                100_000,
            ),
            (
                "metrics.sample_interval_ms",
                self.metrics.sample_interval_ms,
                100,
                3_600_000,
            ),
        ] {
            if value < min || value > max {
                return Err(invalid(
                    key,
                    format!("{value} is not between {min} and {max}"),
                ));
            }
        }
        if !(0.0..1.0).contains(&inc.min_failure_ratio) {
            return Err(invalid(
                "incidents.min_failure_ratio",
                format!("{} is not between 0 and 1", inc.min_failure_ratio),
            ));
        }
        if !(0.0..=100.0).contains(&inc.memory_pressure_percent) {
            return Err(invalid(
                "incidents.memory_pressure_percent",
                format!("{} is not a percentage", inc.memory_pressure_percent),
            ));
        }
        for (key, path) in [
            ("store.path", &self.store.path),
            ("api.socket", &self.api.socket),
        ] {
            if !path.is_absolute() {
                return Err(invalid(
                    key,
                    format!("{} is not an absolute path", path.display()),
                ));
            }
        }
        if let Some(group) = &self.api.socket_group {
            // A name as groupadd takes it; anything else is a mistake, not a group.
            let plausible = !group.is_empty()
                && group.len() <= 32
                && !group.starts_with('-')
                && group
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
            if !plausible {
                return Err(invalid(
                    "api.socket_group",
                    format!("{group:?} is not a group name"),
                ));
            }
        }
        if self.enrich.redact_keys.iter().any(|k| k.trim().is_empty()) {
            return Err(invalid(
                "enrich.redact_keys",
                "empty key names are not allowed".into(),
            ));
        }
        Ok(())
    }

    /// The probes to load: all but the disabled ones.
    pub fn enabled_probes(&self) -> BTreeSet<Probe> {
        Probe::ALL
            .into_iter()
            .filter(|p| !self.probes.disable.iter().any(|d| d == p.name()))
            .collect()
    }

    /// Bit `n` set for each configured signal `n`.
    pub fn signal_mask(&self) -> u64 {
        self.probes
            .signals
            .iter()
            .filter_map(|name| signal_number(name))
            .fold(0, |mask, sig| mask | (1u64 << sig))
    }
}

pub fn log_level(name: &str) -> Option<log::LevelFilter> {
    Some(match name {
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => return None,
    })
}

/// Probes that are disabled together or not at all.
const PROBE_PAIRS: [[Probe; 2]; 2] = [
    [Probe::SysEnterConnect, Probe::SysExitConnect],
    [Probe::SysEnterListen, Probe::SysExitListen],
];

/// The event ring is locked kernel memory: 256 MiB is far beyond any flood's need.
const MAX_RING_BUFFER_BYTES: u32 = 1 << 28;
/// Tracked connects: 2 Mi entries of about 80 bytes, some 160 MiB of kernel memory.
const MAX_CONNECT_TABLE_ENTRIES: u32 = 1 << 21;
/// Processes cached with their command lines (a few KiB each at worst).
const MAX_PROCESS_CACHE_ENTRIES: usize = 1 << 18;
/// Kernel memory the per-CPU success aggregates may take on all CPUs together.
const CONNECT_STATS_BUDGET_BYTES: usize = 256 << 20;

/// The most `connect_stats_entries` a host with `cpus` possible CPUs may have: the map
/// holds one value per entry per CPU, so the bound shrinks as CPUs grow (never below the
/// default, which must load anywhere).
fn max_connect_stats_entries(cpus: usize) -> u32 {
    let per_entry = cpus.max(1) * std::mem::size_of::<agent_common::connect::ConnectStats>();
    let fits = u32::try_from(CONNECT_STATS_BUDGET_BYTES / per_entry).unwrap_or(u32::MAX);
    fits.clamp(ProbeConfig::default().connect_stats_entries, 1 << 20)
}

/// The CPUs the kernel sizes per-CPU maps for (`/sys/devices/system/cpu/possible`, e.g.
/// `0-3`), or the online ones when that cannot be read.
fn possible_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|text| cpu_count(text.trim()))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The number of CPUs in a kernel CPU list: `0-3,8-11` has 8.
fn cpu_count(list: &str) -> Option<usize> {
    list.split(',').try_fold(0, |count, range| {
        let (first, last) = match range.split_once('-') {
            Some((first, last)) => (first.parse::<usize>().ok()?, last.parse::<usize>().ok()?),
            None => (range.parse().ok()?, range.parse().ok()?),
        };
        Some(count + last.checked_sub(first)? + 1)
    })
}

fn probe_names() -> String {
    Probe::ALL.map(Probe::name).join(", ")
}

/// Linux signal numbers by name (x86 and arm numbering, which agree on these).
pub fn signal_number(name: &str) -> Option<u32> {
    crate::model::signal::SIGNALS
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(num, _)| *num)
}

/// `line 2, column 10: listen = "nowhere"`: the line itself names the key.
fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.len() - start + 1;
    let content = text[start..].lines().next().unwrap_or("").trim();
    format!("line {line}, column {col}: {content}")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.probes.ring_buffer_bytes, 4 << 20);
        assert_eq!(config.enabled_probes().len(), Probe::ALL.len());
        assert_ne!(config.signal_mask() & (1 << 11), 0, "SIGSEGV is watched");
        assert_eq!(config.signal_mask() & (1 << 17), 0, "SIGCHLD is not");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("[probes]\nring_bufer_bytes = 65536\n").unwrap_err();
        assert!(err.contains("ring_bufer_bytes"), "{err}");
        let err = parse("[agnet]\n").unwrap_err();
        assert!(err.contains("agnet"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        for (text, key) in [
            (
                "[probes]\nring_buffer_bytes = 100000\n",
                "probes.ring_buffer_bytes",
            ),
            ("[probes]\ndisable = [\"kprobe_x\"]\n", "probes.disable"),
            ("[probes]\nsignals = [\"SIGFOO\"]\n", "probes.signals"),
            (
                "[probes]\nconnect_table_entries = 0\n",
                "probes.connect_table_entries",
            ),
            (
                "[probes]\nresponse_timeout_ms = 0\n",
                "probes.response_timeout_ms",
            ),
            (
                "[probes]\nresponse_timeout_ms = 3600001\n",
                "probes.response_timeout_ms",
            ),
            ("[agent]\nlog_level = \"loud\"\n", "agent.log_level"),
            (
                "[enrich]\nprocess_cache_entries = 0\n",
                "enrich.process_cache_entries",
            ),
            (
                "[incidents]\nopen_threshold = 0\n",
                "incidents.open_threshold",
            ),
            ("[store]\npath = \"rel.db\"\n", "store.path"),
            ("[api]\nsocket = \"x.sock\"\n", "api.socket"),
            ("[api]\nsocket_group = \"\"\n", "api.socket_group"),
            ("[api]\nsocket_group = \"a b\"\n", "api.socket_group"),
            ("[api]\nsocket_group = \"-g\"\n", "api.socket_group"),
            ("[metrics]\nmax_upstreams = 0\n", "metrics.max_upstreams"),
            (
                "[kubernetes]\nrefresh_interval_ms = 10\n",
                "kubernetes.refresh_interval_ms",
            ),
            ("[kubernetes]\ntimeout_ms = 0\n", "kubernetes.timeout_ms"),
            ("[metrics]\nlisten = \"nowhere\"\n", "listen"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(key), "{text:?}: {err}");
        }
        let err = parse("[probes]\nring_buffer_bytes = \"big\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn sizes_have_upper_bounds_named_in_one_line() {
        for (text, key, bound) in [
            (
                "[probes]\nring_buffer_bytes = 536870912\n",
                "probes.ring_buffer_bytes",
                "268435456",
            ),
            (
                "[probes]\nconnect_table_entries = 2097153\n",
                "probes.connect_table_entries",
                "2097152",
            ),
            (
                "[enrich]\nprocess_cache_entries = 262145\n",
                "enrich.process_cache_entries",
                "262144",
            ),
            (
                "[enrich]\nconntrack_lookups_per_second = 1001\n",
                "enrich.conntrack_lookups_per_second",
                "1000",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(key) && err.contains(bound), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
        // The largest values allowed still load.
        parse("[probes]\nring_buffer_bytes = 268435456\nconnect_table_entries = 2097152\n")
            .unwrap();
        parse("[enrich]\nprocess_cache_entries = 262144\n").unwrap();
        parse("[enrich]\nconntrack_lookups_per_second = 1000\n").unwrap();
        parse("[enrich]\nconntrack_lookups_per_second = 0\n").unwrap();
    }

    #[test]
    fn connect_stats_entries_are_bounded_per_cpu() {
        let stats = |entries: u32, cpus| {
            let text = format!("[probes]\nconnect_stats_entries = {entries}\n");
            Config::parse_for_cpus(&text, Path::new("test.toml"), cpus).map_err(|e| e.to_string())
        };
        // 256 MiB over 224-byte values: 599186 entries on 2 CPUs, 4681 on 256.
        assert_eq!(max_connect_stats_entries(2), 599_186);
        assert_eq!(max_connect_stats_entries(256), 4681);
        stats(100_000, 2).unwrap();
        let err = stats(100_000, 256).unwrap_err();
        assert!(
            err.contains("probes.connect_stats_entries") && err.contains("4681"),
            "{err}"
        );
        // Never below the default, which must load on any host, and never above 2^20.
        stats(4096, 4096).unwrap();
        stats(4097, 4096).unwrap_err();
        assert_eq!(max_connect_stats_entries(1), 1 << 20);
    }

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(cpu_count("0"), Some(1));
        assert_eq!(cpu_count("0-1"), Some(2));
        assert_eq!(cpu_count("0-3,8-11"), Some(8));
        assert_eq!(cpu_count("3-1"), None);
        assert_eq!(cpu_count("x"), None);
    }

    #[test]
    fn paired_probes_cannot_be_disabled_apart() {
        for (alone, other) in [
            ("sys_enter_connect", "sys_exit_connect"),
            ("sys_exit_connect", "sys_enter_connect"),
            ("sys_enter_listen", "sys_exit_listen"),
            ("sys_exit_listen", "sys_enter_listen"),
        ] {
            let err = parse(&format!("[probes]\ndisable = [\"{alone}\"]\n")).unwrap_err();
            assert!(
                err.contains("probes.disable") && err.contains(alone) && err.contains(other),
                "{alone}: {err}"
            );
            assert!(!err.contains('\n'), "one line: {err:?}");
            let both = parse(&format!("[probes]\ndisable = [\"{alone}\", \"{other}\"]\n"))
                .unwrap_or_else(|e| panic!("{alone} with {other}: {e}"));
            let enabled = both.enabled_probes();
            assert!(!enabled
                .iter()
                .any(|p| p.name() == alone || p.name() == other));
        }
    }

    #[test]
    fn disabling_a_probe_removes_it() {
        let config = parse("[probes]\ndisable = [\"signal_generate\"]\n").unwrap();
        assert!(!config.enabled_probes().contains(&Probe::SignalGenerate));
        assert!(config.enabled_probes().contains(&Probe::MarkVictim));
    }

    /// `section.key` for every field of every section, read from the pretty `Debug` form
    /// (sections at the first indent, their keys at the second): no list kept by hand.
    fn keys_of(config: &Config) -> BTreeSet<String> {
        let text = format!("{config:#?}");
        let mut section = "";
        let mut keys = BTreeSet::new();
        for line in text.lines() {
            let Some((name, _)) = line.trim_start().split_once(": ") else {
                continue;
            };
            match line.len() - line.trim_start().len() {
                4 => section = name,
                8 => {
                    keys.insert(format!("{section}.{name}"));
                }
                _ => {}
            }
        }
        keys
    }

    /// The keys of [`keys_of`] whose default is `None`.
    fn unset_keys_of(config: &Config) -> BTreeSet<String> {
        let text = format!("{config:#?}");
        let mut section = "";
        let mut keys = BTreeSet::new();
        for line in text.lines() {
            let Some((name, value)) = line.trim_start().split_once(": ") else {
                continue;
            };
            match line.len() - line.trim_start().len() {
                4 => section = name,
                8 if value == "None," => {
                    keys.insert(format!("{section}.{name}"));
                }
                _ => {}
            }
        }
        keys
    }

    /// `section.key` → `key = value` for each commented-out assignment (`# key = value`)
    /// in a TOML text, by the section it is in.
    fn commented_keys(text: &str) -> std::collections::BTreeMap<String, String> {
        let mut section = "";
        let mut keys = std::collections::BTreeMap::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name;
            } else if let Some(assignment) = line.strip_prefix("# ") {
                let Some((key, _)) = assignment.split_once(" = ") else {
                    continue;
                };
                if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    let value = assignment.split(" #").next().unwrap_or(assignment);
                    keys.insert(format!("{section}.{key}"), value.trim().to_string());
                }
            }
        }
        keys
    }

    #[test]
    fn the_example_config_is_valid_and_says_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/why502.toml");
        let config = Config::load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
        let defaults = Config::default();
        // Every value, of every key there is: the Debug forms are the whole structs.
        assert_eq!(format!("{config:#?}"), format!("{defaults:#?}"));
        // And the example writes every key out, none left to its default unsaid.
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table = text.parse().unwrap();
        let written: BTreeSet<String> = table
            .iter()
            .flat_map(|(section, keys)| {
                let keys = keys.as_table().expect("sections only at the top");
                keys.keys().map(move |key| format!("{section}.{key}"))
            })
            .collect();
        let known = keys_of(&defaults);
        assert!(known.len() >= 25, "{known:?}");
        // A key that is unset by default (an `Option`, `None`) cannot be written with its
        // default value: it is documented commented out in its section instead
        // (`# socket_group = "why502"`), and must parse when uncommented.
        let optional = unset_keys_of(&defaults);
        assert!(optional.contains("api.socket_group"), "{optional:?}");
        let commented = commented_keys(&text);
        for key in &optional {
            assert!(
                !written.contains(key),
                "{key} is unset by default, the example sets it"
            );
            let line = commented
                .get(key)
                .unwrap_or_else(|| panic!("{key} is not in the example, not even commented"));
            let (section, _) = key.split_once('.').unwrap();
            Config::parse(&format!("[{section}]\n{line}\n"), &path)
                .unwrap_or_else(|e| panic!("the example's {line:?}: {e}"));
        }
        let documented: BTreeSet<String> = written.union(&optional).cloned().collect();
        assert_eq!(documented, known);
        assert_eq!(config.enabled_probes().len(), Probe::ALL.len());
    }

    /// The retention README.md promises ("30 days and 10,000 incidents by default"),
    /// read from its text: a change of either the defaults or the README breaks this.
    #[test]
    fn the_store_retention_defaults_are_the_readmes() {
        let readme = include_str!("../../README.md");
        // Whitespace collapsed: the sentence is wrapped across lines.
        let text = readme.split_whitespace().collect::<Vec<_>>().join(" ");
        let sentence = text
            .find("Incidents are kept in SQLite")
            .map(|at| &text[at..])
            .expect("README.md says where incidents are kept");
        let (kept, _) = sentence
            .split_once(" by default)")
            .expect("README.md states the store's default retention");
        let (_, retention) = kept
            .rsplit_once("; ")
            .expect("the retention follows the store's path and mode");
        let words: Vec<&str> = retention.split(' ').collect();
        let [days, "days", "and", incidents, "incidents"] = words[..] else {
            panic!("README.md's retention is not \"N days and M incidents\": {retention:?}");
        };
        let defaults = StoreConfig::default();
        assert_eq!(
            days.parse::<u32>(),
            Ok(defaults.max_age_days),
            "{retention:?}"
        );
        assert_eq!(
            incidents.replace(',', "").parse::<u32>(),
            Ok(defaults.max_incidents),
            "{retention:?}"
        );
        // The documented default path is the one in the same sentence.
        assert!(
            sentence.starts_with(&format!(
                "Incidents are kept in SQLite (`{}`",
                defaults.path.display()
            )),
            "{sentence:.80}"
        );
    }

    #[test]
    fn an_unknown_socket_group_is_one_line_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("why502.toml");
        std::fs::write(&file, "[api]\nsocket_group = \"why502-no-such-group\"\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(
            err.contains("api.socket_group") && err.contains("\"why502-no-such-group\""),
            "{err}"
        );
        assert!(err.contains("no group"), "{err}");
        assert!(!err.contains('\n'), "one line: {err:?}");
        // A group the host has (every host has root's) loads.
        std::fs::write(&file, "[api]\nsocket_group = \"root\"\n").unwrap();
        let config = Config::load(Some(&file)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.api.socket_group.as_deref(), Some("root"));
        assert_eq!(group_id("root").unwrap(), Some(0));
        assert_eq!(group_id("why502-no-such-group").unwrap(), None);
    }

    /// The unit's directories are where the defaults put the store and the socket, with
    /// modes that keep the store root's and let only the socket's own mode decide who
    /// connects; and whatever the agent creates is its own only (`UMask`).
    #[test]
    fn the_unit_s_directories_and_modes_fit_the_defaults() {
        let unit = include_str!("../../deploy/why502.service");
        let setting = |key: &str| -> &str {
            let values: Vec<&str> = unit
                .lines()
                .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .collect();
            let [value] = values[..] else {
                panic!("{key}= set once in deploy/why502.service: {values:?}");
            };
            value.trim()
        };
        let octal = |key: &str| {
            u32::from_str_radix(setting(key), 8)
                .unwrap_or_else(|_| panic!("{key}={} is not an octal mode", setting(key)))
        };
        assert_eq!(octal("UMask") & 0o077, 0o077, "files for the agent alone");

        let defaults = Config::default();
        let state = Path::new("/var/lib").join(setting("StateDirectory"));
        assert_eq!(Some(state.as_path()), defaults.store.path.parent());
        assert_eq!(
            octal("StateDirectoryMode") & 0o077,
            0,
            "the store's directory is root's"
        );

        let runtime = Path::new("/run").join(setting("RuntimeDirectory"));
        assert_eq!(Some(runtime.as_path()), defaults.api.socket.parent());
        let mode = octal("RuntimeDirectoryMode");
        assert_eq!(mode & 0o022, 0, "only root writes where the socket is");
        assert_eq!(
            mode & 0o001,
            0o001,
            "a socket group's members can reach the socket"
        );
        // Both are the agent's to write in, under ProtectSystem=strict.
        let writable = setting("ReadWritePaths");
        for dir in [&state, &runtime] {
            assert!(
                writable
                    .split_whitespace()
                    .any(|p| Path::new(p) == dir.as_path()),
                "{} not in ReadWritePaths={writable}",
                dir.display()
            );
        }
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/why502.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/why502.toml"));
    }
}
