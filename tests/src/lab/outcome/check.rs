//! The scenario's expectations, held against its outcome: the fault did to nginx what it
//! should, (a) exactly one incident, in time, (b) the injected cause naming the right
//! process, (c) counts equal to nginx's own logs. Changes when an expectation does.

use super::{
    super::{topology::status_text, Culprit, Scenario},
    kinds_of, Outcome, DETECTION_LIMIT, OPEN_THRESHOLD, RESPONSES_METRIC,
};

impl Outcome {
    /// The expectations this run did not meet (empty: the scenario passed).
    pub fn failed_checks(&self) -> Vec<String> {
        let mut failed = Vec::new();
        let scenario = self.scenario;
        let expected = scenario.expected_causes();

        // The fault did what it should to nginx (otherwise the rest means nothing).
        match scenario.failure_status() {
            Some(status) => {
                if (self.access.count(status) as usize) < OPEN_THRESHOLD {
                    failed.push(format!(
                        "setup: nginx answered {status} only {} times (access.log {:?})",
                        self.access.count(status),
                        self.access.statuses
                    ));
                }
            }
            None => {
                let bad: Vec<_> = self
                    .exchanges
                    .iter()
                    .filter(|e| e.status != Ok(200))
                    .map(|e| format!("{} {} → {}", e.method, e.path, status_text(&e.status)))
                    .collect();
                if !bad.is_empty() {
                    failed.push(format!("setup: not every request got 200: {bad:?}"));
                }
            }
        }
        if scenario == Scenario::Deploy
            && self.exchanges.last().map(|e| e.status.clone()) != Some(Ok(200))
        {
            failed.push("setup: the restarted backend does not serve".into());
        }

        // a. Exactly one incident (none when healthy), queryable within a second.
        if expected.is_empty() {
            if !self.incidents.is_empty() {
                failed.push(format!(
                    "a: expected no incident, got {}",
                    self.incidents.len()
                ));
            }
        } else if self.incidents.len() != 1 {
            failed.push(format!(
                "a: expected exactly one incident for nginx → {}, got {}",
                self.upstream,
                self.incidents.len()
            ));
        }
        if !self.stray_incidents.is_empty() {
            failed.push(format!(
                "a: incidents of nginx for other upstreams: {:?}",
                self.stray_incidents
                    .iter()
                    .map(|i| format!("#{} {}", i["id"], i["upstream"]))
                    .collect::<Vec<_>>()
            ));
        }
        if !expected.is_empty() {
            match self.detection {
                Some(d) if d < DETECTION_LIMIT => {}
                Some(d) => failed.push(format!(
                    "a: incident queryable {} ms after the 5th failed response (limit {} ms)",
                    d.as_millis(),
                    DETECTION_LIMIT.as_millis()
                )),
                None => failed.push(
                    "a: no detection time: no incident seen, or fewer than 5 failures in \
                     nginx's error.log"
                        .into(),
                ),
            }
        }

        // b. The top cause is the injected one and names the right process.
        if let Some(incident) = &self.incident {
            let top = &incident["causes"][0];
            let cause = top["cause"].as_str().unwrap_or("(none)");
            if !expected.contains(&cause) {
                failed.push(format!(
                    "b: top cause is {cause} ({}), expected {}",
                    top["summary"].as_str().unwrap_or_default(),
                    expected.join(" or ")
                ));
            }
            let pid = top["process"]["pid"].as_u64();
            let want = match scenario.culprit() {
                Culprit::Backend => self.backend_pids.first().map(|p| u64::from(*p)),
                Culprit::Proxy => self.nginx_worker_pid.map(u64::from),
                Culprit::Nobody => None,
            };
            if scenario.culprit() != Culprit::Nobody && pid != want {
                failed.push(format!(
                    "b: top cause names pid {pid:?}, expected {want:?} ({:?})",
                    scenario.culprit()
                ));
            }
        } else if !expected.is_empty() {
            failed.push("b: no incident to explain".into());
        }

        // c. Counts agree with nginx's own logs.
        if let Some(incident) = &self.incident {
            let kinds = kinds_of(incident);
            let mut names: Vec<&String> = kinds.keys().chain(self.errors.kinds.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let agent = kinds.get(name).copied().unwrap_or(0);
                let nginx = self.errors.kinds.get(name).copied().unwrap_or(0);
                if agent != nginx {
                    failed.push(format!(
                        "c: failure_kinds[{name}] = {agent}, nginx's error.log has {nginx}"
                    ));
                }
            }
            let failures = incident["failures"].as_u64().unwrap_or(0);
            if failures != self.errors.total() {
                failed.push(format!(
                    "c: the incident has {failures} failures, nginx's error.log {}",
                    self.errors.total()
                ));
            }
        }
        for (code, delta) in &self.responses_delta {
            let logged = self.access.count(*code);
            match delta {
                Some(d) if *d == logged as f64 => {}
                Some(d) => failed.push(format!(
                    "c: {RESPONSES_METRIC}{{proxy=\"nginx\",code=\"{code}\"}} rose by {d}, \
                     access.log has {logged}"
                )),
                None if logged == 0 => {}
                None => failed.push(format!(
                    "c: {RESPONSES_METRIC}{{proxy=\"nginx\",code=\"{code}\"}} is not exported; \
                     access.log has {logged}"
                )),
            }
        }
        failed
    }
}
