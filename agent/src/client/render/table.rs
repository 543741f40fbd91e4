//! `why502 incidents` (a table fitted to the terminal) and `why502 watch` (one line per
//! change).

use std::time::SystemTime;

use super::{failure_span, route, text, top_cause_text, Style};
use crate::model::incident::{Incident, IncidentState};
use crate::model::text::escape_controls;
use crate::timefmt::duration;

const HEADERS: [&str; 7] = [
    "ID",
    "STARTED",
    "DURATION",
    "PROXY → UPSTREAM",
    "FAILURES",
    "CAUSE",
    "STATE",
];
const ROUTE: usize = 3;
const CAUSE: usize = 5;
/// Right-aligned: the numbers.
const NUMERIC: [usize; 2] = [0, 4];
const GAP: &str = "  ";

/// One row per incident, in the given order, fitted to `style.width`: the route column is
/// cut first (it is the longest and its start says the most), then the cause column.
pub fn incidents_table(incidents: &[Incident], style: &Style) -> String {
    let rows: Vec<[String; 7]> = incidents
        .iter()
        .map(|i| row(&super::terminal_safe(i), style))
        .collect();
    let mut widths = HEADERS.map(text::width_of);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(text::width_of(cell));
        }
    }
    for column in [ROUTE, CAUSE] {
        let total = widths.iter().sum::<usize>() + GAP.len() * (widths.len() - 1);
        let excess = total.saturating_sub(style.width);
        let floor = text::width_of(HEADERS[column]);
        widths[column] = widths[column].saturating_sub(excess).max(floor);
    }

    let mut lines = vec![style.paint.bold(&line(&HEADERS.map(String::from), &widths))];
    lines.extend(rows.iter().map(|row| line(row, &widths)));
    lines.join("\n")
}

/// What `why502 incidents` says when it finds none: which ones it looked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoIncidents<'a> {
    pub since: Option<SystemTime>,
    pub upstream: Option<&'a str>,
    pub proxy: Option<&'a str>,
}

impl NoIncidents<'_> {
    pub fn render(&self, style: &Style) -> String {
        let mut text = String::from("No incidents");
        if let Some(proxy) = self.proxy {
            text.push_str(&format!(" of {}", escape_controls(proxy)));
        }
        if let Some(upstream) = self.upstream {
            text.push_str(&format!(" to {}", escape_controls(upstream)));
        }
        match self.since {
            Some(since) => text.push_str(&format!(" since {}", style.clock.stamp(since))),
            None => text.push_str(" recorded"),
        }
        text.push('.');
        text
    }
}

fn row(incident: &Incident, style: &Style) -> [String; 7] {
    [
        incident.id.to_string(),
        style.clock.short(incident.started_at),
        duration(failure_span(incident)),
        route(incident),
        incident.failures.to_string(),
        top_cause_text(incident),
        state_name(incident.state).to_string(),
    ]
}

fn line(cells: &[String; 7], widths: &[usize; 7]) -> String {
    let mut out = String::new();
    for (i, (cell, &width)) in cells.iter().zip(widths).enumerate() {
        let cell = if i == ROUTE {
            fit_route(cell, width)
        } else {
            text::truncate(cell, width)
        };
        let pad = " ".repeat(width - text::width_of(&cell));
        if i > 0 {
            out.push_str(GAP);
        }
        if NUMERIC.contains(&i) {
            out.push_str(&pad);
            out.push_str(&cell);
        } else {
            out.push_str(&cell);
            // No trailing blanks after the last column.
            if i + 1 < cells.len() {
                out.push_str(&pad);
            }
        }
    }
    out
}

/// `nginx → …:9000`: the proxy, then the end of the upstream, which tells upstreams apart
/// (on one host they mostly share `127.0.0.1:` or `unix:/run/`).
fn fit_route(route: &str, width: usize) -> String {
    /// Less of the upstream than this says nothing: cut the whole instead.
    const MIN_UPSTREAM: usize = 6;
    if text::width_of(route) <= width {
        return route.to_string();
    }
    match route.split_once(" → ") {
        Some((proxy, upstream)) if text::width_of(proxy) + 3 + MIN_UPSTREAM <= width => {
            let room = width - text::width_of(proxy) - 3;
            format!("{proxy} → {}", text::truncate_start(upstream, room))
        }
        _ => text::truncate(route, width),
    }
}

fn state_name(state: IncidentState) -> &'static str {
    match state {
        IncidentState::Open => "open",
        IncidentState::Closed => "closed",
    }
}

/// What `why502 watch` saw change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Opened,
    Updated,
    Closed,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Opened => "opened",
            Change::Updated => "updated",
            Change::Closed => "closed",
        }
    }
}

/// `14:02:03 opened  #17 nginx → 127.0.0.1:9000 · 312 failures · oom_kill (high)`, timed
/// by the incident's own clock: its start, its last failure, or its close.
pub fn watch_line(change: Change, incident: &Incident, style: &Style) -> String {
    let incident = &super::terminal_safe(incident);
    let time = match change {
        Change::Opened => incident.started_at,
        Change::Updated => incident.last_failure_at,
        Change::Closed => incident.closed_at.unwrap_or(incident.last_failure_at),
    };
    let name = format!("{:<7}", change.name());
    let name = match change {
        Change::Opened => style.paint.red(&name),
        Change::Updated => style.paint.yellow(&name),
        Change::Closed => style.paint.green(&name),
    };
    let mut line = format!(
        "{} {name} #{} {} · {} failures · {}",
        style.clock.stamp(time),
        incident.id,
        route(incident),
        incident.failures,
        top_cause_text(incident)
    );
    if change == Change::Closed {
        line.push_str(&format!(" · lasted {}", duration(failure_span(incident))));
    }
    line
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sinks::store::testing;

    fn sample() -> Vec<Incident> {
        let base = testing::base_time();
        let mut unix = testing::incident(18, base + Duration::from_secs(600));
        unix.upstream = "unix:/run/php/php8.2-fpm.sock".into();
        unix.state = IncidentState::Open;
        unix.closed_at = None;
        let yesterday = testing::incident(2, base - Duration::from_secs(86_400));
        vec![unix, testing::incident(17, base), yesterday]
    }

    fn style(width: usize) -> Style {
        Style::plain(width, testing::base_time() + Duration::from_secs(3600))
    }

    #[test]
    fn a_wide_terminal_shows_everything() {
        let table = incidents_table(&sample(), &style(120));
        let expected = "\
ID  STARTED     DURATION  PROXY → UPSTREAM                       FAILURES  CAUSE            STATE
18  14:12:03    6.1 s     nginx → unix:/run/php/php8.2-fpm.sock       312  oom_kill (high)  open
17  14:02:03    6.1 s     nginx → 127.0.0.1:9000                      312  oom_kill (high)  closed
 2  2026-11-20  6.1 s     nginx → 127.0.0.1:9000                      312  oom_kill (high)  closed";
        assert_eq!(table, expected);
    }

    #[test]
    fn a_narrow_terminal_cuts_the_route_first() {
        // 18 columns too many: the route column gives them.
        let table = incidents_table(&sample(), &style(80));
        let expected = "\
ID  STARTED     DURATION  PROXY → UPSTREAM     FAILURES  CAUSE            STATE
18  14:12:03    6.1 s     nginx → …2-fpm.sock       312  oom_kill (high)  open
17  14:02:03    6.1 s     nginx → …0.0.1:9000       312  oom_kill (high)  closed
 2  2026-11-20  6.1 s     nginx → …0.0.1:9000       312  oom_kill (high)  closed";
        assert_eq!(table, expected);

        // Narrower than the route column can give: the cause column goes next.
        let table = incidents_table(&sample(), &style(70));
        assert!(table.lines().all(|l| text::width_of(l) <= 70), "{table}");
        assert!(table.contains("nginx → ….1:9000  "), "{table}");
        assert!(table.contains("  oom_kil…  "), "{table}");
    }

    #[test]
    fn a_users_proxy_of_the_same_name_is_told_apart() {
        let real = testing::incident(17, testing::base_time());
        let mut forged = testing::incident(18, testing::base_time());
        forged.proxy.pid = 7001;
        forged.proxy.uid = Some(1000);
        forged.proxy.unit = Some("user@1000.service/nginx.service".into());
        forged.proxy.cgroup =
            Some("/user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service".into());
        // Same name in a session scope, or with no cgroup known: marked too. Root's, or a
        // system service's worker (www-data in nginx.service), is not.
        let mut in_session = forged.clone();
        in_session.proxy.unit = Some("session-3.scope".into());
        in_session.proxy.cgroup = Some("/user.slice/user-1000.slice/session-3.scope".into());
        let mut as_root = in_session.clone();
        as_root.proxy.uid = Some(0);
        let mut unit_only = forged.clone();
        unit_only.proxy.cgroup = None;
        for (incident, route) in [
            (&real, "nginx → 127.0.0.1:9000"),
            (&forged, "nginx (uid 1000) → 127.0.0.1:9000"),
            (&in_session, "nginx (uid 1000) → 127.0.0.1:9000"),
            (&as_root, "nginx → 127.0.0.1:9000"),
            (&unit_only, "nginx (uid 1000) → 127.0.0.1:9000"),
        ] {
            assert_eq!(super::route(incident), route, "{:?}", incident.proxy);
        }
        let table = incidents_table(&[forged, real], &style(120));
        let rows: Vec<&str> = table.lines().skip(1).collect();
        assert!(
            rows[0].contains("  nginx (uid 1000) → 127.0.0.1:9000  "),
            "{table}"
        );
        assert!(rows[1].contains("  nginx → 127.0.0.1:9000  "), "{table}");
    }

    #[test]
    fn a_long_proxy_name_is_cut_whole() {
        assert_eq!(fit_route("nginx → 127.0.0.1:9000", 16), "nginx → ….1:9000");
        assert_eq!(
            fit_route("my-very-long-proxy → 127.0.0.1:9000", 16),
            "my-very-long-pr…"
        );
    }

    #[test]
    fn nothing_found_says_what_was_looked_for() {
        let style = style(120);
        assert_eq!(
            NoIncidents::default().render(&style),
            "No incidents recorded."
        );
        let filtered = NoIncidents {
            since: Some(testing::base_time()),
            upstream: Some("127.0.0.1:9000"),
            proxy: Some("nginx"),
        };
        assert_eq!(
            filtered.render(&style),
            "No incidents of nginx to 127.0.0.1:9000 since 14:02:03."
        );
    }

    #[test]
    fn watch_lines_name_the_change() {
        let incident = testing::incident(17, testing::base_time());
        let style = style(120);
        assert_eq!(
            watch_line(Change::Opened, &incident, &style),
            "14:02:03 opened  #17 nginx → 127.0.0.1:9000 · 312 failures · oom_kill (high)"
        );
        assert_eq!(
            watch_line(Change::Closed, &incident, &style),
            "14:02:09 closed  #17 nginx → 127.0.0.1:9000 · 312 failures · oom_kill (high) · lasted 6.1 s"
        );
    }
}
