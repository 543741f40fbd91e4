//! The API served on a real socket, asked by the CLI's client.

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use hyper::StatusCode;

use super::*;
use crate::{
    client::{ApiClient, ClientError, IncidentQuery},
    model::incident::{Incident, IncidentState},
    sinks::store::testing,
};

struct Served {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    client: ApiClient,
    server: JoinHandle<()>,
    closed: Incident,
    open: Incident,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn report() -> StatusReport {
    StatusReport {
        version: VERSION.into(),
        started_at: testing::base_time(),
        uptime_seconds: 42,
        probes: BTreeMap::from([
            (
                "inet_sock_set_state".into(),
                ProbeStatusReport::from(&crate::sources::probes::ProbeStatus::Attached(
                    crate::sources::probes::Attachment::TpBtf,
                )),
            ),
            (
                "mark_victim".into(),
                ProbeStatusReport::from(&crate::sources::probes::ProbeStatus::Unavailable(
                    "no such tracepoint".into(),
                )),
            ),
        ]),
        events: EventCounts {
            records: 10,
            decode_errors: 0,
            filtered: 1,
        },
        kernel: KernelReport::default(),
        incidents_open: 1,
        correlation_lagged_events: 0,
        listener_table_refused: 0,
        store_dropped_writes: 0,
        store: Default::default(),
    }
}

/// A store with a closed incident from 3 h ago and an open one from 2 min ago, and events
/// at 100, 200 and 300 s after the epoch.
fn serve_fixture() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("why502.db")).unwrap());
    let closed = testing::recent_incident(17, 180);
    let mut open = testing::recent_incident(18, 2);
    open.state = IncidentState::Open;
    open.closed_at = None;
    open.proxy.comm = "haproxy".into();
    open.proxy.unit = Some("haproxy.service".into());
    open.upstream = "unix:/run/app/app.sock".into();
    store.upsert(&closed).unwrap();
    store.upsert(&open).unwrap();

    let recent = Arc::new(RecentEvents::default());
    for secs in [100, 200, 300] {
        recent.push(Arc::new(recent::tests::exit_event(secs)));
    }
    let socket = dir.path().join("run/why502.sock");
    let state = ApiState {
        store,
        recent,
        status: Arc::new(report),
    };
    let server = serve(&socket, None, state).unwrap();
    Served {
        client: ApiClient::new(&socket),
        socket,
        _dir: dir,
        server,
        closed,
        open,
    }
}

fn ids(incidents: &[Incident]) -> Vec<u64> {
    incidents.iter().map(|i| i.id).collect()
}

#[tokio::test]
async fn incidents_are_listed_and_filtered() {
    let api = serve_fixture();
    let all = api
        .client
        .incidents(&IncidentQuery::default())
        .await
        .unwrap();
    assert_eq!(all, [api.open.clone(), api.closed.clone()]);

    let query = |since: Option<&str>, upstream: Option<&str>, proxy: Option<&str>| IncidentQuery {
        since: since.map(String::from),
        upstream: upstream.map(String::from),
        proxy: proxy.map(String::from),
        limit: None,
    };
    let ask = |q: IncidentQuery| {
        let client = &api.client;
        async move { ids(&client.incidents(&q).await.unwrap()) }
    };
    assert_eq!(ask(query(Some("1h"), None, None)).await, [18]);
    assert_eq!(ask(query(Some("4h"), None, None)).await, [18, 17]);
    let an_hour_ago = humantime::format_rfc3339(SystemTime::now() - Duration::from_secs(3600));
    assert_eq!(
        ask(query(Some(&an_hour_ago.to_string()), None, None)).await,
        [18]
    );
    assert_eq!(
        ask(query(None, Some("unix:/run/app/app.sock"), None)).await,
        [18]
    );
    assert_eq!(ask(query(None, Some("127.0.0.1:9000"), None)).await, [17]);
    assert_eq!(ask(query(None, None, Some("haproxy.service"))).await, [18]);
    assert_eq!(ask(query(None, None, Some("nginx"))).await, [17]);
    assert_eq!(ask(query(None, None, Some("envoy"))).await, [0u64; 0]);
    let one = IncidentQuery {
        limit: Some(1),
        ..IncidentQuery::default()
    };
    assert_eq!(ask(one).await, [18]);
    assert_eq!(api.client.last_incident().await.unwrap().id, 18);
}

#[tokio::test]
async fn one_incident_by_id_or_404() {
    let api = serve_fixture();
    assert_eq!(api.client.incident(17).await.unwrap(), api.closed);
    let err = api.client.incident(99).await.unwrap_err();
    assert!(
        matches!(err, ClientError::NoSuchIncident { id: 99 }),
        "{err}"
    );
    assert_eq!(err.exit().code(), 4);

    let (status, body) = api.client.get("/v1/incidents/99").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "no incident 99");
    let (status, body) = api.client.get("/v1/incidents/abc").await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("\"abc\""),
        "{body}"
    );
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter() {
    let api = serve_fixture();
    for (path, named) in [
        ("/v1/incidents?since=yesterday", "since"),
        ("/v1/incidents?since=2026-11-21T14:02:03", "since"),
        ("/v1/incidents?limit=0", "limit"),
        ("/v1/incidents?limit=1001", "limit"),
        ("/v1/incidents?limit=ten", "limit"),
        ("/v1/incidents?upstream=", "upstream"),
        ("/v1/incidents?proxy=a&proxy=b", "proxy"),
        ("/v1/incidents?colour=red", "colour"),
        ("/v1/events?since=-1h", "since"),
        ("/v1/events?limit=0", "limit"),
        ("/v1/events?upstream=x", "upstream"),
    ] {
        let (status, body) = api.client.get(path).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(named), "{path}: {body}");
    }
    let err = api
        .client
        .incidents(&IncidentQuery {
            since: Some("soon".into()),
            ..IncidentQuery::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Api { status: 400, .. }), "{err}");
    assert!(err.to_string().contains("since"), "{err}");
}

#[tokio::test]
async fn unknown_endpoints_and_methods_answer_json() {
    let api = serve_fixture();
    let (status, body) = api.client.get("/v2/incidents").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("/v2/incidents"));
}

#[tokio::test]
async fn recent_events_since_a_time() {
    let api = serve_fixture();
    let events = api.client.events(None, None).await.unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["kind"], "process_exit");
    assert_eq!(events[0]["mono_ns"], 100_000_000_000u64);
    let events = api
        .client
        .events(Some("1970-01-01T00:03:00Z"), None)
        .await
        .unwrap();
    let monos: Vec<_> = events
        .iter()
        .map(|e| e["mono_ns"].as_u64().unwrap())
        .collect();
    assert_eq!(monos, [200_000_000_000, 300_000_000_000]);
    let events = api.client.events(None, Some(1)).await.unwrap();
    assert_eq!(events[0]["mono_ns"], 300_000_000_000u64, "the newest");
}

#[tokio::test]
async fn status_reads_back() {
    let api = serve_fixture();
    assert_eq!(api.client.status().await.unwrap(), report());
}

#[tokio::test]
async fn the_socket_is_root_only_in_a_created_directory() {
    let api = serve_fixture();
    let mode = std::fs::metadata(&api.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let dir = api.socket.parent().unwrap();
    let mode = std::fs::metadata(dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o027, 0, "directory mode {mode:o}");
}

fn empty_state(dir: &Path) -> ApiState {
    ApiState {
        store: Arc::new(Store::open(dir.join("other.db")).unwrap()),
        recent: Arc::new(RecentEvents::default()),
        status: Arc::new(report),
    }
}

#[tokio::test]
async fn a_live_socket_is_not_taken_over() {
    let api = serve_fixture();
    let err = serve(&api.socket, None, empty_state(api._dir.path())).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "another agent is already serving on {}",
            api.socket.display()
        )
    );
    // The first agent still answers.
    assert_eq!(api.client.status().await.unwrap().uptime_seconds, 42);
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_other_files_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("why502.sock");
    // A socket file nobody listens on, as a killed agent leaves it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let server = serve(&socket, None, empty_state(dir.path())).unwrap();
    let client = ApiClient::new(&socket);
    assert_eq!(
        client.incidents(&IncidentQuery::default()).await.unwrap(),
        []
    );
    server.abort();

    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let err = serve(&file, None, empty_state(dir.path())).unwrap_err();
    assert!(err.to_string().contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[tokio::test]
async fn no_agent_means_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("why502.sock");
    let err = ApiClient::new(&socket).status().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "why502 agent is not running (no API socket at {}); \
             start it with `systemctl start why502` or `why502 agent`",
            socket.display()
        )
    );
    assert_eq!(err.exit().code(), 3);
    // A stale socket file is the same: nobody answers.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let err = ApiClient::new(&socket).status().await.unwrap_err();
    assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
}

#[test]
fn serving_outside_the_runtime_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let err = serve(&dir.path().join("s.sock"), None, empty_state(dir.path())).unwrap_err();
    assert!(matches!(err, ApiError::NoRuntime));
}

#[test]
fn the_socket_is_root_only_from_the_moment_it_exists() {
    // Whatever the umask lets a plain bind create (0755 under the usual 022), the socket
    // bind_owner_only makes is 0600 from the bind on: no window before the chmod.
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.sock");
    let _plain = std::os::unix::net::UnixListener::bind(&plain).unwrap();
    let plain_mode = std::fs::metadata(&plain).unwrap().permissions().mode() & 0o777;
    let socket = dir.path().join("why502.sock");
    let _listener = super::bind_owner_only(&socket).unwrap();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a plain bind here gives {plain_mode:o}");
    assert_ne!(
        plain_mode, 0o600,
        "the umask alone would not tell them apart"
    );
}
