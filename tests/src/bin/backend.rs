//! A minimal HTTP backend for the end-to-end tests and the 502 lab.
//!
//! Usage: `why502-test-backend [OPTIONS] ADDR`, ADDR being `127.0.0.1:PORT` or
//! `unix:/path/to.sock`.
//!
//! It answers every request with `200 ok`, except:
//! - `GET /alloc`, which allocates (and touches) 512 MiB first: in a memory cgroup with a
//!   smaller limit, that is an OOM kill on demand;
//! - `/slow/MS`, answered after MS milliseconds (at most 10 s);
//! - `/close`, read whole and then closed without an answer (a FIN, no response byte).
//!
//! Options:
//! - `--backlog N`: the `listen()` backlog (default 128).
//! - `--no-accept`: listen and never accept: the accept queue fills up.
//! - `--close-every N`: every Nth request this process reads (counted from 1, any path) is
//!   closed without an answer, as `/close` is: an upstream with an occasional failure.
//! - `--workers N`: pre-forking: this process (the master) listens, forks N workers that
//!   accept on the inherited socket and serve one connection at a time, and forks a new
//!   worker whenever one dies; the master itself never accepts. Workers die with the
//!   master (`PR_SET_PDEATHSIG`). `--close-every` then counts per worker.
//! - `--busy-dir DIR`: while a process serves a `/slow/` request (until its answer is
//!   written), the file DIR/PID-N holds that request's line, N counting the process's
//!   requests (with `--workers`: which worker holds which request).
//! - `--keepalive-idle-ms MS`: keep connections alive (HTTP/1.1); a connection idle for
//!   longer than MS when its next request arrives is closed without reading it, so the
//!   kernel resets it: the keepalive race, where the backend's idle timeout fires just as
//!   the proxy reuses the connection, made deterministic. Without it every response says
//!   `Connection: close`.
//! - `--ready-file PATH`: once listening, write this process's pid to PATH.
//! - `--join-cgroup PROCS`: first write this process's pid to the cgroup file PROCS (a
//!   cgroup's `cgroup.procs`), so that everything it allocates is charged there.

use std::{
    io::{Read, Write},
    os::fd::{FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

/// The longest a `/slow/MS` request waits.
const MAX_SLOW_MS: u64 = 10_000;
/// How long a kept-alive connection waits for its next request at most.
const KEEPALIVE_LIMIT: Duration = Duration::from_secs(60);

struct Options {
    keepalive_idle: Option<Duration>,
    close_every: Option<u64>,
    busy_dir: Option<std::path::PathBuf>,
}

/// Requests read by this process.
static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What to do with a request once it is read.
enum Reply {
    /// Answer it (and then remove this `--busy-dir` file).
    Answer { busy: Option<std::path::PathBuf> },
    /// Close the connection without a byte of response.
    Close,
}

/// Reads one request (headers and a `Content-Length` body); false on EOF or error.
fn read_request(stream: &mut impl Read, request: &mut Vec<u8>) -> bool {
    request.clear();
    let mut buf = [0u8; 4096];
    // Read up to the end of the headers, 64 KiB at most.
    let head_end = loop {
        if let Some(pos) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if request.len() >= 65536 {
            return false;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
        .min(1 << 20);
    while request.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Does what the request asks for before answering; whether to answer at all.
fn handle(request: &[u8], options: &Options) -> Reply {
    let n = REQUESTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    if options
        .close_every
        .is_some_and(|every| n.is_multiple_of(every))
        || path == "/close"
        || path.starts_with("/close?")
    {
        return Reply::Close;
    }
    if line.starts_with("GET /alloc") {
        // Written, not just reserved, so the pages are really charged to the cgroup.
        let hog = vec![1u8; 512 << 20];
        std::hint::black_box(&hog);
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        let ms: u64 = ms
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        let busy = options
            .busy_dir
            .as_ref()
            .map(|dir| dir.join(format!("{}-{n}", std::process::id())));
        if let Some(busy) = &busy {
            let _ = std::fs::write(busy, format!("{line}\n"));
        }
        std::thread::sleep(Duration::from_millis(ms.min(MAX_SLOW_MS)));
        return Reply::Answer { busy };
    }
    Reply::Answer { busy: None }
}

/// Writes the answer to the request `handle` took; a `--busy-dir` file goes once it is
/// written.
fn answer(stream: &mut impl Write, busy: Option<std::path::PathBuf>, response: &[u8]) -> bool {
    let written = stream.write_all(response).is_ok();
    if let Some(busy) = busy {
        let _ = std::fs::remove_file(busy);
    }
    written
}

fn serve_tcp(mut stream: std::net::TcpStream, options: &Options) {
    let Some(idle) = options.keepalive_idle else {
        serve_once(&mut stream, options);
        return;
    };
    let _ = stream.set_read_timeout(Some(KEEPALIVE_LIMIT));
    let mut request = Vec::new();
    let mut last_response: Option<Instant> = None;
    loop {
        // Wait for the next request without consuming it: if the connection sat idle too
        // long, close it with the request unread, which makes the kernel send a reset.
        let mut probe = [0u8; 1];
        match stream.peek(&mut probe) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if last_response.is_some_and(|t| t.elapsed() > idle) {
            return;
        }
        if !read_request(&mut stream, &mut request) {
            return;
        }
        let Reply::Answer { busy } = handle(&request, options) else {
            return;
        };
        let closing = String::from_utf8_lossy(&request)
            .to_ascii_lowercase()
            .contains("connection: close");
        let response: &[u8] = if closing {
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n"
        };
        if !answer(&mut stream, busy, response) || closing {
            return;
        }
        last_response = Some(Instant::now());
    }
}

/// One request on `stream`, answered with `Connection: close` (or not at all: the caller
/// drops the stream, a FIN since the request was read whole).
fn serve_once(stream: &mut (impl Read + Write), options: &Options) {
    let mut request = Vec::new();
    if !read_request(stream, &mut request) {
        return;
    }
    let Reply::Answer { busy } = handle(&request, options) else {
        return;
    };
    answer(
        stream,
        busy,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
    );
}

fn fail(message: String) -> ! {
    eprintln!("why502-test-backend: {message}");
    std::process::exit(1);
}

fn check(ret: libc::c_int, what: &str) {
    if ret < 0 {
        fail(format!("{what}: {}", std::io::Error::last_os_error()));
    }
}

/// A listening socket on `addr` with `backlog`.
fn listen(addr: &str, backlog: i32) -> (OwnedFd, bool) {
    if let Some(path) = addr.strip_prefix("unix:") {
        // SAFETY: a plain socket(2) call; the descriptor is owned right below.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        check(fd, "socket");
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
        let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_bytes();
        if bytes.len() >= sa.sun_path.len() {
            fail(format!("socket path too long: {path}"));
        }
        for (dst, src) in sa.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        // SAFETY: sa is a valid sockaddr_un of the given size.
        let ret = unsafe {
            libc::bind(
                fd,
                (&sa as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        check(ret, &format!("bind {addr}"));
        // SAFETY: listen on our own socket.
        check(unsafe { libc::listen(fd, backlog) }, "listen");
        return (owned, true);
    }
    let sock: std::net::SocketAddrV4 = addr
        .parse()
        .unwrap_or_else(|e| fail(format!("not an IPv4 ADDR:PORT or unix:PATH ({e}): {addr}")));
    // SAFETY: a plain socket(2) call; the descriptor is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    check(fd, "socket");
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: SO_REUSEADDR with an int, as std's TcpListener does (a restart on the same
    // port must not wait for TIME_WAIT).
    check(
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        },
        "setsockopt",
    );
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: sock.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*sock.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sa is a valid sockaddr_in of the given size.
    let ret = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    check(ret, &format!("bind {addr}"));
    // SAFETY: listen on our own socket.
    check(unsafe { libc::listen(fd, backlog) }, "listen");
    (owned, false)
}

/// Serves connections from `fd` for ever: a thread per connection, or one at a time
/// (`sequential`, a pre-forked worker).
fn serve(fd: OwnedFd, unix: bool, options: &'static Options, sequential: bool) -> ! {
    if unix {
        let listener = std::os::unix::net::UnixListener::from(fd);
        loop {
            let Ok(mut stream) = listener.accept().map(|(s, _)| s) else {
                continue;
            };
            if sequential {
                serve_once(&mut stream, options);
            } else {
                std::thread::spawn(move || serve_once(&mut stream, options));
            }
        }
    }
    let listener = std::net::TcpListener::from(fd);
    loop {
        let Ok(stream) = listener.accept().map(|(s, _)| s) else {
            continue;
        };
        if sequential {
            serve_tcp(stream, options);
        } else {
            std::thread::spawn(move || serve_tcp(stream, options));
        }
    }
}

/// Forks a worker serving `fd`; its pid (in the master).
fn fork_worker(fd: &OwnedFd, unix: bool, options: &'static Options, master: libc::pid_t) -> i32 {
    // SAFETY: the master is single-threaded (it forks before any thread starts and never
    // starts one), so the child may go on running Rust code.
    let pid = unsafe { libc::fork() };
    check(pid, "fork");
    if pid > 0 {
        return pid;
    }
    // SAFETY: prctl and getppid have no memory preconditions. A worker dies with its master
    // (and does not start serving if the master died already).
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        if libc::getppid() != master {
            libc::_exit(0);
        }
    }
    let fd = fd.try_clone().unwrap_or_else(|e| fail(format!("dup: {e}")));
    serve(fd, unix, options, true)
}

/// The master of `--workers N`: keeps N workers alive, for ever.
fn master(
    fd: OwnedFd,
    unix: bool,
    options: &'static Options,
    workers: u32,
    ready: Option<String>,
) -> ! {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let mut alive: Vec<i32> = (0..workers)
        .map(|_| fork_worker(&fd, unix, options, me))
        .collect();
    write_ready(ready);
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own children.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let Some(at) = alive.iter().position(|p| *p == pid) else {
            continue;
        };
        let how = if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            format!("exited with {}", libc::WEXITSTATUS(status))
        };
        alive[at] = fork_worker(&fd, unix, options, me);
        eprintln!(
            "why502-test-backend: worker {pid} {how}; worker {} started",
            alive[at]
        );
    }
}

/// Once listening: this process's pid in `path`, written whole, then renamed, so that a
/// reader never sees a partial pid.
fn write_ready(path: Option<String>) {
    if let Some(path) = path {
        let tmp = format!("{path}.tmp");
        if let Err(e) = std::fs::write(&tmp, std::process::id().to_string())
            .and_then(|()| std::fs::rename(&tmp, &path))
        {
            fail(format!("cannot write {path}: {e}"));
        }
    }
}

fn main() {
    // Rust's runtime catches SIGSEGV to report stack overflows and survives one sent by
    // kill(2); the backends we stand in for (php-fpm, a C or Go server) die of it.
    // SAFETY: restoring the default disposition before any thread starts.
    unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
    let mut args = std::env::args().skip(1);
    let mut addr = None;
    let mut backlog = 128;
    let mut accept = true;
    let mut workers = None;
    let mut options = Options {
        keepalive_idle: None,
        close_every: None,
        busy_dir: None,
    };
    let mut ready_file = None;
    let usage = "usage: why502-test-backend [--backlog N] [--no-accept] [--keepalive-idle-ms MS] \
                 [--close-every N] [--workers N] [--busy-dir DIR] [--ready-file PATH] \
                 [--join-cgroup PROCS] ADDR:PORT|unix:PATH";
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| fail(format!("{name} needs a value\n{usage}")))
        };
        match arg.as_str() {
            "--backlog" => {
                backlog = value("--backlog")
                    .parse()
                    .unwrap_or_else(|e| fail(format!("--backlog: {e}")))
            }
            "--no-accept" => accept = false,
            "--keepalive-idle-ms" => {
                let ms: u64 = value("--keepalive-idle-ms")
                    .parse()
                    .unwrap_or_else(|e| fail(format!("--keepalive-idle-ms: {e}")));
                options.keepalive_idle = Some(Duration::from_millis(ms));
            }
            "--close-every" => {
                let n: u64 = value("--close-every")
                    .parse()
                    .unwrap_or_else(|e| fail(format!("--close-every: {e}")));
                if n == 0 {
                    fail("--close-every: 0".into());
                }
                options.close_every = Some(n);
            }
            "--workers" => {
                let n: u32 = value("--workers")
                    .parse()
                    .unwrap_or_else(|e| fail(format!("--workers: {e}")));
                if n == 0 {
                    fail("--workers: 0".into());
                }
                workers = Some(n);
            }
            "--busy-dir" => options.busy_dir = Some(value("--busy-dir").into()),
            "--ready-file" => ready_file = Some(value("--ready-file")),
            "--join-cgroup" => {
                let procs = value("--join-cgroup");
                if let Err(e) = std::fs::write(&procs, std::process::id().to_string()) {
                    fail(format!("cannot join the cgroup ({procs}): {e}"));
                }
            }
            _ if arg.starts_with("--") => fail(format!("unknown option {arg}\n{usage}")),
            _ if addr.is_none() => addr = Some(arg),
            _ => fail(usage.to_string()),
        }
    }
    let Some(addr) = addr else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let (fd, unix) = listen(&addr, backlog);
    if !accept {
        write_ready(ready_file);
        // The accept queue fills and stays full; the process stays until killed.
        let _keep = fd;
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let options: &'static Options = Box::leak(Box::new(options));
    match workers {
        Some(n) => master(fd, unix, options, n, ready_file),
        None => {
            write_ready(ready_file);
            serve(fd, unix, options, false)
        }
    }
}
