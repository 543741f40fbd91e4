//! Counters of what the kernel saw, one event at a time: failed connects by errno, resets,
//! SYN retransmits, process exits and OOM kills.

use prometheus::{IntCounterVec, Registry};

use super::{labels::Labels, registry::counter, MetricsError};
use crate::model::{
    event::{EndHow, Event, EventDetail},
    failure::FailureKind,
};

pub struct EventMetrics {
    connects: IntCounterVec,
    connect_errors: IntCounterVec,
    request_errors: IntCounterVec,
    resets_received: IntCounterVec,
    resets_sent: IntCounterVec,
    syn_retransmits: IntCounterVec,
    process_exits: IntCounterVec,
    oom_kills: IntCounterVec,
    events: IntCounterVec,
}

impl EventMetrics {
    /// `connects` is shared with the kernel's success counts: one series, both sources.
    pub fn new(r: &Registry, connects: IntCounterVec) -> Result<Self, MetricsError> {
        Ok(Self {
            connects,
            connect_errors: counter(r, "why502_upstream_connect_errors_total", "Failed connects to an upstream, by errno (timeout: the proxy gave up during the handshake).", &["proxy", "upstream", "errno"])?,
            request_errors: counter(r, "why502_upstream_request_errors_total", "Requests whose upstream connection ended without an answer: closed_before_response (the upstream closed first), response_timeout (the proxy gave up waiting).", &["proxy", "upstream", "kind"])?,
            resets_received: counter(r, "why502_tcp_resets_received_total", "RSTs received on connections past the handshake.", &["proxy", "upstream", "state"])?,
            resets_sent: counter(r, "why502_tcp_resets_sent_total", "RSTs sent on full sockets.", &["proxy", "upstream", "state"])?,
            syn_retransmits: counter(r, "why502_tcp_syn_retransmits_total", "SYNs retransmitted by connecting proxies.", &["proxy", "upstream"])?,
            process_exits: counter(r, "why502_process_exits_total", "Process exits: clean (of listeners), exit_code (non-zero), or the fatal signal's name.", &["service", "reason"])?,
            oom_kills: counter(r, "why502_oom_kills_total", "Processes chosen by the OOM killer.", &["service"])?,
            events: counter(r, "why502_events_total", "Events received from the kernel, by kind.", &["kind"])?,
        })
    }

    /// Counts one event.
    pub fn observe(&self, event: &Event, labels: &mut Labels) {
        self.events.with_label_values(&[event.detail.kind()]).inc();
        let process = event.process.as_ref();
        let failed = |upstream: String, kind: FailureKind, labels: &mut Labels| {
            let proxy = labels.proxy_of(process);
            let upstream = labels.upstream_of(&proxy, &upstream);
            self.connects.with_label_values(&[&proxy, &upstream]).inc();
            self.connect_errors
                .with_label_values(&[&proxy, &upstream, kind.name()])
                .inc();
        };
        match &event.detail {
            EventDetail::TcpConnectFailure(f) => {
                failed(f.dst.to_string(), FailureKind::of_connect(f), labels)
            }
            EventDetail::ConnectSyscallError(e) if !e.is_benign() => {
                failed(e.dst.to_string(), FailureKind::Errno(e.errno), labels)
            }
            EventDetail::TcpResetReceived(r) | EventDetail::TcpResetSent(r) => {
                let proxy = labels.proxy_of(process);
                let upstream = labels.upstream_of(&proxy, &r.dst.to_string());
                let vec = match event.detail {
                    EventDetail::TcpResetReceived(_) => &self.resets_received,
                    _ => &self.resets_sent,
                };
                vec.with_label_values(&[&proxy, &upstream, r.state]).inc();
            }
            EventDetail::UpstreamEnd(end) => {
                let proxy = labels.proxy_of(process);
                let upstream = labels.upstream_of(&proxy, &end.dst.to_string());
                let kind = match end.how {
                    EndHow::ClosedByUpstream => FailureKind::ClosedBeforeResponse,
                    EndHow::ProxyGaveUp => FailureKind::ResponseTimeout,
                };
                self.request_errors
                    .with_label_values(&[&proxy, &upstream, kind.name()])
                    .inc();
            }
            EventDetail::TcpSynRetransmit(r) => {
                let proxy = labels.proxy_of(process);
                let upstream = labels.upstream_of(&proxy, &r.dst.to_string());
                self.syn_retransmits
                    .with_label_values(&[&proxy, &upstream])
                    .inc();
            }
            EventDetail::ProcessExit(exit) => {
                let service = labels.service_of(process);
                let reason = match (&exit.signal, exit.code) {
                    (Some(signal), _) => signal.clone(),
                    (None, Some(0)) => "clean".into(),
                    _ => "exit_code".into(),
                };
                self.process_exits
                    .with_label_values(&[&service, &reason])
                    .inc();
            }
            EventDetail::OomKill(kill) => {
                let name = super::labels::service_name(kill.victim.as_deref(), &kill.victim_comm);
                let service = labels.service(&name);
                self.oom_kills.with_label_values(&[&service]).inc();
            }
            _ => {}
        }
    }
}
