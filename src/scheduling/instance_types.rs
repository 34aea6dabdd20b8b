//! Instance types as the solver sees them: labels, capacity, what the node keeps for itself, and
//! the offerings (zone × capacity type) with their prices.
//!
//! Allocatable follows the EKS AMIs' arithmetic: kube-reserved CPU of 6% of the first core, 1% of
//! the second, 0.5% of the next two and 0.25% of the rest; kube-reserved memory of 11 MiB per pod
//! plus 255 MiB; a 100 MiB memory eviction threshold; max pods from the ENI limits
//! (`enis × (ipv4_per_eni − 1) + 2`, capped at 110 unless the kubelet is configured). Memory
//! capacity is reduced by the hypervisor's share (7.5% by default, as Karpenter assumes), since a
//! node reports less memory than the EC2 specification.

use crate::api::labels;

use super::requirements::{Requirement, Requirements};
use super::resources::{AMD_GPU, NVIDIA_GPU, Resources};

const MIB: i64 = 1024 * 1024;
const GIB: i64 = 1024 * MIB;

/// `spot`, `on-demand` or `reserved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CapacityType {
    /// Reserved capacity (capacity reservations): already paid for.
    Reserved,
    /// Spot: cheaper, may be reclaimed with two minutes' notice.
    Spot,
    /// On-demand.
    OnDemand,
}

impl CapacityType {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => labels::CAPACITY_TYPE_RESERVED,
            Self::Spot => labels::CAPACITY_TYPE_SPOT,
            Self::OnDemand => labels::CAPACITY_TYPE_ON_DEMAND,
        }
    }
}

/// One way to buy an instance type: a zone, a capacity type and its price.
#[derive(Debug, Clone, PartialEq)]
pub struct Offering {
    /// The zone, e.g. `us-east-1a`.
    pub zone: String,
    /// How it is paid for.
    pub capacity_type: CapacityType,
    /// US dollars per hour.
    pub price: f64,
    /// False while the cloud reports no capacity (the unavailable-offerings cache).
    pub available: bool,
}

/// An instance type's published specification, as the catalog or `DescribeInstanceTypes` gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceTypeSpec {
    /// E.g. `m5.large`.
    pub name: String,
    /// E.g. `m5`.
    pub family: String,
    /// E.g. `large`.
    pub size: String,
    /// `amd64` or `arm64`.
    pub arch: String,
    /// vCPUs.
    pub vcpu: i64,
    /// Memory in MiB.
    pub memory_mib: i64,
    /// GPUs.
    pub gpu_count: i64,
    /// GPU model, e.g. `T4`.
    pub gpu_name: String,
    /// GPU maker, e.g. `NVIDIA`.
    pub gpu_manufacturer: String,
    /// Memory of all GPUs in MiB.
    pub gpu_memory_mib: i64,
    /// Network interfaces.
    pub max_enis: i64,
    /// IPv4 addresses per interface.
    pub ipv4_per_eni: i64,
    /// `nitro`, `xen` or empty (bare metal).
    pub hypervisor: String,
    /// Whether it is a bare-metal type.
    pub bare_metal: bool,
    /// Whether it is a current-generation type.
    pub current_generation: bool,
    /// Whether spot capacity exists.
    pub spot_supported: bool,
    /// Zones that offer it.
    pub zones: Vec<String>,
    /// On-demand Linux price, USD per hour.
    pub on_demand_price: f64,
}

/// Kubelet settings that change allocatable (from the EC2NodeClass).
#[derive(Debug, Clone, PartialEq)]
pub struct KubeletSettings {
    /// Explicit pod limit; replaces the ENI-based limit and the 110 cap.
    pub max_pods: Option<i64>,
    /// Pods per vCPU; the limit is the smaller of this and max pods.
    pub pods_per_core: Option<i64>,
    /// Explicit kube-reserved; replaces the EKS formula.
    pub kube_reserved: Option<Resources>,
    /// System-reserved.
    pub system_reserved: Resources,
    /// Hard eviction threshold for memory, in bytes.
    pub eviction_memory: i64,
    /// Share of the EC2 memory the node does not report.
    pub vm_memory_overhead: f64,
    /// Root volume size in bytes (ephemeral storage).
    pub root_volume: i64,
}

impl Default for KubeletSettings {
    fn default() -> Self {
        Self {
            max_pods: None,
            pods_per_core: None,
            kube_reserved: None,
            system_reserved: Resources::zero(),
            eviction_memory: 100 * MIB,
            vm_memory_overhead: 0.075,
            root_volume: 20 * GIB,
        }
    }
}

/// The pod limit of a type: ENI-based, capped at 110, unless the kubelet says otherwise.
pub fn max_pods(spec: &InstanceTypeSpec, kubelet: &KubeletSettings) -> i64 {
    let limit = kubelet.max_pods.unwrap_or_else(|| (spec.max_enis * (spec.ipv4_per_eni - 1) + 2).clamp(0, 110));
    match kubelet.pods_per_core {
        Some(per_core) if per_core > 0 => limit.min(per_core * spec.vcpu),
        _ => limit,
    }
}

/// The EKS AMIs' kube-reserved CPU in millicores for `vcpu` cores.
pub fn kube_reserved_cpu(vcpu: i64) -> i64 {
    // (range start, range end, share in hundredths of a percent)
    const RANGES: [(i64, i64, i64); 4] = [(0, 1000, 600), (1000, 2000, 100), (2000, 4000, 50), (4000, i64::MAX, 25)];
    let millis = vcpu * 1000;
    RANGES
        .iter()
        .filter(|(start, _, _)| millis > *start)
        .map(|(start, end, share)| (millis.min(*end) - start) * share / 10_000)
        .sum()
}

/// An instance type ready for scheduling.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceType {
    /// E.g. `m5.large`.
    pub name: String,
    /// The labels a node of this type carries, including `In` requirements for its zones and
    /// capacity types.
    pub requirements: Requirements,
    /// What the machine has.
    pub capacity: Resources,
    /// What the node keeps for itself (kube-reserved, system-reserved, eviction thresholds).
    pub overhead: Resources,
    /// Ways to buy it.
    pub offerings: Vec<Offering>,
}

impl InstanceType {
    /// Builds the scheduling view of a type. `spot_price(zone)` gives the spot price where spot is
    /// sold; on-demand is offered in every zone at the list price.
    pub fn new(spec: &InstanceTypeSpec, kubelet: &KubeletSettings, spot_price: impl Fn(&str) -> Option<f64>) -> Self {
        let pods = max_pods(spec, kubelet);
        let memory = spec.memory_mib * MIB;
        let hypervisor_share = ((spec.memory_mib as f64) * kubelet.vm_memory_overhead).ceil() as i64 * MIB;
        let mut capacity = Resources::zero()
            .with("cpu", spec.vcpu * 1000)
            .with("memory", memory - hypervisor_share)
            .with("ephemeral-storage", kubelet.root_volume)
            .with("pods", pods);
        if spec.gpu_count > 0 {
            match spec.gpu_manufacturer.to_ascii_lowercase().as_str() {
                "nvidia" => capacity.set(NVIDIA_GPU, spec.gpu_count),
                "amd" => capacity.set(AMD_GPU, spec.gpu_count),
                _ => {}
            }
        }
        let kube_reserved = kubelet.kube_reserved.clone().unwrap_or_else(|| {
            Resources::zero()
                .with("cpu", kube_reserved_cpu(spec.vcpu))
                .with("memory", 11 * MIB * pods + 255 * MIB)
                .with("ephemeral-storage", GIB)
        });
        let eviction = Resources::zero()
            .with("memory", kubelet.eviction_memory)
            .with("ephemeral-storage", kubelet.root_volume / 10);
        let overhead = kube_reserved.plus(&kubelet.system_reserved).plus(&eviction);

        let mut offerings: Vec<Offering> = Vec::new();
        for zone in &spec.zones {
            if spec.spot_supported
                && let Some(price) = spot_price(zone)
            {
                offerings.push(Offering {
                    zone: zone.clone(),
                    capacity_type: CapacityType::Spot,
                    price,
                    available: true,
                });
            }
            offerings.push(Offering {
                zone: zone.clone(),
                capacity_type: CapacityType::OnDemand,
                price: spec.on_demand_price,
                available: true,
            });
        }

        Self {
            name: spec.name.clone(),
            requirements: type_requirements(spec, &offerings),
            capacity,
            overhead,
            offerings,
        }
    }

    /// What pods may use: capacity minus overhead.
    pub fn allocatable(&self) -> Resources {
        self.capacity.clone().minus(&self.overhead)
    }

    /// The cheapest available offering whose zone and capacity type `requirements` allow.
    pub fn cheapest_offering(&self, requirements: &Requirements) -> Option<&Offering> {
        let zone = requirements.get(labels::ZONE);
        let capacity_type = requirements.get(labels::CAPACITY_TYPE);
        self.offerings
            .iter()
            .filter(|o| o.available)
            .filter(|o| zone.is_none_or(|r| r.allows(Some(&o.zone))))
            .filter(|o| capacity_type.is_none_or(|r| r.allows(Some(o.capacity_type.as_str()))))
            .min_by(|a, b| a.price.total_cmp(&b.price).then_with(|| a.zone.cmp(&b.zone)))
    }
}

/// `c` of `c5`, `inf` of `inf2`, `u` of `u-6tb1`.
fn category(family: &str) -> &str {
    let end = family.find(|c: char| !c.is_ascii_lowercase()).unwrap_or(family.len());
    &family[..end]
}

/// `5` of `c5d`, `7` of `m7i-flex`.
fn generation(family: &str) -> Option<&str> {
    let rest = family[category(family).len()..].trim_start_matches('-');
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

fn type_requirements(spec: &InstanceTypeSpec, offerings: &[Offering]) -> Requirements {
    let mut reqs = Requirements::new();
    let mut label = |key: &str, value: String| reqs.add(Requirement::single(key, value));
    label(labels::INSTANCE_TYPE, spec.name.clone());
    label(labels::ARCH, spec.arch.clone());
    label(labels::OS, "linux".into());
    label(labels::INSTANCE_FAMILY, spec.family.clone());
    label(labels::INSTANCE_CATEGORY, category(&spec.family).to_string());
    if let Some(g) = generation(&spec.family) {
        label(labels::INSTANCE_GENERATION, g.to_string());
    }
    label(labels::INSTANCE_SIZE, spec.size.clone());
    label(labels::INSTANCE_CPU, spec.vcpu.to_string());
    label(labels::INSTANCE_MEMORY, spec.memory_mib.to_string());
    if !spec.hypervisor.is_empty() {
        label(labels::INSTANCE_HYPERVISOR, spec.hypervisor.clone());
    }
    if spec.gpu_count > 0 {
        label(labels::INSTANCE_GPU_NAME, spec.gpu_name.to_ascii_lowercase().replace(' ', "-"));
        label(labels::INSTANCE_GPU_MANUFACTURER, spec.gpu_manufacturer.to_ascii_lowercase());
        label(labels::INSTANCE_GPU_COUNT, spec.gpu_count.to_string());
        label(labels::INSTANCE_GPU_MEMORY, spec.gpu_memory_mib.to_string());
    }
    let zones: std::collections::BTreeSet<String> = offerings.iter().map(|o| o.zone.clone()).collect();
    let capacity_types: std::collections::BTreeSet<String> =
        offerings.iter().map(|o| o.capacity_type.as_str().to_string()).collect();
    reqs.add(Requirement::one_of(labels::ZONE, zones));
    reqs.add(Requirement::one_of(labels::CAPACITY_TYPE, capacity_types));
    reqs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::nodeclaim::Operator;

    pub(crate) fn m5_large() -> InstanceTypeSpec {
        InstanceTypeSpec {
            name: "m5.large".into(),
            family: "m5".into(),
            size: "large".into(),
            arch: "amd64".into(),
            vcpu: 2,
            memory_mib: 8192,
            gpu_count: 0,
            gpu_name: String::new(),
            gpu_manufacturer: String::new(),
            gpu_memory_mib: 0,
            max_enis: 3,
            ipv4_per_eni: 10,
            hypervisor: "nitro".into(),
            bare_metal: false,
            current_generation: true,
            spot_supported: true,
            zones: vec!["us-east-1a".into(), "us-east-1b".into()],
            on_demand_price: 0.096,
        }
    }

    #[test]
    fn kube_reserved_cpu_follows_the_eks_ranges() {
        assert_eq!(kube_reserved_cpu(1), 60);
        assert_eq!(kube_reserved_cpu(2), 70);
        assert_eq!(kube_reserved_cpu(4), 80);
        assert_eq!(kube_reserved_cpu(8), 90);
        assert_eq!(kube_reserved_cpu(96), 310);
    }

    #[test]
    fn max_pods_come_from_enis_capped_at_110_unless_configured() {
        let spec = m5_large();
        assert_eq!(max_pods(&spec, &KubeletSettings::default()), 29);
        let big = InstanceTypeSpec { max_enis: 8, ipv4_per_eni: 30, ..spec.clone() };
        assert_eq!(max_pods(&big, &KubeletSettings::default()), 110);
        let configured = KubeletSettings { max_pods: Some(234), ..KubeletSettings::default() };
        assert_eq!(max_pods(&big, &configured), 234);
        let per_core = KubeletSettings { pods_per_core: Some(10), ..KubeletSettings::default() };
        assert_eq!(max_pods(&spec, &per_core), 20);
    }

    #[test]
    fn allocatable_is_capacity_less_reservations_and_eviction_thresholds() {
        let it = InstanceType::new(&m5_large(), &KubeletSettings::default(), |_| Some(0.04));
        let alloc = it.allocatable();
        assert_eq!(alloc.cpu, 2000 - 70);
        // 8192 MiB − 615 MiB hypervisor share − (11 × 29 + 255) MiB kube-reserved − 100 MiB eviction.
        assert_eq!(alloc.memory, (8192 - 615 - (11 * 29 + 255) - 100) * MIB);
        assert_eq!(alloc.pods, 29);
        assert_eq!(alloc.ephemeral_storage, 20 * GIB - GIB - 2 * GIB);
    }

    #[test]
    fn labels_and_offerings_describe_the_type() {
        let it = InstanceType::new(&m5_large(), &KubeletSettings::default(), |z| (z == "us-east-1b").then_some(0.03));
        let labels = it.requirements.labels();
        assert_eq!(labels[labels::INSTANCE_CATEGORY], "m");
        assert_eq!(labels[labels::INSTANCE_GENERATION], "5");
        assert_eq!(labels[labels::INSTANCE_CPU], "2");
        assert_eq!(it.offerings.len(), 3, "on-demand in both zones, spot in one");
        let zone_b = it.requirements.get(labels::ZONE).unwrap();
        assert!(zone_b.allows(Some("us-east-1b")) && !zone_b.allows(Some("us-east-1c")));

        let cheapest = it.cheapest_offering(&Requirements::new()).unwrap();
        assert_eq!((cheapest.zone.as_str(), cheapest.capacity_type), ("us-east-1b", CapacityType::Spot));
        let mut on_demand = Requirements::new();
        on_demand.add(Requirement::new(labels::CAPACITY_TYPE, Operator::In, &["on-demand".into()]).unwrap());
        assert_eq!(it.cheapest_offering(&on_demand).unwrap().price, 0.096);
    }

    #[test]
    fn category_and_generation_handle_unusual_families() {
        assert_eq!((category("inf2"), generation("inf2")), ("inf", Some("2")));
        assert_eq!((category("m7i-flex"), generation("m7i-flex")), ("m", Some("7")));
        assert_eq!((category("u-6tb1"), generation("u-6tb1")), ("u", Some("6")));
        assert_eq!((category("x2iedn"), generation("x2iedn")), ("x", Some("2")));
    }

    #[test]
    fn nvidia_gpus_become_an_extended_resource() {
        let spec =
            InstanceTypeSpec { gpu_count: 4, gpu_manufacturer: "NVIDIA".into(), gpu_name: "T4".into(), ..m5_large() };
        let it = InstanceType::new(&spec, &KubeletSettings::default(), |_| None);
        assert_eq!(it.allocatable().get(NVIDIA_GPU), 4);
        assert_eq!(it.requirements.labels()[labels::INSTANCE_GPU_NAME], "t4");
    }
}
