//! rafter-aws: Rafter's cloud and queue on AWS through the official SDK — EC2 discovery, node class
//! resolution, launch templates, CreateFleet with coalescing, the unavailable-offerings cache,
//! termination and listing ([`AwsCloud`]), and the interruption queue on SQS ([`sqs::SqsQueue`]).
//! The traits they implement, and everything that decides, live in `rafter`, which builds without
//! the SDK.
#![forbid(unsafe_code)]

pub mod coalesce;
pub mod discovery;
pub mod launch;
pub mod nodeclass;
pub mod sqs;
pub mod userdata;

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

/// AWS API calls by (service, operation), counted per attempt (retries included).
#[derive(Debug, Default)]
pub struct ApiCalls(Mutex<BTreeMap<(String, String), u64>>);

impl ApiCalls {
    pub fn snapshot(&self) -> BTreeMap<(String, String), u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn count(&self, service: &str, operation: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((service.to_string(), operation.to_string())).or_insert(0) += 1;
    }
}

#[derive(Debug)]
struct CountCalls(Arc<ApiCalls>);

impl aws_sdk_ec2::config::Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "RafterApiCallCounter"
    }

    fn read_before_attempt(
        &self,
        _context: &aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_ec2::config::RuntimeComponents,
        cfg: &mut aws_sdk_ec2::config::ConfigBag,
    ) -> Result<(), aws_sdk_ec2::error::BoxError> {
        if let Some(m) = cfg.load::<aws_smithy_runtime_api::client::orchestrator::Metadata>() {
            self.0.count(m.service(), m.name());
        }
        Ok(())
    }
}

/// The SDK clients Rafter uses.
#[derive(Debug, Clone)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub iam: aws_sdk_iam::Client,
    pub pricing: aws_sdk_pricing::Client,
}

impl Clients {
    /// Clients from aws-config's default chain, with adaptive retries (jittered exponential backoff
    /// and a client-side rate limit that slows down when EC2 throttles).
    pub async fn new(config: &AwsConfig, calls: Arc<ApiCalls>) -> Self {
        let retry = aws_config::retry::RetryConfig::adaptive()
            .with_max_attempts(5)
            .with_initial_backoff(Duration::from_millis(100))
            .with_max_backoff(Duration::from_secs(5));
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(30))
            .build();
        let shared =
            sdk_config(&config.region, config.endpoint.as_deref(), config.credentials.as_ref(), retry, timeouts).await;
        let mut ec2 = aws_sdk_ec2::config::Builder::from(&shared).interceptor(CountCalls(calls.clone()));
        for extra in &config.ec2_interceptors {
            ec2.push_interceptor(extra.clone());
        }
        let ec2 = ec2.build();
        // The Pricing API lives in a few regions only; us-east-1 answers for every region.
        let pricing_region = if config.endpoint.is_some() { config.region.clone() } else { "us-east-1".into() };
        Self {
            ec2: aws_sdk_ec2::Client::from_conf(ec2),
            ssm: aws_sdk_ssm::Client::from_conf(
                aws_sdk_ssm::config::Builder::from(&shared).interceptor(CountCalls(calls.clone())).build(),
            ),
            iam: aws_sdk_iam::Client::from_conf(
                aws_sdk_iam::config::Builder::from(&shared).interceptor(CountCalls(calls.clone())).build(),
            ),
            // A failed price refresh keeps the shipped table, so it is not worth retrying.
            pricing: aws_sdk_pricing::Client::from_conf(
                aws_sdk_pricing::config::Builder::from(&shared)
                    .region(aws_config::Region::new(pricing_region))
                    .interceptor(CountCalls(calls))
                    .retry_config(aws_config::retry::RetryConfig::disabled())
                    .timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .connect_timeout(Duration::from_secs(5))
                            .operation_timeout(Duration::from_secs(60))
                            .build(),
                    )
                    .build(),
            ),
        }
    }
}

/// The SDK settings every Rafter client starts from: aws-config's default chain for credentials
/// (IRSA, EKS Pod Identity, environment, profile) unless static keys are given (emulators only),
/// and an endpoint override for emulators.
pub async fn sdk_config(
    region: &str,
    endpoint: Option<&str>,
    credentials: Option<&(String, String)>,
    retry: aws_config::retry::RetryConfig,
    timeouts: aws_config::timeout::TimeoutConfig,
) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_string()))
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some((key, secret)) = credentials {
        loader = loader.credentials_provider(aws_sdk_ec2::config::Credentials::new(
            key,
            secret,
            None,
            None,
            "rafter-static",
        ));
    }
    loader.load().await
}

/// An AWS call that failed, with EC2's code and message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AwsError {
    #[error("{operation}: {code}: {message}")]
    Api { operation: String, code: String, message: String, status: Option<u16> },
    #[error("{operation}: cannot reach AWS: {message}")]
    Transport { operation: String, message: String },
    #[error("cannot build an AWS request: {0}")]
    Build(String),
}

impl AwsError {
    pub fn sdk<E>(operation: &str, err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        match (err.code(), &err) {
            (Some(code), _) => AwsError::Api {
                operation: operation.into(),
                code: code.into(),
                message: err.message().unwrap_or_default().into(),
                status,
            },
            (None, SdkError::ServiceError(_) | SdkError::ResponseError(_)) => AwsError::Api {
                operation: operation.into(),
                code: format!("HTTP{}", status.unwrap_or(0)),
                message: aws_sdk_ec2::error::DisplayErrorContext(&err).to_string(),
                status,
            },
            _ => AwsError::Transport {
                operation: operation.into(),
                message: aws_sdk_ec2::error::DisplayErrorContext(&err).to_string(),
            },
        }
    }

    pub fn code_of<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
        err.code()
    }

    pub fn build(err: impl std::fmt::Display) -> Self {
        AwsError::Build(err.to_string())
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// What the controller should do about it.
    pub fn to_cloud(&self) -> CloudError {
        let message = self.to_string();
        match self {
            AwsError::Api { code, .. } if code.contains("NotFound") && code.starts_with("InvalidInstanceID") => {
                CloudError::NotFound { id: message }
            }
            AwsError::Api { code, .. }
                if code == "RequestLimitExceeded" || code == "Throttling" || code == "ThrottlingException" =>
            {
                CloudError::Throttled { message }
            }
            AwsError::Api { code, .. } if launch::is_configuration_error(code) => {
                CloudError::InvalidConfiguration { message }
            }
            AwsError::Build(_) => CloudError::InvalidConfiguration { message },
            _ => CloudError::Transient { message },
        }
    }
}

impl From<AwsError> for CloudError {
    fn from(e: AwsError) -> Self {
        e.to_cloud()
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

    async fn ensure_template(
        &self,
        class: &EC2NodeClass,
        resolved: &Resolved,
        arch: &str,
        claim: &NodeClaim,
        max_pods: Option<i64>,
    ) -> Result<String, CloudError> {
        let ami = resolved.amis.iter().find(|a| a.arch == arch).ok_or_else(|| CloudError::InvalidConfiguration {
            message: format!("no {arch} image resolved for the node class"),
        })?;
        let spec = &class.spec;
        let config = &self.inner.config;
        let bootstrap = Bootstrap {
            cluster_name: config.cluster.clone(),
            cluster_endpoint: config.cluster_endpoint.clone(),
            cluster_ca: config.cluster_ca.clone(),
            cluster_cidr: config.cluster_cidr.clone(),
            labels: claim.metadata.labels.clone().unwrap_or_default(),
            taints: claim.spec.template.taints.iter().chain(&claim.spec.template.startup_taints).cloned().collect(),
            max_pods,
            cluster_dns: spec.kubelet.as_ref().map(|k| k.cluster_dns.clone()).unwrap_or_default(),
        };
        let user_data = userdata::render(resolved.family, &bootstrap, spec.user_data.as_deref())
            .map_err(|e| CloudError::InvalidConfiguration { message: e.to_string() })?;
        let metadata = spec.metadata_options.clone().unwrap_or_default();
        let groups: Vec<String> = resolved.security_groups.iter().map(|g| g.id.clone()).collect();
        let fingerprint = serde_json::json!({
            "ami": ami.id, "userData": user_data, "groups": groups, "profile": resolved.instance_profile.as_deref().unwrap_or_default(),
            "metadata": spec.metadata_options, "disks": spec.block_device_mappings, "tags": spec.tags,
            "monitoring": spec.detailed_monitoring, "publicIP": spec.associate_public_ip_address,
        })
        .to_string();
        let name = launch::template_name(&config.cluster, &fingerprint);
        if self.inner.lock().templates.contains(&name) {
            return Ok(name);
        }
        // A burst of claims needs the template once: the others wait for it and reuse it.
        let _guard = self.inner.refreshing.lock().await;
        if self.inner.lock().templates.contains(&name) {
            return Ok(name);
        }
        use aws_sdk_ec2::types::{
            LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
            LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
            LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
            LaunchTemplateInstanceMetadataProtocolIpv6, LaunchTemplateInstanceNetworkInterfaceSpecificationRequest,
            LaunchTemplatesMonitoringRequest, RequestLaunchTemplateData, VolumeType,
        };
        let tokens = match metadata.http_tokens.unwrap_or(HttpTokens::Required) {
            HttpTokens::Required => LaunchTemplateHttpTokensState::Required,
            HttpTokens::Optional => LaunchTemplateHttpTokensState::Optional,
        };
        let endpoint = match metadata.http_endpoint.unwrap_or(Toggle::Enabled) {
            Toggle::Enabled => LaunchTemplateInstanceMetadataEndpointState::Enabled,
            Toggle::Disabled => LaunchTemplateInstanceMetadataEndpointState::Disabled,
        };
        let ipv6 = match metadata.http_protocol_ipv6.unwrap_or(Toggle::Disabled) {
            Toggle::Enabled => LaunchTemplateInstanceMetadataProtocolIpv6::Enabled,
            Toggle::Disabled => LaunchTemplateInstanceMetadataProtocolIpv6::Disabled,
        };
        let mut data = RequestLaunchTemplateData::builder()
            .image_id(&ami.id)
            .user_data(base64::engine::general_purpose::STANDARD.encode(user_data))
            .iam_instance_profile(
                LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                    .name(resolved.instance_profile.as_deref().unwrap_or_default())
                    .build(),
            )
            .metadata_options(
                LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .http_tokens(tokens)
                    .http_endpoint(endpoint)
                    .http_protocol_ipv6(ipv6)
                    .http_put_response_hop_limit(metadata.http_put_response_hop_limit.unwrap_or(1) as i32)
                    .build(),
            )
            .monitoring(
                LaunchTemplatesMonitoringRequest::builder().enabled(spec.detailed_monitoring.unwrap_or(false)).build(),
            );
        if let Some(public) = spec.associate_public_ip_address {
            data = data.network_interfaces(
                LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                    .device_index(0)
                    .associate_public_ip_address(public)
                    .set_groups(Some(groups.clone()))
                    .build(),
            );
        } else {
            data = data.set_security_group_ids(Some(groups.clone()));
        }
        let disks = if spec.block_device_mappings.is_empty() {
            default_disks(resolved.family)
        } else {
            spec.block_device_mappings.clone()
        };
        for d in &disks {
            let Some(ebs) = &d.ebs else { continue };
            let size_gib = ebs
                .volume_size
                .as_ref()
                .and_then(|q| q.whole_units().ok())
                .map(|bytes| ((bytes + (1 << 30) - 1) >> 30) as i32);
            data = data.block_device_mappings(
                LaunchTemplateBlockDeviceMappingRequest::builder()
                    .set_device_name(d.device_name.clone())
                    .ebs(
                        LaunchTemplateEbsBlockDeviceRequest::builder()
                            .set_volume_size(size_gib)
                            .set_volume_type(ebs.volume_type.map(|v| {
                                VolumeType::from(
                                    serde_json::to_value(v)
                                        .ok()
                                        .and_then(|v| v.as_str().map(str::to_string))
                                        .unwrap_or_default()
                                        .as_str(),
                                )
                            }))
                            .set_encrypted(ebs.encrypted)
                            .set_delete_on_termination(ebs.delete_on_termination.or(Some(true)))
                            .set_iops(ebs.iops.map(|v| v as i32))
                            .set_throughput(ebs.throughput.map(|v| v as i32))
                            .set_kms_key_id(ebs.kms_key_id.clone())
                            .set_snapshot_id(ebs.snapshot_id.clone())
                            .build(),
                    )
                    .build(),
            );
        }
        let mut tags = common_tags(config, class, "");
        tags.remove(TAG_NODEPOOL);
        let request = self
            .inner
            .clients
            .ec2
            .create_launch_template()
            .launch_template_name(&name)
            .launch_template_data(data.build())
            .tag_specifications(tag_spec(ResourceType::LaunchTemplate, &tags));
        match request.send().await {
            Ok(_) => {}
            Err(e) if AwsError::code_of(&e).is_some_and(|c| c.contains("AlreadyExists")) => {}
            Err(e) => {
                let err = AwsError::sdk("CreateLaunchTemplate", e);
                if err.code().is_some_and(launch::is_configuration_error) {
                    self.inner.block_by_name(class.metadata.name.as_deref().unwrap_or_default(), &err.to_string());
                }
                return Err(err.to_cloud());
            }
        }
        self.inner.lock().templates.insert(name.clone());
        Ok(name)
    }
}

fn default_disks(family: AmiFamily) -> Vec<rafter::api::ec2nodeclass::BlockDeviceMapping> {
    use rafter::api::ec2nodeclass::{BlockDevice, BlockDeviceMapping, VolumeType};
    use rafter::api::quantity::Quantity;
    let disk = |device: &str, gib: u32| BlockDeviceMapping {
        device_name: Some(device.into()),
        ebs: Some(BlockDevice {
            encrypted: Some(true),
            volume_size: Some(Quantity::new(format!("{gib}Gi"))),
            volume_type: Some(VolumeType::Gp3),
            ..BlockDevice::default()
        }),
        root_volume: Some(true),
    };
    match family {
        AmiFamily::Bottlerocket => vec![disk("/dev/xvda", 4), disk("/dev/xvdb", 20)],
        _ => vec![disk("/dev/xvda", 20)],
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

fn state_of(name: Option<&aws_sdk_ec2::types::InstanceStateName>) -> InstanceState {
    match name.map(|n| n.as_str()) {
        Some("running") => InstanceState::Running,
        Some("shutting-down") | Some("stopping") | Some("stopped") => InstanceState::ShuttingDown,
        Some("terminated") => InstanceState::Terminated,
        _ => InstanceState::Pending,
    }
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

    fn to_instance(&self, i: &aws_sdk_ec2::types::Instance, price: Option<f64>) -> Option<Instance> {
        let id = i.instance_id()?.to_string();
        let zone = i.placement().and_then(|p| p.availability_zone()).unwrap_or_default().to_string();
        let tags: BTreeMap<String, String> =
            i.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string()))).collect();
        let capacity_type = if i.instance_lifecycle() == Some(&InstanceLifecycleType::Spot) {
            CapacityType::Spot
        } else if i.capacity_reservation_id().is_some() {
            CapacityType::Reserved
        } else {
            CapacityType::OnDemand
        };
        let instance_type = i.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default();
        let price = price.unwrap_or_else(|| {
            let s = self.lock();
            match capacity_type {
                CapacityType::Spot => {
                    s.spot.as_ref().and_then(|(_, m)| m.get(&(instance_type.clone(), zone.clone())).copied())
                }
                CapacityType::OnDemand => s.on_demand.as_ref().and_then(|(_, m)| m.get(&instance_type).copied()),
                CapacityType::Reserved => Some(0.0),
            }
            .unwrap_or(0.0)
        });
        Some(Instance {
            provider_id: format!("aws:///{zone}/{id}"),
            id,
            instance_type,
            zone,
            capacity_type,
            state: state_of(i.state().and_then(|s| s.name())),
            price,
            private_dns_name: i.private_dns_name().unwrap_or_default().to_string(),
            private_ip: i.private_ip_address().unwrap_or_default().to_string(),
            tags,
            launch_time: i
                .launch_time()
                .and_then(|t| t.fmt(aws_sdk_ec2::primitives::DateTimeFormat::DateTime).ok())
                .unwrap_or_default(),
        })
    }

    async fn describe(
        &self,
        ids: Vec<String>,
        filters: Vec<Filter>,
    ) -> Result<Vec<aws_sdk_ec2::types::Instance>, AwsError> {
        let mut req = self.clients.ec2.describe_instances();
        if !ids.is_empty() {
            req = req.set_instance_ids(Some(ids));
        }
        if !filters.is_empty() {
            req = req.set_filters(Some(filters));
        }
        let reservations: Vec<_> = req
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| AwsError::sdk("DescribeInstances", e))?;
        Ok(reservations.into_iter().flat_map(|r| r.instances.unwrap_or_default()).collect())
    }

    fn live_filters(&self) -> Vec<Filter> {
        vec![
            Filter::builder().name("tag-key").values(self.config.cluster_tag()).build(),
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(
                    ["pending", "running", "stopping", "stopped", "shutting-down"].map(String::from).to_vec(),
                ))
                .build(),
        ]
    }

    async fn run_lookup(&self, names: Vec<String>) -> Vec<Result<Option<Instance>, CloudError>> {
        let mut filters = self.live_filters();
        filters.push(Filter::builder().name(format!("tag:{TAG_NODECLAIM}")).set_values(Some(names.clone())).build());
        match self.describe(Vec::new(), filters).await {
            Ok(found) => {
                let mut by_claim: HashMap<String, Instance> = HashMap::new();
                for i in &found {
                    if let Some(inst) = self.to_instance(i, None)
                        && inst.state != InstanceState::ShuttingDown
                        && let Some(claim) = inst.node_claim()
                    {
                        by_claim.insert(claim.to_string(), inst);
                    }
                }
                names.iter().map(|n| Ok(by_claim.get(n).cloned())).collect()
            }
            Err(e) => names.iter().map(|_| Err(e.to_cloud())).collect(),
        }
    }

    async fn run_get(&self, ids: Vec<String>) -> Vec<Result<Instance, CloudError>> {
        let found = self.describe(ids.clone(), Vec::new()).await;
        let one_missing = matches!(&found, Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidInstanceID")));
        if one_missing && ids.len() > 1 {
            // One unknown id fails the whole call: fall back to one call per id.
            let mut results = Vec::new();
            for id in ids {
                results.extend(Box::pin(self.run_get(vec![id])).await);
            }
            return results;
        }
        let by_id: HashMap<String, Instance> = match found {
            Ok(found) => found.iter().filter_map(|i| self.to_instance(i, None)).map(|i| (i.id.clone(), i)).collect(),
            Err(_) if one_missing => HashMap::new(),
            Err(e) => return ids.iter().map(|_| Err(e.to_cloud())).collect(),
        };
        ids.iter().map(|id| by_id.get(id).cloned().ok_or_else(|| CloudError::NotFound { id: id.clone() })).collect()
    }

    async fn run_terminate(&self, ids: Vec<String>) -> Vec<Result<(), CloudError>> {
        let out = self.clients.ec2.terminate_instances().set_instance_ids(Some(ids.clone())).send().await;
        match out {
            Ok(out) => {
                let gone: HashMap<&str, bool> = out
                    .terminating_instances()
                    .iter()
                    .filter_map(|t| {
                        let prev = t.previous_state().and_then(|s| s.name()).map(|n| n.as_str());
                        Some((t.instance_id()?, matches!(prev, Some("shutting-down") | Some("terminated"))))
                    })
                    .collect();
                ids.iter()
                    .map(|id| match gone.get(id.as_str()) {
                        Some(false) => Ok(()),
                        _ => Err(CloudError::NotFound { id: id.clone() }),
                    })
                    .collect()
            }
            Err(e) => {
                let err = AwsError::sdk("TerminateInstances", e);
                let missing = err.code().is_some_and(|c| c.starts_with("InvalidInstanceID"));
                if missing && ids.len() == 1 {
                    return vec![Err(CloudError::NotFound { id: ids[0].clone() })];
                }
                if missing {
                    // One unknown id fails the whole call: fall back to one call per id.
                    let mut results = Vec::new();
                    for id in ids {
                        results.extend(Box::pin(self.run_terminate(vec![id])).await);
                    }
                    return results;
                }
                ids.iter().map(|_| Err(err.to_cloud())).collect()
            }
        }
    }

    async fn run_fleet(&self, shape: FleetShape, reqs: Vec<FleetRequest>) -> Vec<Result<Instance, CloudError>> {
        let lock = self.group_lock(&shape.group);
        let _launching = lock.read().await;
        let n = reqs.len();
        let mut configs: BTreeMap<&str, Vec<FleetLaunchTemplateOverridesRequest>> = BTreeMap::new();
        for (priority, (template, instance_type, subnet, _)) in shape.overrides.iter().enumerate() {
            configs.entry(template.as_str()).or_default().push(
                FleetLaunchTemplateOverridesRequest::builder()
                    .instance_type(aws_sdk_ec2::types::InstanceType::from(instance_type.as_str()))
                    .subnet_id(subnet)
                    .priority(priority as f64)
                    .build(),
            );
        }
        let (default_type, token_base) = match shape.capacity_type {
            CapacityType::Spot => (DefaultTargetCapacityType::Spot, "spot"),
            CapacityType::OnDemand => (DefaultTargetCapacityType::OnDemand, "on-demand"),
            CapacityType::Reserved => (DefaultTargetCapacityType::OnDemand, "reserved"),
        };
        let target = TargetCapacitySpecificationRequest::builder()
            .total_target_capacity(n as i32)
            .default_target_capacity_type(default_type)
            .build();
        let mut tags = shape.tags.clone();
        if n == 1 {
            let pool = tags.get(TAG_NODEPOOL).cloned().unwrap_or_default();
            tags.extend(claim_tags(&pool, &reqs[0].name));
        }
        // Idempotency per claim set: a retried call for the same claims is the same request to EC2.
        let token = if n == 1 {
            reqs[0].uid.clone()
        } else {
            let mut uids: Vec<&str> = reqs.iter().map(|r| r.uid.as_str()).collect();
            uids.sort_unstable();
            format!("{token_base}-{:016x}", fnv1a(&uids.join(",")))
        };
        let mut request = self
            .clients
            .ec2
            .create_fleet()
            .r#type(FleetType::Instant)
            .target_capacity_specification(target)
            .client_token(token)
            .tag_specifications(tag_spec(ResourceType::Instance, &tags))
            .tag_specifications(tag_spec(ResourceType::Volume, &tags));
        for (template, overrides) in configs {
            request = request.launch_template_configs(
                FleetLaunchTemplateConfigRequest::builder()
                    .launch_template_specification(
                        FleetLaunchTemplateSpecificationRequest::builder()
                            .launch_template_name(template)
                            .version("$Latest")
                            .build(),
                    )
                    .set_overrides(Some(overrides))
                    .build(),
            );
        }
        request = match shape.capacity_type {
            CapacityType::Spot => request.spot_options(
                SpotOptionsRequest::builder()
                    .allocation_strategy(SpotAllocationStrategy::PriceCapacityOptimized)
                    .build(),
            ),
            _ => request.on_demand_options(
                OnDemandOptionsRequest::builder()
                    .allocation_strategy(FleetOnDemandAllocationStrategy::LowestPrice)
                    .build(),
            ),
        };
        let out = match request.send().await {
            Ok(out) => out,
            Err(e) => {
                let err = AwsError::sdk("CreateFleet", e);
                if err.code().is_some_and(launch::is_configuration_error) {
                    self.block_by_name(&shape.class, &err.to_string());
                }
                return reqs.iter().map(|_| Err(err.to_cloud())).collect();
            }
        };
        let zone_of: HashMap<&str, &str> =
            shape.overrides.iter().map(|(_, _, subnet, zone)| (subnet.as_str(), zone.as_str())).collect();
        let mut exhausted = Vec::new();
        let mut config_error = None;
        let until = Instant::now() + self.config.unavailable_ttl;
        for e in out.errors() {
            let code = e.error_code().unwrap_or_default();
            let overrides = e.launch_template_and_overrides().and_then(|l| l.overrides());
            let instance_type = overrides.and_then(|o| o.instance_type()).map(|t| t.as_str().to_string());
            let subnet = overrides.and_then(|o| o.subnet_id()).map(str::to_string);
            let zone = overrides
                .and_then(|o| o.availability_zone().map(str::to_string))
                .or_else(|| subnet.as_deref().and_then(|s| zone_of.get(s)).map(|z| z.to_string()));
            match launch::classify_fleet_error(code) {
                FleetErrorKind::Capacity => {
                    if let (Some(instance_type), Some(zone)) = (instance_type, zone) {
                        let key = OfferingKey { instance_type, zone, capacity_type: shape.capacity_type };
                        self.lock().unavailable.mark(std::slice::from_ref(&key), until);
                        exhausted.push(key);
                    }
                }
                FleetErrorKind::SubnetFull => {
                    if let Some(subnet) = subnet {
                        self.lock().bad_subnets.insert(subnet, until);
                    }
                }
                FleetErrorKind::Configuration => {
                    config_error = Some(format!("CreateFleet: {code}: {}", e.error_message().unwrap_or_default()));
                }
                FleetErrorKind::Other => {
                    tracing::warn!(code, message = e.error_message().unwrap_or_default(), "fleet error");
                }
            }
        }
        if let Some(why) = &config_error {
            self.block_by_name(&shape.class, why);
        }
        let ids: Vec<String> = out.instances().iter().flat_map(|i| i.instance_ids().iter().cloned()).take(n).collect();
        let price_of: HashMap<(String, String), f64> = shape
            .overrides
            .iter()
            .zip(&shape.prices)
            .map(|((_, t, _, z), p)| ((t.clone(), z.clone()), *p as f64 / 1e6))
            .collect();
        // Claim tags for merged fleets: one CreateTags per instance, in parallel.
        if n > 1 {
            let pool = shape.tags.get(TAG_NODEPOOL).cloned().unwrap_or_default();
            let tagging = ids.iter().zip(&reqs).map(|(id, req)| {
                let tags = claim_tags(&pool, &req.name);
                self.clients
                    .ec2
                    .create_tags()
                    .resources(id)
                    .set_tags(Some(tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()))
                    .send()
            });
            for result in futures::future::join_all(tagging).await {
                if let Err(e) = result {
                    tracing::warn!(error = %AwsError::sdk("CreateTags", e), "cannot tag a launched instance with its claim; garbage collection will reclaim it");
                }
            }
        }
        let described = if ids.is_empty() {
            Vec::new()
        } else {
            match self.describe(ids.clone(), Vec::new()).await {
                Ok(d) => d,
                Err(e) => return reqs.iter().map(|_| Err(e.to_cloud())).collect(),
            }
        };
        let by_id: HashMap<String, Instance> = described
            .iter()
            .filter_map(|i| {
                let it = i.instance_type()?.as_str().to_string();
                let zone = i.placement()?.availability_zone()?.to_string();
                let inst = self.to_instance(i, price_of.get(&(it, zone)).copied())?;
                Some((inst.id.clone(), inst))
            })
            .collect();
        let all_offerings: Vec<OfferingKey> = shape
            .overrides
            .iter()
            .map(|(_, t, _, z)| OfferingKey {
                instance_type: t.clone(),
                zone: z.clone(),
                capacity_type: shape.capacity_type,
            })
            .collect();
        (0..n)
            .map(|i| match ids.get(i).and_then(|id| by_id.get(id)) {
                Some(inst) => {
                    let mut inst = inst.clone();
                    if n > 1 {
                        let pool = shape.tags.get(TAG_NODEPOOL).cloned().unwrap_or_default();
                        inst.tags.extend(claim_tags(&pool, &reqs[i].name));
                    }
                    Ok(inst)
                }
                None => Err(match &config_error {
                    Some(why) => CloudError::InvalidConfiguration { message: why.clone() },
                    None if exhausted.is_empty() => {
                        CloudError::InsufficientCapacity { offerings: all_offerings.clone() }
                    }
                    None => CloudError::InsufficientCapacity { offerings: exhausted.clone() },
                }),
            })
            .collect()
    }

    /// The launch-lock of a group (locks no one holds any more are dropped).
    fn group_lock(&self, group: &str) -> Arc<tokio::sync::RwLock<()>> {
        let mut locks = self.launching.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|g, l| g == group || Arc::strong_count(l) > 1);
        locks.entry(group.to_string()).or_default().clone()
    }

    /// Takes over an instance of the claim's launch group that no claim is tagged on (its launch
    /// outlived the leader that made it) and that fits the claim: tagged with the claim, it is
    /// the claim's instance from now on. Instances are taken lowest id first, one adoption at a
    /// time, so two claims never share one.
    async fn adopt(&self, claim: &NodeClaim, group: &str) -> Result<Option<Instance>, CloudError> {
        let _one = self.adopting.lock().await;
        let lock = self.group_lock(group);
        let Ok(_alone) = lock.try_write() else { return Ok(None) };
        let mut filters = self.live_filters();
        filters.push(Filter::builder().name(format!("tag:{LAUNCH_GROUP}")).values(group).build());
        let found = self.describe(Vec::new(), filters).await.map_err(|e| e.to_cloud())?;
        let Ok(requirements) = Requirements::from_api(&claim.spec.template.requirements) else { return Ok(None) };
        let fits = |i: &Instance| {
            [
                (labels::INSTANCE_TYPE, i.instance_type.as_str()),
                (labels::ZONE, i.zone.as_str()),
                (labels::CAPACITY_TYPE, i.capacity_type.as_str()),
            ]
            .iter()
            .all(|(key, value)| requirements.get(key).is_none_or(|r| r.allows(Some(value))))
        };
        let mut orphans: Vec<Instance> = found
            .iter()
            .filter_map(|i| self.to_instance(i, None))
            .filter(|i| {
                matches!(i.state, InstanceState::Pending | InstanceState::Running)
                    && i.node_claim().is_none()
                    && fits(i)
            })
            .collect();
        orphans.sort_by(|a, b| a.id.cmp(&b.id));
        let Some(mut chosen) = orphans.into_iter().next() else { return Ok(None) };
        let name = claim.name_any();
        let pool = chosen.tags.get(TAG_NODEPOOL).cloned().unwrap_or_default();
        let tags = claim_tags(&pool, &name);
        self.clients
            .ec2
            .create_tags()
            .resources(&chosen.id)
            .set_tags(Some(tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()))
            .send()
            .await
            .map_err(|e| AwsError::sdk("CreateTags", e).to_cloud())?;
        tracing::info!(
            nodeclaim = %name,
            instance = %chosen.id,
            "adopted an instance of the claim's launch group that an earlier launch left without its claim tag"
        );
        chosen.tags.extend(tags);
        Ok(Some(chosen))
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
