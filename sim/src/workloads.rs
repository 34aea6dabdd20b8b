//! WorkloadSim: the controllers users rely on without thinking — Deployment → ReplicaSet → Pods,
//! DaemonSet → a pod per matching node, and PodDisruptionBudget status — as kube clients.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::components::{self, Component, active, ready};

const MANAGER: &str = "rafter-sim-workloads";

/// Starts the workload controllers.
pub fn spawn(client: Client) -> Component {
    let mut component = Component::default();
    let notify = Arc::new(Notify::new());
    let deployments = components::cache_all::<Deployment>(&mut component, &client, &notify);
    let sets = components::cache_all::<ReplicaSet>(&mut component, &client, &notify);
    let daemons = components::cache_all::<DaemonSet>(&mut component, &client, &notify);
    let pods = components::cache_all::<Pod>(&mut component, &client, &notify);
    let nodes = components::cache_all::<Node>(&mut component, &client, &notify);
    let pdbs = components::cache_all::<PodDisruptionBudget>(&mut component, &client, &notify);
    let caches = Caches { deployments, sets, daemons, pods, nodes, pdbs };
    component.spawn(async move {
        let mut expect = Expectations::default();
        loop {
            components::wait(&notify, Duration::from_secs(1)).await;
            if let Err(error) = reconcile(&client, &caches, &mut expect).await {
                tracing::debug!(%error, "workload reconcile failed; retrying");
            }
        }
    });
    component
}

/// Writes this controller made that its caches may not show yet, so a lagging cache does not make it
/// create or delete twice (the "expectations" of Kubernetes' controllers). Keyed by owner uid.
#[derive(Default)]
struct Expectations {
    created: BTreeMap<String, Vec<(String, String, std::time::Instant)>>,
    deleted: BTreeMap<String, Vec<(String, std::time::Instant)>>,
}

const EXPECTATION_TTL: Duration = Duration::from_secs(30);

impl Expectations {
    /// Pods created for `owner` (name, node) that the cache does not show yet.
    fn unseen_creations(&mut self, owner: &str, cache: &[Arc<Pod>]) -> Vec<(String, String)> {
        let entry = self.created.entry(owner.to_string()).or_default();
        entry.retain(|(name, _, at)| at.elapsed() < EXPECTATION_TTL && !cache.iter().any(|p| &p.name_any() == name));
        entry.iter().map(|(n, node, _)| (n.clone(), node.clone())).collect()
    }

    /// Pod names deleted for `owner` that the cache still shows as active.
    fn pending_deletions(&mut self, owner: &str, cache: &[Arc<Pod>]) -> Vec<String> {
        let entry = self.deleted.entry(owner.to_string()).or_default();
        entry.retain(|(name, at)| {
            at.elapsed() < EXPECTATION_TTL && cache.iter().any(|p| &p.name_any() == name && active(p))
        });
        entry.iter().map(|(n, _)| n.clone()).collect()
    }

    fn create(&mut self, owner: &str, name: String, node: String) {
        self.created.entry(owner.to_string()).or_default().push((name, node, std::time::Instant::now()));
    }

    fn delete(&mut self, owner: &str, name: String) {
        self.deleted.entry(owner.to_string()).or_default().push((name, std::time::Instant::now()));
    }
}

struct Caches {
    deployments: Store<Deployment>,
    sets: Store<ReplicaSet>,
    daemons: Store<DaemonSet>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    pdbs: Store<PodDisruptionBudget>,
}

fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Value {
    json!({
        "apiVersion": K::api_version(&()), "kind": K::kind(&()), "name": owner.meta().name, "uid": owner.meta().uid,
        "controller": true, "blockOwnerDeletion": true
    })
}

fn owned_by(pod_meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, uid: &str) -> bool {
    pod_meta.owner_references.as_ref().is_some_and(|refs| refs.iter().any(|r| r.uid == uid))
}

fn hash_text(text: &str) -> String {
    rafter::mix::name_suffix(rafter::mix::fnv1a(text), 10)
}

/// Writes `desired` as the object's status when any of `fields` differs (absent counts as 0), so an
/// unchanged world causes no writes.
async fn sync_status<K>(client: &Client, object: &K, fields: &[&str], desired: Value) -> Result<(), kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let current = serde_json::to_value(object).ok().and_then(|o| o.get("status").cloned()).unwrap_or_default();
    let value = |v: &Value, k: &str| v.get(k).cloned().unwrap_or(json!(0));
    if fields.iter().any(|k| value(&current, k) != value(&desired, k)) {
        Api::<K>::namespaced(client.clone(), &object.namespace().unwrap_or_default())
            .patch_status(&object.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": desired})))
            .await?;
    }
    Ok(())
}

async fn reconcile(client: &Client, c: &Caches, expect: &mut Expectations) -> Result<(), kube::Error> {
    for deployment in c.deployments.state() {
        reconcile_deployment(client, c, &deployment).await?;
    }
    for set in c.sets.state() {
        reconcile_replica_set(client, c, &set, expect).await?;
    }
    for daemon in c.daemons.state() {
        reconcile_daemon_set(client, c, &daemon, expect).await?;
    }
    for pdb in c.pdbs.state() {
        reconcile_budget(client, c, &pdb).await?;
    }
    Ok(())
}

async fn reconcile_deployment(client: &Client, c: &Caches, deployment: &Deployment) -> Result<(), kube::Error> {
    if deployment.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let ns = deployment.namespace().unwrap_or_default();
    let uid = deployment.uid().unwrap_or_default();
    let Some(spec) = &deployment.spec else { return Ok(()) };
    let template = serde_json::to_value(&spec.template).unwrap_or_default();
    let hash = hash_text(&template.to_string());
    let name = format!("{}-{hash}", deployment.name_any());
    let replicas = spec.replicas.unwrap_or(1);
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let owned: Vec<Arc<ReplicaSet>> = c.sets.state().into_iter().filter(|rs| owned_by(&rs.metadata, &uid)).collect();
    match owned.iter().find(|rs| rs.name_any() == name) {
        None => {
            let mut template = template.clone();
            template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
            let mut selector = serde_json::to_value(&spec.selector).unwrap_or_default();
            selector["matchLabels"]["pod-template-hash"] = json!(hash);
            let rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": name, "namespace": ns, "labels": template["metadata"]["labels"], "ownerReferences": [owner_ref(deployment)]},
                "spec": {"replicas": replicas, "selector": selector, "template": template}
            });
            let rs: ReplicaSet = serde_json::from_value(rs).map_err(kube::Error::SerdeError)?;
            match api.create(&PostParams { field_manager: Some(MANAGER.into()), ..PostParams::default() }, &rs).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Some(rs) if rs.spec.as_ref().and_then(|s| s.replicas) != Some(replicas) => {
            api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": replicas}}))).await?;
        }
        Some(_) => {}
    }
    for old in owned.iter().filter(|rs| rs.name_any() != name) {
        if old.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) != 0 {
            api.patch(&old.name_any(), &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 0}})))
                .await?;
        }
    }
    let status = |f: fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> Option<i32>| -> i32 {
        owned.iter().filter_map(|rs| rs.status.as_ref().and_then(f)).sum()
    };
    let total: i32 = owned.iter().filter_map(|rs| rs.status.as_ref().map(|s| s.replicas)).sum();
    let ready = status(|s| s.ready_replicas);
    let available = status(|s| s.available_replicas);
    let updated = owned
        .iter()
        .find(|rs| rs.name_any() == name)
        .and_then(|rs| rs.status.as_ref().map(|s| s.replicas))
        .unwrap_or(0);
    let desired = json!({
        "observedGeneration": deployment.metadata.generation, "replicas": total, "readyReplicas": ready,
        "availableReplicas": available, "updatedReplicas": updated, "unavailableReplicas": (replicas - available).max(0)
    });
    sync_status(
        client,
        deployment,
        &["observedGeneration", "replicas", "readyReplicas", "availableReplicas", "updatedReplicas"],
        desired,
    )
    .await?;
    Ok(())
}

async fn reconcile_replica_set(
    client: &Client,
    c: &Caches,
    set: &ReplicaSet,
    expect: &mut Expectations,
) -> Result<(), kube::Error> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let ns = set.namespace().unwrap_or_default();
    let uid = set.uid().unwrap_or_default();
    let Some(spec) = &set.spec else { return Ok(()) };
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    let cache: Vec<Arc<Pod>> = c.pods.state().into_iter().filter(|p| owned_by(&p.metadata, &uid)).collect();
    let unseen = expect.unseen_creations(&uid, &cache).len();
    let deleting = expect.pending_deletions(&uid, &cache);
    let mut pods: Vec<Arc<Pod>> =
        cache.iter().filter(|p| active(p) && !deleting.contains(&p.name_any())).cloned().collect();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    if unseen > 0 {
        return Ok(());
    }
    if pods.len() < want {
        let template = serde_json::to_value(&spec.template).unwrap_or_default();
        for _ in pods.len()..want {
            let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata").cloned().unwrap_or(json!({})), "spec": template.get("spec").cloned().unwrap_or(json!({}))});
            pod["metadata"]["generateName"] = json!(format!("{}-", set.name_any()));
            pod["metadata"]["namespace"] = json!(ns);
            pod["metadata"]["ownerReferences"] = json!([owner_ref(set)]);
            let pod: Pod = serde_json::from_value(pod).map_err(kube::Error::SerdeError)?;
            let created = api.create(&PostParams::default(), &pod).await?;
            expect.create(&uid, created.name_any(), String::new());
        }
    } else if pods.len() > want {
        // Like the ReplicaSet controller: unscheduled first, then not ready, then the newest.
        pods.sort_by_key(|p| {
            let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
            (scheduled, ready(p), std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0)), p.name_any())
        });
        for pod in pods.iter().take(pods.len() - want) {
            match api.delete(&pod.name_any(), &DeleteParams::default()).await {
                Ok(_) => expect.delete(&uid, pod.name_any()),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    let replicas = pods.len().min(want.max(pods.len())) as i32;
    let ready_count = pods.iter().filter(|p| ready(p)).count() as i32;
    let desired = json!({"replicas": replicas, "readyReplicas": ready_count, "availableReplicas": ready_count, "fullyLabeledReplicas": replicas, "observedGeneration": set.metadata.generation});
    sync_status(client, set, &["replicas", "readyReplicas", "availableReplicas", "observedGeneration"], desired)
        .await?;
    Ok(())
}

/// Whether a DaemonSet's pods belong on a node: its nodeSelector matches and its tolerations cover the
/// node's NoSchedule and NoExecute taints.
fn daemon_fits(daemon: &DaemonSet, node: &Node) -> bool {
    let Some(spec) = daemon.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else { return false };
    let labels = node.labels();
    if let Some(selector) = &spec.node_selector
        && !selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    components::untolerated_taint(spec, node).is_none()
}

async fn reconcile_daemon_set(
    client: &Client,
    c: &Caches,
    daemon: &DaemonSet,
    expect: &mut Expectations,
) -> Result<(), kube::Error> {
    if daemon.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let ns = daemon.namespace().unwrap_or_default();
    let uid = daemon.uid().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let cache: Vec<Arc<Pod>> = c.pods.state().into_iter().filter(|p| owned_by(&p.metadata, &uid)).collect();
    let unseen: Vec<String> = expect.unseen_creations(&uid, &cache).into_iter().map(|(_, node)| node).collect();
    let pods: Vec<Arc<Pod>> = cache.into_iter().filter(|p| active(p)).collect();
    let mut by_node: BTreeMap<String, Arc<Pod>> = BTreeMap::new();
    for pod in pods {
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            by_node.insert(node, pod);
        }
    }
    let nodes: Vec<Arc<Node>> = c
        .nodes
        .state()
        .into_iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none() && daemon_fits(daemon, n))
        .collect();
    let template =
        daemon.spec.as_ref().map(|s| serde_json::to_value(&s.template).unwrap_or_default()).unwrap_or_default();
    for node in &nodes {
        let name = node.name_any();
        if by_node.contains_key(&name) || unseen.contains(&name) {
            continue;
        }
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata").cloned().unwrap_or(json!({})), "spec": template.get("spec").cloned().unwrap_or(json!({}))});
        pod["metadata"]["generateName"] = json!(format!("{}-", daemon.name_any()));
        pod["metadata"]["namespace"] = json!(ns);
        pod["metadata"]["ownerReferences"] = json!([owner_ref(daemon)]);
        pod["spec"]["nodeName"] = json!(name);
        let pod: Pod = serde_json::from_value(pod).map_err(kube::Error::SerdeError)?;
        let created = api.create(&PostParams::default(), &pod).await?;
        expect.create(&uid, created.name_any(), name);
    }
    for (node, pod) in &by_node {
        if !nodes.iter().any(|n| &n.name_any() == node) {
            let _ = api.delete(&pod.name_any(), &DeleteParams::default()).await;
        }
    }
    let scheduled = nodes.iter().filter(|n| by_node.contains_key(&n.name_any())).count() as i32;
    let ready_count = by_node.values().filter(|p| ready(p)).count() as i32;
    let desired = json!({"desiredNumberScheduled": nodes.len(), "currentNumberScheduled": scheduled, "numberReady": ready_count, "numberAvailable": ready_count, "numberMisscheduled": 0, "observedGeneration": daemon.metadata.generation});
    sync_status(
        client,
        daemon,
        &["desiredNumberScheduled", "currentNumberScheduled", "numberReady", "observedGeneration"],
        desired,
    )
    .await?;
    Ok(())
}

/// Keeps a PodDisruptionBudget's status as the disruption controller does.
async fn reconcile_budget(client: &Client, c: &Caches, pdb: &PodDisruptionBudget) -> Result<(), kube::Error> {
    let ns = pdb.namespace().unwrap_or_default();
    let Some(spec) = &pdb.spec else { return Ok(()) };
    let selector = serde_json::to_value(&spec.selector).unwrap_or_default();
    let selector = crate::apiserver::selectors::LabelSelector::from_object(&selector);
    let members: Vec<Arc<Pod>> = c
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && active(p))
        .filter(|p| selector.matches_map(p.labels()))
        .collect();
    let expected = members.len() as i64;
    let healthy = members.iter().filter(|p| ready(p)).count() as i64;
    let amount = |v: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString| match v {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => i64::from(*i),
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            (pct * expected as f64 / 100.0).ceil() as i64
        }
    };
    let desired = match (&spec.min_available, &spec.max_unavailable) {
        (Some(min), _) => amount(min),
        (None, Some(max)) => (expected - amount(max)).max(0),
        _ => 0,
    };
    let status = json!({
        "observedGeneration": pdb.metadata.generation, "expectedPods": expected, "currentHealthy": healthy,
        "desiredHealthy": desired, "disruptionsAllowed": (healthy - desired).max(0)
    });
    sync_status(
        client,
        pdb,
        &["observedGeneration", "expectedPods", "currentHealthy", "desiredHealthy", "disruptionsAllowed"],
        status,
    )
    .await?;
    Ok(())
}
