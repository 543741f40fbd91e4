//! Incidents' parts as people read them, shared by explanations and the CLI.

use std::{collections::BTreeMap, fmt::Display, time::SystemTime};

use super::incident::ProcessSummary;

/// `php-fpm (pid 1234, php8.2-fpm.service)`.
pub fn describe(p: &ProcessSummary) -> String {
    let mut inside = vec![format!("pid {}", p.pid)];
    if let Some(unit) = &p.unit {
        inside.push(unit.clone());
    }
    if let Some(container) = &p.container {
        inside.push(format!(
            "container {}",
            &container[..container.len().min(12)]
        ));
    }
    format!("{} ({})", p.comm, inside.join(", "))
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
