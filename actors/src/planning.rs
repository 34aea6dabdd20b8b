//! What several actors plan with: each pool's instance types, a solve against the caches off the
//! actor's thread, and the NodeClaims of a plan, named before they are created.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use rafter::api::NodePool;
use rafter::api::labels;
use rafter::api::nodeclaim::{NodeClaim, NodeClaimSpec, NodeClaimTemplateSpec, ResourceRequirements};
use rafter::scheduling::instance_types::InstanceType;
use rafter::scheduling::solver::{NewClaim, Plan, solve};
use rafter::state::{Snapshot, scheduling_input};
use tracing::Instrument;

use crate::context::Ctx;
use crate::messages::Planned;

/// Each pool's instance types, from the catalog or (the first time) from the cloud, with the
/// offerings in the cloud's unavailable cache marked.
pub async fn pool_types(ctx: &Ctx, pools: &[NodePool]) -> HashMap<String, Vec<InstanceType>> {
    let mut types = HashMap::new();
    for pool in pools {
        let name = pool.name_any();
        let list = match ctx.catalog.types_for(&name) {
            Some(list) => list,
            None => match ctx.cloud.instance_types(pool).await {
                Ok(list) => {
                    ctx.catalog.store(pool, list.clone());
                    list
                }
                Err(error) => {
                    tracing::warn!(pool = %name, %error, "no instance types for this pool yet");
                    Vec::new()
                }
            },
        };
        let mut list = list;
        // Offerings the cloud has had no capacity for lately, or that an interruption takes back.
        ctx.cloud.mask_unavailable(&mut list);
        types.insert(name, list);
    }
    types
}

/// A solve's result: the plan, the pools that could not be used, and how many pods were planned.
pub type Solved = (Plan, Vec<rafter::state::PoolProblem>, usize);

/// What a decision is taken over: pods, nodes, claims and pools.
pub type Inputs = (Vec<Arc<Pod>>, Vec<Arc<Node>>, Vec<Arc<NodeClaim>>, Vec<NodePool>);

/// Runs `decide` on a blocking thread, over a snapshot of these pods, nodes, claims and pools (with
/// the caches' DaemonSets and volumes) and each pool's instance types, taken by `decide` so no list
/// is copied again (the catalog already made this copy).
pub async fn off_thread<T: Send + 'static>(
    ctx: &Ctx,
    (pods, nodes, claims, pools): Inputs,
    decide: impl FnOnce(Snapshot<'_>, HashMap<String, Vec<InstanceType>>) -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let (daemonsets, volumes) = (ctx.caches.daemonsets.all(), ctx.caches.volumes());
    let types = pool_types(ctx, &pools).await;
    let job = move || {
        let snapshot = Snapshot {
            pods: &pods,
            nodes: &nodes,
            claims: &claims,
            pools: &pools,
            daemonsets: &daemonsets,
            storage: volumes.view(),
        };
        decide(snapshot, types)
    };
    tokio::task::spawn_blocking(job).in_current_span().await
}

/// Solves `pending` against the caches (with `claims` standing for the cache's claims plus any the
/// caller counts as in flight), on a blocking thread. `pods` must be the snapshot `pending` was
/// taken from: a pod bound since would count both as pending and on its node.
pub async fn solve_now(
    ctx: &Ctx,
    pods: Vec<Arc<Pod>>,
    pending: Vec<Pod>,
    claims: Vec<Arc<NodeClaim>>,
    pools: Vec<NodePool>,
) -> Result<Solved, tokio::task::JoinError> {
    let nodes = ctx.caches.nodes.all();
    off_thread(ctx, (pods, nodes, claims, pools), move |snapshot, mut types| {
        let (input, problems) = scheduling_input(snapshot, pending, |pool| {
            types.remove(pool.metadata.name.as_deref().unwrap_or_default()).unwrap_or_default()
        });
        (solve(&input), problems, input.pods.len())
    })
    .await
}

static NAMES: AtomicU64 = AtomicU64::new(0);

/// A fresh `<pool>-xxxxx` name.
fn claim_name(pool: &str) -> String {
    let seed = NAMES.fetch_add(1, Ordering::Relaxed)
        ^ jiff::Timestamp::now().as_nanosecond() as u64
        ^ (std::process::id() as u64).rotate_left(32);
    format!("{pool}-{}", rafter::mix::name_suffix(rafter::mix::splitmix64(seed), 5))
}

/// A fresh launch group: the claims of one plan share it, and may share launch calls.
pub fn launch_group() -> String {
    let seed = NAMES.fetch_add(1, Ordering::Relaxed)
        ^ (jiff::Timestamp::now().as_nanosecond() as u64).rotate_left(17)
        ^ (std::process::id() as u64).rotate_left(40);
    format!("{:016x}", rafter::mix::splitmix64(seed))
}

/// The NodeClaim for a planned machine: the pool's template with the plan's requirements, its
/// launch group, and the claim it replaces, if any.
pub fn build_claim(pool: &NodePool, planned: &NewClaim, replaces: Option<&str>, group: &str) -> NodeClaim {
    let pool_name = pool.name_any();
    let template = &pool.spec.template;
    let mut claim_labels: BTreeMap<String, String> =
        template.metadata.as_ref().map(|m| m.labels.clone()).unwrap_or_default();
    claim_labels.insert(labels::NODEPOOL.into(), pool_name.clone());
    let mut annotations = template.metadata.as_ref().map(|m| m.annotations.clone()).unwrap_or_default();
    annotations.insert(rafter::cloud::LAUNCH_GROUP.into(), group.into());
    if let Some(replaced) = replaces {
        annotations.insert(rafter::interruption::plan::REPLACES_ANNOTATION.into(), replaced.into());
    }
    let mut claim = NodeClaim::new(
        &claim_name(&pool_name),
        NodeClaimSpec {
            template: NodeClaimTemplateSpec {
                taints: template.spec.taints.clone(),
                startup_taints: template.spec.startup_taints.clone(),
                requirements: planned.requirements.clone(),
                node_class_ref: template.spec.node_class_ref.clone(),
                expire_after: template.spec.expire_after.clone(),
                termination_grace_period: template.spec.termination_grace_period.clone(),
            },
            resources: Some(ResourceRequirements {
                requests: planned.requests.iter().map(|(k, v)| (k.clone(), v.as_str().into())).collect(),
            }),
        },
    );
    claim.metadata.labels = Some(claim_labels);
    claim.metadata.annotations = Some(annotations);
    claim.metadata.finalizers = Some(vec![labels::TERMINATION_FINALIZER.into()]);
    claim.metadata.owner_references = pool.metadata.uid.clone().map(|uid| {
        vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "karpenter.sh/v1".into(),
            kind: "NodePool".into(),
            name: pool_name.clone(),
            uid,
            block_owner_deletion: Some(true),
            controller: None,
        }]
    });
    claim
}

/// The NodeClaims of one plan, in one launch group, named now: the planner can count them as in
/// flight before the Launcher has created them. Claims of pools that are gone are left out.
pub fn plan_claims(pools: &HashMap<String, NodePool>, planned: Vec<NewClaim>, replaces: Option<&str>) -> Vec<Planned> {
    let group = launch_group();
    planned
        .into_iter()
        .filter_map(|p| match pools.get(&p.node_pool) {
            Some(pool) => Some(Planned { claim: build_claim(pool, &p, replaces, &group), pods: p.pods }),
            None => {
                tracing::warn!("NodePool {} no longer exists; its pods stay pending", p.node_pool);
                None
            }
        })
        .collect()
}
