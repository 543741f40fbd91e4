//! The scenario's expectations, held against its outcome: the fault did to nginx what it
//! should, (a) exactly one incident, in time, (b) the injected cause naming the right
//! process, (c) counts equal to nginx's own logs. Changes when an expectation does.

use super::{
    super::{topology::status_text, Culprit, Scenario, NO_LIVE_UPSTREAMS},
    kinds_of, open_threshold, responses_of, Outcome, BAD_GATEWAY_CODES, DETECTION_LIMIT,
    RESPONSES_DETECTION_LIMIT, RESPONSES_METRIC, RESPONSE_CODES,
};

impl Outcome {
    /// The expectations this run did not meet (empty: the scenario passed).
    pub fn failed_checks(&self) -> Vec<String> {
        let mut failed = Vec::new();
        let scenario = self.scenario;
        let expected = scenario.expected_causes();
        let threshold = open_threshold();

        // The agent answered every question (otherwise "nothing" means nothing).
        failed.extend(self.agent_faults.iter().map(|f| format!("agent: {f}")));

        // The fault did what it should to nginx (otherwise the rest means nothing).
        match scenario.failure_status() {
            Some(status) => {
                if (self.access.count(status) as usize) < threshold {
                    failed.push(format!(
                        "setup: {} answered {status} only {} times ({} {:?})",
                        self.proxy,
                        self.access.count(status),
                        self.record_names.0,
                        self.access.statuses
                    ));
                }
            }
            None => {
                // Every request got 200, but for the upstream's occasional failures (502).
                let bad: Vec<_> = self
                    .exchanges
                    .iter()
                    .filter(|e| e.status != Ok(200))
                    .collect();
                let occasional = scenario.occasional_failures();
                if bad.len() as u64 != occasional || bad.iter().any(|e| e.status != Ok(502)) {
                    failed.push(format!(
                        "setup: expected every request to get 200{}, got: {:?}",
                        if occasional == 0 {
                            String::new()
                        } else {
                            format!(" but {occasional} to get 502")
                        },
                        bad.iter()
                            .map(|e| format!(
                                "{} {} → {}",
                                e.method,
                                e.path,
                                status_text(&e.status)
                            ))
                            .collect::<Vec<_>>()
                    ));
                }
            }
        }
        let allowed = scenario.logged_failure_kinds();
        let unexpected: Vec<_> = self
            .errors
            .kinds
            .keys()
            .chain(self.errors.other.keys())
            .filter(|k| !allowed.contains(&k.as_str()))
            .collect();
        if !allowed.is_empty() && !unexpected.is_empty() {
            failed.push(format!(
                "setup: {} has {unexpected:?}, expected only {}",
                self.record_names.1,
                allowed.join(" or ")
            ));
        }
        if matches!(scenario, Scenario::Deploy | Scenario::WorkerCrashMidRequest)
            && self.exchanges.last().map(|e| e.status.clone()) != Some(Ok(200))
        {
            failed.push(match scenario {
                Scenario::Deploy => "setup: the restarted backend does not serve".into(),
                _ => "setup: the backend does not serve after its workers died".into(),
            });
        }
        if scenario.responses_only() {
            // nginx's own record that it connected nowhere: one "no live upstreams" per 502.
            let refused = self
                .errors
                .other
                .get(NO_LIVE_UPSTREAMS)
                .copied()
                .unwrap_or(0);
            let answered = self.access.count(502);
            if refused != answered || !self.errors.kinds.is_empty() {
                failed.push(format!(
                    "setup: {} has \"{NO_LIVE_UPSTREAMS}\" ×{refused} and failures {:?}, for \
                     {answered} 502s",
                    self.record_names.1, self.errors.kinds
                ));
            }
        }
        if scenario.culprit() == Culprit::Worker && self.killed_workers.is_empty() {
            failed.push("setup: no worker was killed".into());
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
            let limit = if scenario.responses_only() {
                RESPONSES_DETECTION_LIMIT
            } else {
                DETECTION_LIMIT
            };
            match self.detection {
                Some(d) if d < limit => {}
                Some(d) => failed.push(format!(
                    "a: incident queryable {} ms after failed response #{threshold} (limit {} \
                     ms)",
                    d.as_millis(),
                    limit.as_millis()
                )),
                None => failed.push(format!(
                    "a: no detection time: no incident seen, or fewer than {threshold} \
                     failures in nginx's error.log"
                )),
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
            let want: Vec<u64> = match scenario.culprit() {
                Culprit::Backend => self.backend_pids.iter().take(1).copied().collect(),
                Culprit::Proxy => self.nginx_worker_pid.into_iter().collect(),
                // Any of the killed workers: each held a request.
                Culprit::Worker => self.killed_workers.clone(),
                Culprit::Nobody => Vec::new(),
            }
            .into_iter()
            .map(u64::from)
            .collect();
            if scenario.culprit() != Culprit::Nobody && !pid.is_some_and(|p| want.contains(&p)) {
                failed.push(format!(
                    "b: top cause names pid {pid:?}, expected {} ({:?})",
                    match want.as_slice() {
                        [one] => one.to_string(),
                        many => format!("one of {many:?}"),
                    },
                    scenario.culprit()
                ));
            }
        } else if !expected.is_empty() {
            failed.push("b: no incident to explain".into());
        }

        // c. Counts agree with the proxy's own logs.
        let (access_log, error_log) = self.record_names;
        if let Some(incident) = &self.incident {
            // Every 5xx of the run is what the incident's failures became (or, for a worker
            // dying behind a unix socket and for 5xx alone, all the agent sees of them).
            let responses = responses_of(incident);
            for code in BAD_GATEWAY_CODES {
                let agent = responses.get(&code).copied().unwrap_or(0);
                let logged = self.access.count(code);
                if agent != logged {
                    failed.push(format!(
                        "c: the incident's responses[{code}] = {agent}, {access_log} has \
                         {logged}"
                    ));
                }
            }
        }
        if let Some(incident) = self
            .incident
            .as_ref()
            .filter(|_| scenario.compares_failure_kinds())
        {
            let kinds = kinds_of(incident);
            let mut names: Vec<&String> = kinds.keys().chain(self.errors.kinds.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let agent = kinds.get(name).copied().unwrap_or(0);
                let nginx = self.errors.kinds.get(name).copied().unwrap_or(0);
                if agent != nginx {
                    failed.push(format!(
                        "c: failure_kinds[{name}] = {agent}, {error_log} has {nginx}"
                    ));
                }
            }
            let failures = incident["failures"].as_u64().unwrap_or(0);
            if failures != self.errors.total() {
                failed.push(format!(
                    "c: the incident has {failures} failures, {error_log} {}",
                    self.errors.total()
                ));
            }
        }
        // The controls and the 5xx scenarios alike: something must have been counted, or
        // an agent that counts nothing would pass wherever the log has nothing.
        if RESPONSE_CODES.iter().all(|c| self.access.count(*c) == 0) {
            failed.push(format!(
                "setup: {access_log} has none of {RESPONSE_CODES:?}: nothing to hold the \
                 agent's counts to"
            ));
        }
        for (code, delta) in &self.responses_delta {
            let logged = self.access.count(*code);
            match delta {
                Some(d) if *d == logged as f64 => {}
                Some(d) => failed.push(format!(
                    "c: {RESPONSES_METRIC}{{proxy=\"{}\",code=\"{code}\"}} rose by {d}, \
                     {access_log} has {logged}",
                    self.proxy
                )),
                None if logged == 0 => {}
                None => failed.push(format!(
                    "c: {RESPONSES_METRIC}{{proxy=\"{}\",code=\"{code}\"}} is not exported; \
                     {access_log} has {logged}",
                    self.proxy
                )),
            }
        }
        failed
    }
}
