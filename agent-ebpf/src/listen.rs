//! `listen(2)`: unix-socket listeners have no tracepoint of their own, so a successful
//! `listen(2)` is reported with its fd and the agent looks the socket up in procfs.
//!
//! Any process can call `listen(2)` in a loop (a re-listen on a listening socket only
//! changes its backlog, and succeeds), so the records are budgeted per process
//! (`agent_common::budget`): a process's first listens are reported, a loop of them is
//! counted as throttled rather than filling the ring.

use agent_common::{config::Probe, event::counter::Table, listener::ListenCall};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};

use crate::{
    maps::{config, insert_or_count, LISTEN_CALLS, WATCHED},
    read::{current_header, required, reserve_budgeted},
};

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    if let Some(fd) = required::<u64>(&ctx, config!(syscalls.listen_fd), Probe::SysEnterListen) {
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
    let _ = WATCHED.insert(header.tgid, 1, 0);
    let Some(mut entry) = reserve_budgeted::<ListenCall>(header.tgid) else {
        return 0;
    };
    entry.write(ListenCall {
        header,
        fd,
        _pad: 0,
    });
    entry.submit(0);
    0
}
