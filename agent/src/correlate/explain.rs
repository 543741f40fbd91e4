//! From what the host saw to ranked explanations of one incident: the rules of
//! `shared/502-causes.md`, each cause a candidate with its evidence and a confidence.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use super::{
    history::{Dated, ExitRecord, SignalRecord},
    knowledge::Knowledge,
    listeners::{ListenerRecord, Owner},
};
use crate::model::{
    event::{Endpoint, Exit, ListenQueueFull, HOST_SCOPE},
    failure::FailureKind,
    incident::{Candidate, Cause, Confidence, Evidence, Incident, ProcessSummary},
    text::{self, clock_time, kib, kinds_text},
};

/// Signals that mean the program itself failed.
const CRASH_SIGNALS: [&str; 7] = [
    "SIGSEGV", "SIGABRT", "SIGBUS", "SIGILL", "SIGFPE", "SIGSYS", "SIGTRAP",
];

/// An exit this close before the first failure makes a crash or kill a sure cause.
const CLOSE_IN_TIME: Duration = Duration::from_secs(1);

/// What the explanation is about.
pub struct Failures<'a> {
    pub upstream: &'a Endpoint,
    /// Where a DNAT sent the connections to `upstream` (a service address to a pod),
    /// from conntrack: the listener to look for.
    pub nat_destination: Option<&'a Endpoint>,
    pub proxy: &'a ProcessSummary,
    pub first_mono: u64,
    pub first_time: SystemTime,
    pub count: u64,
    pub kinds: &'a BTreeMap<FailureKind, u64>,
    /// The proxy's 5xx responses meanwhile, by status.
    pub responses: &'a BTreeMap<u16, u64>,
}

/// The ranked candidates; never empty.
pub fn explain(f: &Failures, k: &Knowledge) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    let count = |kind: FailureKind| f.kinds.get(&kind).copied().unwrap_or(0);
    let first = first_failure(f);

    if count(FailureKind::EADDRNOTAVAIL) > 0 {
        candidates.push(Candidate {
            cause: Cause::PortExhaustion,
            confidence: Confidence::High,
            summary: format!(
                "{} ran out of local ports: connect() returned EADDRNOTAVAIL ×{}",
                describe(f.proxy),
                count(FailureKind::EADDRNOTAVAIL)
            ),
            hint: "enable upstream keepalive (fewer new connections), widen \
                   net.ipv4.ip_local_port_range, or allow net.ipv4.tcp_tw_reuse"
                .into(),
            process: Some(f.proxy.clone()),
            evidence: vec![first.clone()],
        });
    }

    let target = f.nat_destination.unwrap_or(f.upstream);
    let found = k.listeners.lookup(target);
    if let Some((endpoint, record)) = found {
        let alive = record
            .current
            .as_ref()
            .filter(|o| o.since_mono <= f.first_mono);
        match alive {
            Some(owner) => alive_listener(f, k, owner, endpoint, &first, &mut candidates),
            None => gone_listener(f, k, record, endpoint, &first, &mut candidates),
        }
        let owner = alive.map(|o| &o.process).or_else(|| {
            record
                .last_past_before(f.first_mono + CLOSE_IN_TIME.as_nanos() as u64)
                .map(|p| &p.owner.process)
        });
        memory_pressure(f, k, owner, &mut candidates);
    } else if k.is_local(target) {
        candidates.push(Candidate {
            cause: Cause::WrongPort,
            confidence: Confidence::High,
            summary: format!(
                "nothing has listened on {} since why502 started watching at {}: {} points at a \
                 port or socket nobody serves",
                f.upstream,
                clock_time(k.watching_since),
                describe(f.proxy)
            ),
            hint: "compare the proxy's upstream (proxy_pass, fastcgi_pass, server lines) with \
                   the real listeners (ss -ltnp, ss -lxp)"
                .into(),
            process: None,
            evidence: vec![first.clone()],
        });
    }

    if candidates.is_empty() {
        let remote = !k.is_local(target);
        candidates.push(Candidate {
            cause: Cause::NoLocalCause,
            confidence: Confidence::Low,
            summary: if remote {
                format!(
                    "no local cause seen: {} is on another host, where why502 cannot see; \
                     DNS and TLS problems are not visible to the kernel either",
                    f.upstream
                )
            } else {
                format!(
                    "no local cause seen for the failures to {}; DNS and TLS problems are not \
                     visible to the kernel",
                    f.upstream
                )
            },
            hint: "look at the upstream host itself, and at the network between the two".into(),
            process: None,
            evidence: vec![first],
        });
    }
    candidates.sort_by_key(|c| std::cmp::Reverse(c.confidence));
    candidates
}

/// A spike of 5xx responses with no upstream failure seen: the proxy did not get as far as
/// a connect, or the failure is one the kernel cannot see.
pub fn no_upstream_connect(incident: &Incident) -> Candidate {
    let total: u64 = incident.responses.values().sum();
    Candidate {
        cause: Cause::NoUpstreamConnect,
        confidence: Confidence::Medium,
        summary: format!(
            "{} answered {} ({} responses) without any failed upstream connect or reset on \
             this host: no upstream connection was attempted (a name that does not resolve, no \
             live upstreams, a configuration error), or the upstream's TLS failed, which the \
             kernel cannot see",
            describe(&incident.proxy),
            kinds_text(&incident.responses),
            total
        ),
        hint: "read the proxy's error log for \"could not be resolved\", \"no live upstreams\" \
               or SSL errors"
            .into(),
        process: Some(incident.proxy.clone()),
        evidence: vec![Evidence {
            time: incident.started_at,
            kind: "http_responses".into(),
            text: format!("first 5xx responses from {}", describe(&incident.proxy)),
        }],
    }
}

/// High memory pressure (host-wide, or in the listener owner's service) in the look-back:
/// a candidate of its own, and part of an OOM kill's timeline.
fn memory_pressure(
    f: &Failures,
    k: &Knowledge,
    owner: Option<&ProcessSummary>,
    out: &mut Vec<Candidate>,
) {
    let service = owner.map(|o| o.unit.clone().unwrap_or_else(|| o.comm.clone()));
    let mut scopes = vec![HOST_SCOPE];
    if let Some(service) = &service {
        scopes.push(service);
    }
    let since = f.first_mono.saturating_sub(k.lookback_ns);
    let Some(pressure) = k.history.pressure_in(&scopes, since, f.first_mono) else {
        return;
    };
    let p = &pressure.value;
    let evidence = Evidence {
        time: pressure.time,
        kind: "memory_pressure".into(),
        text: format!("memory pressure {:.0}% ({})", p.some_avg10, p.scope),
    };
    if let Some(oom) = out.iter_mut().find(|c| c.cause == Cause::OomKill) {
        oom.evidence.push(evidence.clone());
        oom.evidence.sort_by_key(|e| e.time);
    }
    out.push(Candidate {
        cause: Cause::MemoryPressure,
        confidence: Confidence::Medium,
        summary: format!(
            "memory pressure was high before the failures: {} stalled on memory {:.0}% of the \
             time (PSI some avg10) at {}",
            if p.scope == HOST_SCOPE {
                "the host".to_string()
            } else {
                p.scope.clone()
            },
            p.some_avg10,
            clock_time(pressure.time)
        ),
        hint: "give the service more memory or run fewer workers; look for what else uses \
               memory on the host"
            .into(),
        process: owner.cloned(),
        evidence: vec![evidence, first_failure(f)],
    });
}

/// `129/128` where the backlog is known (sock_diag), else what procfs showed: the queue
/// and the handshakes its namespace dropped (`3 waiting, 5 dropped`).
fn queue_text(q: &ListenQueueFull) -> String {
    match (q.backlog, q.overflows) {
        (Some(backlog), _) => format!("{}/{backlog}", q.queued),
        (None, Some(dropped)) => format!("{} waiting, {dropped} dropped", q.queued),
        (None, None) => format!("{} waiting", q.queued),
    }
}

fn first_failure(f: &Failures) -> Evidence {
    let nat = f
        .nat_destination
        .map(|real| format!(" to {}, which a DNAT sent to {real}", f.upstream))
        .unwrap_or_default();
    Evidence {
        time: f.first_time,
        kind: "first_failure".into(),
        text: format!("first failed connect from {}{nat}", describe(f.proxy)),
    }
}

/// A process as explanations name it: as everywhere ([`text::describe`]: pid, unit,
/// container), and its Kubernetes pod when it runs in one (namespace/name once the API
/// named it, else its UID).
fn describe(p: &ProcessSummary) -> String {
    let base = text::describe(p);
    let Some(pod) = &p.pod else {
        return base;
    };
    let pod = match (&pod.namespace, &pod.name) {
        (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
        _ => pod.uid.clone(),
    };
    match base.strip_suffix(')') {
        Some(open) => format!("{open}, pod {})", text::escape_controls(&pod)),
        None => base,
    }
}

/// The listener is there and was there before the failures began.
fn alive_listener(
    f: &Failures,
    k: &Knowledge,
    owner: &Owner,
    endpoint: &Endpoint,
    first: &Evidence,
    out: &mut Vec<Candidate>,
) {
    let count = |kind: FailureKind| f.kinds.get(&kind).copied().unwrap_or(0);
    let listening = Evidence {
        time: owner.since,
        kind: "listener".into(),
        text: format!(
            "{} listening on {endpoint}{}",
            describe(&owner.process),
            if owner.from_snapshot {
                " (already when why502 started)"
            } else {
                ""
            }
        ),
    };
    let evidence = vec![listening, first.clone()];
    let unix = matches!(f.upstream, Endpoint::Unix(..));
    // Requests that were in flight when their connection ended, or that the proxy got
    // no answer to: for a unix socket the kernel sees no end, only the proxy's 5xx.
    let mid_request = count(FailureKind::ClosedBeforeResponse) + count(FailureKind::Reset);
    let in_flight = if unix {
        f.responses.values().sum::<u64>()
    } else {
        mid_request + count(FailureKind::ResponseTimeout)
    };
    if let Some(death) = k.worker_death(owner.process.pid, f.first_mono) {
        worker_died(f, k, owner, endpoint, death, in_flight, &evidence, out);
    } else if count(FailureKind::ResponseTimeout) > 0 {
        slow_upstream(f, k, owner, endpoint, &evidence, out);
    } else if count(FailureKind::ClosedBeforeResponse) > 0 {
        out.push(Candidate {
            cause: Cause::UpstreamClosed,
            confidence: Confidence::Low,
            summary: format!(
                "{} closed {} connections of {} before answering, and nothing died: the \
                 application closed them (an error path, a request it refused, a TLS or \
                 protocol mismatch)",
                describe(&owner.process),
                count(FailureKind::ClosedBeforeResponse),
                describe(f.proxy)
            ),
            hint: "read the backend's own log at these times; compare what the proxy sends \
                   (protocol, TLS, headers) with what the backend expects"
                .into(),
            process: Some(owner.process.clone()),
            evidence: evidence.clone(),
        });
    }
    if count(FailureKind::EAGAIN) > 0 && unix {
        out.push(Candidate {
            cause: Cause::UnixBacklogFull,
            confidence: Confidence::High,
            summary: format!(
                "{}, listener of {endpoint}, is not accepting fast enough: its backlog is full \
                 (EAGAIN ×{})",
                describe(&owner.process),
                count(FailureKind::EAGAIN)
            ),
            hint: "add workers (pm.max_children) or raise the backlog (listen.backlog and \
                   net.core.somaxconn)"
                .into(),
            process: Some(owner.process.clone()),
            evidence: evidence.clone(),
        });
    }
    let rejected: u64 = [
        FailureKind::ECONNREFUSED,
        FailureKind::EHOSTUNREACH,
        FailureKind::ENETUNREACH,
        FailureKind::EACCES,
        FailureKind::EPERM,
    ]
    .into_iter()
    .map(count)
    .sum();
    if rejected > 0 && !unix {
        out.push(Candidate {
            cause: Cause::FirewallReject,
            confidence: Confidence::High,
            summary: format!(
                "{}, listener of {endpoint}, is alive, yet {} connects were rejected ({}): a \
                 firewall rule rejects them",
                describe(&owner.process),
                rejected,
                kinds_text(f.kinds)
            ),
            hint: "look for REJECT rules on this port (iptables -S, nft list ruleset)".into(),
            process: Some(owner.process.clone()),
            evidence: evidence.clone(),
        });
    }
    let timeouts = count(FailureKind::Timeout) + count(FailureKind::ETIMEDOUT);
    let full_queue = match endpoint {
        Endpoint::Tcp(netns, addr) if timeouts > 0 => k.history.queue_full_on(
            *netns,
            addr.port(),
            f.first_mono.saturating_sub(k.lookback_ns),
            u64::MAX,
        ),
        _ => None,
    };
    if let Some(full) = full_queue {
        let mut evidence = evidence.clone();
        evidence.push(Evidence {
            time: full.time,
            kind: "listen_queue_full".into(),
            text: format!(
                "accept queue of {} full ({})",
                Endpoint::Tcp(full.value.netns, full.value.endpoint),
                queue_text(&full.value)
            ),
        });
        evidence.sort_by_key(|e| e.time);
        out.push(Candidate {
            cause: Cause::Overload,
            confidence: Confidence::High,
            summary: format!(
                "{}, listener of {endpoint}, is overloaded: its accept queue was full \
                 ({} at {}), so {timeouts} connects got no answer to their SYN",
                describe(&owner.process),
                queue_text(&full.value),
                clock_time(full.time)
            ),
            hint: "add workers or capacity; raise the listen backlog (and net.core.somaxconn) \
                   only if the backend catches up in bursts"
                .into(),
            process: Some(owner.process.clone()),
            evidence,
        });
    } else if timeouts > 0 {
        out.push(Candidate {
            cause: Cause::SynTimeout,
            confidence: Confidence::Medium,
            summary: format!(
                "{timeouts} connects to {endpoint} got no answer to their SYN while {} listens: a \
                 firewall DROP, or its accept queue is full",
                describe(&owner.process)
            ),
            hint: "look for DROP rules on this port; compare the listener's Recv-Q with its \
                   backlog (ss -ltn) and ListenOverflows in nstat"
                .into(),
            process: Some(owner.process.clone()),
            evidence: evidence.clone(),
        });
    }
    if count(FailureKind::Reset) > 0 {
        out.push(Candidate {
            cause: Cause::ConnectionResets,
            confidence: Confidence::Medium,
            summary: format!(
                "{} reset {} established connections of {}: connections closed under the proxy, \
                 typically a keepalive race (the backend's idle timeout is shorter than the \
                 proxy's)",
                describe(&owner.process),
                count(FailureKind::Reset),
                describe(f.proxy)
            ),
            hint: "make the backend's keepalive timeout longer than the proxy's upstream \
                   keepalive_timeout"
                .into(),
            process: Some(owner.process.clone()),
            evidence,
        });
    }
}

/// A worker of the listener's owner (its child) died while serving: killed by the OOM
/// killer, by its own parent (a timeout, recycling), or crashed.
#[allow(clippy::too_many_arguments)]
fn worker_died(
    f: &Failures,
    k: &Knowledge,
    owner: &Owner,
    endpoint: &Endpoint,
    death: &Dated<ExitRecord>,
    in_flight: u64,
    listening: &[Evidence],
    out: &mut Vec<Candidate>,
) {
    let pid = death.value.pid;
    let worker = &death.value.process;
    // Which worker held which request the kernel does not say: the deaths and the failed
    // requests are counted, not paired.
    let deaths = k.worker_deaths_since(owner.process.pid, f.first_mono);
    let requests = |n: u64| format!("{n} request{}", if n == 1 { "" } else { "s" });
    let serving = match (in_flight, deaths) {
        (0, _) => String::new(),
        (n, 0 | 1) => format!(" while serving {} of {}", requests(n), describe(f.proxy)),
        (n, d) => format!(
            " while serving requests: {d} of its workers died so, with {} of {} in flight",
            requests(n),
            describe(f.proxy)
        ),
    };
    let who = format!(
        "{}, a worker of {} (listener of {endpoint}),",
        describe(worker),
        describe(&owner.process)
    );
    let horizon = death.mono + CLOSE_IN_TIME.as_nanos() as u64;
    let mut evidence = listening.to_vec();
    evidence.push(exit_evidence(&death.value.exit, death.time, pid));
    let (cause, summary, hint) = if let Some(kill) = k.history.oom_kill_of(pid, horizon) {
        evidence.push(Evidence {
            time: kill.time,
            kind: "oom_kill".into(),
            text: format!(
                "OOM kill of pid {pid} (anon RSS {})",
                kib(kill.value.anon_rss_kb)
            ),
        });
        (
            Cause::OomKill,
            format!(
                "{who} was killed by the OOM killer at {}{serving} (anon RSS {})",
                clock_time(kill.time),
                kib(kill.value.anon_rss_kb)
            ),
            "raise the service's memory limit, or lower its worker count (pm.max_children) or \
             per-request memory (memory_limit, pm.max_requests)",
        )
    } else if let Some(s) = k.history.signal_from(owner.process.pid, pid, horizon) {
        evidence.push(signal_evidence(s, pid));
        (
            Cause::KilledByParent,
            format!(
                "{who} was killed by its own master ({} at {}){serving}: it ran too long or \
                 was recycled",
                s.value.signal.signal,
                clock_time(s.time)
            ),
            "the master kills workers past a time limit (php-fpm request_terminate_timeout, \
             a worker timeout): find the slow requests, or raise the limit above the proxy's \
             read timeout",
        )
    } else {
        let how = match (&death.value.exit.signal, death.value.exit.code) {
            (Some(sig), _) => format!("died of {sig}"),
            (None, Some(code)) => format!("exited with code {code}"),
            (None, None) => "exited".into(),
        };
        (
            Cause::Crash,
            format!("{who} {how} at {}{serving}", clock_time(death.time)),
            "find the crash in the service's logs or core dump; recycle workers \
             (pm.max_requests) until it is fixed",
        )
    };
    evidence.sort_by_key(|e| e.time);
    out.push(Candidate {
        cause,
        confidence: Confidence::High,
        summary,
        hint: hint.into(),
        process: Some(worker.clone()),
        evidence,
    });
}

/// The listener is alive and took the requests, but did not answer in time.
fn slow_upstream(
    f: &Failures,
    k: &Knowledge,
    owner: &Owner,
    endpoint: &Endpoint,
    listening: &[Evidence],
    out: &mut Vec<Candidate>,
) {
    let timeouts = f
        .kinds
        .get(&FailureKind::ResponseTimeout)
        .copied()
        .unwrap_or(0);
    let mut evidence = listening.to_vec();
    let mut seen = Vec::new();
    let since = f.first_mono.saturating_sub(k.lookback_ns);
    if let Endpoint::Tcp(netns, addr) = endpoint {
        if let Some(full) = k
            .history
            .queue_full_on(*netns, addr.port(), since, u64::MAX)
        {
            seen.push(format!(
                "its accept queue was full ({}) at {}",
                queue_text(&full.value),
                clock_time(full.time)
            ));
            evidence.push(Evidence {
                time: full.time,
                kind: "listen_queue_full".into(),
                text: format!(
                    "accept queue of {} full",
                    Endpoint::Tcp(full.value.netns, full.value.endpoint)
                ),
            });
        }
    }
    let service = owner
        .process
        .unit
        .clone()
        .unwrap_or_else(|| owner.process.comm.clone());
    if let Some(p) = k
        .history
        .pressure_in(&[HOST_SCOPE, &service], since, u64::MAX)
    {
        seen.push(format!(
            "memory pressure {:.0}% ({}) at {}",
            p.value.some_avg10,
            p.value.scope,
            clock_time(p.time)
        ));
    }
    let host = if seen.is_empty() {
        "the host shows no memory pressure and no full accept queue: the application itself \
         is slow (a slow query, a lock, an external call)"
            .to_string()
    } else {
        seen.join("; ")
    };
    evidence.sort_by_key(|e| e.time);
    out.push(Candidate {
        cause: Cause::SlowUpstream,
        confidence: Confidence::Medium,
        summary: format!(
            "{}, listener of {endpoint}, is alive and accepted {timeouts} requests of {} that it \
             did not answer within the proxy's read timeout; {host}",
            describe(&owner.process),
            describe(f.proxy)
        ),
        hint: "find what the slow requests wait on (the backend's slow log, its workers' state); \
               raise the proxy's read timeout (proxy_read_timeout, timeout server) only if the \
               wait is expected"
            .into(),
        process: Some(owner.process.clone()),
        evidence,
    });
}

/// Nobody listened when the failures began: what happened to the last owner?
fn gone_listener(
    f: &Failures,
    k: &Knowledge,
    record: &ListenerRecord,
    endpoint: &Endpoint,
    first: &Evidence,
    out: &mut Vec<Candidate>,
) {
    // A backend that dies with requests in flight resets them a moment before its
    // listener closes: the owner to blame may have closed just after the first failure.
    let Some(past) = record.last_past_before(f.first_mono + CLOSE_IN_TIME.as_nanos() as u64) else {
        return;
    };
    let owner = &past.owner;
    let pid = owner.process.pid;
    let who = format!("{}, listener of {endpoint},", describe(&owner.process));
    let closed = Evidence {
        time: past.closed,
        kind: "listener_closed".into(),
        text: format!("listener {endpoint} closed"),
    };
    let back = record.reopened_after(past.closed_mono).map(|o| Evidence {
        time: o.since,
        kind: "listener_back".into(),
        text: format!("listener back ({})", describe(&o.process)),
    });
    let timeline = |mut items: Vec<Evidence>| {
        items.push(closed.clone());
        items.push(first.clone());
        items.extend(back.clone());
        items.sort_by_key(|e| e.time);
        items
    };
    // Events about the owner up to a moment after its listener closed.
    let horizon = past.closed_mono + CLOSE_IN_TIME.as_nanos() as u64;
    let exit = k.history.exit_of(pid, horizon);
    let near = |mono: u64| f.first_mono.saturating_sub(mono) <= CLOSE_IN_TIME.as_nanos() as u64;

    if let Some(kill) = k.history.oom_kill_of(pid, horizon) {
        let mut evidence = vec![Evidence {
            time: kill.time,
            kind: "oom_kill".into(),
            text: format!(
                "OOM kill of pid {pid} (anon RSS {})",
                kib(kill.value.anon_rss_kb)
            ),
        }];
        evidence.extend(exit.map(|e| exit_evidence(&e.value.exit, e.time, pid)));
        out.push(Candidate {
            cause: Cause::OomKill,
            confidence: Confidence::High,
            summary: format!(
                "{who} was killed by the OOM killer at {} (anon RSS {})",
                clock_time(kill.time),
                kib(kill.value.anon_rss_kb)
            ),
            hint: "raise the service's memory limit, or lower its worker count \
                   (pm.max_children) or per-worker memory"
                .into(),
            process: Some(owner.process.clone()),
            evidence: timeline(evidence),
        });
        return;
    }

    let signal = k.history.signal_to(pid, horizon);
    let sender = signal.map(|s| {
        format!(
            "{} sent by {}",
            s.value.signal.signal,
            describe(&s.value.sender)
        )
    });
    let mut evidence: Vec<Evidence> = signal
        .map(|s| signal_evidence(s, pid))
        .into_iter()
        .collect();
    evidence.extend(exit.map(|e| exit_evidence(&e.value.exit, e.time, pid)));

    let crashed = exit.filter(|e| {
        let x = &e.value.exit;
        x.signal
            .as_deref()
            .is_some_and(|s| CRASH_SIGNALS.contains(&s))
            || x.code.is_some_and(|c| c != 0)
    });
    if let Some(e) = crashed {
        let how = match (&e.value.exit.signal, e.value.exit.code) {
            (Some(sig), _) => format!(
                "died of {sig}{}",
                if e.value.exit.core_dumped {
                    " (core dumped)"
                } else {
                    ""
                }
            ),
            (None, Some(code)) => format!("exited with code {code}"),
            (None, None) => "exited".into(),
        };
        out.push(Candidate {
            cause: Cause::Crash,
            confidence: if near(e.mono) {
                Confidence::High
            } else {
                Confidence::Medium
            },
            summary: format!(
                "{who} {how} at {}{}",
                clock_time(e.time),
                sender
                    .as_ref()
                    .filter(|_| e.value.exit.signal.is_some())
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            ),
            hint: "find the crash in the service's logs or core dump; set a restart policy \
                   (Restart=on-failure) and recycle workers (pm.max_requests)"
                .into(),
            process: Some(owner.process.clone()),
            evidence: timeline(evidence),
        });
        return;
    }

    let by_parent = signal.filter(|s| {
        owner
            .ppid
            .is_some_and(|ppid| ppid == s.value.sender.pid && ppid > 1)
    });
    if let Some(s) = by_parent {
        out.push(Candidate {
            cause: Cause::KilledByParent,
            confidence: Confidence::High,
            summary: format!(
                "{who} was stopped by its own parent: {} from {} at {}",
                s.value.signal.signal,
                describe(&s.value.sender),
                clock_time(s.time)
            ),
            hint: "the parent recycles or kills workers: check its limits (pm.max_requests, \
                   request_terminate_timeout, a watchdog)"
                .into(),
            process: Some(owner.process.clone()),
            evidence: timeline(evidence),
        });
        return;
    }

    let gap = back
        .as_ref()
        .map(|b| b.time.duration_since(past.closed).unwrap_or_default());
    out.push(Candidate {
        cause: Cause::Restart,
        confidence: if gap.is_some() {
            Confidence::High
        } else {
            Confidence::Medium
        },
        summary: format!(
            "{who} stopped listening at {}{}, {}",
            clock_time(past.closed),
            sender.map(|s| format!(" ({s})")).unwrap_or_default(),
            match (&back, gap) {
                (Some(b), Some(gap)) => format!(
                    "and a listener came back at {} after {:.1} s: a restart with a gap",
                    clock_time(b.time),
                    gap.as_secs_f64()
                ),
                _ => "and nothing has listened there since".into(),
            }
        ),
        hint: "restart or deploy gracefully: start the new listener before stopping the old \
               one (socket activation, reload instead of restart, overlapping deploys)"
            .into(),
        process: Some(owner.process.clone()),
        evidence: timeline(evidence),
    });
}

fn signal_evidence(s: &Dated<SignalRecord>, pid: u32) -> Evidence {
    Evidence {
        time: s.time,
        kind: "signal".into(),
        text: format!(
            "{} to pid {pid} from {}",
            s.value.signal.signal,
            describe(&s.value.sender)
        ),
    }
}

fn exit_evidence(exit: &Exit, time: SystemTime, pid: u32) -> Evidence {
    let text = match (&exit.signal, exit.code) {
        (Some(sig), _) => format!("pid {pid} died of {sig}"),
        (None, Some(code)) => format!("pid {pid} exited with code {code}"),
        (None, None) => format!("pid {pid} exited"),
    };
    Evidence {
        time,
        kind: "process_exit".into(),
        text,
    }
}
