//! Child processes the benchmark starts, always stopped again (also on error and Ctrl-C),
//! and what procfs says about a process: CPU time, resident memory, BPF objects.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM only set a flag that [`check_interrupted`] turns into an
/// error, so that the benchmark unwinds and its guards stop every child.
pub fn catch_interrupts() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// Fails once Ctrl-C (or SIGTERM) arrived.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `duration` in short steps, failing early on Ctrl-C.
pub fn sleep(duration: Duration) -> Result<()> {
    let end = Instant::now() + duration;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// A running child that is stopped when dropped: `signal` first, SIGKILL after `grace`.
pub struct Guard {
    name: String,
    child: Option<Child>,
    signal: libc::c_int,
    grace: Duration,
}

impl Guard {
    pub fn spawn(name: &str, cmd: &mut Command, signal: libc::c_int) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            signal,
            grace: Duration::from_secs(10),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until stopped")
    }

    /// Fails if the child already ended.
    pub fn check_running(&mut self) -> Result<()> {
        let name = self.name.clone();
        if let Some(status) = self.child_mut().try_wait()? {
            bail!("{name} exited unexpectedly with {status}");
        }
        Ok(())
    }

    /// Stops the child and returns how long it took to exit.
    pub fn stop(mut self) -> Result<Duration> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<Duration> {
        let Some(mut child) = self.child.take() else {
            return Ok(Duration::ZERO);
        };
        let start = Instant::now();
        if child.try_wait()?.is_some() {
            return Ok(Duration::ZERO);
        }
        // SAFETY: signals our own child, which has not been reaped yet (its pid is ours).
        unsafe { libc::kill(child.id() as libc::pid_t, self.signal) };
        while start.elapsed() < self.grace {
            if child.try_wait()?.is_some() {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "warning: {} did not stop within {:?}: killing it",
            self.name, self.grace
        );
        child.kill()?;
        child.wait()?;
        bail!("{} did not stop within {:?}", self.name, self.grace)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(err) = self.stop_inner() {
            eprintln!("warning: stopping {}: {err:#}", self.name);
        }
    }
}

/// What a bounded command printed.
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion with captured output, killing it after `timeout` or on Ctrl-C.
pub fn run_bounded(name: &str, cmd: &mut Command, timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = Guard::spawn(name, cmd, libc::SIGKILL)?;
    let child = guard.child_mut();
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = guard.child_mut().try_wait()? {
            break status;
        }
        check_interrupted()?;
        if start.elapsed() > timeout {
            bail!("{name} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = Output {
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    if !status.success() {
        bail!(
            "{name} failed with {status}: {}",
            output.stderr.trim().lines().last().unwrap_or("")
        );
    }
    Ok(output)
}

/// CPU time (user + system, all threads) a process used so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("short stat")?
            .parse::<u64>()
            .context("stat field")
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(total * 1_000_000_000 / hz))
}

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`), as bytes.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| {
            let value = line.strip_prefix(field)?.strip_prefix(':')?;
            value.split_whitespace().next()?.parse::<u64>().ok()
        })
        .map(|kib| kib * 1024)
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// The resident set size of `pid`, in bytes.
pub fn rss(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

/// BPF objects a process holds open, from `/proc/<pid>/fdinfo`.
#[derive(Debug, Default, Clone, Copy)]
pub struct BpfFds {
    pub maps: u64,
    pub map_memlock: u64,
    pub progs: u64,
    pub prog_memlock: u64,
    /// perf events: tracepoint attachments and perf buffers.
    pub perf_events: u64,
}

pub fn bpf_fds(pid: u32) -> Result<BpfFds> {
    let mut fds = BpfFds::default();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        let entry = entry?;
        let link =
            std::fs::read_link(Path::new(&format!("/proc/{pid}/fd")).join(entry.file_name()))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
        if link.contains("perf_event") {
            fds.perf_events += 1;
            continue;
        }
        // The descriptor may be closed between listing and reading.
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let memlock = info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if info.lines().any(|l| l.starts_with("map_type:")) {
            fds.maps += 1;
            fds.map_memlock += memlock;
        } else if info.lines().any(|l| l.starts_with("prog_type:")) {
            fds.progs += 1;
            fds.prog_memlock += memlock;
        }
    }
    Ok(fds)
}

/// Processes whose command name is `comm`, other than `except`.
pub fn pids_named(comm: &str, except: &[u32]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !except.contains(pid))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits for a child started with a piped stdout and returns what it printed; fails if it
/// fails, takes longer than `timeout`, or Ctrl-C arrives.
pub fn wait_stdout(mut guard: Guard, timeout: Duration) -> Result<String> {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = guard.child_mut().try_wait()? {
            break status;
        }
        check_interrupted()?;
        if start.elapsed() > timeout {
            bail!("{} did not finish within {timeout:?}", guard.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    if let Some(mut stdout) = guard.child_mut().stdout.take() {
        stdout.read_to_string(&mut out)?;
    }
    if !status.success() {
        bail!("{} failed with {status}", guard.name);
    }
    Ok(out)
}
