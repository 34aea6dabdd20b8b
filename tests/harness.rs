//! The end-to-end tests' shared harness: an OTLP receiver, and a world whose leader consumes a
//! moto SQS interruption queue.
#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use rafter::api::nodeclaim::NodeClaim;
use rafter::cloud::fake::FakeConfig;
use rafter::cloud::parse_provider_id;
use rafter::interruption::queue::QueueConfig;
use rafter_actors::controller::Replica;
use rafter_actors::world::{INFLATE, NODEPOOL_DEFAULT, World, WorldConfig};
use rafter_aws::sqs::SqsQueue;
use rafter_sim::moto::{Moto, TEST_CREDENTIALS};
use rafter_sim::nodes::SHUTDOWN_SECONDS;
use serde_json::json;

use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// Makes this test process export its spans over OTLP/HTTP to `url` (once per process).
pub fn export_spans(url: &str) -> opentelemetry_sdk::trace::SdkTracerProvider {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let provider = rafter_actors::telemetry::otlp_provider(url).expect("exporter");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("rafter"))
        .with_filter(tracing_subscriber::EnvFilter::new("warn,rafter_actors=info"));
    tracing_subscriber::registry().with(layer).try_init().expect("subscriber");
    provider
}

/// An OTLP/HTTP trace receiver on 127.0.0.1 that keeps every span it is sent.
pub async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = spans.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let kept = kept.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let kept = kept.clone();
                    async move {
                        assert_eq!(req.uri().path(), "/v1/traces");
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        if let Ok(export) = ExportTraceServiceRequest::decode(body) {
                            let mut kept = kept.lock().expect("lock");
                            for rs in export.resource_spans {
                                for ss in rs.scope_spans {
                                    kept.extend(ss.spans);
                                }
                            }
                        }
                        let mut response = Response::new(Full::new(Bytes::new()));
                        response
                            .headers_mut()
                            .insert("content-type", "application/x-protobuf".parse().expect("header"));
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (url, spans)
}

/// Flushes the span exporter and waits until a span named `last` has arrived; returns them all.
pub async fn exported_spans(
    world: &World,
    provider: &opentelemetry_sdk::trace::SdkTracerProvider,
    spans: &Arc<Mutex<Vec<Span>>>,
    last: &str,
) -> Vec<Span> {
    let _ = provider.force_flush();
    world
        .wait_for("spans", Duration::from_secs(10), || {
            let spans = spans.clone();
            async move { Ok(spans.lock().expect("lock").iter().any(|s| s.name == last)) }
        })
        .await
        .expect("spans exported");
    spans.lock().expect("lock").clone()
}

/// A span attribute's value, as its debug text.
pub fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()).map(|v| format!("{:?}", v.value))
}

pub const REGION: &str = "us-east-1";

/// A spot-only pool of one instance type, so a node's size and the replacement's options are known.
pub fn pool(instance_type: &str) -> String {
    format!(
        r#"apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: default
spec:
  template:
    spec:
      requirements:
        - key: node.kubernetes.io/instance-type
          operator: In
          values: ["{instance_type}"]
        - key: karpenter.sh/capacity-type
          operator: In
          values: ["spot"]
      nodeClassRef:
        group: karpenter.k8s.aws
        kind: EC2NodeClass
        name: default
  disruption:
    consolidationPolicy: WhenEmpty
    consolidateAfter: 10m
"#
    )
}

pub const BUDGET: &str = r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: inflate
  namespace: default
spec:
  minAvailable: 27
  selector:
    matchLabels:
      app: inflate
"#;

/// A world, moto with the interruption queue, and the replica consuming it.
pub struct Harness {
    pub world: World,
    pub moto: Moto,
    pub sqs: aws_sdk_sqs::Client,
    pub url: String,
    pub replica: Replica,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").field("url", &self.url).finish_non_exhaustive()
    }
}

pub async fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            TEST_CREDENTIALS.0,
            TEST_CREDENTIALS.1,
            None,
            None,
            "test",
        ))
        .load()
        .await;
    aws_sdk_sqs::Client::new(&config)
}

/// A world on the fake cloud whose leader consumes a moto SQS queue (found by name, as users
/// configure it).
pub async fn harness(instance_type: &str, workers: usize) -> Harness {
    harness_with(instance_type, workers, INFLATE).await
}

/// `inflate` whose pods ask for `grace` seconds to shut down and would take `shutdown` seconds
/// (the simulated kubelet keeps them Terminating that long, or until their grace ends).
pub fn slow_inflate(grace: u32, shutdown: u32) -> String {
    let inflate = INFLATE
        .replace("terminationGracePeriodSeconds: 0", &format!("terminationGracePeriodSeconds: {grace}"))
        .replace(
            "      labels:\n        app: inflate\n",
            &format!(
                "      labels:\n        app: inflate\n      annotations:\n        {SHUTDOWN_SECONDS}: \"{shutdown}\"\n"
            ),
        );
    assert!(
        inflate.contains(SHUTDOWN_SECONDS) && inflate.contains(&format!("GracePeriodSeconds: {grace}")),
        "{inflate}"
    );
    inflate
}

/// [`harness`] with another `inflate` Deployment.
pub async fn harness_with(instance_type: &str, workers: usize, inflate: &str) -> Harness {
    let fake =
        FakeConfig { cluster: "rafter-sim".into(), boot_delay: Duration::from_millis(500), ..FakeConfig::default() };
    let mut world = World::start(WorldConfig { fake, ..WorldConfig::default() }).await.expect("world");
    world.apply(NODEPOOL_DEFAULT).await.expect("class");
    world.apply(&pool(instance_type)).await.expect("pool");
    world.apply(inflate).await.expect("inflate");
    let moto = Moto::start().expect("moto");
    let sqs = sqs_client(&moto.endpoint).await;
    let created = sqs.create_queue().queue_name("rafter-interruptions").send().await.expect("create queue");
    let url = created.queue_url().expect("queue url").to_string();
    // From here on moto enforces IAM: Rafter consumes the queue as a principal holding only the
    // controller policy of deploy/cloudformation/rafter.yaml (the test's own calls stay allowed).
    let policy = rafter_sim::moto::controller_policy("rafter-sim").expect("the controller policy");
    let controller = moto.enforce_iam(&rafter_sim::moto::action_level(&policy)).await.expect("IAM enforced");
    let queue = connect_queue(&moto, "rafter-interruptions", controller).await;
    assert_eq!(queue.url(), url, "the queue is found by name");
    world.queue = Some(Arc::new(queue));
    let mut controller = world.quick_config("rafter-0");
    controller.interruption_workers = workers;
    let replica = world.replica(controller).await.expect("replica");
    world.wait_for("leadership", Duration::from_secs(15), || async { Ok(replica.is_leader()) }).await.expect("leader");
    Harness { world, moto, sqs, url, replica }
}

/// Rafter's SQS consumer for the queue named `name` on `moto`, found by name as `--interruption-queue`
/// finds it.
pub async fn connect_queue(moto: &Moto, name: &str, credentials: (String, String)) -> SqsQueue {
    let mut config = QueueConfig::new(name, REGION);
    config.endpoint = Some(moto.endpoint.clone());
    config.credentials = Some(credentials);
    // Short polls keep the tests' shutdown quick; production waits 20 s.
    config.wait = Duration::from_secs(1);
    SqsQueue::connect(config).await.expect("queue")
}

impl Harness {
    pub async fn send(&self, bodies: &[String]) {
        for chunk in bodies.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .build()
                        .expect("entry")
                })
                .collect();
            let out = self.sqs.send_message_batch().queue_url(&self.url).set_entries(Some(entries)).send().await;
            assert!(out.expect("send").failed().is_empty(), "every message was accepted");
        }
    }

    /// Messages still on the queue, visible or in flight.
    pub async fn queued(&self) -> u64 {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("attributes");
        out.attributes().map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum()).unwrap_or(u64::MAX)
    }

    /// Waits until the queue holds nothing, visible or in flight, and the replica has counted every
    /// delivery it received as deleted. The queue empties when moto handles the last delete, a
    /// moment before the worker that sent it counts the deletion, so both are waited for.
    pub async fn drained(&self, within: Duration) -> Duration {
        self.world
            .wait_for("the queue drained and every delivery counted deleted", within, || async {
                Ok(self.queued().await == 0
                    && self.metric("rafter_interruption_deleted_total")
                        == self.metric("rafter_interruption_received_total"))
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{e}: {} received, {} deleted",
                    self.metric("rafter_interruption_received_total"),
                    self.metric("rafter_interruption_deleted_total")
                )
            })
    }

    pub fn metric(&self, name: &str) -> f64 {
        let text = self.replica.ctx.metrics.encode();
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub async fn scale_and_wait(&self, pods: u32) {
        self.world.scale(pods).await.expect("scale");
        self.world
            .wait_for(&format!("{pods} pods running"), Duration::from_secs(60), || async {
                Ok(self.world.running().await? == pods as usize)
            })
            .await
            .expect("running");
    }
}

pub fn event(id: &str, detail_type: &str, time: Timestamp, detail: serde_json::Value) -> String {
    json!({
        "version": "0", "id": id, "detail-type": detail_type, "source": "aws.ec2", "account": "123456789012",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(), "region": REGION,
        "resources": [format!("arn:aws:ec2:{REGION}:123456789012:instance/{}", detail["instance-id"].as_str().unwrap_or_default())],
        "detail": detail
    })
    .to_string()
}

pub fn spot(id: &str, instance: &str, time: Timestamp) -> String {
    let warning = rafter::interruption::Envelope::spot_warning(id, "123456789012", REGION, instance, time);
    serde_json::to_string(&warning).expect("a spot warning serialises")
}

pub fn state_change(id: &str, instance: &str, state: &str, time: Timestamp) -> String {
    event(id, "EC2 Instance State-change Notification", time, json!({"instance-id": instance, "state": state}))
}

pub fn rebalance(id: &str, instance: &str, time: Timestamp) -> String {
    event(id, "EC2 Instance Rebalance Recommendation", time, json!({"instance-id": instance}))
}

pub fn instance_id(claim: &NodeClaim) -> String {
    let provider = claim.status.as_ref().and_then(|s| s.provider_id.clone()).expect("launched");
    parse_provider_id(&provider).expect("aws provider id").1.to_string()
}

/// Ready, and neither unregistered nor disrupted nor going away: a node that can take pods.
pub fn node_ready(node: &Node) -> bool {
    let ready = rafter::state::node_ready(node);
    let tainted =
        node.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|t| {
            t.iter().any(|t| t.key == "karpenter.sh/unregistered" || t.key == "karpenter.sh/disrupted")
        });
    ready && !tainted && node.metadata.deletion_timestamp.is_none()
}

/// What a fresh solve of `pods` on an empty cluster costs, $/h: the lower bound of any arrival
/// order.
pub async fn fresh_plan_price(world: &World, pods: Vec<k8s_openapi::api::core::v1::Pod>) -> f64 {
    fresh_plan(world, pods).await.price()
}

/// A fresh solve of `pods` on an empty cluster.
pub async fn fresh_plan(world: &World, pods: Vec<k8s_openapi::api::core::v1::Pod>) -> rafter::scheduling::solver::Plan {
    world.fresh_plan(pods).await.expect("a fresh solve")
}
