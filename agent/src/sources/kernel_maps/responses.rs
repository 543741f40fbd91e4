//! HTTP responses of proxies: the kernel's per-(process, status) counts, as growth since
//! the last poll. The kernel marks proxies itself as they show themselves (exec of a known
//! proxy, a fork of a proxy, a failed or reset upstream connection of a process that
//! listens or whose parent does); the agent only marks the known proxies already running
//! when it starts ([`running_proxies`]); the listeners it finds then are the kernel's
//! listener owners from the start.

use agent_common::http::ResponseKey;

use super::connects::CounterDeltas;
use crate::{
    model::{event::ProcessRef, proxy::known_proxy},
    sources::enrich::ProcessCache,
};

/// Running processes that are known proxies (and their workers, which share the name).
pub fn running_proxies() -> Vec<u32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.flatten()
        .filter(|p| {
            let comm = p.stat().map(|s| s.comm).unwrap_or_default();
            let exe = p.exe().ok().map(|e| e.display().to_string());
            known_proxy(&comm, exe.as_deref()).is_some()
        })
        .map(|p| p.pid as u32)
        .collect()
}

/// Responses one proxy wrote with one status code since the previous poll.
#[derive(Debug, Clone)]
pub struct ResponseGrowth {
    pub proxy: ProcessRef,
    pub code: u16,
    pub count: u64,
}

/// Turns successive readings of the kernel's counts into growth.
#[derive(Default)]
pub struct ResponseDeltas {
    deltas: CounterDeltas<ResponseKey>,
}

impl ResponseDeltas {
    pub fn advance(
        &mut self,
        counts: &[(ResponseKey, u64)],
        cache: &ProcessCache,
    ) -> Vec<ResponseGrowth> {
        self.deltas
            .advance(counts)
            .into_iter()
            .map(|(key, count)| ResponseGrowth {
                proxy: process_ref(key.tgid, cache),
                code: key.code,
                count,
            })
            .collect()
    }
}

/// A process the kernel named by tgid, as events name it; one gone since keeps its pid.
pub fn process_ref(tgid: u32, cache: &ProcessCache) -> ProcessRef {
    let info = cache.lookup(tgid);
    ProcessRef {
        pid: tgid,
        tid: tgid,
        comm: info
            .as_ref()
            .and_then(|i| i.name.clone())
            .unwrap_or_else(|| "unknown".into()),
        thread: None,
        cgroup_id: 0,
        info,
    }
}
