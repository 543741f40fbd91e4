//! The lab's HTTP client: one request per connection, every request on a thread of its own
//! (which enters the scenario's network namespace first, when nginx lives in one), each
//! bounded by timeouts. Every request carries `lab=SEQ` in its query string so that
//! nginx's log lines can be tied back to it.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Barrier,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

/// Longest a request may take: nginx gives up on the upstream well before.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What one request got.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub seq: u32,
    pub method: String,
    pub path: String,
    pub sent: Instant,
    pub sent_at: SystemTime,
    pub done: Instant,
    /// The status code, or why there is none.
    pub status: Result<u16, String>,
}

#[derive(Clone)]
pub struct Client {
    /// nginx's network namespace, if it has one of its own.
    netns: Option<String>,
    /// nginx's addresses, used in turn (several to spread the client's own ports).
    hosts: Vec<Ipv4Addr>,
    port: u16,
    seq: Arc<AtomicU32>,
}

impl Client {
    pub fn new(netns: Option<String>, hosts: Vec<Ipv4Addr>, port: u16) -> Self {
        assert!(!hosts.is_empty());
        Self {
            netns,
            hosts,
            port,
            seq: Arc::new(AtomicU32::new(1)),
        }
    }

    /// Sends one request on a thread of its own and waits for it.
    pub fn request(&self, method: &str, path: &str) -> Exchange {
        self.spawn(method, path, None)
            .join()
            .expect("request thread")
    }

    /// `n` requests at once (released together); their exchanges in sequence order.
    pub fn burst(&self, n: usize, method: &str, path: &str) -> Vec<Exchange> {
        let barrier = Arc::new(Barrier::new(n));
        let threads: Vec<_> = (0..n)
            .map(|_| self.spawn(method, path, Some(barrier.clone())))
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("request thread"))
            .collect()
    }

    /// `n` requests at once, like [`Client::burst`], in the background.
    pub fn burst_in_background(&self, n: usize, method: &str, path: &str) -> SteadyLoad {
        let client = self.clone();
        let method = method.to_owned();
        let path = path.to_owned();
        let handle = std::thread::spawn(move || client.burst(n, &method, &path));
        SteadyLoad { handle }
    }

    /// `count` requests, `rate` per second, in the background (stops early on a stop
    /// request).
    pub fn steady(&self, rate: u32, count: u32, method: &str, path: &str) -> SteadyLoad {
        let client = self.clone();
        let method = method.to_owned();
        let path = path.to_owned();
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut threads = Vec::new();
            for i in 0..count {
                if super::stop_requested() {
                    break;
                }
                let at = start + interval * i;
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                threads.push(client.spawn(&method, &path, None));
            }
            threads.into_iter().filter_map(|t| t.join().ok()).collect()
        });
        SteadyLoad { handle }
    }

    /// Runs `f` on a thread inside nginx's network namespace (or not, without one).
    pub fn in_netns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let netns = self.netns.clone();
        std::thread::spawn(move || {
            if let Some(name) = &netns {
                enter_netns(name).unwrap_or_else(|e| panic!("cannot enter netns {name}: {e}"));
            }
            f()
        })
    }

    /// Whether nginx accepts connections (from inside its namespace).
    pub fn connects(&self) -> bool {
        let addr = SocketAddr::from((self.hosts[0], self.port));
        self.in_netns(move || TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).is_ok())
            .join()
            .unwrap_or(false)
    }

    fn spawn(
        &self,
        method: &str,
        path: &str,
        barrier: Option<Arc<Barrier>>,
    ) -> JoinHandle<Exchange> {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let host = self.hosts[seq as usize % self.hosts.len()];
        let addr = SocketAddr::from((host, self.port));
        let method = method.to_owned();
        let separator = if path.contains('?') { '&' } else { '?' };
        let path = format!("{path}{separator}lab={seq}");
        self.in_netns(move || {
            if let Some(barrier) = barrier {
                barrier.wait();
            }
            let sent = Instant::now();
            let sent_at = SystemTime::now();
            let status = exchange(addr, &method, &path).map_err(|e| e.to_string());
            Exchange {
                seq,
                method,
                path,
                sent,
                sent_at,
                done: Instant::now(),
                status,
            }
        })
    }
}

/// Requests running in the background: a steady load or a burst.
pub struct SteadyLoad {
    handle: JoinHandle<Vec<Exchange>>,
}

impl SteadyLoad {
    /// Waits for every request to finish.
    pub fn finish(self) -> Vec<Exchange> {
        self.handle.join().expect("load thread")
    }
}

/// Moves the calling thread into the network namespace `name` (`ip netns` names it under
/// /run/netns); only this thread and the sockets it creates from now on are affected.
pub fn enter_netns(name: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns on a namespace file we hold open; affects only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One HTTP/1.1 request with `Connection: close`; the response's status code.
fn exchange(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let body = if method == "POST" { "lab=1\n" } else { "" };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: why502.lab\r\nConnection: close\r\n{}\r\n{body}",
        if method == "POST" {
            format!(
                "Content-Type: text/plain\r\nContent-Length: {}\r\n",
                body.len()
            )
        } else {
            String::new()
        }
    );
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buf = [0u8; 4096];
    // Up to the status line is enough; read on to EOF (bounded) so nginx finishes cleanly.
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) if response.is_empty() => return Err(e),
            Err(_) => break,
        }
        if Instant::now() > deadline || response.len() > 1 << 20 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))
}
