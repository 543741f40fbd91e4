//! `why502 status`: is the agent seeing what it should, and has it lost anything.

use std::{collections::BTreeMap, time::Duration};

use super::{text, Style};
use crate::sinks::api::{ProbeStatusReport, StatusReport};
use crate::timefmt::duration;

pub fn status(report: &StatusReport, style: &Style) -> String {
    // Probe reasons carry the kernel's and the store's error messages, which may quote
    // paths; none of it reaches the terminal raw.
    let report = &super::terminal_safe(report);
    let paint = style.paint;
    let mut out = vec![paint.bold(&format!(
        "why502 {} · up {} (since {})",
        report.version,
        duration(Duration::from_secs(report.uptime_seconds)),
        style.clock.stamp(report.started_at)
    ))];

    let attached: Vec<String> = report
        .probes
        .iter()
        .filter(|(_, p)| p.status == "attached")
        .map(|(name, p)| match p.attachment.as_deref() {
            Some("tp_btf") => format!("{name} (tp_btf)"),
            _ => name.clone(),
        })
        .collect();
    // Not needed here: another probe does their work (grouped by what it is).
    let mut superseded: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, p) in report
        .probes
        .iter()
        .filter(|(_, p)| p.status == "superseded")
    {
        superseded
            .entry(p.reason.as_deref().unwrap_or("another probe does its work"))
            .or_default()
            .push(name.clone());
    }
    let not_needed: usize = superseded.values().map(Vec::len).sum();
    let mut head = format!(
        "Probes: {} of {} attached",
        attached.len(),
        report.probes.len() - not_needed
    );
    if not_needed > 0 {
        head.push_str(&format!(", {not_needed} not needed here"));
    }
    out.push(head);
    if !attached.is_empty() {
        let items = separated(&attached, ",");
        out.push(text::hanging("  on:  ", "  on:  ", &items, style.width));
    }
    for (reason, names) in &superseded {
        let mut items = separated(names, ",");
        if let Some(last) = items.last_mut() {
            last.push(':');
        }
        items.extend(reason.split_whitespace().map(String::from));
        out.push(text::hanging(
            "  not needed: ",
            "  not needed: ",
            &items,
            style.width,
        ));
    }
    let off = |p: &&ProbeStatusReport| p.status != "attached" && p.status != "superseded";
    for (name, probe) in report.probes.iter().filter(|(_, p)| off(p)) {
        let label = format!("  off: {name}: ");
        let what = match &probe.reason {
            Some(reason) => format!("{} ({reason})", probe.status),
            None => probe.status.clone(),
        };
        let styled = format!("  {}: {name}: ", paint.yellow("off"));
        let words: Vec<&str> = what.split_whitespace().collect();
        out.push(text::hanging_indent(
            &label,
            &styled,
            &words,
            style.width,
            7,
        ));
    }

    let e = &report.events;
    out.push(format!(
        "Events: {} read, {} undecodable, {} filtered out",
        e.records, e.decode_errors, e.filtered
    ));
    out.push(counts_line(
        "Lost to a full ring buffer: ",
        &report.kernel.dropped,
        style,
    ));
    out.push(counts_line(
        "Throttled (a process over its budget): ",
        &report.kernel.throttled,
        style,
    ));
    out.push(counts_line(
        "Failed kernel reads: ",
        &report.kernel.probe_errors,
        style,
    ));
    out.push(counts_line(
        "Kernel tables full (not tracked): ",
        &report.kernel.tables_full,
        style,
    ));
    out.push(format!("Open incidents: {}", report.incidents_open));
    if report.correlation_lagged_events > 0 {
        out.push(format!(
            "Events the correlation missed (it fell behind): {}",
            report.correlation_lagged_events
        ));
    }
    if report.listener_table_refused > 0 {
        out.push(format!(
            "Listeners not tracked (the listener table was full of current ones): {}",
            report.listener_table_refused
        ));
    }
    let dropped = report.store_dropped_writes;
    out.push(if dropped == 0 {
        "Incident saves dropped: 0".to_string()
    } else {
        format!(
            "Incident saves dropped: {}",
            paint.red(&dropped.to_string())
        )
    });
    if !report.store.persistent {
        let reason = report.store.reason.as_deref().unwrap_or("unknown");
        out.push(format!(
            "Incident store: {} ({reason})",
            paint.red("in memory only, lost at stop")
        ));
    }
    if report.store.write_errors > 0 {
        out.push(format!(
            "Incident saves failed: {}",
            paint.red(&report.store.write_errors.to_string())
        ));
    }
    out.join("\n")
}

/// `none`, or `tcp_connect_failure 12, oom_kill 1` (non-zero counts only).
fn counts_line(label: &str, counts: &BTreeMap<String, u64>, style: &Style) -> String {
    let items: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    if items.is_empty() {
        return format!("{label}none");
    }
    let styled = style.paint.red(label.trim_end()) + " ";
    text::hanging(label, &styled, &separated(&items, ","), style.width)
}

/// Each item but the last followed by `sep`, for wrapping between items.
fn separated(items: &[String], sep: &str) -> Vec<String> {
    let last = items.len().saturating_sub(1);
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            if i < last {
                format!("{item}{sep}")
            } else {
                item.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        sinks::api::{EventCounts, KernelReport, ProbeStatusReport},
        sinks::store::testing,
    };

    #[test]
    fn probes_off_say_why_and_drops_are_listed() {
        let probe = |status: &str, reason: Option<&str>| ProbeStatusReport {
            status: status.into(),
            reason: reason.map(String::from),
            attachment: (status == "attached").then(|| "tracepoint".into()),
        };
        let btf = ProbeStatusReport {
            attachment: Some("tp_btf".into()),
            ..probe("attached", None)
        };
        let superseded = probe("superseded", Some("counted by tcp_sendmsg_locked"));
        let report = StatusReport {
            version: "0.1.0".into(),
            started_at: testing::base_time(),
            uptime_seconds: 3 * 3600 + 120,
            probes: BTreeMap::from([
                ("inet_sock_set_state".into(), btf),
                (
                    "mark_victim".into(),
                    probe("unavailable", Some("no such tracepoint")),
                ),
                ("signal_generate".into(), probe("disabled", None)),
                ("sys_enter_connect".into(), probe("attached", None)),
                ("sys_enter_write".into(), superseded.clone()),
                ("sys_enter_writev".into(), superseded),
            ]),
            events: EventCounts {
                records: 1234,
                decode_errors: 0,
                filtered: 12,
            },
            kernel: KernelReport {
                dropped: BTreeMap::from([
                    ("tcp_connect_failure".into(), 12),
                    ("oom_kill".into(), 0),
                ]),
                throttled: BTreeMap::from([
                    ("listen_call".into(), 344),
                    ("process_exit".into(), 2),
                    ("signal".into(), 0),
                ]),
                probe_errors: BTreeMap::new(),
                tables_full: BTreeMap::from([("tracked_connects".into(), 0)]),
            },
            incidents_open: 1,
            correlation_lagged_events: 0,
            listener_table_refused: 0,
            store_dropped_writes: 0,
            store: Default::default(),
        };
        let style = Style::plain(100, testing::base_time());
        let text = status(&report, &style);
        assert_eq!(
            text,
            "\
why502 0.1.0 · up 3 h 2 min (since 14:02:03)
Probes: 2 of 4 attached, 2 not needed here
  on:  inet_sock_set_state (tp_btf), sys_enter_connect
  not needed: sys_enter_write, sys_enter_writev: counted by tcp_sendmsg_locked
  off: mark_victim: unavailable (no such tracepoint)
  off: signal_generate: disabled
Events: 1234 read, 0 undecodable, 12 filtered out
Lost to a full ring buffer: tcp_connect_failure 12
Throttled (a process over its budget): listen_call 344, process_exit 2
Failed kernel reads: none
Kernel tables full (not tracked): none
Open incidents: 1
Incident saves dropped: 0"
        );
        // Listeners the correlation could not track are said, only when there are some.
        let refused = StatusReport {
            listener_table_refused: 3,
            ..report
        };
        assert!(status(&refused, &style).contains(
            "Open incidents: 1\nListeners not tracked (the listener table was full of current ones): 3\n"
        ));
    }
}
