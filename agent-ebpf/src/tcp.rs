//! Resets and retransmits (`tcp:*` tracepoints). These fire in softirq context, so the
//! process is taken from the connect-time record in `TRACKED` when there is one. A reset
//! received on a followed upstream connection carries its traffic (`upstream.rs`).

use agent_common::{
    config::{Probe, TcpSockFields},
    connect::{ConnectKey, TrackedConnect},
    event::{EventHeader, Record},
    net::SockTuple,
    tcp::{
        state, TcpHandshakeRetransmit, TcpResetReceived, TcpResetSent, TcpSynAckRetransmit,
        TcpSynRetransmit,
    },
};
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};

use crate::{
    maps::{config, CONNECT_STATS, TRACKED},
    read::{
        anonymous_header, field, kernel_field, owner_header_at, required, reserve, sock_netns,
        tuple,
    },
    upstream,
};

/// The header of a `T` record on socket `skaddr`: its connecting process if known, the
/// socket's network namespace.
#[inline(always)]
fn owner_header<T: Record>(tracked: Option<&TrackedConnect>, skaddr: u64) -> (EventHeader, u32) {
    let netns = sock_netns(skaddr);
    match tracked {
        Some(tracked) => (
            owner_header_at::<T>(tracked, unsafe { bpf_ktime_get_ns() }, netns),
            1,
        ),
        None => (anonymous_header::<T>(netns), 0),
    }
}

#[inline(always)]
fn skaddr_and_tuple(
    ctx: &TracePointContext,
    fields: &TcpSockFields,
    probe: Probe,
) -> Option<(u64, SockTuple)> {
    let skaddr = required::<u64>(ctx, fields.skaddr, probe)?;
    if skaddr == 0 {
        return None;
    }
    Some((skaddr, tuple(ctx, &fields.tuple)?))
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let fields = config!(receive_reset);
    let Some((skaddr, t)) = skaddr_and_tuple(&ctx, &fields, Probe::TcpReceiveReset) else {
        return 0;
    };
    let tracked = TRACKED.get_ptr_mut(skaddr);
    let sk_state = kernel_field::<u8>(skaddr, config!(kernel.sock_state))
        .map(i32::from)
        .unwrap_or(-1);
    // A RST in SYN_SENT is a refused connect, reported as such by inet_sock_set_state.
    let in_handshake = match tracked {
        Some(tracked) if sk_state == -1 => (unsafe { (*tracked).established }) == 0,
        _ => sk_state == state::SYN_SENT,
    };
    if in_handshake {
        return 0;
    }
    let (header, owner_known) =
        owner_header::<TcpResetReceived>(tracked.map(|tracked| unsafe { &*tracked }), skaddr);
    // A process serving clients whose upstream connections get reset is a proxy: its
    // 502s count. (Without a tracked connect the owner is unknown.)
    if let Some(tracked) = tracked {
        unsafe { crate::http::mark_if_serving((*tracked).tgid, (*tracked).ppid) };
    }
    // A followed connection: what had crossed it says whether the upstream had answered.
    let traffic = tracked.and_then(|tracked| {
        upstream::reset_traffic(skaddr, unsafe { &mut *tracked }, sk_state, header.ts_ns)
    });
    let Some(mut entry) = reserve::<TcpResetReceived>() else {
        return 0;
    };
    // Filled in place: the record is too large to assemble on the BPF stack next to the rest.
    let event = entry.as_mut_ptr();
    unsafe {
        (*event).header = header;
        (*event).tuple = t;
        (*event).state = sk_state;
        (*event).owner_known = owner_known;
        (*event).traffic = traffic.unwrap_or_default();
        (*event).followed = traffic.is_some() as u32;
        (*event)._pad = 0;
    }
    entry.submit(0);
    0
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let fields = config!(send_reset);
    // No socket: a RST answering a segment for a port nobody listens on. The connecting
    // side reports those as refused connects.
    let Some((skaddr, t)) = skaddr_and_tuple(&ctx, &fields, Probe::TcpSendReset) else {
        return 0;
    };
    let sk_state = field::<i32>(&ctx, fields.state)
        .or_else(|| kernel_field::<u8>(skaddr, config!(kernel.sock_state)).map(i32::from))
        .unwrap_or(-1);
    let reason = field::<i32>(&ctx, fields.reason).unwrap_or(-1);
    let (header, owner_known) =
        owner_header::<TcpResetSent>(unsafe { TRACKED.get(skaddr) }, skaddr);
    let Some(mut entry) = reserve::<TcpResetSent>() else {
        return 0;
    };
    entry.write(TcpResetSent {
        header,
        tuple: t,
        state: sk_state,
        reason,
        owner_known,
        _pad: 0,
    });
    entry.submit(0);
    0
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let fields = config!(retransmit_skb);
    let Some(sk_state) = required::<i32>(&ctx, fields.state, Probe::TcpRetransmitSkb) else {
        return 0;
    };
    let Some((skaddr, t)) = skaddr_and_tuple(&ctx, &fields, Probe::TcpRetransmitSkb) else {
        return 0;
    };
    let Some(tracked) = TRACKED.get_ptr_mut(skaddr) else {
        if sk_state == state::SYN_SENT {
            emit_handshake_retransmit(TcpSynRetransmit, skaddr, t, None, 0);
        }
        return 0;
    };
    let tracked = unsafe { &mut *tracked };
    if sk_state == state::SYN_SENT {
        tracked.syn_retransmits = tracked.syn_retransmits.saturating_add(1);
        let count = tracked.syn_retransmits as u32;
        emit_handshake_retransmit(TcpSynRetransmit, skaddr, t, Some(tracked), count);
        return 0;
    }
    // Data retransmits are frequent on lossy paths: only counted, per destination.
    let key = ConnectKey {
        tgid: tracked.tgid,
        netns: sock_netns(skaddr),
        family: t.family,
        dport: t.dport,
        daddr: t.daddr,
    };
    if let Some(stats) = CONNECT_STATS.get_ptr_mut(key) {
        unsafe { (*stats).retransmits += 1 };
    }
    0
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    let fields = config!(retransmit_synack);
    let Some((skaddr, t)) = skaddr_and_tuple(&ctx, &fields, Probe::TcpRetransmitSynack) else {
        return 0;
    };
    emit_handshake_retransmit(TcpSynAckRetransmit, skaddr, t, None, 0);
    0
}

/// Reports a handshake retransmission as the record `record` wraps it in
/// ([`TcpSynRetransmit`] or [`TcpSynAckRetransmit`]).
#[inline(always)]
fn emit_handshake_retransmit<T: Record>(
    record: impl FnOnce(TcpHandshakeRetransmit) -> T,
    skaddr: u64,
    t: SockTuple,
    tracked: Option<&TrackedConnect>,
    count: u32,
) {
    let (header, owner_known) = owner_header::<T>(tracked, skaddr);
    let Some(mut entry) = reserve::<T>() else {
        return;
    };
    entry.write(record(TcpHandshakeRetransmit {
        header,
        tuple: t,
        count,
        owner_known,
    }));
    entry.submit(0);
}
