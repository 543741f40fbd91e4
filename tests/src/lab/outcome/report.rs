//! An outcome in words: a few summary lines for the narration, and the full report a
//! failed test prints. Changes with what a reader needs to see.

use std::collections::BTreeMap;

use super::{
    super::{client::Exchange, topology::status_text},
    kinds_of, open_threshold, Outcome, RESPONSES_METRIC,
};

/// What the client got: `502 ×40, 200 ×11`.
pub(super) fn client_summary(exchanges: &[Exchange]) -> String {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for e in exchanges {
        *counts.entry(status_text(&e.status)).or_default() += 1;
    }
    counts_text(counts)
}

/// `502 ×40, 200 ×11`.
fn counts_text<K: std::fmt::Display>(counts: impl IntoIterator<Item = (K, u64)>) -> String {
    let text: Vec<String> = counts
        .into_iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect();
    if text.is_empty() {
        "none".into()
    } else {
        text.join(", ")
    }
}

impl Outcome {
    /// A few lines: what the client got, what nginx logged, what the agent said.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let statuses = counts_text(self.access.statuses.clone());
        let (access_log, error_log) = self.record_names;
        out.push_str(&format!("{access_log}: {statuses}\n"));
        out.push_str(&format!(
            "{error_log}: {}{}\n",
            counts_text(self.errors.kinds.clone()),
            if self.errors.other.is_empty() {
                String::new()
            } else {
                format!("; other: {}", counts_text(self.errors.other.clone()))
            }
        ));
        match &self.incident {
            Some(i) => {
                out.push_str(&format!(
                    "incident #{}: {} → {}, {} failures ({}){}\n",
                    i["id"],
                    i["proxy"]["comm"].as_str().unwrap_or("?"),
                    i["upstream"].as_str().unwrap_or("?"),
                    i["failures"],
                    counts_text(kinds_of(i)),
                    match i.get("responses") {
                        Some(r) => format!(", responses {r}"),
                        None => String::new(),
                    }
                ));
                let top = &i["causes"][0];
                out.push_str(&format!(
                    "top cause: {} ({}), pid {}: {}\n",
                    top["cause"].as_str().unwrap_or("?"),
                    top["confidence"].as_str().unwrap_or("?"),
                    top["process"]["pid"],
                    top["summary"].as_str().unwrap_or("")
                ));
            }
            None => out.push_str(&format!("incidents: {}\n", self.incidents.len())),
        }
        if let Some(d) = self.detection {
            out.push_str(&format!(
                "incident queryable {} ms after the response of failure #{}\n",
                d.as_millis(),
                open_threshold()
            ));
        }
        let deltas: Vec<String> = self
            .responses_delta
            .iter()
            .map(|(code, d)| {
                format!(
                    "{code} {} ({access_log} {})",
                    d.map(|d| format!("+{d}"))
                        .unwrap_or_else(|| "not exported".into()),
                    self.access.count(*code)
                )
            })
            .collect();
        out.push_str(&format!(
            "{RESPONSES_METRIC}{{proxy=\"{}\"}}: {}\n",
            self.proxy,
            deltas.join(", ")
        ));
        if !self.other_proxies.is_empty() {
            out.push_str(&format!(
                "host noise: other {} processes on the host, counted under the same name: {:?}\n",
                self.proxy, self.other_proxies
            ));
        }
        if self.uncorrelated_events > 0 || self.host_incidents > self.incidents.len() {
            out.push_str(&format!(
                "host noise: the agent's correlation fell behind by {} events; it opened {} \
                 incidents in all during the run\n",
                self.uncorrelated_events, self.host_incidents
            ));
        }
        out
    }

    /// Everything, for a failed test: summary, checks, the incident, the proxy's (and
    /// php-fpm's) and the agent's logs.
    pub fn report(&self) -> String {
        let failed = self.failed_checks();
        format!(
            "scenario {} ({:.1} s): {}\n{}checks: {}\n\nincident: {}\n\nexplain --last:\n{}\n\
             {}:\n{}\n{}agent log (last 20 lines):\n{}\n\nagent events about the \
             upstream's listeners and the backends:\n{}\n",
            self.scenario,
            self.elapsed.as_secs_f64(),
            self.scenario.description(),
            self.summary(),
            if failed.is_empty() {
                "all passed".to_string()
            } else {
                format!("FAILED\n  {}", failed.join("\n  "))
            },
            self.incident
                .as_ref()
                .map(|i| serde_json::to_string_pretty(i).unwrap_or_default())
                .unwrap_or_else(|| "none".into()),
            self.explain_text,
            match self.proxy {
                "haproxy" => "haproxy log",
                _ => "nginx error.log",
            },
            self.error_log,
            if self.backend_log.is_empty() {
                String::new()
            } else {
                format!("php-fpm log:\n{}\n", self.backend_log)
            },
            self.agent_log
                .iter()
                .rev()
                .take(20)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
            self.listener_events
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}
