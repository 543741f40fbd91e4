//! A real nginx with a prefix, config and logs of its own in a temporary directory.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

pub const NGINX: &str = "/usr/sbin/nginx";

/// The process model of [`Nginx::start`]: a root master and one worker, also root.
pub const ROOT_WORKER: &str = "master_process on;\nuser root;\nworker_processes 1;";

/// The configuration the tests run nginx with: in the foreground, everything under
/// `prefix`, 127.0.0.1:`port` proxied to `upstream` with the 502-causes reproduction
/// timeouts; `processes` is the process model (`master_process`, `user`, workers).
pub fn config(prefix: &Path, port: u16, upstream: &str, processes: &str) -> String {
    let p = prefix.display();
    format!(
        "daemon off;
{processes}
pid {p}/nginx.pid;
error_log {p}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {p}/access.log;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_connect_timeout 3s;
            proxy_read_timeout 3s;
        }}
    }}
}}
"
    )
}

pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Nginx {
    /// Starts nginx on 127.0.0.1:`port`, proxying everything to `upstream`
    /// (`127.0.0.1:9000` or `unix:/path`), with the 502-causes reproduction timeouts.
    pub fn start(port: u16, upstream: &str) -> Self {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: `cargo xtask test` installs Debian's nginx-light"
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let prefix = dir.path();
        std::fs::create_dir_all(prefix.join("tmp")).unwrap();
        let config = config(prefix, port, upstream, ROOT_WORKER);
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf)
            .spawn()
            .expect("start nginx");
        let nginx = Self { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {port}: {}",
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.path("error.log")).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Lines of error.log that contain `needle` (nginx's own record of upstream errors).
    pub fn count_errors(&self, needle: &str) -> usize {
        self.error_log()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of the master and its workers.
        if crate::signal_and_wait(&mut self.child, libc::SIGQUIT, Duration::from_secs(5)) {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
