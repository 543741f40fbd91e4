//! The Prometheus side of why502, checked with Debian's `prometheus` package: the alert
//! rules pass `promtool check` and their own unit tests, the example config is valid, the
//! Grafana dashboard queries only metrics the agent exports (and is valid PromQL), and a
//! real Prometheus scrapes an exposition of those metrics and evaluates the rules on it.
//! None of this needs the agent or root; `prometheus_scrape.rs` scrapes the real agent.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    path::Path,
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use serde_json::Value;
use why502_e2e::prometheus::{
    deploy_dir, output_text, promtool, promtool_check_metrics, PrometheusServer,
};

/// The metric families the agent registers, by name, with their type: asked of the agent
/// itself (`why502 agent --list-metrics`, which needs neither root nor a kernel), so that
/// a metric added there is held to the dashboard and the rules here without a list to
/// keep. (This crate cannot depend on the agent's: the agent's tests depend on it.)
fn exported() -> &'static BTreeMap<String, String> {
    static FAMILIES: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let out = Command::new(why502_e2e::sibling_binary("why502"))
            .args(["agent", "--list-metrics"])
            .output()
            .expect("run why502 agent --list-metrics");
        assert!(out.status.success(), "{}", output_text(&out));
        let families: BTreeMap<String, String> = String::from_utf8(out.stdout)
            .expect("UTF-8")
            .lines()
            .map(|line| {
                let (name, kind) = line
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("not `name type`: {line:?}"));
                (name.to_owned(), kind.to_owned())
            })
            .collect();
        // A broken listing must not make every check below vacuous.
        assert!(
            families.len() >= 20 && families.values().any(|k| k == "histogram"),
            "{families:?}"
        );
        families
    })
}

/// Whether the family `name` is a histogram (whose series are `<name>_bucket`, `_sum` and
/// `_count`).
fn is_histogram(name: &str) -> bool {
    exported().get(name).is_some_and(|kind| kind == "histogram")
}

const ALERTS: &[&str] = &[
    "Why502UpstreamConnectErrors",
    "Why502IncidentOpen",
    "Why502OomKill",
    "Why502ProbeDetached",
    "Why502EventsDropped",
    "Why502EventsThrottled",
    "Why502ListenQueueFull",
    "Why502AgentDown",
];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// Every `why502_…` metric name in `text` (not the `why502:…` recording rules).
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut at = 0;
    while let Some(found) = text[at..].find("why502_") {
        let start = at + found;
        let mut end = start + "why502_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        let glued = start > 0 && {
            let before = bytes[start - 1];
            before.is_ascii_alphanumeric() || before == b'_' || before == b':'
        };
        if !glued {
            names.insert(text[start..end].to_owned());
        }
        at = end;
    }
    names
}

/// Whether `name` is a series the agent exports: a family of [`exported`], or a
/// histogram's `_bucket`, `_sum` or `_count` (a histogram's bare name has no series).
fn exported_series(name: &str) -> bool {
    family_of(name).is_some()
}

/// The exported family a series name belongs to: itself, or the histogram whose
/// `_bucket`, `_sum` or `_count` it is.
fn family_of(name: &str) -> Option<&'static str> {
    let families = exported();
    if let Some((family, _)) = families.get_key_value(name).filter(|_| !is_histogram(name)) {
        return Some(family);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        is_histogram(base).then(|| families.get_key_value(base).unwrap().0.as_str())
    })
}

#[test]
fn metric_names_are_found_and_checked() {
    let names = metric_names(
        "sum(rate(why502_upstream_connect_duration_seconds_bucket{x=\"why502_no\"}[1m])) \
         / why502:upstream_connects:rate5m + why502_typo_total",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "why502_no",
            "why502_typo_total",
            "why502_upstream_connect_duration_seconds_bucket"
        ]
    );
    assert!(exported_series(
        "why502_upstream_connect_duration_seconds_count"
    ));
    assert!(exported_series("why502_incident_open"));
    assert!(!exported_series("why502_upstream_connect_duration_seconds"));
    assert!(!exported_series("why502_incident_open_count"));
    assert!(!exported_series("why502_typo_total"));
}

#[test]
fn promtool_accepts_the_rules() {
    let dir = deploy_dir("prometheus");
    let rules = dir.join("why502.rules.yml");
    let tests = dir.join("why502.rules.test.yml");

    let out = promtool(&["check", "rules", path_str(&rules)], None);
    assert!(
        out.status.success(),
        "promtool check rules: {}",
        output_text(&out)
    );
    let text = read(&rules);
    for alert in ALERTS {
        assert!(
            text.contains(&format!("- alert: {alert}\n")),
            "{alert} is missing"
        );
    }
    let unknown: Vec<_> = metric_names(&text)
        .into_iter()
        .filter(|name| !exported_series(name))
        .collect();
    assert!(
        unknown.is_empty(),
        "the rules name metrics the agent does not export: {unknown:?}"
    );

    let out = promtool(&["test", "rules", path_str(&tests)], None);
    assert!(
        out.status.success(),
        "promtool test rules: {}",
        output_text(&out)
    );
    let test_text = read(&tests);
    for alert in ALERTS {
        assert!(
            test_text.contains(&format!("alertname: {alert}\n")),
            "{alert} has no unit test"
        );
    }

    // promtool does reject a broken rule …
    let scratch = tempfile::tempdir().expect("temporary directory");
    let broken = text.replace("why502_incident_open == 1", "why502_incident_open ==");
    assert_ne!(broken, text, "the rule to break is gone");
    let broken_file = scratch.path().join("broken.rules.yml");
    std::fs::write(&broken_file, broken).unwrap();
    let out = promtool(&["check", "rules", path_str(&broken_file)], None);
    assert!(
        !out.status.success(),
        "a broken rule passed: {}",
        output_text(&out)
    );

    // … and an expectation the rules do not meet.
    std::fs::write(scratch.path().join("why502.rules.yml"), &text).unwrap();
    let wrong = test_text.replace("a 502 incident is open;", "a 502 incident is closed;");
    assert_ne!(wrong, test_text, "the expectation to break is gone");
    let wrong_file = scratch.path().join("why502.rules.test.yml");
    std::fs::write(&wrong_file, wrong).unwrap();
    let out = promtool(&["test", "rules", path_str(&wrong_file)], None);
    assert!(
        !out.status.success(),
        "a wrong expectation passed: {}",
        output_text(&out)
    );
    assert!(
        output_text(&out).contains("Why502IncidentOpen"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn promtool_check_config() {
    let dir = deploy_dir("prometheus");
    let text = read(&dir.join("prometheus.yml"));
    for expected in [
        "job_name: why502\n",
        "\"127.0.0.1:9502\"",
        "scrape_interval: 15s\n",
    ] {
        assert!(text.contains(expected), "prometheus.yml lacks {expected:?}");
    }
    // Its rule file is relative to its directory; the copy names it absolutely.
    let rules = dir.join("why502.rules.yml").canonicalize().unwrap();
    let copy = text.replace(
        "\n  - why502.rules.yml\n",
        &format!("\n  - {}\n", rules.display()),
    );
    assert_ne!(copy, text, "rule_files no longer lists why502.rules.yml");
    let scratch = tempfile::tempdir().expect("temporary directory");
    let config = scratch.path().join("prometheus.yml");
    std::fs::write(&config, &copy).unwrap();
    let out = promtool(&["check", "config", path_str(&config)], None);
    let said = output_text(&out);
    assert!(out.status.success(), "promtool check config: {said}");
    // Rule files are globs: a path that matches nothing is not an error, so count them.
    assert!(said.contains("1 rule files found"), "{said}");
    assert!(said.contains("12 rules found"), "{said}");

    let broken = copy.replace("scrape_interval: 15s", "scrape_interval: 15 seconds");
    std::fs::write(&config, broken).unwrap();
    let out = promtool(&["check", "config", path_str(&config)], None);
    assert!(
        !out.status.success(),
        "a broken config passed: {}",
        output_text(&out)
    );
}

/// The dashboard's queries: every target's `expr` (by panel title) and every query
/// variable's definition.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(value: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                let title = map.get("title").and_then(Value::as_str).unwrap_or(title);
                if let Some(Value::String(expr)) = map.get("expr") {
                    out.push((title.to_owned(), expr.clone()));
                }
                for (_, v) in map {
                    walk(v, title, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, title, out)),
            _ => {}
        }
    }
    let mut queries = Vec::new();
    walk(&dashboard["panels"], "", &mut queries);
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            let definition = variable["definition"].as_str().unwrap_or_default();
            queries.push((
                format!("${}", variable["name"].as_str().unwrap()),
                definition.to_owned(),
            ));
        }
    }
    queries
}

fn load_dashboard() -> Value {
    let path = deploy_dir("grafana").join("why502.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Non-row panels, including those inside collapsed rows.
fn visual_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            out.extend(panel["panels"].as_array().into_iter().flatten());
        } else {
            out.push(panel);
        }
    }
    out
}

#[test]
fn grafana_dashboard_uses_only_exported_metrics() {
    let dashboard = load_dashboard();
    let queries = dashboard_queries(&dashboard);
    let mut used = BTreeSet::new();
    for (title, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{title}: no why502 metric in {expr:?}");
        for name in names {
            assert!(
                exported_series(&name),
                "{title}: {name} is not a series the agent exports (in {expr:?})"
            );
            used.insert(family_of(&name).unwrap());
        }
    }
    // Every exported metric is on the dashboard somewhere.
    let unused: Vec<_> = exported()
        .keys()
        .filter(|m| !used.contains(m.as_str()))
        .collect();
    assert!(unused.is_empty(), "metrics on no panel: {unused:?}");

    let panels = visual_panels(&dashboard);
    assert!(panels.len() >= 8, "only {} panels", panels.len());
    let top = dashboard["panels"].as_array().unwrap();
    let all: Vec<&Value> = top
        .iter()
        .chain(
            top.iter()
                .flat_map(|p| p["panels"].as_array().into_iter().flatten()),
        )
        .collect();
    let ids: BTreeSet<u64> = all
        .iter()
        .map(|p| p["id"].as_u64().expect("panel id"))
        .collect();
    assert_eq!(ids.len(), all.len(), "panel ids are not unique");
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        for target in targets.unwrap_or_else(|| panic!("{title}: no targets")) {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        }
    }
    // The heatmap reads the histogram's buckets as a heatmap.
    let heatmap = panels
        .iter()
        .find(|p| p["type"] == "heatmap")
        .expect("a heatmap panel");
    let target = &heatmap["targets"][0];
    assert_eq!(target["format"], "heatmap");
    assert!(target["expr"]
        .as_str()
        .unwrap()
        .contains("why502_upstream_connect_duration_seconds_bucket"));

    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    for name in ["DS_PROMETHEUS", "proxy", "upstream"] {
        assert!(
            variables.iter().any(|v| v["name"] == name),
            "no ${name} variable"
        );
    }
    for name in ["proxy", "upstream"] {
        let definition = variables.iter().find(|v| v["name"] == name).unwrap()["definition"]
            .as_str()
            .unwrap();
        assert!(
            definition.starts_with("label_values(") && definition.ends_with(&format!(", {name})")),
            "${name}: {definition}"
        );
    }
}

#[test]
fn grafana_dashboard_queries_are_valid_promql() {
    let dashboard = load_dashboard();
    let variables: Vec<String> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    // Each query, with Grafana's variables filled in, as a recording rule for promtool.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, query)) in dashboard_queries(&dashboard).into_iter().enumerate() {
        let mut expr = query
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m");
        for variable in &variables {
            expr = expr.replace(&format!("${variable}"), ".*");
        }
        if let Some(args) = expr.strip_prefix("label_values(") {
            let (selector, _label) = args
                .strip_suffix(')')
                .and_then(|a| a.rsplit_once(','))
                .unwrap_or_else(|| panic!("{title}: {query}"));
            expr = selector.to_owned();
        }
        assert!(
            !expr.contains('$'),
            "{title}: unknown variable in {query:?}"
        );
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let scratch = tempfile::tempdir().expect("temporary directory");
    let file = scratch.path().join("dashboard.rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = promtool(&["check", "rules", path_str(&file)], None);
    assert!(out.status.success(), "{}\n{rules}", output_text(&out));
}

/// An exposition of every metric, as the agent serves it on GET /metrics.
fn sample_exposition() -> String {
    let mut text = String::new();
    let mut family = |name: &str, kind: &str, help: &str, lines: &[&str]| {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
    };
    let pair = r#"proxy="nginx",upstream="127.0.0.1:9000""#;
    family(
        "why502_upstream_connects_total",
        "counter",
        "Connect attempts from a proxy to an upstream.",
        &[&format!("why502_upstream_connects_total{{{pair}}} 120")],
    );
    family(
        "why502_upstream_connect_errors_total",
        "counter",
        "Failed connects, by errno.",
        &[&format!(
            "why502_upstream_connect_errors_total{{{pair},errno=\"ECONNREFUSED\"}} 20"
        )],
    );
    let mut buckets: Vec<String> = (1..=23)
        .map(|i| {
            let le = f64::from(1u32 << i) / 1e6;
            let count = if i >= 9 { 100 } else { 0 };
            format!("why502_upstream_connect_duration_seconds_bucket{{{pair},le=\"{le}\"}} {count}")
        })
        .collect();
    buckets.push(format!(
        "why502_upstream_connect_duration_seconds_bucket{{{pair},le=\"+Inf\"}} 100"
    ));
    buckets.push(format!(
        "why502_upstream_connect_duration_seconds_sum{{{pair}}} 0.04"
    ));
    buckets.push(format!(
        "why502_upstream_connect_duration_seconds_count{{{pair}}} 100"
    ));
    let buckets: Vec<&str> = buckets.iter().map(String::as_str).collect();
    family(
        "why502_upstream_connect_duration_seconds",
        "histogram",
        "Successful handshake latency.",
        &buckets,
    );
    family(
        "why502_tcp_resets_received_total",
        "counter",
        "RSTs received.",
        &[&format!(
            "why502_tcp_resets_received_total{{{pair},state=\"SYN_SENT\"}} 3"
        )],
    );
    family(
        "why502_tcp_resets_sent_total",
        "counter",
        "RSTs sent.",
        &[&format!(
            "why502_tcp_resets_sent_total{{{pair},state=\"ESTABLISHED\"}} 1"
        )],
    );
    family(
        "why502_tcp_syn_retransmits_total",
        "counter",
        "SYN retransmits.",
        &[&format!("why502_tcp_syn_retransmits_total{{{pair}}} 0")],
    );
    family(
        "why502_process_exits_total",
        "counter",
        "Process exits by reason.",
        &["why502_process_exits_total{service=\"api.service\",reason=\"SIGSEGV\"} 1"],
    );
    family(
        "why502_oom_kills_total",
        "counter",
        "OOM kills.",
        &["why502_oom_kills_total{service=\"api.service\"} 1"],
    );
    family(
        "why502_listen_overflows_total",
        "counter",
        "TcpExt ListenOverflows.",
        &["why502_listen_overflows_total 0"],
    );
    family(
        "why502_listen_drops_total",
        "counter",
        "TcpExt ListenDrops.",
        &["why502_listen_drops_total 0"],
    );
    family(
        "why502_memory_pressure_stall_seconds_total",
        "counter",
        "Host memory PSI.",
        &[
            "why502_memory_pressure_stall_seconds_total{kind=\"some\"} 1.5",
            "why502_memory_pressure_stall_seconds_total{kind=\"full\"} 0.5",
        ],
    );
    family("why502_service_memory_pressure_stall_seconds_total", "counter", "Service memory PSI.",
        &["why502_service_memory_pressure_stall_seconds_total{service=\"api.service\",kind=\"some\"} 0.25"]);
    family(
        "why502_incidents_total",
        "counter",
        "Incidents by cause.",
        &["why502_incidents_total{cause=\"crash\",confidence=\"high\"} 1"],
    );
    family(
        "why502_events_total",
        "counter",
        "Events by kind.",
        &["why502_events_total{kind=\"tcp_connect_failure\"} 20"],
    );
    family(
        "why502_ringbuf_dropped_events_total",
        "counter",
        "Events lost in the ring buffer.",
        &["why502_ringbuf_dropped_events_total{kind=\"tcp_connect_failure\"} 0"],
    );
    family(
        "why502_kernel_events_throttled_total",
        "counter",
        "Events the kernel refused over a process's budget.",
        &["why502_kernel_events_throttled_total{kind=\"listen_call\"} 0"],
    );
    family(
        "why502_probe_errors_total",
        "counter",
        "Probe errors.",
        &["why502_probe_errors_total{probe=\"mark_victim\"} 0"],
    );
    family(
        "why502_kernel_table_full_total",
        "counter",
        "Inserts a full kernel table refused.",
        &["why502_kernel_table_full_total{table=\"tracked_connects\"} 0"],
    );
    family(
        "why502_listener_queue_depth",
        "gauge",
        "Accept queue depth.",
        &["why502_listener_queue_depth{service=\"api.service\",endpoint=\"127.0.0.1:9000\"} 128"],
    );
    family("why502_listener_queue_backlog", "gauge", "Accept queue size.",
        &["why502_listener_queue_backlog{service=\"api.service\",endpoint=\"127.0.0.1:9000\"} 128"]);
    family(
        "why502_service_memory_usage_bytes",
        "gauge",
        "Memory charged to the service's cgroup.",
        &["why502_service_memory_usage_bytes{service=\"api.service\"} 6.7108864e+07"],
    );
    family(
        "why502_service_memory_limit_bytes",
        "gauge",
        "The cgroup's memory limit.",
        &["why502_service_memory_limit_bytes{service=\"api.service\"} 6.7108864e+07"],
    );
    family(
        "why502_incident_open",
        "gauge",
        "1 while an incident is open.",
        &[&format!("why502_incident_open{{{pair}}} 1")],
    );
    family(
        "why502_probe_attached",
        "gauge",
        "1 if the probe is attached.",
        &[
            "why502_probe_attached{probe=\"tcp_send_reset\"} 1",
            "why502_probe_attached{probe=\"mark_victim\"} 0",
        ],
    );
    family(
        "why502_upstream_request_errors_total",
        "counter",
        "Requests whose upstream connection ended without an answer.",
        &[&format!(
            "why502_upstream_request_errors_total{{{pair},kind=\"response_timeout\"}} 2"
        )],
    );
    family(
        "why502_http_responses_total",
        "counter",
        "Responses the proxy wrote to its clients, by status code.",
        &[
            "why502_http_responses_total{proxy=\"nginx\",code=\"200\"} 100",
            "why502_http_responses_total{proxy=\"nginx\",code=\"502\"} 20",
        ],
    );
    family(
        "why502_service_memory_events_total",
        "counter",
        "Memory events of a listening service's cgroup.",
        &["why502_service_memory_events_total{service=\"api.service\",event=\"oom_kill\"} 1"],
    );
    family(
        "why502_metric_label_values_folded_total",
        "counter",
        "Label values folded into other because of the configured caps.",
        &["why502_metric_label_values_folded_total{label=\"upstream\"} 0"],
    );
    family(
        "why502_store_persistent",
        "gauge",
        "1 when incidents are kept in the store's file.",
        &["why502_store_persistent 1"],
    );
    family(
        "why502_store_write_errors_total",
        "counter",
        "Incident saves the store refused.",
        &["why502_store_write_errors_total 0"],
    );
    family(
        "why502_store_dropped_writes_total",
        "counter",
        "Incident saves dropped because the store could not keep up.",
        &["why502_store_dropped_writes_total 0"],
    );
    family(
        "why502_conntrack_lookups_total",
        "counter",
        "Lookups of a failed connection's real destination in the host's conntrack, by result.",
        &[
            "why502_conntrack_lookups_total{result=\"dnat\"} 3",
            "why502_conntrack_lookups_total{result=\"no_entry\"} 1",
        ],
    );
    family(
        "why502_listener_table_refused_total",
        "counter",
        "New listeners the correlation's listener table refused.",
        &["why502_listener_table_refused_total 0"],
    );
    family(
        "why502_build_info",
        "gauge",
        "The agent's version.",
        &["why502_build_info{version=\"0.1.0\"} 1"],
    );
    text
}

#[test]
fn promtool_check_metrics_lints_an_exposition() {
    let text = sample_exposition();
    promtool_check_metrics(&text).unwrap();
    // Every family, each with the type the agent gives it.
    for (name, kind) in exported() {
        assert!(
            text.contains(&format!("\n# TYPE {name} {kind}\n")),
            "the sample lacks {name} ({kind})"
        );
    }
    let names: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let unknown: Vec<_> = names
        .iter()
        .filter(|n| !exported().contains_key(**n))
        .collect();
    assert!(
        unknown.is_empty(),
        "the sample has families the agent does not: {unknown:?}"
    );
    // A counter without `_total` and a family without help: lint errors.
    let err =
        promtool_check_metrics("# TYPE why502_events counter\nwhy502_events 1\n").unwrap_err();
    assert!(err.contains("why502_events"), "{err}");
    // Not an exposition at all.
    assert!(promtool_check_metrics("why502_events_total{kind=} x\n").is_err());
}

/// Serves `body` on `GET /metrics` from a thread, for the life of the test binary.
fn serve_metrics(body: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn prometheus_scrapes_the_exposition_and_evaluates_the_rules() {
    let target = serve_metrics(sample_exposition());
    let rules = deploy_dir("prometheus").join("why502.rules.yml");
    let prometheus = PrometheusServer::start_with_rules(target, &[&rules]);

    let limit = Duration::from_secs(20);
    prometheus.wait_for_value(r#"up{job="why502"}"#, limit, |v| v == Some(1.0));
    let errors = prometheus.wait_for_value(
        r#"sum(why502_upstream_connect_errors_total{upstream="127.0.0.1:9000",errno="ECONNREFUSED"})"#,
        limit,
        |v| v.is_some(),
    );
    assert_eq!(errors, Some(20.0));
    let buckets = prometheus.query_vector("why502_upstream_connect_duration_seconds_bucket");
    assert_eq!(buckets.len(), 24, "{buckets:?}");
    assert!(
        buckets.iter().any(|(labels, _)| labels["le"] == "8.388608"),
        "{buckets:?}"
    );

    // The alerts whose conditions hold in the sample go pending at the first evaluations.
    for alert in ["Why502IncidentOpen", "Why502ListenQueueFull"] {
        prometheus.wait_for_value(
            &format!(r#"count(ALERTS{{alertname="{alert}"}})"#),
            limit,
            |v| v == Some(1.0),
        );
    }
    let pending = prometheus.query_vector(r#"ALERTS{alertname="Why502IncidentOpen"}"#);
    assert_eq!(pending[0].0["proxy"], "nginx");
    assert_eq!(pending[0].0["upstream"], "127.0.0.1:9000");
    assert_eq!(pending[0].0["severity"], "page");

    // Every rule evaluates without error against real series (once evaluated at all: a
    // rule after the alerts in the group may not have been yet).
    let groups = prometheus.wait_for_rules_evaluated(limit);
    let rules = groups["data"]["groups"][0]["rules"]
        .as_array()
        .expect("rules");
    assert_eq!(rules.len(), 12, "{groups}");
    for rule in rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
}
