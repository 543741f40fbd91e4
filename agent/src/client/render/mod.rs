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

use crate::model::incident::{Confidence, Incident};
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

/// `nginx → 127.0.0.1:9000`.
fn route(incident: &Incident) -> String {
    format!("{} → {}", incident.proxy.comm, incident.upstream)
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
