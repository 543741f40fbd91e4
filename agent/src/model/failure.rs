//! What kind of upstream failure the kernel saw: the vocabulary incidents count in and
//! explanations reason about. Written as text (`ECONNREFUSED`, `timeout`, `reset`) in the
//! API, the store and the metrics' `errno` label.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{
    event::{ConnectFailure, Errno},
    signal,
};

/// One failed attempt of a proxy to get an answer from its upstream.
#[derive(Debug, Clone, Copy)]
pub enum FailureKind {
    /// `connect(2)` or the handshake failed with this errno. Errnos a proxy does not meet
    /// reaching an upstream are one kind, `other`.
    Errno(Errno),
    /// The proxy gave up while its SYN went unanswered.
    Timeout,
    /// The proxy gave up at once, before any SYN retransmit.
    Aborted,
    /// RST received on an established connection.
    Reset,
    /// The upstream closed the connection before sending any response byte.
    ClosedBeforeResponse,
    /// The proxy gave up waiting for the response (no byte within its read timeout).
    ResponseTimeout,
}

impl FailureKind {
    pub const ECONNREFUSED: Self = Self::Errno(Errno(libc::ECONNREFUSED));
    pub const ETIMEDOUT: Self = Self::Errno(Errno(libc::ETIMEDOUT));
    pub const EHOSTUNREACH: Self = Self::Errno(Errno(libc::EHOSTUNREACH));
    pub const ENETUNREACH: Self = Self::Errno(Errno(libc::ENETUNREACH));
    pub const EACCES: Self = Self::Errno(Errno(libc::EACCES));
    pub const EPERM: Self = Self::Errno(Errno(libc::EPERM));
    pub const EAGAIN: Self = Self::Errno(Errno(libc::EAGAIN));
    pub const EADDRNOTAVAIL: Self = Self::Errno(Errno(libc::EADDRNOTAVAIL));

    /// How a handshake that never completed counts: its errno, else `timeout` when the
    /// proxy gave up while its SYN went unanswered, `aborted` when it gave up at once.
    pub fn of_connect(failure: &ConnectFailure) -> Self {
        // The first SYN retransmit comes after the initial RTO (1 s), but the kernel does
        // not always trace one before a process gives up: the time spent says it as well.
        const INITIAL_RTO: Duration = Duration::from_secs(1);
        if failure.errno.0 != 0 {
            Self::Errno(failure.errno)
        } else if failure.syn_retransmits > 0 || failure.duration >= INITIAL_RTO {
            Self::Timeout
        } else {
            Self::Aborted
        }
    }

    /// The name used in incidents, the API and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Errno(errno) => errno.name(),
            Self::Timeout => "timeout",
            Self::Aborted => "aborted",
            Self::Reset => "reset",
            Self::ClosedBeforeResponse => "closed_before_response",
            Self::ResponseTimeout => "response_timeout",
        }
    }
}

// Kinds are what their names say: two errnos both named `other` are one kind.
impl PartialEq for FailureKind {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for FailureKind {}

impl std::hash::Hash for FailureKind {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl PartialOrd for FailureKind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FailureKind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown failure kind {0:?}")]
pub struct UnknownFailureKind(String);

impl FromStr for FailureKind {
    type Err = UnknownFailureKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "timeout" => Self::Timeout,
            "aborted" => Self::Aborted,
            "reset" => Self::Reset,
            "closed_before_response" => Self::ClosedBeforeResponse,
            "response_timeout" => Self::ResponseTimeout,
            name => Self::Errno(Errno(
                signal::errno_number(name).ok_or_else(|| UnknownFailureKind(name.into()))?,
            )),
        })
    }
}

impl Serialize for FailureKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for FailureKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in [
            FailureKind::ECONNREFUSED,
            FailureKind::EADDRNOTAVAIL,
            FailureKind::Errno(Errno(0)),
            FailureKind::Errno(Errno(4242)),
            FailureKind::Timeout,
            FailureKind::Aborted,
            FailureKind::Reset,
            FailureKind::ClosedBeforeResponse,
            FailureKind::ResponseTimeout,
        ] {
            assert_eq!(kind.name().parse::<FailureKind>(), Ok(kind), "{kind}");
        }
        assert!("bogus".parse::<FailureKind>().is_err());
    }

    #[test]
    fn unlisted_errnos_are_one_kind() {
        assert_eq!(
            FailureKind::Errno(Errno(4242)),
            FailureKind::Errno(Errno(4243))
        );
        assert_ne!(FailureKind::ECONNREFUSED, FailureKind::ETIMEDOUT);
    }
}
