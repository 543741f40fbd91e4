//! Refused connects: non-blocking `connect(2)` to loopback ports nobody listens on.
//!
//! On loopback the SYN and the RST that answers it are both processed before `connect`
//! returns, so the outcome is known right after it (`SO_ERROR`); a poll covers the rare
//! case where it is not.

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long one connect may stay pending before it counts as a timeout.
const PENDING_TIMEOUT_MS: i32 = 1000;

#[derive(clap::Args)]
pub struct Args {
    /// The first target address (loopback only).
    #[arg(long, default_value = "127.0.0.1", value_parser = parse_loopback)]
    addr: Ipv4Addr,
    /// How many consecutive addresses from --addr to target.
    #[arg(long, default_value_t = 1)]
    hosts: u32,
    /// The first target port.
    #[arg(long)]
    port: u16,
    /// How many consecutive ports from --port to target.
    #[arg(long, default_value_t = 1)]
    ports: u16,
    /// Connect to each (address, port) exactly once instead of cycling until --duration.
    #[arg(long)]
    once: bool,
    /// Upper bound on connects in all (0: hosts × ports with --once, else 100,000,000).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Upper bound on the run time, in seconds.
    #[arg(long, default_value = "10", value_parser = crate::seconds)]
    duration: Duration,
    /// Connects per second over all threads (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Threads (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn parse_loopback(text: &str) -> Result<Ipv4Addr, String> {
    let addr: Ipv4Addr = text.parse().map_err(|e| format!("{e}"))?;
    crate::loopback(addr).map_err(|e| e.to_string())
}

/// What one thread saw.
#[derive(Default)]
struct Tally {
    attempts: u64,
    refused: u64,
    connected: u64,
    timeouts: u64,
    errors: BTreeMap<i32, u64>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.attempts += other.attempts;
        self.refused += other.refused;
        self.connected += other.connected;
        self.timeouts += other.timeouts;
        for (errno, n) in other.errors {
            *self.errors.entry(errno).or_default() += n;
        }
    }
}

enum Outcome {
    Refused,
    Connected,
    Timeout,
    Error(i32),
}

pub fn run(args: &Args) -> Result<()> {
    if args.hosts == 0 || args.ports == 0 {
        bail!("--hosts and --ports must be at least 1");
    }
    let first = u32::from(args.addr);
    let last = first
        .checked_add(args.hosts - 1)
        .context("--hosts runs past 255.255.255.255")?;
    crate::loopback(Ipv4Addr::from(last)).context("the last target address")?;
    if u32::from(args.port) + u32::from(args.ports) - 1 > u32::from(u16::MAX) {
        bail!("--ports runs past port 65535");
    }
    let endpoints = u64::from(args.hosts) * u64::from(args.ports);
    let count = match (args.count, args.once) {
        (0, true) => endpoints,
        (0, false) => 100_000_000,
        (n, true) => n.min(endpoints),
        (n, false) => n,
    };
    let threads = crate::threads(args.threads) as u64;
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let deadline = start + args.duration;
    let per_thread_rate = args.rate as f64 / threads as f64;

    let mut total = Tally::default();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let stop = &stop;
                scope.spawn(move || {
                    worker(
                        args,
                        t,
                        threads,
                        count,
                        endpoints,
                        deadline,
                        per_thread_rate,
                        stop,
                    )
                })
            })
            .collect();
        for w in workers {
            match w.join() {
                Ok(tally) => total.add(tally),
                Err(_) => stop.store(true, Ordering::Relaxed),
            }
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let errors: Vec<String> = total
        .errors
        .iter()
        .map(|(errno, n)| format!("\"{}\":{n}", errno_name(*errno)))
        .collect();
    println!(
        "{{\"attempts\":{},\"refused\":{},\"connected\":{},\"timeouts\":{},\"errors\":{{{}}},\
         \"elapsed_s\":{elapsed:.6},\"rate_per_s\":{:.1},\"threads\":{threads}}}",
        total.attempts,
        total.refused,
        total.connected,
        total.timeouts,
        errors.join(","),
        total.attempts as f64 / elapsed.max(1e-9),
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn worker(
    args: &Args,
    thread: u64,
    threads: u64,
    count: u64,
    endpoints: u64,
    deadline: Instant,
    per_thread_rate: f64,
    stop: &AtomicBool,
) -> Tally {
    let mut tally = Tally::default();
    let started = Instant::now();
    let mut index = thread;
    while index < count {
        // The clock is read every 64 connects: cheap, and still ~1 ms resolution.
        if tally.attempts % 64 == 0 {
            let now = Instant::now();
            if now >= deadline || stop.load(Ordering::Relaxed) {
                break;
            }
            if per_thread_rate > 0.0 {
                let due = now.duration_since(started).as_secs_f64() * per_thread_rate;
                if tally.attempts as f64 > due {
                    let ahead = (tally.attempts as f64 - due) / per_thread_rate;
                    std::thread::sleep(Duration::from_secs_f64(ahead.min(0.01)));
                    continue;
                }
            }
        }
        let endpoint = index % endpoints;
        let host = u32::from(args.addr) + (endpoint / u64::from(args.ports)) as u32;
        let port = args.port + (endpoint % u64::from(args.ports)) as u16;
        tally.attempts += 1;
        match connect_once(Ipv4Addr::from(host), port) {
            Outcome::Refused => tally.refused += 1,
            Outcome::Connected => tally.connected += 1,
            Outcome::Timeout => tally.timeouts += 1,
            Outcome::Error(errno) => *tally.errors.entry(errno).or_default() += 1,
        }
        index += threads;
    }
    tally
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// One non-blocking connect to `addr:port`, waited for, and the socket closed.
fn connect_once(addr: Ipv4Addr, port: u16) -> Outcome {
    // SAFETY: plain socket calls on a descriptor this function owns and closes; every
    // pointer passed refers to a live local of the right size.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Outcome::Error(errno());
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(addr).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let outcome = if rc == 0 {
            Outcome::Connected
        } else {
            match errno() {
                libc::ECONNREFUSED => Outcome::Refused,
                libc::EINPROGRESS => pending(fd),
                other => Outcome::Error(other),
            }
        };
        libc::close(fd);
        outcome
    }
}

/// The outcome of a connect that returned `EINPROGRESS`.
unsafe fn pending(fd: libc::c_int) -> Outcome {
    let so_error = |fd| {
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` and `len` are live locals of the sizes getsockopt expects.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            errno()
        } else {
            err
        }
    };
    let mut err = so_error(fd);
    if err == 0 {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        if unsafe { libc::poll(&mut pfd, 1, PENDING_TIMEOUT_MS) } == 0 {
            return Outcome::Timeout;
        }
        err = so_error(fd);
    }
    match err {
        0 => Outcome::Connected,
        libc::ECONNREFUSED => Outcome::Refused,
        other => Outcome::Error(other),
    }
}

fn errno_name(errno: i32) -> String {
    match errno {
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL".into(),
        libc::EMFILE => "EMFILE".into(),
        libc::ENFILE => "ENFILE".into(),
        libc::ENOBUFS => "ENOBUFS".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        libc::EHOSTUNREACH => "EHOSTUNREACH".into(),
        libc::EAGAIN => "EAGAIN".into(),
        other => format!("errno_{other}"),
    }
}
