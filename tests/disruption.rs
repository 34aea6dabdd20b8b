//! Disruption end to end on the simulator and the fake cloud: consolidation of a shrunk fleet,
//! budgets (a count, and a zero budget whose schedule covers now), `do-not-disrupt` on pods and
//! nodes, a claim's `terminationGracePeriod`, a replacement that never initializes, and the
//! stability of a converged fleet. Rafter's clock is moved forward where `consolidateAfter` or a
//! timeout would otherwise be waited out; what happened is read from watch streams.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use rafter::api::nodeclaim::NodeClaim;
use rafter::cloud::fake::FakeConfig;
use rafter_actors::clock::Clock;
use rafter_actors::controller::Replica;
use rafter_actors::world::{INFLATE, NODEPOOL_DEFAULT, World, WorldConfig};
use rafter_sim::nodes::NodeSimConfig;
use serde_json::json;

/// The EC2NodeClass of the default example, without its NodePool.
fn node_class() -> &'static str {
    NODEPOOL_DEFAULT.split("\n---\n").nth(1).expect("the example holds a node class")
}

/// A NodePool `default` of on-demand m5 machines of these sizes, with these budgets (and these
/// further lines of its template's spec).
fn pool(sizes: &[&str], budgets: &str, extra_spec: &str) -> String {
    let sizes = sizes.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    format!(
        r#"apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: default
spec:
  template:
    spec:
      requirements:
        - key: karpenter.k8s.aws/instance-family
          operator: In
          values: ["m5"]
        - key: karpenter.k8s.aws/instance-size
          operator: In
          values: [{sizes}]
        - key: karpenter.sh/capacity-type
          operator: In
          values: ["on-demand"]
      nodeClassRef:
        group: karpenter.k8s.aws
        kind: EC2NodeClass
        name: default
{extra_spec}  disruption:
    consolidationPolicy: WhenEmptyOrUnderutilized
    consolidateAfter: 1m
    budgets:
{budgets}"#
    )
}

async fn start(config: WorldConfig, manifests: &[&str]) -> (World, Replica) {
    // `RUST_LOG=info` shows Rafter's log lines with a failing test's output.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_ansi(false)
            .with_test_writer()
            .try_init();
    }
    let world = World::start(config).await.expect("world");
    for m in manifests {
        world.apply(m).await.expect("applied");
    }
    let replica = world.replica(world.quick_config("rafter-0")).await.expect("replica");
    world.wait_for("leadership", Duration::from_secs(10), || async { Ok(replica.is_leader()) }).await.expect("leads");
    (world, replica)
}

async fn scale_and_run(world: &World, pods: u32) {
    world.scale(pods).await.expect("scaled");
    world
        .wait_for(&format!("{pods} pods running"), Duration::from_secs(90), || async {
            let all = world.pods().await?;
            let live = all.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).count();
            Ok(live == pods as usize && world.running().await? == pods as usize)
        })
        .await
        .expect("running");
}

fn fleet_price(world: &World) -> f64 {
    world.cloud.running().iter().map(|i| i.price).sum()
}

/// What the watch streams saw of disruption: the most nodes being disrupted at once (a claim
/// being deleted, or its node tainted `karpenter.sh/disrupted`, counted once per instance), and
/// every instance ever disrupted.
#[derive(Debug, Default)]
struct Disruptions {
    most_at_once: usize,
    ever: BTreeSet<String>,
}

enum Seen {
    Node(Box<watcher::Event<Node>>),
    Claim(Box<watcher::Event<NodeClaim>>),
}

fn watch_disruptions(client: kube::Client) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Disruptions>>) {
    let out = Arc::new(Mutex::new(Disruptions::default()));
    let seen = out.clone();
    let task = tokio::spawn(async move {
        let nodes = watcher::watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            .map(|e| e.map(|e| Seen::Node(Box::new(e))));
        let claims = watcher::watcher(Api::<NodeClaim>::all(client), watcher::Config::default())
            .map(|e| e.map(|e| Seen::Claim(Box::new(e))));
        let mut stream = futures::stream::select(nodes.boxed(), claims.boxed());
        let (mut tainted, mut deleting) = (HashSet::<String>::new(), HashSet::<String>::new());
        while let Some(event) = stream.next().await {
            let Ok(event) = event else { continue };
            match event {
                Seen::Node(e) => match *e {
                    watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                        let provider = n.spec.as_ref().and_then(|s| s.provider_id.clone()).unwrap_or_default();
                        let disrupted = n
                            .spec
                            .as_ref()
                            .and_then(|s| s.taints.as_ref())
                            .is_some_and(|t| t.iter().any(|t| t.key == "karpenter.sh/disrupted"));
                        if disrupted {
                            tainted.insert(provider);
                        } else {
                            tainted.remove(&provider);
                        }
                    }
                    watcher::Event::Delete(n) => {
                        tainted.remove(&n.spec.as_ref().and_then(|s| s.provider_id.clone()).unwrap_or_default());
                    }
                    _ => {}
                },
                Seen::Claim(e) => match *e {
                    watcher::Event::Apply(c) | watcher::Event::InitApply(c) => {
                        if let Some(provider) = c.status.as_ref().and_then(|s| s.provider_id.clone())
                            && c.metadata.deletion_timestamp.is_some()
                        {
                            deleting.insert(provider);
                        }
                    }
                    watcher::Event::Delete(c) => {
                        deleting.remove(&c.status.as_ref().and_then(|s| s.provider_id.clone()).unwrap_or_default());
                    }
                    _ => {}
                },
            }
            let now: HashSet<&String> = tainted.iter().chain(deleting.iter()).collect();
            let mut d = seen.lock().expect("lock");
            d.most_at_once = d.most_at_once.max(now.len());
            d.ever.extend(now.into_iter().cloned());
        }
    });
    (task, out)
}

/// What a watch on inflate's pods saw: the fewest Ready, non-terminating pods once armed, and the
/// longest any pod waited unbound.
#[derive(Debug)]
struct PodWatch {
    fewest_ready: usize,
    longest_unbound: Duration,
}

fn watch_pods(client: kube::Client) -> (tokio::task::JoinHandle<()>, Arc<Mutex<PodWatch>>) {
    let out = Arc::new(Mutex::new(PodWatch { fewest_ready: usize::MAX, longest_unbound: Duration::ZERO }));
    let seen = out.clone();
    let task = tokio::spawn(async move {
        let api = Api::<Pod>::namespaced(client, "default");
        let mut stream = watcher::watcher(api, watcher::Config::default().labels("app=inflate")).boxed();
        let mut ready: HashMap<String, bool> = HashMap::new();
        let mut unbound_since: HashMap<String, tokio::time::Instant> = HashMap::new();
        let mut initialised = false;
        while let Some(event) = stream.next().await {
            let Ok(event) = event else { continue };
            match event {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    let name = p.name_any();
                    let live = p.metadata.deletion_timestamp.is_none();
                    ready.insert(name.clone(), live && rafter_sim::components::ready(&p));
                    let bound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                    if bound || !live {
                        if let Some(since) = unbound_since.remove(&name) {
                            let mut s = seen.lock().expect("lock");
                            s.longest_unbound = s.longest_unbound.max(since.elapsed());
                        }
                    } else {
                        unbound_since.entry(name).or_insert_with(tokio::time::Instant::now);
                    }
                }
                watcher::Event::Delete(p) => {
                    ready.remove(&p.name_any());
                    unbound_since.remove(&p.name_any());
                }
                watcher::Event::InitDone => initialised = true,
                watcher::Event::Init => {}
            }
            if initialised {
                let count = ready.values().filter(|r| **r).count();
                let mut s = seen.lock().expect("lock");
                s.fewest_ready = s.fewest_ready.min(count);
            }
        }
    });
    (task, out)
}

/// Moves Rafter's clock past `consolidateAfter` every second until `done`, at most `limit`.
async fn advance_until<F, Fut>(world: &World, what: &str, limit: Duration, mut done: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = tokio::time::Instant::now();
    loop {
        if done().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        world.clock.advance(Duration::from_secs(61));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn deleting_claims(world: &World) -> usize {
    world.claims().await.map(|c| c.iter().filter(|c| c.metadata.deletion_timestamp.is_some()).count()).unwrap_or(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflate_scaled_from_100_to_30_consolidates_to_a_fresh_solves_cost_with_no_pdb_broken_and_then_stays_put() {
    let fake = FakeConfig { cluster: "rafter-sim".into(), boot_delay: Duration::from_secs(1), ..FakeConfig::default() };
    // The example pool on on-demand capacity: spot nodes are replaced by spot one for one only
    // with 15 cheaper types to choose from (Karpenter's rule, kept), which a fleet already on the
    // cheapest spot types does not have. The spot rule is the engine's unit tests' to prove.
    let example = NODEPOOL_DEFAULT.replace("values: [\"spot\", \"on-demand\"]", "values: [\"on-demand\"]");
    assert_ne!(example, NODEPOOL_DEFAULT);
    let (world, replica) = start(WorldConfig { fake, ..WorldConfig::default() }, &[&example, INFLATE]).await;
    scale_and_run(&world, 100).await;
    let (nodes_before, price_before) = (world.cloud.running().len(), fleet_price(&world));
    scale_and_run(&world, 30).await;
    world.apply(rafter_e2e::BUDGET).await.expect("pdb");
    let (pod_task, pods_seen) = watch_pods(world.client.clone());
    let (disruption_task, disruptions) = watch_disruptions(world.client.clone());

    let plan = rafter_e2e::fresh_plan(&world, world.pods().await.expect("pods")).await;
    let fresh = plan.price();
    let fresh_types: Vec<String> =
        plan.claims.iter().map(|c| format!("{} ${:.4}", c.instance_types[0].name, c.price)).collect();
    let started = tokio::time::Instant::now();
    loop {
        let converged = fleet_price(&world) <= fresh * 1.05 + 1e-9
            && deleting_claims(&world).await == 0
            && world.running().await.unwrap_or(0) == 30;
        if converged {
            break;
        }
        let types: Vec<String> =
            world.cloud.running().iter().map(|i| format!("{} ${:.4}", i.instance_type, i.price)).collect();
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "the fleet ({types:?}, ${:.4}/h) never came within 5% of a fresh solve of 30 pods ({fresh_types:?}, ${fresh:.4}/h)",
            fleet_price(&world)
        );
        world.clock.advance(Duration::from_secs(61));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let took = started.elapsed();
    let (nodes_after, price_after) = (world.cloud.running().len(), fleet_price(&world));
    eprintln!(
        "consolidation: {nodes_before} nodes ${price_before:.4}/h → {nodes_after} nodes ${price_after:.4}/h in {took:?} (fresh solve ${fresh:.4}/h)"
    );
    assert!(!disruptions.lock().expect("lock").ever.is_empty(), "something was consolidated");

    // Converged: a long quiet period brings no further command.
    let (creates, claims): (u64, BTreeSet<String>) =
        (world.cloud.create_calls(), world.claims().await.expect("claims").iter().map(|c| c.name_any()).collect());
    for _ in 0..10 {
        world.clock.advance(Duration::from_secs(61));
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let after: BTreeSet<String> = world.claims().await.expect("claims").iter().map(|c| c.name_any()).collect();
    assert_eq!(world.cloud.create_calls(), creates, "nothing was bought after convergence");
    assert_eq!(after, claims, "nothing was disrupted after convergence");

    let (fewest_ready, longest_unbound) = {
        let seen = pods_seen.lock().expect("lock");
        (seen.fewest_ready, seen.longest_unbound)
    };
    assert!(fewest_ready >= 27, "the PodDisruptionBudget (minAvailable 27) held: {fewest_ready} ready at worst");
    assert!(
        longest_unbound <= Duration::from_secs(10),
        "no pod waited for a node longer than a replacement's boot (1 s) allows: {longest_unbound:?}"
    );
    let metrics = replica.ctx.metrics.encode();
    assert!(metrics.contains("rafter_disruption_decisions_total{reason=\"Underutilized\""), "{metrics}");
    pod_task.abort();
    disruption_task.abort();
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_of_one_node_never_has_two_nodes_disrupted_at_once() {
    let manifests = [node_class(), &pool(&["large"], "      - nodes: \"1\"\n", ""), INFLATE];
    let manifests: Vec<&str> = manifests.iter().map(|s| &**s).collect();
    let (world, replica) = start(WorldConfig::default(), &manifests).await;
    scale_and_run(&world, 100).await;
    let bought = world.cloud.running().len();
    assert!(bought >= 4, "m5.large nodes for 100 pods: {bought}");
    let (task, disruptions) = watch_disruptions(world.client.clone());
    scale_and_run(&world, 20).await;
    advance_until(&world, "consolidation of 20 pods", Duration::from_secs(120), || async {
        world.cloud.running().len() <= 2 && deleting_claims(&world).await == 0
    })
    .await;
    world.scale(0).await.expect("scaled to 0");
    advance_until(&world, "every empty node gone", Duration::from_secs(120), || async {
        world.cloud.running().is_empty() && world.claims().await.map(|c| c.is_empty()).unwrap_or(false)
    })
    .await;
    let (most_at_once, ever) = {
        let d = disruptions.lock().expect("lock");
        (d.most_at_once, d.ever.len())
    };
    assert_eq!(most_at_once, 1, "at most one node is disrupted at a time");
    assert_eq!(ever, bought, "every node was disrupted, one at a time");
    task.abort();
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_budget_whose_schedule_covers_now_holds_every_disruption_until_its_window_ends() {
    let world = World::start(WorldConfig::default()).await.expect("world");
    // The window opened a minute ago on Rafter's clock and lasts 30 minutes.
    let opened = world.clock.now() - jiff::SignedDuration::from_mins(1);
    let utc = opened.to_zoned(jiff::tz::TimeZone::UTC);
    let budgets = format!(
        "      - nodes: \"0\"\n        schedule: \"{} {} * * *\"\n        duration: 30m\n",
        utc.minute(),
        utc.hour()
    );
    for m in [node_class(), &pool(&["large"], &budgets, ""), INFLATE] {
        world.apply(m).await.expect("applied");
    }
    let replica = world.replica(world.quick_config("rafter-0")).await.expect("replica");
    world.wait_for("leadership", Duration::from_secs(10), || async { Ok(replica.is_leader()) }).await.expect("leads");
    scale_and_run(&world, 40).await;
    let nodes: BTreeSet<String> = world.claims().await.expect("claims").iter().map(|c| c.name_any()).collect();
    assert!(nodes.len() >= 2);
    world.scale(0).await.expect("scaled to 0");
    world
        .wait_for("pods gone", Duration::from_secs(30), || async { Ok(world.pods().await?.is_empty()) })
        .await
        .expect("gone");
    // Past consolidateAfter (counted from when Rafter saw the pods go), inside the window: nothing
    // moves, and the nodes say why.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        world.clock.advance(Duration::from_secs(90));
    }
    let (task, disruptions) = watch_disruptions(world.client.clone());
    let events = Api::<k8s_openapi::api::events::v1::Event>::all(world.client.clone());
    world
        .wait_for("an Unconsolidatable event naming the budget", Duration::from_secs(15), || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list.items.iter().any(|e| {
                e.reason.as_deref() == Some("Unconsolidatable")
                    && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Node")
                    && e.note.as_deref().is_some_and(|n| n.contains("budget nodes: 0 active until"))
            }))
        })
        .await
        .unwrap_or_else(|e| {
            let notes: Vec<String> = futures::executor::block_on(events.list(&ListParams::default()))
                .map(|l| {
                    l.items
                        .iter()
                        .map(|e| {
                            format!(
                                "{:?} {:?}: {:?}",
                                e.reason,
                                e.regarding.as_ref().and_then(|r| r.name.clone()),
                                e.note
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            panic!("{e}: {notes:#?}")
        });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still: BTreeSet<String> = world.claims().await.expect("claims").iter().map(|c| c.name_any()).collect();
    assert_eq!(still, nodes, "no node goes while the budget is 0");
    assert!(disruptions.lock().expect("lock").ever.is_empty(), "none was even tainted");
    // The window closes: the empty nodes go.
    world.clock.advance(Duration::from_secs(30 * 60));
    advance_until(&world, "the empty nodes gone once the window closed", Duration::from_secs(60), || async {
        world.claims().await.map(|c| c.is_empty()).unwrap_or(false)
    })
    .await;
    task.abort();
    replica.shutdown().await;
}

const DB: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: db
  namespace: default
spec:
  replicas: 1
  selector:
    matchLabels:
      app: db
  template:
    metadata:
      labels:
        app: db
      annotations:
        karpenter.sh/do-not-disrupt: "true"
    spec:
      terminationGracePeriodSeconds: 0
      containers:
        - name: db
          image: public.ecr.aws/eks-distro/kubernetes/pause:3.2
          resources:
            requests:
              cpu: 1500m
              memory: 1Gi
"#;

async fn db_pod(world: &World) -> Option<Pod> {
    let pods = Api::<Pod>::namespaced(world.client.clone(), "default");
    let list = pods.list(&ListParams::default().labels("app=db")).await.ok()?;
    list.items.into_iter().find(|p| {
        p.metadata.deletion_timestamp.is_none() && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
    })
}

async fn has_event(world: &World, kind: &str, name: &str, text: &str) -> bool {
    let events = Api::<k8s_openapi::api::events::v1::Event>::all(world.client.clone());
    events.list(&ListParams::default()).await.is_ok_and(|l| {
        l.items.iter().any(|e| {
            e.reason.as_deref() == Some("Unconsolidatable")
                && e.regarding
                    .as_ref()
                    .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
                && e.note.as_deref().is_some_and(|n| n.contains(text))
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_not_disrupt_pods_and_nodes_keep_their_nodes_and_say_so() {
    let spec = pool(&["large"], "      - nodes: \"100%\"\n", "");
    let manifests = [node_class(), &spec, DB, INFLATE];
    let manifests: Vec<&str> = manifests.iter().map(|s| &**s).collect();
    let (world, replica) = start(WorldConfig::default(), &manifests).await;
    scale_and_run(&world, 40).await;
    world
        .wait_for("db running", Duration::from_secs(30), || async { Ok(db_pod(&world).await.is_some()) })
        .await
        .expect("db");
    let db = db_pod(&world).await.expect("db");
    let db_node = db.spec.as_ref().and_then(|s| s.node_name.clone()).expect("bound");
    // Another node is marked do-not-disrupt by its operator.
    let nodes = world.nodes().await.expect("nodes");
    let pinned = nodes.iter().map(|n| n.name_any()).find(|n| *n != db_node).expect("a second node");
    let annotate = json!({"metadata": {"annotations": {"karpenter.sh/do-not-disrupt": "true"}}});
    Api::<Node>::all(world.client.clone())
        .patch(&pinned, &PatchParams::default(), &Patch::Merge(annotate))
        .await
        .expect("annotated");
    world.scale(0).await.expect("scaled to 0");
    advance_until(&world, "every other node gone", Duration::from_secs(90), || async {
        let left: BTreeSet<String> =
            world.nodes().await.map(|n| n.iter().map(|n| n.name_any()).collect()).unwrap_or_default();
        left == BTreeSet::from([db_node.clone(), pinned.clone()])
    })
    .await;
    let db_name = db.name_any();
    assert_eq!(db_pod(&world).await.map(|p| p.name_any()), Some(db_name.clone()), "the db pod never moved");
    assert!(
        has_event(&world, "Node", &db_node, &format!("pod default/{db_name} has karpenter.sh/do-not-disrupt")).await
    );
    assert!(has_event(&world, "Node", &pinned, &format!("node {pinned} has karpenter.sh/do-not-disrupt")).await);
    let claims = world.claims().await.expect("claims");
    let db_claim = claims
        .iter()
        .find(|c| c.status.as_ref().and_then(|s| s.node_name.as_deref()) == Some(db_node.as_str()))
        .expect("db's claim");
    assert!(has_event(&world, "NodeClaim", &db_claim.name_any(), "has karpenter.sh/do-not-disrupt").await);
    let consolidatable =
        db_claim.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Consolidatable"));
    assert_eq!(
        consolidatable.map(|c| (c.status.as_str(), c.message.as_str())),
        Some(("False", format!("pod default/{db_name} has karpenter.sh/do-not-disrupt").as_str()))
    );
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_termination_grace_period_forces_a_drain_that_do_not_disrupt_holds() {
    let spec = pool(&["large"], "      - nodes: \"100%\"\n", "      terminationGracePeriod: 30s\n");
    let manifests = [node_class(), &spec, DB];
    let manifests: Vec<&str> = manifests.iter().map(|s| &**s).collect();
    let (world, replica) = start(WorldConfig::default(), &manifests).await;
    world
        .wait_for("db running", Duration::from_secs(30), || async { Ok(db_pod(&world).await.is_some()) })
        .await
        .expect("db");
    let db_name = db_pod(&world).await.expect("db").name_any();
    let claim = world.claims().await.expect("claims").into_iter().next().expect("db's claim");
    let claim_name = claim.name_any();
    // An operator deletes the claim: do-not-disrupt holds the drain until the claim's
    // terminationGracePeriod (30 s) runs out; then the pod is deleted and the node goes.
    Api::<NodeClaim>::all(world.client.clone()).delete(&claim_name, &DeleteParams::default()).await.expect("deleted");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(db_pod(&world).await.map(|p| p.name_any()), Some(db_name.clone()), "do-not-disrupt holds the drain");
    assert!(world.claims().await.expect("claims").iter().any(|c| c.name_any() == claim_name), "the claim waits");
    world.clock.advance(Duration::from_secs(31));
    world
        .wait_for("the grace period forced the drain", Duration::from_secs(30), || async {
            Ok(world.claims().await?.iter().all(|c| c.name_any() != claim_name))
        })
        .await
        .expect("forced");
    assert_ne!(db_pod(&world).await.map(|p| p.name_any()), Some(db_name), "the old db pod is gone");
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_that_never_initializes_abandons_its_command_and_the_node_keeps_its_pods() {
    let nodes = NodeSimConfig::default();
    let broken = nodes.never_ready.clone();
    let big = pool(&["2xlarge"], "      - nodes: \"100%\"\n", "");
    let manifests = [node_class(), big.as_str(), INFLATE];
    let (world, replica) = start(WorldConfig { nodes, ..WorldConfig::default() }, &manifests).await;
    scale_and_run(&world, 15).await;
    let claims = world.claims().await.expect("claims");
    assert_eq!(claims.len(), 1, "one m5.2xlarge");
    let old = claims[0].name_any();
    let old_node = claims[0].status.as_ref().and_then(|s| s.node_name.clone()).expect("node");
    let on_old = || async {
        let pods = world.pods().await.unwrap_or_default();
        pods.iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(old_node.as_str())
            })
            .map(|p| p.name_any())
            .collect::<BTreeSet<_>>()
    };
    // Smaller machines become allowed, but their image is broken: they never become Ready.
    broken.write().expect("lock").insert("m5.large".into());
    world.apply(&pool(&["2xlarge", "large"], "      - nodes: \"100%\"\n", "")).await.expect("pool widened");
    scale_and_run(&world, 5).await;
    let before = on_old().await;
    assert_eq!(before.len(), 5);
    let replacement = advance_until(&world, "a replacement launched", Duration::from_secs(60), || async {
        world.claims().await.map(|c| c.len() == 2).unwrap_or(false)
    });
    replacement.await;
    let new_claim =
        world.claims().await.expect("claims").into_iter().find(|c| c.name_any() != old).expect("replacement");
    world
        .wait_for("the replacement registered", Duration::from_secs(20), || async {
            Ok(world.claims().await?.iter().any(|c| {
                c.name_any() == new_claim.name_any()
                    && c.status
                        .as_ref()
                        .is_some_and(|s| s.conditions.iter().any(|k| k.type_ == "Registered" && k.status == "True"))
            }))
        })
        .await
        .expect("registered");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(on_old().await, before, "no pod leaves before the replacement is initialized");
    // The replacement never initializes: past the timeout the command is abandoned.
    world.clock.advance(Duration::from_secs(16 * 60));
    world
        .wait_for("the command abandoned", Duration::from_secs(30), || async {
            let claims = world.claims().await?;
            let node = Api::<Node>::all(world.client.clone()).get(&old_node).await?;
            let tainted = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == "karpenter.sh/disrupted"));
            Ok(!tainted
                && claims
                    .iter()
                    .all(|c| c.name_any() != new_claim.name_any() || c.metadata.deletion_timestamp.is_some()))
        })
        .await
        .expect("abandoned");
    assert_eq!(on_old().await, before, "the candidate keeps its pods");
    let claims = world.claims().await.expect("claims");
    assert!(
        claims.iter().any(|c| c.name_any() == old && c.metadata.deletion_timestamp.is_none()),
        "the candidate stays"
    );
    let metrics = replica.ctx.metrics.encode();
    assert!(metrics.contains("rafter_disruption_commands_abandoned_total 1"), "{metrics}");
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_arriving_and_leaving_around_consolidate_after_cause_no_launch_and_consolidate_loop() {
    let example = NODEPOOL_DEFAULT.replace("values: [\"spot\", \"on-demand\"]", "values: [\"on-demand\"]");
    let (world, replica) = start(WorldConfig::default(), &[&example, INFLATE]).await;
    scale_and_run(&world, 30).await;
    let claims_now = || async {
        world.claims().await.map(|c| c.iter().map(|c| c.name_any()).collect::<BTreeSet<_>>()).unwrap_or_default()
    };
    let mut seen = claims_now().await;
    let (mut created, mut removed) = (0usize, 0usize);
    let cycles = 5;
    for _ in 0..cycles {
        scale_and_run(&world, 45).await;
        // Half of consolidateAfter passes: what the arrival bought is not taken away meanwhile.
        let bought: BTreeSet<String> = claims_now().await.difference(&seen).cloned().collect();
        world.clock.advance(Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(700)).await;
        let now = claims_now().await;
        assert!(bought.is_subset(&now), "the nodes bought for 45 pods stay while they run: {bought:?} → {now:?}");
        scale_and_run(&world, 30).await;
        for _ in 0..3 {
            world.clock.advance(Duration::from_secs(31));
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        let now = claims_now().await;
        created += now.difference(&seen).count();
        removed += seen.difference(&now).count();
        seen = now;
    }
    // What the 15 arriving pods would buy on their own: each cycle may buy that much for the
    // arrival and one cheaper replacement after the departure, and remove what it bought, but no
    // more (a loop buys and removes again and again for the same pods).
    let arriving: Vec<_> = world.pods().await.expect("pods").into_iter().take(15).collect();
    let per_arrival = rafter_e2e::fresh_plan(&world, arriving).await.claims.len();
    eprintln!(
        "{cycles} cycles of 30 → 45 → 30 pods: {created} nodes bought, {removed} removed (15 pods alone buy {per_arrival})"
    );
    assert!(created <= cycles * (per_arrival + 1), "at most {} node(s) bought per cycle: {created}", per_arrival + 1);
    assert!(removed <= created + 1, "no more removed than bought, and the start's spare node: {removed}");
    let fresh = rafter_e2e::fresh_plan(&world, world.pods().await.expect("pods")).await.price();
    advance_until(&world, "the fleet back at a fresh solve's cost", Duration::from_secs(60), || async {
        fleet_price(&world) <= fresh * 1.05 + 1e-9 && deleting_claims(&world).await == 0
    })
    .await;
    replica.shutdown().await;
}
