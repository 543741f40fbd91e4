//! Pod names from the Kubernetes API, against an HTTPS server of the test's own on
//! loopback (the API server cannot run here): a CA made by the test with rcgen, a server
//! certificate it signed, and a canned `PodList` for the node. A kubeconfig pointing at
//! it names the pod UIDs; a kubeconfig with another CA fails the TLS handshake, which is
//! counted and leaves the UID as it was.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use why502::{
    config::KubernetesConfig,
    model::incident::Pod,
    sources::kubernetes::{self, credentials},
};

const UID_WEB: &str = "6f3b1c2a-4e5d-4a7b-9c8d-0e1f2a3b4c5d";
const UID_DB: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const UNLISTED: &str = "11111111-2222-4333-8444-555555555555";
const TOKEN: &str = "test-token-4f1e2b";
const WAIT: Duration = Duration::from_secs(5);

/// A CA of the test's own, and what it signs.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` and its key, PEM.
    fn sign(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// What the server was asked.
#[derive(Debug, Clone)]
struct Seen {
    request_line: String,
    authorization: Option<String>,
    client_cert: bool,
}

/// An HTTPS server on 127.0.0.1 answering every request with `body`; stopped when dropped.
struct ApiServer {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ApiServer {
    fn start(ca: &Ca, body: String) -> Self {
        let (cert_pem, key_pem) = ca.sign(&["127.0.0.1", "localhost"]);
        let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Client certificates are asked for, not required: token users send none.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.issuer.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    if let Some(s) = serve(stream, config.clone(), &body) {
                        seen.lock().unwrap().push(s);
                    }
                }
            })
        };
        Self {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblocks accept().
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One connection: the TLS handshake, one request's head, the canned answer.
fn serve(stream: TcpStream, config: Arc<rustls::ServerConfig>, body: &str) -> Option<Seen> {
    stream.set_read_timeout(Some(WAIT)).ok()?;
    let conn = rustls::ServerConnection::new(config).ok()?;
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
        // A failed handshake (the client refused our certificate) ends here.
        if tls.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().to_string();
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value.trim().to_string());
    let client_cert = tls.conn.peer_certificates().is_some_and(|c| !c.is_empty());
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(answer.as_bytes()).ok()?;
    tls.flush().ok()?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Some(Seen {
        request_line,
        authorization,
        client_cert,
    })
}

/// The node's pods, as the API server answers a full `PodList` (the test ignores the
/// metadata-only Accept header, as an old server would).
fn pod_list() -> String {
    serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "items": [
            {"metadata": {"name": "web-7d9f", "namespace": "shop", "uid": UID_WEB},
             "spec": {"nodeName": "node-a"}},
            {"metadata": {"name": "db-0", "namespace": "data", "uid": UID_DB},
             "spec": {"nodeName": "node-a"}},
        ]
    })
    .to_string()
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A kubeconfig whose current context points at `port`, trusting `ca_pem`, as `user`.
fn kubeconfig(dir: &std::path::Path, port: u16, ca_pem: &str, user: &str) -> std::path::PathBuf {
    let text = format!(
        "apiVersion: v1
kind: Config
current-context: test
clusters:
- name: other
  cluster:
    server: https://192.0.2.1:6443
- name: local
  cluster:
    server: https://127.0.0.1:{port}/
    certificate-authority-data: {ca}
contexts:
- name: test
  context:
    cluster: local
    user: tester
users:
- name: tester
  user:
{user}
",
        ca = b64(ca_pem)
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

fn config(refresh_ms: u64) -> KubernetesConfig {
    KubernetesConfig {
        refresh_interval_ms: refresh_ms,
        timeout_ms: 2_000,
        ..KubernetesConfig::default()
    }
}

fn pod(uid: &str) -> Pod {
    Pod {
        uid: uid.into(),
        ..Pod::default()
    }
}

/// Asks for `uid` until it is named, within [`WAIT`].
fn named_within(directory: &kubernetes::Directory, uid: &str) -> Option<Pod> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let pod = directory.name(pod(uid));
        if pod.name.is_some() {
            return Some(pod);
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn a_token_user_names_the_pods_of_its_node_and_lists_only_when_needed() {
    let ca = Ca::new("why502 test CA");
    let server = ApiServer::start(&ca, pod_list());
    let dir = tempfile::tempdir().unwrap();
    let path = kubeconfig(
        dir.path(),
        server.port,
        &ca.pem(),
        &format!("    token: {TOKEN}"),
    );
    let access = credentials::from_kubeconfig(&path).unwrap();
    let lookup = kubernetes::start_with(access, "node-a".into(), &config(1_500));
    let directory = lookup.directory();

    // Nothing is listed before a UID is seen.
    thread::sleep(Duration::from_millis(200));
    assert!(server.seen().is_empty(), "{:?}", server.seen());

    let web = named_within(directory, UID_WEB).expect("the web pod named");
    assert_eq!(
        (web.namespace.as_deref(), web.name.as_deref()),
        (Some("shop"), Some("web-7d9f"))
    );
    // The same list named the other pod of the node: no new request for it.
    let db = directory.name(pod(UID_DB));
    assert_eq!(db.name.as_deref(), Some("db-0"));
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let request = &seen[0];
    assert!(
        request
            .request_line
            .starts_with("GET /api/v1/pods?fieldSelector=spec.nodeName")
            && request.request_line.contains("node-a"),
        "{}",
        request.request_line
    );
    assert_eq!(
        request.authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert!(!request.client_cert);

    // A UID the list lacks asks for another list, but not before the interval is over:
    // asked for a hundred times at once, it is listed once more.
    let asked = Instant::now();
    for _ in 0..100 {
        assert_eq!(directory.name(pod(UNLISTED)).name, None);
    }
    let deadline = asked + WAIT;
    while server.seen().len() < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        server.seen().len(),
        2,
        "the unknown UID was never listed for"
    );
    assert!(
        asked.elapsed() >= Duration::from_millis(1_000),
        "listed again {:?} after the first list: before the interval",
        asked.elapsed()
    );
    thread::sleep(Duration::from_millis(300));
    assert_eq!(server.seen().len(), 2);
    // Known UIDs never ask.
    for _ in 0..100 {
        directory.name(pod(UID_WEB));
    }
    thread::sleep(Duration::from_millis(1_700));
    assert_eq!(server.seen().len(), 2);
    let stats = directory.stats();
    assert_eq!((stats.lists, stats.errors, stats.pods), (2, 0, 2));
}

#[test]
fn a_client_certificate_user_from_files_next_to_the_kubeconfig() {
    let ca = Ca::new("why502 test CA");
    let server = ApiServer::start(&ca, pod_list());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.sign(&["system:node:node-a"]);
    std::fs::write(dir.path().join("client.crt"), cert).unwrap();
    std::fs::write(dir.path().join("client.key"), key).unwrap();
    // Relative paths are the kubeconfig directory's, as kubectl reads them.
    let path = kubeconfig(
        dir.path(),
        server.port,
        &ca.pem(),
        "    client-certificate: client.crt\n    client-key: client.key",
    );
    let access = credentials::from_kubeconfig(&path).unwrap();
    let lookup = kubernetes::start_with(access, "node-a".into(), &config(1_000));
    let db = named_within(lookup.directory(), UID_DB).expect("the db pod named");
    assert_eq!(db.namespace.as_deref(), Some("data"));
    let seen = server.seen();
    assert!(seen[0].client_cert, "{seen:?}");
    assert_eq!(seen[0].authorization, None);
}

#[test]
fn a_wrong_ca_is_a_counted_error_and_the_uid_stays() {
    let ca = Ca::new("why502 test CA");
    let server = ApiServer::start(&ca, pod_list());
    let dir = tempfile::tempdir().unwrap();
    let other = Ca::new("someone else's CA");
    let path = kubeconfig(
        dir.path(),
        server.port,
        &other.pem(),
        &format!("    token: {TOKEN}"),
    );
    let access = credentials::from_kubeconfig(&path).unwrap();
    let lookup = kubernetes::start_with(access, "node-a".into(), &config(1_000));
    let directory = lookup.directory();
    let deadline = Instant::now() + WAIT;
    let mut stats = directory.stats();
    while stats.errors == 0 && Instant::now() < deadline {
        assert_eq!(directory.name(pod(UID_WEB)), pod(UID_WEB));
        thread::sleep(Duration::from_millis(20));
        stats = directory.stats();
    }
    assert_eq!((stats.errors, stats.lists), (1, 0), "{stats:?}");
    let error = stats.last_error.unwrap();
    assert!(
        error.contains("127.0.0.1") && error.to_lowercase().contains("certificate"),
        "not a clear error: {error}"
    );
    // The UID is still what is reported, and the server never answered a request.
    assert_eq!(directory.name(pod(UID_WEB)), pod(UID_WEB));
    assert!(server.seen().is_empty());
}

#[test]
fn unusable_or_missing_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let exec = kubeconfig(
        dir.path(),
        1,
        &Ca::new("x").pem(),
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: aws",
    );
    let error = credentials::from_kubeconfig(&exec).err().unwrap();
    assert!(error.contains("exec plugin"), "{error}");
    // No service account where the pod's would be mounted: nothing is tried.
    let none = credentials::in_cluster(
        &dir.path().join("serviceaccount"),
        Some("10.96.0.1".into()),
        Some("443".into()),
    );
    assert!(none.is_none());
    // A service account, outside a pod's environment: nothing either.
    let account = dir.path().join("sa");
    std::fs::create_dir(&account).unwrap();
    std::fs::write(account.join("token"), "t").unwrap();
    std::fs::write(account.join("ca.crt"), Ca::new("sa").pem()).unwrap();
    assert!(credentials::in_cluster(&account, None, None).is_none());
    let access = credentials::in_cluster(&account, Some("fd00::1".into()), Some("443".into()))
        .unwrap()
        .unwrap();
    assert_eq!(access.server, "https://[fd00::1]:443");
    // Turned off: nothing started whatever the credentials.
    let off = KubernetesConfig {
        enabled: false,
        kubeconfig: Some(exec),
        ..KubernetesConfig::default()
    };
    assert!(kubernetes::start(&off).is_none());
    // Without a directory installed, a pod is reported as read.
    assert_eq!(kubernetes::named(pod(UID_WEB)), pod(UID_WEB));
}
