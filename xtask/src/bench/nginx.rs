//! Debian's nginx with a prefix and configuration of its own: a fast backend
//! (`return 200 "ok\n"`) and two proxies in front of it, one with upstream keepalive and
//! one that connects to the backend for every request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::http;
use super::process::{self, Guard};

/// Upstream keepalive or one upstream connect per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Keepalive,
    NoKeepalive,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::Keepalive, Variant::NoKeepalive];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Keepalive => "keepalive",
            Variant::NoKeepalive => "no_keepalive",
        }
    }
}

pub struct Nginx {
    _guard: Guard,
    pub keepalive: SocketAddr,
    pub no_keepalive: SocketAddr,
}

impl Nginx {
    /// Starts nginx in the foreground under `dir` and waits until all three servers answer.
    pub fn start(dir: &Path, ports: [u16; 3]) -> Result<Self> {
        let [backend, keepalive, no_keepalive] =
            ports.map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
        std::fs::create_dir_all(dir.join("logs"))?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(dir, backend, keepalive, no_keepalive))?;
        let error_log: PathBuf = dir.join("logs").join("error.log");
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&error_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SIGQUIT: graceful shutdown of master and workers.
        let mut guard = Guard::spawn("nginx", &mut cmd, libc::SIGQUIT)?;
        let start = Instant::now();
        for addr in [backend, keepalive, no_keepalive] {
            loop {
                process::check_interrupted()?;
                guard
                    .check_running()
                    .with_context(|| format!("see {}", error_log.display()))?;
                match http::get_tcp(addr, "/") {
                    Ok((200, body)) if body == "ok\n" => break,
                    Ok((code, body)) => bail!("nginx on {addr} answered {code}: {body:?}"),
                    Err(_) if start.elapsed() < Duration::from_secs(15) => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(err) => return Err(err.context(format!("nginx on {addr}"))),
                }
            }
        }
        Ok(Self {
            _guard: guard,
            keepalive,
            no_keepalive,
        })
    }

    pub fn addr(&self, variant: Variant) -> SocketAddr {
        match variant {
            Variant::Keepalive => self.keepalive,
            Variant::NoKeepalive => self.no_keepalive,
        }
    }
}

fn config(
    dir: &Path,
    backend: SocketAddr,
    keepalive: SocketAddr,
    no_keepalive: SocketAddr,
) -> String {
    let d = dir.display();
    format!(
        r#"# written by cargo xtask bench
daemon off;
master_process on;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    # wrk keeps its connections for the whole run.
    keepalive_requests 100000000;

    upstream backend_keepalive {{
        server {backend};
        keepalive 32;
        keepalive_requests 100000000;
    }}
    upstream backend_no_keepalive {{
        server {backend};
    }}

    # The backend.
    server {{
        listen {backend};
        location / {{
            return 200 "ok\n";
        }}
    }}
    # Upstream keepalive: few upstream connects.
    server {{
        listen {keepalive};
        location / {{
            proxy_pass http://backend_keepalive;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    # One upstream connect per request: the worst case for the connect probes.
    server {{
        listen {no_keepalive};
        location / {{
            proxy_pass http://backend_no_keepalive;
        }}
    }}
}}
"#
    )
}
