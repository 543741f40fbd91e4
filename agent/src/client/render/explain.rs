//! `why502 explain`: one incident, readable at a glance. What failed, the likely cause in
//! one sentence, the evidence as a timeline, what to do, and what else it could be.

use super::{failure_span, route, text, Style};
use crate::{
    model::{
        failure::FailureKind,
        incident::{Incident, IncidentState, ProcessSummary},
    },
    timefmt::duration,
};

pub fn explain(incident: &Incident, style: &Style) -> String {
    let incident = &super::terminal_safe(incident);
    // The header is wrapped too (rarely: a long unix socket path), between its parts.
    let header = text::hanging_indent("", "", &header(incident, style), style.width, 2);
    let mut out = vec![style.paint.bold(&header)];
    let proxy = proxy_line(&incident.proxy);
    out.push(text::hanging("Proxy: ", "Proxy: ", &proxy, style.width));
    if incident.failures > 0 || incident.responses.is_empty() {
        out.push(failures_line(incident));
    }
    if let Some(line) = responses_line(incident) {
        out.push(line);
    }
    let Some((top, others)) = incident.causes.split_first() else {
        return out.join("\n");
    };

    let label = format!("Cause ({}): ", top.confidence.name());
    let styled = format!("Cause ({}): ", style.confidence(top.confidence));
    let words: Vec<&str> = top.summary.split_whitespace().collect();
    out.push(text::hanging(&label, &styled, &words, style.width));
    if let Some(owner) = top.process.as_ref().and_then(owner_line) {
        out.push(text::hanging("Owner: ", "Owner: ", &owner, style.width));
    }

    if !top.evidence.is_empty() {
        let last = top.evidence.len() - 1;
        let items: Vec<String> = top
            .evidence
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let sep = if i < last { " ·" } else { "" };
                format!("{} {}{sep}", style.clock.precise(e.time), e.text)
            })
            .collect();
        out.push(text::hanging(
            "Timeline: ",
            "Timeline: ",
            &items,
            style.width,
        ));
    }

    if !top.hint.is_empty() {
        let words: Vec<&str> = top.hint.split_whitespace().collect();
        out.push(text::hanging("Hint: ", "Hint: ", &words, style.width));
    }

    let label = "Other candidates: ";
    let pad = " ".repeat(label.len());
    for (i, other) in others.iter().enumerate() {
        let name = format!("{} (", other.cause.name());
        let lead = format!("{name}{}) — ", other.confidence.name());
        let styled_lead = format!("{name}{}) — ", style.confidence(other.confidence));
        let (label, styled) = if i == 0 {
            (format!("{label}{lead}"), format!("{label}{styled_lead}"))
        } else {
            (format!("{pad}{lead}"), format!("{pad}{styled_lead}"))
        };
        let words: Vec<&str> = other.summary.split_whitespace().collect();
        // Continuation lines align just inside the candidate's name, not with its summary.
        out.push(text::hanging_indent(
            &label,
            &styled,
            &words,
            style.width,
            pad.len() + 2,
        ));
    }
    out.join("\n")
}

/// `Incident 17 · 14:02:03 → 14:02:09 (6.1 s) · nginx → 127.0.0.1:9000`, in parts.
fn header(incident: &Incident, style: &Style) -> [String; 3] {
    let start = style.clock.stamp(incident.started_at);
    let end = match incident.state {
        IncidentState::Open => "open".to_string(),
        IncidentState::Closed => style.clock.stamp(incident.last_failure_at),
    };
    [
        format!("Incident {} ·", incident.id),
        format!("{start} → {end} ({}) ·", duration(failure_span(incident))),
        route(incident),
    ]
}

/// `nginx (pid 812, uid 33, nginx.service)`, in parts: which process failed, and who it
/// is (`user@1000.service/nginx.service` is uid 1000's own, not the host's nginx). The
/// cgroup is shown when no unit says where it runs (the root cgroup says nothing).
fn proxy_line(proxy: &ProcessSummary) -> Vec<String> {
    let mut inside = vec![format!("pid {}", proxy.pid)];
    if let Some(uid) = proxy.uid {
        inside.push(format!("uid {uid}"));
    }
    match (&proxy.unit, &proxy.cgroup) {
        // A container's own scope (`cri-containerd-<id>.scope`) says no more than the
        // container part below.
        (Some(unit), _) if is_container_scope(unit, proxy) => {}
        (Some(unit), _) => inside.push(unit.clone()),
        (None, Some(cgroup)) if cgroup != "/" => inside.push(format!("cgroup {cgroup}")),
        _ => {}
    }
    inside.extend(container_parts(proxy));
    described(proxy, inside)
}

fn is_container_scope(unit: &str, process: &ProcessSummary) -> bool {
    !unit.contains('/')
        && process
            .container
            .as_ref()
            .is_some_and(|id| unit.contains(id.as_str()))
}

/// `burstable pod shop/web-7d9f` (`pod <uid>` until the API named it) and `container
/// containerd://0123456789ab`, as Kubernetes writes a container id.
fn container_parts(process: &ProcessSummary) -> Vec<String> {
    let mut parts = Vec::new();
    if let Some(pod) = &process.pod {
        let qos = pod
            .qos
            .map(|q| format!("{} ", q.name()))
            .unwrap_or_default();
        parts.push(format!("{qos}pod {}", pod.label()));
    }
    if let Some(container) = &process.container {
        let short: String = container.chars().take(12).collect();
        match &process.runtime {
            Some(runtime) => parts.push(format!("container {runtime}://{short}")),
            None => parts.push(format!("container {short}")),
        }
    }
    parts
}

/// `Owner: php-fpm (pid 1234, burstable pod shop/php-0, container cri-o://0123456789ab)`:
/// which container and pod the process the top cause is about runs in, shown only when
/// it runs in one (the cause's sentence already names host processes fully).
fn owner_line(owner: &ProcessSummary) -> Option<Vec<String>> {
    let parts = container_parts(owner);
    if parts.is_empty() {
        return None;
    }
    let mut inside = vec![format!("pid {}", owner.pid)];
    inside.extend(parts);
    Some(described(owner, inside))
}

/// `name (a, b, c)` in words that break only after a comma.
fn described(process: &ProcessSummary, inside: Vec<String>) -> Vec<String> {
    let last = inside.len() - 1;
    let mut parts = vec![format!("{} (", process.comm)];
    for (i, part) in inside.into_iter().enumerate() {
        parts.push(if i < last {
            format!("{part},")
        } else {
            format!("{part})")
        });
    }
    // The name and the first part are one word: no break right after "(".
    let first = parts.remove(1);
    parts[0].push_str(&first);
    parts
}

/// `Clients got 502 ×287 (for 312 upstream failures)`: what the failures became.
fn responses_line(incident: &Incident) -> Option<String> {
    if incident.responses.is_empty() {
        return None;
    }
    let codes = crate::model::text::kinds_text(&incident.responses);
    Some(if incident.failures > 0 {
        format!(
            "Clients got {codes} (for {} upstream failures)",
            incident.failures
        )
    } else {
        format!("Clients got {codes}, with no upstream failure seen")
    })
}

/// `312 connect failures: ECONNREFUSED ×312`.
fn failures_line(incident: &Incident) -> String {
    let kinds = &incident.failure_kinds;
    // Resets happen on established connections: only without them are these connects.
    let noun = match kinds.contains_key(&FailureKind::Reset) {
        true if kinds.len() == 1 => "connection resets",
        true => "failures",
        false => "connect failures",
    };
    let mut line = format!("{} {noun}", incident.failures);
    if !kinds.is_empty() {
        line.push_str(": ");
        line.push_str(&crate::model::text::kinds_text(kinds));
    }
    line
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        client::render::text::{color_wanted, Paint},
        model::incident::{Pod, Qos},
        sinks::store::testing,
    };

    /// The top cause's process in a pod gets an Owner line after the cause; a host
    /// process does not (the example above has none).
    #[test]
    fn the_owner_in_a_pod_is_named_after_the_cause() {
        let mut incident = testing::incident(17, testing::base_time());
        let owner = incident.causes[0].process.as_mut().unwrap();
        owner.container = Some("fedcba9876543210".repeat(4));
        owner.runtime = Some("cri-o".into());
        owner.pod = Some(Pod {
            uid: "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d".into(),
            qos: Some(Qos::Guaranteed),
            namespace: Some("shop".into()),
            name: Some("php-0".into()),
        });
        let text = explain(&incident, &style(240));
        let lines: Vec<&str> = text.lines().collect();
        let cause = lines.iter().position(|l| l.starts_with("Cause")).unwrap();
        assert_eq!(
            lines[cause + 1],
            "Owner: php-fpm8.2 (pid 1234, guaranteed pod shop/php-0, container cri-o://fedcba987654)"
        );
        incident.causes[0].process.as_mut().unwrap().pod = None;
        incident.causes[0].process.as_mut().unwrap().container = None;
        let text = explain(&incident, &style(240));
        assert!(!text.contains("Owner:"), "{text}");
    }

    fn style(width: usize) -> Style {
        Style::plain(width, testing::base_time() + Duration::from_secs(3600))
    }

    #[test]
    fn the_example_reads_as_designed() {
        let incident = testing::incident(17, testing::base_time());
        let text = explain(&incident, &style(88));
        let expected = "\
Incident 17 · 14:02:03 → 14:02:09 (6.1 s) · nginx → 127.0.0.1:9000
Proxy: nginx (pid 812, uid 33, nginx.service)
312 connect failures: ECONNREFUSED ×312
Clients got 502 ×287 (for 312 upstream failures)
Cause (high): php-fpm (pid 1234, php8.2-fpm.service), listener of 127.0.0.1:9000, was
              killed by the OOM killer at 14:02:02.871 (anon RSS 1.9 GiB)
Timeline: 14:02:01.200 memory pressure 43% · 14:02:02.871 OOM kill pid 1234 ·
          14:02:02.872 listener closed · 14:02:03.010 first refused connect ·
          14:02:09.114 listener back (pid 1301)
Hint: raise the service's memory limit or lower pm.max_children.
Other candidates: restart (medium) — php8.2-fpm.service's listener came back 6.1 s later";
        assert_eq!(text, expected);
    }

    #[test]
    fn the_proxy_line_says_which_process_it_was() {
        let line = |incident: &Incident| {
            explain(incident, &style(240))
                .lines()
                .nth(1)
                .unwrap()
                .to_string()
        };
        let mut incident = testing::incident(17, testing::base_time());
        assert_eq!(
            line(&incident),
            "Proxy: nginx (pid 812, uid 33, nginx.service)"
        );
        incident.proxy.pid = 7001;
        incident.proxy.uid = Some(1000);
        incident.proxy.unit = Some("user@1000.service/nginx.service".into());
        assert_eq!(
            line(&incident),
            "Proxy: nginx (pid 7001, uid 1000, user@1000.service/nginx.service)"
        );
        // No unit: the cgroup, unless it is the root one.
        incident.proxy.unit = None;
        incident.proxy.cgroup = Some("/why502/app".into());
        incident.proxy.container = Some("0123456789abcdef".into());
        assert_eq!(
            line(&incident),
            "Proxy: nginx (pid 7001, uid 1000, cgroup /why502/app, container 0123456789ab)"
        );
        incident.proxy.cgroup = Some("/".into());
        incident.proxy.container = None;
        assert_eq!(line(&incident), "Proxy: nginx (pid 7001, uid 1000)");
        // In a pod: the QoS and the pod (its UID until the API names it), the container
        // with its runtime, and not the container's own scope again.
        let id = "0123456789abcdef".repeat(4);
        incident.proxy.unit = Some(format!("cri-containerd-{id}.scope"));
        incident.proxy.container = Some(id.clone());
        incident.proxy.runtime = Some("containerd".into());
        incident.proxy.pod = Some(Pod {
            uid: "6f3b1c2a-4e5d-4a7b-9c8d-0e1f2a3b4c5d".into(),
            qos: Some(Qos::Burstable),
            ..Pod::default()
        });
        assert_eq!(
            line(&incident),
            "Proxy: nginx (pid 7001, uid 1000, burstable pod 6f3b1c2a-4e5d-4a7b-9c8d-0e1f2a3b4c5d, \
             container containerd://0123456789ab)"
        );
        let pod = incident.proxy.pod.as_mut().unwrap();
        pod.namespace = Some("ingress".into());
        pod.name = Some("nginx-5c9f".into());
        // A container with systemd inside keeps its inner unit.
        incident.proxy.unit = Some(format!("docker-{id}.scope/nginx.service"));
        incident.proxy.runtime = None;
        assert_eq!(
            line(&incident),
            format!(
                "Proxy: nginx (pid 7001, uid 1000, docker-{id}.scope/nginx.service, burstable pod \
                 ingress/nginx-5c9f, container 0123456789ab)"
            )
        );
        incident.proxy.unit = None;
        incident.proxy.container = None;
        incident.proxy.pod = None;
        // An incident stored before uids were recorded.
        incident.proxy.uid = None;
        assert_eq!(line(&incident), "Proxy: nginx (pid 7001)");
    }

    #[test]
    fn the_cause_wraps_with_a_hanging_indent() {
        let incident = testing::incident(17, testing::base_time());
        let text = explain(&incident, &style(60));
        let cause: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("Cause"))
            .take_while(|l| !l.starts_with("Timeline"))
            .collect();
        assert_eq!(
            cause,
            [
                "Cause (high): php-fpm (pid 1234, php8.2-fpm.service),",
                "              listener of 127.0.0.1:9000, was killed by the",
                "              OOM killer at 14:02:02.871 (anon RSS 1.9 GiB)",
            ]
        );
        for line in text.lines().filter(|l| !l.starts_with("Incident")) {
            assert!(text::width_of(line) <= 60, "{line:?}");
        }
    }

    #[test]
    fn the_timeline_wraps_between_events() {
        let incident = testing::incident(17, testing::base_time());
        let text = explain(&incident, &style(50));
        let timeline: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("Timeline"))
            .take_while(|l| !l.starts_with("Hint"))
            .collect();
        assert_eq!(
            timeline,
            [
                "Timeline: 14:02:01.200 memory pressure 43% ·",
                "          14:02:02.871 OOM kill pid 1234 ·",
                "          14:02:02.872 listener closed ·",
                "          14:02:03.010 first refused connect ·",
                "          14:02:09.114 listener back (pid 1301)",
            ]
        );
    }

    #[test]
    fn a_long_header_wraps_between_its_parts() {
        let mut incident = testing::incident(17, testing::base_time());
        incident.upstream = "unix:/run/php/php8.2-fpm-example.com.sock".into();
        let text = explain(&incident, &style(60));
        let header: Vec<&str> = text.lines().take(2).collect();
        assert_eq!(
            header,
            [
                "Incident 17 · 14:02:03 → 14:02:09 (6.1 s) ·",
                "  nginx → unix:/run/php/php8.2-fpm-example.com.sock",
            ]
        );
    }

    #[test]
    fn an_open_incident_says_so() {
        let mut incident = testing::incident(3, testing::base_time());
        incident.state = IncidentState::Open;
        incident.closed_at = None;
        incident.failure_kinds =
            [(FailureKind::ECONNREFUSED, 300), (FailureKind::Reset, 12)].into();
        let text = explain(&incident, &style(120));
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("Incident 3 · 14:02:03 → open (6.1 s) · nginx → 127.0.0.1:9000")
        );
        assert_eq!(
            lines.next(),
            Some("Proxy: nginx (pid 812, uid 33, nginx.service)")
        );
        assert_eq!(
            lines.next(),
            Some("312 failures: ECONNREFUSED ×300, reset ×12")
        );
    }

    #[test]
    fn several_other_candidates_line_up() {
        let mut incident = testing::incident(3, testing::base_time());
        let mut third = incident.causes[1].clone();
        third.cause = crate::model::incident::Cause::NoLocalCause;
        third.confidence = crate::model::incident::Confidence::Low;
        third.summary = "nothing on this host explains the failures".into();
        incident.causes.push(third);
        let text = explain(&incident, &style(70));
        let others: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("Other"))
            .collect();
        assert_eq!(
            others,
            [
                "Other candidates: restart (medium) — php8.2-fpm.service's listener",
                "                    came back 6.1 s later",
                "                  no_local_cause (low) — nothing on this host explains",
                "                    the failures",
            ]
        );
    }

    #[test]
    fn colors_only_when_wanted() {
        let incident = testing::incident(17, testing::base_time());
        let plain = explain(&incident, &style(100));
        assert!(!plain.contains('\x1b'));
        let no_color = Style {
            paint: Paint {
                enabled: color_wanted(true, Some(std::ffi::OsStr::new("1"))),
            },
            ..style(100)
        };
        assert!(!explain(&incident, &no_color).contains('\x1b'));
        let colored = Style {
            paint: Paint { enabled: true },
            ..style(100)
        };
        let text = explain(&incident, &colored);
        assert!(text.starts_with("\x1b[1mIncident 17"), "{text}");
        assert!(text.contains("Cause (\x1b[32mhigh\x1b[0m): "), "{text}");
        // Colors do not change the layout.
        let strip = text
            .replace("\x1b[1m", "")
            .replace("\x1b[32m", "")
            .replace("\x1b[33m", "")
            .replace("\x1b[0m", "");
        assert_eq!(strip, plain);
    }
}
