//! HTTP responses written by proxy processes, counted in the kernel by status code.
//!
//! Only processes the agent marks as proxies (and their forked workers) are inspected, so
//! every other process pays one map lookup per write. The first bytes of the buffer must
//! be a status line (`HTTP/1.x NNN`): TLS-encrypted and HTTP/2 responses are not seen.

/// Key of the per-CPU response counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResponseKey {
    pub tgid: u32,
    pub code: u16,
    pub _pad: u16,
}

/// Bytes of a status line needed: `HTTP/1.1 502`.
pub const STATUS_LINE_LEN: usize = 12;

/// The status code of a buffer that starts with an HTTP/1.x status line.
#[inline(always)]
pub fn status_code(b: &[u8; STATUS_LINE_LEN]) -> Option<u16> {
    if b[0] != b'H' || b[1] != b'T' || b[2] != b'T' || b[3] != b'P' || b[4] != b'/' {
        return None;
    }
    if b[5] != b'1' || b[6] != b'.' || b[8] != b' ' {
        return None;
    }
    let digit = |c: u8| -> Option<u16> { c.is_ascii_digit().then(|| u16::from(c - b'0')) };
    let code = digit(b[9])? * 100 + digit(b[10])? * 10 + digit(b[11])?;
    (100..600).contains(&code).then_some(code)
}

#[cfg(feature = "user")]
crate::impl_pod!(ResponseKey);

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> [u8; STATUS_LINE_LEN] {
        s.as_bytes()[..STATUS_LINE_LEN].try_into().unwrap()
    }

    #[test]
    fn parses_status_lines() {
        assert_eq!(status_code(&line("HTTP/1.1 502 Bad Gateway")), Some(502));
        assert_eq!(status_code(&line("HTTP/1.0 200 OK\r\n")), Some(200));
        assert_eq!(status_code(&line("GET / HTTP/1.1\r\n")), None);
        assert_eq!(status_code(&line("HTTP/2.0 200 OK\r\n")), None);
        assert_eq!(status_code(&line("HTTP/1.1 9x2 what")), None);
        assert_eq!(status_code(&line("HTTP/1.1 999 too big")), None);
    }
}
