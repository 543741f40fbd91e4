//! TCP listeners' accept queues of another network namespace, read through a process in
//! it: `/proc/<pid>/net/tcp` and `tcp6` show the tables of `<pid>`'s network namespace to
//! any reader, so the agent needs neither `setns` (its unit has no `CAP_SYS_ADMIN` and
//! sets `RestrictNamespaces=`) nor a netlink socket there.
//!
//! What the files say about a listener, on this kernel as since 2.6.18 (`get_tcp4_sock`
//! in net/ipv4/tcp_ipv4.c, `get_tcp6_sock` in net/ipv6/tcp_ipv6.c, Linux 6.18):
//!
//! ```c
//! if (state == TCP_LISTEN)
//!         rx_queue = READ_ONCE(sk->sk_ack_backlog);
//! ...
//! seq_printf(f, "%4d: %08X:%04X %08X:%04X %02X %08X:%08X ...",
//!         i, src, srcp, dest, destp, state,
//!         READ_ONCE(tp->write_seq) - tp->snd_una,   /* tx_queue */
//!         rx_queue, ...
//! ```
//!
//! so `rx_queue` is the accept queue's length, but `tx_queue` is *not* its limit (that is
//! sock_diag's `idiag_wqueue`, `sk_max_ack_backlog`; a patch to print it here was refused
//! in 2024 as "/proc interface is legacy"): it is 0 for a listener. The backlog of another
//! namespace's listener is therefore not known; its namespace's `ListenOverflows` counter
//! (`/proc/<pid>/net/netstat`) says when a queue there overflowed.
//!
//! The tables list listeners first: `tcp_get_idx` walks the listening hash
//! (`listening_get_idx`) before the established one. Reading stops at the first line
//! that is not a listener, so the cost is the namespace's listeners, not its connections.

use std::{
    io::{self, BufRead, BufReader, Read},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// `TCP_LISTEN` as the tables print it (`%02X` of the state).
const LISTEN: &str = "0A";

/// The most listeners read from one table: a pod listens on a handful of ports; past
/// this, the rest of the table is left unread rather than the round held up.
pub const MAX_LISTENERS: usize = 10_000;

/// One listening socket's accept queue, as procfs shows it (no backlog: see the module).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProcListenQueue {
    pub local: SocketAddr,
    pub inode: u64,
    /// Connections completed and waiting for `accept()` (`rx_queue`, `sk_ack_backlog`).
    pub queued: u32,
}

/// The listeners at the head of a `/proc/net/tcp` or `tcp6` table (`v6` says which), at
/// most [`MAX_LISTENERS`]; a line that does not parse is skipped.
pub fn listeners(table: impl Read, v6: bool) -> io::Result<Vec<ProcListenQueue>> {
    let mut out = Vec::new();
    // The first line is the header.
    for line in BufReader::new(table).lines().skip(1) {
        let line = line?;
        let mut fields = line.split_whitespace();
        let (Some(_slot), Some(local), Some(_remote), Some(state), Some(queues)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        if state != LISTEN {
            // Listeners come first: the rest are connections.
            break;
        }
        // tr:tm->when, retrnsmt, uid, timeout, then the inode.
        let inode = fields.nth(4).and_then(|i| i.parse().ok());
        let queued = queues
            .split_once(':')
            .and_then(|(_tx, rx)| u32::from_str_radix(rx, 16).ok());
        let (Some(local), Some(inode), Some(queued)) = (address(local, v6), inode, queued) else {
            continue;
        };
        out.push(ProcListenQueue {
            local,
            inode,
            queued,
        });
        if out.len() >= MAX_LISTENERS {
            break;
        }
    }
    Ok(out)
}

/// `0100007F:1F90` → 127.0.0.1:8080. The address is printed as the 32-bit words of the
/// `__be32`/`in6_addr` in the kernel's (native) byte order, the port in host order.
fn address(field: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words = (0..ip.len() / 8)
        .map(|i| {
            ip.get(i * 8..i * 8 + 8)
                .and_then(|w| u32::from_str_radix(w, 16).ok())
        })
        .collect::<Option<Vec<u32>>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = match (v6, bytes.len()) {
        (false, 4) => Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).into(),
        (true, 16) => Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 6.18 kernel's `/proc/net/tcp`: two listeners (one with 3 connections waiting),
    /// then an established connection and a listener line after it that must not be read.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41872 1 0000000000000000 100 0 0 10 0
   1: 0100007F:EBA5 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 20941449 4 00000000b5dea655 100 0 0 10 0
   2: 0100007F:EBA5 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 20941450 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41873 1 0000000000000000 100 0 0 10 0
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000002 00:00000000 00000000     0        0 52001 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000    33        0 52002 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listeners_are_read_up_to_the_first_connection() {
        let got = listeners(TCP.as_bytes(), false).unwrap();
        assert_eq!(
            got,
            [
                ProcListenQueue {
                    local: "0.0.0.0:8080".parse().unwrap(),
                    inode: 41872,
                    queued: 0
                },
                ProcListenQueue {
                    local: "127.0.0.1:60325".parse().unwrap(),
                    inode: 20941449,
                    queued: 3
                },
            ]
        );
    }

    #[test]
    fn ipv6_listeners_parse() {
        let got = listeners(TCP6.as_bytes(), true).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].local, "[::]:8080".parse().unwrap());
        assert_eq!(got[0].queued, 2);
        assert_eq!(got[1].local, "[::1]:80".parse().unwrap());
        assert_eq!(got[1].inode, 52002);
    }

    #[test]
    fn odd_lines_are_skipped() {
        let table = "header\n   0: nonsense 00000000:0000 0A 00000000:00000001 00:0 0 0 0 7\n   1: 0100007F:0050 00000000:0000 0A 00000000:zz 00:0 0 0 0 8\n   2: 0100007F:0050 00000000:0000 0A 00000000:00000001 00:0 0 0 0 9\n";
        let got = listeners(table.as_bytes(), false).unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].inode, 9);
        assert_eq!(got[0].local, "127.0.0.1:80".parse().unwrap());
        // A v4 address in a v6 table (or the reverse) names nothing.
        assert!(listeners(TCP.as_bytes(), true).unwrap().is_empty());
    }

    /// The claim the module rests on, on the running kernel: for a listener of the test's
    /// own, rx_queue is the number of connections waiting and tx_queue is not the backlog.
    #[test]
    fn live_table_shows_the_accept_queue_but_not_the_backlog() {
        use std::os::{fd::AsRawFd, unix::fs::MetadataExt};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: listen() again on a socket this test owns only sets its backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 7) }, 0);
        let local = listener.local_addr().unwrap();
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .unwrap()
            .ino();
        let _clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(local).unwrap())
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let ours = loop {
            let table = std::fs::File::open("/proc/self/net/tcp").unwrap();
            let ours = listeners(table, false)
                .unwrap()
                .into_iter()
                .find(|q| q.local == local);
            match ours {
                Some(q) if q.queued == 3 || std::time::Instant::now() > deadline => break q,
                _ => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        };
        assert_eq!(
            ours,
            ProcListenQueue {
                local,
                inode,
                queued: 3
            }
        );
        let text = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
        let port = format!(":{:04X} ", local.port());
        let line = text
            .lines()
            .find(|l| l.contains(&port) && l.contains(" 0A "))
            .unwrap();
        let tx = line.split_whitespace().nth(4).unwrap();
        assert_eq!(tx, "00000000:00000003", "tx_queue is not the backlog (7)");
    }
}
