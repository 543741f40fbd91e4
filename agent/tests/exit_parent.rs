//! Kernel integration tests: an orphan's exit names the parent it was given, from the kernel
//! (a plain exit's parent is checked in `process.rs`).

mod common;

use std::{io::Read, process::Command, process::Stdio, time::Duration};

use common::{harness, pid_of};
use why502::model::event::EventDetail;

const WAIT: Duration = Duration::from_secs(5);

/// A process whose parent exited first names the one it was reparented to, not the dead
/// parent.
#[test]
fn an_orphan_names_its_new_parent() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    // The subshell outlives its shell, then fails (clean exits of non-listeners are not
    // reported).
    let mut shell = Command::new("sh")
        .args(["-c", "(sleep 0.3; exit 4) & echo $!"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let shell_pid = shell.id();
    let mut out = String::new();
    shell
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(shell.wait().unwrap().success());
    let orphan: u32 = out.trim().parse().unwrap();
    let exit = h.wait_for(&mut events, WAIT, "the orphan's exit", |e| {
        matches!(e.detail, EventDetail::ProcessExit(_)) && pid_of(e) == Some(orphan)
    });
    let EventDetail::ProcessExit(exit) = &exit.detail else {
        unreachable!()
    };
    assert_eq!(exit.code, Some(4));
    let ppid = exit.ppid.expect("the kernel knows the parent");
    assert_ne!(ppid, shell_pid, "the shell was gone");
    assert_ne!(ppid, orphan);
}
