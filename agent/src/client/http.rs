//! The agent's API as the CLI (and tests) call it: HTTP/1.1 GETs over the unix socket, one
//! connection per request.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use http_body_util::{BodyExt, Empty};
use hyper::{body::Bytes, header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::UnixStream;

use super::ClientError;
use crate::{model::incident::Incident, sinks::api::StatusReport};

/// Longer than any answer of a healthy agent takes; a hung one must not hang the CLI.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Which incidents to ask for: the API's query parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncidentQuery {
    /// `1h`, `30m`, or an RFC 3339 time.
    pub since: Option<String>,
    pub upstream: Option<String>,
    pub proxy: Option<String>,
    pub limit: Option<usize>,
}

pub struct ApiClient {
    socket: PathBuf,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path` (with its query string): the status and the JSON body.
    pub async fn get(&self, path: &str) -> Result<(StatusCode, Value), ClientError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.get_unbounded(path))
            .await
            .map_err(|_| ClientError::Timeout {
                socket: self.socket.clone(),
            })?
    }

    async fn get_unbounded(&self, path: &str) -> Result<(StatusCode, Value), ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|err| ClientError::connect(&self.socket, err))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ClientError::Http { source })?;
        // The connection is driven by its own task; it ends when `sender` is dropped.
        let driver = tokio::spawn(connection);
        let request = Request::get(path)
            .header(header::HOST, "localhost")
            .header(header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|source| ClientError::Request {
                path: path.into(),
                source,
            })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| ClientError::Http { source })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|source| ClientError::Http { source })?
            .to_bytes();
        drop(sender);
        driver.abort();
        let json = serde_json::from_slice(&body).map_err(|source| ClientError::BadResponse {
            path: path.into(),
            source,
        })?;
        Ok((status, json))
    }

    /// `GET path`, a success status expected, the body as `T`.
    async fn get_ok<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, body) = self.get(path).await?;
        if !status.is_success() {
            return Err(ClientError::api(status, &body));
        }
        serde_json::from_value(body).map_err(|source| ClientError::BadResponse {
            path: path.into(),
            source,
        })
    }

    pub async fn incidents(&self, query: &IncidentQuery) -> Result<Vec<Incident>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Incidents {
            incidents: Vec<Incident>,
        }
        let limit = query.limit.map(|l| l.to_string());
        let params = [
            ("since", query.since.as_deref()),
            ("upstream", query.upstream.as_deref()),
            ("proxy", query.proxy.as_deref()),
            ("limit", limit.as_deref()),
        ];
        let path = format!("/v1/incidents{}", query_string(&params));
        Ok(self.get_ok::<Incidents>(&path).await?.incidents)
    }

    /// Incident `id`; [`ClientError::NoSuchIncident`] when the agent has none.
    pub async fn incident(&self, id: u64) -> Result<Incident, ClientError> {
        match self.get_ok(&format!("/v1/incidents/{id}")).await {
            Err(ClientError::Api { status: 404, .. }) => Err(ClientError::NoSuchIncident { id }),
            other => other,
        }
    }

    /// The newest incident; [`ClientError::NoIncidents`] when there is none.
    pub async fn last_incident(&self) -> Result<Incident, ClientError> {
        let query = IncidentQuery {
            limit: Some(1),
            ..IncidentQuery::default()
        };
        let newest = self.incidents(&query).await?.into_iter().next();
        newest.ok_or(ClientError::NoIncidents)
    }

    /// Recent events (as the API's JSON: the agent's event types only serialize).
    pub async fn events(
        &self,
        since: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<Value>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Events {
            events: Vec<Value>,
        }
        let limit = limit.map(|l| l.to_string());
        let params = [("since", since), ("limit", limit.as_deref())];
        let path = format!("/v1/events{}", query_string(&params));
        Ok(self.get_ok::<Events>(&path).await?.events)
    }

    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        self.get_ok("/v1/status").await
    }
}

/// `?a=1&b=x%2Fy` from the given parameters, or nothing.
fn query_string(params: &[(&str, Option<&str>)]) -> String {
    let pairs: Vec<String> = params
        .iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}={}", percent_encode(v))))
        .collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

/// Everything but RFC 3986's unreserved characters, percent-encoded.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(query_string(&[("a", None)]), "");
        assert_eq!(
            query_string(&[
                ("upstream", Some("unix:/run/php fpm.sock")),
                ("proxy", None),
                ("since", Some("2026-11-21T15:02:03+01:00")),
            ]),
            "?upstream=unix%3A%2Frun%2Fphp%20fpm.sock&since=2026-11-21T15%3A02%3A03%2B01%3A00"
        );
    }
}
