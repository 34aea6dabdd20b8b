//! Prometheus metrics (names prefixed `rafter_`) and the one HTTP port that serves them with
//! `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Label of launch failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// A disruption command's reason (Empty, Underutilized), decision (delete, replace) and outcome
/// (executed, abandoned, invalidated).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    pub reason: String,
    pub decision: String,
    pub outcome: String,
}

/// Labels of cloud API calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiCallLabel {
    pub service: String,
    pub operation: String,
}

/// Label of cloud data refreshes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Whether an interrupted node's replacement was ready when its drain began.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabel {
    pub replacement_ready: String,
}

/// Every metric of one replica.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub pods_pending: Gauge,
    pub batch_size: Histogram,
    pub batch_duration: Histogram,
    pub solve_duration: Histogram,
    pub claims_created: Counter,
    pub claims_launched: Counter,
    pub claims_registered: Counter,
    pub claims_initialized: Counter,
    pub claims_terminated: Counter,
    pub launch_failures: Family<ReasonLabel, Counter>,
    pub evictions: Counter,
    pub leader: Gauge,
    pub leader_transitions: Counter,
    pub actor_restarts: Counter,
    pub instances_collected: Counter,
    pub cloud_api_calls: Family<ApiCallLabel, Counter>,
    pub cloud_refresh_failures: Family<KindLabel, Counter>,
    pub interruption_received: Counter,
    pub interruption_deleted: Counter,
    pub interruption_messages: Family<KindLabel, Counter>,
    pub interruption_malformed: Counter,
    pub interruption_unmanaged: Counter,
    pub interruption_duplicates: Counter,
    pub interruption_message_age: Histogram,
    pub interruption_taint_latency: Histogram,
    pub interruption_replacement_registered: Histogram,
    pub interruption_drains: Family<ReadyLabel, Counter>,
    pub interruption_drain_margin: Histogram,
    pub interruption_budget_overrides: Counter,
    pub interruption_deadline_misses: Counter,
    pub disruption_decisions: Family<DecisionLabel, Counter>,
    pub disruption_budget_blocked: Gauge,
    pub disruption_savings: Counter<f64, std::sync::atomic::AtomicU64>,
    pub disruption_abandoned: Counter,
    pub disruption_decision_duration: Histogram,
    /// Where the cloud counters come from (set once the replica has its cloud).
    cloud: std::sync::OnceLock<Arc<dyn rafter::cloud::CloudProvider>>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("rafter");
        let m = Self {
            pods_pending: Gauge::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            batch_duration: Histogram::new(exponential_buckets(0.05, 2.0, 10)),
            solve_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            claims_created: Counter::default(),
            claims_launched: Counter::default(),
            claims_registered: Counter::default(),
            claims_initialized: Counter::default(),
            claims_terminated: Counter::default(),
            launch_failures: Family::default(),
            evictions: Counter::default(),
            leader: Gauge::default(),
            leader_transitions: Counter::default(),
            actor_restarts: Counter::default(),
            instances_collected: Counter::default(),
            cloud_api_calls: Family::default(),
            cloud_refresh_failures: Family::default(),
            interruption_received: Counter::default(),
            interruption_deleted: Counter::default(),
            interruption_messages: Family::default(),
            interruption_malformed: Counter::default(),
            interruption_unmanaged: Counter::default(),
            interruption_duplicates: Counter::default(),
            interruption_message_age: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            interruption_taint_latency: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            interruption_replacement_registered: Histogram::new(exponential_buckets(0.25, 2.0, 12)),
            interruption_drains: Family::default(),
            interruption_drain_margin: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            interruption_budget_overrides: Counter::default(),
            interruption_deadline_misses: Counter::default(),
            disruption_decisions: Family::default(),
            disruption_budget_blocked: Gauge::default(),
            disruption_savings: Counter::default(),
            disruption_abandoned: Counter::default(),
            disruption_decision_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            cloud: std::sync::OnceLock::new(),
            ready: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register("pods_pending", "Pods waiting for capacity in the last batch", m.pods_pending.clone());
        registry.register("batch_size", "Pods per batch", m.batch_size.clone());
        registry.register("batch_duration_seconds", "From a batch's first pod to its close", m.batch_duration.clone());
        registry.register("solve_duration_seconds", "Time to compute a packing", m.solve_duration.clone());
        registry.register("nodeclaims_created", "NodeClaims created", m.claims_created.clone());
        registry.register(
            "nodeclaims_launched",
            "NodeClaims whose instance the cloud confirmed",
            m.claims_launched.clone(),
        );
        registry.register("nodeclaims_registered", "NodeClaims whose Node joined", m.claims_registered.clone());
        registry.register("nodeclaims_initialized", "NodeClaims whose Node became Ready", m.claims_initialized.clone());
        registry.register(
            "nodeclaims_terminated",
            "NodeClaims whose instance was terminated and finalizer removed",
            m.claims_terminated.clone(),
        );
        registry.register("launch_failures", "Failed cloud launches by reason", m.launch_failures.clone());
        registry.register("pod_evictions", "Pods evicted while draining", m.evictions.clone());
        registry.register("leader", "1 while this replica leads", m.leader.clone());
        registry.register(
            "leader_transitions",
            "Times this replica became or stopped being the leader",
            m.leader_transitions.clone(),
        );
        registry.register("actor_restarts", "Actors restarted by the supervisor", m.actor_restarts.clone());
        registry.register(
            "instances_garbage_collected",
            "Instances terminated because no NodeClaim owned them",
            m.instances_collected.clone(),
        );
        registry.register(
            "cloud_api_calls",
            "Cloud API calls by service and operation, retries included",
            m.cloud_api_calls.clone(),
        );
        registry.register(
            "cloud_refresh_failures",
            "Failed refreshes of cloud data (instance types, spot and on-demand prices); the last good data is kept",
            m.cloud_refresh_failures.clone(),
        );
        registry.register(
            "interruption_received",
            "Interruption messages received (every delivery)",
            m.interruption_received.clone(),
        );
        registry.register(
            "interruption_deleted",
            "Interruption messages deleted from the queue",
            m.interruption_deleted.clone(),
        );
        registry.register("interruption_messages", "Interruption messages by kind", m.interruption_messages.clone());
        registry.register(
            "interruption_malformed",
            "Interruption messages that could not be read (logged with their ID and deleted)",
            m.interruption_malformed.clone(),
        );
        registry.register(
            "interruption_unmanaged",
            "Interruption events for instances no NodeClaim owns (deleted)",
            m.interruption_unmanaged.clone(),
        );
        registry.register(
            "interruption_duplicates",
            "Interruption events for claims already handled at least as urgently",
            m.interruption_duplicates.clone(),
        );
        registry.register(
            "interruption_message_age_seconds",
            "From a message's arrival on the queue to its receipt",
            m.interruption_message_age.clone(),
        );
        registry.register(
            "interruption_taint_latency_seconds",
            "From receipt of an interruption to its node's disruption taint",
            m.interruption_taint_latency.clone(),
        );
        registry.register(
            "interruption_replacement_registered_seconds",
            "From receipt of an interruption to its replacement's registration",
            m.interruption_replacement_registered.clone(),
        );
        registry.register(
            "interruption_drains",
            "Drains of interrupted nodes, by whether the replacement was ready when they began",
            m.interruption_drains.clone(),
        );
        registry.register(
            "interruption_drain_margin_seconds",
            "Time left before the deadline when an interrupted node finished draining",
            m.interruption_drain_margin.clone(),
        );
        registry.register(
            "interruption_budget_overrides",
            "Pods deleted past their disruption budget because the deadline left no time to wait",
            m.interruption_budget_overrides.clone(),
        );
        registry.register(
            "interruption_deadline_misses",
            "Interrupted instances still running when their deadline passed",
            m.interruption_deadline_misses.clone(),
        );
        registry.register(
            "disruption_decisions",
            "Disruption commands by reason, decision (delete, replace) and outcome (executed, abandoned, invalidated)",
            m.disruption_decisions.clone(),
        );
        registry.register(
            "disruption_budget_blocked_candidates",
            "Candidates the last disruption decision kept because a budget allowed no more",
            m.disruption_budget_blocked.clone(),
        );
        registry.register(
            "disruption_savings_dollars_per_hour",
            "Hourly cost removed by executed disruption commands (USD per hour, summed)",
            m.disruption_savings.clone(),
        );
        registry.register(
            "disruption_commands_abandoned",
            "Disruption commands given up because a replacement failed to launch or initialize",
            m.disruption_abandoned.clone(),
        );
        registry.register(
            "disruption_decision_duration_seconds",
            "Time to compute one disruption decision",
            m.disruption_decision_duration.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        self.sync_cloud();
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Exports the cloud provider's own counters.
    pub fn watch_cloud(&self, cloud: Arc<dyn rafter::cloud::CloudProvider>) {
        let _ = self.cloud.set(cloud);
    }

    fn sync_cloud(&self) {
        let Some(cloud) = self.cloud.get() else { return };
        let stats = cloud.stats();
        let raise = |counter: &Counter, to: u64| {
            let now = counter.get();
            if to > now {
                counter.inc_by(to - now);
            }
        };
        for ((service, operation), n) in stats.api_calls {
            raise(&self.cloud_api_calls.get_or_create(&ApiCallLabel { service, operation }), n);
        }
        for (kind, n) in stats.refresh_failures {
            raise(&self.cloud_refresh_failures.get_or_create(&KindLabel { kind }), n);
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the task is aborted. `ready` is asked on
/// each `/readyz`, and says why when it is not.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                let ready = ready.clone();
                async move {
                    let (status, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, metrics.encode()),
                        "/healthz" => (StatusCode::OK, "ok\n".to_string()),
                        "/readyz" => match ready() {
                            Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                        },
                        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                    };
                    let mut response = Response::new(Full::new(hyper::body::Bytes::from(body)));
                    *response.status_mut() = status;
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
