//! Proxies' upstream connections followed to their end (see `agent_common::connect`): an
//! [`UpstreamEnd`] when one ended without a response byte, a `closed_ok` count in
//! `CONNECT_STATS` for every other end, the traffic of a reset for `tcp.rs`.
//!
//! Cheap for every other socket. The FIN transitions (which every TCP connection takes)
//! first read `tcp_sock`'s byte counters, two kernel reads and no map operation, and only a
//! connection that carried no response is looked up in `TRACKED`. At CLOSE, a socket that
//! was never tracked (an accepted connection, most of them) costs one lookup and no delete:
//! a hash delete takes the bucket lock even for a key that is not there.

use agent_common::{
    connect::{end_how, ConnectKey, TrackedConnect, Traffic, UpstreamEnd},
    tcp::state,
    NO_OFFSET,
};
use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::{
    maps::{config, TRACKED},
    read::{kernel_field, owner_header_at, reserve, sock_netns},
    sock::SockView,
};

/// Whether a proxy's connects are followed: this kernel's BTF gave the byte counters
/// (without them an end cannot be told from another).
#[inline(always)]
pub fn can_follow() -> bool {
    config!(kernel.tcp_bytes_received) != NO_OFFSET && config!(kernel.tcp_bytes_acked) != NO_OFFSET
}

/// `tcp_sock.bytes_received`: response bytes, plus 1 once the peer's FIN is in.
#[inline(always)]
fn bytes_received(skaddr: u64) -> Option<u64> {
    kernel_field::<u64>(skaddr, config!(kernel.tcp_bytes_received))
}

/// `tcp_sock.bytes_acked`: 1 for our SYN, then request bytes (then 1 for our FIN).
#[inline(always)]
fn bytes_acked(skaddr: u64) -> Option<u64> {
    kernel_field::<u64>(skaddr, config!(kernel.tcp_bytes_acked))
}

/// The followed, established connection at `skaddr` whose end was not reported yet.
#[inline(always)]
fn unreported(skaddr: u64) -> Option<&'static mut TrackedConnect> {
    let tracked = unsafe { &mut *TRACKED.get_ptr_mut(skaddr)? };
    (tracked.follow == 1 && tracked.established == 1 && tracked.end_reported == 0)
        .then_some(tracked)
}

/// ESTABLISHED→CLOSE_WAIT: the upstream's FIN is in (softirq context). Without a response
/// byte before it, the upstream closed before answering.
#[inline(always)]
pub fn fin_received<S: SockView>(sock: &S, skaddr: u64) {
    let Some(received) = bytes_received(skaddr) else {
        return;
    };
    // The FIN itself is counted: more than 1 means a response came (a normal end).
    if received > 1 {
        return;
    }
    let Some(tracked) = unreported(skaddr) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let traffic = Traffic {
        duration_ns: now.saturating_sub(tracked.established_ns),
        bytes_sent: bytes_acked(skaddr).unwrap_or(0).saturating_sub(1),
        bytes_received: received.saturating_sub(1),
    };
    report(
        sock,
        skaddr,
        tracked,
        now,
        traffic,
        end_how::CLOSED_BY_UPSTREAM,
    );
}

/// ESTABLISHED→FIN_WAIT1: the proxy closes first (its own `close(2)` or `shutdown(2)`).
/// With its request acknowledged, no response byte and at least the configured response
/// timeout since the handshake, it gave up waiting.
#[inline(always)]
pub fn fin_sent<S: SockView>(sock: &S, skaddr: u64) {
    if bytes_received(skaddr) != Some(0) {
        return;
    }
    let Some(acked) = bytes_acked(skaddr) else {
        return;
    };
    // Only the SYN acknowledged: no request was sent (an idle connection closed).
    if acked <= 1 {
        return;
    }
    let Some(tracked) = unreported(skaddr) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let duration_ns = now.saturating_sub(tracked.established_ns);
    if duration_ns < config!(response_timeout_ns) {
        return;
    }
    let traffic = Traffic {
        duration_ns,
        bytes_sent: acked - 1,
        bytes_received: 0,
    };
    report(sock, skaddr, tracked, now, traffic, end_how::PROXY_GAVE_UP);
}

#[inline(always)]
fn report<S: SockView>(
    sock: &S,
    skaddr: u64,
    tracked: &mut TrackedConnect,
    now: u64,
    traffic: Traffic,
    how: u32,
) {
    // Even when the ring is full (the drop is counted): this end is not a normal one.
    tracked.end_reported = 1;
    let Some(t) = sock.tuple() else {
        return;
    };
    let Some(mut entry) = reserve::<UpstreamEnd>() else {
        return;
    };
    // Filled in place, like the other records too large for the BPF stack next to the rest.
    let event = entry.as_mut_ptr();
    unsafe {
        (*event).header = owner_header_at::<UpstreamEnd>(tracked, now, sock_netns(skaddr));
        (*event).tuple = t;
        (*event).traffic = traffic;
        (*event).how = how;
        (*event)._pad = 0;
    }
    entry.submit(0);
}

/// Any state→CLOSE but SYN_SENT's and LISTEN's: the socket's end. A followed connection
/// whose end was not reported, and that carries no socket error, ended normally.
#[inline(always)]
pub fn closed<S: SockView>(sock: &S, skaddr: u64) {
    let Some(tracked) = TRACKED.get_ptr(skaddr) else {
        return;
    };
    let (follow, established, reported, tgid) = unsafe {
        (
            (*tracked).follow,
            (*tracked).established,
            (*tracked).end_reported,
            (*tracked).tgid,
        )
    };
    if follow == 1 && established == 1 && reported == 0 {
        count_closed_ok(sock, skaddr, tgid);
    }
    let _ = TRACKED.remove(skaddr);
}

#[inline(always)]
fn count_closed_ok<S: SockView>(sock: &S, skaddr: u64, tgid: u32) {
    // ETIMEDOUT after retransmissions or keepalive probes, for example: not a normal end.
    if kernel_field::<i32>(skaddr, config!(kernel.sock_sk_err)).is_some_and(|err| err != 0) {
        return;
    }
    let Some(t) = sock.tuple() else {
        return;
    };
    let key = ConnectKey {
        tgid,
        netns: sock_netns(skaddr),
        family: t.family,
        dport: t.dport,
        daddr: t.daddr,
    };
    if let Some(stats) = crate::maps::stats_for(key) {
        stats.closed_ok += 1;
    }
}

/// A reset arrived on `tracked` in TCP state `sk_state` (-1 when unknown): what had
/// crossed the connection, `None` unless it is followed and was established. Marks the
/// end as reported.
#[inline(always)]
pub fn reset_traffic(
    skaddr: u64,
    tracked: &mut TrackedConnect,
    sk_state: i32,
    now: u64,
) -> Option<Traffic> {
    if tracked.follow != 1 || tracked.established != 1 {
        return None;
    }
    tracked.end_reported = 1;
    // A FIN already received is in bytes_received; ours, once acknowledged (FIN_WAIT2),
    // in bytes_acked.
    let fin_in = matches!(
        sk_state,
        state::CLOSE_WAIT | state::LAST_ACK | state::CLOSING
    );
    let fin_out_acked = sk_state == state::FIN_WAIT2;
    Some(Traffic {
        duration_ns: now.saturating_sub(tracked.established_ns),
        bytes_sent: bytes_acked(skaddr)
            .unwrap_or(0)
            .saturating_sub(1 + fin_out_acked as u64),
        bytes_received: bytes_received(skaddr)
            .unwrap_or(0)
            .saturating_sub(fin_in as u64),
    })
}
