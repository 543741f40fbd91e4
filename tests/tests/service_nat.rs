//! A node's pod network: nginx in namespace P reaching a backend in namespace Q, both
//! joined to the host's namespace by veth pairs routed by the host, as a node's pods are:
//! directly by Q's address, and through a "ClusterIP" service address that the host's nat
//! PREROUTING DNATs to Q's address (kube-proxy's iptables mode). The socket in P sees the
//! service address; the listener is at Q's. A crash and an OOM kill of the backend are
//! explained with the backend's pid, and the service address and the real destination
//! are both shown; the incident counts the 502s of nginx's access.log.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use serde_json::Value;
use why502_e2e::{
    agent::Agent,
    can_load_ebpf,
    cgroup::MemoryCgroup,
    incident_query::{self, counts_as_logged},
    lab::{AccessLog, Client, DetachedBackend, ErrorLog, LabNginx},
    netns::Netns,
    node_net::{free_pod_subnet, free_service_ip, PodLink, ServiceDnat},
    pods::{netns_inode, start_nginx},
    serial,
};

/// The pod's port, and the service's (kube's usual pair).
const BACKEND_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;
/// nginx's port inside P.
const NGINX_PORT: u16 = 8000;
const REQUESTS: u32 = 20;
const RATE: u32 = 10;
const KILL_AFTER: Duration = Duration::from_millis(450);
const SETTLE: Duration = Duration::from_secs(5);

/// How nginx reaches the backend.
#[derive(Clone, Copy, PartialEq)]
enum Route {
    /// `proxy_pass` to Q's own address.
    Direct,
    /// `proxy_pass` to the service address, DNAT'd by the host.
    Service,
}

// Fields drop in declaration order: the processes, the rule, the links, the namespaces,
// the cgroup (its members killed by then), the directory.
struct Node {
    nginx: LabNginx,
    backend: DetachedBackend,
    service: Option<ServiceDnat>,
    links: Vec<PodLink>,
    proxy_ns: Netns,
    backend_ns: Netns,
    cgroup: Option<MemoryCgroup>,
    dir: tempfile::TempDir,
    client: Client,
    /// What nginx connects to: the service address, or Q's.
    upstream: String,
    /// Where the listener is: Q's address and port.
    destination: SocketAddrV4,
}

impl Node {
    /// P and Q, linked to the host; the backend in Q bound to `bind` (the wildcard, or
    /// Q's address) and in `cgroup` if given; nginx in P proxying by `route`.
    fn start(route: Route, bind_wildcard: bool, cgroup: Option<MemoryCgroup>) -> Self {
        let subnet = free_pod_subnet();
        let proxy_ns = Netns::new("proxy");
        let backend_ns = Netns::new("backend");
        let links = vec![
            PodLink::attach(&proxy_ns, subnet, 0, "p"),
            PodLink::attach(&backend_ns, subnet, 1, "q"),
        ];
        let destination = SocketAddrV4::new(links[1].pod_ip, BACKEND_PORT);
        let service = (route == Route::Service).then(|| {
            let ip = free_service_ip(0);
            ServiceDnat::add(SocketAddrV4::new(ip, SERVICE_PORT), destination, "svc")
        });
        let dir = tempfile::Builder::new()
            .prefix("why502-node-")
            .tempdir()
            .expect("temporary directory");
        let bind = if bind_wildcard {
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, BACKEND_PORT)
        } else {
            destination
        };
        let backend = DetachedBackend::start(
            &bind.to_string(),
            &[],
            Some(&backend_ns),
            dir.path(),
            "backend",
        );
        if let Some(cgroup) = &cgroup {
            // Moved in from here, not by `--join-cgroup`: `ip netns exec` mounts a sysfs
            // of the namespace's own, without the cgroup hierarchies. What it allocates
            // from now on (GET /alloc) is charged to the cgroup.
            std::fs::write(cgroup.procs(), backend.pid.to_string())
                .unwrap_or_else(|e| panic!("{}: {e}", cgroup.procs().display()));
        }
        let upstream = match &service {
            Some(service) => service.service.to_string(),
            None => destination.to_string(),
        };
        let client = Client::new(
            Some(proxy_ns.name.clone()),
            vec![Ipv4Addr::LOCALHOST],
            NGINX_PORT,
        );
        let nginx = start_nginx(&upstream, NGINX_PORT, &proxy_ns, dir.path(), &client);
        let node = Self {
            nginx,
            backend,
            service,
            links,
            proxy_ns,
            backend_ns,
            cgroup,
            dir,
            client,
            upstream,
            destination,
        };
        // The path works before the fault: P → host (DNAT) → Q and back.
        let first = node.client.request("GET", "/");
        assert_eq!(
            first.status,
            Ok(200),
            "GET / through {} → {}: {first:?}\n{}",
            node.upstream,
            node.destination,
            node.nginx.error_log()
        );
        if let Some(service) = &node.service {
            assert!(service.present(), "the DNAT rule is gone");
        }
        node
    }

    fn access(&self) -> AccessLog {
        AccessLog::parse(&self.nginx.access_log())
    }

    fn errors(&self) -> ErrorLog {
        ErrorLog::parse(&self.nginx.error_log())
    }

    fn worker_pid(&self) -> u32 {
        self.nginx.worker_pid().expect("nginx's worker")
    }

    /// A description of the node for failure messages.
    fn describe(&self) -> String {
        format!(
            "nginx in {} (pid {}) → {} → backend pid {} in {} at {}{}; veths {}; {}",
            self.proxy_ns.name,
            self.worker_pid(),
            self.upstream,
            self.backend.pid,
            self.backend_ns.name,
            self.destination,
            self.cgroup
                .as_ref()
                .map(|c| format!(" (cgroup {})", c.procs().display()))
                .unwrap_or_default(),
            self.links
                .iter()
                .map(|l| format!("{} {} ↔ {}", l.host_if, l.host_ip, l.pod_ip))
                .collect::<Vec<_>>()
                .join(", "),
            self.dir.path().display()
        )
    }
}

/// The one incident of the node's nginx once it counts what nginx logged (502s and
/// failures by kind); panics with what the agent has otherwise.
fn settled_incident(agent: &Agent, node: &Node) -> Value {
    let (access, errors) = (node.access(), node.errors());
    assert!(
        access.count(502) >= 3,
        "setup: nginx answered 502 only {} times: {:?}\n{}",
        access.count(502),
        access.statuses,
        node.nginx.error_log()
    );
    incident_query::wait_for_one(agent, node.worker_pid(), SETTLE, |i| {
        counts_as_logged(i, &access, &errors)
    })
    .unwrap_or_else(|seen| {
        panic!(
            "no single incident of nginx counting access.log {:?} and error.log {:?} within \
             {SETTLE:?} ({}); its incidents: {seen:#?}\nall the agent's: {:#?}",
            access.statuses,
            errors.kinds,
            node.describe(),
            incident_query::all(agent)
        )
    })
}

/// The incident's top cause is `cause` (high) and names the backend; the incident's
/// upstream is the address nginx connected to, and that address and the real destination
/// are both shown, in the JSON and in `why502 explain`. Every check is made, then the test
/// fails with all that is wrong at once.
fn assert_explained(agent: &Agent, node: &Node, incident: &Value, cause: &str) {
    let mut failed = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failed.push(what);
        }
    };
    let top = &incident["causes"][0];
    check(
        top["cause"] == cause && top["confidence"] == "high",
        format!(
            "the top cause is {} ({}), not {cause} (high)",
            top["cause"], top["confidence"]
        ),
    );
    check(
        top["process"]["pid"] == node.backend.pid,
        format!(
            "the top cause names pid {}, not the backend's {}",
            top["process"]["pid"], node.backend.pid
        ),
    );
    check(
        incident["proxy"]["comm"] == "nginx",
        format!("the proxy is {}", incident["proxy"]["comm"]),
    );
    let upstream = incident["upstream"].as_str().unwrap_or_default();
    // `ADDR` or, the socket being in P rather than the agent's namespace, `ADDR [netns N]`.
    check(
        upstream.starts_with(&format!("{} ", node.upstream)) || upstream == node.upstream,
        format!(
            "the incident's upstream is {upstream:?}, nginx connects to {}",
            node.upstream
        ),
    );
    // A namespace shown with it is the connecting socket's: P's, never Q's.
    let proxy_netns = netns_inode(&node.proxy_ns);
    check(
        !upstream.contains("[netns") || upstream.ends_with(&format!("[netns {proxy_netns}]")),
        format!("the incident's upstream {upstream:?} is not in P's namespace {proxy_netns}"),
    );
    let json = incident.to_string();
    let text = incident_query::explain_text(agent, incident);
    for shown in [node.upstream.clone(), node.destination.to_string()] {
        check(
            json.contains(&shown),
            format!("{shown} is not in the incident's JSON"),
        );
        check(
            text.contains(&shown),
            format!("{shown} is not in why502 explain"),
        );
    }
    check(
        text.contains(&format!("pid {}", node.backend.pid)),
        format!("why502 explain does not name pid {}", node.backend.pid),
    );
    // What the agent saw of nginx's failures (the addresses they carry), for the reader.
    let worker = node.worker_pid();
    let failures: Vec<Value> = agent
        .events(|e| {
            e["process"]["pid"] == worker
                && matches!(
                    e["kind"].as_str(),
                    Some("tcp_connect_failure" | "connect_syscall_error" | "tcp_reset_received")
                )
        })
        .into_iter()
        .take(3)
        .collect();
    assert!(
        failed.is_empty(),
        "{failed:#?}\n{}\nincident: {incident:#}\nwhy502 explain:\n{text}\nnginx's first \
         failure events: {failures:#?}",
        node.describe()
    );
}

/// Steady load; the backend killed by SIGSEGV a few requests in.
fn crash_under_load(node: &Node) {
    let load = node.client.steady(RATE, REQUESTS, "GET", "/");
    std::thread::sleep(KILL_AFTER);
    node.backend.signal(libc::SIGSEGV);
    assert!(
        node.backend.wait_gone(Duration::from_secs(5)),
        "the backend survived SIGSEGV"
    );
    load.finish();
    let errors = node.errors();
    assert_eq!(
        errors.kinds.keys().collect::<Vec<_>>(),
        ["ECONNREFUSED"],
        "setup: nginx's error.log:\n{}",
        node.nginx.error_log()
    );
}

#[test]
fn crash_behind_a_pod_address() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    let agent = Agent::start();
    let node = Node::start(Route::Direct, true, None);
    crash_under_load(&node);
    let incident = settled_incident(&agent, &node);
    assert_explained(&agent, &node, &incident, "crash");
}

#[test]
fn crash_behind_a_service_address() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    let agent = Agent::start();
    let node = Node::start(Route::Service, true, None);
    crash_under_load(&node);
    let incident = settled_incident(&agent, &node);
    assert_explained(&agent, &node, &incident, "crash");
}

#[test]
fn oom_kill_behind_a_service_address() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    let agent = Agent::start();
    let cgroup = MemoryCgroup::new("svc-oom", 64 << 20);
    // Bound to the pod's own address this time (the wildcard is the crash tests').
    let node = Node::start(Route::Service, false, Some(cgroup));
    // This request makes the backend allocate past its cgroup's limit.
    let alloc = node.client.request("GET", "/alloc");
    assert_eq!(alloc.status, Ok(502), "GET /alloc: {alloc:?}");
    assert!(
        node.backend.wait_gone(Duration::from_secs(10)),
        "the backend survived its cgroup's limit"
    );
    for _ in 0..10 {
        let after = node.client.request("GET", "/");
        assert_eq!(after.status, Ok(502), "{after:?}");
    }
    let incident = settled_incident(&agent, &node);
    assert_explained(&agent, &node, &incident, "oom_kill");
}
