//! Harness for why502's end-to-end tests: a real nginx (Debian's package) with its own
//! prefix and config in a temporary directory, small backends, the `why502` agent as a
//! child process, and a plain HTTP client. Everything started here is stopped on drop.

pub mod agent;
pub mod backend;
pub mod cgroup;
pub mod http;
pub mod incident_query;
pub mod lab;
pub mod netns;
pub mod nginx;
pub mod node_net;
pub mod pods;
pub mod prometheus;
pub mod python;

use std::path::PathBuf;

/// Set to `classic`, the agents the tests start attach only classic tracepoints
/// (`probes.btf_tracepoints = false`): `cargo xtask test` runs the kernel and end-to-end
/// tests that decide detections once more that way, so that the fallback for kernels
/// without BTF stays tested. The agent must then be seen to use it.
pub const TRACEPOINTS_ENV: &str = "WHY502_TEST_TRACEPOINTS";

/// Whether [`TRACEPOINTS_ENV`] asks for classic tracepoints only (any other value is an
/// error, not a silent default).
pub fn classic_tracepoints_only() -> bool {
    match std::env::var(TRACEPOINTS_ENV).as_deref() {
        Ok("classic") => true,
        Ok("") | Err(_) => false,
        Ok(other) => panic!("{TRACEPOINTS_ENV}={other}: only \"classic\" is known"),
    }
}

/// Checks that the agent's "N of M probes attached…" log line matches the mode the test
/// run asked for: classic only (no `tp_btf` program, the write-syscall probes on).
pub fn assert_tracepoint_mode(attached_line: &str) {
    if classic_tracepoints_only() {
        assert!(
            !attached_line.contains("tp_btf") && attached_line.contains("sys_enter_writev"),
            "{TRACEPOINTS_ENV}=classic, but the agent attached: {attached_line}"
        );
    }
}

/// Where [`sibling_binary`] looks instead of next to the running executable (`cargo xtask
/// lab` sets it to `target/debug`).
pub const BIN_DIR_ENV: &str = "WHY502_BIN_DIR";

/// A binary built into the same target directory as the running test (or into
/// `$WHY502_BIN_DIR`).
pub fn sibling_binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("current test executable");
            // target/<profile>/deps/<test> → target/<profile>/<name>
            exe.parent()
                .and_then(|deps| deps.parent())
                .expect("test executable lives in target/<profile>/deps")
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests through `cargo xtask test` (or `cargo test -p why502 -p why502-e2e`)",
        path.display()
    );
    path
}

/// Whether this machine can run the kernel-backed tests; prints why not.
pub fn can_load_ebpf() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: not root: the agent needs root to load eBPF programs");
        return false;
    }
    true
}

/// A TCP port on 127.0.0.1 that is free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Serializes the tests of one binary that each run an agent: every agent sees the whole
/// host, so a concurrent test's incidents would show up in `explain --last`.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends `signal` to `child` and waits up to `limit` for it to exit; whether it did.
pub fn signal_and_wait(
    child: &mut std::process::Child,
    signal: i32,
    limit: std::time::Duration,
) -> bool {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}
