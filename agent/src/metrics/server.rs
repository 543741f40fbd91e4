//! `GET /metrics` over HTTP on a TCP address (loopback by default). Kernel aggregates are
//! read at scrape time, so a scrape always sees the latest success counts.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use tokio::task::JoinHandle;

use super::Metrics;
use crate::probes::ProbeSet;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} for metrics: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone)]
struct Scrape {
    metrics: Arc<Metrics>,
    probes: Arc<Mutex<ProbeSet>>,
}

/// Binds `addr` and serves until the task is aborted. Returns the bound address (a port
/// of 0 picks a free one).
/// Must be called from within the agent's tokio runtime.
pub fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    probes: Arc<Mutex<ProbeSet>>,
) -> Result<(SocketAddr, JoinHandle<()>), ServeError> {
    if !addr.ip().is_loopback() {
        log::warn!(
            "metrics are served on {addr}, beyond loopback: they name processes and upstreams"
        );
    }
    let bind_err = |source| ServeError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Scrape { metrics, probes });
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            log::error!("metrics server stopped: {err}");
        }
    });
    Ok((bound, task))
}

async fn scrape(State(s): State<Scrape>) -> axum::response::Response {
    let rendered = tokio::task::spawn_blocking(move || {
        s.metrics.refresh_kernel(&crate::agent::lock(&s.probes));
        s.metrics.render()
    })
    .await;
    match rendered {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(err)) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            err.to_string(),
        )
            .into_response(),
        Err(err) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            err.to_string(),
        )
            .into_response(),
    }
}
