//! The running agent: probes loaded, listeners snapshotted, the pipeline consuming.

use std::{sync::Arc, time::Duration};

use tokio::{sync::Mutex, task::JoinHandle};

use crate::{
    config::Config,
    enrich::{listeners, Enricher},
    pipeline::{self, EventBus, PipelineStats},
    probes::{ProbeError, ProbeSet},
};

pub struct Agent {
    pub bus: EventBus,
    pub probes: Arc<Mutex<ProbeSet>>,
    pub stats: Arc<PipelineStats>,
    pipeline: JoinHandle<std::io::Result<()>>,
}

impl Agent {
    /// Loads and attaches the probes, then starts consuming. Subscribers registered
    /// through `before_start` see the start-up listener snapshot too.
    pub fn start(
        config: &Config,
        before_start: impl FnOnce(&EventBus),
    ) -> Result<Self, ProbeError> {
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
        for event in enricher.snapshot_events(&snapshot) {
            bus.publish(event);
        }
        let ring = probes.take_events()?;
        let stats = Arc::new(PipelineStats::default());
        let pipeline = tokio::spawn(pipeline::run(ring, enricher, bus.clone(), stats.clone()));
        Ok(Self {
            bus,
            probes: Arc::new(Mutex::new(probes)),
            stats,
            pipeline,
        })
    }

    /// Logs kernel-side drops and probe errors when they grow, every `interval`.
    pub fn spawn_counter_watch(&self, interval: Duration) -> JoinHandle<()> {
        let probes = self.probes.clone();
        tokio::spawn(async move {
            let mut last = crate::probes::KernelCounters::default();
            loop {
                tokio::time::sleep(interval).await;
                let counters = match probes.lock().await.counters() {
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
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.pipeline.abort();
    }
}
