//! Shared by the kernel integration tests: one agent loaded into the running kernel for the
//! whole test binary, and helpers to wait for the events a test provokes.

#![allow(dead_code)]

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use tokio::{runtime::Runtime, sync::broadcast};
use why502::{agent::Agent, config::Config, error_chain, model::event::Event};

/// Under `WHY502_TEST_TRACEPOINTS=classic`, the agent must have attached no `tp_btf`
/// program and counts responses from the write syscalls: the fallback is what is tested.
fn assert_tracepoint_mode(agent: &Agent, config: &Config) {
    use agent_common::config::Probe;
    use why502::sources::probes::{Attachment, ProbeStatus};
    let status = agent.probe_status();
    if !why502_e2e::classic_tracepoints_only() {
        // Where the kernel has BTF, the default is the tp_btf path: that is what the
        // default run tests (a binary that turns BTF off checks what it gets instead).
        if config.probes.kernel_btf && std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            assert_eq!(
                status[&Probe::InetSockSetState],
                ProbeStatus::Attached(Attachment::TpBtf)
            );
        }
        return;
    }
    for (probe, s) in status {
        assert_ne!(
            *s,
            ProbeStatus::Attached(Attachment::TpBtf),
            "{} attached as tp_btf in a classic-only run",
            probe.name()
        );
    }
    assert_eq!(
        status[&Probe::InetSockSetState],
        ProbeStatus::Attached(Attachment::Tracepoint)
    );
    assert_eq!(
        status[&Probe::SysEnterWritev],
        ProbeStatus::Attached(Attachment::Tracepoint)
    );
}

pub struct Harness {
    pub runtime: Runtime,
    pub agent: Agent,
    /// The agent's store and API socket: the test's own, not the system's.
    _dir: tempfile::TempDir,
}

static HARNESS: OnceLock<Result<Harness, String>> = OnceLock::new();

/// Label values per label the harness admits: far above what a test makes, so that
/// whatever else runs on the host cannot fold a test's own upstream into `other`.
pub const TEST_LABEL_CAP: usize = 100_000;

/// The shared agent, or `None` (with the reason printed) when this machine cannot load
/// eBPF programs: not root, or `bpf()` refused.
pub fn harness() -> Option<&'static Harness> {
    harness_with(|config| {
        config.metrics.max_upstreams = TEST_LABEL_CAP;
        config.metrics.max_proxies = TEST_LABEL_CAP;
        config.metrics.max_services = TEST_LABEL_CAP;
    })
}

/// [`harness`] with the test binary's own configuration (the first call decides: the
/// agent is shared by every test of the binary).
pub fn harness_with(configure: fn(&mut Config)) -> Option<&'static Harness> {
    let result = HARNESS.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: kernel tests need root to load eBPF programs".into());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = Config::default();
        config.store.path = dir.path().join("why502.db");
        config.api.socket = dir.path().join("why502.sock");
        config.metrics.listen = "127.0.0.1:0".parse().unwrap();
        config.metrics.sample_interval_ms = 200;
        config.probes.btf_tracepoints = !why502_e2e::classic_tracepoints_only();
        configure(&mut config);
        let agent = {
            let _guard = runtime.enter();
            Agent::start(&config, |_| {})
        };
        match agent {
            Ok(agent) => Ok({
                assert_tracepoint_mode(&agent, &config);
                Harness {
                    runtime,
                    agent,
                    _dir: dir,
                }
            }),
            Err(err) => {
                let chain = error_chain(&err);
                if chain.contains("Operation not permitted") {
                    Err(format!("bpf() refused on this machine: {chain}"))
                } else {
                    panic!("the agent failed to start: {chain}");
                }
            }
        }
    });
    match result {
        Ok(h) => Some(h),
        Err(reason) => {
            eprintln!("skipped: {reason}");
            None
        }
    }
}

impl Harness {
    /// The shared agent's API socket, for `why502 … --socket`.
    pub fn api_socket(&self) -> std::path::PathBuf {
        self._dir.path().join("why502.sock")
    }

    /// `why502 status --json` of the shared agent, through the CLI and its API.
    pub fn status_json(&self) -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_why502"))
            .args(["status", "--json", "--socket"])
            .arg(self.api_socket())
            .output()
            .expect("run why502 status");
        assert!(
            out.status.success(),
            "why502 status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("why502 status --json is JSON")
    }

    /// `why502 status` as a person reads it (no colour: not a terminal).
    pub fn status_text(&self) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_why502"))
            .args(["status", "--socket"])
            .arg(self.api_socket())
            .env("COLUMNS", "200")
            .output()
            .expect("run why502 status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.agent.bus.subscribe()
    }

    /// Waits for the first event that `matches`, failing after `timeout`.
    pub fn wait_for(
        &self,
        events: &mut broadcast::Receiver<Arc<Event>>,
        timeout: Duration,
        what: &str,
        matches: impl Fn(&Event) -> bool,
    ) -> Arc<Event> {
        self.collect(events, timeout, 1, &matches)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {what} event within {timeout:?}"))
    }

    /// Waits until each of `expected` (what, matcher) has matched an event, in whatever
    /// order the events arrive; the first match of each, in `expected`'s order. Fails
    /// after `timeout`, naming those still missing. (Waiting for them one after the other
    /// would skip an event that arrived before the one waited for first.)
    pub fn wait_for_each<const N: usize>(
        &self,
        events: &mut broadcast::Receiver<Arc<Event>>,
        timeout: Duration,
        expected: [(&str, Matcher<'_>); N],
    ) -> [Arc<Event>; N] {
        let deadline = Instant::now() + timeout;
        let mut found: [Option<Arc<Event>>; N] = std::array::from_fn(|_| None);
        self.runtime.block_on(async {
            while found.iter().any(Option::is_none) {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, events.recv()).await {
                    Ok(Ok(event)) => {
                        for (slot, (_, matches)) in found.iter_mut().zip(&expected) {
                            if slot.is_none() && matches(&event) {
                                *slot = Some(event.clone());
                            }
                        }
                    }
                    Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                        panic!("test subscriber lagged by {n} events")
                    }
                    Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => break,
                }
            }
        });
        let missing: Vec<&str> = found
            .iter()
            .zip(&expected)
            .filter(|(slot, _)| slot.is_none())
            .map(|(_, (what, _))| *what)
            .collect();
        assert!(
            missing.is_empty(),
            "no {} event within {timeout:?}",
            missing.join(", no ")
        );
        found.map(|event| event.expect("every expected event was found"))
    }

    /// Every event that `matches` within `window` (or until `limit` of them).
    pub fn collect(
        &self,
        events: &mut broadcast::Receiver<Arc<Event>>,
        window: Duration,
        limit: usize,
        matches: &dyn Fn(&Event) -> bool,
    ) -> Vec<Arc<Event>> {
        let deadline = Instant::now() + window;
        let mut found = Vec::new();
        self.runtime.block_on(async {
            while found.len() < limit {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, events.recv()).await {
                    Ok(Ok(event)) if matches(&event) => found.push(event),
                    Ok(Ok(_)) => {}
                    Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                        panic!("test subscriber lagged by {n} events")
                    }
                    Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => break,
                }
            }
        });
        found
    }
}

impl Harness {
    /// `GET /metrics` from the shared agent.
    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let addr = self.agent.metrics_addr.expect("metrics are enabled");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: why502\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_string()
    }
}

/// The value of the sample `name{labels}` in a text exposition (labels in any order).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|line| {
            let Some(rest) = line.strip_prefix(name) else {
                return false;
            };
            (rest.starts_with('{') || rest.starts_with(' '))
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// What a test waits for: whether an event is the one.
pub type Matcher<'a> = &'a dyn Fn(&Event) -> bool;

/// `f` as an event matcher: a closure with a name, usable for more than one wait.
pub fn matcher(f: impl Fn(&Event) -> bool) -> impl Fn(&Event) -> bool {
    f
}

pub fn pid_of(event: &Event) -> Option<u32> {
    event.process.as_ref().map(|p| p.pid)
}

pub fn is_kind(event: &Event, kind: &str) -> bool {
    event.detail.kind() == kind
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    // Bound but never listening, and kept for the test process's life: a connect to it is
    // refused, and no other process (the agent's own metrics port, say) can take the port
    // meanwhile, as one freed right after binding could be.
    // SAFETY: plain socket calls on a socket this function owns; the address is a valid
    // sockaddr_in of the size given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let bound = libc::bind(fd, (&raw const addr).cast(), len);
        assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
        let mut len = len;
        let named = libc::getsockname(fd, (&raw mut addr).cast(), &mut len);
        assert_eq!(named, 0, "getsockname: {}", std::io::Error::last_os_error());
        u16::from_be(addr.sin_port)
    }
}
