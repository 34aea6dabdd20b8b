//! An in-memory cloud: the shipped catalog with a deterministic spot-price model, boot delays,
//! per-offering capacity pools that run dry, spot interruptions and throttling on demand, and
//! idempotent creates per NodeClaim. It is what tests and `rafter demo` run on.
//!
//! It is one piece because every behaviour reads and writes the one `State` under one lock; a fifth
//! of the file is its tests.
//!
//! Time is tokio's, so tests with paused time step through boots and interruptions; state changes are
//! computed when read, so the fake needs no tasks of its own. Watchers learn of changes through
//! [`FakeCloud::changes`] and of the next timed transition through [`FakeCloud::next_transition`].

use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{
    CloudError, CloudProvider, DriftReason, Instance, InstanceState, NodeClassCheck, NodeClassReport, OfferingKey,
    TAG_NODECLAIM, TAG_NODEPOOL, parse_provider_id,
};
use crate::api::ec2nodeclass::EC2NodeClass;
use crate::api::labels;
use crate::api::nodeclaim::NodeClaim;
use crate::api::nodepool::NodePool;
use crate::mix::{fnv1a, splitmix64, unit};
use crate::scheduling::catalog;
use crate::scheduling::instance_types::{CapacityType, InstanceType, InstanceTypeSpec, KubeletSettings};
use crate::scheduling::requirements::Requirements;

/// How the fake cloud behaves.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub region: String,
    pub cluster: String,
    /// From launch until the instance is running.
    pub boot_delay: Duration,
    /// Instances each offering can supply; `None` is unlimited.
    pub capacity_per_offering: Option<u32>,
    /// Seeds the spot prices and instance ids.
    pub seed: u64,
    /// How long each launch call takes to answer (EC2's CreateFleet takes a second or two).
    pub create_latency: Duration,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            cluster: "rafter-sim".into(),
            boot_delay: Duration::ZERO,
            capacity_per_offering: None,
            seed: 1,
            create_latency: Duration::ZERO,
        }
    }
}

/// Why the fake cloud could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FakeCloudError {
    #[error("the shipped instance catalog does not parse: {0}")]
    Catalog(#[source] catalog::CatalogError),
}

#[derive(Debug, Clone)]
struct FakeInstance {
    instance: Instance,
    claim_key: String,
    running_at: Instant,
    terminate_at: Option<Instant>,
    drift: Option<DriftReason>,
}

impl FakeInstance {
    fn state_at(&self, now: Instant) -> InstanceState {
        match self.terminate_at {
            Some(at) if now >= at => InstanceState::Terminated,
            Some(_) if self.instance.state == InstanceState::ShuttingDown => InstanceState::ShuttingDown,
            _ if self.instance.state == InstanceState::Terminated => InstanceState::Terminated,
            _ if now >= self.running_at => InstanceState::Running,
            _ => InstanceState::Pending,
        }
    }

    fn snapshot(&self, now: Instant) -> Instance {
        let mut instance = self.instance.clone();
        instance.state = self.state_at(now);
        instance
    }
}

/// A spot interruption warning the fake issued: the instance and when it will be reclaimed.
#[derive(Debug, Clone, PartialEq)]
pub struct Interruption {
    pub instance_id: String,
    pub zone: String,
    pub deadline: Instant,
}

impl State {
    /// Whether an offering can still supply an instance.
    fn has_room(&self, key: &OfferingKey, default_limit: Option<u32>) -> bool {
        if self.unavailable.contains(key, Instant::now()) {
            return false;
        }
        let used = self.used.get(key).copied().unwrap_or(0);
        self.limits.get(key).copied().or(default_limit).is_none_or(|limit| used < limit)
    }
}

#[derive(Debug, Default)]
struct State {
    instances: BTreeMap<String, FakeInstance>,
    by_claim: HashMap<String, String>,
    used: HashMap<OfferingKey, u32>,
    limits: HashMap<OfferingKey, u32>,
    /// Offerings Rafter said to avoid, until when.
    unavailable: super::unavailable::UnavailableOfferings,
    throttle: u32,
    counter: u64,
    interruptions: Vec<Interruption>,
    create_calls: u64,
}

/// The in-memory cloud.
#[derive(Debug)]
pub struct FakeCloud {
    config: FakeConfig,
    specs: Vec<InstanceTypeSpec>,
    types: Vec<InstanceType>,
    state: Mutex<State>,
    changes: watch::Sender<u64>,
}

/// The spot price of a type in a zone: between 30% and 55% of on-demand, fixed per (seed, type, zone).
pub fn spot_price(seed: u64, spec: &InstanceTypeSpec, zone: &str) -> f64 {
    let x = splitmix64(seed ^ fnv1a(&spec.name) ^ fnv1a(zone).rotate_left(21));
    let share = 0.30 + 0.25 * unit(x);
    (spec.on_demand_price * share * 10_000.0).round() / 10_000.0
}

impl FakeCloud {
    /// A fake cloud over the shipped us-east-1 catalog.
    pub fn new(config: FakeConfig) -> Result<Self, FakeCloudError> {
        let specs = catalog::us_east_1().map_err(FakeCloudError::Catalog)?;
        Ok(Self::with_catalog(config, specs))
    }

    pub fn with_catalog(config: FakeConfig, specs: Vec<InstanceTypeSpec>) -> Self {
        let kubelet = KubeletSettings::default();
        let types = specs
            .iter()
            .map(|s| InstanceType::new(s, &kubelet, |zone| Some(spot_price(config.seed, s, zone))))
            .collect();
        Self { config, specs, types, state: Mutex::new(State::default()), changes: watch::channel(0).0 }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|g| *g += 1);
    }

    /// Bumps whenever instances are launched, terminated or interrupted.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// When the next instance boots or is reclaimed, if any is due.
    pub fn next_transition(&self) -> Option<Instant> {
        let now = Instant::now();
        self.lock()
            .instances
            .values()
            .flat_map(|i| [Some(i.running_at), i.terminate_at])
            .flatten()
            .filter(|at| *at > now)
            .min()
    }

    /// The catalog entry for a type.
    pub fn spec(&self, name: &str) -> Option<&InstanceTypeSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    /// The scheduling view of a type (capacity, allocatable, offerings).
    pub fn instance_type(&self, name: &str) -> Option<&InstanceType> {
        self.types.iter().find(|t| t.name == name)
    }

    /// Limits how many instances one offering can still supply (0: it has run dry).
    pub fn set_capacity(&self, offering: OfferingKey, instances: u32) {
        let mut state = self.lock();
        let used = state.used.get(&offering).copied().unwrap_or(0);
        state.limits.insert(offering, used + instances);
    }

    /// The next `calls` calls fail as throttled.
    pub fn throttle(&self, calls: u32) {
        self.lock().throttle = calls;
    }

    /// Marks an instance as drifted.
    pub fn set_drift(&self, instance_id: &str, reason: &str) {
        if let Some(i) = self.lock().instances.get_mut(instance_id) {
            i.drift = Some(DriftReason(reason.to_string()));
        }
    }

    /// Issues a spot interruption warning: the instance is reclaimed two minutes from now.
    pub fn interrupt(&self, instance_id: &str) -> Option<Interruption> {
        let notice = {
            let mut state = self.lock();
            let now = Instant::now();
            let instance = state.instances.get_mut(instance_id)?;
            if instance.state_at(now) == InstanceState::Terminated {
                return None;
            }
            let deadline = now + Duration::from_secs(120);
            instance.terminate_at = Some(instance.terminate_at.map_or(deadline, |t| t.min(deadline)));
            let notice =
                Interruption { instance_id: instance_id.to_string(), zone: instance.instance.zone.clone(), deadline };
            state.interruptions.push(notice.clone());
            notice
        };
        self.changed();
        Some(notice)
    }

    /// Every interruption issued so far.
    pub fn interruptions(&self) -> Vec<Interruption> {
        self.lock().interruptions.clone()
    }

    /// How many create calls reached the cloud (idempotent repeats included).
    pub fn create_calls(&self) -> u64 {
        self.lock().create_calls
    }

    /// Instances launched and not yet terminated.
    pub fn running(&self) -> Vec<Instance> {
        let now = Instant::now();
        self.lock()
            .instances
            .values()
            .map(|i| i.snapshot(now))
            .filter(|i| i.state != InstanceState::Terminated)
            .collect()
    }

    fn claim_key(claim: &NodeClaim) -> String {
        claim.metadata.uid.clone().unwrap_or_else(|| claim.name_any())
    }

    fn launch(&self, claim: &NodeClaim) -> Result<Instance, CloudError> {
        let mut state = self.lock();
        state.create_calls += 1;
        if state.throttle > 0 {
            state.throttle -= 1;
            return Err(CloudError::Throttled { message: "Request limit exceeded (injected)".into() });
        }
        let key = Self::claim_key(claim);
        let now = Instant::now();
        if let Some(existing) = state.by_claim.get(&key).and_then(|id| state.instances.get(id))
            && existing.state_at(now) != InstanceState::Terminated
        {
            return Ok(existing.snapshot(now));
        }
        let requirements = Requirements::from_api(&claim.spec.template.requirements)
            .map_err(|e| CloudError::InvalidConfiguration { message: format!("NodeClaim requirements: {e}") })?;
        let zone_req = requirements.get(labels::ZONE);
        let ct_req = requirements.get(labels::CAPACITY_TYPE);
        let mut dry = Vec::new();
        let mut candidates: Vec<(CapacityType, f64, &InstanceType, String)> = Vec::new();
        for it in &self.types {
            if requirements.compatible_with(&it.requirements, |_| true).is_err() {
                continue;
            }
            for offering in &it.offerings {
                if zone_req.is_some_and(|r| !r.allows(Some(&offering.zone)))
                    || ct_req.is_some_and(|r| !r.allows(Some(offering.capacity_type.as_str())))
                {
                    continue;
                }
                let key = OfferingKey {
                    instance_type: it.name.clone(),
                    zone: offering.zone.clone(),
                    capacity_type: offering.capacity_type,
                };
                if !state.has_room(&key, self.config.capacity_per_offering) {
                    dry.push(key);
                    continue;
                }
                candidates.push((offering.capacity_type, offering.price, it, offering.zone.clone()));
            }
        }
        let preferred = candidates.iter().map(|c| c.0).min_by_key(|ct| match ct {
            CapacityType::Reserved => 0,
            CapacityType::Spot => 1,
            CapacityType::OnDemand => 2,
        });
        let Some(chosen) = candidates
            .iter()
            .filter(|c| Some(c.0) == preferred)
            .min_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.2.name.cmp(&b.2.name)).then_with(|| a.3.cmp(&b.3)))
        else {
            if dry.is_empty() {
                return Err(CloudError::InvalidConfiguration {
                    message: "no instance type satisfies the NodeClaim's requirements".into(),
                });
            }
            return Err(CloudError::InsufficientCapacity { offerings: dry });
        };
        let (capacity_type, price, it, zone) = (chosen.0, chosen.1, chosen.2, chosen.3.clone());
        state.counter += 1;
        let x = splitmix64(self.config.seed ^ state.counter.wrapping_mul(0x9e37_79b9));
        let id = format!("i-{:017x}", x & 0x0fff_ffff_ffff_ffff_u64);
        let ip = format!("10.{}.{}.{}", (x >> 40) & 0xff, (x >> 48) & 0xff, 1 + ((x >> 56) % 254));
        let name = claim.name_any();
        let pool = claim.metadata.labels.as_ref().and_then(|l| l.get(labels::NODEPOOL)).cloned().unwrap_or_default();
        let mut tags = BTreeMap::from([
            (TAG_NODECLAIM.to_string(), name.clone()),
            (format!("kubernetes.io/cluster/{}", self.config.cluster), "owned".to_string()),
            ("Name".to_string(), format!("{pool}/{name}")),
        ]);
        if !pool.is_empty() {
            tags.insert(TAG_NODEPOOL.to_string(), pool);
        }
        let instance = Instance {
            provider_id: format!("aws:///{zone}/{id}"),
            id: id.clone(),
            instance_type: it.name.clone(),
            zone: zone.clone(),
            capacity_type,
            state: InstanceState::Pending,
            price,
            private_dns_name: format!("ip-{}.ec2.internal", ip.replace('.', "-")),
            private_ip: ip,
            tags,
            launch_time: jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        };
        let key_offering = OfferingKey { instance_type: it.name.clone(), zone, capacity_type };
        *state.used.entry(key_offering).or_insert(0) += 1;
        let fake = FakeInstance {
            instance,
            claim_key: key.clone(),
            running_at: now + self.config.boot_delay,
            terminate_at: None,
            drift: None,
        };
        let snapshot = fake.snapshot(now);
        state.instances.insert(id.clone(), fake);
        state.by_claim.insert(key, id);
        Ok(snapshot)
    }

    fn terminate(&self, id: &str) -> Result<(), CloudError> {
        let mut state = self.lock();
        let now = Instant::now();
        let instance = state.instances.get_mut(id).ok_or_else(|| CloudError::NotFound { id: id.to_string() })?;
        if instance.state_at(now) == InstanceState::Terminated {
            return Err(CloudError::NotFound { id: id.to_string() });
        }
        instance.instance.state = InstanceState::Terminated;
        instance.terminate_at = Some(now);
        let key = OfferingKey {
            instance_type: instance.instance.instance_type.clone(),
            zone: instance.instance.zone.clone(),
            capacity_type: instance.instance.capacity_type,
        };
        let claim = instance.claim_key.clone();
        if let Some(used) = state.used.get_mut(&key) {
            *used = used.saturating_sub(1);
        }
        state.by_claim.remove(&claim);
        Ok(())
    }

    /// Terminates an instance by id, as if from the console (for tests of garbage collection).
    pub fn terminate_instance(&self, id: &str) -> Result<(), CloudError> {
        let result = self.terminate(id);
        self.changed();
        result
    }
}

#[async_trait]
impl CloudProvider for FakeCloud {
    async fn create(&self, claim: &NodeClaim) -> Result<Instance, CloudError> {
        if !self.config.create_latency.is_zero() {
            tokio::time::sleep(self.config.create_latency).await;
        }
        let result = self.launch(claim);
        if result.is_ok() {
            self.changed();
        }
        result
    }

    async fn delete(&self, claim: &NodeClaim) -> Result<(), CloudError> {
        let by_status = claim
            .status
            .as_ref()
            .and_then(|s| s.provider_id.as_deref())
            .and_then(parse_provider_id)
            .map(|(_, id)| id.to_string());
        let id = by_status.or_else(|| self.lock().by_claim.get(&Self::claim_key(claim)).cloned());
        let id = id.ok_or_else(|| CloudError::NotFound { id: claim.name_any() })?;
        let result = self.terminate(&id);
        self.changed();
        result
    }

    /// The fake cloud has no selectors to resolve: every class it is given can launch, and says so,
    /// so a pool's `NodeClassReady` reads as it would on EC2 with a class that resolved.
    async fn node_class_report(&self, _class: &EC2NodeClass) -> Result<Option<NodeClassReport>, CloudError> {
        Ok(Some(NodeClassReport {
            checks: vec![NodeClassCheck {
                type_: crate::api::ec2nodeclass::conditions::READY.into(),
                ok: true,
                reason: "Ready".into(),
                message: String::new(),
            }],
            ..NodeClassReport::default()
        }))
    }

    async fn get(&self, provider_id: &str) -> Result<Instance, CloudError> {
        let (_, id) =
            parse_provider_id(provider_id).ok_or_else(|| CloudError::NotFound { id: provider_id.to_string() })?;
        let now = Instant::now();
        self.lock()
            .instances
            .get(id)
            .map(|i| i.snapshot(now))
            .ok_or_else(|| CloudError::NotFound { id: id.to_string() })
    }

    async fn list(&self) -> Result<Vec<Instance>, CloudError> {
        let mut state = self.lock();
        if state.throttle > 0 {
            state.throttle -= 1;
            return Err(CloudError::Throttled { message: "Request limit exceeded (injected)".into() });
        }
        let now = Instant::now();
        Ok(state.instances.values().map(|i| i.snapshot(now)).collect())
    }

    async fn instance_types(&self, _pool: &NodePool) -> Result<Vec<InstanceType>, CloudError> {
        let state = self.lock();
        let mut types = self.types.clone();
        for it in &mut types {
            for offering in &mut it.offerings {
                let key = OfferingKey {
                    instance_type: it.name.clone(),
                    zone: offering.zone.clone(),
                    capacity_type: offering.capacity_type,
                };
                offering.available = state.has_room(&key, self.config.capacity_per_offering);
            }
        }
        Ok(types)
    }

    async fn is_drifted(&self, claim: &NodeClaim) -> Result<Option<DriftReason>, CloudError> {
        let Some(id) = claim
            .status
            .as_ref()
            .and_then(|s| s.provider_id.as_deref())
            .and_then(parse_provider_id)
            .map(|(_, id)| id.to_string())
        else {
            return Ok(None);
        };
        Ok(self.lock().instances.get(&id).and_then(|i| i.drift.clone()))
    }

    fn mark_unavailable(&self, offerings: &[OfferingKey], ttl: Duration) {
        let now = Instant::now();
        let mut state = self.lock();
        state.unavailable.expire(now);
        state.unavailable.mark(offerings, now + ttl);
    }

    fn mask_unavailable(&self, types: &mut [InstanceType]) {
        self.lock().unavailable.mask(types, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(name: &str, uid: &str, requirements: serde_json::Value) -> NodeClaim {
        serde_json::from_value(json!({
            "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
            "metadata": {"name": name, "uid": uid, "labels": {"karpenter.sh/nodepool": "default"}},
            "spec": {"requirements": requirements, "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}}
        }))
        .expect("claim")
    }

    fn cloud(config: FakeConfig) -> FakeCloud {
        FakeCloud::new(config).expect("catalog")
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn the_fake_cloud_passes_the_provider_conformance_suite() {
        let pool: NodePool = serde_json::from_value(json!({
            "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "default"},
            "spec": {"template": {"spec": {"requirements": [],
                "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}}}}
        }))
        .expect("pool");
        let make = |name: &str, uid: &str| {
            claim(
                name,
                uid,
                json!([{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["m5.large"]}]),
            )
        };
        block_on(crate::cloud::suite::run(&cloud(FakeConfig::default()), &pool, &make));
    }

    #[test]
    fn create_is_idempotent_per_claim_and_prefers_the_cheapest_spot_offering() {
        block_on(async {
            let cloud = cloud(FakeConfig::default());
            let c = claim(
                "a",
                "uid-a",
                json!([{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["m5.large", "c5.large"]}]),
            );
            let first = cloud.create(&c).await.expect("launches");
            let again = cloud.create(&c).await.expect("idempotent");
            assert_eq!(first.id, again.id);
            assert_eq!(cloud.running().len(), 1);
            assert_eq!(first.capacity_type, CapacityType::Spot);
            let cheapest = ["m5.large", "c5.large"]
                .iter()
                .flat_map(|t| {
                    cloud
                        .instance_type(t)
                        .expect("type")
                        .offerings
                        .iter()
                        .filter(|o| o.capacity_type == CapacityType::Spot)
                        .map(|o| o.price)
                })
                .fold(f64::MAX, f64::min);
            assert_eq!(first.price, cheapest);
            assert_eq!(first.node_claim(), Some("a"));
        });
    }

    #[test]
    fn an_offering_that_runs_dry_gives_insufficient_capacity_naming_it() {
        block_on(async {
            let cloud = cloud(FakeConfig::default());
            let reqs = json!([
                {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["m5.large"]},
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1a"]},
                {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]}
            ]);
            let key = OfferingKey {
                instance_type: "m5.large".into(),
                zone: "us-east-1a".into(),
                capacity_type: CapacityType::OnDemand,
            };
            cloud.set_capacity(key.clone(), 1);
            cloud.create(&claim("a", "ua", reqs.clone())).await.expect("first fits");
            let err = cloud.create(&claim("b", "ub", reqs)).await.expect_err("dry");
            assert_eq!(err, CloudError::InsufficientCapacity { offerings: vec![key] });
        });
    }

    #[test]
    fn instances_boot_after_the_delay_and_interruptions_reclaim_them_after_two_minutes() {
        block_on(async {
            let cloud = cloud(FakeConfig { boot_delay: Duration::from_secs(30), ..FakeConfig::default() });
            let i = cloud.create(&claim("a", "ua", json!([]))).await.expect("launches");
            assert_eq!(i.state, InstanceState::Pending);
            tokio::time::advance(Duration::from_secs(31)).await;
            assert_eq!(cloud.get(&i.provider_id).await.expect("get").state, InstanceState::Running);
            let notice = cloud.interrupt(&i.id).expect("interrupted");
            assert_eq!(cloud.next_transition(), Some(notice.deadline));
            tokio::time::advance(Duration::from_secs(121)).await;
            assert_eq!(cloud.get(&i.provider_id).await.expect("get").state, InstanceState::Terminated);
        });
    }

    #[test]
    fn deleting_twice_reports_not_found_the_second_time() {
        block_on(async {
            let cloud = cloud(FakeConfig::default());
            let c = claim("a", "ua", json!([]));
            cloud.create(&c).await.expect("launches");
            cloud.delete(&c).await.expect("deletes");
            assert!(matches!(cloud.delete(&c).await, Err(CloudError::NotFound { .. })));
            cloud.throttle(1);
            assert!(matches!(cloud.create(&claim("b", "ub", json!([]))).await, Err(CloudError::Throttled { .. })));
        });
    }
}
