//! Process churn: children that `_exit(1)` right after `fork`, reaped one by one. The
//! non-zero code makes the agent report every exit.

use std::io;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Processes to start in all.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Upper bound on the run time, in seconds.
    #[arg(long, default_value = "60", value_parser = crate::seconds)]
    duration: Duration,
    /// Threads forking (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Default)]
struct Tally {
    forked: u64,
    exited_1: u64,
    failed: u64,
}

pub fn run(args: &Args) -> Result<()> {
    if args.count > 10_000_000 {
        bail!("--count is capped at 10,000,000");
    }
    let threads = crate::threads(args.threads) as u64;
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut total = Tally::default();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let share = args.count / threads + u64::from(t < args.count % threads);
                scope.spawn(move || worker(share, deadline))
            })
            .collect();
        for w in workers {
            if let Ok(tally) = w.join() {
                total.forked += tally.forked;
                total.exited_1 += tally.exited_1;
                total.failed += tally.failed;
            }
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"forked\":{},\"exited_1\":{},\"failed\":{},\"elapsed_s\":{elapsed:.6},\
         \"rate_per_s\":{:.1},\"threads\":{threads}}}",
        total.forked,
        total.exited_1,
        total.failed,
        total.forked as f64 / elapsed.max(1e-9),
    );
    Ok(())
}

fn worker(count: u64, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    for i in 0..count {
        if i % 32 == 0 && Instant::now() >= deadline {
            break;
        }
        // SAFETY: the child only calls `_exit`, which is async-signal-safe, so forking a
        // multi-threaded process is sound; the parent reaps it before going on.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: ends the child at once, without running any parent state's destructors.
            unsafe { libc::_exit(1) };
        }
        if pid < 0 {
            tally.failed += 1;
            if io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
                std::thread::sleep(Duration::from_millis(1));
            }
            continue;
        }
        tally.forked += 1;
        let mut status = 0;
        // SAFETY: reaps the child just forked; `status` is a live local.
        let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
        if reaped == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 1 {
            tally.exited_1 += 1;
        }
    }
    tally
}
