//! What a scenario runs: nginx, its backends, and where needed a network namespace (with
//! its firewall rules and sysctls) or a memory cgroup. Torn down on drop, in order: nginx,
//! the backends, the connections filling a backlog, the namespace (iptables rules and
//! sysctls live in it and vanish with it), the cgroup, the files.

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
    nginx::{LabNginx, NginxSpec},
    pause, Interrupted, Narrator, Scenario,
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

/// Connections that fill a backlog (held until teardown).
enum Filler {
    Tcp(#[allow(dead_code)] TcpStream),
    Unix(#[allow(dead_code)] UnixStream),
}

// Fields drop in declaration order, which is the teardown order.
pub struct Topology {
    pub nginx: LabNginx,
    /// The first is the one the fault hits; a restarted backend comes after it.
    pub backends: Vec<DetachedBackend>,
    fillers: Vec<Filler>,
    pub netns: Option<Netns>,
    pub cgroup: Option<MemoryCgroup>,
    pub dir: tempfile::TempDir,
    /// nginx's upstream as the agent names it: `127.0.0.1:PORT` or `unix:/path`.
    pub upstream: String,
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
        let cgroup = (scenario == Scenario::Oom).then(|| {
            let cgroup = MemoryCgroup::new(&format!("lab-{}", nginx_port), 64 << 20);
            say.say(format!(
                "memory cgroup {} limited to 64 MiB, no swap",
                cgroup.procs().parent().unwrap().display()
            ));
            cgroup
        });

        let unix_socket = |name: &str| format!("unix:{}", dir.path().join(name).display());
        let (upstream, backend_args): (String, Option<Vec<String>>) = match scenario {
            Scenario::Crash | Scenario::Deploy | Scenario::Healthy => {
                (tcp_upstream.clone(), Some(vec![]))
            }
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
            backends.push(backend);
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
        let spec = NginxSpec {
            upstream: upstream.clone(),
            port: nginx_port,
            any_address: netns.is_some(),
            keepalive: (scenario == Scenario::KeepaliveRace).then_some(KEEPALIVE),
        };
        let prefix: PathBuf = dir.path().join("nginx");
        let nginx = LabNginx::start(spec, &prefix, netns.as_ref(), &client);
        say.say(format!(
            "nginx {}:{nginx_port} → {upstream}{} (master pid {}, worker pid {}; prefix {})",
            if netns.is_some() { "*" } else { "127.0.0.1" },
            if scenario == Scenario::KeepaliveRace {
                format!(" with upstream keepalive {KEEPALIVE}, HTTP/1.1")
            } else {
                String::new()
            },
            nginx.master_pid(),
            nginx
                .worker_pid()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into()),
            prefix.display()
        ));
        Ok(Self {
            nginx,
            backends,
            fillers: Vec::new(),
            netns,
            cgroup,
            dir,
            upstream,
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
            Scenario::Crash => {
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
                // Let the agent's queue sampling (every 500 ms in the harness) see it, as it
                // would see a backend stuck for a while.
                pause(Duration::from_millis(1200))?;
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
            Scenario::Healthy => say.say("inject: nothing (healthy)"),
        }
        Ok(made)
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
