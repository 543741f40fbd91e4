//! Typed events: what the kernel and the host saw, as every later stage (correlation,
//! store, metrics, `--print-events`) consumes them.
//! The JSON form (one object, `kind` naming the variant) is what `--print-events` prints.

use std::{
    fmt,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::{Serialize, Serializer};

use super::namespace::{MntNs, NetNs};

/// One event, as later stages see it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// `CLOCK_MONOTONIC` nanoseconds, for ordering and intervals.
    pub mono_ns: u64,
    /// The process the event is about; `None` when the kernel could not tell (an RST on a
    /// socket opened before the agent started, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessRef>,
    #[serde(flatten)]
    pub detail: EventDetail,
}

/// A process as the kernel named it, plus what procfs added.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessRef {
    pub pid: u32,
    pub tid: u32,
    /// The process's name (its main thread's), once procfs confirmed it; until then the
    /// name of the thread the kernel saw.
    pub comm: String,
    /// The thread's own name when it differs (`wrk:worker_0` in Envoy, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    pub cgroup_id: u64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub info: Option<Arc<ProcessInfo>>,
}

/// What procfs says about a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProcessInfo {
    /// The process's name from procfs (not serialized: it becomes [`ProcessRef::comm`]).
    #[serde(skip)]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    /// The real user id (`/proc/<pid>/status`): proxies of different users are kept apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// The command line with secrets redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// The cgroup path (v2, or v1's systemd hierarchy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The systemd unit the process runs in, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The container id (docker, containerd, CRI-O, podman), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The runtime that made the container, when its cgroup path says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<super::identity::Runtime>,
    /// The Kubernetes pod, from the cgroup path (UID, QoS class), named when the API was
    /// asked (see `sources::enrich::kubernetes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<super::identity::Pod>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventDetail {
    TcpConnectFailure(ConnectFailure),
    ConnectSyscallError(ConnectSyscallError),
    TcpResetReceived(TcpReset),
    TcpResetSent(TcpReset),
    TcpSynRetransmit(HandshakeRetransmit),
    TcpSynackRetransmit(HandshakeRetransmit),
    ListenerOpened(Listener),
    ListenerClosed(Listener),
    UnixListenerOpened(UnixListener),
    ProcessExec(Exec),
    ProcessExit(Exit),
    Signal(SignalSent),
    OomKill(OomKill),
    MemoryPressure(MemoryPressure),
    ListenQueueFull(ListenQueueFull),
    HttpResponses(HttpResponses),
    UpstreamEnd(UpstreamEnd),
}

/// A proxy wrote `count` HTTP responses with this status code since the last report
/// (counted in the kernel, reported every 250 ms; only 5xx codes travel as events).
#[derive(Debug, Clone, Serialize)]
pub struct HttpResponses {
    pub code: u16,
    pub count: u64,
}

/// The [`MemoryPressure::scope`] of the whole host.
pub const HOST_SCOPE: &str = "host";

/// Memory pressure (PSI `some` avg10) rose above the configured threshold, host-wide or in
/// a listening service's cgroup. Sampled, not traced.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPressure {
    /// `host`, or the service (systemd unit or process name).
    pub scope: String,
    /// The service's listening process, for a service scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Percent of the last 10 s in which some task stalled on memory.
    pub some_avg10: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_avg10: Option<f64>,
}

/// A listener's accept queue was found full: it is not accepting fast enough. In the
/// agent's own network namespace sock_diag shows it at its backlog; in another, procfs
/// shows no backlog, and the namespace's `ListenOverflows` grew instead.
#[derive(Debug, Clone, Serialize)]
pub struct ListenQueueFull {
    pub endpoint: SocketAddr,
    /// The listener's network namespace.
    #[serde(skip_serializing_if = "own_netns")]
    pub netns: NetNs,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub queued: u32,
    /// Its `listen()` backlog, where known (the agent's own namespace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u32>,
    /// Handshakes its namespace dropped at a full queue since the sample before
    /// (`ListenOverflows`), where that is how it was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overflows: Option<u64>,
}

/// Where a proxy connects to: a TCP address in a network namespace, or a unix socket path
/// in a mount namespace. Two pods listening on the same `0.0.0.0:8080` are two endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Tcp(NetNs, SocketAddr),
    /// A filesystem path, or `@name` for an abstract socket (abstract names belong to the
    /// network namespace, but a path's is the usual case and both are per container).
    Unix(MntNs, String),
}

impl Endpoint {
    /// A TCP address in the agent's own network namespace.
    pub fn own_tcp(addr: SocketAddr) -> Self {
        Endpoint::Tcp(NetNs::own(), addr)
    }

    /// A unix socket path in the agent's own mount namespace.
    pub fn own_unix(path: impl Into<String>) -> Self {
        Endpoint::Unix(MntNs::own(), path.into())
    }
}

/// As before namespaces for the agent's own (`127.0.0.1:9000`, `unix:/run/php/fpm.sock`),
/// so that output and stored incidents of a host without containers do not change; with
/// the namespace for another (`10.0.0.2:8080 [netns 4026532398]`).
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(ns, addr) if ns.is_own() => write!(f, "{addr}"),
            Endpoint::Tcp(ns, addr) => write!(f, "{addr} [{ns}]"),
            Endpoint::Unix(ns, path) if ns.is_own() => write!(f, "unix:{path}"),
            Endpoint::Unix(ns, path) => write!(f, "unix:{path} [{ns}]"),
        }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Events' `netns`/`mntns` fields appear in JSON only for another namespace than the
/// agent's: the output of a host without containers does not change.
fn own_netns(ns: &NetNs) -> bool {
    ns.is_own()
}

fn own_mntns(ns: &MntNs) -> bool {
    ns.is_own()
}

/// An errno with its name, serialized as both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    pub fn name(self) -> &'static str {
        super::signal::errno_name(self.0)
    }
}

impl Serialize for Errno {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Errno", 2)?;
        st.serialize_field("code", &self.0)?;
        st.serialize_field("name", self.name())?;
        st.end()
    }
}

/// A TCP handshake that never completed (SYN_SENT→CLOSE).
#[derive(Debug, Clone, Serialize)]
pub struct ConnectFailure {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The socket's network namespace.
    #[serde(skip_serializing_if = "own_netns")]
    pub netns: NetNs,
    /// Where the connection really went when a DNAT in the agent's network namespace
    /// rewrote `dst` (kube-proxy's ClusterIP to a pod), from conntrack
    /// (`sources/conntrack`): the listener to look for. `None`: not rewritten, or not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat_destination: Option<Endpoint>,
    pub errno: Errno,
    /// `sk_err`, `error_report`, or `none` (the process gave up: its own connect timeout).
    pub errno_source: &'static str,
    #[serde(rename = "duration_seconds", serialize_with = "seconds")]
    pub duration: Duration,
    pub syn_retransmits: u16,
}

/// `connect(2)` failed at once.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectSyscallError {
    pub dst: Endpoint,
    /// Where the connection really went when a DNAT in the agent's network namespace
    /// rewrote `dst` (kube-proxy's ClusterIP to a pod), from conntrack
    /// (`sources/conntrack`): the listener to look for. `None`: not rewritten, or not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat_destination: Option<Endpoint>,
    pub errno: Errno,
    pub fd: i32,
    #[serde(rename = "duration_seconds", serialize_with = "seconds")]
    pub duration: Duration,
}

impl ConnectSyscallError {
    /// glibc probes nscd's socket whenever a program sets up name lookups; its absence is
    /// normal and says nothing about an upstream.
    pub fn is_benign(&self) -> bool {
        matches!(&self.dst, Endpoint::Unix(_, path)
            if self.errno.0 == libc::ENOENT
                && (path == "/var/run/nscd/socket" || path == "/run/nscd/socket"))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TcpReset {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The socket's network namespace.
    #[serde(skip_serializing_if = "own_netns")]
    pub netns: NetNs,
    /// Where the connection really went when a DNAT in the agent's network namespace
    /// rewrote `dst` (kube-proxy's ClusterIP to a pod), from conntrack
    /// (`sources/conntrack`): the listener to look for. `None`: not rewritten, or not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat_destination: Option<Endpoint>,
    /// TCP state when the RST was sent or received (`ESTABLISHED`, `FIN_WAIT1`…).
    pub state: &'static str,
    /// `tcp_send_reset`'s `enum sk_rst_reason` number (Linux 6.10+).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<i32>,
    /// What had crossed the connection, when the kernel followed it from its connect
    /// (a proxy's upstream connection): whether the upstream had answered at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Traffic>,
}

/// What crossed one followed upstream connection, from `tcp_sock`'s counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Traffic {
    /// Time since the connection was established.
    #[serde(rename = "duration_seconds", serialize_with = "seconds")]
    pub duration: Duration,
    /// Bytes the upstream acknowledged (the request), without the SYN.
    pub bytes_sent: u64,
    /// Bytes received from the upstream (the response), without a FIN.
    pub bytes_received: u64,
}

/// How a followed upstream connection ended badly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndHow {
    /// The upstream closed (FIN) before sending any response byte.
    ClosedByUpstream,
    /// The proxy closed first after sending its request, having received nothing for
    /// longer than the configured response timeout: it gave up waiting.
    ProxyGaveUp,
}

/// A proxy's upstream TCP connection ended badly (reset ends are [`TcpReset`]s).
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamEnd {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The socket's network namespace.
    #[serde(skip_serializing_if = "own_netns")]
    pub netns: NetNs,
    /// Where the connection really went when a DNAT in the agent's network namespace
    /// rewrote `dst` (kube-proxy's ClusterIP to a pod), from conntrack
    /// (`sources/conntrack`): the listener to look for. `None`: not rewritten, or not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat_destination: Option<Endpoint>,
    pub how: EndHow,
    #[serde(flatten)]
    pub traffic: Traffic,
}

#[derive(Debug, Clone, Serialize)]
pub struct HandshakeRetransmit {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The socket's network namespace.
    #[serde(skip_serializing_if = "own_netns")]
    pub netns: NetNs,
    /// Retransmissions of this SYN so far (0 for SYN-ACKs, which are not counted).
    pub count: u32,
}

/// Where an event about listeners came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A kernel event, as it happened.
    Kernel,
    /// Read from procfs when the agent started.
    Snapshot,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listener {
    pub endpoint: SocketAddr,
    /// The socket's network namespace.
    #[serde(skip_serializing_if = "own_netns")]
    pub netns: NetNs,
    pub source: Source,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnixListener {
    pub path: String,
    /// The mount namespace the path resolves in.
    #[serde(skip_serializing_if = "own_mntns")]
    pub mntns: MntNs,
    pub source: Source,
}

#[derive(Debug, Clone, Serialize)]
pub struct Exec {
    pub ppid: u32,
    pub filename: String,
}

/// How a process ended, decoded from the kernel's wait status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exit {
    /// The exit code, for a normal exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The fatal signal's name, for a death by signal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal_number: Option<i32>,
    pub core_dumped: bool,
    /// The parent when the process exited (from the kernel: the process may be gone
    /// before procfs could say), `None` when the kernel could not tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
}

impl Exit {
    /// From `task_struct.exit_code` (`wait(2)` status encoding).
    pub fn from_wait_status(status: i32) -> Self {
        let signal = status & 0x7f;
        if status < 0 {
            // The kernel could not read it (no BTF): neither a code nor a signal is known.
            Self {
                code: None,
                signal: None,
                signal_number: None,
                core_dumped: false,
                ppid: None,
            }
        } else if signal == 0 {
            Self {
                code: Some((status >> 8) & 0xff),
                signal: None,
                signal_number: None,
                core_dumped: false,
                ppid: None,
            }
        } else {
            Self {
                code: None,
                signal: Some(super::signal::signal_name(signal)),
                signal_number: Some(signal),
                core_dumped: status & 0x80 != 0,
                ppid: None,
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SignalSent {
    pub signal: String,
    pub signal_number: i32,
    /// The target's process (tgid), also for a signal aimed at one of its threads.
    pub target_pid: i32,
    /// The target thread, when it is not the process's main thread (`tgkill(2)` to a
    /// worker thread, a fault in one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_tid: Option<i32>,
    pub target_comm: String,
    /// Who generated it: `user` (kill/tgkill/sigqueue), `kernel`, or a fault code.
    pub origin: &'static str,
    pub group: bool,
    /// `delivered`, `ignored`, `already_pending`, `overflow`, `lost_info`.
    pub result: &'static str,
    /// procfs details of the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Arc<ProcessInfo>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OomKill {
    pub victim_pid: u32,
    pub victim_comm: String,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    pub uid: u32,
    pub oom_score_adj: i32,
    /// procfs details of the victim, from the cache when it is already gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub victim: Option<Arc<ProcessInfo>>,
}

impl EventDetail {
    /// The variant's name, as in JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            EventDetail::TcpConnectFailure(_) => "tcp_connect_failure",
            EventDetail::ConnectSyscallError(_) => "connect_syscall_error",
            EventDetail::TcpResetReceived(_) => "tcp_reset_received",
            EventDetail::TcpResetSent(_) => "tcp_reset_sent",
            EventDetail::TcpSynRetransmit(_) => "tcp_syn_retransmit",
            EventDetail::TcpSynackRetransmit(_) => "tcp_synack_retransmit",
            EventDetail::ListenerOpened(_) => "listener_opened",
            EventDetail::ListenerClosed(_) => "listener_closed",
            EventDetail::UnixListenerOpened(_) => "unix_listener_opened",
            EventDetail::ProcessExec(_) => "process_exec",
            EventDetail::ProcessExit(_) => "process_exit",
            EventDetail::Signal(_) => "signal",
            EventDetail::OomKill(_) => "oom_kill",
            EventDetail::MemoryPressure(_) => "memory_pressure",
            EventDetail::ListenQueueFull(_) => "listen_queue_full",
            EventDetail::HttpResponses(_) => "http_responses",
            EventDetail::UpstreamEnd(_) => "upstream_end",
        }
    }
}

fn rfc3339<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*time))
}

fn seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    // Seconds as a float: base units, as in the metrics.
    s.serialize_f64(d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_decodes() {
        let exit = Exit::from_wait_status(3 << 8);
        assert_eq!(exit.code, Some(3));
        assert_eq!(exit.signal, None);
        let segv = Exit::from_wait_status(11 | 0x80);
        assert_eq!(segv.signal.as_deref(), Some("SIGSEGV"));
        assert_eq!(segv.signal_number, Some(11));
        assert!(segv.core_dumped);
        assert_eq!(Exit::from_wait_status(9).signal.as_deref(), Some("SIGKILL"));
        assert_eq!(Exit::from_wait_status(0).code, Some(0));
        // Unknown (-1, no BTF): not SIG127 with a core dump.
        let unknown = Exit::from_wait_status(-1);
        assert_eq!((unknown.code, unknown.signal_number), (None, None));
        assert!(!unknown.core_dumped);
    }

    #[test]
    fn endpoints_display() {
        assert_eq!(
            Endpoint::own_tcp("127.0.0.1:9000".parse().unwrap()).to_string(),
            "127.0.0.1:9000"
        );
        assert_eq!(
            Endpoint::Tcp(NetNs(0), "127.0.0.1:9000".parse().unwrap()).to_string(),
            "127.0.0.1:9000"
        );
        assert_eq!(
            Endpoint::own_unix("/run/php/php-fpm.sock").to_string(),
            "unix:/run/php/php-fpm.sock"
        );
        let other = NetNs(NetNs::own().0.wrapping_add(1));
        assert_eq!(
            Endpoint::Tcp(other, "10.0.0.2:8080".parse().unwrap()).to_string(),
            format!("10.0.0.2:8080 [netns {}]", other.0)
        );
        let mnt = MntNs(MntNs::own().0.wrapping_add(1));
        assert_eq!(
            Endpoint::Unix(mnt, "/run/app.sock".into()).to_string(),
            format!("unix:/run/app.sock [mntns {}]", mnt.0)
        );
        assert_eq!(
            serde_json::to_string(&Endpoint::Tcp(other, "10.0.0.2:8080".parse().unwrap())).unwrap(),
            format!("\"10.0.0.2:8080 [netns {}]\"", other.0)
        );
    }

    #[test]
    fn endpoints_differ_by_namespace() {
        let addr: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let (a, b) = (Endpoint::Tcp(NetNs(1), addr), Endpoint::Tcp(NetNs(2), addr));
        assert_ne!(a, b);
        let set: std::collections::HashSet<_> = [a.clone(), b, a].into_iter().collect();
        assert_eq!(set.len(), 2);
        assert_ne!(
            Endpoint::Unix(MntNs(1), "/s".into()),
            Endpoint::Unix(MntNs(2), "/s".into())
        );
    }
}
