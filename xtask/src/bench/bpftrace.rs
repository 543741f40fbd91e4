//! The reference point: a bpftrace script on the same tracepoints, one line per event,
//! written to /dev/null.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::process::{self, Guard};

/// The tracepoints and what the script prints for each. Writes are printed for nginx only,
/// as why502 counts responses of proxies only (and bpftrace's own writes to /dev/null
/// would otherwise feed back into the trace).
const PROBES: &[(&str, &str)] = &[
    (
        "tracepoint:sock:inet_sock_set_state",
        r#"printf("%d %s set_state %d->%d %d %d\n", pid, comm, args->oldstate, args->newstate, args->sport, args->dport);"#,
    ),
    (
        "tracepoint:sock:inet_sk_error_report",
        r#"printf("%d %s sk_error %d %d\n", pid, comm, args->error, args->dport);"#,
    ),
    (
        "tracepoint:tcp:tcp_receive_reset",
        r#"printf("%d %s rst_received %d %d\n", pid, comm, args->sport, args->dport);"#,
    ),
    (
        "tracepoint:tcp:tcp_send_reset",
        r#"printf("%d %s rst_sent %d\n", pid, comm, args->state);"#,
    ),
    (
        "tracepoint:tcp:tcp_retransmit_skb",
        r#"printf("%d %s retransmit %d %d\n", pid, comm, args->state, args->dport);"#,
    ),
    (
        "tracepoint:syscalls:sys_enter_connect",
        r#"printf("%d %s connect fd=%d\n", pid, comm, args->fd);"#,
    ),
    (
        "tracepoint:syscalls:sys_exit_connect",
        r#"printf("%d %s connect ret=%d\n", pid, comm, args->ret);"#,
    ),
    (
        "tracepoint:syscalls:sys_enter_write /comm == \"nginx\"/",
        r#"printf("%d %s write fd=%d %d\n", pid, comm, args->fd, args->count);"#,
    ),
    (
        "tracepoint:syscalls:sys_enter_writev /comm == \"nginx\"/",
        r#"printf("%d %s writev fd=%d %d\n", pid, comm, args->fd, args->vlen);"#,
    ),
    (
        "tracepoint:sched:sched_process_exec",
        r#"printf("%d %s exec %s\n", pid, comm, str(args->filename));"#,
    ),
    (
        "tracepoint:sched:sched_process_exit",
        r#"printf("%d %s exit\n", pid, comm);"#,
    ),
    (
        "tracepoint:signal:signal_generate",
        r#"printf("%d %s signal %d to %d\n", pid, comm, args->sig, args->pid);"#,
    ),
    (
        "tracepoint:oom:mark_victim",
        r#"printf("%d %s oom victim %d\n", pid, comm, args->pid);"#,
    ),
];

pub fn script() -> String {
    PROBES
        .iter()
        .map(|(probe, body)| format!("{probe} {{ {body} }}\n"))
        .collect()
}

pub struct Bpftrace {
    guard: Guard,
    pub pid: u32,
}

impl Bpftrace {
    /// Starts bpftrace on the script in `path` and waits until every probe is attached.
    pub fn start(path: &Path) -> Result<Self> {
        std::fs::write(path, script())?;
        let mut cmd = Command::new("bpftrace");
        cmd.arg("-o")
            .arg("/dev/null")
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // It complains about RLIMIT_MEMLOCK, which kernels with memcg accounting ignore.
            .stderr(Stdio::null());
        let mut guard = Guard::spawn("bpftrace", &mut cmd, libc::SIGINT)?;
        let pid = guard.pid();
        let start = Instant::now();
        // Attached: one program and one perf event per probe (plus the per-CPU buffers).
        loop {
            process::check_interrupted()?;
            guard.check_running()?;
            let fds = process::bpf_fds(pid).unwrap_or_default();
            if fds.progs >= PROBES.len() as u64 && fds.perf_events >= PROBES.len() as u64 {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("bpftrace did not attach its probes within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The last attachments and bpftrace's start-up work settle.
        process::sleep(Duration::from_millis(500))?;
        Ok(Self { guard, pid })
    }

    pub fn stop(self) -> Result<Duration> {
        self.guard.stop()
    }

    pub fn check_running(&mut self) -> Result<()> {
        self.guard.check_running()
    }
}
