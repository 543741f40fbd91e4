//! Reading tracepoint fields at the offsets the agent supplied, and filling event headers.

use agent_common::{
    budget::{self, Budget, BudgetKey},
    config::{Probe, TupleFields},
    connect::TrackedConnect,
    event::{counter, EventHeader, Record},
    net::{SockTuple, AF_INET, AF_INET6},
    COMM_LEN, NO_OFFSET,
};
use core::{mem::MaybeUninit, ptr::addr_of_mut};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_RING_SIZE},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_kernel, generated,
    },
    maps::ring_buf::RingBufEntry,
    programs::TracePointContext,
};

use crate::maps::{count, BUDGETS, EVENTS};

/// Reads a field, `None` when the kernel lacks it or the read fails.
#[inline(always)]
pub fn field<T>(ctx: &TracePointContext, offset: u16) -> Option<T> {
    if offset == NO_OFFSET {
        return None;
    }
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// Reads a field the probe cannot work without; a failure is counted against the probe.
#[inline(always)]
pub fn required<T>(ctx: &TracePointContext, offset: u16, probe: Probe) -> Option<T> {
    let value = field(ctx, offset);
    if value.is_none() {
        count(counter::PROBE_ERROR_BASE + probe as u32);
    }
    value
}

/// Reads a kernel struct field at `base + offset`.
#[inline(always)]
pub fn kernel_field<T>(base: u64, offset: u16) -> Option<T> {
    if offset == NO_OFFSET || base == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// `task->real_parent->tgid`, 0 when unknown (no BTF). A thread's `real_parent` is its
/// process's parent; at exit, a process whose parent died before it names the one it was
/// reparented to (init or a subreaper): the tracepoint runs before the kernel notifies
/// the parent.
#[inline(always)]
pub fn parent_tgid(task: u64) -> u32 {
    let parent =
        kernel_field::<u64>(task, crate::maps::config!(kernel.task_real_parent)).unwrap_or(0);
    kernel_field::<u32>(parent, crate::maps::config!(kernel.task_tgid)).unwrap_or(0)
}

/// The network namespace of socket `sk` (`sk->__sk_common.skc_net.net->ns.inum`), 0
/// when unknown (no BTF): sockets in two pods share addresses, not namespaces.
#[inline(always)]
pub fn sock_netns(sk: u64) -> u32 {
    let k = crate::maps::config!(kernel);
    let net = kernel_field::<u64>(sk, k.sock_net).unwrap_or(0);
    kernel_field::<u32>(net, k.net_inum).unwrap_or(0)
}

/// `task->nsproxy`, 0 when unknown (or the task is past `exit_task_namespaces`).
#[inline(always)]
fn nsproxy(task: u64) -> u64 {
    kernel_field::<u64>(task, crate::maps::config!(kernel.task_nsproxy)).unwrap_or(0)
}

/// The network namespace of `task` (`task->nsproxy->net_ns->ns.inum`), 0 when unknown.
#[inline(always)]
pub fn task_netns(task: u64) -> u32 {
    let k = crate::maps::config!(kernel);
    let net = kernel_field::<u64>(nsproxy(task), k.nsproxy_net_ns).unwrap_or(0);
    kernel_field::<u32>(net, k.net_inum).unwrap_or(0)
}

/// The mount namespace of `task` (`task->nsproxy->mnt_ns->ns.inum`), where its unix
/// socket paths resolve; 0 when unknown.
#[inline(always)]
pub fn task_mntns(task: u64) -> u32 {
    let k = crate::maps::config!(kernel);
    let mnt = kernel_field::<u64>(nsproxy(task), k.nsproxy_mnt_ns).unwrap_or(0);
    kernel_field::<u32>(mnt, k.mnt_ns_inum).unwrap_or(0)
}

/// Reads a connection's addresses in whichever layout the tracepoint has.
#[inline(always)]
pub fn tuple(ctx: &TracePointContext, f: &TupleFields) -> Option<SockTuple> {
    let mut t = SockTuple::default();
    if f.sockaddr == 1 {
        t.family = field(ctx, f.saddr)?;
        let (sport, saddr) = sockaddr(ctx, f.saddr, t.family)?;
        let (dport, daddr) = sockaddr(ctx, f.daddr, t.family)?;
        t.sport = sport;
        t.dport = dport;
        t.saddr = saddr;
        t.daddr = daddr;
        return Some(t);
    }
    t.family = field(ctx, f.family)?;
    t.sport = field(ctx, f.sport)?;
    t.dport = field(ctx, f.dport)?;
    if t.family == AF_INET {
        let s: [u8; 4] = field(ctx, f.saddr)?;
        let d: [u8; 4] = field(ctx, f.daddr)?;
        t.saddr[..4].copy_from_slice(&s);
        t.daddr[..4].copy_from_slice(&d);
    } else {
        t.saddr = field(ctx, f.saddr_v6)?;
        t.daddr = field(ctx, f.daddr_v6)?;
    }
    Some(t)
}

/// A `sockaddr_in`/`sockaddr_in6` stored inside the tracepoint record.
#[inline(always)]
fn sockaddr(ctx: &TracePointContext, offset: u16, family: u16) -> Option<(u16, [u8; 16])> {
    if offset == NO_OFFSET {
        return None;
    }
    let port: u16 = field(ctx, offset + 2)?;
    let mut addr = [0u8; 16];
    if family == AF_INET {
        let a: [u8; 4] = field(ctx, offset + 4)?;
        addr[..4].copy_from_slice(&a);
    } else if family == AF_INET6 {
        // sin6_port, sin6_flowinfo, then sin6_addr.
        addr = field(ctx, offset + 8)?;
    }
    Some((u16::from_be(port), addr))
}

/// Writes the current task's name to `dst`, which need not be initialised: the helper
/// zeroes it itself when it fails. (aya's `bpf_get_current_comm()` zeroes a copy first,
/// which compiles to a call to a byte-at-a-time `memset` subprogram.)
///
/// # Safety
/// `dst` must be valid for writes.
#[inline(always)]
pub unsafe fn current_comm_to(dst: *mut [u8; COMM_LEN]) {
    unsafe { generated::bpf_get_current_comm(dst.cast(), COMM_LEN as u32) };
}

/// The current task as the subject of a `T` record, in its network namespace; the kind
/// comes from the type.
#[inline(always)]
pub fn current_header<T: Record>() -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut header = MaybeUninit::<EventHeader>::uninit();
    let p = header.as_mut_ptr();
    unsafe {
        (*p).kind = T::KIND as u32;
        (*p).pid = pid_tgid as u32;
        (*p).tgid = (pid_tgid >> 32) as u32;
        (*p).netns = task_netns(bpf_get_current_task());
        (*p).ts_ns = bpf_ktime_get_ns();
        (*p).cgroup_id = bpf_get_current_cgroup_id();
        current_comm_to(addr_of_mut!((*p).comm));
        header.assume_init()
    }
}

/// A `T` header with no known process (events from softirq context on untracked sockets),
/// in the socket's network namespace `netns`.
#[inline(always)]
pub fn anonymous_header<T: Record>(netns: u32) -> EventHeader {
    anonymous_header_at::<T>(unsafe { bpf_ktime_get_ns() }, netns)
}

/// [`anonymous_header`] with a timestamp the caller already took.
#[inline(always)]
pub fn anonymous_header_at<T: Record>(ts_ns: u64, netns: u32) -> EventHeader {
    EventHeader {
        kind: T::KIND as u32,
        pid: 0,
        tgid: 0,
        netns,
        ts_ns,
        cgroup_id: 0,
        comm: [0; COMM_LEN],
    }
}

/// A `T` header about the process that opened a tracked connection, at `ts_ns`, in the
/// socket's network namespace `netns` (the process may have moved since: the socket
/// did not).
#[inline(always)]
pub fn owner_header_at<T: Record>(tracked: &TrackedConnect, ts_ns: u64, netns: u32) -> EventHeader {
    EventHeader {
        kind: T::KIND as u32,
        pid: tracked.pid,
        tgid: tracked.tgid,
        netns,
        ts_ns,
        cgroup_id: tracked.cgroup_id,
        comm: tracked.comm,
    }
}

/// Reserves a `T` record in the ring buffer, counting a drop of `T::KIND` when it is full.
#[inline(always)]
pub fn reserve<T: Record>() -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count(counter::DROPPED_BASE + T::KIND as u32);
    }
    entry
}

/// [`reserve`] for the kinds any user can produce at will: refused (and counted) when
/// `producer` has spent its budget for `T::KIND` in the current window, or when the ring is
/// already more than its low-priority share full, so that a flood of these never leaves
/// the failure evidence without room.
#[inline(always)]
pub fn reserve_budgeted<T: Record>(producer: u32) -> Option<RingBufEntry<T>> {
    if !within_budget(producer, T::KIND as u32) {
        count(counter::THROTTLED_BASE + T::KIND as u32);
        return None;
    }
    let unread = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    if unread.saturating_mul(budget::LOW_PRIORITY_RING_SHARE) > size {
        count(counter::DROPPED_BASE + T::KIND as u32);
        return None;
    }
    reserve::<T>()
}

/// Spends one record of `producer`'s budget for `kind`; false when none is left. The
/// entry is shared by the CPUs without a lock: a race can let a record or two more
/// through, never stop a producer that is within its budget for long.
#[inline(always)]
fn within_budget(producer: u32, kind: u32) -> bool {
    let key = BudgetKey {
        tgid: producer,
        // The low half is the uid.
        uid: bpf_get_current_uid_gid() as u32,
        kind,
        _pad: 0,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(spent) = BUDGETS.get_ptr_mut(&key) else {
        let fresh = Budget {
            window_start_ns: now,
            sent: 1,
        };
        let _ = BUDGETS.insert(&key, &fresh, 0);
        return true;
    };
    unsafe {
        if now.wrapping_sub((*spent).window_start_ns) >= budget::WINDOW_NS {
            (*spent).window_start_ns = now;
            (*spent).sent = 1;
            return true;
        }
        if (*spent).sent >= budget::RECORDS_PER_WINDOW {
            return false;
        }
        (*spent).sent += 1;
    }
    true
}
