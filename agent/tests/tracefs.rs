//! The agent mounts tracefs when it is missing: `why502 agent` run in a mount namespace of
//! its own (`unshare --mount --propagation private`), where tracefs is unmounted first,
//! says it mounted it and attaches its probes. The host's mounts are never touched: the
//! unmount happens only after the shell checked that it runs in another mount namespace.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_why502");
const TRACEFS: &str = "/sys/kernel/tracing";
/// Loading and attaching every program takes a second or two; far less than this.
const START: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(10);

/// Unmounts tracefs in the new mount namespace ($1: the test's own namespace, which it
/// must not be), checks it is gone, then becomes the agent ($2 the binary, $3 its config).
const SCRIPT: &str = r#"set -e
if [ "$(readlink /proc/self/ns/mnt)" = "$1" ]; then
    echo "refusing to unmount: still in the test's mount namespace" >&2
    exit 97
fi
if mountpoint -q /sys/kernel/tracing; then umount /sys/kernel/tracing; fi
if [ -d /sys/kernel/tracing/events ]; then
    echo "tracefs is still mounted at /sys/kernel/tracing" >&2
    exit 98
fi
echo "tracefs unmounted in this namespace" >&2
exec "$2" agent --log-level info --config "$3"
"#;

/// The agent's process, killed on drop if it still runs (a failed assertion leaves
/// nothing behind; its mount namespace goes with it).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn tracefs_is_mounted_when_missing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: not root: the agent needs root to load eBPF programs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("why502.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{0}/why502.db\"\n[api]\nsocket = \"{0}/why502.sock\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n[probes]\nbtf_tracepoints = {1}\n",
            dir.path().display(),
            !why502_e2e::classic_tracepoints_only()
        ),
    )
    .unwrap();
    let own_ns = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let child = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            SCRIPT,
            "sh",
        ])
        .arg(&own_ns)
        .arg(BIN)
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run unshare (util-linux)");
    let mut agent = Running(child);

    // The log, read on a thread of its own so the pipe never fills, up to the line that
    // says the agent runs (or its exit).
    let stderr = agent.0.stderr.take().unwrap();
    let (tx, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + START;
    let running = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains("why502 agent running") => break true,
            Ok(line) => lines.push(line),
            Err(_) => break false,
        }
    };
    assert!(running, "the agent did not start: {lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l == "tracefs unmounted in this namespace"),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(&format!("mounted tracefs at {TRACEFS}"))),
        "the agent does not say it mounted tracefs: {lines:#?}"
    );
    // "N of M probes attached (K not needed here): …": every probe this kernel needs.
    let attached = lines
        .iter()
        .find_map(|l| l.split_once(" probes attached ").map(|(head, _)| (l, head)))
        .unwrap_or_else(|| panic!("no probes-attached line: {lines:#?}"));
    let (line, head) = attached;
    let counts: Vec<usize> = head
        .rsplit(' ')
        .take(3)
        .filter_map(|w| w.parse().ok())
        .collect();
    let [of, n] = counts[..] else {
        panic!("not \"N of M probes attached\": {line}");
    };
    assert!(n > 0, "{line}");
    // Classic tracepoints only: tcp_sendmsg_locked, a tp_btf program, cannot attach.
    let off = usize::from(why502_e2e::classic_tracepoints_only());
    assert_eq!(n + off, of, "every probe attached: {line}");
    assert!(line.contains("inet_sock_set_state"), "{line}");
    why502_e2e::assert_tracepoint_mode(line);

    // SIGTERM: a clean stop, bounded.
    assert!(
        why502_e2e::signal_and_wait(&mut agent.0, libc::SIGTERM, STOP),
        "the agent did not stop within {STOP:?} of SIGTERM"
    );
    let status = agent.0.wait().unwrap();
    assert!(status.success(), "the agent's exit: {status:?}");
    // The host's tracefs was never touched.
    assert!(Path::new(TRACEFS).join("events").is_dir());
}
