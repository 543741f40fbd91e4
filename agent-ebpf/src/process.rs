//! Process lifecycle: exec, exit (with the exit code from `task_struct`), signals and the
//! OOM killer's victims.
//!
//! Any user can exec, exit and send signals in a loop, so those records are budgeted per
//! producer (`agent_common::budget`, [`reserve_budgeted`]); deaths by a signal and OOM
//! kills are failure evidence and are not.

use agent_common::{
    config::Probe,
    process::{OomKill, ProcessExec, ProcessExit, Signal, FILENAME_LEN},
    proxy, COMM_LEN, NO_OFFSET,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel_str_bytes},
    macros::{btf_tracepoint, tracepoint},
    maps::HashMap,
    programs::{BtfTracePointContext, TracePointContext},
    EbpfContext,
};

use crate::{
    maps::{config, PROXIES, WATCHED},
    read::{current_header, field, kernel_field, parent_tgid, required, reserve, reserve_budgeted},
};

/// The string a `__data_loc` field points to: its low 16 bits are the offset from the
/// start of the record.
#[inline(always)]
fn data_loc_str(ctx: &TracePointContext, offset: u16, dst: &mut [u8]) -> bool {
    let Some(loc) = field::<u32>(ctx, offset) else {
        return false;
    };
    let src = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);
    unsafe { bpf_probe_read_kernel_str_bytes(src, dst) }.is_ok()
}

/// Whose budget a record about process `tgid` with parent `ppid` (0: unknown) spends:
/// the parent's, since a loop of `fork`+`exec`/`exit` makes a new process every time.
#[inline(always)]
fn producer(tgid: u32, ppid: u32) -> u32 {
    if ppid != 0 {
        ppid
    } else {
        tgid
    }
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let header = current_header::<ProcessExec>();
    if proxy::is_known_comm(&header.comm) {
        crate::http::mark_proxy(header.tgid);
    }
    let ppid = parent_tgid(unsafe { bpf_get_current_task() });
    let Some(mut entry) = reserve_budgeted::<ProcessExec>(producer(header.tgid, ppid)) else {
        return 0;
    };
    let event = entry.as_mut_ptr();
    unsafe {
        (*event).header = header;
        (*event).ppid = ppid;
        (*event)._pad = 0;
        (*event).filename = [0; FILENAME_LEN];
        if !data_loc_str(&ctx, config!(process.exec_filename), &mut (*event).filename) {
            crate::maps::count(
                agent_common::event::counter::PROBE_ERROR_BASE + Probe::SchedProcessExec as u32,
            );
        }
    }
    entry.submit(0);
    0
}

/// Deletes `tgid` from a set of processes, looking first (a delete takes the bucket's lock
/// even for a key that is not there); whether it was there.
#[inline(always)]
fn remove_process(set: &HashMap<u32, u8>, tgid: u32) -> bool {
    if set.get_ptr(&tgid).is_none() {
        return false;
    }
    let _ = set.remove(&tgid);
    true
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let header = current_header::<ProcessExit>();
    let group_dead_offset = config!(process.exit_group_dead);
    let last_thread = if group_dead_offset != NO_OFFSET {
        field::<u8>(&ctx, group_dead_offset) == Some(1)
    } else {
        header.pid == header.tgid
    };
    // A thread's own entry (the classic fork tracepoint inserts a proxy's threads): keyed
    // by its thread id, which no process has while it lives, so it goes with the thread.
    if header.pid != header.tgid {
        remove_process(&PROXIES, header.pid);
    }
    // A worker thread's exit is not its process's: the process stays marked and watched,
    // and nothing is reported.
    if !last_thread {
        return 0;
    }
    let task = unsafe { bpf_get_current_task() };
    let exit_code = kernel_field::<i32>(task, config!(kernel.task_exit_code)).unwrap_or(-1);
    // The tables are plain hashes: every entry must go here, or they fill up.
    remove_process(&PROXIES, header.tgid);
    let watched = remove_process(&WATCHED, header.tgid);
    // Clean exits of processes that never listened are the bulk of all exits and explain
    // nothing about an upstream.
    if exit_code == 0 && !watched {
        return 0;
    }
    let ppid = parent_tgid(task);
    // A death by a signal (the low 7 bits of the wait status) is failure evidence; exits
    // with a code (any user can `exit(1)` in a loop) and unknown statuses are budgeted:
    // by the parent, except a listener's owner, whose exit (a restart, a crash with a
    // code) is evidence too and spends only a budget of its own, which one exit never
    // exceeds (the ring share still holds a flood of listeners exiting).
    let by_signal = exit_code != -1 && exit_code & 0x7f != 0;
    let entry = if by_signal {
        reserve::<ProcessExit>()
    } else if watched {
        reserve_budgeted::<ProcessExit>(header.tgid)
    } else {
        reserve_budgeted::<ProcessExit>(producer(header.tgid, ppid))
    };
    let Some(mut entry) = entry else {
        return 0;
    };
    entry.write(ProcessExit {
        header,
        exit_code,
        ppid,
    });
    entry.submit(0);
    0
}

#[tracepoint(category = "signal", name = "signal_generate")]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    let probe = Probe::SignalGenerate;
    let Some(sig) = required::<i32>(&ctx, config!(signal.sig), probe) else {
        return 0;
    };
    if !watched_signal(sig) {
        return 0;
    }
    let target_pid: i32 = field(&ctx, config!(signal.pid)).unwrap_or(0);
    // The record has the target's thread id only. When the target is the running task (a
    // fault, abort(3) raising SIGABRT in a worker thread), its process is at hand; any
    // other is left to the agent (`target_tgid` 0).
    let pid_tgid = bpf_get_current_pid_tgid();
    let target_tgid = if target_pid != 0 && target_pid as u32 == pid_tgid as u32 {
        (pid_tgid >> 32) as u32
    } else {
        0
    };
    emit_signal(Signal {
        header: current_header::<Signal>(),
        signal: sig,
        code: field(&ctx, config!(signal.code)).unwrap_or(0),
        target_pid,
        group: field(&ctx, config!(signal.group)).unwrap_or(0),
        result: field(&ctx, config!(signal.result)).unwrap_or(-1),
        target_tgid,
        target_comm: field(&ctx, config!(signal.comm)).unwrap_or([0; COMM_LEN]),
    });
    0
}

/// `SEND_SIG_NOINFO` and `SEND_SIG_PRIV`: no siginfo, what the tracepoint reports as
/// `SI_USER` and `SI_KERNEL`.
const SEND_SIG_NOINFO: u64 = 0;
const SEND_SIG_PRIV: u64 = 1;
const SI_USER: i32 = 0;
const SI_KERNEL: i32 = 0x80;

/// `signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task, int
/// group, int result)` as a BTF-enabled tracepoint: the target task itself, so that a
/// signal sent to a worker thread names its process (`task->tgid`), whoever sent it.
/// Fills what the classic record holds the way its `TP_fast_assign` does.
#[btf_tracepoint(function = "signal_generate")]
pub fn signal_generate_btf(ctx: BtfTracePointContext) -> u32 {
    let sig: i32 = ctx.arg(0);
    if !watched_signal(sig) {
        return 0;
    }
    let info: u64 = ctx.arg(1);
    let task: u64 = ctx.arg(2);
    let code = match info {
        SEND_SIG_NOINFO => SI_USER,
        SEND_SIG_PRIV => SI_KERNEL,
        _ => kernel_field::<i32>(info, config!(kernel.siginfo_code)).unwrap_or(0),
    };
    emit_signal(Signal {
        header: current_header::<Signal>(),
        signal: sig,
        code,
        target_pid: kernel_field::<i32>(task, config!(kernel.task_pid)).unwrap_or(0),
        group: ctx.arg(3),
        result: ctx.arg(4),
        target_tgid: kernel_field::<u32>(task, config!(kernel.task_tgid)).unwrap_or(0),
        target_comm: kernel_field::<[u8; COMM_LEN]>(task, config!(kernel.task_comm))
            .unwrap_or([0; COMM_LEN]),
    });
    0
}

/// Whether signal `sig` is one the agent asked for (`probes.signals`).
#[inline(always)]
fn watched_signal(sig: i32) -> bool {
    (0..64).contains(&sig) && config!(signal_mask) & (1u64 << sig) != 0
}

/// Sends a signal record, within its sender's budget (the header names the sender).
#[inline(always)]
fn emit_signal(signal: Signal) {
    let Some(mut entry) = reserve_budgeted::<Signal>(signal.header.tgid) else {
        return;
    };
    entry.write(signal);
    entry.submit(0);
}

#[tracepoint(category = "oom", name = "mark_victim")]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    let Some(victim_pid) = required::<i32>(&ctx, config!(mark_victim.pid), Probe::MarkVictim)
    else {
        return 0;
    };
    let header = current_header::<OomKill>();
    let Some(mut entry) = reserve::<OomKill>() else {
        return 0;
    };
    let kb = |offset: u16| field::<u64>(&ctx, offset).unwrap_or(0);
    let event = entry.as_mut_ptr();
    unsafe {
        (*event).header = header;
        (*event).victim_pid = victim_pid as u32;
        (*event).uid = field(&ctx, config!(mark_victim.uid)).unwrap_or(0);
        (*event).total_vm_kb = kb(config!(mark_victim.total_vm));
        (*event).anon_rss_kb = kb(config!(mark_victim.anon_rss));
        (*event).file_rss_kb = kb(config!(mark_victim.file_rss));
        (*event).shmem_rss_kb = kb(config!(mark_victim.shmem_rss));
        (*event).pgtables_kb = kb(config!(mark_victim.pgtables));
        (*event).oom_score_adj =
            field::<i16>(&ctx, config!(mark_victim.oom_score_adj)).unwrap_or(0) as i32;
        (*event)._pad = 0;
        (*event).victim_comm = [0; COMM_LEN];
        let comm_offset = config!(mark_victim.comm);
        if config!(mark_victim.comm_data_loc) == 1 {
            data_loc_str(&ctx, comm_offset, &mut (*event).victim_comm);
        } else if let Some(comm) = field::<[u8; COMM_LEN]>(&ctx, comm_offset) {
            (*event).victim_comm = comm;
        }
    }
    entry.submit(0);
    0
}
