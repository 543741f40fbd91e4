//! Listen queue overflow counters from `/proc/net/netstat` (the `TcpExt` block).
//!
//! `ListenOverflows` counts SYNs or final ACKs dropped because a listener's accept queue
//! was full; `ListenDrops` counts every drop at a listener, overflows included. Both exist
//! on every kernel this agent runs on (since 2.6). The counters belong to the reader's
//! network namespace: another namespace's are read through a process in it,
//! `/proc/<pid>/net/netstat` ([`read_from`]). See
//! <https://docs.kernel.org/networking/snmp_counter.html>.
//!
//! `procfs` parses `/proc/net/snmp` but not `netstat`, hence the parser here.

use std::io;

const PATH: &str = "/proc/net/netstat";
const SECTION: &str = "TcpExt:";

/// Cumulative counters since boot (of the namespace); compare two samples for a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ListenStats {
    pub overflows: u64,
    pub drops: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NetstatError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("no {SECTION} block")]
    MissingSection,
    #[error("{SECTION} has {names} names but {values} values")]
    Mismatch { names: usize, values: usize },
    #[error("{SECTION} has no {field}")]
    MissingField { field: &'static str },
    #[error("{SECTION} {field} is not a counter: {value:?}")]
    BadValue {
        field: &'static str,
        value: String,
        #[source]
        source: std::num::ParseIntError,
    },
}

/// Parses `/proc/net/netstat`: per block, a line of names then a line of values, both
/// starting with the block's prefix (`TcpExt:`, `IpExt:`, `MPTcpExt:`…).
pub fn parse(text: &str) -> Result<ListenStats, NetstatError> {
    let mut lines = text.lines();
    let (names, values) = loop {
        let Some(names) = lines.next() else {
            return Err(NetstatError::MissingSection);
        };
        let Some(names) = names.strip_prefix(SECTION) else {
            continue;
        };
        // The values line must carry the same prefix, or the file is not what we think.
        let values = lines
            .next()
            .and_then(|l| l.strip_prefix(SECTION))
            .ok_or(NetstatError::MissingSection)?;
        break (names, values);
    };
    let names: Vec<&str> = names.split_whitespace().collect();
    let values: Vec<&str> = values.split_whitespace().collect();
    if names.len() != values.len() {
        return Err(NetstatError::Mismatch {
            names: names.len(),
            values: values.len(),
        });
    }
    let counter = |field: &'static str| -> Result<u64, NetstatError> {
        let i = names
            .iter()
            .position(|n| *n == field)
            .ok_or(NetstatError::MissingField { field })?;
        values[i].parse().map_err(|source| NetstatError::BadValue {
            field,
            value: values[i].to_string(),
            source,
        })
    };
    Ok(ListenStats {
        overflows: counter("ListenOverflows")?,
        drops: counter("ListenDrops")?,
    })
}

/// The counters of the agent's network namespace.
pub fn read() -> Result<ListenStats, NetstatError> {
    let text = std::fs::read_to_string(PATH).map_err(|source| NetstatError::Read {
        path: PATH.into(),
        source,
    })?;
    parse(&text)
}

/// The counters of the namespace whose `netstat` file `file` is (`path` names it in
/// errors).
pub fn read_from(mut file: impl io::Read, path: &str) -> Result<ListenStats, NetstatError> {
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|source| NetstatError::Read {
            path: path.into(),
            source,
        })?;
    parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a 6.x kernel's file, shortened: the `TcpExt` names line runs long,
    /// `IpExt` and `MPTcpExt` follow.
    const NETSTAT: &str = "\
TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts PruneCalled RcvPruned OfoPruned OutOfWindowIcmps LockDroppedIcmps ArpFilter TW TWRecycled TWKilled PAWSActive PAWSEstab BeyondWindow TSEcrRejected PAWSOldAck PAWSTimewait DelayedACKs DelayedACKLocked DelayedACKLost ListenOverflows ListenDrops TCPHPHits TCPPureAcks
TcpExt: 0 0 0 0 0 0 0 0 0 0 428 0 0 0 0 0 0 0 0 32 0 4 17 23 116 1381
IpExt: InNoRoutes InTruncatedPkts InMcastPkts OutMcastPkts InBcastPkts OutBcastPkts InOctets OutOctets
IpExt: 0 0 0 0 0 0 811270 1024533
MPTcpExt: MPCapableSYNRX MPCapableSYNTX
MPTcpExt: 0 0
";

    #[test]
    fn parses_listen_counters() {
        assert_eq!(
            parse(NETSTAT).unwrap(),
            ListenStats {
                overflows: 17,
                drops: 23
            }
        );
    }

    #[test]
    fn rejects_odd_input() {
        assert!(matches!(parse(""), Err(NetstatError::MissingSection)));
        assert!(matches!(
            parse("IpExt: InNoRoutes\nIpExt: 0\n"),
            Err(NetstatError::MissingSection)
        ));
        assert!(matches!(
            parse("TcpExt: ListenOverflows ListenDrops\n"),
            Err(NetstatError::MissingSection)
        ));
        assert!(matches!(
            parse("TcpExt: ListenOverflows ListenDrops\nTcpExt: 1\n"),
            Err(NetstatError::Mismatch {
                names: 2,
                values: 1
            })
        ));
        assert!(matches!(
            parse("TcpExt: ListenOverflows\nTcpExt: 1\n"),
            Err(NetstatError::MissingField {
                field: "ListenDrops"
            })
        ));
        assert!(matches!(
            parse("TcpExt: ListenOverflows ListenDrops\nTcpExt: 1 -2\n"),
            Err(NetstatError::BadValue {
                field: "ListenDrops",
                ..
            })
        ));
    }

    #[test]
    fn live_read() {
        // Only that it parses: the values are whatever this host has seen.
        read().unwrap();
    }
}
