//! Bounded label values: the first `max` distinct values of a label are kept as they are,
//! later ones are folded into `other`, so that a port scan or a storm of short-lived
//! processes cannot grow the number of series without bound. First come, first kept:
//! series never change names under a dashboard once they exist.

use std::collections::HashSet;

use prometheus::{IntCounterVec, Registry};

use super::{registry::counter, MetricsError};
use crate::{config::MetricsConfig, model::event::ProcessRef};

pub const OTHER: &str = "other";

#[derive(Debug)]
pub struct LabelCap {
    admitted: HashSet<String>,
    max: usize,
    folded: u64,
}

impl LabelCap {
    pub fn new(max: usize) -> Self {
        Self {
            admitted: HashSet::new(),
            max,
            folded: 0,
        }
    }

    /// The value to use for `value`: itself if admitted (or room is left), else `other`.
    pub fn admit(&mut self, value: &str) -> String {
        if self.admitted.contains(value) {
            return value.to_string();
        }
        if self.admitted.len() < self.max {
            self.admitted.insert(value.to_string());
            return value.to_string();
        }
        self.folded += 1;
        OTHER.to_string()
    }

    /// Values folded into `other` so far.
    pub fn folded(&self) -> u64 {
        self.folded
    }
}

/// The capped labels every part of the metrics shares: one upstream is one value, whatever
/// series it appears in.
pub struct Labels {
    upstreams: LabelCap,
    proxies: LabelCap,
    services: LabelCap,
    endpoints: LabelCap,
    folds: IntCounterVec,
}

impl Labels {
    pub fn new(config: &MetricsConfig, r: &Registry) -> Result<Self, MetricsError> {
        Ok(Self {
            upstreams: LabelCap::new(config.max_upstreams),
            proxies: LabelCap::new(config.max_proxies),
            services: LabelCap::new(config.max_services),
            endpoints: LabelCap::new(config.max_upstreams),
            folds: counter(
                r,
                "why502_metric_label_values_folded_total",
                "Label values folded into `other` because of the configured caps.",
                &["label"],
            )?,
        })
    }

    pub fn upstream(&mut self, value: &str) -> String {
        capped(&mut self.upstreams, value, "upstream", &self.folds)
    }

    pub fn proxy(&mut self, value: &str) -> String {
        capped(&mut self.proxies, value, "proxy", &self.folds)
    }

    /// The proxy label of an event's process (`unknown` when the kernel did not know it).
    pub fn proxy_of(&mut self, process: Option<&ProcessRef>) -> String {
        match process {
            Some(p) => self.proxy(&p.comm),
            None => "unknown".to_string(),
        }
    }

    pub fn service(&mut self, value: &str) -> String {
        capped(&mut self.services, value, "service", &self.folds)
    }

    /// A process's service label: its systemd unit, else its name.
    pub fn service_of(&mut self, process: Option<&ProcessRef>) -> String {
        let name = process
            .map(|p| {
                p.info
                    .as_ref()
                    .and_then(|i| i.unit.clone())
                    .unwrap_or_else(|| p.comm.clone())
            })
            .unwrap_or_else(|| "unknown".into());
        self.service(&name)
    }

    pub fn endpoint(&mut self, value: &str) -> String {
        capped(&mut self.endpoints, value, "endpoint", &self.folds)
    }
}

fn capped(cap: &mut LabelCap, value: &str, label: &str, folds: &IntCounterVec) -> String {
    let admitted = cap.admit(value);
    if admitted == OTHER && value != OTHER {
        folds.with_label_values(&[label]).inc();
    }
    admitted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_beyond_the_cap() {
        let mut cap = LabelCap::new(2);
        assert_eq!(cap.admit("a"), "a");
        assert_eq!(cap.admit("b"), "b");
        assert_eq!(cap.admit("c"), OTHER);
        assert_eq!(cap.admit("a"), "a");
        assert_eq!(cap.folded(), 1);
        assert_eq!(cap.admit("c"), OTHER);
        assert_eq!(cap.folded(), 2, "every use of a folded value counts");
        // A cap of 0 keeps no name at all.
        assert_eq!(LabelCap::new(0).admit("a"), OTHER);
    }

    mod through_the_metrics {
        use std::{collections::BTreeSet, sync::Arc, time::Duration, time::UNIX_EPOCH};

        use crate::{
            config::MetricsConfig,
            model::event::{
                ConnectFailure, Errno, Event, EventDetail, Exit, ProcessInfo, ProcessRef,
            },
            sinks::metrics::{labels::OTHER, Metrics},
        };

        const UPSTREAMS: usize = 10;
        const PROXIES: usize = 5;
        const SERVICES: usize = 6;
        /// Caps below the numbers of distinct values the test makes, and distinct from
        /// each other, so that a cap read from the wrong key shows.
        fn caps() -> MetricsConfig {
            MetricsConfig {
                max_upstreams: 3,
                max_proxies: 2,
                max_services: 4,
                ..MetricsConfig::default()
            }
        }

        fn process(comm: String, unit: Option<String>) -> Option<ProcessRef> {
            Some(ProcessRef {
                pid: 1000,
                tid: 1000,
                comm,
                thread: None,
                cgroup_id: 1,
                info: Some(Arc::new(ProcessInfo {
                    unit,
                    ..Default::default()
                })),
            })
        }

        fn event(process: Option<ProcessRef>, detail: EventDetail) -> Event {
            Event {
                time: UNIX_EPOCH,
                mono_ns: 1,
                process,
                detail,
            }
        }

        /// The distinct values of `label` among the samples of `metric`, and the sum of
        /// the samples whose `label` is `other`.
        fn values(text: &str, metric: &str, label: &str) -> (BTreeSet<String>, f64) {
            let key = format!("{label}=\"");
            let mut seen = BTreeSet::new();
            let mut other = 0.0;
            for line in text
                .lines()
                .filter(|l| l.starts_with(&format!("{metric}{{")))
            {
                let start = line.find(&key).expect("the label") + key.len();
                let value = &line[start..start + line[start..].find('"').unwrap()];
                if value == OTHER {
                    other += line.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
                }
                seen.insert(value.to_string());
            }
            (seen, other)
        }

        fn folded(text: &str, label: &str) -> Option<f64> {
            let prefix = format!("why502_metric_label_values_folded_total{{label=\"{label}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .map(|v| v.parse().unwrap())
        }

        /// Each cap keeps exactly its number of names, first come first kept; every later
        /// use is counted under `other` and as a fold of its label.
        #[test]
        fn every_cap_keeps_exactly_its_number_of_names() {
            let caps = caps();
            let metrics = Metrics::new(&caps).unwrap();
            for k in 0..UPSTREAMS {
                metrics.event(&event(
                    process(format!("proxy{}", k % PROXIES), None),
                    EventDetail::TcpConnectFailure(ConnectFailure {
                        src: "127.0.0.1:40000".parse().unwrap(),
                        dst: format!("127.0.0.1:{}", 9000 + k).parse().unwrap(),
                        errno: Errno(libc::ECONNREFUSED),
                        errno_source: "sk_err",
                        duration: Duration::from_micros(50),
                        syn_retransmits: 0,
                    }),
                ));
            }
            for k in 0..SERVICES {
                metrics.event(&event(
                    process("worker".into(), Some(format!("svc{k}.service"))),
                    EventDetail::ProcessExit(Exit::from_wait_status(libc::SIGKILL)),
                ));
            }
            let text = metrics.render().unwrap();
            let errors = "why502_upstream_connect_errors_total";

            let (upstreams, other) = values(&text, errors, "upstream");
            let named: BTreeSet<String> = (0..caps.max_upstreams)
                .map(|k| format!("127.0.0.1:{}", 9000 + k))
                .collect();
            assert_eq!(upstreams, &named | &BTreeSet::from([OTHER.to_string()]));
            let folded_upstreams = (UPSTREAMS - caps.max_upstreams) as f64;
            assert_eq!(other, folded_upstreams, "{text}");
            assert_eq!(folded(&text, "upstream"), Some(folded_upstreams), "{text}");

            let (proxies, other) = values(&text, errors, "proxy");
            assert_eq!(
                proxies,
                BTreeSet::from(["proxy0", "proxy1", OTHER].map(String::from))
            );
            // proxy2..proxy4 failed twice each.
            let folded_proxies = (UPSTREAMS / PROXIES * (PROXIES - caps.max_proxies)) as f64;
            assert_eq!(other, folded_proxies, "{text}");
            assert_eq!(folded(&text, "proxy"), Some(folded_proxies), "{text}");

            let (services, other) = values(&text, "why502_process_exits_total", "service");
            let named: BTreeSet<String> = (0..caps.max_services)
                .map(|k| format!("svc{k}.service"))
                .collect();
            assert_eq!(services, &named | &BTreeSet::from([OTHER.to_string()]));
            let folded_services = (SERVICES - caps.max_services) as f64;
            assert_eq!(other, folded_services, "{text}");
            assert_eq!(folded(&text, "service"), Some(folded_services), "{text}");
        }
    }
}
