//! Incidents as metrics: counted when they open (by top cause), a gauge while open.

use std::{collections::BTreeMap, sync::Mutex};

use prometheus::{IntCounterVec, IntGaugeVec, Registry};

use super::{
    labels::Labels,
    registry::{counter, gauge},
    MetricsError,
};
use crate::model::incident::Update;

pub struct IncidentMetrics {
    incidents: IntCounterVec,
    incident_open: IntGaugeVec,
    /// Open incidents' (proxy, upstream) labels, to remove the gauge when they close.
    open: Mutex<BTreeMap<u64, (String, String)>>,
}

impl IncidentMetrics {
    pub fn new(r: &Registry) -> Result<Self, MetricsError> {
        Ok(Self {
            incidents: counter(
                r,
                "why502_incidents_total",
                "Incidents opened, by their top cause when they opened.",
                &["cause", "confidence"],
            )?,
            incident_open: gauge(
                r,
                "why502_incident_open",
                "1 while an incident is open for this proxy and upstream.",
                &["proxy", "upstream"],
            )?,
            open: Mutex::new(BTreeMap::new()),
        })
    }

    /// Follows one incident update.
    pub fn update(&self, update: &Update, labels: &mut Labels) {
        let incident = update.incident();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match update {
            Update::Opened(_) => {
                if let Some(top) = incident.top_cause() {
                    self.incidents
                        .with_label_values(&[top.cause.name(), top.confidence.name()])
                        .inc();
                }
                let (proxy, upstream) = labels.incident(incident);
                self.incident_open
                    .with_label_values(&[&proxy, &upstream])
                    .set(1);
                open.insert(incident.id, (proxy, upstream));
            }
            Update::Closed(_) => {
                if let Some(labels) = open.remove(&incident.id) {
                    // Another open incident may share folded labels ("other").
                    if !open.values().any(|v| *v == labels) {
                        let _ = self
                            .incident_open
                            .remove_label_values(&[&labels.0, &labels.1]);
                    }
                }
            }
            Update::Updated(_) => {}
        }
    }
}
