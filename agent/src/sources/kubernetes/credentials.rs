//! How to reach the Kubernetes API: the pod's service account (in-cluster), or the
//! current context of a kubeconfig file (`kubernetes.kubeconfig`), with a bearer token or
//! a client certificate. Exec plugins and auth providers run programs or talk to clouds:
//! they are not supported, and say so.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;
use ureq::tls::{Certificate, ClientCert, PrivateKey};

/// Where the service account's files are mounted in every pod that has one.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The most of a credential file read: tokens and certificates are a few KiB.
const FILE_LIMIT: u64 = 1 << 20;

/// Everything a request needs.
#[derive(Clone)]
pub struct Access {
    /// `https://10.96.0.1:443`, without a trailing slash.
    pub server: String,
    /// The cluster's CA certificates, the only roots the server's certificate may chain to.
    pub ca: Vec<Certificate<'static>>,
    pub auth: Auth,
    /// Where this came from, for the log: `service account`, `kubeconfig /root/.kube/config
    /// (context kind-kind)`.
    pub origin: String,
}

#[derive(Clone)]
pub enum Auth {
    /// A token read once (a kubeconfig's `token`).
    Token(String),
    /// A token file read again before each request: the kubelet rotates service account
    /// tokens (bound tokens expire within the hour).
    TokenFile(PathBuf),
    /// The certificate chain and its key.
    ClientCert(ClientCert),
}

impl Auth {
    /// The `Authorization` header's value, if this auth has one.
    pub fn bearer(&self) -> Result<Option<String>, String> {
        match self {
            Auth::Token(token) => Ok(Some(format!("Bearer {token}"))),
            Auth::TokenFile(path) => {
                let token = read_limited(path)?;
                let token = String::from_utf8_lossy(&token).trim().to_string();
                Ok(Some(format!("Bearer {token}")))
            }
            Auth::ClientCert(_) => Ok(None),
        }
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(FILE_LIMIT)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(bytes)
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<Certificate<'static>>, String> {
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => Some(Ok(cert)),
            Ok(_) => None,
            Err(e) => Some(Err(format!("{what}: {e}"))),
        })
        .collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err(format!("{what}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// The service account of the pod the agent runs in, when it has one: the API's address
/// from `KUBERNETES_SERVICE_HOST`/`_PORT`, the token and CA from [`SERVICE_ACCOUNT_DIR`].
/// `None` outside a pod (nothing is tried then).
pub fn in_cluster(
    dir: &Path,
    host: Option<String>,
    port: Option<String>,
) -> Option<Result<Access, String>> {
    let (host, port) = (host?, port?);
    let token = dir.join("token");
    let ca = dir.join("ca.crt");
    if !token.exists() || !ca.exists() {
        return None;
    }
    Some((|| {
        let ca = certificates(&read_limited(&ca)?, "service account ca.crt")?;
        // An IPv6 service address needs brackets in a URL.
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(Access {
            server: format!("https://{host}:{port}"),
            ca,
            auth: Auth::TokenFile(token),
            origin: "service account".into(),
        })
    })())
}

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    value: T,
}

#[derive(Deserialize)]
struct Context {
    cluster: String,
    user: String,
}

#[derive(Deserialize)]
struct Cluster {
    server: String,
    #[serde(rename = "certificate-authority")]
    certificate_authority: Option<PathBuf>,
    #[serde(rename = "certificate-authority-data")]
    certificate_authority_data: Option<String>,
    #[serde(rename = "insecure-skip-tls-verify", default)]
    insecure_skip_tls_verify: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    #[serde(rename = "client-certificate")]
    client_certificate: Option<PathBuf>,
    #[serde(rename = "client-certificate-data")]
    client_certificate_data: Option<String>,
    #[serde(rename = "client-key")]
    client_key: Option<PathBuf>,
    #[serde(rename = "client-key-data")]
    client_key_data: Option<String>,
    exec: Option<serde_norway::Value>,
    #[serde(rename = "auth-provider")]
    auth_provider: Option<serde_norway::Value>,
}

/// A file's bytes: inline base64 `*-data`, else the path (relative to the kubeconfig's
/// directory, as kubectl takes it).
fn data_or_file(
    data: &Option<String>,
    file: &Option<PathBuf>,
    base: &Path,
    what: &str,
) -> Result<Option<Vec<u8>>, String> {
    if let Some(data) = data {
        let clean: String = data.split_whitespace().collect();
        return base64::engine::general_purpose::STANDARD
            .decode(clean)
            .map(Some)
            .map_err(|e| format!("{what}-data: not base64: {e}"));
    }
    file.as_ref()
        .map(|f| read_limited(&base.join(f)))
        .transpose()
}

/// The current context of the kubeconfig at `path`.
pub fn from_kubeconfig(path: &Path) -> Result<Access, String> {
    let text = read_limited(path)?;
    let config: Kubeconfig =
        serde_norway::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("/"));
    let current = config
        .current_context
        .filter(|c| !c.is_empty())
        .ok_or_else(|| format!("{}: no current-context", path.display()))?;
    let find = |what: &str, name: &str| format!("{}: no {what} {name:?}", path.display());
    let context = &config
        .contexts
        .iter()
        .find(|c| c.name == current)
        .ok_or_else(|| find("context", &current))?
        .value;
    let cluster = &config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .ok_or_else(|| find("cluster", &context.cluster))?
        .value;
    let user = &config
        .users
        .iter()
        .find(|u| u.name == context.user)
        .ok_or_else(|| find("user", &context.user))?
        .value;
    if cluster.insecure_skip_tls_verify {
        return Err(format!(
            "cluster {:?} sets insecure-skip-tls-verify: not supported, give its CA",
            context.cluster
        ));
    }
    let ca = data_or_file(
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
        base,
        "certificate-authority",
    )?
    .ok_or_else(|| format!("cluster {:?} has no certificate-authority", context.cluster))?;
    let ca = certificates(&ca, "certificate-authority")?;
    let auth = if let Some(token) = &user.token {
        Auth::Token(token.clone())
    } else if let Some(file) = &user.token_file {
        Auth::TokenFile(base.join(file))
    } else if let Some(cert) = data_or_file(
        &user.client_certificate_data,
        &user.client_certificate,
        base,
        "client-certificate",
    )? {
        let key = data_or_file(&user.client_key_data, &user.client_key, base, "client-key")?
            .ok_or_else(|| format!("user {:?} has a certificate and no key", context.user))?;
        let chain = certificates(&cert, "client-certificate")?;
        let key = PrivateKey::from_pem(&key).map_err(|e| format!("client-key: {e}"))?;
        Auth::ClientCert(ClientCert::new_with_certs(&chain, key))
    } else if user.exec.is_some() || user.auth_provider.is_some() {
        return Err(format!(
            "user {:?} authenticates through an exec plugin or auth provider, which the agent \
             does not run: give it a token or a client certificate",
            context.user
        ));
    } else {
        return Err(format!(
            "user {:?} has no token or client certificate",
            context.user
        ));
    };
    Ok(Access {
        server: cluster.server.trim_end_matches('/').to_string(),
        ca,
        auth,
        origin: format!("kubeconfig {} (context {current})", path.display()),
    })
}
