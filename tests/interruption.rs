//! Interruption handling end to end: the simulator's API server and kubelets, the fake cloud, and
//! moto's SQS through the real SDK. A spot warning for a node with a PodDisruptionBudget, duplicate
//! and reordered deliveries, and a thousand poison messages mixed with valid ones.

use rafter_e2e as common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{BUDGET, harness, harness_with, instance_id, node_ready, rebalance, slow_inflate, spot, state_change};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::ListParams;
use rafter::api::nodeclaim::NodeClaim;
use rafter::cloud::{CloudProvider, InstanceState};
use rafter::interruption::plan::REPLACES_ANNOTATION;
use rafter_actors::timeline::Mark;
use rafter_actors::world::World;
use tokio::time::Instant;

/// What a watcher of the cluster saw during an interruption.
#[derive(Debug, Default)]
struct Observed {
    /// Fewest Ready, non-terminating inflate pods seen.
    min_ready: usize,
    /// When a pod of the interrupted node first began to leave.
    first_eviction: Option<Instant>,
    /// When another node was first Ready with room for pods (a replacement).
    replacement_ready: Option<Instant>,
}

/// Polls the cluster every 25 ms until `stop`.
fn observe(
    client: kube::Client,
    old_node: String,
    before: BTreeSet<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Observed> {
    tokio::spawn(async move {
        let mut seen = Observed { min_ready: usize::MAX, ..Observed::default() };
        while !stop.load(Ordering::SeqCst) {
            let pods = Api::<Pod>::namespaced(client.clone(), "default")
                .list(&ListParams::default().labels("app=inflate"))
                .await;
            let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await;
            if let (Ok(pods), Ok(nodes)) = (pods, nodes) {
                let ready = pods
                    .items
                    .iter()
                    .filter(|p| rafter_sim::components::ready(p) && p.metadata.deletion_timestamp.is_none())
                    .count();
                seen.min_ready = seen.min_ready.min(ready);
                let on_old: Vec<&Pod> = pods
                    .items
                    .iter()
                    .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(old_node.as_str()))
                    .collect();
                let leaving =
                    on_old.iter().any(|p| p.metadata.deletion_timestamp.is_some()) || on_old.len() < before.len();
                if leaving && seen.first_eviction.is_none() {
                    seen.first_eviction = Some(Instant::now());
                }
                let other_ready =
                    nodes.items.iter().any(|n| n.metadata.name.as_deref() != Some(old_node.as_str()) && node_ready(n));
                if other_ready && seen.replacement_ready.is_none() {
                    seen.replacement_ready = Some(Instant::now());
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        seen
    })
}

async fn the_claim(world: &World) -> NodeClaim {
    let claims = world.claims().await.expect("claims");
    assert_eq!(
        claims.len(),
        1,
        "one node holds the pods: {:?}",
        claims.iter().map(|c| &c.metadata.name).collect::<Vec<_>>()
    );
    claims.into_iter().next().expect("claim")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_interrupted_node_is_replaced_before_eviction_and_terminated_before_its_deadline_within_its_budget() {
    let h = harness("m5.xlarge", 4).await;
    h.world.apply(BUDGET).await.expect("budget");
    h.scale_and_wait(30).await;
    let old = the_claim(&h.world).await;
    let old_name = old.metadata.name.clone().expect("name");
    let old_node = old.status.as_ref().and_then(|s| s.node_name.clone()).expect("registered");
    let old_zone =
        old.metadata.labels.as_ref().and_then(|l| l.get("topology.kubernetes.io/zone").cloned()).expect("zone");
    let instance = instance_id(&old);
    let before: BTreeSet<String> =
        h.world.pods().await.expect("pods").iter().filter_map(|p| p.metadata.name.clone()).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = observe(h.world.client.clone(), old_node.clone(), before, stop.clone());
    let sent = Instant::now();
    let warned = Timestamp::now();
    let deadline = warned + jiff::SignedDuration::from_secs(120);
    h.send(&[spot("e2e-spot-1", &instance, warned)]).await;

    // The old instance is terminated, its claim and node are gone, and all 30 pods run elsewhere.
    let cloud = h.world.cloud.clone();
    let took = h
        .world
        .wait_for("the interrupted node replaced and terminated", Duration::from_secs(60), || async {
            let gone = match cloud.get(&format!("aws:///{old_zone}/{instance}")).await {
                Ok(i) => i.state == InstanceState::Terminated,
                Err(_) => true,
            };
            let claims = h.world.claims().await?;
            let nodes = h.world.nodes().await?;
            let pods = h.world.pods().await?;
            let elsewhere = pods
                .iter()
                .filter(|p| rafter_sim::components::ready(p))
                .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(old_node.as_str()));
            Ok(gone
                && claims.iter().all(|c| c.metadata.name.as_deref() != Some(old_name.as_str()))
                && nodes.iter().all(|n| n.metadata.name.as_deref() != Some(old_node.as_str()))
                && elsewhere
                && h.world.running().await? == 30)
        })
        .await
        .expect("replaced");
    let finished_at = Timestamp::now();
    stop.store(true, Ordering::SeqCst);
    let seen = watcher.await.expect("watcher");

    // Before the deadline, with time to spare.
    assert!(finished_at < deadline, "terminated at {finished_at}, deadline {deadline}");
    // The replacement was Ready before the first pod left, and the budget was never broken.
    let (ready_at, evicted_at) =
        (seen.replacement_ready.expect("a replacement became ready"), seen.first_eviction.expect("pods were evicted"));
    assert!(ready_at <= evicted_at, "the replacement was ready {:?} after the first eviction", ready_at - evicted_at);
    assert!(
        seen.min_ready >= 27,
        "the budget allows 3 unavailable pods; {} were Ready at the worst moment",
        seen.min_ready
    );
    assert_eq!(h.metric("rafter_interruption_budget_overrides_total"), 0.0);
    assert_eq!(h.metric("rafter_interruption_deadline_misses_total"), 0.0);
    assert_eq!(h.metric("rafter_interruption_drains_total{replacement_ready=\"true\"}"), 1.0);

    // One replacement, launched away from the reclaimed spot offering, marked as the replacement.
    let claims = h.world.claims().await.expect("claims");
    assert_eq!(claims.len(), 1, "one replacement claim");
    let new = &claims[0];
    assert_eq!(new.metadata.annotations.as_ref().and_then(|a| a.get(REPLACES_ANNOTATION)), Some(&old_name));
    let new_zone =
        new.metadata.labels.as_ref().and_then(|l| l.get("topology.kubernetes.io/zone").cloned()).expect("zone");
    assert_ne!(new_zone, old_zone, "the reclaimed (m5.xlarge, {old_zone}, spot) offering is avoided");

    // The message was recorded, acted on once, and deleted.
    assert_eq!(h.metric("rafter_interruption_messages_total{kind=\"spot_interruption\"}"), 1.0);
    h.drained(Duration::from_secs(10)).await;

    let timeline = h.replica.ctx.timeline.clone();
    let at = |f: &dyn Fn(&Mark) -> bool| timeline.marks().into_iter().find(|(_, m)| f(m)).map(|(t, _)| t);
    let interrupted = at(&|m| matches!(m, Mark::Interrupted { claim, .. } if *claim == old_name)).expect("recorded");
    let tainted = at(&|m| matches!(m, Mark::Tainted { claim } if *claim == old_name)).expect("tainted");
    let new_name = new.metadata.name.clone().expect("name");
    let registered = at(&|m| matches!(m, Mark::Registered { claim, .. } if *claim == new_name)).expect("registered");
    let drain = at(&|m| matches!(m, Mark::DrainStarted { claim, replacement_ready: true } if *claim == old_name))
        .expect("drain");
    let drained = at(&|m| matches!(m, Mark::Drained { claim } if *claim == old_name)).expect("drained");
    assert!(tainted <= drain && registered <= drain, "replace and taint come before the drain");
    println!(
        "30-pod spot interruption: sent→recorded {:?}, recorded→taint {:?}, recorded→replacement registered {:?}, recorded→drain start {:?}, drained {:.1}s before the deadline, all done {:?} after sending",
        interrupted - sent,
        tainted - interrupted,
        registered - interrupted,
        drain - interrupted,
        120.0 - (drained - sent).as_secs_f64(),
        took
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_reordered_messages_cause_one_replacement_each_and_are_all_deleted() {
    let h = harness("m5.large", 3).await;
    h.scale_and_wait(24).await;
    let claims = h.world.claims().await.expect("claims");
    assert!(claims.len() >= 2, "at least two nodes: {}", claims.len());
    let (a, b) = (&claims[0], &claims[1]);
    let (a_name, b_name) = (a.metadata.name.clone().expect("a"), b.metadata.name.clone().expect("b"));
    let (a_id, b_id) = (instance_id(a), instance_id(b));
    let now = Timestamp::now();

    // Node A: the same spot warning three times (as EventBridge and SQS may repeat it), a
    // rebalance recommendation arriving after it, and a stale `running` state change.
    h.send(&[
        spot("dup-a", &a_id, now),
        spot("dup-a", &a_id, now),
        rebalance("late-rebalance-a", &a_id, now - jiff::SignedDuration::from_secs(30)),
        spot("dup-a", &a_id, now),
        state_change("a-running", &a_id, "running", now),
    ])
    .await;
    // Node B: its state change to `terminated` overtakes the spot warning that preceded it: the
    // claim is removed at once, whatever the warning asked. Sent once A's replacement is planned:
    // B's warning and removal, handled concurrently, may buy B's pods capacity twice, and A's pods
    // would rightly take the spare instead of a replacement of their own.
    h.world
        .wait_for("A's replacement planned", Duration::from_secs(30), || async {
            Ok(h.replica
                .ctx
                .timeline
                .first(|m| matches!(m, Mark::ReplacementPlanned { claim, .. } if *claim == a_name))
                .is_some())
        })
        .await
        .expect("A is replaced");
    h.send(&[
        state_change("b-terminated", &b_id, "terminated", now + jiff::SignedDuration::from_secs(5)),
        spot("b-spot", &b_id, now),
    ])
    .await;

    h.drained(Duration::from_secs(30)).await;
    // A is replaced once and drained; B's claim is removed without a replacement of its own.
    h.world
        .wait_for("both old claims gone and all pods running", Duration::from_secs(60), || async {
            let claims = h.world.claims().await?;
            let names: Vec<&str> = claims.iter().filter_map(|c| c.metadata.name.as_deref()).collect();
            Ok(!names.contains(&a_name.as_str()) && !names.contains(&b_name.as_str()) && h.world.running().await? == 24)
        })
        .await
        .expect("handled");
    let claims = h.world.claims().await.expect("claims");
    let replacing_a = claims
        .iter()
        .filter(|c| c.metadata.annotations.as_ref().and_then(|m| m.get(REPLACES_ANNOTATION)) == Some(&a_name))
        .count();
    let replacing_b = claims
        .iter()
        .filter(|c| c.metadata.annotations.as_ref().and_then(|m| m.get(REPLACES_ANNOTATION)) == Some(&b_name))
        .count();
    assert_eq!(
        replacing_a,
        1,
        "one replacement for A however often it was announced; timeline: {:?}",
        h.replica.ctx.timeline.marks()
    );
    // B's warning and its removal may be handled concurrently: at most one replacement either way.
    assert!(replacing_b <= 1, "B was replaced {replacing_b} times");
    let marks = h.replica.ctx.timeline.marks();
    let planned_for_a =
        marks.iter().filter(|(_, m)| matches!(m, Mark::ReplacementPlanned { claim, .. } if *claim == a_name)).count();
    assert_eq!(planned_for_a, 1, "A's replacement was planned once");
    let drains_a =
        marks.iter().filter(|(_, m)| matches!(m, Mark::DrainStarted { claim, .. } if *claim == a_name)).count();
    assert_eq!(drains_a, 1);

    // Every delivery was received and deleted (SQS may deliver a message more than once, so counts
    // are at least what was sent, and re-deliveries only add duplicates).
    let received = h.metric("rafter_interruption_received_total");
    assert!(received >= 7.0, "{received} deliveries");
    assert_eq!(h.metric("rafter_interruption_deleted_total"), received);
    let extra = received - 7.0;
    let kind = |k: &str| h.metric(&format!("rafter_interruption_messages_total{{kind=\"{k}\"}}"));
    assert!((4.0..=4.0 + extra).contains(&kind("spot_interruption")));
    assert!((2.0..=2.0 + extra).contains(&kind("state_change")));
    assert!((1.0..=1.0 + extra).contains(&kind("rebalance_recommendation")));
    // Every event about an instance is either written on its claim or counted as nothing new.
    // Handled concurrently, a message that arrives later may still be written first (a rebalance
    // before the spot warning it follows), so only the sum is fixed: 6 events for A and B.
    let written = marks.iter().filter(|(_, m)| matches!(m, Mark::Interrupted { .. })).count() as f64;
    let nothing_new =
        h.metric("rafter_interruption_duplicates_total") + h.metric("rafter_interruption_unmanaged_total");
    assert!(
        (6.0..=6.0 + extra).contains(&(written + nothing_new)),
        "{written} written, {nothing_new} duplicates or unmanaged"
    );
    assert!(nothing_new >= 2.0, "at least A's two repeated warnings are duplicates");
    assert_eq!(h.metric("rafter_interruption_malformed_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_poison_messages_never_block_the_queue_and_valid_ones_are_acted_on() {
    let h = harness("m5.large", 4).await;
    h.scale_and_wait(4).await;
    let claim = the_claim(&h.world).await;
    let name = claim.metadata.name.clone().expect("name");
    let now = Timestamp::now();
    let valid_spot = spot("valid-spot", &instance_id(&claim), now);
    let mut bodies: Vec<String> = (0..1000)
        .map(|i| match i % 5 {
            0 => format!("not json {i}"),
            1 => "{}".to_string(),
            2 => valid_spot.replace("\"instance-id\"", "\"instance\"").replace("valid-spot", &format!("bad-{i}")),
            3 => valid_spot.replace("\"time\":\"", "\"time\":\"x").replace("valid-spot", &format!("bad-time-{i}")),
            _ => format!("{{\"version\":\"0\",\"id\":{i},\"detail-type\":[]}}"),
        })
        .collect();
    // Valid messages among them: one for the node, and events for instances Rafter does not manage.
    bodies.insert(500, valid_spot.clone());
    for i in 0..9 {
        bodies.insert(100 * i + 50, spot(&format!("foreign-{i}"), &format!("i-0f00000000000000{i}"), now));
    }
    let started = Instant::now();
    h.send(&bodies).await;
    let took = h.drained(Duration::from_secs(120)).await;
    // SQS delivers at least once (moto, too, now and then hands one message to two receivers), so
    // deliveries beyond the 1,010 sent may only add to the counts of what they repeat.
    let received = h.metric("rafter_interruption_received_total");
    assert_eq!(h.metric("rafter_interruption_deleted_total"), received, "every delivery was deleted");
    let extra = received - 1010.0;
    assert!(extra >= 0.0, "{received} deliveries");
    let malformed = h.metric("rafter_interruption_malformed_total");
    assert!((1000.0..=1000.0 + extra).contains(&malformed), "{malformed} malformed of {received}");
    let unmanaged = h.metric("rafter_interruption_unmanaged_total");
    assert!((9.0..=9.0 + extra).contains(&unmanaged), "{unmanaged} unmanaged of {received}");
    assert!(h.metric("rafter_interruption_duplicates_total") <= extra);
    // The valid warning was recorded on the claim before its message was deleted, and acted on.
    h.world
        .wait_for("the node replaced", Duration::from_secs(60), || async {
            let claims = h.world.claims().await?;
            Ok(claims.iter().all(|c| c.metadata.name.as_deref() != Some(name.as_str()))
                && h.world.running().await? == 4)
        })
        .await
        .expect("replaced");
    let recorded = h.replica.ctx.timeline.first(|m| matches!(m, Mark::Interrupted { claim, .. } if *claim == name));
    assert!(recorded.is_some(), "the valid warning was recorded");
    println!(
        "1,010 messages (1,000 malformed) sent in {:?}, queue drained {:?} after sending",
        took,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_warning_drains_at_once_with_grace_cut_to_the_deadline_and_still_terminates_in_time() {
    // Pods that ask for 30 s to shut down and would take 25 s, and a warning delivered 100 s late:
    // 20 s are left, too few to wait for the replacement or to let any pod stop by itself. Only
    // cutting their grace periods gets them off the node before the instance is reclaimed.
    let inflate = slow_inflate(30, 25);
    let h = harness_with("m5.xlarge", 2, &inflate).await;
    h.scale_and_wait(10).await;
    let old = the_claim(&h.world).await;
    let old_name = old.metadata.name.clone().expect("name");
    let warned = Timestamp::now() - jiff::SignedDuration::from_secs(100);
    let deadline = warned + jiff::SignedDuration::from_secs(120);
    h.send(&[spot("late-spot", &instance_id(&old), warned)]).await;
    h.world
        .wait_for("the interrupted claim terminated", Duration::from_secs(30), || async {
            let claims = h.world.claims().await?;
            Ok(claims.iter().all(|c| c.metadata.name.as_deref() != Some(old_name.as_str())))
        })
        .await
        .expect("terminated");
    let finished = Timestamp::now();
    assert!(finished < deadline, "terminated at {finished}, deadline {deadline}");
    // The pods really were shutting down: they went when their cut grace (about 10 s) ended.
    let sent = warned + jiff::SignedDuration::from_secs(100);
    let took = finished.duration_since(sent);
    assert!(took >= jiff::SignedDuration::from_secs(5), "drained in {took:?}");
    let forced = h
        .replica
        .ctx
        .timeline
        .first(|m| matches!(m, Mark::DrainStarted { claim, replacement_ready: false } if *claim == old_name));
    assert!(forced.is_some(), "the deadline started the drain without waiting for the replacement");
    assert_eq!(h.metric("rafter_interruption_drains_total{replacement_ready=\"false\"}"), 1.0);
    assert!(
        h.metric("rafter_interruption_budget_overrides_total") >= 1.0,
        "pods were deleted with the grace that was left"
    );
    assert_eq!(h.metric("rafter_interruption_deadline_misses_total"), 0.0);
    h.world
        .wait_for("all pods running again", Duration::from_secs(60), || async { Ok(h.world.running().await? == 10) })
        .await
        .expect("rescheduled");
}

/// Puts one event on moto's default EventBridge bus, as EC2 or AWS Health would.
async fn put_event(moto: &rafter_sim::moto::Moto, event: &serde_json::Value) {
    let entry = serde_json::json!({
        "Source": event["source"],
        "DetailType": event["detail-type"],
        "Detail": event["detail"].to_string(),
        "Resources": event.get("resources").cloned().unwrap_or_else(|| serde_json::json!([])),
    });
    let put = moto.aws("events", "put_events", serde_json::json!({"Entries": [entry]})).await.expect("put_events");
    assert_eq!(put["FailedEntryCount"], 0, "EventBridge accepted {}: {put}", event["detail-type"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloudformation_template_routes_every_kind_rafter_acts_on_and_nothing_else_to_its_queue() {
    use rafter::interruption::Message;
    use rafter::interruption::queue::MessageQueue;

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let template = std::fs::read_to_string(root.join("deploy/cloudformation/interruption-queue.yaml"))
        .expect("deploy/cloudformation/interruption-queue.yaml");
    let moto = rafter_sim::moto::Moto::start().expect("moto");
    moto.aws(
        "cloudformation",
        "create_stack",
        serde_json::json!({
            "StackName": "rafter-interruption-test",
            "TemplateBody": template,
            "Parameters": [{"ParameterKey": "ClusterName", "ParameterValue": "test-cluster"}],
            "Capabilities": ["CAPABILITY_NAMED_IAM"],
        }),
    )
    .await
    .expect("create_stack");
    let stacks = moto
        .aws("cloudformation", "describe_stacks", serde_json::json!({"StackName": "rafter-interruption-test"}))
        .await
        .expect("describe_stacks");
    let stack = &stacks["Stacks"][0];
    assert_eq!(stack["StackStatus"], "CREATE_COMPLETE", "{stack}");
    let output = |key: &str| {
        stack["Outputs"]
            .as_array()
            .and_then(|outputs| outputs.iter().find(|o| o["OutputKey"] == key))
            .and_then(|o| o["OutputValue"].as_str())
            .unwrap_or_else(|| panic!("output {key} in {stack}"))
            .to_string()
    };
    let queue_name = output("QueueName");
    assert_eq!(queue_name, "test-cluster", "the queue is named after the cluster");

    // Every example event, as EC2 and AWS Health put them on the default bus, and events that
    // Rafter would only delete: instances starting, Health issues, other services, other EC2 events.
    let mut expected = BTreeSet::new();
    let mut examples = Vec::new();
    for entry in std::fs::read_dir(root.join("deploy/examples/events")).expect("examples") {
        let path = entry.expect("entry").path();
        let event: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("example")).expect("example JSON");
        expected.insert(event["detail-type"].as_str().expect("detail-type").to_string());
        examples.push(event);
    }
    assert_eq!(expected.len(), 5, "one example per kind: {expected:?}");
    let state_change = examples.iter().find(|e| e["detail-type"] == "EC2 Instance State-change Notification");
    let health = examples.iter().find(|e| e["source"] == "aws.health");
    let (Some(state_change), Some(health)) = (state_change.cloned(), health.cloned()) else {
        panic!("the examples have a state change and a Health event");
    };
    let mut ignored = Vec::new();
    for state in ["pending", "running"] {
        let mut event = state_change.clone();
        event["detail"]["state"] = state.into();
        ignored.push(event);
    }
    let mut issue = health.clone();
    issue["detail"]["eventTypeCategory"] = "issue".into();
    ignored.push(issue);
    let mut rds = health;
    rds["detail"]["service"] = "RDS".into();
    ignored.push(rds);
    let mut ami = state_change;
    ami["detail-type"] = "EC2 AMI State Change".into();
    ignored.push(ami);
    for event in ignored.iter().chain(&examples) {
        put_event(&moto, event).await;
    }

    moto.clear().await.expect("clear calls");
    let admin = (rafter_sim::moto::TEST_CREDENTIALS.0.to_string(), rafter_sim::moto::TEST_CREDENTIALS.1.to_string());
    let queue = common::connect_queue(&moto, &queue_name, admin).await;
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Two empty polls after the last message show nothing more is coming.
    let mut empty = 0;
    while Instant::now() < deadline && empty < 2 {
        let batch = queue.receive().await.expect("receive");
        if batch.is_empty() {
            empty += 1;
            continue;
        }
        let failed = queue.delete(&batch).await.expect("delete");
        assert!(failed.is_empty(), "deletes failed: {failed:?}");
        received.extend(batch);
    }
    // What the consumer did to the queue, as IAM actions (DeleteMessageBatch is authorised as
    // sqs:DeleteMessage).
    let made: BTreeSet<String> = moto
        .calls()
        .await
        .expect("calls")
        .into_keys()
        .map(|action| format!("sqs:{}", if action == "DeleteMessageBatch" { "DeleteMessage" } else { &action }))
        .collect();
    let mut kinds = BTreeSet::new();
    for message in &received {
        let parsed = Message::parse(&message.body).unwrap_or_else(|e| panic!("{e}: {}", message.body));
        let (kind, instances) = match &parsed {
            Message::SpotInterruption(e) => (&e.detail_type, vec![e.detail.instance_id.clone()]),
            Message::CapacityReservationInterruption(e) => (&e.detail_type, vec![e.detail.instance_id.clone()]),
            Message::RebalanceRecommendation(e) => (&e.detail_type, vec![e.detail.instance_id.clone()]),
            Message::StateChange(e) => (&e.detail_type, vec![e.detail.instance_id.clone()]),
            Message::Health(e) => {
                (&e.detail_type, e.detail.affected_entities.iter().map(|a| a.entity_value.clone()).collect())
            }
            Message::Unknown { detail_type, .. } => panic!("the rules let through {detail_type}"),
        };
        assert!(instances.iter().all(|i| i.starts_with("i-")), "{kind} names its instances: {instances:?}");
        assert!(kinds.insert(kind.clone()), "{kind} arrived once");
    }
    assert_eq!(kinds, expected, "every kind Rafter acts on arrives, and nothing else");

    // A warning outlives a failover but not an outage; messages are encrypted at rest.
    let url = output("QueueUrl");
    let attributes = moto
        .aws("sqs", "get_queue_attributes", serde_json::json!({"QueueUrl": url, "AttributeNames": ["All"]}))
        .await
        .expect("get_queue_attributes");
    assert_eq!(attributes["Attributes"]["MessageRetentionPeriod"], "300");
    assert_eq!(attributes["Attributes"]["SqsManagedSseEnabled"], "true");

    // The consumer policy allows every SQS action the consumer made, and nothing else.
    let policy_arn = output("ConsumerPolicy");
    let policy = moto.aws("iam", "get_policy", serde_json::json!({"PolicyArn": policy_arn})).await.expect("get_policy");
    let version = moto
        .aws(
            "iam",
            "get_policy_version",
            serde_json::json!({"PolicyArn": policy_arn, "VersionId": policy["Policy"]["DefaultVersionId"]}),
        )
        .await
        .expect("get_policy_version");
    let document = &version["PolicyVersion"]["Document"];
    let document: serde_json::Value = match document.as_str() {
        Some(text) => serde_json::from_str(text).expect("policy JSON"),
        None => document.clone(),
    };
    let allowed: BTreeSet<String> = document["Statement"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    assert_eq!(
        made,
        BTreeSet::from(["sqs:GetQueueUrl", "sqs:ReceiveMessage", "sqs:DeleteMessage"].map(String::from)),
        "the consumer's calls"
    );
    assert_eq!(allowed, made, "the policy allows exactly what the consumer does");
}
