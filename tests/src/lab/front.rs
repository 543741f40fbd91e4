//! The proxy a scenario's client talks to, and whose own log is the oracle: the lab's nginx
//! (`proxy_pass`), nginx passing to php-fpm (`fastcgi_pass`), or HAProxy. What the checks
//! need of it, whichever it is: the agent's name for it, the process that connects
//! upstream, and what it logged, as statuses and as upstream failures by the agent's kind
//! names.

use super::{
    haproxy::{HaproxyLog, LabHaproxy},
    logs::{AccessLog, ErrorLog},
    nginx::LabNginx,
    phpfpm::FastcgiNginx,
};

pub enum Front {
    Nginx(LabNginx),
    Fastcgi(FastcgiNginx),
    Haproxy(LabHaproxy),
}

impl Front {
    /// The agent's name for the proxy: its `proxy` label, the process's comm.
    pub fn name(&self) -> &'static str {
        match self {
            Front::Nginx(_) | Front::Fastcgi(_) => "nginx",
            Front::Haproxy(_) => "haproxy",
        }
    }

    /// The process that connects to the upstream: nginx's worker, HAProxy's one process.
    pub fn worker_pid(&self) -> Option<u32> {
        match self {
            Front::Nginx(n) => n.worker_pid(),
            Front::Fastcgi(n) => n.worker_pid(),
            Front::Haproxy(h) => Some(h.pid()),
        }
    }

    /// The statuses it answered with: nginx's access.log, HAProxy's log.
    pub fn access(&self) -> AccessLog {
        match self {
            Front::Nginx(n) => AccessLog::parse(&n.access_log()),
            Front::Fastcgi(n) => AccessLog::parse(&n.access_log()),
            Front::Haproxy(h) => HaproxyLog::parse(&h.log()).access(),
        }
    }

    /// Its upstream failures by the agent's kind names: nginx's error.log, or the failed
    /// connect attempts HAProxy's log accounts for.
    pub fn errors(&self) -> ErrorLog {
        match self {
            Front::Nginx(n) => ErrorLog::parse(&n.error_log()),
            Front::Fastcgi(n) => ErrorLog::parse(&n.error_log()),
            Front::Haproxy(h) => HaproxyLog::parse(&h.log()).errors(),
        }
    }

    /// Its own log of upstream errors as it wrote it, for the report.
    pub fn log_text(&self) -> String {
        match self {
            Front::Nginx(n) => n.error_log(),
            Front::Fastcgi(n) => n.error_log(),
            Front::Haproxy(h) => h.log(),
        }
    }

    /// What the report calls the records: (statuses, upstream failures).
    pub fn record_names(&self) -> (&'static str, &'static str) {
        match self {
            Front::Nginx(_) | Front::Fastcgi(_) => ("nginx access.log", "nginx error.log"),
            Front::Haproxy(_) => ("haproxy log", "haproxy log (connect attempts)"),
        }
    }
}
