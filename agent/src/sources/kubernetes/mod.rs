//! Pod names from the Kubernetes API, optional: the cgroup path gives a process's pod UID
//! (see `enrich::cgroup`), only the API knows which pod that is.
//!
//! When credentials exist (the pod's service account, or `kubernetes.kubeconfig`), one
//! thread of its own lists the pods of this node (never the whole cluster, never a watch)
//! when a UID it does not know is seen, at most once per `kubernetes.refresh_interval_ms`,
//! and keeps uid → (namespace, name) from the last list. Without credentials nothing is
//! started and nothing is tried: the UID is what is reported. A failed list (an unreachable
//! API, a wrong CA, a 403) is logged and counted, and the UIDs are reported as they are.

pub mod client;
pub mod credentials;

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock},
    time::{Duration, Instant},
};

use crate::{config::KubernetesConfig, model::incident::Pod};
use client::{Client, PodName};

/// What the lookups have done, for the log, status and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lists that succeeded.
    pub lists: u64,
    /// Lists that failed.
    pub errors: u64,
    /// The last failure, as logged.
    pub last_error: Option<String>,
    /// Pods known from the last successful list.
    pub pods: usize,
}

#[derive(Default)]
struct State {
    /// uid → (namespace, name), from the last successful list.
    names: HashMap<String, (String, String)>,
    /// A UID not in `names` was seen since the last list.
    wanted: bool,
    stats: Stats,
    stopped: bool,
}

/// The pods this node's API listed, and the request for a new list.
pub struct Directory {
    state: Mutex<State>,
    wake: Condvar,
}

impl Directory {
    fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        }
    }

    fn locked(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `pod` with its namespace and name when the last list had it; else as it is, and a
    /// list is asked for.
    pub fn name(&self, mut pod: Pod) -> Pod {
        if pod.name.is_some() {
            return pod;
        }
        let mut state = self.locked();
        match state.names.get(&pod.uid) {
            Some((namespace, name)) => {
                pod.namespace = Some(namespace.clone());
                pod.name = Some(name.clone());
            }
            None if !state.wanted => {
                state.wanted = true;
                self.wake.notify_one();
            }
            None => {}
        }
        pod
    }

    pub fn stats(&self) -> Stats {
        self.locked().stats.clone()
    }

    fn stop(&self) {
        self.locked().stopped = true;
        self.wake.notify_one();
    }

    /// Lists the pods whenever one is wanted, at most once per `every`.
    fn run(&self, client: &Client, node: &str, every: Duration) {
        let mut last: Option<Instant> = None;
        loop {
            {
                let mut state = self.locked();
                loop {
                    if state.stopped {
                        return;
                    }
                    let due = last.map_or(Duration::ZERO, |at| every.saturating_sub(at.elapsed()));
                    if state.wanted && due.is_zero() {
                        state.wanted = false;
                        break;
                    }
                    // Woken by a wanted UID, or when the interval allows the next list.
                    let wait = if state.wanted {
                        due
                    } else {
                        Duration::from_secs(3600)
                    };
                    state = self
                        .wake
                        .wait_timeout(state, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
            last = Some(Instant::now());
            let listed = client.list_pods(node);
            let mut state = self.locked();
            match listed {
                Ok(pods) => {
                    state.stats.lists += 1;
                    state.stats.pods = pods.len();
                    if state.stats.lists == 1 {
                        log::info!(
                            "kubernetes: {} pods on node {node} named through {}",
                            pods.len(),
                            client.origin()
                        );
                    }
                    state.names = pods
                        .into_iter()
                        .map(
                            |PodName {
                                 uid,
                                 namespace,
                                 name,
                             }| (uid, (namespace, name)),
                        )
                        .collect();
                }
                Err(error) => {
                    state.stats.errors += 1;
                    log::warn!(
                        "kubernetes: cannot list the pods of node {node} through {} ({} \
                         failures): {error}; pods are reported by UID",
                        client.origin(),
                        state.stats.errors
                    );
                    state.stats.last_error = Some(error);
                }
            }
        }
    }
}

/// The lookup thread; stops it when dropped.
pub struct Lookup {
    directory: Arc<Directory>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Lookup {
    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }
}

impl Drop for Lookup {
    fn drop(&mut self) {
        // Not joined: a list in flight may take up to the request timeout, which a
        // stopping agent need not wait for; the thread returns when it next looks.
        self.directory.stop();
        drop(self.thread.take());
    }
}

/// The node's name: the configured one, else `NODE_NAME` (the DaemonSet passes
/// `spec.nodeName` so), else the host name (what the kubelet registers by default).
pub fn node_name(config: &KubernetesConfig) -> Option<String> {
    config
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
}

/// The credentials `config` points at, or the pod's service account; `None` when there
/// are none (nothing to try), an error when they exist and cannot be used.
pub fn access(config: &KubernetesConfig) -> Option<Result<credentials::Access, String>> {
    match &config.kubeconfig {
        Some(path) => Some(credentials::from_kubeconfig(path)),
        None => credentials::in_cluster(
            Path::new(credentials::SERVICE_ACCOUNT_DIR),
            std::env::var("KUBERNETES_SERVICE_HOST").ok(),
            std::env::var("KUBERNETES_SERVICE_PORT").ok(),
        ),
    }
}

/// Starts the lookup when `config` allows it and credentials exist.
pub fn start(config: &KubernetesConfig) -> Option<Lookup> {
    if !config.enabled {
        return None;
    }
    let access = match access(config)? {
        Ok(access) => access,
        Err(error) => {
            log::warn!("kubernetes: pod names off: {error}; pods are reported by UID");
            return None;
        }
    };
    let Some(node) = node_name(config) else {
        log::warn!("kubernetes: pod names off: no node name (kubernetes.node_name, NODE_NAME)");
        return None;
    };
    Some(start_with(access, node, config))
}

/// Starts the lookup with these credentials (tests give their own).
pub fn start_with(access: credentials::Access, node: String, config: &KubernetesConfig) -> Lookup {
    let directory = Arc::new(Directory::new());
    let every = Duration::from_millis(config.refresh_interval_ms);
    let client = Client::new(access, Duration::from_millis(config.timeout_ms));
    log::info!(
        "kubernetes: naming this node's pods ({node}) through {}, listed at most every {} ms",
        client.origin(),
        config.refresh_interval_ms
    );
    let worker = directory.clone();
    let thread = std::thread::Builder::new()
        .name("why502-k8s".into())
        .spawn(move || worker.run(&client, &node, every))
        .map_err(|e| log::warn!("kubernetes: cannot start the lookup thread: {e}"))
        .ok();
    Lookup { directory, thread }
}

/// The directory the agent's enrichment and incidents consult, once started.
static INSTALLED: OnceLock<Arc<Directory>> = OnceLock::new();

/// Makes `lookup`'s directory the one [`named`] consults (once per process).
pub fn install(lookup: &Lookup) {
    let _ = INSTALLED.set(lookup.directory.clone());
}

/// `pod` named by the installed directory, or as it is when there is none.
pub fn named(pod: Pod) -> Pod {
    match INSTALLED.get() {
        Some(directory) => directory.name(pod),
        None => pod,
    }
}
