//! Kernel integration test: a listener that handles SIGTERM and exits 0 is reported (its
//! clean exit and its listener's close); a process that never listened, stopped the same
//! way, is not (the kernel filters clean exits of processes it does not watch).

mod common;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{harness, pid_of, Matcher};
use why502::model::event::{Event, EventDetail};

const WAIT: Duration = Duration::from_secs(5);
/// How long the exit that must not be reported is waited for, after everything the
/// test provoked later has been reported.
const QUIET: Duration = Duration::from_millis(500);
/// Debian's own interpreter (a pyenv shim on PATH would run more programs first).
const PYTHON: &str = "/usr/bin/python3";

/// Exits 0 on SIGTERM; prints its line once the handler is installed, so that the
/// SIGTERM cannot come before it.
const ON_SIGTERM_EXIT_0: &str =
    "import signal, sys\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n";

/// A child process that is killed on drop (a failed assertion leaves nothing behind).
struct Python {
    child: Child,
    /// The first line it printed.
    line: String,
}

impl Python {
    /// Runs `script` and waits (bounded) for the first line it prints.
    fn start(script: &str) -> Self {
        assert!(std::path::Path::new(PYTHON).exists(), "{PYTHON} is missing");
        let mut child = Command::new(PYTHON)
            .args(["-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut python = Self {
            child,
            line: String::new(),
        };
        python.line = rx
            .recv_timeout(WAIT)
            .expect("the script printed its first line")
            .trim()
            .to_string();
        python
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (bounded) for the exit code.
    fn terminate(&mut self) -> Option<i32> {
        assert!(
            why502_e2e::signal_and_wait(&mut self.child, libc::SIGTERM, WAIT),
            "pid {} still running after SIGTERM",
            self.pid()
        );
        self.child.wait().unwrap().code()
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal_to(e: &Event, pid: u32) -> bool {
    matches!(&e.detail, EventDetail::Signal(s) if s.target_pid == pid as i32 && s.signal == "SIGTERM")
}

fn exit_of(e: &Event, pid: u32) -> bool {
    matches!(e.detail, EventDetail::ProcessExit(_)) && pid_of(e) == Some(pid)
}

#[test]
fn a_listeners_clean_exit_after_sigterm_is_reported() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let mut listener = Python::start(&format!(
        "{ON_SIGTERM_EXIT_0}import socket\n\
         s = socket.socket()\n\
         s.bind(('127.0.0.1', 0))\n\
         s.listen(8)\n\
         print(s.getsockname()[1], flush=True)\n\
         while True: signal.pause()\n"
    ));
    let endpoint: SocketAddr = format!("127.0.0.1:{}", listener.line).parse().unwrap();
    let lpid = listener.pid();
    h.wait_for(&mut events, WAIT, "listener opened", |e| {
        matches!(&e.detail, EventDetail::ListenerOpened(l) if l.endpoint == endpoint)
            && pid_of(e) == Some(lpid)
    });
    // The control: the same handler, no socket.
    let mut control = Python::start(&format!(
        "{ON_SIGTERM_EXIT_0}print('ready', flush=True)\nwhile True: signal.pause()\n"
    ));
    let cpid = control.pid();

    // The control first: by the time the listener's exit is reported, the control's
    // would have been too.
    assert_eq!(
        control.terminate(),
        Some(0),
        "the control's handler exits 0"
    );
    assert_eq!(
        listener.terminate(),
        Some(0),
        "the listener's handler exits 0"
    );

    let relevant = |e: &Event| {
        signal_to(e, lpid)
            || signal_to(e, cpid)
            || exit_of(e, lpid)
            || exit_of(e, cpid)
            || matches!(&e.detail, EventDetail::ListenerClosed(l) if l.endpoint == endpoint)
    };
    let expected: [(&str, Matcher); 4] = [
        ("SIGTERM to the control", &|e| signal_to(e, cpid)),
        ("SIGTERM to the listener", &|e| signal_to(e, lpid)),
        ("listener's exit", &|e| exit_of(e, lpid)),
        (
            "listener closed",
            &|e| matches!(&e.detail, EventDetail::ListenerClosed(l) if l.endpoint == endpoint),
        ),
    ];
    let mut seen: Vec<Arc<Event>> = Vec::new();
    let all_seen = |seen: &[Arc<Event>]| expected.iter().all(|(_, m)| seen.iter().any(|e| m(e)));
    let deadline = Instant::now() + WAIT;
    while !all_seen(&seen) && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        seen.extend(h.collect(&mut events, left, 1, &relevant));
    }
    let missing: Vec<&str> = expected
        .iter()
        .filter(|(_, m)| !seen.iter().any(|e| m(e)))
        .map(|(what, _)| *what)
        .collect();
    assert!(missing.is_empty(), "no {missing:?} within {WAIT:?}");
    seen.extend(h.collect(&mut events, QUIET, usize::MAX, &relevant));

    let exits: Vec<_> = seen.iter().filter(|e| exit_of(e, lpid)).collect();
    assert_eq!(exits.len(), 1, "one exit of the listener: {exits:?}");
    let EventDetail::ProcessExit(exit) = &exits[0].detail else {
        unreachable!()
    };
    assert_eq!(exit.code, Some(0), "{exit:?}");
    assert_eq!(exit.signal, None, "{exit:?}");
    assert_eq!(exit.signal_number, None, "{exit:?}");
    assert_eq!(exit.ppid, Some(std::process::id()), "{exit:?}");

    let closed = seen
        .iter()
        .find(|e| matches!(&e.detail, EventDetail::ListenerClosed(_)))
        .unwrap();
    assert_eq!(
        pid_of(closed),
        Some(lpid),
        "closed by the listener: {closed:?}"
    );

    let control_exits: Vec<_> = seen.iter().filter(|e| exit_of(e, cpid)).collect();
    assert!(
        control_exits.is_empty(),
        "a process that never listened exits cleanly unreported: {control_exits:?}"
    );
}
