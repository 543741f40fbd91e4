//! The lab's php-fpm and the nginx in front of it: Debian's php-fpm (`php8.2-fpm` on
//! Debian 12) run by the lab in the foreground (`-F`, as root with `-R`, no php.ini: `-n`)
//! with a pool of its own (`pm = static`) listening on a unix socket in the lab's
//! directory, its master and workers optionally in a memory cgroup; and a real nginx
//! passing every request to it with `fastcgi_pass`, logging like the lab's proxy_pass
//! nginx (access.log lines start with `$status`).
//!
//! The scripts: `index.php` answers `ok`; `alloc.php` builds a 200 MiB string
//! (`memory_limit = -1`), past any small cgroup limit; `sleep.php` sleeps 5 s.
//!
//! php-fpm's own log names the workers that died and why (`child 123 exited on signal 9
//! (SIGKILL)`, `execution timed out … terminating`): [`PhpFpmLog`].

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{client::Client, nginx::NginxProcess};

/// The memory limit of the OOM scenario's cgroup (php-fpm's master and workers).
pub const CGROUP_LIMIT: u64 = 64 << 20;
/// What `alloc.php` allocates.
pub const ALLOC_MIB: u64 = 200;
/// How long `sleep.php` sleeps.
pub const SLEEP_S: u64 = 5;
/// nginx's `fastcgi_read_timeout`: longer than any script runs here, so that php-fpm, not
/// nginx, ends the slow ones.
pub const FASTCGI_READ_TIMEOUT_S: u64 = 10;

/// The scripts, by file name.
fn scripts() -> [(&'static str, String); 3] {
    [
        ("index.php", "<?php\necho \"ok\\n\";\n".to_string()),
        (
            "alloc.php",
            format!(
                "<?php\n$s = str_repeat('x', {ALLOC_MIB} * 1024 * 1024);\necho strlen($s), \"\\n\";\n"
            ),
        ),
        (
            "sleep.php",
            format!("<?php\nsleep({SLEEP_S});\necho \"slept\\n\";\n"),
        ),
    ]
}

/// How the pool is set up.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    /// `pm = static` with this many workers.
    pub children: u32,
    /// `request_terminate_timeout`, if any.
    pub request_terminate_timeout_s: Option<u32>,
    /// A cgroup's `cgroup.procs`: the master joins it before exec, its workers are born in it.
    pub cgroup_procs: Option<PathBuf>,
}

/// The php-fpm binary: `/usr/sbin/php-fpmX.Y` of the installed release (the newest if
/// several).
pub fn binary() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/sbin")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("php-fpm"))
        })
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("no /usr/sbin/php-fpm*: `cargo xtask bootstrap` installs Debian's php-fpm")
    })
}

pub struct LabPhpFpm {
    child: Child,
    dir: PathBuf,
    /// The pool's listening socket.
    pub socket: PathBuf,
    /// The scripts' directory (nginx's root).
    pub www: PathBuf,
    /// The workers it started with.
    pub initial_workers: Vec<u32>,
    pub spec: PoolSpec,
}

impl LabPhpFpm {
    /// Starts php-fpm with its configuration, log, scripts and socket (`php.sock`) in `dir`,
    /// and waits until it listens with all its workers.
    pub fn start(spec: PoolSpec, dir: &Path) -> Self {
        let binary = binary();
        let www = dir.join("www");
        std::fs::create_dir_all(&www).expect("php-fpm directory");
        for (name, text) in scripts() {
            std::fs::write(www.join(name), text).expect("write a PHP script");
        }
        let socket = dir.join("php.sock");
        let conf = dir.join("php-fpm.conf");
        std::fs::write(&conf, config(&spec, dir, &socket)).expect("write php-fpm.conf");
        let out = std::fs::File::create(dir.join("stderr.log")).expect("php-fpm stderr");
        // exec: the child is php-fpm's master, in the cgroup from its first instruction.
        let script = match &spec.cgroup_procs {
            Some(procs) => format!(
                "echo $$ > '{}' && exec \"$0\" -n -F -R -y \"$1\"",
                procs.display()
            ),
            None => "exec \"$0\" -n -F -R -y \"$1\"".to_string(),
        };
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(&binary)
            .arg(&conf)
            // Not a service: no readiness notifications to a service manager of the lab's.
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("php-fpm stderr"))
            .stderr(out)
            .spawn()
            .expect("start php-fpm");
        let mut fpm = Self {
            child,
            dir: dir.to_path_buf(),
            socket,
            www,
            initial_workers: Vec::new(),
            spec,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = fpm.child.try_wait() {
                panic!(
                    "php-fpm exited ({status}): {}{}",
                    fpm.read("stderr.log"),
                    fpm.log()
                );
            }
            let workers = fpm.workers();
            if fpm.socket.exists() && workers.len() == fpm.spec.children as usize {
                fpm.initial_workers = workers;
                return fpm;
            }
            assert!(
                Instant::now() < deadline,
                "php-fpm not ready after 10 s (socket {}, workers {workers:?}): {}{}",
                fpm.socket.display(),
                fpm.read("stderr.log"),
                fpm.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// php-fpm's error_log.
    pub fn log(&self) -> String {
        self.read("php-fpm.log")
    }

    pub fn master_pid(&self) -> u32 {
        self.child.id()
    }

    /// The master's children right now: its workers.
    pub fn workers(&self) -> Vec<u32> {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// The upstream as nginx and the agent name it.
    pub fn upstream(&self) -> String {
        format!("unix:{}", self.socket.display())
    }
}

impl Drop for LabPhpFpm {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers and exits (removing its socket); SIGKILL
        // for all of them if that lingers.
        let workers = self.workers();
        if !crate::signal_and_wait(&mut self.child, libc::SIGTERM, Duration::from_secs(3)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            for worker in workers {
                // SAFETY: a worker of the php-fpm this lab started, just read from procfs.
                unsafe { libc::kill(worker as i32, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn config(spec: &PoolSpec, dir: &Path, socket: &Path) -> String {
    let d = dir.display();
    let timeout = spec
        .request_terminate_timeout_s
        .map(|s| format!("request_terminate_timeout = {s}s\n"))
        .unwrap_or_default();
    format!(
        "[global]
pid = {d}/php-fpm.pid
error_log = {d}/php-fpm.log
log_level = notice
daemonize = no

[lab]
listen = {socket}
listen.mode = 0600
pm = static
pm.max_children = {children}
{timeout}php_admin_value[memory_limit] = -1
catch_workers_output = yes
",
        socket = socket.display(),
        children = spec.children,
    )
}

/// A worker's end, as php-fpm's master logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerExit {
    pub pid: u32,
    /// `SIGKILL`, `SIGTERM`…; `None` for an exit with a code.
    pub signal: Option<String>,
    pub code: Option<i32>,
}

/// What php-fpm's log says about its workers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhpFpmLog {
    /// `child N exited on signal 9 (SIGKILL) after …` / `child N exited with code C …`.
    pub exits: Vec<WorkerExit>,
    /// `child N, script '…' (request: "GET /sleep.php?lab=3") execution timed out (… sec),
    /// terminating`: the worker and the request's `lab=SEQ`.
    pub timed_out: Vec<(u32, Option<u32>)>,
    /// `child N started`: workers started in place of dead ones.
    pub started: Vec<u32>,
}

impl PhpFpmLog {
    pub fn parse(text: &str) -> Self {
        let mut log = Self::default();
        for line in text.lines() {
            let Some(rest) = line.split_once("] child ").map(|(_, r)| r) else {
                continue;
            };
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let Ok(pid) = digits.parse() else { continue };
            let rest = &rest[digits.len()..];
            if let Some(after) = rest.strip_prefix(" exited on signal ") {
                let signal = after
                    .split_once('(')
                    .and_then(|(_, s)| s.split_once(')'))
                    .map(|(name, _)| name.to_string())
                    .or_else(|| {
                        after
                            .split_whitespace()
                            .next()
                            .map(|n| format!("signal {n}"))
                    });
                log.exits.push(WorkerExit {
                    pid,
                    signal,
                    code: None,
                });
            } else if let Some(after) = rest.strip_prefix(" exited with code ") {
                log.exits.push(WorkerExit {
                    pid,
                    signal: None,
                    code: after.split_whitespace().next().and_then(|c| c.parse().ok()),
                });
            } else if rest.contains("execution timed out") {
                let seq = rest.find("lab=").map(|at| &rest[at + 4..]).and_then(|r| {
                    r.chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>()
                        .parse()
                        .ok()
                });
                log.timed_out.push((pid, seq));
            } else if rest.starts_with(" started") {
                log.started.push(pid);
            }
        }
        log
    }

    /// The workers that died.
    pub fn dead_workers(&self) -> Vec<u32> {
        self.exits.iter().map(|e| e.pid).collect()
    }

    /// `exited on SIGKILL ×5; timed out ×5`.
    pub fn summary(&self) -> String {
        let mut counts = std::collections::BTreeMap::<String, u64>::new();
        for e in &self.exits {
            let how = match (&e.signal, e.code) {
                (Some(signal), _) => format!("exited on {signal}"),
                (None, Some(code)) => format!("exited with code {code}"),
                (None, None) => "exited".to_string(),
            };
            *counts.entry(how).or_default() += 1;
        }
        let mut parts: Vec<String> = counts
            .into_iter()
            .map(|(how, n)| format!("child {how} ×{n}"))
            .collect();
        if !self.timed_out.is_empty() {
            parts.insert(
                0,
                format!("execution timed out, terminating ×{}", self.timed_out.len()),
            );
        }
        if parts.is_empty() {
            "no worker died".into()
        } else {
            parts.join(", ")
        }
    }
}

/// nginx in front of php-fpm: `fastcgi_pass unix:<socket>` for every request (`/` is
/// `index.php`), with the lab's log format, its prefix in the lab's directory.
pub struct FastcgiNginx {
    process: NginxProcess,
    pub port: u16,
    pub upstream: String,
}

impl FastcgiNginx {
    pub fn start(port: u16, fpm: &LabPhpFpm, prefix: &Path, client: &Client) -> Self {
        let config = nginx_config(port, fpm, prefix);
        Self {
            process: NginxProcess::start(&config, prefix, None, client, port),
            port,
            upstream: fpm.upstream(),
        }
    }
}

impl std::ops::Deref for FastcgiNginx {
    type Target = NginxProcess;

    fn deref(&self) -> &NginxProcess {
        &self.process
    }
}

fn nginx_config(port: u16, fpm: &LabPhpFpm, prefix: &Path) -> String {
    super::nginx::with_logs(
        prefix,
        &format!(
            "    server {{
        listen 127.0.0.1:{port};
        root {www};
        location / {{
            fastcgi_pass unix:{socket};
            fastcgi_index index.php;
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_param SCRIPT_NAME $fastcgi_script_name;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param REQUEST_URI $request_uri;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            fastcgi_connect_timeout 2s;
            fastcgi_read_timeout {FASTCGI_READ_TIMEOUT_S}s;
            fastcgi_send_timeout {FASTCGI_READ_TIMEOUT_S}s;
        }}
    }}
",
            www = fpm.www.display(),
            socket = fpm.socket.display(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines of real runs (php-fpm 8.2).
    const LOG: &str = r#"[01-Dec-2026 10:15:10] NOTICE: fpm is running, pid 8613
[01-Dec-2026 10:15:10] NOTICE: ready to handle connections
[01-Dec-2026 10:15:12] WARNING: [pool lab] child 8615 exited on signal 9 (SIGKILL) after 1.672744 seconds from start
[01-Dec-2026 10:15:12] NOTICE: [pool lab] child 8628 started
[01-Dec-2026 10:15:27] WARNING: [pool lab] child 8616, script '/tmp/px/www/sleep.php' (request: "GET /sleep.php?lab=3") execution timed out (2.496152 sec), terminating
[01-Dec-2026 10:15:27] WARNING: [pool lab] child 8616 exited on signal 15 (SIGTERM) after 17.338956 seconds from start
[01-Dec-2026 10:15:27] NOTICE: [pool lab] child 8928 started
[01-Dec-2026 10:15:30] WARNING: [pool lab] child 8930 exited with code 255 after 0.5 seconds from start
"#;

    #[test]
    fn worker_deaths_from_the_log() {
        let log = PhpFpmLog::parse(LOG);
        assert_eq!(log.dead_workers(), [8615, 8616, 8930]);
        assert_eq!(log.exits[0].signal.as_deref(), Some("SIGKILL"));
        assert_eq!(log.exits[1].signal.as_deref(), Some("SIGTERM"));
        assert_eq!(log.exits[2].code, Some(255));
        assert_eq!(log.timed_out, [(8616, Some(3))]);
        assert_eq!(log.started, [8628, 8928]);
        assert_eq!(
            log.summary(),
            "execution timed out, terminating ×1, child exited on SIGKILL ×1, child exited on \
             SIGTERM ×1, child exited with code 255 ×1"
        );
    }
}
