//! HTTP status codes of the responses proxies write, counted per (process, code).
//! Non-proxies return after one map lookup.
//!
//! Where the kernel has it (Linux 6.10+ with BTF), `tcp_sendmsg_locked` (`tp_btf`) sees
//! every TCP send with its `struct msghdr`, so the write syscalls need no probe at all:
//! no per-write record copy, and (with the connect and listen probes the only `syscalls:`
//! ones left) no more syscall probes than unix sockets need. Elsewhere the four
//! write-family syscall probes read the same first bytes from the syscall's arguments.

use core::mem::MaybeUninit;

use agent_common::{
    event::counter::Table,
    http::{status_code, ResponseKey, STATUS_LINE_LEN},
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{
    maps::{add_process, config, PROXIES, RESPONSES, WATCHED},
    read::{field, kernel_field},
};

/// One `struct iovec` as user space lays it out.
#[repr(C)]
#[derive(Clone, Copy)]
struct IoVec {
    base: u64,
    len: u64,
}

/// Marks a process as a proxy. Done in the kernel, at the moment it shows itself (exec of a
/// known proxy, a failed upstream connect of a process that serves clients), so that
/// workers it forks right after, and the 502 it writes right after, are already counted:
/// userspace would be milliseconds late.
#[inline(always)]
pub fn mark_proxy(tgid: u32) {
    add_process(&PROXIES, Table::Proxies, tgid);
}

/// Marks `tgid` as a proxy after an upstream connect of its failed or was reset, if it
/// serves clients: it, or its parent `ppid` (0 when unknown), listens on a socket. The
/// agent's own rule (`Knowledge::is_proxy`, init's sockets excepted); a process that only
/// connects (a CLI, a script, glibc's nscd probe) is not a proxy, and marking it would
/// have its writes inspected for nothing.
#[inline(always)]
pub fn mark_if_serving(tgid: u32, ppid: u32) {
    if tgid == 0 || is_proxy(tgid) {
        return;
    }
    let serves = WATCHED.get_ptr(&tgid).is_some() || (ppid > 1 && WATCHED.get_ptr(&ppid).is_some());
    if serves {
        mark_proxy(tgid);
    }
}

/// Whether `tgid` is marked as a proxy.
#[inline(always)]
pub fn is_proxy(tgid: u32) -> bool {
    PROXIES.get_ptr(&tgid).is_some()
}

#[inline(always)]
fn current_proxy() -> Option<u32> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    PROXIES.get_ptr(&tgid).map(|_| tgid)
}

/// Counts the response whose first bytes are at `buf`, `len` bytes long.
#[inline(always)]
fn count(tgid: u32, buf: u64, len: u64) {
    if buf == 0 || len < STATUS_LINE_LEN as u64 {
        return;
    }
    // Not zeroed first (that compiled to a call to a byte-at-a-time `memset`): the helper
    // fills the buffer, or zeroes it when it fails.
    let mut line = MaybeUninit::<[u8; STATUS_LINE_LEN]>::uninit();
    let read = unsafe {
        generated::bpf_probe_read_user(
            line.as_mut_ptr().cast(),
            STATUS_LINE_LEN as u32,
            buf as *const core::ffi::c_void,
        )
    };
    if read != 0 {
        return;
    }
    let line = unsafe { line.assume_init() };
    let Some(code) = status_code(&line) else {
        return;
    };
    let key = ResponseKey {
        tgid,
        code,
        _pad: 0,
    };
    match RESPONSES.get_ptr_mut(key) {
        // Per-CPU values: no other CPU writes this copy.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = RESPONSES.insert(key, 1, 0);
        }
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    if let Some(tgid) = current_proxy() {
        let buf = field::<u64>(&ctx, config!(http.write_buf)).unwrap_or(0);
        let len = field::<u64>(&ctx, config!(http.write_count)).unwrap_or(0);
        count(tgid, buf, len);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendto")]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    if let Some(tgid) = current_proxy() {
        let buf = field::<u64>(&ctx, config!(http.sendto_buf)).unwrap_or(0);
        let len = field::<u64>(&ctx, config!(http.sendto_len)).unwrap_or(0);
        count(tgid, buf, len);
    }
    0
}

/// The first iovec holds the status line: proxies write headers first.
#[inline(always)]
fn count_iovec(tgid: u32, iov: u64) {
    if iov == 0 {
        return;
    }
    if let Ok(first) = unsafe { bpf_probe_read_user(iov as *const IoVec) } {
        count(tgid, first.base, first.len);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_writev")]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    if let Some(tgid) = current_proxy() {
        let vlen = field::<u64>(&ctx, config!(http.writev_vlen)).unwrap_or(0);
        if vlen > 0 {
            count_iovec(
                tgid,
                field::<u64>(&ctx, config!(http.writev_vec)).unwrap_or(0),
            );
        }
    }
    0
}

/// `struct user_msghdr`: `msg_iov` sits after `msg_name` (8) and `msg_namelen` (4 + 4 pad).
const MSGHDR_IOV: u64 = 16;

#[tracepoint(category = "syscalls", name = "sys_enter_sendmsg")]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    if let Some(tgid) = current_proxy() {
        let msg = field::<u64>(&ctx, config!(http.sendmsg_msg)).unwrap_or(0);
        if msg != 0 {
            if let Ok(iov) = unsafe { bpf_probe_read_user((msg + MSGHDR_IOV) as *const u64) } {
                count_iovec(tgid, iov);
            }
        }
    }
    0
}

/// `tcp_sendmsg_locked(const struct sock *sk, const struct msghdr *msg, const struct sk_buff
/// *skb, int size_goal)`, in the sending task, once per round of the send loop (one
/// round per socket buffer filled). Only the first round of a send starts at the data's
/// first byte: later ones have `iov_offset` past it, or (at an iovec boundary) start a
/// later iovec, whose bytes a status line does not begin.
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: BtfTracePointContext) -> u32 {
    let Some(tgid) = current_proxy() else {
        return 0;
    };
    let m = config!(msg);
    if m.iter == agent_common::NO_OFFSET {
        return 0;
    }
    let msg: u64 = ctx.arg(1);
    // One read for the iterator's head (the agent checked its layout against BTF).
    let Some(iter) = kernel_field::<IovIterHead>(msg, m.iter) else {
        return 0;
    };
    if iter.iov_offset != 0 {
        return 0;
    }
    let kind = iter.iter_type as u16;
    if kind == m.kind_ubuf {
        // write(2), send(2): one user buffer, `count` bytes left.
        count(tgid, iter.ubuf, iter.count);
    } else if kind == m.kind_iovec {
        // writev(2), sendmsg(2): the kernel's copy of the iovec array (import_iovec).
        if let Some(first) = kernel_field::<IoVec>(iter.ubuf, 0) {
            count(tgid, first.base, first.len);
        }
    }
    0
}

/// The head of `struct iov_iter` as Linux 6.4+ lays it out (`agent_common::config::
/// MsgOffsets`, checked by the agent): `u8 iter_type` (then `nofault`, `data_source`),
/// `size_t iov_offset`, `ubuf`/`__iov`, `size_t count`.
#[repr(C)]
#[derive(Clone, Copy)]
struct IovIterHead {
    iter_type: u8,
    _flags: [u8; 7],
    iov_offset: u64,
    ubuf: u64,
    count: u64,
}

/// A proxy's forked workers are proxies too (nginx, Apache prefork, HAProxy master-worker).
///
/// The classic tracepoint's record names the child but cannot tell a thread from a
/// process: a proxy's threads are inserted too, under their thread ids (no process is
/// looked up by those), and deleted at the thread's exit (`process.rs`). Where it can,
/// the agent attaches [`sched_process_fork_btf`] instead, which inserts processes only.
#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    if current_proxy().is_some() {
        if let Some(child) = field::<i32>(&ctx, config!(http.fork_child_pid)) {
            mark_proxy(child as u32);
        }
    }
    0
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)` as a
/// BTF-enabled tracepoint, in the forking task: the child is a new process only when it
/// leads its own thread group (`pid == tgid`); a thread (`CLONE_THREAD`) shares its
/// creator's, already marked.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork_btf(ctx: BtfTracePointContext) -> u32 {
    if current_proxy().is_none() {
        return 0;
    }
    let child: u64 = ctx.arg(1);
    let pid = kernel_field::<u32>(child, config!(kernel.task_pid));
    let tgid = kernel_field::<u32>(child, config!(kernel.task_tgid));
    if let (Some(pid), Some(tgid)) = (pid, tgid) {
        if pid == tgid {
            mark_proxy(tgid);
        }
    }
    0
}
