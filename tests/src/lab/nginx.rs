//! The lab's nginx: a real nginx with a prefix, config and logs of its own, optionally in a
//! network namespace, proxying to one upstream server (TCP or unix socket) with or without
//! upstream keepalive. Its access log starts each line with `$status`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::client::Client;
use crate::netns::Netns;

/// How nginx is set up.
#[derive(Debug, Clone)]
pub struct NginxSpec {
    /// `127.0.0.1:9000` or `unix:/path/to.sock`.
    pub upstream: String,
    /// The upstream server is marked `down`: nginx answers 502 without connecting ("no live
    /// upstreams").
    pub down: bool,
    pub port: u16,
    /// Listen on every address (inside a namespace of the lab's own), not just 127.0.0.1.
    pub any_address: bool,
    /// Idle upstream connections kept per worker (`keepalive N`, with HTTP/1.1 upstream).
    pub keepalive: Option<u32>,
    /// `proxy_read_timeout`, in seconds: how long nginx waits for the response header
    /// ([`READ_TIMEOUT_S`] unless a scenario is about a slow upstream).
    pub read_timeout_s: u32,
}

pub struct LabNginx {
    process: NginxProcess,
    pub spec: NginxSpec,
}

/// A running nginx with its own prefix: its logs, its master and worker, stopped on drop.
/// Every nginx of the lab is one ([`LabNginx`] proxying, php-fpm's fastcgi front).
pub struct NginxProcess {
    child: Child,
    prefix: PathBuf,
}

/// nginx's timeouts towards the upstream: longer than the first SYN retransmit (1 s), so
/// that a connect that times out has retransmitted.
pub const CONNECT_TIMEOUT_S: u32 = 2;
/// The default `proxy_read_timeout` and `proxy_send_timeout`.
pub const READ_TIMEOUT_S: u32 = 2;

impl LabNginx {
    /// Starts nginx with its prefix in `prefix` (inside `netns` if given) and waits until
    /// `client` can connect.
    pub fn start(spec: NginxSpec, prefix: &Path, netns: Option<&Netns>, client: &Client) -> Self {
        assert!(
            Path::new(crate::nginx::NGINX).exists(),
            "{} is missing: `cargo xtask bootstrap` installs Debian's nginx-light",
            crate::nginx::NGINX
        );
        let port = spec.port;
        let process = NginxProcess::start(&config(&spec, prefix), prefix, netns, client, port);
        Self { process, spec }
    }
}

impl std::ops::Deref for LabNginx {
    type Target = NginxProcess;

    fn deref(&self) -> &NginxProcess {
        &self.process
    }
}

impl NginxProcess {
    /// Starts nginx with `config` in `prefix` (inside `netns` if given) and waits until
    /// `client` can connect to `port`.
    pub fn start(
        config: &str,
        prefix: &Path,
        netns: Option<&Netns>,
        client: &Client,
        port: u16,
    ) -> Self {
        assert!(
            Path::new(crate::nginx::NGINX).exists(),
            "{} is missing: `cargo xtask bootstrap` installs Debian's nginx-light",
            crate::nginx::NGINX
        );
        std::fs::create_dir_all(prefix.join("tmp")).expect("nginx prefix");
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, config).expect("write nginx.conf");
        let mut cmd = match netns {
            Some(ns) => {
                // `ip netns exec` execs nginx itself: the child is nginx's master.
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &ns.name, crate::nginx::NGINX]);
                cmd
            }
            None => Command::new(crate::nginx::NGINX),
        };
        let log = std::fs::File::create(prefix.join("stderr.log")).expect("nginx stderr");
        cmd.arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("nginx stderr"))
            .stderr(log);
        let child = cmd.spawn().expect("start nginx");
        let mut nginx = Self {
            child,
            prefix: prefix.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !client.connects() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!(
                    "nginx exited ({status}): {}{}",
                    nginx.read("stderr.log"),
                    nginx.error_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {port}: {}",
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.prefix.join(name)).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        self.read("error.log")
    }

    pub fn access_log(&self) -> String {
        self.read("access.log")
    }

    pub fn config(&self) -> String {
        self.read("nginx.conf")
    }

    pub fn master_pid(&self) -> u32 {
        self.child.id()
    }

    /// `master pid 10, worker pid 12`, for the narration.
    pub fn pids(&self) -> String {
        let worker = self
            .worker_pid()
            .map_or_else(|| "?".into(), |p| p.to_string());
        format!("master pid {}, worker pid {worker}", self.master_pid())
    }

    /// The worker's pid (`worker_processes 1`), from the master's children.
    pub fn worker_pid(&self) -> Option<u32> {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

impl Drop for NginxProcess {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of the master and its worker; SIGKILL if that lingers.
        if crate::signal_and_wait(&mut self.child, libc::SIGQUIT, Duration::from_secs(3)) {
            return;
        }
        let worker = self.worker_pid();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(worker) = worker {
            // SAFETY: the worker of the nginx this lab started.
            unsafe { libc::kill(worker as i32, libc::SIGKILL) };
        }
    }
}

fn config(spec: &NginxSpec, prefix: &Path) -> String {
    let listen = if spec.any_address {
        spec.port.to_string()
    } else {
        format!("127.0.0.1:{}", spec.port)
    };
    let (keepalive, http11) = match spec.keepalive {
        Some(n) => (
            format!("\n        keepalive {n};"),
            "\n            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";",
        ),
        None => (String::new(), ""),
    };
    with_logs(
        prefix,
        &format!(
            "    upstream lab_backend {{
        server {upstream} {server_state};{keepalive}
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://lab_backend;{http11}
            proxy_connect_timeout {CONNECT_TIMEOUT_S}s;
            proxy_read_timeout {read_timeout}s;
            proxy_send_timeout {READ_TIMEOUT_S}s;
        }}
    }}
",
            upstream = spec.upstream,
            server_state = if spec.down { "down" } else { "max_fails=0" },
            read_timeout = spec.read_timeout_s,
        ),
    )
}

/// A whole nginx.conf for the lab: one worker in the foreground, every path in `prefix`,
/// the access log in the lab's format (what [`super::AccessLog`] reads), around the
/// `http` block's `servers` (upstreams and servers).
pub fn with_logs(prefix: &Path, servers: &str) -> String {
    let p = prefix.display();
    format!(
        "daemon off;
master_process on;
user root;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format lab '$status $request_method \"$request_uri\" upstream=$upstream_addr status=$upstream_status connect=$upstream_connect_time at=$msec';
    access_log {p}/access.log lab;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
{servers}}}
"
    )
}
