//! nginx's own record, the ground truth the agent is held to: the upstream errors of
//! `error.log`, named as the agent names failure kinds, and the statuses of `access.log`.

use std::collections::{BTreeMap, HashMap};

/// errno numbers nginx prints, by the names the agent uses.
const ERRNOS: [(u32, &str); 10] = [
    (1, "EPERM"),
    (2, "ENOENT"),
    (11, "EAGAIN"),
    (13, "EACCES"),
    (99, "EADDRNOTAVAIL"),
    (101, "ENETUNREACH"),
    (110, "ETIMEDOUT"),
    (111, "ECONNREFUSED"),
    (113, "EHOSTUNREACH"),
    (104, "ECONNRESET"),
];

/// The upstream errors of an error.log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ErrorLog {
    /// Failures the agent counts, by its kind names: errno names of failed connects,
    /// `timeout` for "upstream timed out … while connecting", `reset` for an established
    /// upstream connection reset (`recv() failed (104: …)`, `writev() failed (32: …)`),
    /// `closed_before_response` for "upstream prematurely closed connection while reading
    /// response header", `response_timeout` for "upstream timed out (110: …) while reading
    /// response header" (a 504).
    pub kinds: BTreeMap<String, u64>,
    /// Other upstream errors (which the kernel cannot see as a failed connect), by message.
    pub other: BTreeMap<String, u64>,
    /// The lab request (`lab=SEQ`) each counted failure belongs to, with its kind.
    pub requests: HashMap<u32, String>,
}

impl ErrorLog {
    pub fn parse(text: &str) -> Self {
        let mut log = Self::default();
        for line in text.lines() {
            let serious = ["[warn]", "[error]", "[crit]", "[alert]", "[emerg]"]
                .iter()
                .any(|level| line.contains(level));
            // Only errors about the upstream connection (a client's reset also names the
            // upstream, after ", client:").
            if !serious || !message(line).contains("upstream") {
                continue;
            }
            match failure_kind(line) {
                Some(kind) => {
                    *log.kinds.entry(kind.clone()).or_default() += 1;
                    if let Some(seq) = lab_seq(line) {
                        log.requests.insert(seq, kind);
                    }
                }
                None => *log.other.entry(message(line)).or_default() += 1,
            }
        }
        log
    }

    pub fn total(&self) -> u64 {
        self.kinds.values().sum()
    }
}

/// The agent's name for the failure an error.log line reports, if it is one the kernel
/// sees.
pub fn failure_kind(line: &str) -> Option<String> {
    let errno = errno_of(line);
    if line.contains("upstream timed out") && line.contains("while connecting to upstream") {
        return Some("timeout".into());
    }
    // After the connect, before the first byte of the response header: the upstream
    // closed (FIN) or did not answer within proxy_read_timeout. (A close while reading
    // the body, "… while reading upstream", is a truncated 200, not a failed request.)
    if line.contains("while reading response header from upstream") {
        if line.contains("upstream prematurely closed connection") {
            return Some("closed_before_response".into());
        }
        if line.contains("upstream timed out") {
            return Some("response_timeout".into());
        }
    }
    if line.contains("connect() ") && line.contains(" failed (") {
        let n = errno?;
        return Some(
            ERRNOS
                .iter()
                .find(|(e, _)| *e == n)
                .map(|(_, name)| (*name).to_string())
                .unwrap_or_else(|| format!("errno {n}")),
        );
    }
    // An established connection reset by the upstream: nginx notices it reading (104) or
    // writing (104, or 32 once the reset has arrived).
    if matches!(errno, Some(104) | Some(32)) {
        return Some("reset".into());
    }
    None
}

/// The number in nginx's `failed (111: Connection refused)` / `timed out (110: …)`.
fn errno_of(line: &str) -> Option<u32> {
    let start = line.find(" (")? + 2;
    let rest = &line[start..];
    let end = rest.find(':')?;
    rest[..end].parse().ok()
}

/// The request's `lab=SEQ` from `request: "GET /?lab=12 HTTP/1.1"`.
fn lab_seq(line: &str) -> Option<u32> {
    let start = line.find("request: \"")? + "request: \"".len();
    let request = &line[start..];
    let request = &request[..request.find('"')?];
    let at = request.find("lab=")? + 4;
    let digits: String = request[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The message of an error.log line, without time, pids and request details.
fn message(line: &str) -> String {
    let text = line.split_once(": *").map(|(_, m)| m).unwrap_or(line);
    let text = text.split_once(' ').map(|(_, m)| m).unwrap_or(text);
    text.split(", client:").next().unwrap_or(text).to_string()
}

/// The statuses of access.log (the lab's log_format starts each line with `$status`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccessLog {
    pub statuses: BTreeMap<u16, u64>,
}

impl AccessLog {
    pub fn parse(text: &str) -> Self {
        let mut statuses = BTreeMap::new();
        for line in text.lines() {
            if let Some(status) = line.split_whitespace().next().and_then(|s| s.parse().ok()) {
                *statuses.entry(status).or_default() += 1;
            }
        }
        Self { statuses }
    }

    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"2026/11/21 18:52:01 [notice] 18371#18371: using the "epoll" event method
2026/11/21 18:52:01 [error] 18373#18373: *3 connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1, server: , request: "GET /?lab=7 HTTP/1.1", upstream: "http://127.0.0.1:9000/?lab=7", host: "why502.lab"
2026/11/21 18:52:01 [crit] 18373#18373: *5 connect() to unix:/tmp/x/missing.sock failed (2: No such file or directory) while connecting to upstream, client: 127.0.0.1, server: , request: "GET /?lab=8 HTTP/1.1", upstream: "http://unix:/tmp/x/missing.sock:/?lab=8", host: "why502.lab"
2026/11/21 18:52:01 [crit] 18373#18373: *6 connect() to 127.0.0.1:9000 failed (99: Cannot assign requested address) while connecting to upstream, client: 127.0.0.2, server: , request: "GET /slow/1500?lab=9 HTTP/1.1", upstream: "http://127.0.0.1:9000/slow/1500?lab=9", host: "why502.lab"
2026/11/21 18:52:01 [error] 18373#18373: *7 connect() to unix:/tmp/x/b.sock failed (11: Resource temporarily unavailable) while connecting to upstream, client: 127.0.0.1, server: , request: "GET /?lab=10 HTTP/1.1", upstream: "http://unix:/tmp/x/b.sock:/?lab=10", host: "why502.lab"
2026/11/21 18:52:03 [error] 18373#18373: *8 upstream timed out (110: Connection timed out) while connecting to upstream, client: 127.0.0.1, server: , request: "GET /?lab=11 HTTP/1.1", upstream: "http://127.0.0.1:9000/?lab=11", host: "why502.lab"
2026/11/21 18:52:03 [error] 18373#18373: *9 upstream timed out (110: Connection timed out) while reading response header from upstream, client: 127.0.0.1, server: , request: "GET /?lab=12 HTTP/1.1", upstream: "http://127.0.0.1:9000/?lab=12", host: "why502.lab"
2026/11/21 18:52:04 [error] 18373#18373: *10 recv() failed (104: Connection reset by peer) while reading response header from upstream, client: 127.0.0.1, server: , request: "POST /?lab=13 HTTP/1.1", upstream: "http://127.0.0.1:9000/?lab=13", host: "why502.lab"
2026/11/21 18:52:04 [error] 18373#18373: *11 upstream prematurely closed connection while reading response header from upstream, client: 127.0.0.1, server: , request: "GET /alloc?lab=14 HTTP/1.1", upstream: "http://127.0.0.1:9000/alloc?lab=14", host: "why502.lab"
2026/11/21 18:52:05 [error] 18373#18373: *12 upstream prematurely closed connection while reading upstream, client: 127.0.0.1, server: , request: "GET /big?lab=15 HTTP/1.1", upstream: "http://127.0.0.1:9000/big?lab=15", host: "why502.lab"
"#;

    #[test]
    fn error_log_lines_become_the_agents_failure_kinds() {
        let log = ErrorLog::parse(LOG);
        let kinds: Vec<(&str, u64)> = log.kinds.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            kinds,
            [
                ("EADDRNOTAVAIL", 1),
                ("EAGAIN", 1),
                ("ECONNREFUSED", 1),
                ("ENOENT", 1),
                ("closed_before_response", 1),
                ("reset", 1),
                ("response_timeout", 1),
                ("timeout", 1)
            ]
        );
        assert_eq!(log.total(), 8);
        assert_eq!(log.requests[&7], "ECONNREFUSED");
        assert_eq!(log.requests[&9], "EADDRNOTAVAIL");
        assert_eq!(log.requests[&11], "timeout");
        assert_eq!(log.requests[&12], "response_timeout");
        assert_eq!(log.requests[&13], "reset");
        assert_eq!(log.requests[&14], "closed_before_response");
        assert_eq!(
            log.other.keys().collect::<Vec<_>>(),
            ["upstream prematurely closed connection while reading upstream"]
        );
    }

    #[test]
    fn access_log_statuses() {
        let log = AccessLog::parse("200 GET \"/?lab=1\" x\n502 GET \"/?lab=2\" x\n502 POST x\n");
        assert_eq!(log.count(502), 2);
        assert_eq!(log.count(200), 1);
        assert_eq!(log.count(504), 0);
    }
}
