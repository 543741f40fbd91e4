//! Kernel integration test: a reused pid does not inherit a dead process's identity. A
//! first process (`php-fpm`, /bin/sh through a link of that name) is enriched while it
//! runs and exits 1; a second one is made to get its pid on the host (the pid before it
//! written to `/proc/sys/kernel/ns_last_pid`, then a fork) and fails a connect: the
//! agent's event names the second process, not the cached first.

mod common;

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use common::{closed_port, harness, pid_of};
use why502::model::event::{Event, EventDetail};

const WAIT: Duration = Duration::from_secs(5);
/// Forks that may be spent on getting the pid: other processes on the host fork too, and
/// one of them may take it between the write and the fork.
const ATTEMPTS: usize = 200;
/// What the second process calls itself (`prctl(PR_SET_NAME)`).
const SECOND_NAME: &[u8] = b"reused-pid\0";

/// The forked child that got the pid, paused until this is dropped: killed and reaped.
struct Forked {
    pid: libc::pid_t,
}

impl Drop for Forked {
    fn drop(&mut self) {
        let mut status = 0;
        // SAFETY: killing and waiting for a child of ours.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, &mut status, 0);
        }
    }
}

/// Forks until the child gets `pid` (bounded by [`ATTEMPTS`]). The child names itself,
/// connects to `port` on 127.0.0.1 (refused), then pauses until killed. Children
/// that got another pid exit at once, cleanly (not reported) and are reaped here.
fn fork_with_pid(pid: libc::pid_t, port: u16) -> Forked {
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    for _ in 0..ATTEMPTS {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("write ns_last_pid (root only)");
        // SAFETY: the child only makes async-signal-safe calls on memory prepared before
        // the fork, and leaves with _exit.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
        if child == 0 {
            // SAFETY: as above: syscalls on prepared memory, no allocation, no locks.
            unsafe {
                if libc::getpid() != pid {
                    libc::_exit(0);
                }
                libc::prctl(libc::PR_SET_NAME, SECOND_NAME.as_ptr());
                let socket = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                libc::connect(
                    socket,
                    (&address as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                loop {
                    libc::pause();
                }
            }
        }
        let forked = Forked { pid: child };
        if child == pid {
            return forked;
        }
    }
    panic!("no fork got pid {pid} in {ATTEMPTS} attempts");
}

#[test]
fn a_reused_pid_names_the_new_process() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let dir = tempfile::tempdir().unwrap();
    let php_fpm = dir.path().join("php-fpm");
    std::os::unix::fs::symlink("/bin/sh", &php_fpm).unwrap();
    let mut first = Command::new(&php_fpm)
        .args(["-c", "read line; exit 1"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = first.id();
    let is_first = |e: &Event| pid_of(e) == Some(pid);
    // Enriched while it runs (it waits on its stdin): the cache now holds it.
    let exec = h.wait_for(&mut events, WAIT, "first's exec", |e| {
        is_first(e)
            && matches!(e.detail, EventDetail::ProcessExec(_))
            && e.process.as_ref().and_then(|p| p.info.as_ref()).is_some()
    });
    let first_info = exec.process.as_ref().unwrap().info.clone().unwrap();
    assert_eq!(exec.process.as_ref().unwrap().comm, "php-fpm");
    assert!(
        first_info
            .cmdline
            .as_deref()
            .is_some_and(|c| c.contains("read line; exit 1")),
        "{first_info:?}"
    );
    first.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert_eq!(first.wait().unwrap().code(), Some(1));
    h.wait_for(&mut events, WAIT, "first's exit", |e| {
        is_first(e) && matches!(&e.detail, EventDetail::ProcessExit(x) if x.code == Some(1))
    });

    // The pid is free again (reaped): the next process forked on the host gets it.
    let second = fork_with_pid(pid as libc::pid_t, closed_port());
    let failed = h.wait_for(&mut events, WAIT, "second's refused connect", |e| {
        is_first(e)
            && matches!(
                e.detail,
                EventDetail::TcpConnectFailure(_) | EventDetail::ConnectSyscallError(_)
            )
    });
    let process = failed.process.as_ref().unwrap();
    let info = process.info.as_ref().expect("procfs details of the second");
    assert_eq!(process.comm, "reused-pid", "{process:?}");
    assert_eq!(process.thread, None, "{process:?}");
    assert_eq!(info.name.as_deref(), Some("reused-pid"));
    // A fork of this test: its executable and command line, not php-fpm's.
    let me = std::env::current_exe().unwrap();
    assert_eq!(info.exe.as_deref(), me.to_str());
    assert!(
        !info
            .cmdline
            .as_deref()
            .unwrap_or_default()
            .contains("read line"),
        "{info:?}"
    );
    assert_eq!(info.ppid, Some(std::process::id()));
    drop(second);
}
