//! rafter-sim: the world Rafter is proven in — an in-memory Kubernetes API server on 127.0.0.1, and
//! simulated nodes, scheduler and workloads that drive it through kube-rs like real components.
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod components;
pub mod lifecycle;
pub mod moto;
pub mod nodes;
pub mod scheduler;
pub mod workloads;

use std::path::Path;
use std::sync::Arc;

pub use apiserver::{FaultSpec, ServerConfig};

/// Why the simulator could not start or be used.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot bind the API server on 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    #[error("cannot build a kube client for {url}: {source}")]
    Client {
        url: String,
        #[source]
        source: kube::Error,
    },
    #[error("invalid API server URL {0}")]
    Url(String),
    #[error("cannot write the kubeconfig to {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running simulated API server and a client for it. Dropping it stops the server.
pub struct Simulator {
    server: apiserver::RunningServer,
    client: kube::Client,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("url", &self.url()).finish_non_exhaustive()
    }
}

impl Simulator {
    /// Starts a server on a free port with the default configuration.
    pub async fn start() -> Result<Self, SimError> {
        Self::start_with(ServerConfig::default()).await
    }

    pub async fn start_with(config: ServerConfig) -> Result<Self, SimError> {
        let server = apiserver::server::start(config).await.map_err(SimError::Bind)?;
        let client = client_for(&server.url(), "rafter-sim-test")?;
        Ok(Self { server, client })
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A client with the default user agent.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A client that identifies itself by `user_agent`, so faults can single it out.
    pub fn client_as(&self, user_agent: &str) -> Result<kube::Client, SimError> {
        client_for(&self.url(), user_agent)
    }

    /// The server's state: the store and the fault handle.
    pub fn state(&self) -> &Arc<apiserver::ServerState> {
        &self.server.state
    }

    pub fn faults(&self) -> &apiserver::Faults {
        &self.server.state.faults
    }

    /// Writes a kubeconfig pointing at this server, for kubectl and `rafter run`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), SimError> {
        write_kubeconfig(&self.url(), path)
    }
}

/// A kube client for a plain-HTTP URL.
pub fn client_for(url: &str, user_agent: &str) -> Result<kube::Client, SimError> {
    client_with_token(url, user_agent, None)
}

/// A kube client for a plain-HTTP URL that authenticates with `token` (a ServiceAccount's, from
/// TokenRequest, so RBAC applies to it); without one it is the cluster's administrator.
pub fn client_with_token(url: &str, user_agent: &str, token: Option<&str>) -> Result<kube::Client, SimError> {
    let uri: http::Uri = url.parse().map_err(|_| SimError::Url(url.to_string()))?;
    let mut config = kube::Config::new(uri);
    config.auth_info.token = token.map(|t| secrecy::SecretString::from(t.to_string()));
    // kube's default layer retries every 429 up to 15 times with growing delays, which turns a
    // PodDisruptionBudget's refusal into minutes of waiting; callers retry on their own terms.
    config.default_retry = false;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(user_agent).map_err(|_| SimError::Url(user_agent.to_string()))?,
    ));
    kube::Client::try_from(config).map_err(|source| SimError::Client { url: url.to_string(), source })
}

/// Writes a kubeconfig with one cluster, user and context named `rafter-sim`.
pub fn write_kubeconfig(url: &str, path: &Path) -> Result<(), SimError> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: rafter-sim\n  cluster:\n    server: {url}\ncontexts:\n- name: rafter-sim\n  context:\n    cluster: rafter-sim\n    user: rafter-sim\n    namespace: default\ncurrent-context: rafter-sim\nusers:\n- name: rafter-sim\n  user:\n    token: rafter-sim\n"
    );
    std::fs::write(path, text).map_err(|source| SimError::Kubeconfig { path: path.display().to_string(), source })
}
