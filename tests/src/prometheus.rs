//! Prometheus (Debian's package: `prometheus` and `promtool`) for the tests of the metrics
//! endpoint, the alert rules and the dashboard: a real server scraping one target from a
//! temporary directory, queried over a plain HTTP/1.1 client; and `promtool` itself.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";

/// Panics with how to get `binary` if it is missing.
fn require(binary: &str) {
    assert!(
        Path::new(binary).exists(),
        "{binary} is missing: `cargo xtask test` installs the Debian package `prometheus` \
         (or: apt-get install prometheus)"
    );
}

/// The repository's `deploy/prometheus/` (or `deploy/grafana/`, …): `deploy/<name>`.
pub fn deploy_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .join("deploy")
        .join(name)
}

/// Runs `promtool ARGS`, with `stdin` on its standard input.
pub fn promtool(args: &[&str], stdin: Option<&str>) -> Output {
    require(PROMTOOL);
    let mut child = Command::new(PROMTOOL)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        // A writer thread: promtool may answer (and fill its pipes) before reading it all.
        let text = text.to_owned();
        let writer = std::thread::spawn(move || pipe.write_all(text.as_bytes()));
        let out = child.wait_with_output().expect("wait for promtool");
        // promtool may exit without reading everything (a parse error); that is its answer.
        let _ = writer.join();
        return out;
    }
    child.wait_with_output().expect("wait for promtool")
}

/// promtool's stdout and stderr, for messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `promtool check metrics` on an exposition (the text of `GET /metrics`): Ok if it parses
/// and passes promtool's lint (help texts, `_total` on counters, base units, …).
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let out = promtool(&["check", "metrics"], Some(text));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics ({}): {}",
            out.status,
            output_text(&out)
        ))
    }
}

/// A Prometheus server of the test's own: scrapes one target (job `why502`) every second
/// and evaluates rules every second; its TSDB lives in a temporary directory. Killed on drop.
pub struct PrometheusServer {
    child: Child,
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `scrape_target` and waits until it is ready.
    pub fn start(scrape_target: SocketAddr) -> Self {
        Self::start_with_rules(scrape_target, &[])
    }

    /// Starts Prometheus scraping `scrape_target` and evaluating `rule_files`.
    pub fn start_with_rules(scrape_target: SocketAddr, rule_files: &[&Path]) -> Self {
        require(PROMETHEUS);
        let dir = tempfile::tempdir().expect("temporary directory");
        let rules: String = rule_files
            .iter()
            .map(|p| {
                let p = p
                    .canonicalize()
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                format!("  - {:?}\n", p.display().to_string())
            })
            .collect();
        let config = format!(
            "global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:{}
scrape_configs:
  - job_name: why502
    static_configs:
      - targets: [\"{scrape_target}\"]
",
            if rules.is_empty() {
                " []\n".to_owned()
            } else {
                format!("\n{rules}")
            }
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let addr: SocketAddr = ([127, 0, 0, 1], crate::free_port()).into();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut server = Self { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready on {addr}:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Prometheus's own log, for messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` on this server; panics unless it answers 200 with JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = http_get(self.addr, path)
            .unwrap_or_else(|e| panic!("GET {path} on prometheus: {e}\n{}", self.log()));
        assert_eq!(status, 200, "GET {path} on prometheus: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }

    /// An instant query (`/api/v1/query`) now; the whole response, whose `status` is
    /// "success" (anything else panics: a test's query is wrong).
    pub fn query(&self, promql: &str) -> Value {
        let response = self.get_json(&format!("/api/v1/query?query={}", url_encode(promql)));
        assert_eq!(response["status"], "success", "{promql}: {response}");
        response
    }

    /// The samples of an instant vector query: (labels, value) each.
    pub fn query_vector(&self, promql: &str) -> Vec<(Value, f64)> {
        let response = self.query(promql);
        assert_eq!(
            response["data"]["resultType"], "vector",
            "{promql}: {response}"
        );
        response["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sample| {
                let value = sample["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{promql}: not a sample: {sample}"));
                (sample["metric"].clone(), value)
            })
            .collect()
    }

    /// The value of a query that yields at most one sample (None: no sample).
    pub fn query_value(&self, promql: &str) -> Option<f64> {
        let samples = self.query_vector(promql);
        assert!(
            samples.len() <= 1,
            "{promql}: more than one sample: {samples:?}"
        );
        samples.first().map(|(_, v)| *v)
    }

    /// Polls `query_value(promql)` until `done` accepts it; panics after `limit` with the
    /// last value and Prometheus's view of the target.
    pub fn wait_for_value(
        &self,
        promql: &str,
        limit: Duration,
        done: impl Fn(Option<f64>) -> bool,
    ) -> Option<f64> {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.query_value(promql);
            if done(value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{promql} is still {value:?} after {limit:?}; targets: {}",
                self.get_json("/api/v1/targets")["data"]["activeTargets"]
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `GET /api/v1/rules` once every rule has been evaluated at least once (its `health`
    /// is `unknown` until then, and says nothing); panics after `limit` with the rules.
    pub fn wait_for_rules_evaluated(&self, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let groups = self.get_json("/api/v1/rules");
            let evaluated = groups["data"]["groups"]
                .as_array()
                .expect("rule groups")
                .iter()
                .flat_map(|group| group["rules"].as_array().expect("rules"))
                .all(|rule| rule["health"] != "unknown");
            if evaluated {
                return groups;
            }
            assert!(
                Instant::now() < deadline,
                "rules still not evaluated after {limit:?}: {groups}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `GET path` over HTTP/1.1 (one request, `Connection: close`); the status and the body
/// (de-chunked).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    parse_response(&response)
}

fn bad(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// An HTTP/1.1 response: its status and its body (by Content-Length, chunks, or to the end).
pub(crate) fn parse_response(response: &[u8]) -> std::io::Result<(u16, String)> {
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            bad(format!(
                "no end of headers: {:?}",
                String::from_utf8_lossy(response)
            ))
        })?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad(format!("not an HTTP status line: {status_line:?}")))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|e| bad(format!("Content-Length {value:?}: {e}")))?,
            );
        }
    }
    let raw = &response[head_end + 4..];
    let body = if chunked {
        dechunk(raw)?
    } else if let Some(length) = length {
        raw.get(..length)
            .ok_or_else(|| bad(format!("body shorter than Content-Length {length}")))?
            .to_vec()
    } else {
        raw.to_vec()
    };
    let body = String::from_utf8(body).map_err(|e| bad(format!("body is not UTF-8: {e}")))?;
    Ok((status, body))
}

fn dechunk(mut raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("truncated chunk size".to_owned()))?;
        let size_line = String::from_utf8_lossy(&raw[..line_end]);
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|e| bad(format!("chunk size {size_hex:?}: {e}")))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = raw
            .get(..size)
            .ok_or_else(|| bad(format!("truncated chunk of {size} bytes")))?;
        body.extend_from_slice(chunk);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_keeps_only_unreserved_characters() {
        assert_eq!(
            url_encode(r#"sum(x{a="b c",d=~"1.2:9"}[1m]) > 0.5"#),
            "sum%28x%7Ba%3D%22b%20c%22%2Cd%3D~%221.2%3A9%22%7D%5B1m%5D%29%20%3E%200.5"
        );
        assert_eq!(url_encode("→"), "%E2%86%92");
    }

    #[test]
    fn responses_with_length_or_chunks() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(plain).unwrap(), (200, "hello".to_owned()));
        let chunked =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (503, "abcdefg".to_owned())
        );
        assert!(parse_response(b"garbage").is_err());
    }
}
