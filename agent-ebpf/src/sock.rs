//! A socket whose TCP state changed, as the two attachments of `inet_sock_set_state` see
//! it: the record a classic tracepoint copied, or the `struct sock` a BTF-enabled
//! tracepoint (`tp_btf`) is handed. The state machine in `connect.rs` and `upstream.rs`
//! is written once, over [`SockView`].

use agent_common::net::{SockTuple, AF_INET, AF_INET6};
use aya_ebpf::programs::TracePointContext;

use crate::{
    maps::config,
    read::{kernel_field, tuple},
};

/// Where a state change's socket addresses come from.
pub trait SockView {
    /// The connection's addresses (ports in host order).
    fn tuple(&self) -> Option<SockTuple>;
}

/// The classic tracepoint's record (`sock:inet_sock_set_state`).
pub struct SetStateRecord<'a>(pub &'a TracePointContext);

impl SockView for SetStateRecord<'_> {
    #[inline(always)]
    fn tuple(&self) -> Option<SockTuple> {
        tuple(self.0, &config!(set_state.tuple))
    }
}

/// The socket itself, at the kernel address `tp_btf` passed, read at BTF offsets.
pub struct KernelSock(pub u64);

impl SockView for KernelSock {
    /// What the classic records hold (`TP_STORE_ADDRS`): `sk_family`, the ports
    /// `inet_sport` and `skc_dport`, and by family `inet_saddr`/`skc_daddr` or
    /// `skc_v6_rcv_saddr`/`skc_v6_daddr`.
    #[inline(always)]
    fn tuple(&self) -> Option<SockTuple> {
        let sk = self.0;
        let o = config!(sock);
        let mut t = SockTuple::default();
        t.family = kernel_field(sk, o.family)?;
        t.sport = u16::from_be(kernel_field(sk, o.sport)?);
        t.dport = u16::from_be(kernel_field(sk, o.dport)?);
        if t.family == AF_INET {
            let d: [u8; 4] = kernel_field(sk, o.daddr)?;
            let s: [u8; 4] = kernel_field(sk, o.saddr)?;
            t.daddr[..4].copy_from_slice(&d);
            t.saddr[..4].copy_from_slice(&s);
        } else if t.family == AF_INET6 {
            t.daddr = kernel_field(sk, o.v6_daddr)?;
            t.saddr = kernel_field(sk, o.v6_rcv_saddr)?;
        }
        Some(t)
    }
}
