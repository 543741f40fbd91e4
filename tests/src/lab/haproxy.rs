//! The lab's HAProxy: Debian's `haproxy`, run in the foreground (`-db`) as a child of the
//! lab with a configuration of its own in the lab's directory, in front of one server,
//! logging one line per request to a file (`log stdout`, stdout redirected there) in a
//! format of the lab's own that starts with the status, like the lab's nginx access.log.
//!
//! Its log is the oracle of the HAProxy scenarios: each line gives the request (`lab=SEQ`),
//! the status, the termination state and the number of retries, from which
//! [`HaproxyLog::errors`] derives the connect attempts that failed.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    client::Client,
    logs::{AccessLog, ErrorLog},
};

pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// `retries`: connect attempts after the first one that failed.
pub const RETRIES: u32 = 3;
/// `timeout connect`; also HAProxy's delay before retrying a failed connect on the same
/// server, min(timeout connect, 1 s).
pub const CONNECT_TIMEOUT_MS: u64 = 1000;

/// The lab's `log-format`: status first (so [`AccessLog::parse`] reads it too), then the
/// termination state, retries, connect and total times, server and request line.
const LOG_FORMAT: &str = "%ST %ts retries=%rc connect_ms=%Tc total_ms=%Tt server=%b/%s %{+Q}r";

pub struct LabHaproxy {
    child: Child,
    dir: PathBuf,
    pub port: u16,
    /// `127.0.0.1:PORT`.
    pub upstream: String,
}

impl LabHaproxy {
    /// Starts HAProxy on 127.0.0.1:`port` in front of `upstream` (`127.0.0.1:PORT`), its
    /// files in `dir`, and waits until `client` can connect.
    pub fn start(port: u16, upstream: &str, dir: &Path, client: &Client) -> Self {
        assert!(
            Path::new(HAPROXY).exists(),
            "{HAPROXY} is missing: `cargo xtask bootstrap` installs Debian's haproxy"
        );
        std::fs::create_dir_all(dir).expect("haproxy directory");
        let conf = dir.join("haproxy.cfg");
        std::fs::write(&conf, config(port, upstream)).expect("write haproxy.cfg");
        let log = std::fs::File::create(dir.join("haproxy.log")).expect("haproxy log");
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("haproxy stderr");
        let child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .expect("start haproxy");
        let mut haproxy = Self {
            child,
            dir: dir.to_path_buf(),
            port,
            upstream: upstream.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !client.connects() {
            if let Ok(Some(status)) = haproxy.child.try_wait() {
                panic!("haproxy exited ({status}): {}", haproxy.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen on {port}: {}",
                haproxy.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        haproxy
    }

    /// HAProxy's single process (its threads connect upstream).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its request log, as written.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("haproxy.cfg")
    }
}

impl Drop for LabHaproxy {
    fn drop(&mut self) {
        // SIGTERM: HAProxy's hard stop; SIGKILL if it lingers.
        if !crate::signal_and_wait(&mut self.child, libc::SIGTERM, Duration::from_secs(3)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn config(port: u16, upstream: &str) -> String {
    // No `check` on the server: health checks would be connect attempts of their own, and
    // a server marked down would get none (503 with termination state SC all the same, but
    // without connect failures to count). `http-server-close`: one server connection, so
    // one connect, per request. `dontlognull`: the lab's probe that HAProxy listens
    // (a connection closed without a request) is not a request. An empty `resolvers
    // default`: otherwise HAProxy makes one from /etc/resolv.conf and connects a UDP socket
    // to the host's nameserver (no packet, but the lab stays on loopback; it warns that the
    // section has no nameservers).
    format!(
        "global
    log stdout format raw local0
    maxconn 256
defaults
    mode http
    log global
    log-format \"{LOG_FORMAT}\"
    option dontlognull
    option http-server-close
    retries {RETRIES}
    timeout connect {CONNECT_TIMEOUT_MS}ms
    timeout client 10s
    timeout server 10s
frontend lab
    bind 127.0.0.1:{port}
    default_backend lab_backend
backend lab_backend
    server backend {upstream}
resolvers default
"
    )
}

/// One line of the lab's HAProxy log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyRequest {
    pub status: u16,
    /// Termination state, two characters: who ended the session (`S` the server, `s` a
    /// server-side timeout, `-` normal) and at which stage (`C` connecting).
    pub termination: String,
    /// Connect attempts after the first (`%rc`).
    pub retries: u32,
    /// `%rc` had a `+`: the last attempt went to another server.
    pub redispatched: bool,
    /// The request's `lab=SEQ`.
    pub seq: Option<u32>,
}

impl HaproxyRequest {
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        let status = fields.next()?.parse().ok()?;
        let termination = fields.next()?.to_string();
        let retries = fields.next()?.strip_prefix("retries=")?;
        let redispatched = retries.starts_with('+');
        let retries = retries.trim_start_matches('+').parse().ok()?;
        Some(Self {
            status,
            termination,
            retries,
            redispatched,
            seq: line
                .find("lab=")
                .map(|at| &line[at + 4..])
                .and_then(|rest| {
                    rest.chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>()
                        .parse()
                        .ok()
                }),
        })
    }

    /// The session ended while connecting to the server: the last attempt failed too.
    pub fn connect_failed(&self) -> bool {
        self.termination.len() == 2 && self.termination.ends_with('C') && {
            let who = self.termination.as_bytes()[0];
            who == b'S' || who == b's'
        }
    }

    /// The connect attempts that failed: every retry was made because the attempt before
    /// it failed, and the last one failed too if the session ended connecting.
    pub fn failed_attempts(&self) -> u32 {
        self.retries + u32::from(self.connect_failed())
    }

    /// What the failed attempts were, in the agent's kind names: `SC` is a connect the
    /// server (its kernel) refused, `sC` one that timed out. The log has one termination
    /// state per request, not one per attempt: the retried attempts are taken to have
    /// failed as the last one did (on a dead loopback port every attempt is refused).
    /// `None` for a request that succeeded after retries: their kind is not in the log.
    pub fn failure_kind(&self) -> Option<&'static str> {
        match self.termination.as_str() {
            "SC" => Some("ECONNREFUSED"),
            "sC" => Some("timeout"),
            _ => None,
        }
    }
}

/// HAProxy's record of a run, the HAProxy scenarios' oracle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HaproxyLog {
    pub requests: Vec<HaproxyRequest>,
}

impl HaproxyLog {
    pub fn parse(text: &str) -> Self {
        Self {
            requests: text.lines().filter_map(HaproxyRequest::parse).collect(),
        }
    }

    /// Statuses HAProxy sent, as an access log has them.
    pub fn access(&self) -> AccessLog {
        let mut statuses = BTreeMap::new();
        for r in &self.requests {
            *statuses.entry(r.status).or_default() += 1;
        }
        AccessLog { statuses }
    }

    /// Failed connect attempts by the agent's kind names (see
    /// [`HaproxyRequest::failure_kind`]); the attempts of a request that succeeded after
    /// retries, whose kind the log does not tell, under `other`.
    pub fn errors(&self) -> ErrorLog {
        let mut log = ErrorLog::default();
        for r in &self.requests {
            let attempts = u64::from(r.failed_attempts());
            if attempts == 0 {
                continue;
            }
            match r.failure_kind() {
                Some(kind) => {
                    *log.kinds.entry(kind.to_string()).or_default() += attempts;
                    if let Some(seq) = r.seq {
                        log.requests.insert(seq, kind.to_string());
                    }
                }
                None => {
                    *log.other
                        .entry(format!(
                            "connect attempts retried before {} {} (kind not logged)",
                            r.status, r.termination
                        ))
                        .or_default() += attempts
                }
            }
        }
        log
    }

    /// `503 SC retries=3 ×7, 200 -- retries=0 ×3`: the lines by what the checks use.
    pub fn summary(&self) -> String {
        let mut counts: BTreeMap<(u16, &str, u32), u64> = BTreeMap::new();
        for r in &self.requests {
            *counts
                .entry((r.status, r.termination.as_str(), r.retries))
                .or_default() += 1;
        }
        let text: Vec<String> = counts
            .iter()
            .map(|((status, ts, retries), n)| format!("{status} {ts} retries={retries} ×{n}"))
            .collect();
        if text.is_empty() {
            "no requests".into()
        } else {
            text.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines of a real run (HAProxy 2.6, the lab's log-format).
    const LOG: &str = r#"200 -- retries=0 connect_ms=0 total_ms=1 server=lab_backend/backend "GET /?lab=1 HTTP/1.1"
503 SC retries=3 connect_ms=-1 total_ms=3005 server=lab_backend/backend "GET /?lab=4 HTTP/1.1"
503 SC retries=3 connect_ms=-1 total_ms=3004 server=lab_backend/backend "GET /?lab=5 HTTP/1.1"
503 sC retries=3 connect_ms=-1 total_ms=4004 server=lab_backend/backend "GET /?lab=6 HTTP/1.1"
200 -- retries=1 connect_ms=0 total_ms=1002 server=lab_backend/backend "GET /?lab=7 HTTP/1.1"
[WARNING]  (1234) : something HAProxy said
"#;

    #[test]
    fn log_lines_become_failed_connect_attempts() {
        let log = HaproxyLog::parse(LOG);
        assert_eq!(log.requests.len(), 5);
        assert_eq!(log.access().count(503), 3);
        assert_eq!(log.access().count(200), 2);
        let errors = log.errors();
        let kinds: Vec<(&str, u64)> = errors.kinds.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(kinds, [("ECONNREFUSED", 8), ("timeout", 4)]);
        assert_eq!(errors.total(), 12);
        assert_eq!(errors.requests[&4], "ECONNREFUSED");
        assert_eq!(errors.requests[&6], "timeout");
        assert!(!errors.requests.contains_key(&1));
        assert_eq!(errors.other.values().sum::<u64>(), 1);
        assert_eq!(
            log.summary(),
            "200 -- retries=0 ×1, 200 -- retries=1 ×1, 503 SC retries=3 ×2, 503 sC retries=3 ×1"
        );
    }
}
