//! The 502 lab: fault-injection scenarios, each a real nginx in front of small backends, a
//! client producing a bounded load, and one injected fault; the harness's agent watching.
//!
//! A [`Lab`] starts an agent of its own and a [`Topology`] (nginx, backends, and where the
//! scenario needs them a network namespace or a memory cgroup), drives the load and
//! injects the fault, then gathers an [`Outcome`]: what the client got, what nginx logged,
//! what the agent made of it. [`Outcome::failed_checks`] holds the scenario to its
//! expectations. Everything is torn down on drop, also when a check or a step panics.
//!
//! `cargo xtask lab` and `tests/tests/lab.rs` run the same code.

mod backend;
mod client;
mod front;
mod haproxy;
mod logs;
mod metrics;
mod nginx;
mod outcome;
mod phpfpm;
mod topology;

use std::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

pub use backend::DetachedBackend;
pub use client::{Client, Exchange};
pub use front::Front;
pub use haproxy::{HaproxyLog, LabHaproxy};
pub use logs::{AccessLog, ErrorLog};
pub use nginx::{LabNginx, NginxSpec};
pub use outcome::Outcome;
pub use phpfpm::{FastcgiNginx, LabPhpFpm, PhpFpmLog};
pub use topology::Topology;

use crate::agent::Agent;

/// One fault-injection scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Crash,
    Oom,
    Deploy,
    WrongPort,
    MissingUnixSocket,
    UnixBacklogFull,
    TcpBacklogOverflow,
    FirewallReject,
    FirewallDrop,
    KeepaliveRace,
    PortExhaustion,
    Healthy,
    QuietSite,
    SlowBackend,
    ClosesWithoutAnswer,
    WorkerCrashMidRequest,
    HealthyLow,
    HealthyHigh,
    HaproxyRetries,
    PhpfpmOomUnix,
    PhpfpmRequestTimeout,
    NoUpstreamConnect,
    ProxyStartedFirst,
}

/// nginx's error.log message for a request it could not send anywhere: every server of its
/// upstream block is down (what [`logs::ErrorLog`] files under `other`).
pub const NO_LIVE_UPSTREAMS: &str = "no live upstreams while connecting to upstream";

/// The upstream the agent gives an incident of 5xx responses with no upstream failure
/// (`why502::model::incident::NO_UPSTREAM`; the tests crate cannot depend on the agent's,
/// which depends on it for its tests). A rename in the agent fails the `responses_only`
/// scenarios: their incident is looked up by it.
pub const NO_UPSTREAM: &str = "(no upstream failure)";

/// Which process the top cause must name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Culprit {
    /// The (first) backend: the listener's owner.
    Backend,
    /// nginx's worker: the proxy itself ran out of something.
    Proxy,
    /// No process: nothing ever listened there.
    Nobody,
    /// One of the workers the lab killed: a child of the first backend (which owns the
    /// listener and stays alive).
    Worker,
}

impl Scenario {
    pub const ALL: [Scenario; 23] = [
        Scenario::Crash,
        Scenario::Oom,
        Scenario::Deploy,
        Scenario::WrongPort,
        Scenario::MissingUnixSocket,
        Scenario::UnixBacklogFull,
        Scenario::TcpBacklogOverflow,
        Scenario::FirewallReject,
        Scenario::FirewallDrop,
        Scenario::KeepaliveRace,
        Scenario::PortExhaustion,
        Scenario::Healthy,
        Scenario::QuietSite,
        Scenario::SlowBackend,
        Scenario::ClosesWithoutAnswer,
        Scenario::WorkerCrashMidRequest,
        Scenario::HealthyLow,
        Scenario::HealthyHigh,
        Scenario::HaproxyRetries,
        Scenario::PhpfpmOomUnix,
        Scenario::PhpfpmRequestTimeout,
        Scenario::NoUpstreamConnect,
        Scenario::ProxyStartedFirst,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Crash => "crash",
            Scenario::Oom => "oom",
            Scenario::Deploy => "deploy",
            Scenario::WrongPort => "wrong_port",
            Scenario::MissingUnixSocket => "missing_unix_socket",
            Scenario::UnixBacklogFull => "unix_backlog_full",
            Scenario::TcpBacklogOverflow => "tcp_backlog_overflow",
            Scenario::FirewallReject => "firewall_reject",
            Scenario::FirewallDrop => "firewall_drop",
            Scenario::KeepaliveRace => "keepalive_race",
            Scenario::PortExhaustion => "port_exhaustion",
            Scenario::Healthy => "healthy",
            Scenario::QuietSite => "quiet_site",
            Scenario::SlowBackend => "slow_backend",
            Scenario::ClosesWithoutAnswer => "closes_without_answer",
            Scenario::WorkerCrashMidRequest => "worker_crash_mid_request",
            Scenario::HealthyLow => "healthy_low",
            Scenario::HealthyHigh => "healthy_high",
            Scenario::HaproxyRetries => "haproxy_retries",
            Scenario::PhpfpmOomUnix => "phpfpm_oom_unix",
            Scenario::PhpfpmRequestTimeout => "phpfpm_request_timeout",
            Scenario::NoUpstreamConnect => "no_upstream_connect",
            Scenario::ProxyStartedFirst => "proxy_started_first",
        }
    }

    /// The scenario called `name` (`-` and `_` alike).
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.replace('-', "_");
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn description(self) -> &'static str {
        match self {
            Scenario::Crash => "the backend is killed by SIGSEGV under load",
            Scenario::Oom => {
                "the backend, in a 64 MiB memory cgroup, is OOM-killed by a request (GET /alloc)"
            }
            Scenario::Deploy => {
                "the backend gets SIGTERM and is started again 2 s later (its parent is init, as \
                 under a service manager)"
            }
            Scenario::WrongPort => "proxy_pass to a TCP port nobody ever listened on",
            Scenario::MissingUnixSocket => "proxy_pass to a unix socket that never existed",
            Scenario::UnixBacklogFull => {
                "a unix-socket backend with listen backlog 1 that never accepts: connect() EAGAIN"
            }
            Scenario::TcpBacklogOverflow => {
                "a TCP backend with listen backlog 1 that never accepts: SYNs dropped, nginx \
                 times out connecting (504)"
            }
            Scenario::FirewallReject => {
                "in a network namespace, iptables REJECT --reject-with tcp-reset on the live \
                 backend's port"
            }
            Scenario::FirewallDrop => {
                "in a network namespace, iptables DROP on the live backend's port: SYN \
                 retransmits, 504"
            }
            Scenario::KeepaliveRace => {
                "nginx upstream keepalive; the backend drops connections idle for more than 1 s \
                 as the next request arrives: POSTs on reused connections are reset"
            }
            Scenario::PortExhaustion => {
                "in a network namespace with ip_local_port_range 40000-40007, 24 parallel slow \
                 requests: connect() EADDRNOTAVAIL"
            }
            Scenario::Healthy => "steady load, no fault",
            Scenario::QuietSite => {
                "a quiet site (1 request per second): the backend is killed by SIGSEGV"
            }
            Scenario::SlowBackend => {
                "proxy_read_timeout 2s; the backend answers GET /slow/3000 after 3 s: nginx \
                 gives up first (504)"
            }
            Scenario::ClosesWithoutAnswer => {
                "the backend reads GET /close and closes the connection without answering (FIN): \
                 nginx says the upstream prematurely closed it (502)"
            }
            Scenario::WorkerCrashMidRequest => {
                "a pre-forking backend (a master and 4 workers on its socket): the 3 workers \
                 serving GET /slow/8000 get SIGSEGV mid-request; the master keeps listening and \
                 forks new ones"
            }
            Scenario::HealthyLow => {
                "1 request per second for 10 s; the backend closes one request in 10 without \
                 answering: 1 failure, below the threshold"
            }
            Scenario::HealthyHigh => {
                "50 requests per second for 10 s; the backend closes one request in 150 without \
                 answering: 3 failures, 0.6 % of the attempts, below the failure ratio that \
                 opens an incident (1 %)"
            }
            Scenario::HaproxyRetries => {
                "HAProxy (retries 3, timeout connect 1s) in front of the backend, killed by \
                 SIGSEGV under 2 requests per second: each refused connect is retried after 1 s, \
                 then 503 (termination state SC)"
            }
            Scenario::PhpfpmOomUnix => {
                "nginx fastcgi_pass to php-fpm on a unix socket (pm static, 3 workers, all in a \
                 64 MiB memory cgroup); GET /alloc.php builds a 200 MiB string: its worker is \
                 OOM-killed mid-request (502), 5 times"
            }
            Scenario::PhpfpmRequestTimeout => {
                "nginx fastcgi_pass to php-fpm on a unix socket with request_terminate_timeout \
                 2s; GET /sleep.php sleeps 5 s: the master kills its worker (SIGTERM) \
                 mid-request (502), 5 times"
            }
            Scenario::NoUpstreamConnect => {
                "nginx's only upstream server is marked down: every request gets 502 (\"no live \
                 upstreams\") without a connect; nginx is started after the agent, marked a \
                 proxy at exec"
            }
            Scenario::ProxyStartedFirst => {
                "as no_upstream_connect, but nginx is started before the agent: only the \
                 agent's marking of the proxies running at start-up makes its 502s counted"
            }
        }
    }

    /// The causes the incident's top explanation may have; empty: no incident at all.
    pub fn expected_causes(self) -> &'static [&'static str] {
        match self {
            Scenario::Crash => &["crash"],
            Scenario::Oom => &["oom_kill"],
            Scenario::Deploy => &["restart"],
            Scenario::WrongPort | Scenario::MissingUnixSocket => &["wrong_port"],
            Scenario::UnixBacklogFull => &["unix_backlog_full"],
            // Not `syn_timeout`: the lab waits until the agent has reported the full accept
            // queue before the load (see `drive::wait_for_full_queue`).
            Scenario::TcpBacklogOverflow => &["overload"],
            Scenario::FirewallReject => &["firewall_reject"],
            Scenario::FirewallDrop => &["syn_timeout"],
            Scenario::KeepaliveRace => &["connection_resets"],
            Scenario::PortExhaustion => &["port_exhaustion"],
            Scenario::QuietSite | Scenario::WorkerCrashMidRequest => &["crash"],
            Scenario::SlowBackend => &["slow_upstream"],
            Scenario::ClosesWithoutAnswer => &["upstream_closed"],
            Scenario::Healthy | Scenario::HealthyLow | Scenario::HealthyHigh => &[],
            Scenario::HaproxyRetries => &["crash"],
            Scenario::PhpfpmOomUnix => &["oom_kill"],
            Scenario::PhpfpmRequestTimeout => &["killed_by_parent"],
            Scenario::NoUpstreamConnect | Scenario::ProxyStartedFirst => &["no_upstream_connect"],
        }
    }

    /// Which process the top cause names.
    pub fn culprit(self) -> Culprit {
        match self {
            Scenario::WrongPort
            | Scenario::MissingUnixSocket
            | Scenario::Healthy
            | Scenario::HealthyLow
            | Scenario::HealthyHigh => Culprit::Nobody,
            // The cause of 5xx with no failure names the proxy that answered them.
            Scenario::PortExhaustion
            | Scenario::NoUpstreamConnect
            | Scenario::ProxyStartedFirst => Culprit::Proxy,
            Scenario::WorkerCrashMidRequest
            | Scenario::PhpfpmOomUnix
            | Scenario::PhpfpmRequestTimeout => Culprit::Worker,
            _ => Culprit::Backend,
        }
    }

    /// The HTTP status the proxy answers with while the fault lasts.
    pub fn failure_status(self) -> Option<u16> {
        match self {
            Scenario::HaproxyRetries => Some(503),
            Scenario::TcpBacklogOverflow | Scenario::FirewallDrop | Scenario::SlowBackend => {
                Some(504)
            }
            Scenario::Healthy | Scenario::HealthyLow | Scenario::HealthyHigh => None,
            _ => Some(502),
        }
    }

    /// The failures nginx's error.log may show (by the agent's kind names, see
    /// `logs::failure_kind`), when the scenario says; empty: not checked.
    pub fn logged_failure_kinds(self) -> &'static [&'static str] {
        match self {
            Scenario::QuietSite => &["ECONNREFUSED"],
            Scenario::SlowBackend => &["response_timeout"],
            Scenario::ClosesWithoutAnswer | Scenario::HealthyLow | Scenario::HealthyHigh => {
                &["closed_before_response"]
            }
            // The killed worker's kernel closes the connection: a FIN, or a reset if nginx
            // had sent more than the worker read.
            Scenario::WorkerCrashMidRequest => &["closed_before_response", "reset"],
            // What HAProxy's log accounts for: SC, every attempt refused.
            Scenario::HaproxyRetries => &["ECONNREFUSED"],
            // nginx's view of a php-fpm worker dying mid-request: `recv() failed (104: …)`
            // (a reset: the worker left the request's last bytes unread), or a FIN.
            Scenario::PhpfpmOomUnix | Scenario::PhpfpmRequestTimeout => {
                &["reset", "closed_before_response"]
            }
            // Only nginx's own refusal, never a connect (see `Scenario::responses_only`).
            Scenario::NoUpstreamConnect | Scenario::ProxyStartedFirst => &[NO_LIVE_UPSTREAMS],
            _ => &[],
        }
    }

    /// Whether the proxy's 5xx come with no upstream failure at all (no connect is
    /// attempted): the agent's incident is one of responses alone, with no upstream of its
    /// own ([`NO_UPSTREAM`]), no failure kinds, and opens after the responses' grace.
    pub fn responses_only(self) -> bool {
        matches!(
            self,
            Scenario::NoUpstreamConnect | Scenario::ProxyStartedFirst
        )
    }

    /// Whether nginx (and its backends) run before the agent starts: then no exec of a
    /// known proxy is seen, and only the agent's marking at start-up makes nginx a proxy
    /// whose responses the kernel counts.
    pub fn starts_proxy_first(self) -> bool {
        self == Scenario::ProxyStartedFirst
    }

    /// Whether the incident's `failure_kinds` and `failures` are held to the proxy's log of
    /// upstream errors. Not for a worker dying mid-request behind a unix socket: the kernel
    /// has no end tracking of unix connections, so what the agent sees of it is the proxy's
    /// 5xx (the incident's `responses`, checked against access.log) and the worker's death
    /// (the cause), not a failure kind per request.
    pub fn compares_failure_kinds(self) -> bool {
        !matches!(
            self,
            Scenario::PhpfpmOomUnix | Scenario::PhpfpmRequestTimeout
        )
    }

    /// The failed responses (502) a scenario without a fault makes on purpose: its
    /// upstream's occasional, expected failures, too few (`healthy_low`: fewer than
    /// `incidents.open_threshold`) or too small a share of its attempts (`healthy_high`:
    /// under `incidents.min_failure_ratio`) to open an incident.
    pub fn occasional_failures(self) -> u64 {
        match self {
            Scenario::HealthyLow => 1,
            Scenario::HealthyHigh => 3,
            _ => 0,
        }
    }

    /// Requests per second of the scenario's steady load.
    pub fn rate(self) -> u32 {
        match self {
            Scenario::QuietSite | Scenario::HealthyLow => 1,
            Scenario::HealthyHigh => 50,
            Scenario::SlowBackend => 4,
            Scenario::ClosesWithoutAnswer => 5,
            Scenario::WorkerCrashMidRequest => 10,
            // Low load: HAProxy's retries take 3 s per request.
            Scenario::HaproxyRetries | Scenario::PhpfpmOomUnix | Scenario::PhpfpmRequestTimeout => {
                2
            }
            _ => RATE,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A run stopped early by [`request_stop`] (Ctrl-C in `cargo xtask lab`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks the running lab to stop at its next step (async-signal-safe: one atomic store).
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Sleeps `d`, in short steps so that a stop request ends it early.
pub fn pause(d: Duration) -> Result<(), Interrupted> {
    let deadline = Instant::now() + d;
    loop {
        if stop_requested() {
            return Err(Interrupted);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

/// Says what the lab does, with the time since it started (on stdout: captured by the test
/// harness, shown by `cargo xtask lab`).
#[derive(Debug, Clone, Copy)]
pub struct Narrator {
    start: Instant,
}

impl Narrator {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    pub fn say(&self, what: impl fmt::Display) {
        println!("[{:6.2}s] {what}", self.start.elapsed().as_secs_f64());
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Default for Narrator {
    fn default() -> Self {
        Self::new()
    }
}

/// Requests per second of the steady load, unless the scenario has a rate of its own
/// ([`Scenario::rate`]).
pub const RATE: u32 = 20;

/// One scenario's agent and topology.
pub struct Lab {
    pub scenario: Scenario,
    // Dropped in this order: the topology (nginx, backends, netns, cgroup), then the agent.
    pub topology: Topology,
    pub agent: Agent,
    pub narrator: Narrator,
}

impl Lab {
    /// Starts an agent, then the scenario's topology, and checks that nginx answers.
    pub fn start(scenario: Scenario) -> Result<Self, Interrupted> {
        let narrator = Narrator::new();
        narrator.say(format!("scenario {scenario}: {}", scenario.description()));
        let start_agent = || {
            narrator.say("starting the why502 agent (its own store, socket and metrics port)");
            let agent = Agent::start();
            narrator.say(format!(
                "agent running: socket {}, metrics http://{}/metrics",
                agent.socket().display(),
                agent.metrics_addr()
            ));
            agent
        };
        let (agent, topology) = if scenario.starts_proxy_first() {
            let topology = Topology::build(scenario, &narrator)?;
            if stop_requested() {
                return Err(Interrupted);
            }
            (start_agent(), topology)
        } else {
            let agent = start_agent();
            if stop_requested() {
                return Err(Interrupted);
            }
            (agent, Topology::build(scenario, &narrator)?)
        };
        Ok(Self {
            scenario,
            topology,
            agent,
            narrator,
        })
    }

    /// Injects the scenario's fault. Faults that are configuration (a wrong port, a full
    /// backlog) are in place from the start; this says so (and fills the backlogs).
    pub fn inject(&mut self) -> Result<Vec<Exchange>, Interrupted> {
        self.topology.inject(self.scenario, &self.narrator)
    }

    /// A steady load of GET / at the scenario's rate for `duration`, in the background.
    pub fn load(&self, duration: Duration) -> client::SteadyLoad {
        self.load_on("/", duration)
    }

    /// A steady load of GET `path` at the scenario's rate ([`Scenario::rate`]) for
    /// `duration`, in the background.
    pub fn load_on(&self, path: &str, duration: Duration) -> client::SteadyLoad {
        let rate = self.scenario.rate();
        let count = (f64::from(rate) * duration.as_secs_f64()).round() as u32;
        self.narrator.say(format!(
            "load: {count} requests GET {path} at {rate}/s over {:.1} s",
            duration.as_secs_f64()
        ));
        self.topology.client.steady(rate, count, "GET", path)
    }

    /// Runs the scenario (load, fault, settling) and gathers its outcome; the lab is torn
    /// down when this returns.
    pub fn run(mut self) -> Result<Outcome, Interrupted> {
        outcome::exercise(&mut self)
    }
}

/// Runs `scenario` from start to teardown.
pub fn run(scenario: Scenario) -> Result<Outcome, Interrupted> {
    Lab::start(scenario)?.run()
}
