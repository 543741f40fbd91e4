//! The API's routes. Every answer is JSON, errors included: `{"error": "…"}`, naming the
//! query parameter at fault.

use std::{collections::HashMap, time::SystemTime};

use axum::{
    extract::{
        rejection::{PathRejection, QueryRejection},
        Path, Query, State,
    },
    http::{Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::{json, Value};

use super::{since::parse_since, ApiState, EventCut, RECENT_CAPACITY};
use crate::sinks::store::{IncidentFilter, DEFAULT_LIMIT, MAX_LIMIT};

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/incidents", get(list_incidents))
        .route("/v1/incidents/{id}", get(get_incident))
        .route("/v1/events", get(list_events))
        .route("/v1/status", get(status))
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// An error answer.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn bad_request(message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }

    fn internal(message: String) -> Self {
        log::warn!("API: {message}");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message,
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type Answer = Result<Json<Value>, Failure>;
type RawQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The query parameters, each known and given at most once.
fn params(query: RawQuery, known: &[&str]) -> Result<HashMap<String, String>, Failure> {
    let Query(pairs) = query.map_err(|err| Failure::bad_request(err.body_text()))?;
    let mut params = HashMap::new();
    for (name, value) in pairs {
        if !known.contains(&name.as_str()) {
            return Err(Failure::bad_request(format!(
                "unknown parameter {name:?} (known: {})",
                known.join(", ")
            )));
        }
        if params.contains_key(&name) {
            return Err(Failure::bad_request(format!(
                "{name}: given more than once"
            )));
        }
        params.insert(name, value);
    }
    Ok(params)
}

fn since_param(params: &HashMap<String, String>) -> Result<Option<SystemTime>, Failure> {
    params
        .get("since")
        .map(|text| parse_since(text, SystemTime::now()))
        .transpose()
        .map_err(|err| Failure::bad_request(format!("since: {err}")))
}

fn limit_param(
    params: &HashMap<String, String>,
    default: usize,
    max: usize,
) -> Result<usize, Failure> {
    let Some(text) = params.get("limit") else {
        return Ok(default);
    };
    match text.parse::<usize>() {
        Ok(limit) if (1..=max).contains(&limit) => Ok(limit),
        _ => Err(Failure::bad_request(format!(
            "limit: {text:?} is not a number between 1 and {max}"
        ))),
    }
}

fn text_param(params: &HashMap<String, String>, name: &str) -> Result<Option<String>, Failure> {
    match params.get(name) {
        Some(value) if value.is_empty() => {
            Err(Failure::bad_request(format!("{name}: must not be empty")))
        }
        value => Ok(value.cloned()),
    }
}

/// Runs a store call off the async threads: SQLite blocks.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, crate::sinks::store::StoreError> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(Failure::internal(crate::error_chain(&err))),
        Err(err) => Err(Failure::internal(format!("store call failed: {err}"))),
    }
}

async fn list_incidents(State(state): State<ApiState>, query: RawQuery) -> Answer {
    let params = params(query, &["since", "upstream", "proxy", "limit"])?;
    let filter = IncidentFilter {
        since: since_param(&params)?,
        upstream: text_param(&params, "upstream")?,
        proxy: text_param(&params, "proxy")?,
        limit: limit_param(&params, DEFAULT_LIMIT, MAX_LIMIT)?,
    };
    let store = state.store.clone();
    let incidents = blocking(move || store.list(&filter)).await?;
    Ok(Json(json!({ "incidents": incidents })))
}

async fn get_incident(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> Answer {
    // axum's own rejection (an id that percent-decodes to invalid UTF-8) is plain text.
    let Path(id) = id.map_err(|err| Failure::bad_request(err.body_text()))?;
    let id: u64 = id
        .parse()
        .map_err(|_| Failure::bad_request(format!("bad incident id {id:?}: not a number")))?;
    let store = state.store.clone();
    match blocking(move || store.get(id)).await? {
        Some(incident) => Ok(Json(json!(incident))),
        None => Err(Failure {
            status: StatusCode::NOT_FOUND,
            message: format!("no incident {id}"),
        }),
    }
}

async fn list_events(State(state): State<ApiState>, query: RawQuery) -> Answer {
    let params = params(query, &["since", "limit"])?;
    let cut = since_param(&params)?.map_or(EventCut::Mono(0), EventCut::Time);
    let limit = limit_param(&params, DEFAULT_LIMIT, RECENT_CAPACITY)?;
    // Up to 10,000 events copied and turned to JSON: not on an async worker.
    let answer =
        tokio::task::spawn_blocking(move || json!({ "events": state.recent.since(cut, limit) }))
            .await
            .map_err(|err| Failure::internal(format!("listing events failed: {err}")))?;
    Ok(Json(answer))
}

async fn status(State(state): State<ApiState>) -> Answer {
    // The report may lock what the agent is using (the probes' maps): not on an async thread.
    let report = tokio::task::spawn_blocking(move || (state.status)())
        .await
        .map_err(|err| Failure::internal(format!("status report failed: {err}")))?;
    Ok(Json(json!(report)))
}

async fn no_such_endpoint(method: Method, uri: Uri) -> Failure {
    Failure {
        status: StatusCode::NOT_FOUND,
        message: format!("no such endpoint: {method} {}", uri.path()),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> Failure {
    Failure {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!(
            "{method} is not allowed on {}: the API is read-only",
            uri.path()
        ),
    }
}
