//! What the client commands print for people. Pure functions of the data and a [`Style`],
//! so that tests can pin the width, the colors and the time zone.

mod explain;
mod status;
mod table;
pub mod text;

use std::{io::IsTerminal, time::SystemTime};

pub use explain::explain;
pub use status::status;
pub use table::{incidents_table, watch_line, Change, NoIncidents};

use serde::{de::DeserializeOwned, Serialize};

use crate::model::incident::{Confidence, Incident, ProcessSummary};
use crate::model::text::{escape_controls, needs_escape};
use crate::sources::enrich::cgroup::in_system_service;
use crate::timefmt::{Clock, Zone};
use text::Paint;

/// Where output goes when it is not a terminal: wide enough for a table, narrow enough to
/// read in a log.
pub const DEFAULT_WIDTH: usize = 120;

/// How to lay text out.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Columns to fit.
    pub width: usize,
    pub paint: Paint,
    pub clock: Clock,
}

impl Style {
    /// For standard output: its width and colors if it is a terminal, local time.
    pub fn for_stdout() -> Self {
        let is_terminal = std::io::stdout().is_terminal();
        let width = match terminal_size::terminal_size() {
            Some((terminal_size::Width(w), _)) if is_terminal => usize::from(w),
            _ => DEFAULT_WIDTH,
        };
        let color = text::color_wanted(is_terminal, std::env::var_os("NO_COLOR").as_deref());
        Self {
            width,
            paint: Paint { enabled: color },
            clock: Clock::new(Zone::Local, SystemTime::now()),
        }
    }

    /// Plain text, UTC, as of `now`: for tests.
    pub fn plain(width: usize, now: SystemTime) -> Self {
        Self {
            width,
            paint: Paint { enabled: false },
            clock: Clock::new(Zone::Utc, now),
        }
    }

    fn confidence(&self, confidence: Confidence) -> String {
        let name = confidence.name();
        match confidence {
            Confidence::High => self.paint.green(name),
            Confidence::Medium => self.paint.yellow(name),
            Confidence::Low => self.paint.dim(name),
        }
    }
}

/// `nginx → 127.0.0.1:9000`; `nginx (uid 1000) → 127.0.0.1:9000` for a proxy whose name
/// alone could be anyone's (see [`proxy_name`]).
fn route(incident: &Incident) -> String {
    format!("{} → {}", proxy_name(&incident.proxy), incident.upstream)
}

/// The proxy as a route names it: its name, and its uid when it runs outside the host's
/// system services as a user other than root. Any user can name a process `nginx`, and
/// their proxies are incidents of their own: the uid tells them apart from the real one
/// at a glance (the service's own workers, www-data in `nginx.service`, need no mark).
fn proxy_name(proxy: &ProcessSummary) -> String {
    match proxy.uid {
        Some(uid) if uid != 0 && !in_system_service(proxy) => {
            format!("{} (uid {uid})", proxy.comm)
        }
        _ => proxy.comm.clone(),
    }
}

/// How long the failures have lasted: first to last, not to the (later) close.
fn failure_span(incident: &Incident) -> std::time::Duration {
    incident
        .last_failure_at
        .duration_since(incident.started_at)
        .unwrap_or_default()
}

/// `oom_kill (high)`, or `-` without a cause.
fn top_cause_text(incident: &Incident) -> String {
    incident.top_cause().map_or_else(
        || "-".to_string(),
        |c| format!("{} ({})", c.cause.name(), c.confidence.name()),
    )
}

/// `value` with every string in it (and every map key) passed through [`escape_controls`]:
/// what the renderers lay out, so that no text a process chose (its name, command line,
/// socket path, unit, and the sentences made of them) reaches the terminal raw. Done on
/// the whole value, through its serialized form, so that a field added later is covered
/// without anyone remembering to.
pub fn terminal_safe<T: Serialize + DeserializeOwned>(value: &T) -> T {
    fn escape(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(s) => {
                if let std::borrow::Cow::Owned(escaped) = escape_controls(s) {
                    *s = escaped;
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(escape),
            serde_json::Value::Object(map) => {
                let entries = std::mem::take(map);
                for (key, mut item) in entries {
                    escape(&mut item);
                    map.insert(escape_controls(&key).into_owned(), item);
                }
            }
            _ => {}
        }
    }
    // The types shown are those the CLI reads from the API's JSON, so they have a JSON
    // form; escaping only rewrites strings holding control characters, which only free
    // text can (a name or a time with one would not have been read in the first place).
    // Were either step ever to fail, showing the value raw is what must not happen.
    let mut tree = serde_json::to_value(value).expect("what the API sends has a JSON form");
    escape(&mut tree);
    serde_json::from_value(tree).expect("escaped free text reads back as it was written")
}

/// JSON text for `--json` on a terminal: serde escapes C0 controls already, but JSON lets
/// DEL, C1 controls (U+009B is CSI to some terminals) and the bidirectional overrides stand
/// raw in strings; written as `\u009b` they mean the same to any JSON reader. A raw
/// character is never part of an escape sequence (those are ASCII), so replacing it in the
/// finished text is exact.
pub fn terminal_safe_json(json: &str) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write;
    // Raw C0 characters in serde's output are its own layout (newlines, indents): inside
    // strings it escapes them all.
    let raw_in_strings = |c: char| needs_escape(c) && (c == '\x7f' || !c.is_ascii());
    if !json.chars().any(raw_in_strings) {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut safe = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if raw_in_strings(c) {
            let _ = write!(safe, "\\u{:04x}", u32::from(c));
        } else {
            safe.push(c);
        }
    }
    std::borrow::Cow::Owned(safe)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;

    use super::*;
    use crate::{sinks::api::StatusReport, sinks::store::testing};

    /// What a process can put in its name, command line, socket path or unit: a window
    /// title (OSC), a color, the one-byte CSI (C1), a newline and a carriage return that
    /// forge lines, a tab, DEL and a right-to-left override.
    const HOSTILE: &str = "\x1b]0;pwned\x07\x1b[31m\u{9b}2J\n\t\r\x7f\u{202e}";
    /// [`HOSTILE`] as the CLI must show it.
    const HOSTILE_SHOWN: &str = r"\x1b]0;pwned\x07\x1b[31m\u{9b}2J\n\t\r\x7f\u{202e}";

    /// Characters that must never reach a terminal raw (newlines are the renderers' own).
    /// Written out here, not taken from the escaping code, so that a gap there shows.
    fn is_unsafe(c: char) -> bool {
        (c.is_control() && c != '\n')
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    }

    fn assert_no_raw_controls(what: &str, text: &str) {
        let raw: Vec<char> = text.chars().filter(|&c| is_unsafe(c)).collect();
        assert!(raw.is_empty(), "{what}: raw {raw:?} in\n{text}");
    }

    /// `value` with [`HOSTILE`] appended to every string and map key in it that its type
    /// reads back (free text: names, paths, sentences; not enum names or times), and how
    /// many there were.
    fn poisoned<T: Serialize + DeserializeOwned>(value: &T) -> (T, usize) {
        fn sites(value: &Value, path: String, out: &mut Vec<(String, Option<String>)>) {
            match value {
                Value::String(_) => out.push((path, None)),
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        sites(item, format!("{path}/{i}"), out);
                    }
                }
                Value::Object(map) => {
                    for (key, item) in map {
                        out.push((path.clone(), Some(key.clone())));
                        let pointer_key = key.replace('~', "~0").replace('/', "~1");
                        sites(item, format!("{path}/{pointer_key}"), out);
                    }
                }
                _ => {}
            }
        }
        let mut tree = serde_json::to_value(value).unwrap();
        let mut all = Vec::new();
        sites(&tree, String::new(), &mut all);
        // Values first, then keys from the deepest up, so that renaming a key leaves the
        // paths still to visit valid.
        all.sort_by_key(|(path, key)| (key.is_some(), std::cmp::Reverse(path.len())));
        let mut poisoned = 0;
        for (path, key) in all {
            let mut candidate = tree.clone();
            let Some(target) = candidate.pointer_mut(&path) else {
                continue;
            };
            match (key, target) {
                (None, Value::String(s)) => s.push_str(HOSTILE),
                (Some(key), Value::Object(map)) => {
                    let item = map.remove(&key).unwrap();
                    map.insert(format!("{key}{HOSTILE}"), item);
                }
                _ => continue,
            }
            // Kept only where the type holds the text as it is: a renamed field would be
            // an unknown one, ignored, and poison nothing.
            let read_back = serde_json::from_value::<T>(candidate.clone())
                .ok()
                .and_then(|read| serde_json::to_value(read).ok());
            if read_back.as_ref() == Some(&candidate) {
                tree = candidate;
                poisoned += 1;
            }
        }
        (serde_json::from_value(tree).unwrap(), poisoned)
    }

    fn hostile_incident() -> (Incident, Incident) {
        let mut clean = testing::incident(17, testing::base_time());
        clean.proxy.container = Some("0123456789abcdef0123".into());
        let owner = clean.causes[0].process.clone().unwrap_or_default();
        clean.causes[0].process = Some(ProcessSummaryExt::with_container(owner));
        let (hostile, poisoned) = poisoned(&clean);
        // The fields a process controls are all among them.
        assert!(hostile.proxy.comm.ends_with(HOSTILE), "{hostile:?}");
        assert!(hostile.upstream.ends_with(HOSTILE), "{hostile:?}");
        assert!(hostile.causes[0].summary.ends_with(HOSTILE), "{hostile:?}");
        assert!(hostile.causes[0].evidence[0].text.ends_with(HOSTILE));
        assert!(poisoned >= 15, "only {poisoned} strings poisoned");
        (clean, hostile)
    }

    /// The owner with a container id too, so that every optional field is shown.
    trait ProcessSummaryExt {
        fn with_container(self) -> Self;
    }

    impl ProcessSummaryExt for crate::model::incident::ProcessSummary {
        fn with_container(mut self) -> Self {
            self.container = Some("fedcba9876543210".into());
            self
        }
    }

    fn styles() -> [Style; 3] {
        let now = testing::base_time() + Duration::from_secs(3600);
        let colored = Style {
            paint: Paint { enabled: true },
            ..Style::plain(100, now)
        };
        [Style::plain(100, now), Style::plain(1000, now), colored]
    }

    /// Removes exactly the color sequences [`Paint`] writes.
    fn strip_paint(text: &str) -> String {
        [
            "\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[0m",
        ]
        .iter()
        .fold(text.to_string(), |text, code| text.replace(code, ""))
    }

    #[test]
    fn process_text_reaches_no_renderer_raw() {
        let (clean, hostile) = hostile_incident();
        let [narrow, wide, colored] = styles();
        let mut outputs = Vec::new();
        for style in [&narrow, &wide] {
            outputs.push((
                "incidents",
                incidents_table(std::slice::from_ref(&hostile), style),
            ));
            outputs.push(("explain", explain(&hostile, style)));
            for change in [Change::Opened, Change::Updated, Change::Closed] {
                outputs.push((change.name(), watch_line(change, &hostile, style)));
            }
            let filter = NoIncidents {
                since: None,
                upstream: Some(HOSTILE),
                proxy: Some(HOSTILE),
            };
            outputs.push(("no incidents", filter.render(style)));
        }
        for (what, text) in &outputs {
            assert_no_raw_controls(what, text);
        }

        // Shown escaped, not dropped, and forging no line of its own.
        let table = incidents_table(std::slice::from_ref(&hostile), &wide);
        assert!(table.contains(HOSTILE_SHOWN), "{table}");
        assert_eq!(table.lines().count(), 2, "{table}");
        let explained = explain(&hostile, &wide);
        // (A cgroup path poisoned so is no system service's: the route shows the uid.)
        assert!(
            explained.contains(&format!(
                "nginx{HOSTILE_SHOWN} (uid 33) → 127.0.0.1:9000{HOSTILE_SHOWN}"
            )),
            "{explained}"
        );
        assert_eq!(
            explained.lines().count(),
            explain(&clean, &wide).lines().count(),
            "{explained}"
        );
        for change in [Change::Opened, Change::Updated, Change::Closed] {
            let line = watch_line(change, &hostile, &wide);
            assert!(line.contains(HOSTILE_SHOWN), "{line}");
            assert_eq!(line.lines().count(), 1, "{line}");
        }

        // In color, the only escape sequences are the renderer's own colors.
        let plain_at_100 = explain(&hostile, &narrow);
        assert_eq!(strip_paint(&explain(&hostile, &colored)), plain_at_100);
        let table_at_100 = incidents_table(std::slice::from_ref(&hostile), &narrow);
        assert_eq!(
            strip_paint(&incidents_table(std::slice::from_ref(&hostile), &colored)),
            table_at_100
        );
        let line = watch_line(Change::Opened, &hostile, &narrow);
        assert_eq!(
            strip_paint(&watch_line(Change::Opened, &hostile, &colored)),
            line
        );

        // A name holding nothing but a line break forges no table row or watch line.
        let mut forged = clean.clone();
        forged.proxy.comm = "nginx\n99  00:00:00".into();
        let table = incidents_table(std::slice::from_ref(&forged), &wide);
        assert_eq!(table.lines().count(), 2, "{table}");
        assert!(table.contains(r"nginx\n99  00:00:00 → "), "{table}");
        let line = watch_line(Change::Opened, &forged, &wide);
        assert_eq!(line.lines().count(), 1, "{line}");

        // Text with nothing to escape is shown as it was.
        assert_eq!(terminal_safe(&clean), clean);
    }

    #[test]
    fn json_keeps_the_text_and_escapes_what_json_allows_raw() {
        let (_, hostile) = hostile_incident();
        for json in [
            serde_json::to_string(&hostile).unwrap(),
            serde_json::to_string_pretty(&hostile).unwrap(),
        ] {
            // serde leaves C1, DEL and the bidi override raw: the reason for the pass.
            assert!(json.contains('\u{9b}'), "{json}");
            let safe = terminal_safe_json(&json);
            assert_no_raw_controls("json", safe.trim_end());
            assert!(safe.contains(r"\u009b2J"), "{safe}");
            assert!(safe.contains(r"\u007f\u202e"), "{safe}");
            assert!(safe.contains(r"\u001b]0;pwned\u0007"), "{safe}");
            let read: Incident = serde_json::from_str(&safe).unwrap();
            assert_eq!(read, hostile);
        }
    }

    #[test]
    fn status_text_reaches_the_terminal_escaped() {
        let report: StatusReport = serde_json::from_value(serde_json::json!({
            "version": "0.1.0",
            "started_at": "2026-11-21T14:02:03Z",
            "uptime_seconds": 60,
            "probes": {
                "sys_enter_listen": {"status": "attached", "attachment": "tracepoint"},
                "mark_victim": {"status": "unavailable", "reason": "no such tracepoint"},
                "signal_generate": {"status": "failed", "reason": "permission denied"},
                "sys_enter_write": {"status": "superseded", "reason": "counted elsewhere"},
            },
            "events": {"records": 1, "decode_errors": 0, "filtered": 0},
            "kernel": {
                "dropped": {"tcp_connect_failure": 2},
                "probe_errors": {"read": 1},
                "tables_full": {"tracked_connects": 3},
            },
            "incidents_open": 0,
            "store_dropped_writes": 0,
            "store": {"persistent": false, "reason": "read-only file system: /var/lib/why502"},
        }))
        .unwrap();
        let (hostile, poisoned) = poisoned(&report);
        assert!(poisoned >= 12, "only {poisoned} strings poisoned");
        let [narrow, wide, colored] = styles();
        for style in [&narrow, &wide] {
            assert_no_raw_controls("status", &status(&hostile, style));
        }
        let text = status(&hostile, &wide);
        assert!(
            text.contains(&format!("permission denied{HOSTILE_SHOWN}")),
            "{text}"
        );
        // No line of its own: each one starts as the renderer starts its lines (nothing
        // wraps at this width).
        const STARTS: [&str; 13] = [
            "why502 ",
            "Probes: ",
            "  on:  ",
            "  off: ",
            "  not needed: ",
            "Events: ",
            "Lost to a full ring buffer: ",
            "Throttled ",
            "Failed kernel reads: ",
            "Kernel tables full ",
            "Open incidents: ",
            "Incident s",
            "Events the correlation missed",
        ];
        for line in text.lines() {
            assert!(
                STARTS.iter().any(|s| line.starts_with(s)),
                "{line:?} in\n{text}"
            );
        }
        assert_eq!(
            strip_paint(&status(&hostile, &colored)),
            status(&hostile, &narrow)
        );
    }
}
