//! The running agent: wires the sources to the bus and the bus to correlation and the
//! sinks. Each task owns what it reads (its kernel maps, its subscriptions); the agent
//! only starts them, in an order that loses nothing at start-up, and stops them.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime},
};

use tokio::{sync::watch, task::JoinHandle};

use crate::{
    bus::{EventBus, Topic, INCIDENT_CAPACITY, READING_CAPACITY},
    config::Config,
    correlate::{
        engine::Engine,
        task::{self as correlation, CorrelationStats},
    },
    model::incident::Update,
    sinks::{
        api::{self, ApiState, RecentEvents, StatusReport},
        metrics::{self, feed::Subscriptions, Metrics, MetricsError},
        store::{self, AgentStore, Persistence, StoreError, StoreWriterHandle},
    },
    sources::{
        conntrack::{Annotator, ConntrackStats, NatResolver},
        enrich::{interfaces, listeners, Enricher, ProcessCache},
        host::sampling::{self, Sample},
        kernel_maps::{self, responses::running_proxies, KernelReading, PolledMaps},
        probes::{maps::KernelCounters, Attachment, ProbeError, ProbeSet, ProbeStatus},
        ring::{self, PipelineStats},
    },
};

/// Why the agent could not start; each part's error says what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Probes(#[from] ProbeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    MetricsServer(#[from] metrics::server::ServeError),
    #[error("cannot start the event pipeline's thread")]
    Pipeline(#[source] std::io::Error),
}

pub struct Agent {
    /// Enriched events, for whoever else wants them (`--print-events`, tests).
    pub bus: EventBus,
    /// Readings of the kernel's aggregate maps.
    pub kernel: Topic<KernelReading>,
    /// Host samples.
    pub host: Topic<Sample>,
    /// Incident updates.
    pub incidents: Topic<Update>,
    pub stats: Arc<PipelineStats>,
    pub correlation: Arc<CorrelationStats>,
    pub started_at: SystemTime,
    /// Where `GET /metrics` is served, when metrics are enabled.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Keeps the programs attached for as long as the agent runs.
    _probes: ProbeSet,
    store_writer: Arc<StoreWriterHandle>,
    pipeline: ring::Pipeline,
    tasks: Vec<JoinHandle<()>>,
    _kubernetes: Option<crate::sources::kubernetes::Lookup>,
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
        let attached: Vec<_> = probes
            .attached_with_attachment()
            .map(|(p, how)| match how {
                Attachment::TpBtf => format!("{} (tp_btf)", p.name()),
                Attachment::Tracepoint => p.name().to_string(),
            })
            .collect();
        let not_needed = probes
            .status
            .values()
            .filter(|s| matches!(s, ProbeStatus::Superseded(_)))
            .count();
        log::info!(
            "{} of {} probes attached ({not_needed} not needed here): {}",
            attached.len(),
            agent_common::config::Probe::ALL.len() - not_needed,
            attached.join(", ")
        );
        if probes.mounted_tracefs {
            log::info!(
                "mounted tracefs at {}",
                crate::sources::probes::tracefs::TRACEFS
            );
        }
        let mut maps = probes.take_maps()?;

        // Any state of the file gives a store to run on (see store::open_for_agent): a bad
        // file must not leave the host unwatched.
        let retention = (
            Duration::from_secs(u64::from(config.store.max_age_days) * 86_400),
            config.store.max_incidents,
        );
        let AgentStore {
            store,
            writer,
            persistence,
        } = store::open_for_agent(&config.store.path, retention)?;
        let store_writer = Arc::new(writer);
        let next_id = store.max_id()? + 1;

        // Pod names, where credentials exist: consulted by enrichment and incidents.
        let kubernetes = crate::sources::kubernetes::start(&config.kubernetes);
        if let Some(lookup) = &kubernetes {
            crate::sources::kubernetes::install(lookup);
        }
        let cache = ProcessCache::new(
            config.enrich.process_cache_entries,
            &config.enrich.redact_keys,
        );
        let mut enricher = Enricher::new(cache.clone());
        // Failures' real destinations behind a DNAT, asked on the enrichment thread.
        let rate = config.enrich.conntrack_lookups_per_second;
        let conntrack = (rate > 0).then(|| Arc::new(ConntrackStats::default()));
        if let Some(stats) = &conntrack {
            let resolver = NatResolver::open(rate, stats.clone());
            enricher = enricher.with_nat(Annotator::new(resolver));
        }
        // Keyed as the kernel keys its listeners: by namespace where its records carry one.
        let snapshot = listeners::snapshot(listeners::KnownNamespaces::from_missing(
            &probes.missing_kernel_fields,
        ));
        let owners = snapshot
            .tcp
            .iter()
            .filter_map(|l| l.pid)
            .chain(snapshot.unix.iter().filter_map(|l| l.pid));
        maps.watched
            .insert_all(owners)
            .map_err(|source| ProbeError::Map {
                name: "WATCHED",
                source,
            })?;
        log::info!(
            "start-up snapshot: {} TCP and {} unix listeners",
            snapshot.tcp.len(),
            snapshot.unix.len()
        );

        let bus = EventBus::events();
        let kernel = Topic::new(READING_CAPACITY);
        let host = Topic::new(READING_CAPACITY);
        let incidents = Topic::new(INCIDENT_CAPACITY);
        before_start(&bus);

        // Sinks subscribe before any source publishes.
        let recent = Arc::new(RecentEvents::new(api::RECENT_CAPACITY));
        let mut tasks = vec![
            recent.collect_from(bus.subscribe()),
            store::follow(store_writer.clone(), incidents.subscribe()),
        ];
        let metrics = if config.metrics.enabled {
            let metrics = Arc::new(Metrics::new(&config.metrics)?);
            metrics.set_probe_status(&probes.status);
            if let Some(stats) = &conntrack {
                metrics.set_conntrack_stats(stats.clone());
            }
            let (persistent, writer) = (persistence == Persistence::File, store_writer.clone());
            metrics.set_store_source(Box::new(move || metrics::store::StoreCounts {
                persistent,
                write_errors: writer.write_errors(),
                dropped_writes: writer.dropped_writes(),
            }));
            tasks.push(metrics::feed::spawn(
                metrics.clone(),
                Subscriptions {
                    events: bus.subscribe(),
                    incidents: incidents.subscribe(),
                    kernel: kernel.subscribe(),
                    host: host.subscribe(),
                },
            ));
            Some(metrics)
        } else {
            None
        };

        let local_ips = interfaces::local_ips().unwrap_or_else(|err| {
            log::warn!(
                "cannot list local addresses ({}): only loopback counts as local",
                crate::error_chain(&err)
            );
            Vec::new()
        });
        let engine = Engine::new(config.incidents.clone(), next_id, local_ips, started_at);
        let correlation_stats = Arc::new(CorrelationStats::default());
        if let Some(metrics) = &metrics {
            metrics.set_correlation_stats(correlation_stats.clone());
        }
        tasks.push(tokio::spawn(correlation::run(
            engine,
            bus.subscribe(),
            kernel.subscribe(),
            host.subscribe(),
            correlation_stats.clone(),
            incidents.clone(),
        )));

        // Sources.
        tasks.push(sampling::spawn(
            bus.clone(),
            host.clone(),
            Duration::from_millis(config.metrics.sample_interval_ms),
            config.incidents.memory_pressure_percent,
        ));
        for event in enricher.snapshot_events(&snapshot) {
            bus.publish(event);
        }
        let stats = Arc::new(PipelineStats::default());
        let pipeline = ring::spawn(maps.events, enricher, bus.clone(), stats.clone())
            .map_err(AgentError::Pipeline)?;
        if let Err(err) = maps.proxies.insert_all(running_proxies()) {
            log::warn!("cannot mark running proxies: {}", crate::error_chain(&err));
        }
        let (counters_tx, counters_rx) = watch::channel(KernelCounters::default());
        tasks.push(kernel_maps::spawn(
            PolledMaps {
                counters: maps.counters,
                connects: maps.connects,
                responses: maps.responses,
            },
            cache,
            bus.clone(),
            kernel.clone(),
            counters_tx,
        ));

        let status = status_report(
            started_at,
            probes.status.clone(),
            counters_rx,
            stats.clone(),
            correlation_stats.clone(),
            store_writer.clone(),
            persistence,
        );
        tasks.push(api::serve(
            &config.api.socket,
            config.api.socket_group.as_deref(),
            ApiState {
                store,
                recent,
                status,
            },
        )?);
        log::info!("local API on {}", config.api.socket.display());
        let metrics_addr = match metrics {
            Some(metrics) => {
                let (addr, task) = metrics::server::serve(config.metrics.listen, metrics)?;
                tasks.push(task);
                log::info!("metrics on http://{addr}/metrics");
                Some(addr)
            }
            None => None,
        };
        Ok(Self {
            metrics_addr,
            bus,
            kernel,
            host,
            incidents,
            stats,
            correlation: correlation_stats,
            started_at,
            _probes: probes,
            store_writer,
            pipeline,
            tasks,
            _kubernetes: kubernetes,
        })
    }

    /// Waits for the pipeline to fail (it does not end otherwise).
    pub async fn wait(&mut self) -> std::io::Error {
        self.pipeline.wait().await
    }

    /// How each probe ended up at start-up.
    pub fn probe_status(
        &self,
    ) -> &std::collections::BTreeMap<agent_common::config::Probe, ProbeStatus> {
        &self._probes.status
    }

    pub fn store_dropped_writes(&self) -> u64 {
        self.store_writer.dropped_writes()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The pipeline's thread stops when `pipeline` is dropped.
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn status_report(
    started_at: SystemTime,
    probes: std::collections::BTreeMap<agent_common::config::Probe, ProbeStatus>,
    counters: watch::Receiver<KernelCounters>,
    stats: Arc<PipelineStats>,
    correlation: Arc<CorrelationStats>,
    store_writer: Arc<StoreWriterHandle>,
    persistence: Persistence,
) -> Arc<dyn Fn() -> StatusReport + Send + Sync> {
    let reason = match persistence {
        Persistence::File => None,
        Persistence::Memory { reason } => Some(reason),
    };
    Arc::new(move || StatusReport {
        version: api::VERSION.to_string(),
        started_at,
        uptime_seconds: StatusReport::uptime_since(started_at),
        probes: probes
            .iter()
            .map(|(p, s)| (p.name().to_string(), s.into()))
            .collect(),
        events: (&*stats).into(),
        kernel: (&*counters.borrow()).into(),
        incidents_open: correlation.open_incidents.load(Ordering::Relaxed),
        correlation_lagged_events: correlation.lagged_events.load(Ordering::Relaxed),
        listener_table_refused: correlation.listener_table_refused.load(Ordering::Relaxed),
        store_dropped_writes: store_writer.dropped_writes(),
        store: api::StoreReport {
            persistent: reason.is_none(),
            reason: reason.clone(),
            write_errors: store_writer.write_errors(),
        },
    })
}
