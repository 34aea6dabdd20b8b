//! Well-known label, annotation, taint and finalizer names shared with Karpenter, and the label syntax rules.
//!
//! Pods select nodes with these keys, so they must match Karpenter's spelling exactly.

/// API group of NodePool, NodeClaim and the legacy Provisioner.
pub const GROUP: &str = "karpenter.sh";
/// API group of EC2NodeClass and the legacy AWSNodeTemplate.
pub const AWS_GROUP: &str = "karpenter.k8s.aws";

/// The NodePool a node was launched for.
pub const NODEPOOL: &str = "karpenter.sh/nodepool";
/// `spot`, `on-demand` or `reserved`.
pub const CAPACITY_TYPE: &str = "karpenter.sh/capacity-type";
/// Set on nodes once Rafter has registered them.
pub const REGISTERED: &str = "karpenter.sh/registered";
/// Set on nodes once they are initialised.
pub const INITIALIZED: &str = "karpenter.sh/initialized";
/// The EC2NodeClass a node was launched with.
pub const EC2NODECLASS: &str = "karpenter.k8s.aws/ec2nodeclass";

/// Zone of a node.
pub const ZONE: &str = "topology.kubernetes.io/zone";
/// Region of a node.
pub const REGION: &str = "topology.kubernetes.io/region";
/// Instance type of a node.
pub const INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
/// CPU architecture (`amd64`, `arm64`).
pub const ARCH: &str = "kubernetes.io/arch";
/// Operating system (`linux`, `windows`).
pub const OS: &str = "kubernetes.io/os";
/// Node name; chosen by the kubelet, so pools may not require it.
pub const HOSTNAME: &str = "kubernetes.io/hostname";
/// Windows build of a node.
pub const WINDOWS_BUILD: &str = "node.kubernetes.io/windows-build";

/// Instance-type attributes published by the AWS provider.
pub const INSTANCE_CATEGORY: &str = "karpenter.k8s.aws/instance-category";
/// Instance family, e.g. `m5`.
pub const INSTANCE_FAMILY: &str = "karpenter.k8s.aws/instance-family";
/// Instance generation, e.g. `5`.
pub const INSTANCE_GENERATION: &str = "karpenter.k8s.aws/instance-generation";
/// Instance size, e.g. `2xlarge`.
pub const INSTANCE_SIZE: &str = "karpenter.k8s.aws/instance-size";
/// vCPU count.
pub const INSTANCE_CPU: &str = "karpenter.k8s.aws/instance-cpu";
/// Memory in MiB.
pub const INSTANCE_MEMORY: &str = "karpenter.k8s.aws/instance-memory";
/// `nitro` or `xen`.
pub const INSTANCE_HYPERVISOR: &str = "karpenter.k8s.aws/instance-hypervisor";
/// GPU model, e.g. `t4`.
pub const INSTANCE_GPU_NAME: &str = "karpenter.k8s.aws/instance-gpu-name";
/// GPU maker, e.g. `nvidia`.
pub const INSTANCE_GPU_MANUFACTURER: &str = "karpenter.k8s.aws/instance-gpu-manufacturer";
/// GPU count.
pub const INSTANCE_GPU_COUNT: &str = "karpenter.k8s.aws/instance-gpu-count";
/// GPU memory in MiB.
pub const INSTANCE_GPU_MEMORY: &str = "karpenter.k8s.aws/instance-gpu-memory";
/// Network bandwidth in Mbit/s.
pub const INSTANCE_NETWORK_BANDWIDTH: &str = "karpenter.k8s.aws/instance-network-bandwidth";
/// Local NVMe storage in GiB.
pub const INSTANCE_LOCAL_NVME: &str = "karpenter.k8s.aws/instance-local-nvme";
/// CPU maker (`intel`, `amd`, `aws`).
pub const INSTANCE_CPU_MANUFACTURER: &str = "karpenter.k8s.aws/instance-cpu-manufacturer";
/// Whether the type supports EBS optimisation.
pub const INSTANCE_EBS_BANDWIDTH: &str = "karpenter.k8s.aws/instance-ebs-bandwidth";
/// Zone ID, e.g. `use1-az1`.
pub const ZONE_ID: &str = "topology.k8s.aws/zone-id";

/// Finalizer that makes every NodeClaim and node deletion run through Rafter's termination.
pub const TERMINATION_FINALIZER: &str = "karpenter.sh/termination";
/// Taint key put on nodes that are being disrupted (effect `NoSchedule`).
pub const DISRUPTED_TAINT_KEY: &str = "karpenter.sh/disrupted";
/// Pods and nodes with this annotation set to `"true"` are never voluntarily disrupted.
pub const DO_NOT_DISRUPT: &str = "karpenter.sh/do-not-disrupt";
/// Startup taint Rafter expects the node to remove once it is ready for pods.
pub const UNREGISTERED_TAINT_KEY: &str = "karpenter.sh/unregistered";
/// Kubernetes' taint on a Node that is not Ready (kube-apiserver puts it on every new Node).
pub const NOT_READY_TAINT_KEY: &str = "node.kubernetes.io/not-ready";
/// Kubernetes' taint on a Node whose kubelet stopped reporting.
pub const UNREACHABLE_TAINT_KEY: &str = "node.kubernetes.io/unreachable";
/// The cloud provider's taint on a Node its controller has not initialized yet.
pub const UNINITIALIZED_TAINT_KEY: &str = "node.cloudprovider.kubernetes.io/uninitialized";

/// Capacity type values.
pub const CAPACITY_TYPE_SPOT: &str = "spot";
/// Capacity type values.
pub const CAPACITY_TYPE_ON_DEMAND: &str = "on-demand";
/// Capacity type values.
pub const CAPACITY_TYPE_RESERVED: &str = "reserved";

/// Labels under restricted domains that users may still require or set, because the
/// cloud provider or kubelet gives them a meaning Rafter understands.
pub const WELL_KNOWN_LABELS: &[&str] = &[
    NODEPOOL,
    CAPACITY_TYPE,
    ZONE,
    REGION,
    INSTANCE_TYPE,
    ARCH,
    OS,
    WINDOWS_BUILD,
    INSTANCE_CATEGORY,
    INSTANCE_FAMILY,
    INSTANCE_GENERATION,
    INSTANCE_SIZE,
    INSTANCE_CPU,
    INSTANCE_CPU_MANUFACTURER,
    INSTANCE_MEMORY,
    INSTANCE_HYPERVISOR,
    INSTANCE_GPU_NAME,
    INSTANCE_GPU_MANUFACTURER,
    INSTANCE_GPU_COUNT,
    INSTANCE_GPU_MEMORY,
    INSTANCE_NETWORK_BANDWIDTH,
    INSTANCE_LOCAL_NVME,
    INSTANCE_EBS_BANDWIDTH,
    ZONE_ID,
    EC2NODECLASS,
    "beta.kubernetes.io/instance-type",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
];

/// Label domains reserved for Kubernetes and Rafter itself.
pub const RESTRICTED_DOMAINS: &[&str] = &["kubernetes.io", "k8s.io", "karpenter.sh", "karpenter.k8s.aws"];

/// Subdomains of restricted domains that are free for users (the kubelet lets nodes set them).
pub const DOMAIN_EXCEPTIONS: &[&str] = &["node.kubernetes.io", "node-restriction.kubernetes.io", "kops.k8s.io"];

/// Why a label key may not be used in a NodePool's requirements or template labels, if it may not.
pub fn restricted_label_reason(key: &str) -> Option<String> {
    if key == HOSTNAME {
        return Some(format!("{HOSTNAME} is chosen per node and cannot be required or set by a pool"));
    }
    if WELL_KNOWN_LABELS.contains(&key) {
        return None;
    }
    let domain = key.split_once('/').map(|(d, _)| d)?;
    let under = |parent: &str| domain == parent || domain.ends_with(&format!(".{parent}"));
    if DOMAIN_EXCEPTIONS.iter().any(|d| under(d)) {
        return None;
    }
    RESTRICTED_DOMAINS.iter().find(|d| under(d)).map(|d| {
        format!("label domain {d} is restricted; use one of its well-known labels or a key in your own domain")
    })
}

/// Schema pattern of a label key: an optional DNS-subdomain prefix and `/`, then a name.
pub const LABEL_KEY_PATTERN: &str =
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";

/// Schema pattern of a label value (empty, or a name of at most 63 characters).
pub const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

/// Why `key` is not a valid label key (`[prefix/]name`), if it is not.
pub fn label_key_error(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(is_dns_label))
    {
        return Some(format!("{key:?} has an invalid prefix: it must be a DNS subdomain such as example.com"));
    }
    if name.is_empty() || name.len() > 63 || !is_label_name(name) {
        return Some(format!(
            "{key:?} is not a valid label key: the name must be 1-63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    None
}

/// Why `value` is not a valid label value, if it is not.
pub fn label_value_error(value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    if value.len() > 63 || !is_label_name(value) {
        return Some(format!(
            "{value:?} is not a valid label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    None
}

fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    let edge = |b: u8| b.is_ascii_alphanumeric();
    !bytes.is_empty()
        && edge(bytes[0])
        && edge(bytes[bytes.len() - 1])
        && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_domains_allow_only_well_known_keys_and_exceptions() {
        assert!(restricted_label_reason(ARCH).is_none());
        assert!(restricted_label_reason(INSTANCE_FAMILY).is_none());
        assert!(restricted_label_reason("node.kubernetes.io/lifecycle").is_none());
        assert!(restricted_label_reason("example.com/team").is_none());
        assert!(restricted_label_reason("team").is_none());
        assert!(restricted_label_reason(HOSTNAME).is_some());
        assert!(restricted_label_reason("karpenter.sh/custom").is_some());
        assert!(restricted_label_reason("foo.kubernetes.io/bar").is_some());
        assert!(restricted_label_reason("karpenter.k8s.aws/other").is_some());
    }

    #[test]
    fn label_syntax_is_checked() {
        assert!(label_key_error("example.com/team").is_none());
        assert!(label_key_error("Team_1").is_none());
        assert!(label_key_error("-bad").is_some());
        assert!(label_key_error("Bad.Prefix/x").is_some());
        assert!(label_key_error("a/b/c").is_some());
        assert!(label_value_error("").is_none());
        assert!(label_value_error("ok-1").is_none());
        assert!(label_value_error("not ok").is_some());
    }
}
