//! Reading the agent's `/metrics`: the Prometheus text format, just enough of it.

use std::net::SocketAddr;

/// The exposition served at `addr`, if it answers 200.
pub fn scrape(addr: SocketAddr) -> Option<String> {
    match crate::prometheus::http_get(addr, "/metrics") {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// The sum of the samples of `name` whose labels include all of `labels`; `None` if no
/// sample matches.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let Some((series, value)) = sample(line) else {
            continue;
        };
        let (metric, series_labels) = match series.split_once('{') {
            Some((metric, rest)) => (metric, parse_labels(rest.trim_end_matches('}'))),
            None => (series, Vec::new()),
        };
        if metric != name {
            continue;
        }
        let matches = labels
            .iter()
            .all(|(k, v)| series_labels.iter().any(|(sk, sv)| sk == k && sv == v));
        if matches {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// `name{labels} value [timestamp]` → (`name{labels}`, value).
fn sample(line: &str) -> Option<(&str, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    // Label values may contain spaces: the series ends at the closing brace if any.
    let series_end = match line.find('{') {
        Some(_) => line.rfind('}')? + 1,
        None => line.find(char::is_whitespace)?,
    };
    let (series, rest) = line.split_at(series_end);
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((series, value))
}

/// `a="x",b="y \"z\""` → [(a, x), (b, y "z")].
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key.trim().to_string(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_matching_series() {
        let text = r#"# HELP why502_http_responses_total HTTP responses.
# TYPE why502_http_responses_total counter
why502_http_responses_total{proxy="nginx",code="502"} 7
why502_http_responses_total{code="502",proxy="nginx",service="a b"} 3
why502_http_responses_total{proxy="haproxy",code="502"} 100
why502_http_responses_total{proxy="nginx",code="504"} 2 1700000000000
why502_http_responses_totalx{proxy="nginx",code="502"} 1000
why502_build_info{version="0.1.0"} 1
up 1
"#;
        let nginx = |code| {
            sum(
                text,
                "why502_http_responses_total",
                &[("proxy", "nginx"), ("code", code)],
            )
        };
        assert_eq!(nginx("502"), Some(10.0));
        assert_eq!(nginx("504"), Some(2.0));
        assert_eq!(nginx("503"), None);
        assert_eq!(sum(text, "up", &[]), Some(1.0));
        assert_eq!(
            parse_labels(r#"a="x \"q\"",b="y""#),
            [("a".into(), "x \"q\"".into()), ("b".into(), "y".into())]
        );
    }
}
