//! `GET /metrics` over HTTP on a TCP address (loopback by default): renders what the feed
//! has counted so far.

use std::{net::SocketAddr, sync::Arc};

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use tokio::task::JoinHandle;

use super::Metrics;
use crate::sinks::http_server;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} for metrics")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `addr` and serves until the task is aborted. Returns the bound address (a port
/// of 0 picks a free one).
/// Must be called from within the agent's tokio runtime.
pub fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
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
        .with_state(metrics);
    let task = tokio::spawn(async move {
        // Any local user can connect to the port: bounded, so that they cannot exhaust
        // the agent's file descriptors or hold the scraper out.
        http_server::serve(listener, app, http_server::LIMITS).await;
        log::error!("metrics server stopped");
    });
    Ok((bound, task))
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> axum::response::Response {
    // Rendering locks the registry the feed writes to and formats every series: not on
    // an async worker, where it would hold up the event path.
    let rendered = tokio::task::spawn_blocking(move || metrics.render().map_err(|e| e.to_string()))
        .await
        .unwrap_or_else(|e| Err(format!("rendering the metrics failed: {e}")));
    match rendered {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(err) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, err).into_response(),
    }
}
