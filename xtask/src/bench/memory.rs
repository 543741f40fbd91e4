//! Memory: the agent's RSS at rest, and after a churn of distinct upstream endpoints and
//! short-lived processes, in two equal rounds so that growth in the second shows; and
//! the kernel memory of its BPF maps.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::agent::Agent;
use super::process::{self, BpfFds, Guard};
use super::storm;
use super::Ctx;

/// Distinct endpoints: 127.1.0.0 onwards × these ports (closed: above the ephemeral range).
const ENDPOINT_ADDR: [u8; 4] = [127, 1, 0, 0];
pub const ENDPOINT_PORT: u16 = 63000;
pub const ENDPOINT_PORTS: u16 = 1000;
/// Distinct endpoints per second: a pace the correlation engine keeps up with on the
/// reference machine, so that the memory measured is that of endpoints it did see.
pub const ENDPOINT_RATE: u64 = 30_000;
/// How long the agent is left alone before a sample.
const SETTLE: Duration = Duration::from_secs(3);

pub struct Rest {
    pub rss: u64,
    pub bpf: BpfFds,
}

pub fn at_rest(agent: &Agent) -> Result<Rest> {
    process::sleep(SETTLE)?;
    Ok(Rest {
        rss: process::rss(agent.pid)?,
        bpf: process::bpf_fds(agent.pid)?,
    })
}

pub struct Round {
    pub endpoints: Value,
    pub forks: Value,
    /// RSS after the round and a settle.
    pub rss: u64,
    pub dropped: u64,
    pub records: u64,
    /// Events skipped by bus subscribers that fell behind.
    pub lagged: BTreeMap<String, u64>,
}

pub struct Churn {
    pub rounds: Vec<Round>,
    /// RSS a few seconds after the last round.
    pub rss_later: u64,
    pub bpf: BpfFds,
}

impl Churn {
    pub fn endpoints(&self) -> u64 {
        self.rounds
            .iter()
            .map(|r| r.endpoints["refused"].as_u64().unwrap_or(0))
            .sum()
    }

    pub fn processes(&self) -> u64 {
        self.rounds
            .iter()
            .map(|r| r.forks["exited_1"].as_u64().unwrap_or(0))
            .sum()
    }

    /// RSS growth over the second round, as a fraction of the RSS after the first.
    pub fn second_round_growth(&self) -> f64 {
        match self.rounds.as_slice() {
            [first, .., _] => self.rss_later as f64 / first.rss as f64 - 1.0,
            _ => f64::NAN,
        }
    }

    /// Events skipped by bus subscribers over both rounds.
    pub fn lagged(&self) -> u64 {
        self.rounds.iter().flat_map(|r| r.lagged.values()).sum()
    }

    pub fn rss_max(&self) -> u64 {
        self.rounds
            .iter()
            .map(|r| r.rss)
            .chain([self.rss_later])
            .max()
            .unwrap_or(0)
    }
}

pub fn churn(ctx: &Ctx, agent: &mut Agent) -> Result<Churn> {
    let hosts_per_round = ctx.plan.endpoint_hosts / 2;
    let forks_per_round = ctx.plan.forks / 2;
    let mut rounds = Vec::new();
    for round in 0..2u32 {
        println!(
            "==> churn round {}/2: {} distinct endpoints, {} processes",
            round + 1,
            u64::from(hosts_per_round) * u64::from(ENDPOINT_PORTS),
            forks_per_round
        );
        let s0 = agent.status()?;
        let lag0 = agent.lagged();
        let first = u32::from_be_bytes(ENDPOINT_ADDR) + round * hosts_per_round;
        let args: Vec<String> = [
            "--addr".to_string(),
            std::net::Ipv4Addr::from(first).to_string(),
            "--hosts".into(),
            hosts_per_round.to_string(),
            "--port".into(),
            ENDPOINT_PORT.to_string(),
            "--ports".into(),
            ENDPOINT_PORTS.to_string(),
            "--once".into(),
            "--rate".into(),
            ENDPOINT_RATE.to_string(),
            "--duration".into(),
            "90".into(),
        ]
        .into();
        let endpoints = storm::finish(storm::spawn_refuse(ctx, &args)?, Duration::from_secs(90))?;
        let forks = fork(ctx, forks_per_round)?;
        process::sleep(SETTLE)?;
        let s1 = agent.status()?;
        agent.check_running()?;
        let rss = process::rss(agent.pid)?;
        println!(
            "    {:.0} endpoints/s, {:.0} processes/s; agent RSS {:.1} MiB",
            endpoints.rate(),
            forks["rate_per_s"].as_f64().unwrap_or(0.0),
            mib(rss)
        );
        rounds.push(Round {
            endpoints: endpoints.raw,
            forks,
            rss,
            dropped: s1.dropped_total() - s0.dropped_total(),
            records: s1.records - s0.records,
            lagged: super::agent::lag_delta(&lag0, &agent.lagged()),
        });
    }
    process::sleep(SETTLE + Duration::from_secs(2))?;
    Ok(Churn {
        rounds,
        rss_later: process::rss(agent.pid)?,
        bpf: process::bpf_fds(agent.pid)?,
    })
}

fn fork(ctx: &Ctx, count: u64) -> Result<Value> {
    let mut cmd = Command::new(&ctx.generator);
    cmd.args(["fork", "--count", &count.to_string(), "--duration", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let guard = Guard::spawn("why502-bench fork", &mut cmd, libc::SIGKILL)?;
    let output = process::wait_stdout(guard, Duration::from_secs(90))?;
    serde_json::from_str(output.trim()).context("fork generator output")
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn bpf_json(bpf: &BpfFds) -> Value {
    json!({
        "maps": bpf.maps,
        "map_memlock_bytes": bpf.map_memlock,
        "progs": bpf.progs,
        "prog_memlock_bytes": bpf.prog_memlock,
    })
}

impl Churn {
    pub fn to_json(&self) -> Value {
        json!({
            "rounds": self.rounds.iter().map(|r| json!({
                "endpoints": r.endpoints,
                "processes": r.forks,
                "rss_bytes": r.rss,
                "agent_records": r.records,
                "dropped": r.dropped,
                "events_skipped_by_bus_subscribers": r.lagged,
            })).collect::<Vec<_>>(),
            "distinct_endpoints": self.endpoints(),
            "processes": self.processes(),
            "rss_later_bytes": self.rss_later,
            "second_round_growth": self.second_round_growth(),
            "bpf_after": bpf_json(&self.bpf),
        })
    }
}
