//! Process lifecycle: exec, exit, fatal signals, OOM kills.

use crate::{header::EventHeader, COMM_LEN};

/// Bytes of the executed file's path kept in [`ProcessExec`].
pub const FILENAME_LEN: usize = 256;

/// A successful `execve(2)`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessExec {
    pub header: EventHeader,
    /// Parent's tgid, 0 when unknown.
    pub ppid: u32,
    pub _pad: u32,
    /// NUL-terminated, truncated to [`FILENAME_LEN`].
    pub filename: [u8; FILENAME_LEN],
}

/// The last thread of a process exited.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessExit {
    pub header: EventHeader,
    /// `task_struct.exit_code` as `wait(2)` encodes it: `(code << 8)` for an exit, the signal
    /// number (with 0x80 for a core dump) for a death by signal. -1 when unknown.
    pub exit_code: i32,
    /// The parent's tgid (`task_struct.real_parent->tgid`) as the process exits, so that
    /// it is known when procfs no longer is. A process whose parent died before it names
    /// the one it was reparented to (init or a subreaper). 0 when unknown.
    pub ppid: u32,
}

/// A watched signal was generated (`signal:signal_generate`). The header is the sender.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Signal {
    pub header: EventHeader,
    pub signal: i32,
    /// `si_code`: who generated it (`SI_USER` from kill(2), `SI_KERNEL`, a fault code…).
    pub code: i32,
    /// The target task's thread id (the tracepoint's `pid`): a worker thread's own for a
    /// signal sent to it (`tgkill(2)`, a fault).
    pub target_pid: i32,
    /// 1 for a process-wide signal, 0 for one aimed at a thread.
    pub group: i32,
    /// `TRACE_SIGNAL_*`: 0 delivered, 1 ignored, 2 already pending, 3 overflow, 4 info lost.
    pub result: i32,
    /// The target's process (`task->tgid`), what deaths are matched by: from the task
    /// itself where `signal_generate` attaches as `tp_btf`; on the classic tracepoint only
    /// when the target is the running task (a fault, `abort(3)`). 0 when unknown.
    pub target_tgid: u32,
    pub target_comm: [u8; COMM_LEN],
}

/// `oom:mark_victim`: the OOM killer picked a victim. The header is the task that ran into
/// the OOM (the allocating one); the victim is in the payload. Sizes are in KiB.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomKill {
    pub header: EventHeader,
    pub victim_pid: u32,
    pub uid: u32,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    pub oom_score_adj: i32,
    pub _pad: u32,
    pub victim_comm: [u8; COMM_LEN],
}

#[cfg(feature = "user")]
crate::impl_pod!(ProcessExec, ProcessExit, Signal, OomKill);
