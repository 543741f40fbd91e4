//! Pairing a proxy's 5xx responses with the upstream failures behind them.
//!
//! Responses are polled from kernel counts while failures stream through the ring buffer,
//! so 5xx may arrive before the failures that caused them. Until an incident of their
//! proxy takes them, they wait here, by proxy; past a grace with no failure around them,
//! they may make an incident of their own.

use std::{
    collections::{HashMap, VecDeque},
    time::SystemTime,
};

use super::{proxy_key::ProxyKey, spike::WINDOW_CAP};
use crate::model::event::{Event, ProcessRef};

/// The responses a proxy gives when it could not get one from its upstream.
pub const BAD_GATEWAY_CODES: [u16; 3] = [502, 503, 504];

/// How long 5xx responses wait for the failures behind them before they may count as a
/// spike of their own (the failures travel a different, streamed, path).
pub const RESPONSE_GRACE_NS: u64 = 500_000_000;

/// 5xx responses not yet tied to an incident.
#[derive(Debug, Clone)]
pub struct Pending {
    pub mono: u64,
    pub time: SystemTime,
    pub code: u16,
    pub count: u64,
    pub process: ProcessRef,
    /// Already judged (opened or counted on a response-only incident).
    used: bool,
}

/// Waiting responses, by proxy key.
#[derive(Debug, Default)]
pub struct PendingResponses {
    by_proxy: HashMap<ProxyKey, VecDeque<Pending>>,
}

impl PendingResponses {
    /// Holds responses of `proxy` until an incident takes them or they age out.
    pub fn hold(
        &mut self,
        proxy: ProxyKey,
        event: &Event,
        process: &ProcessRef,
        (code, count): (u16, u64),
        window_ns: u64,
    ) {
        let mono = event.mono_ns;
        let pending = self.by_proxy.entry(proxy).or_default();
        while pending
            .front()
            .is_some_and(|p| p.mono + window_ns + 2 * RESPONSE_GRACE_NS < mono)
            || pending.len() >= WINDOW_CAP
        {
            pending.pop_front();
        }
        pending.push_back(Pending {
            mono,
            time: event.time,
            code,
            count,
            process: process.clone(),
            used: false,
        });
    }

    /// The unjudged responses of `proxy` from `since_mono` on, taken by an incident that
    /// opens; the proxy's older ones are dropped with them.
    pub fn take(&mut self, proxy: &ProxyKey, since_mono: u64) -> Vec<(u16, u64)> {
        self.by_proxy
            .remove(proxy)
            .into_iter()
            .flatten()
            .filter(|r| !r.used && r.mono >= since_mono)
            .map(|r| (r.code, r.count))
            .collect()
    }

    /// Proxies with unjudged responses past their grace at `now_mono`, each with those
    /// responses, oldest first.
    pub fn due(&self, now_mono: u64) -> Vec<(ProxyKey, Vec<Pending>)> {
        self.by_proxy
            .iter()
            .filter_map(|(proxy, pending)| {
                let due: Vec<Pending> = pending
                    .iter()
                    .filter(|r| !r.used && r.mono + RESPONSE_GRACE_NS <= now_mono)
                    .cloned()
                    .collect();
                (!due.is_empty()).then(|| (proxy.clone(), due))
            })
            .collect()
    }

    /// Marks the responses of `proxy` that were due at `now_mono` (those [`Self::due`]
    /// returned) as judged; later ones still wait for their grace, or for an incident
    /// that opens to [`Self::take`] them.
    pub fn judged(&mut self, proxy: &ProxyKey, now_mono: u64) {
        if let Some(pending) = self.by_proxy.get_mut(proxy) {
            for r in pending
                .iter_mut()
                .filter(|r| r.mono + RESPONSE_GRACE_NS <= now_mono)
            {
                r.used = true;
            }
        }
    }

    /// Forgets responses older than `horizon`.
    pub fn prune(&mut self, horizon: u64) {
        self.by_proxy.retain(|_, pending| {
            pending.retain(|r| r.mono >= horizon);
            !pending.is_empty()
        });
    }
}
