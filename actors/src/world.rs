//! The simulated world Rafter runs in for the demo, the end-to-end tests and the benchmarks: the
//! simulator's API server (or any API server), its simulated kubelets, scheduler and workload
//! controllers, the fake cloud, and Rafter replicas started and killed at will.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use rafter::api::nodeclaim::NodeClaim;
use rafter::cloud::CloudProvider;
use rafter::cloud::fake::{FakeCloud, FakeConfig};
use rafter_aws::AwsCloud;
use rafter_sim::components::Component;
use rafter_sim::nodes::{FakeFeed, NodeSimConfig, PollingFeed};
use rafter_sim::{Simulator, nodes, scheduler, workloads};
use serde_json::{Value, json};

use crate::clock::{Clock, SkewedClock};
use crate::context::ControllerConfig;
use crate::controller::{ControllerError, Replica, ReplicaArgs};

/// The NodePool and EC2NodeClass users start from (`../shared/examples/v1`).
pub const NODEPOOL_DEFAULT: &str = include_str!("../../deploy/examples/v1/nodepool-default.yaml");
/// A legacy Provisioner with `ttlSecondsAfterEmpty: 30` and its AWSNodeTemplate.
pub const PROVISIONER_SPOT_DEFAULT: &str = include_str!("../../deploy/examples/legacy/provisioner-spot-default.yaml");
/// The `inflate` Deployment.
pub const INFLATE: &str = include_str!("../../deploy/examples/workloads/inflate.yaml");

/// Why the world could not be set up or driven.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error(transparent)]
    Sim(#[from] rafter_sim::SimError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("manifest: {0}")]
    Manifest(String),
    #[error(transparent)]
    Cloud(#[from] rafter::cloud::fake::FakeCloudError),
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

/// How the world is built.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    pub fake: FakeConfig,
    /// The simulated kubelets' timings (how long a node takes to become Ready, …).
    pub nodes: NodeSimConfig,
    /// Run on EC2 (an emulator such as moto) instead of the fake cloud: Rafter uses the EC2
    /// provider and the simulated kubelets follow DescribeInstances.
    pub aws: Option<rafter_aws::AwsConfig>,
    /// Use this API server instead of starting one.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Rendered RBAC (the chart's ServiceAccount, roles and bindings) replicas run under: the
    /// simulator authorizes every call they make by it, and a refused call fails the world when
    /// it is dropped. `RAFTER_TEST_RBAC` names the file (`scripts/test` renders it with helm).
    pub rbac: Option<std::path::PathBuf>,
}

/// Where each world run under RBAC writes which rules its replicas exercised.
pub const RBAC_COVERAGE_ENV: &str = "RAFTER_TEST_RBAC_COVERAGE";

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            fake: FakeConfig { cluster: "rafter-sim".into(), ..FakeConfig::default() },
            nodes: NodeSimConfig::default(),
            aws: None,
            kubeconfig: None,
            rbac: std::env::var_os("RAFTER_TEST_RBAC").filter(|v| !v.is_empty()).map(Into::into),
        }
    }
}

/// A running world.
pub struct World {
    pub sim: Option<Simulator>,
    pub client: kube::Client,
    pub url: String,
    /// The fake cloud (idle when the world runs on EC2).
    pub cloud: Arc<FakeCloud>,
    /// The cloud replicas use: the fake, or the EC2 provider.
    pub provider: Arc<dyn CloudProvider>,
    /// The EC2 provider replicas use, when the world runs on EC2 (for its call counts).
    pub aws: Option<Arc<AwsCloud>>,
    pub clock: Arc<SkewedClock>,
    /// The interruption queue replicas started from now on consume.
    pub queue: Option<Arc<dyn rafter::interruption::queue::MessageQueue>>,
    cluster: String,
    components: Vec<Component>,
    /// The ServiceAccount token replicas authenticate with when RBAC is enforced.
    replica_token: Option<String>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").field("url", &self.url).finish_non_exhaustive()
    }
}

impl World {
    pub async fn start(config: WorldConfig) -> Result<Self, WorldError> {
        let (sim, client, url) = match &config.kubeconfig {
            None => {
                let sim = Simulator::start().await?;
                let (client, url) = (sim.client(), sim.url());
                (Some(sim), client, url)
            }
            Some(path) => {
                let cfg = kubeconfig(path, None).await?;
                let url = cfg.cluster_url.to_string();
                (None, kube::Client::try_from(cfg)?, url)
            }
        };
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for (_, crd) in rafter::api::crds::all() {
            crds.patch(
                crd.metadata.name.as_deref().unwrap_or_default(),
                &PatchParams::apply("rafter-demo").force(),
                &Patch::Apply(&crd),
            )
            .await?;
        }
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "karpenter"}});
        namespaces.patch("karpenter", &PatchParams::apply("rafter-demo").force(), &Patch::Apply(&ns)).await?;
        let cloud = Arc::new(FakeCloud::new(config.fake.clone())?);
        let mut aws_cloud = None;
        let (provider, feed, cluster): (Arc<dyn CloudProvider>, Arc<dyn nodes::InstanceFeed>, String) = match config.aws
        {
            None => (cloud.clone(), Arc::new(FakeFeed(cloud.clone())), config.fake.cluster),
            Some(aws) => {
                let cluster = aws.cluster.clone();
                let classes = Arc::new(crate::nodeclass::WatchedNodeClasses::start(client.clone()));
                // The simulated kubelets poll through a client of their own, so Rafter's call
                // counts are Rafter's alone.
                let kubelets: Arc<dyn CloudProvider> = Arc::new(AwsCloud::new(aws.clone(), classes.clone()).await);
                let rafter = Arc::new(AwsCloud::new(aws, classes).await);
                aws_cloud = Some(rafter.clone());
                let feed = PollingFeed::new(kubelets, Duration::from_millis(250))
                    .map_err(|e| WorldError::Manifest(format!("the shipped catalog: {e}")))?;
                (rafter as Arc<dyn CloudProvider>, Arc::new(feed), cluster)
            }
        };
        let mut components = vec![
            workloads::spawn(client.clone()),
            scheduler::spawn(client.clone()),
            nodes::spawn(client.clone(), feed, config.nodes.clone()),
        ];
        // A real control plane's kube-controller-manager runs the node lifecycle controller itself.
        if sim.is_some() {
            components.push(rafter_sim::lifecycle::spawn(client.clone(), Default::default()));
        }
        let replica_token = match (&config.rbac, &sim) {
            (Some(path), Some(_)) => Some(install_rbac(&client, path).await?),
            _ => None,
        };
        Ok(Self {
            sim,
            client,
            url,
            cloud,
            provider,
            aws: aws_cloud,
            clock: Arc::new(SkewedClock::default()),
            queue: None,
            cluster,
            components,
            replica_token,
        })
    }

    /// A replica's client: under RBAC, the chart's ServiceAccount; otherwise the administrator.
    fn replica_client(&self, user_agent: &str) -> Result<kube::Client, WorldError> {
        match (&self.sim, &self.replica_token) {
            (Some(sim), Some(token)) => Ok(rafter_sim::client_with_token(&sim.url(), user_agent, Some(token))?),
            _ => self.client_as(user_agent),
        }
    }

    /// What RBAC allowed and refused the replicas so far (`None` when it is not enforced).
    pub fn rbac_report(&self) -> Option<Value> {
        self.replica_token.as_ref()?;
        Some(self.sim.as_ref()?.state().rbac.report())
    }

    /// A client of its own, named for fault injection.
    pub fn client_as(&self, user_agent: &str) -> Result<kube::Client, WorldError> {
        match &self.sim {
            Some(sim) => Ok(sim.client_as(user_agent)?),
            None => Ok(self.client.clone()),
        }
    }

    /// Controller settings for this world: the cluster name matches the fake cloud's tags.
    pub fn config(&self, identity: &str) -> ControllerConfig {
        ControllerConfig {
            identity: identity.into(),
            cluster_name: self.cluster.clone(),
            ..ControllerConfig::default()
        }
    }

    /// Short timings for tests (the algorithms are the same): lease 3 s / renew 2 s / retry 0.5 s,
    /// batches of 0.3 s to 3 s, reconciles every 0.2 s.
    pub fn quick_config(&self, identity: &str) -> ControllerConfig {
        ControllerConfig {
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(500),
            batch_idle: Duration::from_millis(300),
            batch_max: Duration::from_secs(3),
            reconcile_period: Duration::from_millis(200),
            disruption_period: Duration::from_millis(300),
            disruption_validation: Duration::from_millis(300),
            gc_period: Duration::from_secs(1),
            gc_grace: Duration::from_secs(5),
            ..self.config(identity)
        }
    }

    /// Starts a replica with its own clients (one for the lease), named `identity`.
    pub async fn replica(&self, config: ControllerConfig) -> Result<Replica, WorldError> {
        let identity = config.identity.clone();
        let args = ReplicaArgs {
            client: self.replica_client(&identity)?,
            lease_client: self.replica_client(&format!("{identity}-lease"))?,
            cloud: self.provider.clone(),
            config,
            clock: Some(self.clock.clone() as Arc<dyn Clock>),
            metrics_addr: None,
            queue: self.queue.clone(),
        };
        Ok(Replica::start(args).await?)
    }

    /// Applies every document of a manifest (server-side apply, kinds found by discovery).
    pub async fn apply(&self, manifest: &str) -> Result<(), WorldError> {
        apply(&self.client, manifest).await
    }

    /// Scales `inflate` in `default`.
    pub async fn scale(&self, replicas: u32) -> Result<(), WorldError> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), "default");
        api.patch("inflate", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": replicas}}))).await?;
        Ok(())
    }

    pub async fn pods(&self) -> Result<Vec<Pod>, WorldError> {
        Ok(Api::<Pod>::namespaced(self.client.clone(), "default")
            .list(&ListParams::default().labels("app=inflate"))
            .await?
            .items)
    }

    /// Instances of the cloud replicas use that are pending or running.
    pub async fn instances(&self) -> Result<Vec<rafter::cloud::Instance>, WorldError> {
        let all = self.provider.list().await.map_err(|e| WorldError::Manifest(format!("listing instances: {e}")))?;
        Ok(all.into_iter().filter(|i| i.state <= rafter::cloud::InstanceState::Running).collect())
    }

    pub async fn nodes(&self) -> Result<Vec<Node>, WorldError> {
        Ok(Api::<Node>::all(self.client.clone()).list(&ListParams::default()).await?.items)
    }

    pub async fn claims(&self) -> Result<Vec<NodeClaim>, WorldError> {
        Ok(Api::<NodeClaim>::all(self.client.clone()).list(&ListParams::default()).await?.items)
    }

    /// Inflate pods that are Running and Ready.
    pub async fn running(&self) -> Result<usize, WorldError> {
        Ok(self.pods().await?.iter().filter(|p| rafter_sim::components::ready(p)).count())
    }

    /// A fresh solve of `pods` (bound or not) on an empty cluster with this world's pools: what
    /// the pods need at the least, whatever order they came in.
    pub async fn fresh_plan(&self, pods: Vec<Pod>) -> Result<rafter::scheduling::solver::Plan, WorldError> {
        use kube::ResourceExt;
        let pools: Vec<rafter::api::NodePool> =
            Api::<rafter::api::NodePool>::all(self.client.clone()).list(&ListParams::default()).await?.items;
        let mut types = std::collections::HashMap::new();
        for pool in &pools {
            let list =
                self.provider.instance_types(pool).await.map_err(|e| {
                    WorldError::Manifest(format!("instance types of NodePool {}: {e}", pool.name_any()))
                })?;
            types.insert(pool.name_any(), list);
        }
        let pending = pods
            .into_iter()
            .map(|mut p| {
                if let Some(spec) = p.spec.as_mut() {
                    spec.node_name = None;
                }
                p.status = None;
                p
            })
            .collect();
        let snapshot = rafter::state::Snapshot { pools: &pools, ..Default::default() };
        let (input, _) = rafter::state::scheduling_input(snapshot, pending, |p| {
            types.get(p.metadata.name.as_deref().unwrap_or_default()).cloned().unwrap_or_default()
        });
        Ok(rafter::scheduling::solver::solve(&input))
    }

    /// Polls `check` every 100 ms until it is true, at most `limit`.
    pub async fn wait_for<F, Fut>(&self, what: &str, limit: Duration, mut check: F) -> Result<Duration, WorldError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool, WorldError>>,
    {
        let started = tokio::time::Instant::now();
        loop {
            if check().await.unwrap_or(false) {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= limit {
                return Err(WorldError::Timeout(limit, what.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the simulated components (the API server stops when the world is dropped).
    pub fn stop(&mut self) {
        for c in &mut self.components {
            c.stop();
        }
    }
}

/// The client configuration a kubeconfig file gives (its current context, or `context`), with kube's
/// retry layer off: it retries every 429, which turns a PodDisruptionBudget's refusal into minutes,
/// and every caller here retries on its own terms.
pub async fn kubeconfig(path: &std::path::Path, context: Option<String>) -> Result<kube::Config, WorldError> {
    let invalid = |e: &dyn std::fmt::Display| WorldError::Manifest(format!("kubeconfig {}: {e}", path.display()));
    let file = kube::config::Kubeconfig::read_from(path).map_err(|e| invalid(&e))?;
    let options = kube::config::KubeConfigOptions { context, ..Default::default() };
    let mut config = kube::Config::from_custom_kubeconfig(file, &options).await.map_err(|e| invalid(&e))?;
    config.default_retry = false;
    Ok(config)
}

/// Applies rendered RBAC and returns a token of the ServiceAccount it defines.
async fn install_rbac(client: &kube::Client, path: &std::path::Path) -> Result<String, WorldError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| WorldError::Manifest(format!("reading the rendered RBAC {}: {e}", path.display())))?;
    apply(client, &text).await?;
    let account = text
        .split("\n---")
        .filter_map(|doc| serde_saphyr::from_str::<Value>(doc).ok())
        .find(|v| v["kind"] == "ServiceAccount")
        .ok_or_else(|| WorldError::Manifest(format!("{} defines no ServiceAccount", path.display())))?;
    let (name, namespace) = (
        account["metadata"]["name"].as_str().unwrap_or_default(),
        account["metadata"]["namespace"].as_str().unwrap_or("default"),
    );
    let api: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = k8s_openapi::api::authentication::v1::TokenRequest::default();
    let issued = api.create_token_request(name, &PostParams::default(), &request).await?;
    issued
        .status
        .map(|s| s.token)
        .ok_or_else(|| WorldError::Manifest(format!("TokenRequest for {namespace}/{name} returned no token")))
}

impl Drop for World {
    /// Under RBAC: records which rules were exercised, and fails the test on any refused call.
    fn drop(&mut self) {
        let Some(report) = self.rbac_report() else { return };
        if let Some(dir) = std::env::var_os(RBAC_COVERAGE_ENV) {
            let dir = std::path::PathBuf::from(dir);
            let file = dir.join(format!("{}-{}.json", std::process::id(), self.url.replace([':', '/', '.'], "_")));
            let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(file, report.to_string()));
        }
        let denied = report["denied"].as_array().cloned().unwrap_or_default();
        if !denied.is_empty() && !std::thread::panicking() {
            panic!("the chart's RBAC refused Rafter {} call(s): {denied:#?}", denied.len());
        }
    }
}

/// Applies every document of a manifest (server-side apply, kinds found by discovery).
pub async fn apply(client: &kube::Client, manifest: &str) -> Result<(), WorldError> {
    for doc in
        manifest.split("\n---").filter(|d| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')))
    {
        let value: Value = serde_saphyr::from_str(doc).map_err(|e| WorldError::Manifest(e.to_string()))?;
        let api_version = value["apiVersion"].as_str().unwrap_or_default();
        let kind = value["kind"].as_str().unwrap_or_default();
        let name = value["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
        let api: Api<DynamicObject> = match caps.scope {
            kube::discovery::Scope::Namespaced => {
                let ns = value["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
                Api::namespaced_with(client.clone(), &ns, &resource)
            }
            kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        api.patch(&name, &PatchParams::apply("rafter-demo").force(), &Patch::Apply(&value)).await?;
    }
    Ok(())
}
