//! Controller configuration from flags and environment, checked before anything connects.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rafter::api::duration::{DurationError, parse_duration};

/// Where machines come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CloudKind {
    /// Amazon EC2, with credentials from the default chain (IRSA, Pod Identity, environment).
    Aws,
    /// The in-memory cloud of the demo and the tests.
    Fake,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Parses `30s`, `1m`, `1h30m`, and sub-second `500ms`.
pub fn parse_flag_duration(text: &str) -> Result<Duration, DurationError> {
    if let Some(ms) = text.strip_suffix("ms")
        && let Ok(n) = ms.parse::<u64>()
    {
        return Ok(Duration::from_millis(n));
    }
    parse_duration(text)
}

/// Flags of `rafter run`; each has an environment variable so a Helm chart can set it.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Kubeconfig to use; in-cluster configuration when unset and running in a pod.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use instead of the current one.
    #[arg(long, env = "RAFTER_KUBE_CONTEXT")]
    pub context: Option<String>,
    /// Name of the cluster; tags every instance so garbage collection finds only its own.
    #[arg(long, env = "RAFTER_CLUSTER_NAME")]
    pub cluster_name: String,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "RAFTER_NAMESPACE", default_value = "karpenter")]
    pub namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "RAFTER_LEASE_NAME", default_value = "rafter-leader-election")]
    pub lease_name: String,
    /// How long a lease holder is trusted without renewing.
    #[arg(long, env = "RAFTER_LEASE_DURATION", default_value = "15s", value_parser = parse_flag_duration)]
    pub lease_duration: Duration,
    /// A leader that has not renewed within this stops acting; shorter than the lease duration.
    #[arg(long, env = "RAFTER_RENEW_DEADLINE", default_value = "10s", value_parser = parse_flag_duration)]
    pub renew_deadline: Duration,
    /// How often a replica tries to acquire or renew the lease.
    #[arg(long, env = "RAFTER_RETRY_PERIOD", default_value = "2s", value_parser = parse_flag_duration)]
    pub retry_period: Duration,
    /// A batch of pending pods closes after this long without a new pod.
    #[arg(long, env = "RAFTER_BATCH_IDLE", default_value = "1s", value_parser = parse_flag_duration)]
    pub batch_idle: Duration,
    /// A batch of pending pods closes after this long however many pods arrive.
    #[arg(long, env = "RAFTER_BATCH_MAX", default_value = "10s", value_parser = parse_flag_duration)]
    pub batch_max: Duration,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "RAFTER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Where machines come from.
    #[arg(long, env = "RAFTER_CLOUD", value_enum, default_value = "aws")]
    pub cloud: CloudKind,
    /// AWS region (`--cloud aws`); from the SDK's default chain (AWS_REGION, profile) when unset.
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    /// Endpoint for every AWS API (an emulator such as moto); AWS's own endpoints when unset.
    #[arg(long, env = "RAFTER_AWS_ENDPOINT")]
    pub aws_endpoint: Option<String>,
    /// The cluster's API server URL, written into node user data.
    #[arg(long, env = "RAFTER_CLUSTER_ENDPOINT", default_value = "")]
    pub cluster_endpoint: String,
    /// The cluster's CA bundle (base64), written into node user data.
    #[arg(long, env = "RAFTER_CLUSTER_CA_BUNDLE", default_value = "")]
    pub cluster_ca_bundle: String,
    /// The cluster's Kubernetes minor version, for AMI aliases (`al2023@latest`).
    #[arg(long, env = "RAFTER_KUBERNETES_VERSION", default_value = "1.33")]
    pub kubernetes_version: String,
    /// This replica's name in the leader Lease (default: the pod's hostname).
    #[arg(long, env = "RAFTER_IDENTITY")]
    pub identity: Option<String>,
    /// How pods reach new nodes: left to kube-scheduler, or bound by Rafter at launch.
    #[arg(long, env = "RAFTER_BINDING", value_enum, default_value = "scheduler")]
    pub binding: rafter_actors::context::BindingMode,
    /// Instance profile for legacy AWSNodeTemplates that name none (legacy `aws.defaultInstanceProfile`).
    #[arg(long, env = "RAFTER_DEFAULT_INSTANCE_PROFILE")]
    pub default_instance_profile: Option<String>,
    /// The SQS queue EventBridge sends interruption events to (a URL or a name); none: interruption
    /// handling is off. Karpenter's setting of the same meaning is `interruptionQueue`.
    #[arg(long, env = "RAFTER_INTERRUPTION_QUEUE")]
    pub interruption_queue: Option<String>,
    /// Concurrent long polls of the interruption queue.
    #[arg(long, env = "RAFTER_INTERRUPTION_WORKERS", default_value_t = 4)]
    pub interruption_workers: usize,
    /// What a rebalance recommendation leads to: `replace` (replacement first, then drain) or `ignore`.
    #[arg(long, env = "RAFTER_REBALANCE", default_value = "replace")]
    pub rebalance: rafter::interruption::plan::RebalancePolicy,
    /// The smallest saving a consolidation replacement must make, as a percentage (`5%`) or a
    /// fraction (`0.05`) of what it replaces; a NodePool's `rafter.sh/consolidation-min-saving`
    /// annotation overrides it. Deleting a node always saves.
    #[arg(long, env = "RAFTER_CONSOLIDATION_MIN_SAVING", default_value = "5%", value_parser = parse_min_saving)]
    pub consolidation_min_saving: f64,
    /// Cheaper instance types a spot node's single-node replacement must have to choose from, and
    /// the most it launches from (Karpenter's 15): fewer, and spot stays on the spot it has.
    #[arg(long, env = "RAFTER_SPOT_TO_SPOT_MIN_TYPES", default_value_t = 15)]
    pub spot_to_spot_min_types: usize,
}

fn parse_min_saving(text: &str) -> Result<f64, String> {
    rafter::disruption::parse_min_saving(text)
}

/// Why the flags do not make a working controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A duration or count flag is zero.
    #[error("--{flag} must be more than 0")]
    Zero {
        /// The flag.
        flag: &'static str,
    },
    /// Two timings are in the wrong order.
    #[error("--{shorter} ({shorter_value:?}) must be shorter than --{longer} ({longer_value:?})")]
    Order {
        /// The flag that must be shorter.
        shorter: &'static str,
        /// Its value.
        shorter_value: Duration,
        /// The flag that must be longer.
        longer: &'static str,
        /// Its value.
        longer_value: Duration,
    },
    /// A name flag is empty.
    #[error("--{flag} must not be empty")]
    Empty {
        /// The flag.
        flag: &'static str,
    },
}

impl RunArgs {
    /// The controller's settings from the flags.
    pub fn controller_config(&self, identity: String) -> rafter_actors::context::ControllerConfig {
        rafter_actors::context::ControllerConfig {
            cluster_name: self.cluster_name.clone(),
            identity,
            lease_namespace: self.namespace.clone(),
            lease_name: self.lease_name.clone(),
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
            batch_idle: self.batch_idle,
            batch_max: self.batch_max,
            binding: self.binding,
            interruption_workers: self.interruption_workers,
            rebalance: self.rebalance,
            disruption: rafter::disruption::Settings {
                min_saving: self.consolidation_min_saving,
                spot_min_types: self.spot_to_spot_min_types,
                ..rafter::disruption::Settings::default()
            },
            ..rafter_actors::context::ControllerConfig::default()
        }
    }

    /// Every inconsistency in the flags.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        for (flag, value) in
            [("cluster-name", &self.cluster_name), ("namespace", &self.namespace), ("lease-name", &self.lease_name)]
        {
            if value.trim().is_empty() {
                errors.push(ConfigError::Empty { flag });
            }
        }
        let timings = [
            ("lease-duration", self.lease_duration),
            ("renew-deadline", self.renew_deadline),
            ("retry-period", self.retry_period),
            ("batch-idle", self.batch_idle),
            ("batch-max", self.batch_max),
        ];
        for (flag, value) in timings {
            if value.is_zero() {
                errors.push(ConfigError::Zero { flag });
            }
        }
        if self.spot_to_spot_min_types == 0 {
            errors.push(ConfigError::Zero { flag: "spot-to-spot-min-types" });
        }
        if self.interruption_queue.is_some() && self.interruption_workers == 0 {
            errors.push(ConfigError::Zero { flag: "interruption-workers" });
        }
        let mut order =
            |shorter: &'static str, shorter_value: Duration, longer: &'static str, longer_value: Duration| {
                if shorter_value >= longer_value {
                    errors.push(ConfigError::Order { shorter, shorter_value, longer, longer_value });
                }
            };
        order("renew-deadline", self.renew_deadline, "lease-duration", self.lease_duration);
        order("retry-period", self.retry_period, "renew-deadline", self.renew_deadline);
        if self.batch_idle > self.batch_max {
            errors.push(ConfigError::Order {
                shorter: "batch-idle",
                shorter_value: self.batch_idle,
                longer: "batch-max",
                longer_value: self.batch_max,
            });
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> RunArgs {
        let mut all = vec!["rafter", "--cluster-name", "demo"];
        all.extend_from_slice(args);
        Harness::try_parse_from(all).expect("flags parse").run
    }

    #[test]
    fn defaults_match_the_documented_lease_and_batch_timings() {
        let run = parse(&[]);
        assert_eq!(run.lease_duration, Duration::from_secs(15));
        assert_eq!(run.renew_deadline, Duration::from_secs(10));
        assert_eq!(run.retry_period, Duration::from_secs(2));
        assert_eq!(run.batch_idle, Duration::from_secs(1));
        assert_eq!(run.batch_max, Duration::from_secs(10));
        assert_eq!(run.cloud, CloudKind::Aws);
        assert!(run.validate().is_empty());
    }

    #[test]
    fn a_renew_deadline_longer_than_the_lease_is_rejected_naming_both_flags() {
        let run = parse(&["--renew-deadline", "20s", "--batch-idle", "500ms"]);
        let errors = run.validate();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let text = errors[0].to_string();
        assert!(text.contains("--renew-deadline") && text.contains("--lease-duration"), "{text}");
    }

    #[test]
    fn a_batch_idle_window_longer_than_the_max_window_is_rejected() {
        let errors = parse(&["--batch-idle", "11s"]).validate();
        assert!(errors.iter().any(|e| e.to_string().contains("--batch-idle")), "{errors:?}");
    }

    #[test]
    fn malformed_durations_fail_while_parsing_flags() {
        let result = Harness::try_parse_from(["rafter", "--cluster-name", "x", "--lease-duration", "15"]);
        let err = result.err().expect("15 has no unit").to_string();
        assert!(err.contains("--lease-duration") && err.contains("\"15\""), "{err}");
    }
}
