//! Leadership, fencing and recovery, end to end on the simulator and the fake cloud: a leader
//! killed mid scale-up, a graceful hand-over, a partitioned leader, an actor that panics, API
//! error bursts, and direct binding with a launch that fails.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rafter::api::NodePool;
use rafter::api::nodeclaim::NodeClaim;
use rafter::cloud::fake::FakeConfig;
use rafter::cloud::{CloudError, CloudProvider, DriftReason, Instance};
use rafter::scheduling::instance_types::InstanceType;
use rafter_actors::context::BindingMode;
use rafter_actors::controller::{Replica, ReplicaArgs};
use rafter_actors::timeline::Mark;
use rafter_actors::world::{INFLATE, NODEPOOL_DEFAULT, World, WorldConfig};
use rafter_sim::FaultSpec;

async fn world(boot_delay: Duration) -> World {
    world_with(boot_delay, WorldConfig::default()).await
}

async fn world_with(boot_delay: Duration, config: WorldConfig) -> World {
    let fake = FakeConfig { cluster: "rafter-sim".into(), boot_delay, ..FakeConfig::default() };
    let world = World::start(WorldConfig { fake, ..config }).await.expect("world");
    world.apply(NODEPOOL_DEFAULT).await.expect("pool");
    world.apply(INFLATE).await.expect("inflate");
    world
}

fn leader(replicas: &[Option<Replica>]) -> Option<usize> {
    replicas.iter().position(|r| r.as_ref().is_some_and(Replica::is_leader))
}

/// Every instance belongs to exactly one live claim and every claim has at most one instance.
async fn assert_one_instance_per_claim(world: &World) {
    let claims = world.claims().await.expect("claims");
    let names: HashSet<String> = claims.iter().filter_map(|c| c.metadata.name.clone()).collect();
    let mut per_claim: HashMap<String, usize> = HashMap::new();
    for instance in world.cloud.running() {
        let claim = instance.node_claim().expect("tagged").to_string();
        assert!(names.contains(&claim), "instance {} has no NodeClaim ({claim})", instance.id);
        *per_claim.entry(claim).or_default() += 1;
    }
    assert!(per_claim.values().all(|n| *n == 1), "an instance was launched twice: {per_claim:?}");
}

async fn all_running(world: &World, pods: usize, limit: Duration) {
    world
        .wait_for(&format!("{pods} pods running"), limit, || async { Ok(world.running().await? == pods) })
        .await
        .expect("all pods run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_after_the_leader_is_killed_mid_scale_up_without_launching_twice() {
    let world = world(Duration::from_secs(1)).await;
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(Some(world.replica(world.quick_config(&format!("rafter-{i}"))).await.expect("replica")));
    }
    world
        .wait_for("a leader", Duration::from_secs(10), || async { Ok(leader(&replicas).is_some()) })
        .await
        .expect("leader");
    let first = leader(&replicas).expect("leader");
    world.scale(150).await.expect("scaled");
    // Kill the leader while it launches: claims exist, some instances may not.
    let timeline = replicas[first].as_ref().expect("leader").ctx.timeline.clone();
    world
        .wait_for("the first launch", Duration::from_secs(20), || {
            let t = timeline.clone();
            async move { Ok(t.first(|m| matches!(m, Mark::CreateCalled { .. })).is_some()) }
        })
        .await
        .expect("launch began");
    replicas[first].take().expect("leader").kill();
    let lease = world.quick_config("x").lease_duration;
    let took = world
        .wait_for("a new leader", lease * 3, || async { Ok(leader(&replicas).is_some()) })
        .await
        .expect("a standby leads");
    assert!(took <= lease + Duration::from_secs(1), "took over in {took:?}, lease {lease:?}");
    all_running(&world, 150, Duration::from_secs(60)).await;
    assert_one_instance_per_claim(&world).await;
    let claims = world.claims().await.expect("claims");
    assert_eq!(claims.len(), world.cloud.running().len(), "no claim without an instance once settled");

    // Graceful shutdown of the new leader hands over at once.
    let second = leader(&replicas).expect("leader");
    let started = tokio::time::Instant::now();
    replicas[second].take().expect("leader").shutdown().await;
    world
        .wait_for("a third leader", Duration::from_secs(5), || async { Ok(leader(&replicas).is_some()) })
        .await
        .expect("hand-over");
    let handover = started.elapsed();
    assert!(handover < Duration::from_secs(1), "graceful hand-over took {handover:?}");
    for r in replicas.into_iter().flatten() {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_stops_within_the_renew_deadline_and_the_other_takes_over() {
    let world = world(Duration::ZERO).await;
    let a = world.replica(world.quick_config("rafter-a")).await.expect("a");
    world.wait_for("a leads", Duration::from_secs(10), || async { Ok(a.is_leader()) }).await.expect("a leads");
    let b = world.replica(world.quick_config("rafter-b")).await.expect("b");
    world.wait_for("b synced", Duration::from_secs(10), || async { Ok(b.is_ready()) }).await.expect("b ready");
    let sim = world.sim.as_ref().expect("embedded");
    sim.faults().set(FaultSpec {
        partitions: vec![rafter_sim::apiserver::faults::Partition {
            client: "rafter-a".into(),
            mode: rafter_sim::apiserver::faults::PartitionMode::Hang,
        }],
        ..FaultSpec::default()
    });
    let config = world.quick_config("x");
    let stopped = world
        .wait_for("a steps down", config.renew_deadline * 2, || async { Ok(!a.is_leader()) })
        .await
        .expect("a stops leading");
    assert!(stopped <= config.renew_deadline + Duration::from_millis(500), "stepped down after {stopped:?}");
    let running = a.running().await;
    assert!(!running.iter().any(|c| format!("{c:?}") == "Launcher"), "the leader group is stopped: {running:?}");
    world.wait_for("b leads", config.lease_duration * 3, || async { Ok(b.is_leader()) }).await.expect("b leads");
    world.scale(40).await.expect("scaled");
    all_running(&world, 40, Duration::from_secs(60)).await;
    assert!(
        a.ctx.timeline.first(|m| matches!(m, Mark::CreateCalled { .. })).is_none(),
        "the fenced replica launched nothing"
    );
    assert_one_instance_per_claim(&world).await;
    sim.faults().clear();
    a.shutdown().await;
    b.shutdown().await;
}

/// The fake cloud, except that the first launch panics (as a bug in a provider would).
#[derive(Debug)]
struct PanicOnce {
    inner: Arc<rafter::cloud::fake::FakeCloud>,
    fired: AtomicBool,
}

#[async_trait]
impl CloudProvider for PanicOnce {
    async fn create(&self, claim: &NodeClaim) -> Result<Instance, CloudError> {
        if !self.fired.swap(true, Ordering::SeqCst) {
            panic!("injected panic in the cloud provider");
        }
        self.inner.create(claim).await
    }
    async fn delete(&self, claim: &NodeClaim) -> Result<(), CloudError> {
        self.inner.delete(claim).await
    }
    async fn get(&self, provider_id: &str) -> Result<Instance, CloudError> {
        self.inner.get(provider_id).await
    }
    async fn list(&self) -> Result<Vec<Instance>, CloudError> {
        self.inner.list().await
    }
    async fn instance_types(&self, pool: &NodePool) -> Result<Vec<InstanceType>, CloudError> {
        self.inner.instance_types(pool).await
    }
    async fn is_drifted(&self, claim: &NodeClaim) -> Result<Option<DriftReason>, CloudError> {
        self.inner.is_drifted(claim).await
    }
    fn mark_unavailable(&self, offerings: &[rafter::cloud::OfferingKey], ttl: Duration) {
        self.inner.mark_unavailable(offerings, ttl)
    }
    fn mask_unavailable(&self, types: &mut [rafter::scheduling::instance_types::InstanceType]) {
        self.inner.mask_unavailable(types)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_that_panics_is_restarted_and_provisioning_completes_through_api_error_bursts() {
    let world = world(Duration::ZERO).await;
    let cloud = Arc::new(PanicOnce { inner: world.cloud.clone(), fired: AtomicBool::new(false) });
    let replica = Replica::start(ReplicaArgs {
        client: world.client_as("rafter-p").expect("client"),
        lease_client: world.client_as("rafter-p-lease").expect("client"),
        cloud,
        config: world.quick_config("rafter-p"),
        clock: None,
        metrics_addr: None,
        queue: None,
    })
    .await
    .expect("replica");
    world.wait_for("leads", Duration::from_secs(10), || async { Ok(replica.is_leader()) }).await.expect("leads");
    // 5xx bursts on every write while scaling up.
    world.sim.as_ref().expect("sim").faults().set(FaultSpec {
        seed: 7,
        errors: vec![
            rafter_sim::apiserver::faults::ErrorRule {
                verb: Some("create".into()),
                resource: None,
                code: 503,
                rate: 0.2,
            },
            rafter_sim::apiserver::faults::ErrorRule {
                verb: Some("patch".into()),
                resource: None,
                code: 500,
                rate: 0.2,
            },
        ],
        ..FaultSpec::default()
    });
    world.scale(60).await.ok();
    tokio::time::sleep(Duration::from_secs(3)).await;
    world.sim.as_ref().expect("sim").faults().clear();
    world.scale(60).await.expect("scaled");
    all_running(&world, 60, Duration::from_secs(60)).await;
    let metrics = replica.ctx.metrics.encode();
    let restarts: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rafter_actor_restarts_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(restarts >= 1, "the panicking launcher was restarted: {metrics}");
    assert_one_instance_per_claim(&world).await;
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_binding_runs_pods_bound_at_launch_and_a_failed_launch_leaves_no_pod_on_a_missing_node() {
    // Direct binding (`--binding direct`, for clusters without a scheduler such as the demo's) needs
    // pods/binding, which the chart does not grant: it deploys Rafter beside kube-scheduler.
    let world = world_with(Duration::from_secs(2), WorldConfig { rbac: None, ..WorldConfig::default() }).await;
    let config =
        rafter_actors::context::ControllerConfig { binding: BindingMode::Direct, ..world.quick_config("rafter-d") };
    let replica = world.replica(config).await.expect("replica");
    world.wait_for("leads", Duration::from_secs(10), || async { Ok(replica.is_leader()) }).await.expect("leads");
    world.scale(30).await.expect("scaled");
    // Pods are bound as soon as the instance is launched, before the kubelet runs (2 s boot).
    world
        .wait_for("pods bound before boot", Duration::from_secs(10), || async {
            Ok(world.pods().await?.iter().filter(|p| rafter::state::node_name(p).is_some()).count() == 30)
        })
        .await
        .expect("bound at launch");
    assert!(world.running().await.expect("pods") < 30, "bound before their node runs");
    // The first instance dies before it boots.
    let victim = world.cloud.running().first().cloned().expect("an instance");
    world.cloud.terminate_instance(&victim.id).expect("terminated");
    all_running(&world, 30, Duration::from_secs(60)).await;
    let nodes: HashSet<String> =
        world.nodes().await.expect("nodes").iter().filter_map(|n| n.metadata.name.clone()).collect();
    for pod in world.pods().await.expect("pods") {
        let node = rafter::state::node_name(&pod).expect("bound").to_string();
        assert!(nodes.contains(&node), "pod {:?} is on missing node {node}", pod.metadata.name);
    }
    assert!(!nodes.contains(&victim.private_dns_name), "the failed instance's node is gone");
    assert_one_instance_per_claim(&world).await;
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_lease_namespace_is_missing_is_not_ready_and_says_why() {
    // As the administrator: under the chart's RBAC, kube-apiserver refuses a Lease outside the
    // release namespace (403) before it looks for the namespace, and the replica says that instead.
    let world = world_with(Duration::ZERO, WorldConfig { rbac: None, ..WorldConfig::default() }).await;
    let config = world.quick_config("rafter-0");
    let lease_duration = config.lease_duration;
    let lost = world
        .replica(rafter_actors::context::ControllerConfig { lease_namespace: "no-such-namespace".into(), ..config })
        .await
        .expect("replica");
    let fine = world.replica(world.quick_config("rafter-1")).await.expect("replica");
    world.wait_for("rafter-1 leads", Duration::from_secs(10), || async { Ok(fine.is_leader()) }).await.expect("leads");
    // Past one lease duration without a lease answer, the probe goes red, naming the namespace.
    tokio::time::sleep(lease_duration + Duration::from_secs(1)).await;
    let why = lost.readiness().expect_err("not ready");
    assert!(why.contains("no-such-namespace") && why.contains("must exist"), "{why}");
    assert!(!lost.is_leader());
    assert!(fine.is_ready(), "{:?}", fine.readiness());
    lost.shutdown().await;
    fine.shutdown().await;
}
