//! Bounded label values, so that a port scan or a storm of short-lived processes cannot
//! grow the number of series without bound. Series never change names under a dashboard
//! once they exist: a value keeps its name for good, or is folded into `other` for good.
//!
//! Each cap has two pools of `max` slots. The first come take the first pool; once it is
//! full only favoured values get a name, in the second: the proxies and upstreams of
//! incidents, the proxies known by their executable and what they connect to, and the
//! services that listen. Known proxies' own names (`nginx`, `haproxy`, …: a fixed handful)
//! always keep theirs. So a user whose junk processes fail connects under ten thousand
//! names folds the junk, not nginx and its upstreams.

use std::collections::HashMap;

use prometheus::{IntCounterVec, Registry};

use super::{registry::counter, MetricsError};
use crate::{
    config::MetricsConfig,
    model::{
        event::{ProcessInfo, ProcessRef},
        incident::Incident,
    },
};

pub const OTHER: &str = "other";

#[derive(Debug)]
pub struct LabelCap {
    /// Values that keep their name, and whether they are favoured.
    admitted: HashMap<String, bool>,
    first_come: usize,
    favoured: usize,
    max: usize,
    /// Values that always keep their name, outside both pools (a fixed, small set).
    reserved: fn(&str) -> bool,
    folded: u64,
}

impl LabelCap {
    pub fn new(max: usize) -> Self {
        Self::with_reserved(max, |_| false)
    }

    pub fn with_reserved(max: usize, reserved: fn(&str) -> bool) -> Self {
        Self {
            admitted: HashMap::new(),
            first_come: 0,
            favoured: 0,
            max,
            reserved,
            folded: 0,
        }
    }

    /// The value to use for `value`: itself if admitted (or room is left in its pools),
    /// else `other`.
    pub fn admit(&mut self, value: &str, favoured: bool) -> String {
        if let Some(was_favoured) = self.admitted.get_mut(value) {
            *was_favoured |= favoured;
            return value.to_string();
        }
        if (self.reserved)(value) {
            self.admitted.insert(value.to_string(), true);
            return value.to_string();
        }
        if self.first_come < self.max {
            self.first_come += 1;
        } else if favoured && self.favoured < self.max {
            self.favoured += 1;
        } else {
            self.folded += 1;
            return OTHER.to_string();
        }
        self.admitted.insert(value.to_string(), favoured);
        value.to_string()
    }

    /// Whether `value` keeps its name as a favoured one.
    pub fn is_favoured(&self, value: &str) -> bool {
        (self.reserved)(value) || self.admitted.get(value).copied().unwrap_or(false)
    }

    /// Values folded into `other` so far.
    pub fn folded(&self) -> u64 {
        self.folded
    }
}

/// A known proxy's own name (`nginx`, `haproxy`, `apache2`, …).
fn known_proxy_name(value: &str) -> bool {
    agent_common::proxy::family(value).is_some()
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
            proxies: LabelCap::with_reserved(config.max_proxies, known_proxy_name),
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
        capped(&mut self.upstreams, value, false, "upstream", &self.folds)
    }

    /// The upstream label of a connection of the process labelled `proxy`: favoured when
    /// that proxy is.
    pub fn upstream_of(&mut self, proxy: &str, value: &str) -> String {
        let favoured = self.proxies.is_favoured(proxy);
        capped(
            &mut self.upstreams,
            value,
            favoured,
            "upstream",
            &self.folds,
        )
    }

    pub fn proxy(&mut self, value: &str) -> String {
        capped(&mut self.proxies, value, false, "proxy", &self.folds)
    }

    /// The proxy label of an event's process (`unknown` when the kernel did not know it):
    /// favoured when its executable is a known proxy's.
    pub fn proxy_of(&mut self, process: Option<&ProcessRef>) -> String {
        match process {
            Some(p) => {
                let exe = p.info.as_deref().and_then(|i| i.exe.as_deref());
                let known = crate::model::proxy::known_proxy(&p.comm, exe).is_some();
                capped(&mut self.proxies, &p.comm, known, "proxy", &self.folds)
            }
            None => "unknown".to_string(),
        }
    }

    /// An incident's (proxy, upstream) labels, both favoured: incidents are about proxies.
    pub fn incident(&mut self, incident: &Incident) -> (String, String) {
        let proxy = capped(
            &mut self.proxies,
            &incident.proxy.comm,
            true,
            "proxy",
            &self.folds,
        );
        let upstream = capped(
            &mut self.upstreams,
            &incident.upstream,
            true,
            "upstream",
            &self.folds,
        );
        (proxy, upstream)
    }

    pub fn service(&mut self, value: &str) -> String {
        capped(&mut self.services, value, false, "service", &self.folds)
    }

    /// The service label of a listener (its cgroup, its accept queue): favoured.
    pub fn listener_service(&mut self, value: &str) -> String {
        capped(&mut self.services, value, true, "service", &self.folds)
    }

    /// A process's service label: see [`service_name`].
    pub fn service_of(&mut self, process: Option<&ProcessRef>) -> String {
        let name = process
            .map(|p| service_name(p.info.as_deref(), &p.comm))
            .unwrap_or_else(|| "unknown".into());
        self.service(&name)
    }

    pub fn endpoint(&mut self, value: &str) -> String {
        capped(&mut self.endpoints, value, false, "endpoint", &self.folds)
    }
}

/// The service a process's series are labelled with: its systemd unit, else its name. A
/// container's own scope (`cri-containerd-<id>.scope`, `docker-<id>.scope`) is not a
/// service: its id changes with every restart of the container, and each would take a
/// slot of the cap for good, so a container's process is labelled by its name, as under
/// the cgroupfs driver, where containers have no unit at all; a unit inside the container
/// (`docker-<id>.scope/nginx.service`) is as stable as the container and is kept. Pods
/// are not labels either: their names change with every rollout.
pub fn service_name(info: Option<&ProcessInfo>, comm: &str) -> String {
    let unit = info.and_then(|i| {
        let unit = i.unit.as_deref()?;
        let own_scope =
            !unit.contains('/') && i.container.as_deref().is_some_and(|id| unit.contains(id));
        (!own_scope).then_some(unit)
    });
    unit.unwrap_or(comm).to_string()
}

fn capped(
    cap: &mut LabelCap,
    value: &str,
    favoured: bool,
    label: &str,
    folds: &IntCounterVec,
) -> String {
    let admitted = cap.admit(value, favoured);
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
        assert_eq!(cap.admit("a", false), "a");
        assert_eq!(cap.admit("b", false), "b");
        assert_eq!(cap.admit("c", false), OTHER);
        assert_eq!(cap.admit("a", false), "a");
        assert_eq!(cap.folded(), 1);
        assert_eq!(cap.admit("c", false), OTHER);
        assert_eq!(cap.folded(), 2, "every use of a folded value counts");
        // A cap of 0 keeps no name at all.
        assert_eq!(LabelCap::new(0).admit("a", false), OTHER);
    }

    /// Once the first pool is full only favoured values get a name, up to a second pool of
    /// the same size; reserved values always do; a first-come value later favoured keeps
    /// its slot and becomes favoured.
    #[test]
    fn favoured_values_have_a_pool_of_their_own() {
        let mut cap = LabelCap::with_reserved(2, |v| v == "nginx");
        assert_eq!(cap.admit("junk0", false), "junk0");
        assert_eq!(cap.admit("junk1", false), "junk1");
        assert_eq!(cap.admit("junk2", false), OTHER);
        assert_eq!(cap.admit("gateway", true), "gateway");
        assert_eq!(cap.admit("envoy-ish", true), "envoy-ish");
        assert_eq!(
            cap.admit("third", true),
            OTHER,
            "the second pool is bounded too"
        );
        for _ in 0..3 {
            assert_eq!(cap.admit("nginx", false), "nginx");
        }
        assert!(cap.is_favoured("nginx") && cap.is_favoured("gateway"));
        assert!(!cap.is_favoured("junk0"));
        assert_eq!(cap.admit("junk0", true), "junk0");
        assert!(cap.is_favoured("junk0"));
        assert_eq!(cap.folded(), 2);
    }

    /// A container's own scope is not its service (a new id at every restart); the unit
    /// of a host service, and one inside a container, are.
    #[test]
    fn a_containers_process_is_labelled_by_name_not_by_its_scope() {
        use crate::model::event::ProcessInfo;
        let id = "4f1e2b8c9d0a".repeat(5) + "1234";
        let info = |unit: Option<String>, container: Option<&str>| ProcessInfo {
            unit,
            container: container.map(String::from),
            ..ProcessInfo::default()
        };
        let pod = info(Some(format!("cri-containerd-{id}.scope")), Some(&id));
        assert_eq!(service_name(Some(&pod), "nginx"), "nginx");
        let restarted = info(
            Some(format!("cri-containerd-{}.scope", "9".repeat(64))),
            None,
        );
        // Without the container id read, the unit is all there is.
        assert_eq!(
            service_name(Some(&restarted), "nginx"),
            format!("cri-containerd-{}.scope", "9".repeat(64))
        );
        let inner = info(Some(format!("docker-{id}.scope/nginx.service")), Some(&id));
        assert_eq!(
            service_name(Some(&inner), "nginx"),
            format!("docker-{id}.scope/nginx.service")
        );
        let host = info(Some("php8.2-fpm.service".into()), None);
        assert_eq!(
            service_name(Some(&host), "php-fpm8.2"),
            "php8.2-fpm.service"
        );
        assert_eq!(service_name(None, "backend"), "backend");
    }

    mod through_the_metrics {
        use crate::model::namespace::NetNs;
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
                        nat_destination: None,
                        netns: NetNs::own(),
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

        fn failed_connect(process: Option<ProcessRef>, dst: String) -> Event {
            event(
                process,
                EventDetail::TcpConnectFailure(ConnectFailure {
                    nat_destination: None,
                    netns: NetNs::own(),
                    src: "127.0.0.1:40000".parse().unwrap(),
                    dst: dst.parse().unwrap(),
                    errno: Errno(libc::ECONNREFUSED),
                    errno_source: "sk_err",
                    duration: Duration::from_micros(50),
                    syn_retransmits: 0,
                }),
            )
        }

        fn with_exe(comm: &str, exe: &str) -> Option<ProcessRef> {
            let mut p = process(comm.into(), None)?;
            p.info = Some(Arc::new(ProcessInfo {
                exe: Some(exe.into()),
                ..Default::default()
            }));
            Some(p)
        }

        /// Ten thousand junk processes, each under its own name and failing to its own
        /// port, take every first-come slot before the proxies fail: nginx, an Envoy
        /// whose process is named otherwise, a proxy with an incident, and their upstreams
        /// keep their names; the junk beyond the caps folds into `other` as before.
        #[test]
        fn a_flood_of_junk_names_keeps_the_proxies_labels() {
            let caps = caps();
            let metrics = Metrics::new(&caps).unwrap();
            const JUNK: usize = 10_000;
            for k in 0..JUNK {
                metrics.event(&failed_connect(
                    process(format!("junk{k}"), None),
                    format!("127.0.0.1:{}", 10_000 + k),
                ));
            }
            metrics.event(&failed_connect(
                process("nginx".into(), None),
                "127.0.0.1:9000".into(),
            ));
            metrics.event(&failed_connect(
                with_exe("wrk:0", "/usr/bin/envoy"),
                "127.0.0.1:9001".into(),
            ));
            let mut incident = crate::sinks::store::testing::recent_incident(1, 0);
            incident.proxy.comm = "gateway".into();
            incident.upstream = "127.0.0.1:9002".into();
            metrics.incident(&crate::model::incident::Update::Opened(incident.clone()));
            metrics.event(&failed_connect(
                process("gateway".into(), None),
                "127.0.0.1:9002".into(),
            ));
            let text = metrics.render().unwrap();
            let errors = "why502_upstream_connect_errors_total";
            for (proxy, upstream) in [
                ("nginx", "127.0.0.1:9000"),
                ("wrk:0", "127.0.0.1:9001"),
                ("gateway", "127.0.0.1:9002"),
            ] {
                let series = format!("{errors}{{errno=\"ECONNREFUSED\",proxy=\"{proxy}\",upstream=\"{upstream}\"}} 1");
                assert!(text.lines().any(|l| l == series), "{series} in\n{text}");
            }
            let open = "why502_incident_open{proxy=\"gateway\",upstream=\"127.0.0.1:9002\"} 1";
            assert!(text.lines().any(|l| l == open), "{text}");
            // The junk keeps its first-come slots, and folds beyond them.
            let (proxies, other) = values(&text, errors, "proxy");
            let junk_named = proxies.iter().filter(|p| p.starts_with("junk")).count();
            assert_eq!(junk_named, caps.max_proxies);
            assert_eq!(other, (JUNK - caps.max_proxies) as f64);
            let (upstreams, _) = values(&text, errors, "upstream");
            assert_eq!(upstreams.len(), caps.max_upstreams + 3 + 1, "{upstreams:?}");
            assert_eq!(
                folded(&text, "proxy"),
                Some((JUNK - caps.max_proxies) as f64)
            );
        }
    }
}
