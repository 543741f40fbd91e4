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
    /// The unix socket the local API listens on (mode 0660).
    pub socket: PathBuf,
}

/// Where the agent's API socket is unless configured otherwise; the CLI's default too.
pub const DEFAULT_SOCKET: &str = "/run/why502/why502.sock";

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
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
}

impl Default for EnrichConfig {
    fn default() -> Self {
        Self {
            process_cache_entries: 8192,
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
        Self::parse(&text, &path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            message: err.message().to_string()
                + &err
                    .span()
                    .map(|span| format!(" (at {})", line_col(text, span.start)))
                    .unwrap_or_default(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
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
        let ring = probes.ring_buffer_bytes;
        if !ring.is_power_of_two() || ring < 65536 {
            return Err(invalid(
                "probes.ring_buffer_bytes",
                format!("{ring} is not a power of two of at least 65536"),
            ));
        }
        for (key, value, max) in [
            (
                "probes.connect_table_entries",
                probes.connect_table_entries,
                1 << 22,
            ),
            (
                "probes.connect_stats_entries",
                probes.connect_stats_entries,
                1 << 20,
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
        if cache == 0 || cache > 1 << 20 {
            return Err(invalid(
                "enrich.process_cache_entries",
                format!("{cache} is not between 1 and {}", 1 << 20),
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
            ("[metrics]\nmax_upstreams = 0\n", "metrics.max_upstreams"),
            ("[metrics]\nlisten = \"nowhere\"\n", "listen"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(key), "{text:?}: {err}");
        }
        let err = parse("[probes]\nring_buffer_bytes = \"big\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
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
        assert_eq!(written, known);
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
    fn missing_explicit_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/why502.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/why502.toml"));
    }
}
