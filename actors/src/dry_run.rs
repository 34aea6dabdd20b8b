//! `rafter disrupt --dry-run`: the controller's disruption engine over a live cluster, read once
//! and written never — the command it would issue next, and why every other node stays.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};
use rafter::api::nodeclaim::NodeClaim;
use rafter::api::{EC2NodeClass, NodePool};
use rafter::disruption::{Decision, Settings, View, decide};
use rafter::scheduling::instance_types::{InstanceType, InstanceTypeSpec, KubeletSettings};
use rafter::state::Snapshot;
use serde::de::DeserializeOwned;

/// Why the cluster could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    #[error("cannot list {kind} (check the kubeconfig and that it may list them): {source}")]
    List {
        kind: String,
        #[source]
        source: kube::Error,
    },
}

async fn list<K>(client: &kube::Client) -> Result<Vec<Arc<K>>, DryRunError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let kind = K::kind(&()).to_string();
    let items = Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| DryRunError::List { kind, source })?;
    Ok(items.items.into_iter().map(Arc::new).collect())
}

/// How the dry run prices what the cluster runs and could run.
#[derive(Debug, Clone)]
pub struct Pricing {
    pub catalog: Vec<InstanceTypeSpec>,
    /// Spot price as a share of on-demand (the shipped catalog has no spot prices).
    pub spot_price_ratio: f64,
}

/// Reads the cluster and runs the engine: the decision the leader would take now.
pub async fn dry_run(
    client: &kube::Client,
    pricing: &Pricing,
    settings: Settings,
    now: jiff::Timestamp,
) -> Result<Decision, DryRunError> {
    let pods = list::<Pod>(client).await?;
    let nodes = list::<Node>(client).await?;
    let claims = list::<NodeClaim>(client).await?;
    let pools: Vec<NodePool> = list::<NodePool>(client).await?.iter().map(|p| p.as_ref().clone()).collect();
    let classes = list::<EC2NodeClass>(client).await?;
    let pdbs = list::<PodDisruptionBudget>(client).await?;
    let daemonsets = list::<DaemonSet>(client).await?;
    let kubelet: HashMap<String, KubeletSettings> = classes
        .iter()
        .filter_map(|c| {
            let settings = rafter::scheduling::input::kubelet_settings(&c.name_any(), c).ok()?;
            Some((c.name_any(), settings))
        })
        .collect();
    let types: HashMap<String, Vec<InstanceType>> = pools
        .iter()
        .map(|pool| {
            let settings = kubelet.get(&pool.spec.template.spec.node_class_ref.name).cloned().unwrap_or_default();
            let list = pricing
                .catalog
                .iter()
                .map(|spec| {
                    InstanceType::new(spec, &settings, |_| Some(spec.on_demand_price * pricing.spot_price_ratio))
                })
                .collect();
            (pool.name_any(), list)
        })
        .collect();
    let snapshot = Snapshot {
        pods: &pods,
        nodes: &nodes,
        claims: &claims,
        pools: &pools,
        daemonsets: &daemonsets,
        storage: Default::default(),
    };
    Ok(decide(View { snapshot, pdbs: &pdbs, types: &types, now, settings, resume_after: None }))
}

/// The decision for people.
pub fn render(decision: &Decision) -> String {
    let mut out = String::new();
    match &decision.command {
        None => out.push_str("No disruption now.\n"),
        Some(c) => {
            out.push_str(&format!(
                "Would {} {} node(s) by {} ({:?}), saving ${:.4}/h\n",
                c.decision(),
                c.candidates.len(),
                c.method.as_str(),
                c.reason,
                c.savings
            ));
            for t in &c.candidates {
                let price = t.price.map_or("price unknown".to_string(), |p| format!("${p:.4}/h"));
                out.push_str(&format!("  node {} (nodeclaim {}, NodePool {}, {price})\n", t.node, t.claim, t.pool));
            }
            for r in &c.replacements {
                let first = r.instance_types.first().map(|o| o.name.as_str()).unwrap_or("?");
                out.push_str(&format!(
                    "  first launching 1 node of NodePool {}: {first} at ${:.4}/h, or one of {} other cheaper types\n",
                    r.node_pool,
                    r.price,
                    r.instance_types.len().saturating_sub(1)
                ));
            }
        }
    }
    if !decision.kept.is_empty() {
        out.push_str("Nodes that stay:\n");
        for k in &decision.kept {
            out.push_str(&format!("  {} (nodeclaim {}): {}\n", k.node, k.claim, k.why));
        }
    }
    for (pool, warning) in &decision.warnings {
        out.push_str(&format!("Warning: NodePool {pool}: {warning}\n"));
    }
    out.push_str(&format!("({} simulation(s))\n", decision.simulations));
    out
}
