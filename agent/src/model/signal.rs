//! Signal and errno names, for events people read.

/// Linux signal numbers (x86-64/arm64 numbering).
pub const SIGNALS: &[(u32, &str)] = &[
    (1, "SIGHUP"),
    (2, "SIGINT"),
    (3, "SIGQUIT"),
    (4, "SIGILL"),
    (5, "SIGTRAP"),
    (6, "SIGABRT"),
    (7, "SIGBUS"),
    (8, "SIGFPE"),
    (9, "SIGKILL"),
    (10, "SIGUSR1"),
    (11, "SIGSEGV"),
    (12, "SIGUSR2"),
    (13, "SIGPIPE"),
    (14, "SIGALRM"),
    (15, "SIGTERM"),
    (16, "SIGSTKFLT"),
    (17, "SIGCHLD"),
    (18, "SIGCONT"),
    (19, "SIGSTOP"),
    (20, "SIGTSTP"),
    (21, "SIGTTIN"),
    (22, "SIGTTOU"),
    (23, "SIGURG"),
    (24, "SIGXCPU"),
    (25, "SIGXFSZ"),
    (26, "SIGVTALRM"),
    (27, "SIGPROF"),
    (28, "SIGWINCH"),
    (29, "SIGIO"),
    (30, "SIGPWR"),
    (31, "SIGSYS"),
];

pub fn signal_name(signal: i32) -> String {
    SIGNALS
        .iter()
        .find(|(n, _)| *n as i32 == signal)
        .map(|(_, name)| (*name).to_string())
        .unwrap_or_else(|| format!("SIG{signal}"))
}

/// The errnos a proxy meets when reaching an upstream, by name.
const ERRNOS: &[(i32, &str)] = &[
    (0, "none"),
    (libc::EPERM, "EPERM"),
    (libc::ENOENT, "ENOENT"),
    (libc::EINTR, "EINTR"),
    (libc::EAGAIN, "EAGAIN"),
    (libc::EACCES, "EACCES"),
    (libc::EINVAL, "EINVAL"),
    (libc::EMFILE, "EMFILE"),
    (libc::ENFILE, "ENFILE"),
    (libc::EPIPE, "EPIPE"),
    (libc::ENOTSOCK, "ENOTSOCK"),
    (libc::EPROTOTYPE, "EPROTOTYPE"),
    (libc::EAFNOSUPPORT, "EAFNOSUPPORT"),
    (libc::EADDRINUSE, "EADDRINUSE"),
    (libc::EADDRNOTAVAIL, "EADDRNOTAVAIL"),
    (libc::ENETDOWN, "ENETDOWN"),
    (libc::ENETUNREACH, "ENETUNREACH"),
    (libc::ECONNABORTED, "ECONNABORTED"),
    (libc::ECONNRESET, "ECONNRESET"),
    (libc::ENOBUFS, "ENOBUFS"),
    (libc::EISCONN, "EISCONN"),
    (libc::ETIMEDOUT, "ETIMEDOUT"),
    (libc::ECONNREFUSED, "ECONNREFUSED"),
    (libc::EHOSTDOWN, "EHOSTDOWN"),
    (libc::EHOSTUNREACH, "EHOSTUNREACH"),
    (libc::EALREADY, "EALREADY"),
    (libc::EINPROGRESS, "EINPROGRESS"),
    (libc::EPROTO, "EPROTO"),
];

/// The name every errno not in [`ERRNOS`] shares.
const OTHER_ERRNO: &str = "other";

/// The symbolic name of the errnos a proxy meets when reaching an upstream; `other` for
/// the rest.
pub fn errno_name(errno: i32) -> &'static str {
    ERRNOS
        .iter()
        .find(|(n, _)| *n == errno)
        .map_or(OTHER_ERRNO, |(_, name)| name)
}

/// The errno [`errno_name`] names `name` (`other`: an errno outside the list).
pub fn errno_number(name: &str) -> Option<i32> {
    if name == OTHER_ERRNO {
        return Some(-1);
    }
    ERRNOS
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(errno, _)| *errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(signal_name(11), "SIGSEGV");
        assert_eq!(signal_name(64), "SIG64");
        assert_eq!(errno_name(111), "ECONNREFUSED");
        assert_eq!(errno_name(99), "EADDRNOTAVAIL");
        assert_eq!(errno_name(11), "EAGAIN");
        assert_eq!(errno_name(4242), "other");
        for (errno, name) in ERRNOS {
            assert_eq!(errno_number(name), Some(*errno));
        }
        assert_eq!(errno_name(errno_number("other").unwrap()), "other");
        assert_eq!(errno_number("EBOGUS"), None);
    }
}
