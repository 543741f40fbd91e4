//! What one sampling round found: host memory pressure, each listening service's memory
//! cgroup, and which service holds which listener. The sampler makes it, the edge
//! detector, the metrics and the correlation read it.

use std::{collections::BTreeMap, net::SocketAddr};

use super::cgroup_memory::CgroupMemory;
use crate::model::namespace::NetNs;

/// A listening service's memory cgroup.
#[derive(Debug, Clone)]
pub struct ServiceMemory {
    pub service: String,
    pub pid: u32,
    pub memory: CgroupMemory,
}

/// A TCP listener's key: two pods listen on the same `0.0.0.0:8080`.
pub type ListenerKey = (NetNs, SocketAddr);

/// One sampling round.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub host: super::HostSample,
    pub services: Vec<ServiceMemory>,
    /// Listening endpoints → their service, for labelling queues.
    pub listener_services: BTreeMap<ListenerKey, String>,
}
