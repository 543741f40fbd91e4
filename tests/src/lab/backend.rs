//! A test backend started detached from the test process (`setsid -f`): its parent is init,
//! as under a service manager, so that a signal from the test is not a parent killing its
//! own child (which the agent calls worker recycling). Killed on drop, with its workers
//! when it pre-forks (`--workers N`).

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

    /// Its live children (a pre-forking backend's workers), with their start times.
    fn children(&self) -> Vec<(u32, u64)> {
        if !self.alive() {
            return Vec::new();
        }
        let pid = self.pid;
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter_map(|p| {
                stat(p)
                    .filter(|s| s.state != 'Z')
                    .map(|s| (p, s.start_time))
            })
            .collect()
    }

    /// Its workers' pids (`--workers N`).
    pub fn workers(&self) -> Vec<u32> {
        self.children().into_iter().map(|(p, _)| p).collect()
    }

    /// The workers named in `busy_dir` (`--busy-dir`: a file PID-N while a process serves
    /// a `/slow/` request) that are children of this backend and alive.
    pub fn busy_workers(&self, busy_dir: &Path) -> Vec<u32> {
        let workers = self.workers();
        let mut busy: Vec<u32> = busy_pids(busy_dir)
            .into_iter()
            .filter(|p| workers.contains(p))
            .collect();
        busy.sort_unstable();
        busy.dedup();
        busy
    }

    /// How many `/slow/` requests this backend (not its workers) still serves: its own
    /// files in `busy_dir`.
    pub fn busy_requests(&self, busy_dir: &Path) -> usize {
        busy_pids(busy_dir)
            .into_iter()
            .filter(|p| *p == self.pid)
            .count()
    }

    /// Sends `signal` to `worker` if it is still a child of this backend; whether it was.
    pub fn signal_worker(&self, worker: u32, signal: i32) -> bool {
        if !self.workers().contains(&worker) {
            return false;
        }
        // SAFETY: signalling a child of a backend this lab started (checked just above).
        unsafe { libc::kill(worker as i32, signal) == 0 }
    }

    /// Waits until `worker` (once a child of this backend) is gone; false after `limit`.
    pub fn wait_worker_gone(&self, worker: u32, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        // Gone, a zombie, or no longer ours (reaped, the pid reused elsewhere).
        while stat(worker).is_some_and(|s| s.state != 'Z' && s.ppid == self.pid) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

impl Drop for DetachedBackend {
    fn drop(&mut self) {
        // The workers die with their master (PR_SET_PDEATHSIG); killed here too, should
        // that not have happened, as long as they are the same processes.
        let children = self.children();
        self.signal(libc::SIGKILL);
        if !self.wait_gone(Duration::from_secs(3)) {
            eprintln!("backend {} still running", self.pid);
        }
        for (pid, start_time) in children {
            if stat(pid).is_some_and(|s| s.start_time == start_time && s.state != 'Z') {
                // SAFETY: a worker of this backend (checked by its start time).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// The pids of the `--busy-dir` files `PID-N`, one per request being served.
fn busy_pids(busy_dir: &Path) -> Vec<u32> {
    std::fs::read_dir(busy_dir)
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| {
                    let name = e.file_name();
                    name.to_str()?.split_once('-')?.0.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default()
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
