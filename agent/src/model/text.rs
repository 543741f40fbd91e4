//! Incidents' parts as people read them, shared by explanations and the CLI.

use std::{borrow::Cow, collections::BTreeMap, fmt::Display, fmt::Write, time::SystemTime};

use super::incident::ProcessSummary;

/// `php-fpm (pid 1234, php8.2-fpm.service)`. Its parts come from the process (its name,
/// its cgroup), so they are escaped with [`escape_controls`]: the sentence goes to
/// terminals and logs.
pub fn describe(p: &ProcessSummary) -> String {
    let mut inside = vec![format!("pid {}", p.pid)];
    if let Some(unit) = &p.unit {
        inside.push(escape_controls(unit).into_owned());
    }
    if let Some(container) = &p.container {
        let short: String = container.chars().take(12).collect();
        inside.push(format!("container {}", escape_controls(&short)));
    }
    format!("{} ({})", escape_controls(&p.comm), inside.join(", "))
}

/// `text` with its control characters written out, so that text a process chose (its
/// name, command line, socket path, unit) cannot drive the terminal it is shown on: C0
/// controls and DEL as `\n`, `\t`, `\r` or `\x1b`, C1 controls (a terminal may take
/// U+009B for CSI) and the bidirectional overrides and isolates, which reorder what is
/// shown, as `\u{9b}`. Backslashes stay as they are: the result is for people to read, and
/// escaping it again changes nothing.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\t' => escaped.push_str("\\t"),
            '\r' => escaped.push_str("\\r"),
            c if c.is_ascii_control() => {
                let _ = write!(escaped, "\\x{:02x}", u32::from(c));
            }
            c if needs_escape(c) => {
                let _ = write!(escaped, "\\u{{{:x}}}", u32::from(c));
            }
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// C0, DEL, C1, and the Unicode bidirectional controls (marks, embeddings, overrides,
/// isolates): what must not reach a terminal raw.
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `ECONNREFUSED ×312, timeout ×3`.
pub fn kinds_text<K: Display>(kinds: &BTreeMap<K, u64>) -> String {
    let mut sorted: Vec<(String, u64)> = kinds.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    sorted
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `1.9 GiB` from KiB.
pub fn kib(kb: u64) -> String {
    let bytes = kb as f64 * 1024.0;
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Local wall-clock time of day with milliseconds, `14:02:02.871`.
pub fn clock_time(time: SystemTime) -> String {
    crate::timefmt::Clock::new(crate::timefmt::Zone::Local, time).precise(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_written_out() {
        assert_eq!(escape_controls("nginx"), "nginx");
        assert!(matches!(
            escape_controls("nginx → 127.0.0.1:9000"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_controls("a\x1b]0;root\x07b\nc\td\re\x00\x7f"),
            "a\\x1b]0;root\\x07b\\nc\\td\\re\\x00\\x7f"
        );
        assert_eq!(
            escape_controls("\u{9b}31m\u{85}\u{202e}gpj.exe\u{2066}"),
            "\\u{9b}31m\\u{85}\\u{202e}gpj.exe\\u{2066}"
        );
        // Twice is once: what is escaped holds no control character.
        let once = escape_controls("\x1b[31m\u{9b}x");
        assert_eq!(escape_controls(&once), once);
        // Non-ASCII text that is not a control stays.
        assert_eq!(escape_controls("php-fpm · …×"), "php-fpm · …×");
    }

    #[test]
    fn process_descriptions_are_escaped() {
        let process = ProcessSummary {
            pid: 7,
            comm: "\x1b[31mnginx".into(),
            unit: Some("a\nb.service".into()),
            container: Some("\u{9b}2J0123456789abcdef".into()),
            ..ProcessSummary::default()
        };
        assert_eq!(
            describe(&process),
            "\\x1b[31mnginx (pid 7, a\\nb.service, container \\u{9b}2J012345678)"
        );
    }
}
