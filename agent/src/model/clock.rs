//! Kernel timestamps (`CLOCK_MONOTONIC`) to wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Now, on the clock `bpf_ktime_get_ns` uses.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Converts monotonic nanoseconds to wall-clock time by the current offset between the two
/// clocks, read afresh each call so that clock adjustments are followed.
pub fn wall_time(mono_ns: u64) -> SystemTime {
    let real = clock_ns(libc::CLOCK_REALTIME);
    let mono = monotonic_ns();
    let unix_ns = real.saturating_sub(mono.saturating_sub(mono_ns));
    UNIX_EPOCH + Duration::from_nanos(unix_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moment_ago_is_a_moment_ago() {
        let then = monotonic_ns() - 1_000_000_000;
        let age = SystemTime::now().duration_since(wall_time(then)).unwrap();
        assert!(age >= Duration::from_millis(999) && age < Duration::from_millis(1100));
    }
}
