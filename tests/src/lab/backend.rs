//! A test backend started detached from the test process (`setsid -f`): its parent is init,
//! as under a service manager, so that a signal from the test is not a parent killing its
//! own child (which the agent calls worker recycling). Killed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::netns::Netns;

pub struct DetachedBackend {
    pub pid: u32,
    /// The process's start time (clock ticks since boot): a pid reused later is not ours.
    start_time: u64,
    /// `127.0.0.1:PORT` or `unix:/path`.
    pub addr: String,
    pub log: PathBuf,
}

impl DetachedBackend {
    /// Starts `why502-test-backend ARGS ADDR` in its own session (inside `netns` if given),
    /// its output in `dir/<tag>.log`, and waits until it listens.
    pub fn start(
        addr: &str,
        args: &[String],
        netns: Option<&Netns>,
        dir: &Path,
        tag: &str,
    ) -> Self {
        let ready = dir.join(format!("{tag}.ready"));
        let _ = std::fs::remove_file(&ready);
        let log = dir.join(format!("{tag}.log"));
        let out = std::fs::File::create(&log).expect("backend log file");
        let binary = crate::sibling_binary("why502-test-backend");
        let mut cmd = match netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &ns.name, "setsid", "-f"]);
                cmd
            }
            None => {
                let mut cmd = Command::new("setsid");
                cmd.arg("-f");
                cmd
            }
        };
        cmd.arg(&binary)
            .args(args)
            .arg("--ready-file")
            .arg(&ready)
            .arg(addr)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("backend log file"))
            .stderr(out);
        // `setsid -f` forks the backend and returns at once.
        let status = cmd.status().expect("run setsid");
        assert!(status.success(), "{cmd:?} failed ({status})");
        let deadline = Instant::now() + Duration::from_secs(5);
        let pid: u32 = loop {
            if let Some(pid) = std::fs::read_to_string(&ready)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "backend on {addr} not listening after 5 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let start_time = stat(pid)
            .map(|s| s.start_time)
            .unwrap_or_else(|| panic!("backend {pid} exited at once"));
        Self {
            pid,
            start_time,
            addr: addr.to_owned(),
            log,
        }
    }

    /// Whether the process still runs (a zombie does not).
    pub fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.start_time == self.start_time && s.state != 'Z')
    }

    pub fn signal(&self, signal: i32) {
        if self.alive() {
            // SAFETY: signalling a backend this lab started (checked by its start time).
            unsafe { libc::kill(self.pid as i32, signal) };
        }
    }

    /// Waits until the process is gone; false if it still runs after `limit`.
    pub fn wait_gone(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.alive() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Its parent's pid, as procfs says.
    pub fn ppid(&self) -> Option<u32> {
        stat(self.pid).map(|s| s.ppid)
    }
}

impl Drop for DetachedBackend {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        if !self.wait_gone(Duration::from_secs(3)) {
            eprintln!("backend {} still running", self.pid);
        }
    }
}

struct Stat {
    state: char,
    ppid: u32,
    start_time: u64,
}

/// The fields of `/proc/PID/stat` we need.
fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything; fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); start time is field 22.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}
