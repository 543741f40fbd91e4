//! Kernel integration tests: enrichment runs off the async workers, and a unix listener
//! among many sockets is named by its inode.

mod common;

use std::{
    os::unix::net::{UnixListener, UnixStream},
    process::Command,
    time::Duration,
};

use common::{harness, pid_of};
use why502::{model::event::EventDetail, sources::ring::ENRICH_THREAD};

const WAIT: Duration = Duration::from_secs(5);

/// The names of this process's threads (the agent runs inside the test binary).
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|comm| comm.trim_end().to_string())
        .collect()
}

/// The ring's records are decoded and enriched on a thread of the agent's own, not on a
/// tokio worker: an event arrives enriched while that thread exists, once.
#[test]
fn enrichment_runs_on_a_thread_of_its_own() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let mut child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
    let pid = child.id();
    assert_eq!(child.wait().unwrap().code(), Some(3));
    let exit = h.wait_for(&mut events, WAIT, "exit", |e| {
        matches!(e.detail, EventDetail::ProcessExit(_)) && pid_of(e) == Some(pid)
    });
    assert!(exit.process.is_some());
    let names = thread_names();
    assert_eq!(
        names.iter().filter(|n| *n == ENRICH_THREAD).count(),
        1,
        "threads: {names:?}"
    );
}

/// Raises this process's open-file limit to at least `want` (root may raise the hard
/// limit too).
fn raise_nofile(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct given, nothing else.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: limit.rlim_max.max(want),
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &raised), 0);
        }
    }
}

/// With 10,000 other unix sockets open (the test's own, closed at the end), a new
/// listener's `listen(2)` is reported with its path.
#[test]
fn a_unix_listener_among_10k_sockets_is_named() {
    const OTHERS: usize = 10_000;
    let Some(h) = harness() else { return };
    raise_nofile(OTHERS as u64 + 512);
    let others: Vec<(UnixStream, UnixStream)> = (0..OTHERS / 2)
        .map(|_| UnixStream::pair().unwrap())
        .collect();
    let mut events = h.subscribe();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("php-fpm.sock");
    let _listener = UnixListener::bind(&path).unwrap();
    let expected = path.display().to_string();
    let event = h.wait_for(
        &mut events,
        WAIT,
        "unix listener",
        |e| matches!(&e.detail, EventDetail::UnixListenerOpened(l) if l.path == expected),
    );
    assert_eq!(pid_of(&event), Some(std::process::id()));
    drop(others);
}
