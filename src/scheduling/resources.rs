//! Resource vectors (CPU, memory, pods, extended resources) and what a pod requests of a node.
//!
//! A fixed struct for the four resources every pod has, plus a short sorted list for extended
//! resources such as `nvidia.com/gpu`: the solver compares these millions of times per batch.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KubeQuantity;

use crate::api::quantity::{QuantityError, parse_millis};

/// Resource name of CPU.
pub const CPU: &str = "cpu";
/// Resource name of memory.
pub const MEMORY: &str = "memory";
/// Resource name of local ephemeral storage.
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
/// Resource name of the pod count.
pub const PODS: &str = "pods";
/// NVIDIA GPUs.
pub const NVIDIA_GPU: &str = "nvidia.com/gpu";
/// AMD GPUs.
pub const AMD_GPU: &str = "amd.com/gpu";

/// Why a resource list cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resource {name}: {source}")]
pub struct ResourceError {
    /// The resource whose quantity is malformed.
    pub name: String,
    /// What is wrong with it.
    #[source]
    pub source: QuantityError,
}

/// An amount of each resource. CPU is in millicores; memory and storage in bytes; everything
/// else in whole units.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    /// Millicores.
    pub cpu: i64,
    /// Bytes.
    pub memory: i64,
    /// Bytes.
    pub ephemeral_storage: i64,
    /// Pod slots.
    pub pods: i64,
    /// Other resources by name, sorted, no zero entries.
    extended: Vec<(String, i64)>,
}

fn to_i64(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

impl Resources {
    /// Nothing.
    pub fn zero() -> Self {
        Self::default()
    }

    /// Sets one resource from its name and an amount in its unit (millicores for CPU).
    pub fn with(mut self, name: &str, amount: i64) -> Self {
        self.set(name, amount);
        self
    }

    /// Sets one resource from its name and an amount in its unit (millicores for CPU).
    pub fn set(&mut self, name: &str, amount: i64) {
        match name {
            CPU => self.cpu = amount,
            MEMORY => self.memory = amount,
            EPHEMERAL_STORAGE => self.ephemeral_storage = amount,
            PODS => self.pods = amount,
            _ => match self.extended.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
                Ok(i) if amount == 0 => {
                    self.extended.remove(i);
                }
                Ok(i) => self.extended[i].1 = amount,
                Err(_) if amount == 0 => {}
                Err(i) => self.extended.insert(i, (name.to_string(), amount)),
            },
        }
    }

    /// One resource's amount in its unit.
    pub fn get(&self, name: &str) -> i64 {
        match name {
            CPU => self.cpu,
            MEMORY => self.memory,
            EPHEMERAL_STORAGE => self.ephemeral_storage,
            PODS => self.pods,
            _ => self.extended.binary_search_by(|(n, _)| n.as_str().cmp(name)).map_or(0, |i| self.extended[i].1),
        }
    }

    /// Extended resources with a non-zero amount.
    pub fn extended(&self) -> impl Iterator<Item = (&str, i64)> {
        self.extended.iter().map(|(n, v)| (n.as_str(), *v))
    }

    /// Reads a Kubernetes resource map (`cpu: 500m`, `memory: 1Gi`).
    pub fn from_quantities<'a, Q: AsRef<str> + 'a>(
        list: impl IntoIterator<Item = (&'a String, &'a Q)>,
    ) -> Result<Self, ResourceError> {
        let mut out = Self::zero();
        for (name, quantity) in list {
            let millis =
                parse_millis(quantity.as_ref()).map_err(|source| ResourceError { name: name.clone(), source })?;
            let amount = if name == CPU { to_i64(millis) } else { to_i64((millis + 999).div_euclid(1000)) };
            out.set(name, amount);
        }
        Ok(out)
    }

    /// Reads a pod's resource map (k8s-openapi quantities).
    pub fn from_kube(list: &BTreeMap<String, KubeQuantity>) -> Result<Self, ResourceError> {
        Self::from_quantities(list.iter().map(|(k, v)| (k, &v.0)))
    }

    /// Whether every amount is at most `capacity`'s.
    pub fn fits_in(&self, capacity: &Self) -> bool {
        self.cpu <= capacity.cpu
            && self.memory <= capacity.memory
            && self.ephemeral_storage <= capacity.ephemeral_storage
            && self.pods <= capacity.pods
            && self.extended.iter().all(|(n, v)| *v <= capacity.get(n))
    }

    /// The first resource (in the order cpu, memory, ephemeral-storage, pods, extended) of which
    /// `self` needs more than `capacity` has.
    pub fn first_exceeding(&self, capacity: &Self) -> Option<&str> {
        [(CPU, self.cpu), (MEMORY, self.memory), (EPHEMERAL_STORAGE, self.ephemeral_storage), (PODS, self.pods)]
            .into_iter()
            .find(|(n, v)| *v > capacity.get(n))
            .map(|(n, _)| n)
            .or_else(|| self.extended.iter().find(|(n, v)| *v > capacity.get(n)).map(|(n, _)| n.as_str()))
    }

    /// Elementwise sum.
    pub fn add(&mut self, other: &Self) {
        self.cpu += other.cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        self.pods += other.pods;
        for (n, v) in &other.extended {
            let now = self.get(n);
            self.set(n, now + v);
        }
    }

    /// Elementwise difference (may go negative, which `fits_in` then refuses).
    pub fn sub(&mut self, other: &Self) {
        self.cpu -= other.cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        self.pods -= other.pods;
        for (n, v) in &other.extended {
            let now = self.get(n);
            self.set(n, now - v);
        }
    }

    /// Elementwise maximum.
    pub fn max(&mut self, other: &Self) {
        self.cpu = self.cpu.max(other.cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        self.pods = self.pods.max(other.pods);
        for (n, v) in &other.extended {
            let now = self.get(n);
            self.set(n, now.max(*v));
        }
    }

    /// Elementwise sum of two vectors.
    pub fn plus(mut self, other: &Self) -> Self {
        self.add(other);
        self
    }

    /// Elementwise difference of two vectors.
    pub fn minus(mut self, other: &Self) -> Self {
        self.sub(other);
        self
    }
}

impl Resources {
    /// The vector in Kubernetes quantity notation (`cpu: 1500m`, `memory: 2048Mi`), for output.
    pub fn to_quantities(&self) -> BTreeMap<String, String> {
        const MI: i64 = 1 << 20;
        let mut out = BTreeMap::new();
        out.insert(CPU.to_string(), format!("{}m", self.cpu));
        out.insert(MEMORY.to_string(), format!("{}Mi", (self.memory + MI - 1) / MI));
        if self.ephemeral_storage > 0 {
            out.insert(EPHEMERAL_STORAGE.to_string(), format!("{}Mi", (self.ephemeral_storage + MI - 1) / MI));
        }
        out.insert(PODS.to_string(), self.pods.to_string());
        for (name, amount) in &self.extended {
            out.insert(name.clone(), amount.to_string());
        }
        out
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu {}m, memory {}Mi", self.cpu, self.memory / (1024 * 1024))?;
        if self.ephemeral_storage > 0 {
            write!(f, ", ephemeral-storage {}Mi", self.ephemeral_storage / (1024 * 1024))?;
        }
        if self.pods > 0 {
            write!(f, ", pods {}", self.pods)?;
        }
        for (n, v) in &self.extended {
            write!(f, ", {n} {v}")?;
        }
        Ok(())
    }
}

fn container_requests(c: &Container) -> Result<Resources, ResourceError> {
    let Some(resources) = &c.resources else { return Ok(Resources::zero()) };
    // A limit without a request defaults the request to the limit, as the API server does.
    let mut out = match &resources.limits {
        Some(limits) => Resources::from_kube(limits)?,
        None => Resources::zero(),
    };
    if let Some(requests) = &resources.requests {
        let requested = Resources::from_kube(requests)?;
        for name in [CPU, MEMORY, EPHEMERAL_STORAGE] {
            if requests.contains_key(name) {
                out.set(name, requested.get(name));
            }
        }
        for (n, v) in requested.extended() {
            out.set(n, v);
        }
    }
    Ok(out)
}

/// What a pod needs from a node: the larger of its app containers (plus sidecars) and each init
/// container's moment (plus the sidecars started before it), plus the pod overhead and one pod slot.
///
/// Sidecars are init containers with `restartPolicy: Always`: they keep running beside the app
/// containers, so they count in both sums, as Kubernetes' scheduler counts them.
pub fn pod_requests(spec: &PodSpec) -> Result<Resources, ResourceError> {
    let mut sidecars = Resources::zero();
    let mut init_peak = Resources::zero();
    for init in spec.init_containers.iter().flatten() {
        let requests = container_requests(init)?;
        if init.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&requests);
            init_peak.max(&sidecars);
        } else {
            init_peak.max(&sidecars.clone().plus(&requests));
        }
    }
    let mut app = sidecars;
    for c in &spec.containers {
        app.add(&container_requests(c)?);
    }
    app.max(&init_peak);
    if let Some(overhead) = &spec.overhead {
        app.add(&Resources::from_kube(overhead)?);
    }
    app.pods = 1;
    Ok(app)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;

    const MI: i64 = 1024 * 1024;

    fn container(name: &str, requests: &[(&str, &str)], restart: Option<&str>) -> Container {
        Container {
            name: name.into(),
            restart_policy: restart.map(String::from),
            resources: Some(ResourceRequirements {
                requests: Some(requests.iter().map(|(k, v)| (k.to_string(), KubeQuantity(v.to_string()))).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn app_containers_sum_and_one_pod_slot_is_counted() {
        let spec = PodSpec {
            containers: vec![
                container("a", &[("cpu", "100m"), ("memory", "256Mi")], None),
                container("b", &[("cpu", "1")], None),
            ],
            ..Default::default()
        };
        let r = pod_requests(&spec).unwrap();
        assert_eq!((r.cpu, r.memory, r.pods), (1100, 256 * MI, 1));
    }

    #[test]
    fn the_largest_init_container_wins_when_it_exceeds_the_app_containers() {
        let spec = PodSpec {
            init_containers: Some(vec![container("init", &[("cpu", "2"), ("memory", "10Mi")], None)]),
            containers: vec![container("a", &[("cpu", "500m"), ("memory", "1Gi")], None)],
            ..Default::default()
        };
        let r = pod_requests(&spec).unwrap();
        assert_eq!((r.cpu, r.memory), (2000, 1024 * MI));
    }

    #[test]
    fn sidecars_count_beside_app_containers_and_under_later_init_containers() {
        let spec = PodSpec {
            init_containers: Some(vec![
                container("sidecar", &[("cpu", "200m")], Some("Always")),
                container("migrate", &[("cpu", "1")], None),
            ]),
            containers: vec![container("a", &[("cpu", "300m")], None)],
            ..Default::default()
        };
        // App phase: 200m sidecar + 300m; init phase: 200m sidecar + 1000m migration.
        assert_eq!(pod_requests(&spec).unwrap().cpu, 1200);
    }

    #[test]
    fn overhead_and_extended_resources_are_added_and_limits_default_requests() {
        let mut gpu = container("train", &[], None);
        gpu.resources = Some(ResourceRequirements {
            limits: Some([("nvidia.com/gpu".to_string(), KubeQuantity("2".into()))].into()),
            ..Default::default()
        });
        let spec = PodSpec {
            containers: vec![gpu],
            overhead: Some([("cpu".to_string(), KubeQuantity("250m".into()))].into()),
            ..Default::default()
        };
        let r = pod_requests(&spec).unwrap();
        assert_eq!((r.cpu, r.get(NVIDIA_GPU)), (250, 2));
        assert!(!r.fits_in(&Resources::zero().with(CPU, 1000).with(PODS, 10).with(NVIDIA_GPU, 1)));
        assert_eq!(r.first_exceeding(&Resources::zero().with(CPU, 1000).with(PODS, 10)), Some(NVIDIA_GPU));
    }

    #[test]
    fn malformed_quantities_name_the_resource() {
        let spec = PodSpec { containers: vec![container("a", &[("memory", "lots")], None)], ..Default::default() };
        let err = pod_requests(&spec).unwrap_err();
        assert!(err.to_string().starts_with("resource memory:"), "{err}");
    }
}
