//! A port scan cannot explode the series count: 10,000 distinct refused upstreams stay
//! within the `upstream` label cap, folded into `other`, with nothing lost.

mod common;

use std::{
    net::TcpStream,
    time::{Duration, Instant},
};

use common::{harness_with, sample};

#[test]
fn ten_thousand_closed_ports_stay_under_the_cap() {
    // The default caps: they are what this test is about.
    let Some(h) = harness_with(|_| {}) else {
        return;
    };
    // 127.0.0.3: a loopback address nobody binds to specifically; count only refusals
    // (a wildcard listener on one of these ports would accept).
    let mut refused = 0u64;
    for port in 40_000..50_000u16 {
        match TcpStream::connect(("127.0.0.3", port)) {
            Err(err) if err.raw_os_error() == Some(libc::ECONNREFUSED) => refused += 1,
            _ => {}
        }
    }
    assert!(refused > 9_900, "{refused}");
    // Only this process's series: other processes on the host fail connects too.
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    let mine = format!("proxy=\"{}\"", comm.trim());
    let ours =
        |l: &&str| l.starts_with("why502_upstream_connect_errors_total{") && l.contains(&mine);
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = h.scrape();
        let total: f64 = text
            .lines()
            .filter(ours)
            .filter(|l| l.contains("127.0.0.3:") || l.contains("upstream=\"other\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if total >= refused as f64 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let cap = why502::config::Config::default().metrics.max_upstreams;
    // Every upstream label of every series shares the one cap: its first-come pool holds
    // exactly `cap` names, whoever on the host took them, since this test alone brought
    // 10,000; the second pool, as large, only favoured ones (a known proxy's upstream, an
    // incident's: host noise here, none of this test's).
    let mut upstreams: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let start = l.find("upstream=\"")? + "upstream=\"".len();
            Some(&l[start..start + l[start..].find('"')?])
        })
        .collect();
    assert!(upstreams.remove("other"), "no upstream folded into other");
    assert!(
        (cap..=2 * cap).contains(&upstreams.len()),
        "{} names: {upstreams:?}",
        upstreams.len()
    );
    let series = text.lines().filter(ours).count();
    assert!(series <= cap + 1, "{series} series of connect errors");
    let all_series = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(all_series < 1000, "{all_series} series in all");
    let other = sample(
        &text,
        "why502_upstream_connect_errors_total",
        &[
            ("proxy", comm.trim()),
            ("upstream", "other"),
            ("errno", "ECONNREFUSED"),
        ],
    )
    .unwrap_or(0.0);
    let named: f64 = text
        .lines()
        .filter(ours)
        .filter(|l| l.contains("127.0.0.3:"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        named + other,
        refused as f64,
        "nothing lost: {named} named + {other} other"
    );
    // One refused connect per port: at most `cap` of them named, one each.
    assert!(named <= cap as f64, "{named} named");
    assert!(other >= (refused as usize - cap) as f64, "{other} other");
    // Each of this test's folded connects was counted as a fold (other processes' folds,
    // and the kernel's successes to folded upstreams, may add to it).
    let folded = sample(
        &text,
        "why502_metric_label_values_folded_total",
        &[("label", "upstream")],
    )
    .unwrap_or(0.0);
    assert!(
        folded >= other,
        "{folded} folds for {other} folded failures"
    );
}
