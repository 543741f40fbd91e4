//! What a scenario runs: the proxy in front (nginx, or nginx passing to php-fpm, or
//! HAProxy), its backends (or php-fpm), and where needed a network namespace (with its
//! firewall rules and sysctls) or a memory cgroup. Torn down on drop, in order: the proxy,
//! php-fpm, the backends, the connections filling a backlog, the namespace (iptables rules
//! and sysctls live in it and vanish with it), the cgroup, the files.

use std::{
    net::{Ipv4Addr, TcpStream},
    os::fd::{AsRawFd, FromRawFd},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

use super::{
    backend::DetachedBackend,
    client::{Client, Exchange},
    front::Front,
    haproxy::{LabHaproxy, CONNECT_TIMEOUT_MS, RETRIES},
    nginx::{LabNginx, NginxSpec, READ_TIMEOUT_S},
    pause,
    phpfpm::{
        FastcgiNginx, LabPhpFpm, PhpFpmLog, PoolSpec, ALLOC_MIB, CGROUP_LIMIT,
        FASTCGI_READ_TIMEOUT_S, SLEEP_S,
    },
    Interrupted, Narrator, Scenario,
};
use crate::{cgroup::MemoryCgroup, netns::Netns};

/// The ephemeral port range of the port-exhaustion namespace: 8 ports.
pub const PORT_RANGE: &str = "40000 40007";
/// Parallel slow requests of the port-exhaustion scenario (more than the range has ports).
pub const EXHAUSTION_REQUESTS: usize = 24;
/// How long each of them holds its upstream connection.
pub const SLOW_MS: u64 = 1500;
/// Upstream connections nginx keeps idle in the keepalive scenario.
pub const KEEPALIVE: u32 = 8;
/// The keepalive scenario's backend closes connections idle for longer than this.
pub const BACKEND_IDLE_MS: u64 = 1000;
/// The slow-backend scenario's `proxy_read_timeout`, and how long its backend takes. (Not
/// 1 s: nginx's timers run on its cached clock and can fire a few ms early, and the
/// agent's `probes.response_timeout_ms`, 1 s, is the least wait it calls giving up.)
pub const SLOW_READ_TIMEOUT_S: u32 = 2;
pub const SLOW_BACKEND_MS: u64 = 3000;
/// The pre-forking backend's workers, how many of them the lab kills mid-request, and how
/// long their requests would take (nginx waits longer: `proxy_read_timeout`
/// [`WORKER_READ_TIMEOUT_S`]).
pub const WORKERS: u32 = 4;
pub const KILLED_WORKERS: usize = 3;
pub const WORKER_SLOW_MS: u64 = 8000;
pub const WORKER_READ_TIMEOUT_S: u32 = 10;
/// The controls' backends close one request in this many without answering.
pub const HEALTHY_LOW_CLOSE_EVERY: u64 = 10;
pub const HEALTHY_HIGH_CLOSE_EVERY: u64 = 150;
/// Requests of the php-fpm scenarios that each get their worker killed.
pub const PHP_FAULTS: usize = 5;
/// The request-timeout scenario's pool: a worker for each slow request and one more, and
/// its `request_terminate_timeout`.
pub const PHPFPM_TIMEOUT_CHILDREN: u32 = PHP_FAULTS as u32 + 1;
pub const PHPFPM_TERMINATE_TIMEOUT_S: u32 = 2;

/// Connections that fill a backlog (held until teardown).
enum Filler {
    Tcp(#[allow(dead_code)] TcpStream),
    Unix(#[allow(dead_code)] UnixStream),
}

// Fields drop in declaration order, which is the teardown order.
pub struct Topology {
    /// The proxy the client talks to.
    pub front: Front,
    /// The php-fpm behind nginx, for the php-fpm scenarios.
    pub phpfpm: Option<LabPhpFpm>,
    /// The first is the one the fault hits; a restarted backend comes after it.
    pub backends: Vec<DetachedBackend>,
    fillers: Vec<Filler>,
    pub netns: Option<Netns>,
    pub cgroup: Option<MemoryCgroup>,
    pub dir: tempfile::TempDir,
    /// nginx's upstream as the agent names it: `127.0.0.1:PORT` or `unix:/path`.
    pub upstream: String,
    /// Workers of the (pre-forking) first backend the fault killed.
    pub killed_workers: Vec<u32>,
    pub backend_port: u16,
    pub client: Client,
}

impl Topology {
    pub fn build(scenario: Scenario, say: &Narrator) -> Result<Self, Interrupted> {
        let dir = tempfile::Builder::new()
            .prefix("why502-lab-")
            .tempdir()
            .expect("temporary directory");
        // Distinct ports for every scenario, also inside a namespace: the agent's listener
        // table does not tell namespaces apart.
        let nginx_port = unlistened_port();
        let backend_port = loop {
            let port = unlistened_port();
            if port != nginx_port {
                break port;
            }
        };
        let tcp_upstream = format!("127.0.0.1:{backend_port}");
        let netns = match scenario {
            Scenario::FirewallReject | Scenario::FirewallDrop | Scenario::PortExhaustion => {
                let ns = Netns::new(&format!("lab-{scenario}"));
                say.say(format!(
                    "network namespace {} (loopback up): nginx, backend and client all inside",
                    ns.name
                ));
                Some(ns)
            }
            _ => None,
        };
        if scenario == Scenario::PortExhaustion {
            let ns = netns.as_ref().expect("namespace");
            ns.exec(&[
                "sysctl",
                "-w",
                &format!("net.ipv4.ip_local_port_range={PORT_RANGE}"),
            ]);
            say.say(format!(
                "in the namespace: sysctl net.ipv4.ip_local_port_range=\"{PORT_RANGE}\" (8 local ports)"
            ));
        }
        let cgroup = match scenario {
            Scenario::Oom => Some(64 << 20),
            Scenario::PhpfpmOomUnix => Some(CGROUP_LIMIT),
            _ => None,
        }
        .map(|limit: u64| {
            let cgroup = MemoryCgroup::new(&format!("lab-{}", nginx_port), limit);
            say.say(format!(
                "memory cgroup {} limited to {} MiB, no swap",
                cgroup.procs().parent().unwrap().display(),
                limit >> 20
            ));
            cgroup
        });

        let unix_socket = |name: &str| format!("unix:{}", dir.path().join(name).display());
        let (upstream, backend_args): (String, Option<Vec<String>>) = match scenario {
            Scenario::Crash
            | Scenario::Deploy
            | Scenario::Healthy
            | Scenario::QuietSite
            | Scenario::ClosesWithoutAnswer => (tcp_upstream.clone(), Some(vec![])),
            Scenario::SlowBackend => (
                tcp_upstream.clone(),
                Some(vec![
                    "--busy-dir".into(),
                    busy_dir(dir.path()).display().to_string(),
                ]),
            ),
            Scenario::WorkerCrashMidRequest => (
                tcp_upstream.clone(),
                Some(vec![
                    "--workers".into(),
                    WORKERS.to_string(),
                    "--busy-dir".into(),
                    busy_dir(dir.path()).display().to_string(),
                ]),
            ),
            Scenario::HealthyLow | Scenario::HealthyHigh => (
                tcp_upstream.clone(),
                Some(vec![
                    "--close-every".into(),
                    if scenario == Scenario::HealthyLow {
                        HEALTHY_LOW_CLOSE_EVERY
                    } else {
                        HEALTHY_HIGH_CLOSE_EVERY
                    }
                    .to_string(),
                ]),
            ),
            Scenario::FirewallReject | Scenario::FirewallDrop | Scenario::PortExhaustion => {
                (tcp_upstream.clone(), Some(vec![]))
            }
            Scenario::Oom => {
                let procs = cgroup.as_ref().expect("cgroup").procs();
                (
                    tcp_upstream.clone(),
                    Some(vec!["--join-cgroup".into(), procs.display().to_string()]),
                )
            }
            Scenario::WrongPort => (tcp_upstream.clone(), None),
            // nginx never connects: no backend, and the agent files the incident under no
            // upstream (nginx's config still names the down server, `nginx_upstream`).
            Scenario::NoUpstreamConnect | Scenario::ProxyStartedFirst => {
                (super::NO_UPSTREAM.to_string(), None)
            }
            // php-fpm, not a test backend.
            Scenario::PhpfpmOomUnix | Scenario::PhpfpmRequestTimeout => {
                (unix_socket("php-fpm/php.sock"), None)
            }
            Scenario::HaproxyRetries => (tcp_upstream.clone(), Some(vec![])),
            Scenario::MissingUnixSocket => (unix_socket("missing.sock"), None),
            Scenario::UnixBacklogFull => (
                unix_socket("backend.sock"),
                Some(vec!["--backlog".into(), "1".into(), "--no-accept".into()]),
            ),
            Scenario::TcpBacklogOverflow => (
                tcp_upstream.clone(),
                Some(vec!["--backlog".into(), "1".into(), "--no-accept".into()]),
            ),
            Scenario::KeepaliveRace => (
                tcp_upstream.clone(),
                Some(vec![
                    "--keepalive-idle-ms".into(),
                    BACKEND_IDLE_MS.to_string(),
                ]),
            ),
        };

        let mut backends = Vec::new();
        let mut phpfpm = None;
        if matches!(
            scenario,
            Scenario::WorkerCrashMidRequest | Scenario::SlowBackend
        ) {
            std::fs::create_dir(busy_dir(dir.path())).expect("the backend's busy directory");
        }
        if let Some(args) = backend_args {
            let backend =
                DetachedBackend::start(&upstream, &args, netns.as_ref(), dir.path(), "backend");
            say.say(format!(
                "backend why502-test-backend{}{} on {upstream}: pid {} (parent pid {}: detached \
                 with setsid -f)",
                if args.is_empty() { "" } else { " " },
                args.join(" "),
                backend.pid,
                backend
                    .ppid()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "?".into())
            ));
            if scenario == Scenario::WorkerCrashMidRequest {
                let workers = wait_for_workers(&backend);
                say.say(format!(
                    "its workers (children of pid {}, accepting on its socket): {workers:?}",
                    backend.pid
                ));
            }
            backends.push(backend);
        } else if matches!(
            scenario,
            Scenario::PhpfpmOomUnix | Scenario::PhpfpmRequestTimeout
        ) {
            let spec = PoolSpec {
                children: if scenario == Scenario::PhpfpmOomUnix {
                    3
                } else {
                    PHPFPM_TIMEOUT_CHILDREN
                },
                request_terminate_timeout_s: (scenario == Scenario::PhpfpmRequestTimeout)
                    .then_some(PHPFPM_TERMINATE_TIMEOUT_S),
                cgroup_procs: cgroup.as_ref().map(|c| c.procs()),
            };
            let fpm = LabPhpFpm::start(spec, &dir.path().join("php-fpm"));
            assert_eq!(fpm.upstream(), upstream, "php-fpm's socket");
            say.say(format!(
                "php-fpm {} -F -R: master pid {} (the lab's child{}), pm static, workers {:?}{}, \
                 listening on {upstream}",
                super::phpfpm::binary().display(),
                fpm.master_pid(),
                if fpm.spec.cgroup_procs.is_some() {
                    ", in the memory cgroup with its workers"
                } else {
                    ""
                },
                fpm.initial_workers,
                fpm.spec
                    .request_terminate_timeout_s
                    .map(|s| format!(", request_terminate_timeout {s}s"))
                    .unwrap_or_default(),
            ));
            phpfpm = Some(fpm);
        } else if scenario.responses_only() {
            say.say(format!(
                "no backend: nginx's upstream server {tcp_upstream} is marked down"
            ));
        } else {
            say.say(format!("no backend: nothing ever listens on {upstream}"));
        }

        let hosts = if scenario == Scenario::PortExhaustion {
            // The client's own connections come from the same 8 ports: spread them over 8
            // addresses of nginx's, each a 4-tuple space of its own.
            (1..=8).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect()
        } else {
            vec![Ipv4Addr::LOCALHOST]
        };
        let client = Client::new(netns.as_ref().map(|ns| ns.name.clone()), hosts, nginx_port);
        let prefix: PathBuf = dir.path().join("nginx");
        let front = if scenario == Scenario::HaproxyRetries {
            let haproxy =
                LabHaproxy::start(nginx_port, &upstream, &dir.path().join("haproxy"), &client);
            say.say(format!(
                "haproxy 127.0.0.1:{nginx_port} → {upstream} (retries {RETRIES}, timeout connect \
                 {CONNECT_TIMEOUT_MS} ms, no health checks; pid {}; config {})",
                haproxy.pid(),
                haproxy.config_path().display()
            ));
            Front::Haproxy(haproxy)
        } else if let Some(fpm) = &phpfpm {
            let nginx = FastcgiNginx::start(nginx_port, fpm, &prefix, &client);
            say.say(format!(
                "nginx 127.0.0.1:{nginx_port} → fastcgi_pass {upstream} (fastcgi_read_timeout \
                 {FASTCGI_READ_TIMEOUT_S}s; {}; prefix {})",
                nginx.pids(),
                prefix.display()
            ));
            Front::Fastcgi(nginx)
        } else {
            let spec = NginxSpec {
                upstream: if scenario.responses_only() {
                    tcp_upstream.clone()
                } else {
                    upstream.clone()
                },
                down: scenario.responses_only(),
                port: nginx_port,
                any_address: netns.is_some(),
                keepalive: (scenario == Scenario::KeepaliveRace).then_some(KEEPALIVE),
                read_timeout_s: match scenario {
                    Scenario::SlowBackend => SLOW_READ_TIMEOUT_S,
                    Scenario::WorkerCrashMidRequest => WORKER_READ_TIMEOUT_S,
                    _ => READ_TIMEOUT_S,
                },
            };
            let nginx = LabNginx::start(spec, &prefix, netns.as_ref(), &client);
            say.say(format!(
                "nginx {}:{nginx_port} → {}{}{} ({}; prefix {})",
                if netns.is_some() { "*" } else { "127.0.0.1" },
                if nginx.spec.down {
                    format!("{} (down)", nginx.spec.upstream)
                } else {
                    nginx.spec.upstream.clone()
                },
                if scenario == Scenario::KeepaliveRace {
                    format!(" with upstream keepalive {KEEPALIVE}, HTTP/1.1")
                } else {
                    String::new()
                },
                if nginx.spec.read_timeout_s == READ_TIMEOUT_S && scenario != Scenario::SlowBackend
                {
                    String::new()
                } else {
                    format!(", proxy_read_timeout {}s", nginx.spec.read_timeout_s)
                },
                nginx.pids(),
                prefix.display()
            ));
            Front::Nginx(nginx)
        };
        Ok(Self {
            front,
            phpfpm,
            backends,
            fillers: Vec::new(),
            netns,
            cgroup,
            dir,
            upstream,
            killed_workers: Vec::new(),
            backend_port,
            client,
        })
    }

    /// The backend the fault hits.
    pub fn backend(&self) -> Option<&DetachedBackend> {
        self.backends.first()
    }

    /// Injects `scenario`'s fault; the requests it made for that.
    pub fn inject(
        &mut self,
        scenario: Scenario,
        say: &Narrator,
    ) -> Result<Vec<Exchange>, Interrupted> {
        let mut made = Vec::new();
        match scenario {
            Scenario::Crash | Scenario::QuietSite | Scenario::HaproxyRetries => {
                let backend = self.backend().expect("backend");
                say.say(format!("inject: kill -SEGV {}", backend.pid));
                backend.signal(libc::SIGSEGV);
                assert!(
                    backend.wait_gone(Duration::from_secs(5)),
                    "backend survived SIGSEGV"
                );
            }
            Scenario::Oom => {
                say.say("inject: GET /alloc (512 MiB in a 64 MiB cgroup)");
                let exchange = self.client.request("GET", "/alloc");
                let backend = self.backend().expect("backend");
                say.say(format!(
                    "GET /alloc → {}; backend pid {} {}",
                    status_text(&exchange.status),
                    backend.pid,
                    if backend.wait_gone(Duration::from_secs(10)) {
                        "is gone"
                    } else {
                        "STILL RUNS"
                    }
                ));
                made.push(exchange);
            }
            Scenario::Deploy => {
                let backend = self.backend().expect("backend");
                say.say(format!(
                    "inject: kill -TERM {} (the deploy stops it)",
                    backend.pid
                ));
                backend.signal(libc::SIGTERM);
                assert!(
                    backend.wait_gone(Duration::from_secs(5)),
                    "backend survived SIGTERM"
                );
            }
            Scenario::WrongPort | Scenario::MissingUnixSocket => {
                say.say(format!(
                    "inject: nothing to do, nginx points at {} from the start",
                    self.upstream
                ));
            }
            Scenario::UnixBacklogFull => {
                let path = self.upstream.trim_start_matches("unix:").to_string();
                for _ in 0..2 {
                    let stream = UnixStream::connect(&path).expect("fill the unix backlog");
                    self.fillers.push(Filler::Unix(stream));
                }
                say.say(format!(
                    "inject: 2 connections to {path} left unaccepted: its backlog of 1 is full"
                ));
            }
            Scenario::TcpBacklogOverflow => {
                for _ in 0..2 {
                    let stream = TcpStream::connect_timeout(
                        &([127, 0, 0, 1], self.backend_port).into(),
                        Duration::from_secs(2),
                    )
                    .expect("fill the accept queue");
                    self.fillers.push(Filler::Tcp(stream));
                }
                say.say(format!(
                    "inject: 2 connections to {} left unaccepted: its accept queue (backlog 1) is full",
                    self.upstream
                ));
            }
            Scenario::FirewallReject | Scenario::FirewallDrop => {
                let ns = self.netns.as_ref().expect("namespace");
                let port = self.backend_port.to_string();
                let mut rule = vec!["iptables", "-A", "INPUT", "-p", "tcp", "--dport", &port];
                if scenario == Scenario::FirewallReject {
                    rule.extend(["-j", "REJECT", "--reject-with", "tcp-reset"]);
                } else {
                    rule.extend(["-j", "DROP"]);
                }
                ns.exec(&rule);
                say.say(format!("inject: in the namespace: {}", rule.join(" ")));
            }
            Scenario::KeepaliveRace | Scenario::PortExhaustion => {
                say.say("inject: nothing to do, the fault is in the traffic pattern");
            }
            Scenario::SlowBackend | Scenario::ClosesWithoutAnswer => {
                say.say("inject: nothing to do, the fault is the backend's answer to the load");
            }
            Scenario::WorkerCrashMidRequest => {
                let backend = self.backend().expect("backend");
                let busy = busy_dir(self.dir.path());
                // The requests are in flight: wait until as many workers say they serve one.
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                let workers = loop {
                    let workers = backend.busy_workers(&busy);
                    if workers.len() >= KILLED_WORKERS {
                        break workers;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "only {} of the backend's workers serve GET /slow after 5 s ({workers:?})",
                        workers.len()
                    );
                    pause(Duration::from_millis(10))?;
                };
                say.say(format!(
                    "inject: kill -SEGV {} (the workers serving GET /slow/{WORKER_SLOW_MS}; \
                     their master {} keeps the listener)",
                    workers
                        .iter()
                        .map(|w| w.to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                    backend.pid
                ));
                for &worker in &workers {
                    assert!(
                        backend.signal_worker(worker, libc::SIGSEGV),
                        "worker {worker} vanished before its SIGSEGV"
                    );
                }
                for &worker in &workers {
                    assert!(
                        backend.wait_worker_gone(worker, Duration::from_secs(5)),
                        "worker {worker} survived SIGSEGV"
                    );
                }
                self.killed_workers = workers;
            }
            Scenario::PhpfpmOomUnix | Scenario::PhpfpmRequestTimeout => {
                made = self.inject_php(scenario, say)?;
            }
            Scenario::Healthy => say.say("inject: nothing (healthy)"),
            Scenario::NoUpstreamConnect | Scenario::ProxyStartedFirst => {
                say.say("inject: nothing to do, nginx has no live upstream server from the start")
            }
            Scenario::HealthyLow | Scenario::HealthyHigh => say.say(
                "inject: nothing (the backend's occasional failure is part of its normal life)",
            ),
        }
        Ok(made)
    }

    /// How many `/slow/` requests the first backend still works on (started with
    /// `--busy-dir`): until it has written their answers.
    pub fn slow_requests_in_backend(&self) -> usize {
        self.backend()
            .map_or(0, |b| b.busy_requests(&busy_dir(self.dir.path())))
    }

    /// Starts the backend again on the same address (the deploy's second half).
    pub fn restart_backend(&mut self, say: &Narrator) {
        let addr = self.backend().expect("backend").addr.clone();
        let backend = DetachedBackend::start(
            &addr,
            &[],
            self.netns.as_ref(),
            self.dir.path(),
            "backend-2",
        );
        say.say(format!(
            "deploy: backend started again on {addr}: pid {}",
            backend.pid
        ));
        self.backends.push(backend);
    }
}

impl Topology {
    /// The nginx of the `proxy_pass` scenarios.
    pub fn nginx(&self) -> &LabNginx {
        match &self.front {
            Front::Nginx(nginx) => nginx,
            _ => panic!("this scenario's proxy is not the lab's proxy_pass nginx"),
        }
    }

    /// The php-fpm scenarios' fault: [`PHP_FAULTS`] requests that get their worker killed
    /// (`/alloc.php` one after the other, `/sleep.php` all together); then the workers
    /// php-fpm's log says died are the ones the fault killed.
    fn inject_php(
        &mut self,
        scenario: Scenario,
        say: &Narrator,
    ) -> Result<Vec<Exchange>, Interrupted> {
        let mut made = Vec::new();
        if scenario == Scenario::PhpfpmOomUnix {
            say.say(format!(
                "inject: {PHP_FAULTS} × GET /alloc.php ({ALLOC_MIB} MiB string), one after the \
                 other"
            ));
            for _ in 0..PHP_FAULTS {
                made.push(self.client.request("GET", "/alloc.php"));
                pause(Duration::from_millis(300))?;
            }
        } else {
            say.say(format!(
                "inject: {PHP_FAULTS} × GET /sleep.php (sleeps {SLEEP_S} s), together: one \
                 worker each"
            ));
            made.extend(self.client.burst(PHP_FAULTS, "GET", "/sleep.php"));
        }
        let statuses: Vec<String> = made.iter().map(|e| status_text(&e.status)).collect();
        say.say(format!("they got: {}", statuses.join(", ")));
        let fpm = self.phpfpm.as_ref().expect("php-fpm");
        // The master logs a worker's end when it reaps it: soon after nginx saw it.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let log = loop {
            let log = PhpFpmLog::parse(&fpm.log());
            if log.exits.len() >= PHP_FAULTS || std::time::Instant::now() > deadline {
                break log;
            }
            pause(Duration::from_millis(20))?;
        };
        say.say(format!("php-fpm log: {}", log.summary()));
        self.killed_workers = log.dead_workers();
        Ok(made)
    }
}

/// Where the pre-forking backend's workers say which of them serves a `/slow/` request.
fn busy_dir(dir: &std::path::Path) -> PathBuf {
    dir.join("busy")
}

/// Waits (bounded) until the pre-forking `backend` has all its workers; their pids.
fn wait_for_workers(backend: &DetachedBackend) -> Vec<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let workers = backend.workers();
        if workers.len() == WORKERS as usize {
            return workers;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backend has {} workers after 5 s, not {WORKERS}",
            workers.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A TCP port on 127.0.0.1 that is free right now, found without listening on it: the
/// agent records every listener, and a port the harness once listened on is not one that
/// "nobody ever listened on" (nor is the harness its past owner).
pub fn unlistened_port() -> u16 {
    // SAFETY: plain socket calls on a descriptor owned by this function.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let raw = fd.as_raw_fd();
        assert_eq!(
            libc::bind(raw, (&sa as *const libc::sockaddr_in).cast(), len),
            0,
            "bind: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::getsockname(raw, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len),
            0,
            "getsockname: {}",
            std::io::Error::last_os_error()
        );
        u16::from_be(sa.sin_port)
    }
}

pub fn status_text(status: &Result<u16, String>) -> String {
    match status {
        Ok(code) => code.to_string(),
        Err(e) => format!("error ({e})"),
    }
}
