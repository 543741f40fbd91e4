//! The cost of one cheap syscall: `getppid` in a tight loop on one thread.
//!
//! Any attached `syscalls:` tracepoint sends every syscall of every process through the
//! tracing slow path, whether or not a program runs for that syscall; BPF run-time
//! statistics never show that cost, so it is measured here from the caller's side.
//! `getppid` does almost nothing in the kernel, so the entry and exit path is most of it.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Calls per timed batch: ~10 ms at 100 ns a call, short enough that a batch hit by
/// preemption is one of many and the median ignores it.
const BATCH: u64 = 100_000;

#[derive(clap::Args)]
pub struct Args {
    /// How long to loop, in seconds.
    #[arg(long, default_value = "1", value_parser = crate::seconds)]
    duration: Duration,
    /// Upper bound on calls in all.
    #[arg(long, default_value_t = 1_000_000_000)]
    count: u64,
    /// Pin the thread to this CPU (default: not pinned).
    #[arg(long)]
    cpu: Option<usize>,
}

pub fn run(args: &Args) -> Result<()> {
    if let Some(cpu) = args.cpu {
        pin(cpu)?;
    }
    // One batch to fault in the code and settle the CPU's frequency; not counted.
    batch();
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut per_call = Vec::new();
    let mut calls = 0;
    loop {
        per_call.push(batch().as_nanos() as f64 / BATCH as f64);
        calls += BATCH;
        if calls + BATCH > args.count || Instant::now() >= deadline {
            break;
        }
    }
    let elapsed = start.elapsed();
    let mean = elapsed.as_nanos() as f64 / calls as f64;
    per_call.sort_by(f64::total_cmp);
    let median = per_call[per_call.len() / 2];
    let min = per_call[0];
    println!(
        "{{\"calls\":{calls},\"batches\":{},\"elapsed_s\":{:.6},\"ns_per_call\":{median:.3},\
         \"ns_per_call_mean\":{mean:.3},\"ns_per_call_min\":{min:.3},\"cpu\":{}}}",
        per_call.len(),
        elapsed.as_secs_f64(),
        args.cpu.map_or("null".to_string(), |c| c.to_string()),
    );
    Ok(())
}

/// Runs [`BATCH`] `getppid` calls and returns how long they took.
fn batch() -> Duration {
    let start = Instant::now();
    for _ in 0..BATCH {
        // SAFETY: getppid takes no arguments and cannot fail. The raw syscall, not libc's
        // wrapper, so that no library ever caches the answer.
        let ppid = unsafe { libc::syscall(libc::SYS_getppid) };
        std::hint::black_box(ppid);
    }
    start.elapsed()
}

/// Pins the calling thread to `cpu`, so that it is not migrated mid-measurement.
fn pin(cpu: usize) -> Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        bail!("no CPU {cpu}");
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it (cpu is
    // below CPU_SETSIZE); sched_setaffinity reads `size_of` bytes of it.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    if !ok {
        return Err(std::io::Error::last_os_error()).context(format!("cannot pin to CPU {cpu}"));
    }
    Ok(())
}
