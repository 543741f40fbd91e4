//! Outbound connects: the TCP state machine (`sock:inet_sock_set_state`), socket errors
//! (`sock:inet_sk_error_report`) and the `connect(2)` syscall itself.
//!
//! The state machine runs on every TCP state change of the host, about ten per proxied
//! connection counting both ends, so it has two attachments: `tp_btf` where the kernel has
//! BTF (the arguments as they are) and the classic tracepoint as the fallback (which first
//! copies a 60-byte record into a per-CPU buffer, on every hit). Both leave on the
//! transitions that do not matter before any read beyond the two states.

use agent_common::{
    config::Probe,
    connect::{
        call_outcome, errno_source, latency_bucket, ConnectCall, ConnectKey, ConnectSyscallError,
        TcpConnectFailure, TrackedConnect,
    },
    event::{EventKind, Record},
    listener::{ListenerChange, ListenerClosed, ListenerOpened},
    net::{AF_INET, AF_INET6, AF_UNIX, SOCKADDR_MAX},
    tcp::state,
};
use core::{
    mem::{offset_of, size_of, MaybeUninit},
    ptr::addr_of_mut,
};

use agent_common::event::counter::Table;
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf,
        bpf_probe_read_user_str_bytes,
    },
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{
    maps::{add_process, config, insert_or_count, stats_for, CALLS, SOCK_ERRORS, TRACKED, WATCHED},
    read::{
        anonymous_header_at, current_comm_to, current_header, field, kernel_field, parent_tgid,
        required, reserve, sock_netns, task_mntns, tuple,
    },
    sock::{KernelSock, SetStateRecord, SockView},
    upstream,
};

const IPPROTO_TCP: u16 = 6;

const EINPROGRESS: i64 = 115;
const ETIMEDOUT: i32 = 110;
const ECONNREFUSED: i32 = 111;

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let probe = Probe::InetSockSetState;
    let (Some(old), Some(new)) = (
        required::<i32>(&ctx, config!(set_state.oldstate), probe),
        required::<i32>(&ctx, config!(set_state.newstate), probe),
    ) else {
        return 0;
    };
    if !matters(old, new) {
        return 0;
    }
    if required::<u16>(&ctx, config!(set_state.protocol), probe) != Some(IPPROTO_TCP) {
        return 0;
    }
    let Some(skaddr) = required::<u64>(&ctx, config!(set_state.skaddr), probe) else {
        return 0;
    };
    state_changed(&SetStateRecord(&ctx), skaddr, old, new);
    0
}

/// `inet_sock_set_state` as a BTF-enabled tracepoint (Linux 5.5+ with BTF): `(const struct
/// sock *sk, int oldstate, int newstate)`, read straight from the context.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> u32 {
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if !matters(old, new) {
        return 0;
    }
    let sk: u64 = ctx.arg(0);
    if kernel_field::<u16>(sk, config!(sock.protocol)) != Some(IPPROTO_TCP) {
        return 0;
    }
    state_changed(&KernelSock(sk), sk, old, new);
    0
}

/// Every other transition (the bulk: a server socket's LISTEN→SYN_RECV and
/// SYN_RECV→ESTABLISHED, FIN_WAIT1→FIN_WAIT2, CLOSE_WAIT→LAST_ACK…) is left alone,
/// before the socket's address is read and before any map operation.
#[inline(always)]
fn matters(old: i32, new: i32) -> bool {
    match new {
        state::SYN_SENT | state::CLOSE => true,
        state::ESTABLISHED => old == state::SYN_SENT,
        state::LISTEN => old == state::CLOSE,
        state::CLOSE_WAIT | state::FIN_WAIT1 => old == state::ESTABLISHED,
        _ => false,
    }
}

#[inline(always)]
fn state_changed<S: SockView>(sock: &S, skaddr: u64, old: i32, new: i32) {
    match (old, new) {
        (state::CLOSE, state::SYN_SENT) => track(skaddr),
        (state::SYN_SENT, state::ESTABLISHED) => established(sock, skaddr),
        (state::SYN_SENT, state::CLOSE) => failed(sock, skaddr),
        (state::CLOSE, state::LISTEN) => listener(sock, skaddr, ListenerOpened),
        (state::LISTEN, state::CLOSE) => listener(sock, skaddr, ListenerClosed),
        (state::ESTABLISHED, state::CLOSE_WAIT) => upstream::fin_received(sock, skaddr),
        (state::ESTABLISHED, state::FIN_WAIT1) => upstream::fin_sent(sock, skaddr),
        (_, state::CLOSE) => upstream::closed(sock, skaddr),
        _ => {}
    }
}

/// The flags word of [`TrackedConnect`] (`syn_retransmits`, `established`, `follow`,
/// `end_reported`, `_pad`), written as one aligned store by [`track`].
const TRACKED_FLAGS: usize = offset_of!(TrackedConnect, syn_retransmits);
const _: () = assert!(
    TRACKED_FLAGS % 8 == 0
        && offset_of!(TrackedConnect, ppid) % 8 == 0
        && offset_of!(TrackedConnect, _pad_ppid) == offset_of!(TrackedConnect, ppid) + 4
        && offset_of!(TrackedConnect, established) == TRACKED_FLAGS + 2
        && offset_of!(TrackedConnect, follow) == TRACKED_FLAGS + 3
        && offset_of!(TrackedConnect, end_reported) == TRACKED_FLAGS + 4
        && size_of::<TrackedConnect>() == TRACKED_FLAGS + 8
);

/// CLOSE→SYN_SENT runs in the connecting task: the only moment its identity is at hand.
///
/// Built field by field without zeroing first: zeroing the name and the padding bytes
/// compiled to calls to a byte-at-a-time `memset` subprogram, on every connect.
#[inline(always)]
fn track(skaddr: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let proxy = crate::http::is_proxy(tgid);
    let follow = (proxy && upstream::can_follow()) as u64;
    // A proxy needs no parent (a failure cannot mark it again): two reads saved on the
    // connects that matter most.
    let ppid = if proxy {
        0
    } else {
        parent_tgid(unsafe { bpf_get_current_task() })
    };
    let mut tracked = MaybeUninit::<TrackedConnect>::uninit();
    let p = tracked.as_mut_ptr();
    let tracked = unsafe {
        (*p).start_ns = bpf_ktime_get_ns();
        (*p).established_ns = 0;
        (*p).cgroup_id = bpf_get_current_cgroup_id();
        (*p).pid = pid_tgid as u32;
        (*p).tgid = tgid;
        // ppid and its padding in one aligned store (little-endian).
        addr_of_mut!((*p).ppid).cast::<u64>().write(ppid as u64);
        current_comm_to(addr_of_mut!((*p).comm));
        // Little-endian: syn_retransmits 0, established 0, follow, end_reported 0, _pad 0.
        p.cast::<u8>()
            .add(TRACKED_FLAGS)
            .cast::<u64>()
            .write(follow << 24);
        tracked.assume_init_ref()
    };
    insert_or_count(&TRACKED, Table::Tracked, &skaddr, tracked);
}

#[inline(always)]
fn established<S: SockView>(sock: &S, skaddr: u64) {
    let Some(tracked) = TRACKED.get_ptr_mut(skaddr) else {
        return;
    };
    let Some(t) = sock.tuple() else {
        return;
    };
    let tracked = unsafe { &mut *tracked };
    let now = unsafe { bpf_ktime_get_ns() };
    tracked.established = 1;
    tracked.established_ns = now;
    let latency = now.saturating_sub(tracked.start_ns);
    let key = ConnectKey {
        tgid: tracked.tgid,
        netns: sock_netns(skaddr),
        family: t.family,
        dport: t.dport,
        daddr: t.daddr,
    };
    let Some(stats) = stats_for(key) else {
        return;
    };
    stats.established += 1;
    stats.latency_sum_ns += latency;
    if let Some(bucket) = stats.latency_hist.get_mut(latency_bucket(latency)) {
        *bucket += 1;
    }
}

#[inline(always)]
fn failed<S: SockView>(sock: &S, skaddr: u64) {
    let now = unsafe { bpf_ktime_get_ns() };
    // The socket is closed: whatever happens below, its entry must go, or dead sockets
    // would crowd live ones out of the LRU (a full ring in a storm of refusals).
    let Some(t) = sock.tuple() else {
        let _ = TRACKED.remove(skaddr);
        return;
    };
    // The kernel sets sk_err before it moves the socket to CLOSE, whichever of the two
    // tracepoints (state change, error report) fires first; the error report is the
    // fallback for kernels without BTF.
    let mut errno = 0i32;
    let mut source = errno_source::NONE;
    if let Some(err) = kernel_field::<i32>(skaddr, config!(kernel.sock_sk_err)) {
        if err != 0 {
            errno = err;
            source = errno_source::SK_ERR;
        }
    }
    if config!(kernel.sock_sk_err) == agent_common::NO_OFFSET {
        if let Some(err) = unsafe { SOCK_ERRORS.get(t) } {
            errno = *err;
            source = errno_source::ERROR_REPORT;
            let _ = SOCK_ERRORS.remove(t);
        }
    }
    let tracked = TRACKED.get_ptr(skaddr);
    if let Some(tracked) = tracked {
        let (pid, tgid, start_ns) =
            unsafe { ((*tracked).pid, (*tracked).tgid, (*tracked).start_ns) };
        let pid_tgid = ((tgid as u64) << 32) | pid as u64;
        if let Some(call) = CALLS.get_ptr_mut(pid_tgid) {
            let call = unsafe { &mut *call };
            // This socket belongs to the connect(2) still in flight: a blocking connect
            // returns this same error, or (errno 0: the call failed before sending a SYN,
            // or without BTF the errno is not known yet) its return value says why.
            if call.start_ns <= start_ns {
                if errno == 0 {
                    call.reported = call_outcome::DEFERRED;
                    let _ = TRACKED.remove(skaddr);
                    return;
                }
                call.reported = call_outcome::REPORTED;
            }
        }
    }
    let Some(mut entry) = reserve::<TcpConnectFailure>() else {
        // Lost (and counted), but its process is a proxy all the same.
        if let Some(tracked) = tracked {
            unsafe { crate::http::mark_if_serving((*tracked).tgid, (*tracked).ppid) };
        }
        let _ = TRACKED.remove(skaddr);
        return;
    };
    // Filled in place: the record is too large to assemble on the BPF stack next to the rest.
    let event = entry.as_mut_ptr();
    unsafe {
        (*event).header = anonymous_header_at::<TcpConnectFailure>(now, sock_netns(skaddr));
        (*event).tuple = t;
        (*event).duration_ns = 0;
        (*event).errno = errno;
        (*event).syn_retransmits = 0;
        (*event).errno_source = source;
        (*event).owner_known = 0;
    }
    if let Some(tracked) = tracked {
        let tracked = unsafe { &*tracked };
        crate::http::mark_if_serving(tracked.tgid, tracked.ppid);
        unsafe {
            (*event).header.pid = tracked.pid;
            (*event).header.tgid = tracked.tgid;
            (*event).header.cgroup_id = tracked.cgroup_id;
            (*event).header.comm = tracked.comm;
            (*event).duration_ns = now.saturating_sub(tracked.start_ns);
            (*event).syn_retransmits = tracked.syn_retransmits;
            (*event).owner_known = 1;
        }
    }
    entry.submit(0);
    let _ = TRACKED.remove(skaddr);
}

/// Reports a listener change as the record `record` wraps it in ([`ListenerOpened`] or
/// [`ListenerClosed`]).
#[inline(always)]
fn listener<S: SockView, T: Record>(
    sock: &S,
    skaddr: u64,
    record: impl FnOnce(ListenerChange) -> T,
) {
    let Some(t) = sock.tuple() else {
        return;
    };
    let mut header = current_header::<T>();
    // The socket's namespace: a listener closes in whatever task frees it (an exiting
    // process's, a timer's), and a task can create a socket in another namespace (setns).
    header.netns = sock_netns(skaddr);
    if matches!(T::KIND, EventKind::ListenerOpened) {
        add_process(&WATCHED, Table::Watched, header.tgid);
    }
    let Some(mut entry) = reserve::<T>() else {
        return;
    };
    entry.write(record(ListenerChange { header, tuple: t }));
    entry.submit(0);
}

#[tracepoint(category = "sock", name = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: TracePointContext) -> u32 {
    // Where BTF gave `sk_err`, `failed` reads the errno from the socket itself: nothing
    // to keep (an LRU insert on every refused connect).
    if config!(kernel.sock_sk_err) != agent_common::NO_OFFSET {
        return 0;
    }
    let probe = Probe::InetSkErrorReport;
    if field::<u16>(&ctx, config!(error_report.protocol)) != Some(IPPROTO_TCP) {
        return 0;
    }
    let Some(error) = required::<i32>(&ctx, config!(error_report.error), probe) else {
        return 0;
    };
    if let Some(t) = tuple(&ctx, &config!(error_report.tuple)) {
        let _ = SOCK_ERRORS.insert(t, error, 0);
    }
    0
}

/// Only the caller's pointer is kept: the address is read from user memory (a copy on
/// every connect of the host) only when the call fails, in [`sys_exit_connect`].
#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let Some([fd, uaddr, addrlen]) = connect_args(&ctx) else {
        return 0;
    };
    if uaddr == 0 {
        return 0;
    }
    let call = ConnectCall {
        start_ns: unsafe { bpf_ktime_get_ns() },
        uaddr,
        addrlen: addrlen as u32,
        fd: fd as i32,
        reported: call_outcome::PENDING,
        _pad: 0,
    };
    insert_or_count(
        &CALLS,
        Table::ConnectCalls,
        &bpf_get_current_pid_tgid(),
        &call,
    );
    0
}

/// `connect(2)`'s `fd`, `uservaddr` and `addrlen`: one read where the record keeps them
/// side by side (every syscall record does, one 8-byte slot per argument), three
/// otherwise.
#[inline(always)]
fn connect_args(ctx: &TracePointContext) -> Option<[u64; 3]> {
    let probe = Probe::SysEnterConnect;
    let s = config!(syscalls);
    if s.connect_fd != agent_common::NO_OFFSET
        && s.connect_uservaddr == s.connect_fd + 8
        && s.connect_addrlen == s.connect_fd + 16
    {
        return required::<[u64; 3]>(ctx, s.connect_fd, probe);
    }
    Some([
        required::<u64>(ctx, s.connect_fd, probe)?,
        required::<u64>(ctx, s.connect_uservaddr, probe)?,
        required::<u64>(ctx, s.connect_addrlen, probe)?,
    ])
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = CALLS.get_ptr(pid_tgid) else {
        return 0;
    };
    let ret = required::<i64>(&ctx, config!(syscalls.exit_ret), Probe::SysExitConnect);
    if let Some(ret) = ret {
        let outcome = unsafe { (*call).reported };
        if ret < 0 && ret != -EINPROGRESS && outcome != call_outcome::REPORTED {
            report_syscall_error(call, -ret as i32, outcome == call_outcome::DEFERRED);
        }
    }
    let _ = CALLS.remove(pid_tgid);
    0
}

/// Reports a failed `connect(2)` with the address it was given, read now from the
/// caller's memory (the kernel has just copied it, so it is paged in).
#[inline(always)]
fn report_syscall_error(call: *const ConnectCall, errno: i32, deferred: bool) {
    let (start_ns, uaddr, addrlen, fd) =
        unsafe { ((*call).start_ns, (*call).uaddr, (*call).addrlen, (*call).fd) };
    let Ok(family) = (unsafe { bpf_probe_read_user(uaddr as *const u16) }) else {
        return;
    };
    if family != AF_INET && family != AF_INET6 && family != AF_UNIX {
        return;
    }
    // A TCP connect refused or timed out failed in its handshake, which the state machine
    // reported already (`failed`). Proxies with non-blocking connects (HAProxy) ask for
    // the outcome with a second connect(2) on the socket, which returns that error again.
    if !deferred && family != AF_UNIX && (errno == ECONNREFUSED || errno == ETIMEDOUT) {
        return;
    }
    let header = current_header::<ConnectSyscallError>();
    // In the calling task: its parent and its mount namespace are at hand.
    let task = unsafe { bpf_get_current_task() };
    let ppid = parent_tgid(task);
    let Some(mut entry) = reserve::<ConnectSyscallError>() else {
        crate::http::mark_if_serving(header.tgid, ppid);
        return;
    };
    // Field by field, straight into the ring: the record is too large to assemble on the
    // 512-byte BPF stack next to everything else.
    let event = entry.as_mut_ptr();
    let bytes = unsafe {
        (*event).duration_ns = header.ts_ns.saturating_sub(start_ns);
        (*event).header = header;
        (*event).fd = fd;
        (*event).errno = errno;
        (*event).mntns = task_mntns(task);
        (*event)._pad = 0;
        (*event).addr.len = addrlen;
        (*event).addr.family = family;
        (*event).addr._pad = 0;
        // Ring memory is not zeroed: what the reads below leave out must read as zeros.
        core::ptr::write_bytes((*event).addr.bytes.as_mut_ptr(), 0, SOCKADDR_MAX);
        &mut (*event).addr.bytes
    };
    let src = uaddr as *const u8;
    let read = match family {
        AF_INET => unsafe { bpf_probe_read_user_buf(src, &mut bytes[..16]) },
        AF_INET6 => unsafe { bpf_probe_read_user_buf(src, &mut bytes[..28]) },
        _ => {
            // sockaddr_un: a path up to its NUL, or an abstract name (leading NUL) that
            // fills the rest of the address.
            let first: u8 = unsafe { bpf_probe_read_user(src.wrapping_add(2)) }.unwrap_or(0);
            if first != 0 {
                unsafe { bpf_probe_read_user_str_bytes(src.wrapping_add(2), &mut bytes[2..110]) }
                    .map(|_| ())
            } else {
                unsafe { bpf_probe_read_user_buf(src.wrapping_add(2), &mut bytes[2..110]) }
            }
        }
    };
    if read.is_err() && family != AF_UNIX {
        crate::maps::count(
            agent_common::event::counter::PROBE_ERROR_BASE + Probe::SysEnterConnect as u32,
        );
        entry.discard(0);
        return;
    }
    bytes[0] = family as u8;
    bytes[1] = (family >> 8) as u8;
    crate::http::mark_if_serving(header.tgid, ppid);
    entry.submit(0);
}
