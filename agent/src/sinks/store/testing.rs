//! A realistic incident for the store's, the API's and the CLI's tests: nginx failing to
//! reach php-fpm after the OOM killer took it.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::model::{
    failure::FailureKind,
    incident::{Candidate, Cause, Confidence, Evidence, Incident, IncidentState, ProcessSummary},
};

/// 2026-11-21 14:02:03 UTC.
pub(crate) fn base_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_269_723)
}

fn at(base: SystemTime, ms: i64) -> SystemTime {
    if ms >= 0 {
        base + Duration::from_millis(ms as u64)
    } else {
        base - Duration::from_millis(ms.unsigned_abs())
    }
}

/// Incident `id`, started at `started_at`, closed 6.2 s later.
pub(crate) fn incident(id: u64, started_at: SystemTime) -> Incident {
    let php = ProcessSummary {
        pid: 1234,
        comm: "php-fpm8.2".into(),
        exe: Some("/usr/sbin/php-fpm8.2".into()),
        uid: Some(33),
        unit: Some("php8.2-fpm.service".into()),
        cgroup: Some("/system.slice/php8.2-fpm.service".into()),
        container: None,
        runtime: None,
        pod: None,
        known_proxy: None,
    };
    Incident {
        id,
        state: IncidentState::Closed,
        started_at,
        last_failure_at: at(started_at, 6_104),
        closed_at: Some(at(started_at, 6_200)),
        proxy: ProcessSummary {
            pid: 812,
            comm: "nginx".into(),
            exe: Some("/usr/sbin/nginx".into()),
            uid: Some(33),
            unit: Some("nginx.service".into()),
            cgroup: Some("/system.slice/nginx.service".into()),
            container: None,
            runtime: None,
            pod: None,
            known_proxy: Some("nginx".into()),
        },
        upstream: "127.0.0.1:9000".into(),
        failures: 312,
        failure_kinds: BTreeMap::from([(FailureKind::ECONNREFUSED, 312)]),
        responses: BTreeMap::from([(502, 287)]),
        causes: vec![
            Candidate {
                cause: Cause::OomKill,
                confidence: Confidence::High,
                summary: "php-fpm (pid 1234, php8.2-fpm.service), listener of 127.0.0.1:9000, \
                          was killed by the OOM killer at 14:02:02.871 (anon RSS 1.9 GiB)"
                    .into(),
                hint: "raise the service's memory limit or lower pm.max_children.".into(),
                process: Some(php.clone()),
                evidence: vec![
                    Evidence {
                        time: at(started_at, -1_800),
                        kind: "memory_pressure".into(),
                        text: "memory pressure 43%".into(),
                    },
                    Evidence {
                        time: at(started_at, -129),
                        kind: "oom_kill".into(),
                        text: "OOM kill pid 1234".into(),
                    },
                    Evidence {
                        time: at(started_at, -128),
                        kind: "listener_closed".into(),
                        text: "listener closed".into(),
                    },
                    Evidence {
                        time: at(started_at, 10),
                        kind: "tcp_connect_failure".into(),
                        text: "first refused connect".into(),
                    },
                    Evidence {
                        time: at(started_at, 6_114),
                        kind: "listener_opened".into(),
                        text: "listener back (pid 1301)".into(),
                    },
                ],
            },
            Candidate {
                cause: Cause::Restart,
                confidence: Confidence::Medium,
                summary: "php8.2-fpm.service's listener came back 6.1 s later".into(),
                hint: "check why the service restarted.".into(),
                process: Some(php),
                evidence: vec![],
            },
        ],
    }
}

/// Incident `id` started `minutes_ago` minutes before now.
pub(crate) fn recent_incident(id: u64, minutes_ago: u64) -> Incident {
    incident(
        id,
        SystemTime::now() - Duration::from_secs(60 * minutes_ago),
    )
}
