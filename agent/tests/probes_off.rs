//! A probe turned off in the configuration turns off that probe only, and `why502 status`
//! says so. Its own test binary: the shared agent of a binary takes the first
//! configuration.

mod common;

use std::{cell::RefCell, net::TcpStream, process::Command, time::Duration};

use agent_common::config::Probe;
use common::{closed_port, harness_with, pid_of, sample, Harness, TEST_LABEL_CAP};
use why502::{
    model::event::EventDetail,
    sources::probes::{Attachment, ProbeStatus},
};

const WAIT: Duration = Duration::from_secs(5);

fn harness() -> Option<&'static Harness> {
    harness_with(|config| {
        config.probes.disable = vec![Probe::SignalGenerate.name().to_string()];
        config.metrics.max_upstreams = TEST_LABEL_CAP;
        config.metrics.max_proxies = TEST_LABEL_CAP;
        config.metrics.max_services = TEST_LABEL_CAP;
    })
}

#[test]
fn the_disabled_probe_is_off_and_said_to_be() {
    let Some(h) = harness() else { return };
    let status = h.agent.probe_status();
    assert_eq!(status[&Probe::SignalGenerate], ProbeStatus::Disabled);
    for probe in [
        Probe::InetSockSetState,
        Probe::SchedProcessExec,
        Probe::SchedProcessExit,
    ] {
        assert!(
            matches!(status[&probe], ProbeStatus::Attached(_)),
            "{}: {:?}",
            probe.name(),
            status[&probe]
        );
    }
    let json = h.status_json();
    assert_eq!(
        json["probes"]["signal_generate"]["status"], "disabled",
        "{json:#}"
    );
    assert_eq!(
        json["probes"]["sched_process_exit"]["status"], "attached",
        "{json:#}"
    );
    let text = h.status_text();
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("off: signal_generate: disabled")),
        "{text}"
    );
    // No series for a probe turned off.
    let metrics = h.scrape();
    assert_eq!(
        sample(
            &metrics,
            "why502_probe_attached",
            &[("probe", "signal_generate")]
        ),
        None
    );
    let attached = sample(
        &metrics,
        "why502_probe_attached",
        &[("probe", "sched_process_exit")],
    );
    assert_eq!(attached, Some(1.0));
    assert!(matches!(
        status[&Probe::InetSockSetState],
        ProbeStatus::Attached(Attachment::TpBtf | Attachment::Tracepoint)
    ));
}

/// The others still detect: a refused connect, and a death by signal, whose signal
/// itself is not reported.
#[test]
fn the_others_still_detect() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let port = closed_port();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    let refused = h.wait_for(
        &mut events,
        WAIT,
        "refused connect",
        |e| matches!(&e.detail, EventDetail::TcpConnectFailure(f) if f.dst.port() == port),
    );
    assert_eq!(pid_of(&refused), Some(std::process::id()));

    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSEGV) }, 0);
    child.wait().unwrap();
    // The signal is generated before the death it causes: had its probe been on, its
    // event would be read before the exit's.
    let signals = RefCell::new(Vec::new());
    let exit = h.wait_for(&mut events, WAIT, "exit", |e| {
        if matches!(&e.detail, EventDetail::Signal(s) if s.target_pid == pid as i32) {
            signals.borrow_mut().push(e.clone());
        }
        matches!(e.detail, EventDetail::ProcessExit(_)) && pid_of(e) == Some(pid)
    });
    let EventDetail::ProcessExit(exit) = &exit.detail else {
        unreachable!()
    };
    assert_eq!(exit.signal.as_deref(), Some("SIGSEGV"));
    let signals = signals.into_inner();
    assert!(
        signals.is_empty(),
        "signal events with the probe off: {signals:?}"
    );
}
