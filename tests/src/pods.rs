//! "Pods" on one host, as the container tests build them: a network namespace of the
//! test's own per pod, with a real backend (`why502-test-backend`, detached: its parent is
//! init, as a container's process is not the test's child) and, where the pod has one, a
//! real nginx in front of it and a client that talks to that nginx from inside the pod.
//! Everything is stopped and removed on drop, also when the test fails.

use std::{net::Ipv4Addr, os::unix::fs::MetadataExt, path::Path};

use crate::{
    lab::{AccessLog, Client, DetachedBackend, ErrorLog, LabNginx, NginxSpec},
    netns::Netns,
};

/// A pod with a backend and an nginx proxying `127.0.0.1:<backend port>` to it.
// Fields drop in declaration order: nginx and the backend before their namespace, the
// namespace before the directory holding their logs.
pub struct Pod {
    pub nginx: LabNginx,
    pub backend: DetachedBackend,
    pub client: Client,
    pub netns: Netns,
    pub dir: tempfile::TempDir,
}

impl Pod {
    /// Starts the pod `tag`: its namespace, a backend bound to `backend_bind`
    /// (`127.0.0.1:PORT` or the wildcard `0.0.0.0:PORT`) and nginx on `nginx_port` (every
    /// address of the pod) proxying to `127.0.0.1:<that port>`.
    pub fn start(tag: &str, backend_bind: &str, nginx_port: u16) -> Self {
        let netns = Netns::new(tag);
        let dir = tempfile::Builder::new()
            .prefix(&format!("why502-pod-{tag}-"))
            .tempdir()
            .expect("temporary directory");
        let backend =
            DetachedBackend::start(backend_bind, &[], Some(&netns), dir.path(), "backend");
        let port = backend_bind
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .expect("ADDR:PORT");
        let client = Client::new(
            Some(netns.name.clone()),
            vec![Ipv4Addr::LOCALHOST],
            nginx_port,
        );
        let nginx = start_nginx(
            &format!("127.0.0.1:{port}"),
            nginx_port,
            &netns,
            dir.path(),
            &client,
        );
        Self {
            nginx,
            backend,
            client,
            netns,
            dir,
        }
    }

    /// The pod's network namespace inode (`net:[N]`), as the agent names it.
    pub fn netns_inode(&self) -> u64 {
        netns_inode(&self.netns)
    }

    /// nginx's worker: the process that connects upstream, the incident's proxy.
    pub fn worker_pid(&self) -> u32 {
        self.nginx.worker_pid().expect("nginx's worker")
    }

    /// The pod's processes: nginx's master and worker, the backend.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.nginx.master_pid(), self.backend.pid];
        pids.extend(self.nginx.worker_pid());
        pids
    }

    pub fn access(&self) -> AccessLog {
        AccessLog::parse(&self.nginx.access_log())
    }

    pub fn errors(&self) -> ErrorLog {
        ErrorLog::parse(&self.nginx.error_log())
    }
}

/// Starts nginx in `netns` (every address of it, `port`) proxying to `upstream`, its prefix
/// under `dir`; waits until `client` gets through.
pub fn start_nginx(
    upstream: &str,
    port: u16,
    netns: &Netns,
    dir: &Path,
    client: &Client,
) -> LabNginx {
    let spec = NginxSpec {
        upstream: upstream.to_owned(),
        down: false,
        port,
        any_address: true,
        keepalive: None,
        read_timeout_s: 2,
    };
    LabNginx::start(spec, &dir.join("nginx"), Some(netns), client)
}

/// The inode of `netns` (the number in `readlink /proc/<pid>/ns/net` of its processes):
/// `ip netns` bind-mounts the namespace's nsfs file at /run/netns/<name>.
pub fn netns_inode(netns: &Netns) -> u64 {
    let path = format!("/run/netns/{}", netns.name);
    std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .ino()
}

/// The inode of the test's own network namespace (the agent's: both run in the host's).
pub fn own_netns_inode() -> u64 {
    std::fs::metadata("/proc/self/ns/net")
        .expect("/proc/self/ns/net")
        .ino()
}
