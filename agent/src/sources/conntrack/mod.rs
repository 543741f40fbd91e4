//! The real destination behind a DNAT'd service address, from conntrack, for failures
//! only: a proxy that connects to a Kubernetes ClusterIP (`10.96.0.10:80`) has its
//! packets rewritten by kube-proxy's DNAT rule to a pod (`10.244.1.5:8080`); its socket,
//! and so every kernel event about it, only ever shows the service address. The
//! conntrack entry of the connection's original tuple has the pod as its reply source.
//!
//! Asked over ctnetlink ([`netlink`]) in the agent's own network namespace (the host's):
//! kube-proxy DNATs there, in `PREROUTING` for a pod's packets (they cross the host's
//! namespace on their way out of the pod's veth, keeping the pod's source address) and in
//! `OUTPUT` for the host's own processes. A DNAT done inside a pod's own namespace (its
//! `nat OUTPUT` chain, a sidecar's redirect) is in that namespace's table, out of reach:
//! the hardened unit has no `CAP_SYS_ADMIN` and sets `RestrictNamespaces=`, so the agent
//! never enters another namespace (`setns(2)`); those lookups end as `no_entry`.
//!
//! Only failure events are resolved, never packets ([`resolver`]: cached, rate-limited,
//! with a timeout), on the enrichment thread (a blocking thread, not an async worker).
//! What conntrack still holds of a failed connection (tested in
//! `agent/tests/conntrack.rs`): a refused connect's entry stays, in state `CLOSE`, for
//! `nf_conntrack_tcp_timeout_close` (10 s); a connect that timed out against a DROP stays
//! in `SYN_SENT` for 120 s. An entry already gone gives no real destination: the service
//! address is then all that is shown.

pub mod netlink;
pub mod resolver;

pub use resolver::{ConntrackStats, NatResolver, Outcome};
