//! One wrk run (`wrk --latency`) and what it printed.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::process;

/// Load shape: threads, connections, seconds.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub threads: u32,
    pub connections: u32,
    pub seconds: u32,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct WrkResult {
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Socket errors plus non-2xx/3xx responses.
    pub errors: u64,
}

pub fn run(addr: SocketAddr, load: Load) -> Result<WrkResult> {
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address");
    }
    let output = process::run_bounded(
        "wrk",
        Command::new("wrk")
            .arg(format!("-t{}", load.threads))
            .arg(format!("-c{}", load.connections))
            .arg(format!("-d{}s", load.seconds))
            .arg("--latency")
            .arg(format!("http://{addr}/")),
        Duration::from_secs(u64::from(load.seconds) + 30),
    )?;
    parse(&output.stdout).with_context(|| format!("unexpected wrk output:\n{}", output.stdout))
}

fn parse(text: &str) -> Result<WrkResult> {
    let mut result = WrkResult::default();
    let mut rps = None;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", value] => rps = Some(value.parse::<f64>()?),
            ["50%", value] => result.p50_ms = millis(value)?,
            ["99%", value] => result.p99_ms = millis(value)?,
            [n, "requests", "in", ..] => result.requests = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => result.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                for pair in rest.chunks(2) {
                    if let [_, n] = pair {
                        result.errors += n.trim_end_matches(',').parse::<u64>()?;
                    }
                }
            }
            _ => {}
        }
    }
    result.requests_per_s = rps.context("no Requests/sec line")?;
    if result.p99_ms == 0.0 {
        bail!("no latency distribution");
    }
    Ok(result)
}

/// wrk's durations: `812.00us`, `1.20ms`, `1.01s`, `2.00m`.
fn millis(text: &str) -> Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .context("duration without a unit")?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse()?;
    Ok(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        other => bail!("unknown duration unit {other:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 10s test @ http://127.0.0.1:8080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.01ms    1.23ms  30.12ms   85.12%
    Req/Sec    16.32k     1.23k   20.01k    70.00%
  Latency Distribution
     50%  812.00us
     75%    2.40ms
     90%    3.10ms
     99%    1.02s
  325012 requests in 10.00s, 50.12MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 12
Requests/sec:  32500.12
Transfer/sec:      5.01MB
";
        let r = parse(text).unwrap();
        assert_eq!(r.requests_per_s, 32500.12);
        assert_eq!(r.p50_ms, 0.812);
        assert_eq!(r.p99_ms, 1020.0);
        assert_eq!(r.requests, 325012);
        assert_eq!(r.errors, 18);
    }
}
