//! `listen(2)`: unix-socket listeners have no tracepoint of their own, so a successful
//! `listen(2)` is reported with its fd and the agent looks the socket up in procfs.
//!
//! Only a socket's first transition to listening is reported: a re-listen on a listening
//! socket only changes its backlog (and succeeds), and is recognised at the call's entry
//! from the socket's state (with BTF). Any process can still make new listeners in a loop,
//! so the records are also budgeted per process (`agent_common::budget`): a process's
//! first listens are reported, a loop of them is counted as throttled rather than filling
//! the ring.

use agent_common::{
    config::Probe, event::counter::Table, listener::ListenCall, tcp::state, NO_OFFSET,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    maps::{add_process, config, insert_or_count, LISTEN_CALLS, WATCHED},
    read::{current_header, kernel_field, required, reserve_budgeted, task_mntns},
};

/// Whether the calling task's `fd` is a socket that already listens: the state is read
/// through `task->files->fdt->fd[fd]->private_data->sk` before the call changes it. False
/// when any step is unknown (no BTF) or unreadable, so that the call is reported.
#[inline(always)]
fn already_listening(fd: u64) -> bool {
    let array_offset = config!(kernel.fdtable_fd);
    if array_offset == NO_OFFSET {
        return false;
    }
    let task = unsafe { bpf_get_current_task() };
    let Some(files) = kernel_field::<u64>(task, config!(kernel.task_files)) else {
        return false;
    };
    let Some(fdt) = kernel_field::<u64>(files, config!(kernel.files_fdt)) else {
        return false;
    };
    let Some(fds) = kernel_field::<u64>(fdt, array_offset) else {
        return false;
    };
    // A bad fd makes the call fail (EBADF), which is never reported whatever this reads.
    let Some(file) = kernel_field::<u64>(fds.wrapping_add(fd.wrapping_mul(8)), 0) else {
        return false;
    };
    let Some(socket) = kernel_field::<u64>(file, config!(kernel.file_private_data)) else {
        return false;
    };
    let Some(sk) = kernel_field::<u64>(socket, config!(kernel.socket_sk)) else {
        return false;
    };
    kernel_field::<u8>(sk, config!(kernel.sock_state)) == Some(state::LISTEN as u8)
}

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    if let Some(fd) = required::<u64>(&ctx, config!(syscalls.listen_fd), Probe::SysEnterListen) {
        // Only the first transition to listening matters: a re-listen (which only
        // changes the backlog) is not followed to its exit, so it is never reported.
        if already_listening(fd) {
            return 0;
        }
        insert_or_count(
            &LISTEN_CALLS,
            Table::ListenCalls,
            &bpf_get_current_pid_tgid(),
            &(fd as i32),
        );
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_listen")]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(fd) = (unsafe { LISTEN_CALLS.get(pid_tgid) }).copied() else {
        return 0;
    };
    let _ = LISTEN_CALLS.remove(pid_tgid);
    if required::<i64>(&ctx, config!(syscalls.exit_ret), Probe::SysExitListen) != Some(0) {
        return 0;
    }
    let header = current_header::<ListenCall>();
    add_process(&WATCHED, Table::Watched, header.tgid);
    let Some(mut entry) = reserve_budgeted::<ListenCall>(header.tgid) else {
        return 0;
    };
    entry.write(ListenCall {
        header,
        fd,
        // The caller's: its unix socket path resolves in its mount namespace.
        mntns: task_mntns(unsafe { bpf_get_current_task() }),
    });
    entry.submit(0);
    0
}
