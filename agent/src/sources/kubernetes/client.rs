//! One request: the pods of this node, `GET /api/v1/pods?fieldSelector=spec.nodeName=<node>`,
//! asked for as metadata only (`PartialObjectMetadataList`: the API server leaves out the
//! specs and statuses) and read as a plain `PodList` from a server that ignores that.

use std::{sync::Arc, time::Duration};

use serde::Deserialize;
use ureq::tls::{RootCerts, TlsConfig};

use super::credentials::{Access, Auth};

/// The most of an answer that is read: a node's pods' metadata is tens of KiB, full pod
/// objects a few MiB for a hundred pods.
const BODY_LIMIT: u64 = 32 << 20;

/// A pod as the list names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Deserialize)]
struct List {
    #[serde(default)]
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    metadata: Metadata,
}

#[derive(Deserialize)]
struct Metadata {
    uid: String,
    name: String,
    #[serde(default)]
    namespace: String,
}

/// A client for one [`Access`], kept across refreshes (its connection too).
pub struct Client {
    agent: ureq::Agent,
    access: Access,
}

impl Client {
    pub fn new(access: Access, timeout: Duration) -> Self {
        let client_cert = match &access.auth {
            Auth::ClientCert(cert) => Some(cert.clone()),
            _ => None,
        };
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(Arc::new(access.ca.clone())))
            .client_cert(client_cert)
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(timeout))
            // No proxy from the environment: the API is the cluster's, not the Internet.
            .proxy(None)
            .build()
            .new_agent();
        Self { agent, access }
    }

    pub fn origin(&self) -> &str {
        &self.access.origin
    }

    /// The pods scheduled on `node`.
    pub fn list_pods(&self, node: &str) -> Result<Vec<PodName>, String> {
        let url = format!("{}/api/v1/pods", self.access.server);
        let selector = format!("spec.nodeName={node}");
        let mut request = self
            .agent
            .get(&url)
            .query("fieldSelector", &selector)
            .header(
                "Accept",
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
            );
        if let Some(bearer) = self.access.auth.bearer()? {
            request = request.header("Authorization", &bearer);
        }
        let mut response = request.call().map_err(|e| format!("GET {url}: {e}"))?;
        let body = response
            .body_mut()
            .with_config()
            .limit(BODY_LIMIT)
            .read_to_vec()
            .map_err(|e| format!("GET {url}: reading the answer: {e}"))?;
        let list: List =
            serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not a pod list: {e}"))?;
        Ok(list
            .items
            .into_iter()
            .map(|item| PodName {
                uid: item.metadata.uid,
                namespace: item.metadata.namespace,
                name: item.metadata.name,
            })
            .collect())
    }
}
