//! The running agent: probes loaded, listeners snapshotted, the pipeline consuming, the
//! correlation engine turning events into incidents, the store keeping them and the local
//! API serving them.

use std::{
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::task::JoinHandle;

use crate::{
    api::{self, ApiState, EventCounts, KernelReport, RecentEvents, StatusReport},
    config::Config,
    correlate::{
        engine::Engine,
        incident::IncidentState,
        task::{self as correlation, CorrelationStats},
    },
    enrich::{interfaces, listeners, Enricher},
    metrics::{self, Metrics, MetricsError},
    pipeline::{self, EventBus, PipelineStats},
    probes::{ProbeError, ProbeSet},
    sampling,
    store::{IncidentFilter, Store, StoreError, StoreWriter, StoreWriterHandle},
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Probes(#[from] ProbeError),
    #[error("incident store: {0}")]
    Store(#[from] StoreError),
    #[error("local API: {0}")]
    Api(#[from] api::ApiError),
    #[error("metrics: {0}")]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    MetricsServer(#[from] metrics::server::ServeError),
}

pub struct Agent {
    pub bus: EventBus,
    pub probes: Arc<Mutex<ProbeSet>>,
    pub stats: Arc<PipelineStats>,
    pub correlation: Arc<CorrelationStats>,
    pub started_at: SystemTime,
    /// Where `GET /metrics` is served, when metrics are enabled.
    pub metrics_addr: Option<std::net::SocketAddr>,
    store_writer: Arc<StoreWriterHandle>,
    pipeline: JoinHandle<std::io::Result<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Loads and attaches the probes, opens the store, starts correlating and serving.
    /// Subscribers registered through `before_start` see the start-up listener snapshot.
    pub fn start(
        config: &Config,
        before_start: impl FnOnce(&EventBus),
    ) -> Result<Self, AgentError> {
        let started_at = SystemTime::now();
        let mut probes = ProbeSet::load(config)?;
        let attached: Vec<_> = probes.attached().map(|p| p.name()).collect();
        log::info!(
            "{} of {} probes attached: {}",
            attached.len(),
            agent_common::config::Probe::ALL.len(),
            attached.join(", ")
        );
        if probes.mounted_tracefs {
            log::info!("mounted tracefs at {}", crate::probes::tracefs::TRACEFS);
        }

        let store = Arc::new(Store::open(&config.store.path)?);
        close_stale_incidents(&store)?;
        let next_id = store.max_id()? + 1;
        let store_writer = Arc::new(StoreWriter::spawn(
            &config.store.path,
            (
                Duration::from_secs(u64::from(config.store.max_age_days) * 86_400),
                config.store.max_incidents,
            ),
        )?);

        let mut enricher = Enricher::new(
            config.enrich.process_cache_entries,
            &config.enrich.redact_keys,
        );
        let snapshot = listeners::snapshot();
        let owners = snapshot
            .tcp
            .iter()
            .filter_map(|l| l.pid)
            .chain(snapshot.unix.iter().filter_map(|l| l.pid));
        probes.watch_processes(owners)?;
        log::info!(
            "start-up snapshot: {} TCP and {} unix listeners",
            snapshot.tcp.len(),
            snapshot.unix.len()
        );

        let bus = EventBus::new();
        before_start(&bus);
        let recent = Arc::new(RecentEvents::new(api::RECENT_CAPACITY));
        let mut tasks = vec![recent.collect_from(bus.subscribe())];
        let metrics = if config.metrics.enabled {
            let metrics = Arc::new(Metrics::new(&config.metrics)?);
            metrics.set_probe_status(&probes.status);
            tasks.push(spawn_metrics_feed(metrics.clone(), bus.subscribe()));
            Some(metrics)
        } else {
            None
        };
        let local_ips = interfaces::local_ips().unwrap_or_else(|err| {
            log::warn!("cannot list local addresses ({err}): only loopback counts as local");
            Vec::new()
        });
        tasks.push(sampling::spawn(
            bus.clone(),
            metrics.clone(),
            Duration::from_millis(config.metrics.sample_interval_ms),
            config.incidents.memory_pressure_percent,
        ));
        let engine = Engine::new(config.incidents.clone(), next_id, local_ips, started_at);
        let correlation_stats = Arc::new(CorrelationStats::default());
        let writer = store_writer.clone();
        let incident_metrics = metrics.clone();
        tasks.push(tokio::spawn(correlation::run(
            engine,
            bus.subscribe(),
            correlation_stats.clone(),
            move |update| {
                if let Some(metrics) = &incident_metrics {
                    metrics.incident(&update);
                }
                writer.save(update.incident().clone());
            },
        )));
        for event in enricher.snapshot_events(&snapshot) {
            bus.publish(event);
        }
        let ring = probes.take_events()?;
        let stats = Arc::new(PipelineStats::default());
        let pipeline = tokio::spawn(pipeline::run(ring, enricher, bus.clone(), stats.clone()));
        if let Err(err) = probes.mark_proxies(crate::responses::running_proxies()) {
            log::warn!("cannot mark running proxies: {err}");
        }
        let probes = Arc::new(Mutex::new(probes));
        tasks.push(crate::responses::spawn(
            probes.clone(),
            bus.clone(),
            metrics.clone(),
            config.enrich.redact_keys.clone(),
        ));

        let status = status_report(
            started_at,
            probes.clone(),
            stats.clone(),
            correlation_stats.clone(),
            store_writer.clone(),
        );
        tasks.push(api::serve(
            &config.api.socket,
            ApiState {
                store,
                recent,
                status,
            },
        )?);
        log::info!("local API on {}", config.api.socket.display());
        let metrics_addr = match metrics {
            Some(metrics) => {
                let (addr, task) =
                    metrics::server::serve(config.metrics.listen, metrics, probes.clone())?;
                tasks.push(task);
                log::info!("metrics on http://{addr}/metrics");
                Some(addr)
            }
            None => None,
        };
        Ok(Self {
            metrics_addr,
            bus,
            probes,
            stats,
            correlation: correlation_stats,
            started_at,
            store_writer,
            pipeline,
            tasks,
        })
    }

    /// Logs kernel-side drops and probe errors when they grow, every `interval`.
    pub fn spawn_counter_watch(&self, interval: Duration) -> JoinHandle<()> {
        let probes = self.probes.clone();
        tokio::spawn(async move {
            let mut last = crate::probes::KernelCounters::default();
            loop {
                tokio::time::sleep(interval).await;
                let counters = match lock(&probes).counters() {
                    Ok(c) => c,
                    Err(err) => {
                        log::warn!("cannot read kernel counters: {err}");
                        continue;
                    }
                };
                for (kind, n) in &counters.dropped {
                    let before = last.dropped.get(kind).copied().unwrap_or(0);
                    if *n > before {
                        log::warn!(
                            "ring buffer full: {} {kind} events lost ({n} in all); raise probes.ring_buffer_bytes",
                            n - before
                        );
                    }
                }
                for (probe, n) in &counters.probe_errors {
                    let before = last.probe_errors.get(probe).copied().unwrap_or(0);
                    if *n > before {
                        log::debug!("probe {probe}: {} failed reads", n - before);
                    }
                }
                last = counters;
            }
        })
    }

    /// Waits for the pipeline to fail (it does not end otherwise).
    pub async fn wait(&mut self) -> std::io::Error {
        match (&mut self.pipeline).await {
            Ok(Ok(())) => std::io::Error::other("the event pipeline stopped"),
            Ok(Err(err)) => err,
            Err(err) => std::io::Error::other(format!("the event pipeline panicked: {err}")),
        }
    }

    pub fn store_dropped_writes(&self) -> u64 {
        self.store_writer.dropped_writes()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.pipeline.abort();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Counts every event on the bus.
fn spawn_metrics_feed(
    metrics: Arc<Metrics>,
    mut events: tokio::sync::broadcast::Receiver<Arc<crate::events::Event>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match events.recv().await {
                Ok(event) => metrics.observe(&event),
                Err(RecvError::Lagged(n)) => {
                    log::warn!("metrics fell behind: {n} events not counted")
                }
                Err(RecvError::Closed) => return,
            }
        }
    })
}

/// The probe set, even if a thread panicked while holding it (its maps stay valid).
pub fn lock(probes: &Mutex<ProbeSet>) -> std::sync::MutexGuard<'_, ProbeSet> {
    probes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Incidents left open by an agent that stopped: closed at their last failure, since
/// nobody watched after that.
fn close_stale_incidents(store: &Store) -> Result<(), StoreError> {
    let stale: Vec<_> = store
        .list(&IncidentFilter {
            limit: crate::store::MAX_LIMIT,
            ..Default::default()
        })?
        .into_iter()
        .filter(|i| i.state == IncidentState::Open)
        .map(|mut i| {
            i.state = IncidentState::Closed;
            i.closed_at = Some(i.last_failure_at);
            i
        })
        .collect();
    if !stale.is_empty() {
        log::info!(
            "closing {} incidents left open by the previous run",
            stale.len()
        );
        store.upsert_all(&stale)?;
    }
    Ok(())
}

fn status_report(
    started_at: SystemTime,
    probes: Arc<Mutex<ProbeSet>>,
    stats: Arc<PipelineStats>,
    correlation: Arc<CorrelationStats>,
    store_writer: Arc<StoreWriterHandle>,
) -> Arc<dyn Fn() -> StatusReport + Send + Sync> {
    Arc::new(move || {
        let probes = lock(&probes);
        let kernel = probes.counters().unwrap_or_else(|err| {
            log::warn!("cannot read kernel counters: {err}");
            Default::default()
        });
        StatusReport {
            version: api::VERSION.to_string(),
            started_at,
            uptime_seconds: StatusReport::uptime_since(started_at),
            probes: probes
                .status
                .iter()
                .map(|(p, s)| (p.name().to_string(), s.into()))
                .collect(),
            events: EventCounts {
                records: stats.records.load(Ordering::Relaxed),
                decode_errors: stats.decode_errors.load(Ordering::Relaxed),
                filtered: stats.filtered.load(Ordering::Relaxed),
            },
            kernel: KernelReport {
                dropped: to_strings(kernel.dropped),
                probe_errors: to_strings(kernel.probe_errors),
            },
            incidents_open: correlation.open_incidents.load(Ordering::Relaxed),
            correlation_lagged_events: correlation.lagged_events.load(Ordering::Relaxed),
            store_dropped_writes: store_writer.dropped_writes(),
        }
    })
}

fn to_strings(
    map: std::collections::BTreeMap<&'static str, u64>,
) -> std::collections::BTreeMap<String, u64> {
    map.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}
