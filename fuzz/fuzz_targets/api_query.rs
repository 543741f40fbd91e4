//! The API's parsing of paths and query strings (`since`, `limit`, `upstream`, `proxy`,
//! incident ids), through the real router in memory: every request target answers JSON
//! with 200, 400, 404 or 405, never a panic and never a 500 (a 500 is a store call or
//! worker that failed, here on an empty in-memory store that cannot fail).
//!
//! The first byte picks the route, the rest is appended to it: `/v1/incidents?…`,
//! `/v1/events?…`, `/v1/incidents/…` or the rest as the whole target.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::{body::Body, http::Request, http::StatusCode, Router};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use why502::sinks::{
    api::{router, ApiState, RecentEvents},
    store::Store,
};

/// Built once: one in-memory store and runtime for every input.
fn fixture() -> &'static (tokio::runtime::Runtime, Router) {
    static FIXTURE: OnceLock<(tokio::runtime::Runtime, Router)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime");
        let state = ApiState {
            store: Arc::new(Store::open_in_memory().expect("an in-memory store")),
            recent: Arc::new(RecentEvents::default()),
            // /v1/status takes no parameters and is skipped below.
            status: Arc::new(|| unreachable!("/v1/status is not fuzzed")),
        };
        (runtime, router(state))
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&route, rest)) = input.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let target = match route % 4 {
        0 => format!("/v1/incidents?{rest}"),
        1 => format!("/v1/events?{rest}"),
        2 => format!("/v1/incidents/{rest}"),
        _ => rest.to_owned(),
    };
    let Ok(request) = Request::get(target).body(Body::empty()) else {
        return; // not a request target hyper would have accepted
    };
    if request.uri().path() == "/v1/status" {
        return;
    }
    let (runtime, app) = fixture();
    let (status, body) = runtime.block_on(async {
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = response.into_body().collect().await.expect("a body");
        (status, body.to_bytes())
    });
    assert!(
        [
            StatusCode::OK,
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_FOUND,
            StatusCode::METHOD_NOT_ALLOWED
        ]
        .contains(&status),
        "status {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON answer");
    if status != StatusCode::OK {
        assert!(
            json["error"].is_string(),
            "an error answer without a message: {json}"
        );
    }
});
