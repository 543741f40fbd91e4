//! Pollers of the maps the kernel programs aggregate into: what is too frequent for the
//! ring buffer (successful connects, HTTP responses) and the programs' own drop and error
//! counters. Each poll becomes a [`KernelReading`] of growth since the previous one; the
//! proxies' 5xx responses also become events, for correlation.
//!
//! This task owns the maps it reads: nobody else touches them.

pub mod connects;
pub mod responses;

use std::time::{Duration, Instant};

use tokio::{sync::watch, task::JoinHandle};

use crate::{
    bus::{EventBus, Topic},
    model::{
        clock,
        event::{Event, EventDetail, HttpResponses, ProcessRef},
    },
    sources::{
        enrich::ProcessCache,
        probes::maps::{ConnectStatsMap, CounterMap, KernelCounters, ResponseMap},
    },
};
use connects::{Growth, KernelDeltas};
use responses::{ResponseDeltas, ResponseGrowth};

/// How often response counts are read: fast enough for an incident within a second.
pub const RESPONSE_POLL: Duration = Duration::from_millis(250);

/// How often the connect aggregates and counters are read: a full aggregate map is
/// thousands of map lookups, so a little less often.
pub const AGGREGATE_POLL: Duration = Duration::from_secs(1);

/// Ring-buffer drops are logged at most this often (the count is in the status).
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Successful connects of one process to one destination since the previous reading.
#[derive(Debug, Clone)]
pub struct ConnectGrowth {
    /// The connecting process, as events name it.
    pub process: ProcessRef,
    pub growth: Growth,
}

/// What grew in the kernel's maps since the previous reading.
#[derive(Debug, Clone, Default)]
pub struct KernelReading {
    /// When it was read (`CLOCK_MONOTONIC` nanoseconds).
    pub mono_ns: u64,
    /// The counters since load; `None` when this reading did not include them.
    pub counters: Option<KernelCounters>,
    /// Their growth since the previous reading that included them.
    pub counter_growth: KernelCounters,
    pub connects: Vec<ConnectGrowth>,
    pub responses: Vec<ResponseGrowth>,
}

/// The maps this poller owns.
pub struct PolledMaps {
    pub counters: CounterMap,
    pub connects: ConnectStatsMap,
    pub responses: ResponseMap,
}

/// What the poller remembers between polls.
struct Poller {
    maps: PolledMaps,
    cache: ProcessCache,
    connects: KernelDeltas,
    responses: ResponseDeltas,
    counters: KernelCounters,
    last_aggregates: Option<Instant>,
    last_drop_log: Option<Instant>,
}

impl Poller {
    /// Blocking: map reads are syscalls, and procfs for names never seen.
    fn poll(&mut self) -> KernelReading {
        let mut reading = KernelReading {
            mono_ns: clock::monotonic_ns(),
            responses: self
                .responses
                .advance(&self.maps.responses.read(), &self.cache),
            ..Default::default()
        };
        if self
            .last_aggregates
            .is_some_and(|at| at.elapsed() < AGGREGATE_POLL)
        {
            return reading;
        }
        self.last_aggregates = Some(Instant::now());
        reading.connects = self
            .connects
            .advance(&self.maps.connects.read())
            .into_iter()
            .map(|growth| ConnectGrowth {
                process: responses::process_ref(growth.key.tgid, &self.cache),
                growth,
            })
            .collect();
        match self.maps.counters.read() {
            Ok(counters) => {
                reading.counter_growth = counters.growth_since(&self.counters);
                self.log_drops(&reading.counter_growth, &counters);
                self.counters = counters.clone();
                reading.counters = Some(counters);
            }
            Err(err) => log::warn!("cannot read kernel counters: {}", crate::error_chain(&err)),
        }
        reading
    }

    fn log_drops(&mut self, growth: &KernelCounters, totals: &KernelCounters) {
        let lost = growth.total_dropped() + growth.throttled.values().sum::<u64>();
        if lost == 0
            || self
                .last_drop_log
                .is_some_and(|at| at.elapsed() < DROP_LOG_INTERVAL)
        {
            return;
        }
        self.last_drop_log = Some(Instant::now());
        for (kind, n) in growth.dropped.iter().filter(|(_, n)| **n > 0) {
            log::warn!(
                "ring buffer full: {n} {kind} events lost ({} in all); raise probes.ring_buffer_bytes",
                totals.dropped.get(kind).copied().unwrap_or(0)
            );
        }
        for (kind, n) in growth.throttled.iter().filter(|(_, n)| **n > 0) {
            log::warn!(
                "{n} {kind} events throttled ({} in all): a process sent more than its budget \
                 of {} a second",
                totals.throttled.get(kind).copied().unwrap_or(0),
                agent_common::budget::RECORDS_PER_WINDOW
            );
        }
        for (table, n) in growth.tables_full.iter().filter(|(_, n)| **n > 0) {
            log::warn!(
                "kernel table {table} full: {n} entries refused; raise its size \
                 (probes.connect_table_entries for tracked_connects; proxies and \
                 listener_owners hold one entry per live process: that many are running)"
            );
        }
        for (probe, n) in growth.probe_errors.iter().filter(|(_, n)| **n > 0) {
            log::debug!("probe {probe}: {n} failed reads");
        }
    }
}

/// Polls until the task is aborted: readings on `readings`, the latest counters on
/// `counters`, and 5xx responses as events on `bus`.
pub fn spawn(
    maps: PolledMaps,
    cache: ProcessCache,
    bus: EventBus,
    readings: Topic<KernelReading>,
    counters: watch::Sender<KernelCounters>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut poller = Some(Poller {
            maps,
            cache,
            connects: KernelDeltas::default(),
            responses: ResponseDeltas::default(),
            counters: KernelCounters::default(),
            last_aggregates: None,
            last_drop_log: None,
        });
        let mut tick = tokio::time::interval(RESPONSE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(mut p) = poller.take() else { return };
            let polled = tokio::task::spawn_blocking(move || {
                let reading = p.poll();
                (p, reading)
            })
            .await;
            let (p, reading) = match polled {
                Ok(polled) => polled,
                Err(err) => {
                    log::error!("kernel map poller stopped: {err}");
                    return;
                }
            };
            poller = Some(p);
            let mono_ns = clock::monotonic_ns();
            for r in reading
                .responses
                .iter()
                .filter(|r| (500..600).contains(&r.code))
            {
                bus.publish(Event {
                    time: clock::wall_time(mono_ns),
                    mono_ns,
                    process: Some(r.proxy.clone()),
                    detail: EventDetail::HttpResponses(HttpResponses {
                        code: r.code,
                        count: r.count,
                    }),
                });
            }
            if let Some(totals) = &reading.counters {
                counters.send_replace(totals.clone());
            }
            readings.publish(reading);
        }
    })
}
