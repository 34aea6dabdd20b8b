//! rafter-aws: Rafter's cloud and queue on AWS through the official SDK. [`AwsCloud`] (here: its
//! configuration, caches of prices, types and resolved node classes, and the `CloudProvider`
//! calls) is spread over `clients` (SDK clients, call counts, errors), `discovery` and `nodeclass`
//! (resolving a node class), `templates` (launch templates), `launch` (choosing offerings),
//! `fleet` (CreateFleet, tagging, adoption), `instances` (describe and terminate), `coalesce`
//! (merging concurrent calls) and `userdata`; the interruption queue is [`sqs::SqsQueue`]. The
//! traits they implement, and everything that decides, live in `rafter`, which builds without the
//! SDK.
//!
//! This file stays one piece because `AwsCloud`'s caches and locks are shared by all its
//! `CloudProvider` calls; everything that does not need them lives in the modules above.
#![forbid(unsafe_code)]

mod clients;
pub mod coalesce;
pub mod discovery;
mod fleet;
mod instances;
pub mod launch;
pub mod nodeclass;
pub mod sqs;
mod templates;
pub mod userdata;

pub use clients::{ApiCalls, AwsError, Clients};

use clients::sdk_config;

use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, Filter, FleetLaunchTemplateConfigRequest, FleetLaunchTemplateOverridesRequest,
    FleetLaunchTemplateSpecificationRequest, FleetOnDemandAllocationStrategy, FleetType, InstanceLifecycleType,
    OnDemandOptionsRequest, ResourceType, SpotAllocationStrategy, SpotOptionsRequest, Tag, TagSpecification,
    TargetCapacitySpecificationRequest,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use base64::Engine as _;
use tokio::time::Instant;

use self::coalesce::Coalescer;
use self::launch::{Candidate, FleetErrorKind, SelectError};
use self::nodeclass::Resolved;
use self::userdata::Bootstrap;
use rafter::api::EC2NodeClass;
use rafter::api::ec2nodeclass::{AmiFamily, HttpTokens, Toggle};
use rafter::api::labels;
use rafter::api::nodeclaim::NodeClaim;
use rafter::api::nodepool::NodePool;
use rafter::api::quantity::parse_millis;
use rafter::cloud::unavailable::UnavailableOfferings;
use rafter::cloud::{
    CloudError, CloudProvider, DriftReason, Instance, InstanceState, LAUNCH_GROUP, NodeClassCheck, NodeClassReport,
    OfferingKey, TAG_NODECLAIM, TAG_NODEPOOL, launch_group, parse_provider_id,
};
use rafter::mix::fnv1a;
use rafter::scheduling::catalog;
use rafter::scheduling::instance_types::{CapacityType, InstanceType, InstanceTypeSpec, KubeletSettings};
use rafter::scheduling::requirements::Requirements;
use rafter::scheduling::resources::Resources;

/// Tag naming the node class an instance was launched from.
pub const TAG_NODECLASS: &str = "karpenter.k8s.aws/ec2nodeclass";

/// How Rafter reaches EC2 and what it tells nodes about the cluster.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    pub cluster: String,
    pub region: String,
    /// An endpoint for every service (an emulator in tests); AWS's own endpoints when unset.
    pub endpoint: Option<String>,
    /// Static keys; the default chain (IRSA, Pod Identity, environment, profile) when unset.
    pub credentials: Option<(String, String)>,
    /// For AMI aliases (`al2023@latest` → the EKS image of this version).
    pub kubernetes_version: String,
    pub cluster_endpoint: String,
    pub cluster_ca: String,
    pub cluster_cidr: String,
    /// Launch coalescing: identical requests within `batch_idle` (at most `batch_max`) share a call.
    pub batch_idle: Duration,
    pub batch_max: Duration,
    /// How long an offering EC2 had no capacity for is avoided.
    pub unavailable_ttl: Duration,
    /// Extra EC2 interceptors, after Rafter's own: fault injection for tests (a response lost
    /// after EC2 acted on the call), request logging.
    pub ec2_interceptors: Vec<aws_sdk_ec2::config::SharedInterceptor>,
}

impl AwsConfig {
    pub fn new(cluster: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            region: region.into(),
            endpoint: None,
            credentials: None,
            kubernetes_version: "1.33".into(),
            cluster_endpoint: String::new(),
            cluster_ca: String::new(),
            cluster_cidr: "10.100.0.0/16".into(),
            batch_idle: Duration::from_millis(35),
            batch_max: Duration::from_secs(1),
            unavailable_ttl: Duration::from_secs(180),
            ec2_interceptors: Vec::new(),
        }
    }

    fn cluster_tag(&self) -> String {
        format!("kubernetes.io/cluster/{}", self.cluster)
    }
}

/// Where the provider reads EC2NodeClasses (the controller's watch cache; a map in tests).
pub trait NodeClassSource: Send + Sync + std::fmt::Debug {
    fn node_class(&self, name: &str) -> Option<EC2NodeClass>;
}

/// A fixed set of node classes.
#[derive(Debug, Default)]
pub struct StaticNodeClasses(pub Mutex<HashMap<String, EC2NodeClass>>);

impl StaticNodeClasses {
    pub fn new(classes: impl IntoIterator<Item = EC2NodeClass>) -> Self {
        Self(Mutex::new(classes.into_iter().map(|c| (c.name_any(), c)).collect()))
    }

    pub fn put(&self, class: EC2NodeClass) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(class.name_any(), class);
    }
}

impl NodeClassSource for StaticNodeClasses {
    fn node_class(&self, name: &str) -> Option<EC2NodeClass> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }
}

/// How often each kind of data is fetched again.
const TYPES_TTL: Duration = Duration::from_secs(300);
const SPOT_TTL: Duration = Duration::from_secs(300);
const ON_DEMAND_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long a node class's resolution is reused by launches.
const CLASS_TTL: Duration = Duration::from_secs(60);
/// How long a launch configuration error stops launches for a class that did not change.
const BLOCK_TTL: Duration = Duration::from_secs(300);

/// Spot prices by (instance type, zone).
type SpotPrices = Arc<HashMap<(String, String), f64>>;

#[derive(Debug, Clone)]
struct ClassEntry {
    at: Instant,
    generation: Option<i64>,
    /// Resolved by the leader, which creates the instance profile; a standby's entry only read.
    mutated: bool,
    report: NodeClassReport,
    resolved: Option<Arc<Resolved>>,
}

/// What a class's built instance types were built from. It holds the inputs themselves, so the
/// comparison by identity cannot be fooled by a freed and reused address.
#[derive(Debug, Clone)]
struct BuiltKey {
    class: String,
    generation: Option<i64>,
    resolved: Arc<Resolved>,
    specs: Arc<Vec<InstanceTypeSpec>>,
    spot: SpotPrices,
}

impl PartialEq for BuiltKey {
    fn eq(&self, other: &Self) -> bool {
        self.class == other.class
            && self.generation == other.generation
            && Arc::ptr_eq(&self.resolved, &other.resolved)
            && Arc::ptr_eq(&self.specs, &other.specs)
            && Arc::ptr_eq(&self.spot, &other.spot)
    }
}

#[derive(Debug, Default)]
struct State {
    specs: Option<(Instant, Arc<Vec<InstanceTypeSpec>>)>,
    spot: Option<(Instant, SpotPrices)>,
    on_demand: Option<(Instant, Arc<HashMap<String, f64>>)>,
    classes: HashMap<String, ClassEntry>,
    templates: HashSet<String>,
    /// Class → its instance types and what they were built from.
    built: HashMap<String, (BuiltKey, Arc<Vec<InstanceType>>)>,
    unavailable: UnavailableOfferings,
    bad_subnets: HashMap<String, Instant>,
    /// Class → (generation, why, until): launches stopped after a configuration error.
    blocked: HashMap<String, (Option<i64>, String, Instant)>,
    refresh_failures: BTreeMap<&'static str, u64>,
    refresh_attempts: HashMap<&'static str, Instant>,
}

/// Everything the coalescers' executors need.
#[derive(Debug)]
struct Inner {
    config: AwsConfig,
    clients: Clients,
    state: Mutex<State>,
    /// One refresh at a time: a burst of launches waits for one DescribeInstanceTypes.
    refreshing: tokio::sync::Mutex<()>,
    /// One adoption at a time, so two claims of a group never take the same instance.
    adopting: tokio::sync::Mutex<()>,
    /// Per launch group: fleet calls hold it shared from `CreateFleet` until their instances
    /// carry their claims' tags. An adoption only proceeds when it can hold it alone, so it never
    /// takes an instance this process has just launched for another claim of the group (it
    /// launches afresh instead; garbage collection reclaims any instance a dead leader left).
    launching: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
}

/// One fleet call's shape: requests with equal shapes are merged.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FleetShape {
    class: String,
    /// Only claims of one launch group share a call: the group tag is set at launch, and is what
    /// lets the next leader find instances whose claim tags were never written.
    group: String,
    capacity_type: CapacityType,
    /// (launch template, type, subnet, zone).
    overrides: Vec<(String, String, String, String)>,
    tags: BTreeMap<String, String>,
    /// Price per (type, zone) in micro-dollars, for the instances' reported price.
    prices: Vec<u64>,
}

#[derive(Debug)]
struct FleetRequest {
    name: String,
    uid: String,
}

type FleetCoalescer = Coalescer<FleetShape, FleetRequest, Result<Instance, CloudError>>;
type LookupCoalescer = Coalescer<(), String, Result<Option<Instance>, CloudError>>;
type TerminateCoalescer = Coalescer<(), String, Result<(), CloudError>>;
type GetCoalescer = Coalescer<(), String, Result<Instance, CloudError>>;

/// The EC2 cloud provider.
#[derive(Debug)]
pub struct AwsCloud {
    inner: Arc<Inner>,
    classes: Arc<dyn NodeClassSource>,
    calls: Arc<ApiCalls>,
    fleets: FleetCoalescer,
    lookups: LookupCoalescer,
    terminations: TerminateCoalescer,
    gets: GetCoalescer,
}

impl AwsCloud {
    pub async fn new(config: AwsConfig, classes: Arc<dyn NodeClassSource>) -> Self {
        let calls = Arc::new(ApiCalls::default());
        let clients = Clients::new(&config, calls.clone()).await;
        let static_prices: HashMap<String, f64> = catalog::us_east_1()
            .map(|specs| specs.into_iter().map(|s| (s.name, s.on_demand_price)).collect())
            .unwrap_or_default();
        let state = State { on_demand: Some((Instant::now(), Arc::new(static_prices))), ..State::default() };
        let (idle, max) = (config.batch_idle, config.batch_max);
        let inner = Arc::new(Inner {
            config,
            clients,
            state: Mutex::new(state),
            refreshing: tokio::sync::Mutex::new(()),
            adopting: tokio::sync::Mutex::new(()),
            launching: Mutex::new(HashMap::new()),
        });
        let fleet_inner = inner.clone();
        let lookup_inner = inner.clone();
        let term_inner = inner.clone();
        let get_inner = inner.clone();
        Self {
            classes,
            calls,
            fleets: Coalescer::new(
                idle,
                max,
                1000,
                Arc::new(move |shape, reqs| {
                    let inner = fleet_inner.clone();
                    Box::pin(async move { inner.run_fleet(shape, reqs).await })
                }),
            ),
            lookups: Coalescer::new(
                idle,
                max,
                200,
                Arc::new(move |(), names| {
                    let inner = lookup_inner.clone();
                    Box::pin(async move { inner.run_lookup(names).await })
                }),
            ),
            terminations: Coalescer::new(
                idle,
                max,
                1000,
                Arc::new(move |(), ids| {
                    let inner = term_inner.clone();
                    Box::pin(async move { inner.run_terminate(ids).await })
                }),
            ),
            gets: Coalescer::new(
                idle,
                max,
                1000,
                Arc::new(move |(), ids| {
                    let inner = get_inner.clone();
                    Box::pin(async move { inner.run_get(ids).await })
                }),
            ),
            inner,
        }
    }

    /// AWS calls made so far, by (service, operation).
    pub fn api_calls(&self) -> BTreeMap<(String, String), u64> {
        self.calls.snapshot()
    }

    /// Refreshes that failed (the last good data was kept), by kind.
    pub fn refresh_failures(&self) -> BTreeMap<&'static str, u64> {
        self.inner.lock().refresh_failures.clone()
    }

    pub fn clients(&self) -> &Clients {
        &self.inner.clients
    }

    fn class(&self, name: &str) -> Result<EC2NodeClass, CloudError> {
        self.classes.node_class(name).ok_or_else(|| CloudError::InvalidConfiguration {
            message: format!("EC2NodeClass {name:?} does not exist; create it or fix the NodePool's nodeClassRef"),
        })
    }

    fn launchable(&self, class: &EC2NodeClass) -> Result<(), CloudError> {
        let name = class.name_any();
        let mut state = self.inner.lock();
        if let Some((generation, why, until)) = state.blocked.get(&name) {
            if *generation == class.metadata.generation && *until > Instant::now() {
                return Err(CloudError::InvalidConfiguration { message: why.clone() });
            }
            state.blocked.remove(&name);
        }
        Ok(())
    }

    /// The class resolved for its instance types: reads only, so any replica may ask.
    async fn resolved(&self, class: &EC2NodeClass) -> Result<Arc<Resolved>, CloudError> {
        let entry = self.inner.class_entry(class, false, false).await?;
        Self::not_ready(class, entry)
    }

    /// The class resolved for a launch (the leader's): its instance profile created if Rafter
    /// manages it, and required.
    async fn ready(&self, class: &EC2NodeClass) -> Result<Arc<Resolved>, CloudError> {
        let entry = self.inner.class_entry(class, false, true).await?;
        let checks = entry.report.checks.clone();
        let resolved = Self::not_ready(class, entry)?;
        if resolved.instance_profile.is_none() {
            return Err(CloudError::InvalidConfiguration {
                message: format!(
                    "EC2NodeClass {:?} is not ready: {}",
                    class.metadata.name.as_deref().unwrap_or_default(),
                    checks.iter().filter(|c| !c.ok).map(|c| c.message.as_str()).collect::<Vec<_>>().join("; ")
                ),
            });
        }
        Ok(resolved)
    }

    fn not_ready(class: &EC2NodeClass, entry: ClassEntry) -> Result<Arc<Resolved>, CloudError> {
        entry.resolved.ok_or_else(|| CloudError::InvalidConfiguration {
            message: format!(
                "EC2NodeClass {:?} is not ready: {}",
                class.metadata.name.as_deref().unwrap_or_default(),
                entry.report.checks.iter().filter(|c| !c.ok).map(|c| c.message.as_str()).collect::<Vec<_>>().join("; ")
            ),
        })
    }

    /// A class's instance types, built once per (class, resolution, catalog) and shared: every
    /// launch needs them, and building them means hundreds of types.
    async fn built_types(
        &self,
        class: &EC2NodeClass,
        resolved: &Arc<Resolved>,
    ) -> Result<Arc<Vec<InstanceType>>, CloudError> {
        let (specs, spot) = self.inner.catalog().await?;
        let key = BuiltKey {
            class: class.name_any(),
            generation: class.metadata.generation,
            resolved: resolved.clone(),
            specs: specs.clone(),
            spot: spot.clone(),
        };
        if let Some((k, types)) = &self.inner.lock().built.get(&key.class)
            && *k == key
        {
            return Ok(types.clone());
        }
        let kubelet = kubelet_settings(class);
        let zones: HashSet<&str> = resolved.subnets.iter().map(|s| s.zone.as_str()).collect();
        let arches: HashSet<&str> = resolved.amis.iter().map(|a| a.arch.as_str()).collect();
        let mut out = Vec::new();
        for spec in specs.iter() {
            if !arches.contains(spec.arch.as_str()) {
                continue;
            }
            let mut spec = spec.clone();
            spec.zones.retain(|z| zones.contains(z.as_str()));
            if spec.zones.is_empty() {
                continue;
            }
            out.push(InstanceType::new(&spec, &kubelet, |z| spot.get(&(spec.name.clone(), z.to_string())).copied()));
        }
        let types = Arc::new(out);
        self.inner.lock().built.insert(key.class.clone(), (key, types.clone()));
        Ok(types)
    }

    /// A class's instance types for the solver, with offerings in the unavailable cache marked.
    async fn types_for(&self, class: &EC2NodeClass, resolved: &Arc<Resolved>) -> Result<Vec<InstanceType>, CloudError> {
        let mut types = self.built_types(class, resolved).await?.as_ref().clone();
        self.inner.lock().unavailable.mask(&mut types, Instant::now());
        Ok(types)
    }
}

fn tag_spec(resource: ResourceType, tags: &BTreeMap<String, String>) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .set_tags(Some(tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()))
        .build()
}

/// Tags on everything Rafter launches for a pool: the user's, then Rafter's own.
fn common_tags(config: &AwsConfig, class: &EC2NodeClass, pool: &str) -> BTreeMap<String, String> {
    let mut tags = class.spec.tags.clone();
    tags.insert(config.cluster_tag(), "owned".into());
    tags.insert("eks:eks-cluster-name".into(), config.cluster.clone());
    tags.insert(TAG_NODECLASS.into(), class.name_any());
    tags.insert(TAG_NODEPOOL.into(), pool.into());
    tags
}

fn claim_tags(pool: &str, claim: &str) -> [(String, String); 2] {
    [(TAG_NODECLAIM.to_string(), claim.to_string()), ("Name".to_string(), format!("{pool}/{claim}"))]
}

/// Kubelet settings from the node class, for allocatable.
fn kubelet_settings(class: &EC2NodeClass) -> KubeletSettings {
    let mut k = KubeletSettings::default();
    if let Some(kubelet) = &class.spec.kubelet {
        k.max_pods = kubelet.max_pods.map(i64::from);
        k.pods_per_core = kubelet.pods_per_core.map(i64::from);
        let resources = |map: &BTreeMap<String, String>| {
            let mut r = Resources::zero();
            for (name, value) in map {
                if let Ok(millis) = parse_millis(value) {
                    let amount = if name == "cpu" { millis } else { millis / 1000 };
                    r.set(name, amount as i64);
                }
            }
            r
        };
        if !kubelet.kube_reserved.is_empty() {
            k.kube_reserved = Some(resources(&kubelet.kube_reserved));
        }
        k.system_reserved = resources(&kubelet.system_reserved);
        if let Some(v) = kubelet.eviction_hard.get("memory.available")
            && let Ok(millis) = parse_millis(v)
        {
            k.eviction_memory = (millis / 1000) as i64;
        }
    }
    let root = class.spec.block_device_mappings.iter().find(|d| d.root_volume == Some(true));
    if let Some(bytes) = root.and_then(|d| d.ebs.as_ref()?.volume_size.as_ref()?.whole_units().ok()) {
        k.root_volume = bytes as i64;
    }
    k
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed_refresh(&self, kind: &'static str, err: &AwsError) {
        tracing::warn!(%err, "cannot refresh {kind}; keeping the last good data");
        *self.lock().refresh_failures.entry(kind).or_insert(0) += 1;
    }

    /// Specs and spot prices, refreshed when stale; a failed refresh keeps the last good data.
    async fn refresh_on_demand(&self) {
        match discovery::on_demand_prices(&self.clients, &self.config.region).await {
            Ok(p) if !p.is_empty() => {
                let mut s = self.lock();
                let mut merged = s.on_demand.as_ref().map(|(_, m)| m.as_ref().clone()).unwrap_or_default();
                merged.extend(p);
                s.on_demand = Some((Instant::now(), Arc::new(merged)));
            }
            Ok(_) => {
                self.failed_refresh("on-demand-prices", &AwsError::Build("the Pricing API returned no prices".into()))
            }
            Err(e) => self.failed_refresh("on-demand-prices", &e),
        }
    }

    async fn catalog(self: &Arc<Self>) -> Result<(Arc<Vec<InstanceTypeSpec>>, SpotPrices), CloudError> {
        let fresh = |at: Option<Instant>, ttl: Duration| at.is_some_and(|at| at.elapsed() < ttl);
        let snapshot = |s: &State| {
            (
                s.specs.as_ref().map(|(at, v)| (*at, v.clone())),
                s.spot.as_ref().map(|(at, v)| (*at, v.clone())),
                s.on_demand.as_ref().map(|(at, v)| (*at, v.clone())),
            )
        };
        let (specs, spot, _) = snapshot(&self.lock());
        if let (Some(specs), Some(spot)) = (&specs, &spot)
            && fresh(Some(specs.0), TYPES_TTL)
            && fresh(Some(spot.0), SPOT_TTL)
        {
            return Ok((specs.1.clone(), spot.1.clone()));
        }
        let _guard = self.refreshing.lock().await;
        let (specs, spot, on_demand) = snapshot(&self.lock());
        let prices = on_demand.map(|(_, p)| p).unwrap_or_default();
        if !fresh(on_demand_refreshed(&self.lock()), ON_DEMAND_TTL) {
            // The shipped table serves until the Pricing API answers; nobody waits for it.
            mark_on_demand_attempt(&mut self.lock());
            let inner = self.clone();
            tokio::spawn(async move { inner.refresh_on_demand().await });
        }
        let specs = match specs {
            Some((at, v)) if fresh(Some(at), TYPES_TTL) => v,
            old => match discovery::instance_types(&self.clients, &prices).await {
                Ok(v) => {
                    let v = Arc::new(v);
                    self.lock().specs = Some((Instant::now(), v.clone()));
                    v
                }
                Err(e) => {
                    self.failed_refresh("instance-types", &e);
                    match old {
                        Some((_, v)) => v,
                        None => return Err(e.to_cloud()),
                    }
                }
            },
        };
        let spot = match spot {
            Some((at, v)) if fresh(Some(at), SPOT_TTL) => v,
            old => match discovery::spot_prices(&self.clients).await {
                Ok(v) => {
                    let v = Arc::new(v);
                    self.lock().spot = Some((Instant::now(), v.clone()));
                    v
                }
                Err(e) => {
                    self.failed_refresh("spot-prices", &e);
                    old.map(|(_, v)| v).unwrap_or_default()
                }
            },
        };
        Ok((specs, spot))
    }

    /// The class's resolution, fresh when `force` or stale.
    async fn class_entry(&self, class: &EC2NodeClass, force: bool, mutate: bool) -> Result<ClassEntry, CloudError> {
        let name = class.name_any();
        let cached = |s: &State| {
            s.classes
                .get(&name)
                .filter(|e| e.generation == class.metadata.generation && e.at.elapsed() < CLASS_TTL)
                // A launch needs the leader's resolution, and a profile it could not make yet
                // (a start-up race in IAM) is tried again rather than kept for the TTL.
                .filter(|e| !mutate || (e.mutated && e.resolved.as_ref().is_some_and(|r| r.instance_profile.is_some())))
                .cloned()
        };
        if !force && let Some(e) = cached(&self.lock()) {
            return Ok(e);
        }
        let _guard = self.refreshing.lock().await;
        if !force && let Some(e) = cached(&self.lock()) {
            return Ok(e);
        }
        let (report, resolved) =
            nodeclass::resolve(&self.clients, &self.config.cluster, &self.config.kubernetes_version, class, mutate)
                .await
                .map_err(|e| e.to_cloud())?;
        let entry = ClassEntry {
            at: Instant::now(),
            generation: class.metadata.generation,
            mutated: mutate,
            report,
            resolved: resolved.map(Arc::new),
        };
        self.lock().classes.insert(name, entry.clone());
        Ok(entry)
    }

    /// Stops launches for a class (at the generation last resolved) after a configuration error.
    fn block_by_name(&self, class: &str, why: &str) {
        let generation = self.lock().classes.get(class).and_then(|e| e.generation);
        tracing::error!(ec2nodeclass = %class, error = %why, "launches for this node class stop until it changes or 5m pass");
        self.lock().blocked.insert(class.to_string(), (generation, why.to_string(), Instant::now() + BLOCK_TTL));
    }
}

fn on_demand_refreshed(s: &State) -> Option<Instant> {
    s.refresh_attempts.get("on-demand-prices").copied()
}

fn mark_on_demand_attempt(s: &mut State) {
    s.refresh_attempts.insert("on-demand-prices", Instant::now());
}

#[async_trait]
impl CloudProvider for AwsCloud {
    async fn create(&self, claim: &NodeClaim) -> Result<Instance, CloudError> {
        let name = claim.name_any();
        // A previous leader may have launched for this claim and died before recording it.
        if let Some(found) = self.lookups.submit((), name.clone()).await.unwrap_or(Ok(None))? {
            return Ok(found);
        }
        // Or it died after a merged launch, before tagging each instance with its claim.
        let group = launch_group(claim).map(str::to_string);
        if let Some(group) = &group
            && let Some(adopted) = self.inner.adopt(claim, group).await?
        {
            return Ok(adopted);
        }
        let class = self.class(&claim.spec.template.node_class_ref.name)?;
        self.launchable(&class)?;
        let resolved = self.ready(&class).await?;
        let types = self.built_types(&class, &resolved).await?;
        let requirements = Requirements::from_api(&claim.spec.template.requirements)
            .map_err(|e| CloudError::InvalidConfiguration { message: format!("NodeClaim {name} requirements: {e}") })?;
        let arches: HashSet<String> = resolved.amis.iter().map(|a| a.arch.clone()).collect();
        let (unavailable, bad_subnets) = {
            let now = Instant::now();
            let mut s = self.inner.lock();
            s.unavailable.expire(now);
            s.bad_subnets.retain(|_, until| *until > now);
            (s.unavailable.active(now), s.bad_subnets.keys().cloned().collect::<HashSet<_>>())
        };
        let (capacity_type, candidates) = launch::select(
            &types,
            &requirements,
            &resolved.subnets,
            &arches,
            &|k| unavailable.contains(k),
            &bad_subnets,
        )
        .map_err(|e| match e {
            SelectError::Exhausted(offerings) => CloudError::InsufficientCapacity { offerings },
            SelectError::NoMatch => CloudError::InvalidConfiguration {
                message: format!(
                    "no instance type satisfies NodeClaim {name} in the zones and architectures of EC2NodeClass {:?}",
                    class.metadata.name.as_deref().unwrap_or_default()
                ),
            },
        })?;
        let pool = claim.metadata.labels.as_ref().and_then(|l| l.get(labels::NODEPOOL)).cloned().unwrap_or_default();
        let mut templates: HashMap<String, String> = HashMap::new();
        for arch in candidates.iter().map(|c| c.arch.clone()).collect::<HashSet<_>>() {
            let max_pods = class.spec.kubelet.as_ref().and_then(|k| k.max_pods).map(i64::from);
            let template = self.ensure_template(&class, &resolved, &arch, claim, max_pods).await?;
            templates.insert(arch, template);
        }
        let mut tags = common_tags(&self.inner.config, &class, &pool);
        if let Some(group) = &group {
            tags.insert(LAUNCH_GROUP.into(), group.clone());
        }
        let shape = FleetShape {
            class: class.name_any(),
            // A claim without a group launches alone, tagged with its name at launch.
            group: group.unwrap_or_else(|| name.clone()),
            capacity_type,
            overrides: candidates
                .iter()
                .map(|c: &Candidate| {
                    (
                        templates.get(&c.arch).cloned().unwrap_or_default(),
                        c.instance_type.clone(),
                        c.subnet_id.clone(),
                        c.zone.clone(),
                    )
                })
                .collect(),
            tags,
            prices: candidates.iter().map(|c| (c.price * 1e6).round() as u64).collect(),
        };
        let request = FleetRequest { name, uid: claim.metadata.uid.clone().unwrap_or_default() };
        self.fleets
            .submit(shape, request)
            .await
            .unwrap_or_else(|| Err(CloudError::Transient { message: "the fleet call was dropped".into() }))
    }

    async fn delete(&self, claim: &NodeClaim) -> Result<(), CloudError> {
        let id = match claim.status.as_ref().and_then(|s| s.provider_id.as_deref()).and_then(parse_provider_id) {
            Some((_, id)) => id.to_string(),
            None => {
                let name = claim.name_any();
                match self.lookups.submit((), name.clone()).await.unwrap_or(Ok(None))? {
                    Some(found) => found.id,
                    None => return Err(CloudError::NotFound { id: name }),
                }
            }
        };
        self.terminations
            .submit((), id)
            .await
            .unwrap_or_else(|| Err(CloudError::Transient { message: "the terminate call was dropped".into() }))
    }

    async fn get(&self, provider_id: &str) -> Result<Instance, CloudError> {
        let (_, id) =
            parse_provider_id(provider_id).ok_or_else(|| CloudError::NotFound { id: provider_id.to_string() })?;
        self.gets
            .submit((), id.to_string())
            .await
            .unwrap_or_else(|| Err(CloudError::Transient { message: "the describe call was dropped".into() }))
    }

    async fn list(&self) -> Result<Vec<Instance>, CloudError> {
        let found = self.inner.describe(Vec::new(), self.inner.live_filters()).await.map_err(|e| e.to_cloud())?;
        Ok(found.iter().filter_map(|i| self.inner.to_instance(i, None)).collect())
    }

    async fn instance_types(&self, pool: &NodePool) -> Result<Vec<InstanceType>, CloudError> {
        let class = self.class(&pool.spec.template.spec.node_class_ref.name)?;
        let resolved = self.resolved(&class).await?;
        self.types_for(&class, &resolved).await
    }

    async fn is_drifted(&self, claim: &NodeClaim) -> Result<Option<DriftReason>, CloudError> {
        let Some(provider) = claim.status.as_ref().and_then(|s| s.provider_id.as_deref()) else { return Ok(None) };
        let Some((_, id)) = parse_provider_id(provider) else { return Ok(None) };
        let class = self.class(&claim.spec.template.node_class_ref.name)?;
        let resolved = self.resolved(&class).await?;
        let found = self.inner.describe(vec![id.to_string()], Vec::new()).await.map_err(|e| e.to_cloud())?;
        let image = found.first().and_then(|i| i.image_id()).unwrap_or_default();
        if !image.is_empty() && !resolved.amis.iter().any(|a| a.id == image) {
            return Ok(Some(DriftReason("AMIDrift".into())));
        }
        let subnet = found.first().and_then(|i| i.subnet_id()).unwrap_or_default();
        if !subnet.is_empty() && !resolved.subnets.iter().any(|s| s.id == subnet) {
            return Ok(Some(DriftReason("SubnetDrift".into())));
        }
        Ok(None)
    }

    fn mark_unavailable(&self, offerings: &[OfferingKey], ttl: Duration) {
        self.inner.lock().unavailable.mark(offerings, Instant::now() + ttl);
    }

    fn mask_unavailable(&self, types: &mut [InstanceType]) {
        self.inner.lock().unavailable.mask(types, Instant::now());
    }

    fn stats(&self) -> rafter::cloud::CloudStats {
        rafter::cloud::CloudStats {
            api_calls: self.api_calls(),
            refresh_failures: self.refresh_failures().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }

    async fn node_class_report(&self, class: &EC2NodeClass) -> Result<Option<NodeClassReport>, CloudError> {
        let mut report = self.inner.class_entry(class, true, true).await?.report;
        if let Err(CloudError::InvalidConfiguration { message }) = self.launchable(class)
            && let Some(ready) =
                report.checks.iter_mut().find(|c| c.type_ == rafter::api::ec2nodeclass::conditions::READY)
        {
            *ready = NodeClassCheck {
                type_: ready.type_.clone(),
                ok: false,
                reason: "LaunchConfigurationError".into(),
                message: format!("EC2 refused a launch: {message}"),
            };
        }
        Ok(Some(report))
    }
}
