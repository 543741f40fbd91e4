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
//! `agent/tests/conntrack.rs`): a connect that timed out against a DROP stays in
//! `SYN_SENT` (120 s); a refused connect's entry is gone at once (conntrack kills an entry
//! whose only answer was an RST: `nf_conntrack_proto_tcp.c`). For a gone entry the
//! client's other connections to the same address that conntrack still holds (a filtered
//! dump; answered requests stay in `TIME_WAIT` for 120 s) stand in when they all went to
//! one destination; otherwise the service address is all that is shown (real
//! destination unknown).

pub mod annotate;
pub mod netlink;
pub mod resolver;

pub use annotate::Annotator;
pub use resolver::{ConntrackStats, NatResolver, Outcome};
