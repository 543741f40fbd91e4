//! Who a process is beyond its pid, from its cgroup path: the container runtime, and the
//! Kubernetes pod with its QoS class (the API may add the pod's name). Plain data, shared by
//! events (a process's details) and incidents (a proxy's and a cause's summary).

use serde::{Deserialize, Serialize};

/// A container runtime, as the cgroup path names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Runtime {
    #[serde(rename = "docker")]
    Docker,
    #[serde(rename = "containerd")]
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    #[serde(rename = "podman")]
    Podman,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
        }
    }
}

/// A pod's Kubernetes QoS class, which the kubelet puts in its cgroup path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn name(self) -> &'static str {
        match self {
            Qos::Guaranteed => "guaranteed",
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        }
    }
}

/// A Kubernetes pod, as the process's cgroup path and, optionally, the API name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Pod {
    /// `metadata.uid` with dashes (`9b1d…-…`), however the cgroup driver spelled it.
    pub uid: String,
    /// `None` where the path no longer shows it (read from inside a cgroup namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
    /// From the Kubernetes API, when the agent may ask it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Pod {
    /// `namespace/name` when the API named the pod, else its UID.
    pub fn label(&self) -> String {
        match (&self.namespace, &self.name) {
            (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
            (None, Some(name)) => name.clone(),
            _ => self.uid.clone(),
        }
    }
}
