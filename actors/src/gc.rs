//! Garbage collection: instances tagged for this cluster that no NodeClaim owns, past a grace
//! counted from their launch time (so a leader change does not start it over), are terminated;
//! NodeClaims whose instance is gone are deleted.

use kube::ResourceExt;
use std::collections::{HashMap, HashSet};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rafter::api::nodeclaim::{NodeClaim, NodeClaimSpec, NodeClaimStatus, NodeClaimTemplateSpec, NodeClassReference};
use rafter::cloud::{CloudError, InstanceState};
use rafter::state::orphans::{Claims, Ownership, collectable, launched_ago, past_grace};
use tokio::time::Instant;

use crate::context::Ctx;
use crate::writes::delete_claim;

#[derive(Debug)]
pub struct GarbageCollector;

#[derive(Debug)]
pub enum GarbageCollectorMessage {
    Collect,
}

#[derive(Debug)]
pub struct GarbageCollectorState {
    ctx: Ctx,
    /// Instance id → when this leader first saw it without a claim (the grace's fallback where a
    /// launch time cannot be read).
    orphans: HashMap<String, Instant>,
}

pub type GarbageCollectorArgs = Ctx;

/// A stand-in claim naming an instance, for `CloudProvider::delete` (which finds it by provider ID).
fn orphan_claim(name: &str, provider_id: &str) -> NodeClaim {
    let mut claim = NodeClaim::new(
        name,
        NodeClaimSpec {
            template: NodeClaimTemplateSpec {
                taints: Vec::new(),
                startup_taints: Vec::new(),
                requirements: Vec::new(),
                node_class_ref: NodeClassReference {
                    group: rafter::api::labels::AWS_GROUP.into(),
                    kind: "EC2NodeClass".into(),
                    name: String::new(),
                },
                expire_after: None,
                termination_grace_period: None,
            },
            resources: None,
        },
    );
    claim.status = Some(NodeClaimStatus { provider_id: Some(provider_id.to_string()), ..Default::default() });
    claim
}

impl GarbageCollector {
    async fn collect(&self, state: &mut GarbageCollectorState) {
        let ctx = state.ctx.clone();
        let instances = match ctx.cloud.list().await {
            Ok(i) => i,
            Err(error) => {
                tracing::debug!(%error, "cannot list instances; garbage collection waits");
                return;
            }
        };
        let cluster_tag = format!("kubernetes.io/cluster/{}", ctx.config.cluster_name);
        let claims = ctx.caches.claims.all();
        let owners = Claims::new(claims.iter().map(|c| c.as_ref()));
        let now = Instant::now();
        let wall = ctx.clock.now();
        let mut seen = HashSet::new();
        for instance in &instances {
            if !collectable(instance, &cluster_tag) || owners.ownership(instance) != Ownership::Orphan {
                continue;
            }
            seen.insert(instance.id.clone());
            let first = *state.orphans.entry(instance.id.clone()).or_insert(now);
            if !past_grace(launched_ago(instance, wall), now.duration_since(first), ctx.config.gc_grace) {
                continue;
            }
            let stub = orphan_claim(instance.node_claim().unwrap_or("orphan"), &instance.provider_id);
            match ctx.cloud.delete(&stub).await {
                Ok(()) | Err(CloudError::NotFound { .. }) => {
                    ctx.metrics.instances_collected.inc();
                    tracing::info!(
                        "Garbage-collected instance {} (type {}): no NodeClaim owns it",
                        instance.id,
                        instance.instance_type
                    );
                }
                Err(error) => tracing::warn!(instance = %instance.id, %error, "cannot terminate an orphaned instance"),
            }
        }
        state.orphans.retain(|id, _| seen.contains(id));
        // Claims whose instance is gone.
        let alive: HashSet<&str> = instances
            .iter()
            .filter(|i| !matches!(i.state, InstanceState::Terminated | InstanceState::ShuttingDown))
            .map(|i| i.provider_id.as_str())
            .collect();
        for claim in &claims {
            if claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(provider) = claim.status.as_ref().and_then(|s| s.provider_id.as_deref()) else { continue };
            if alive.contains(provider) {
                continue;
            }
            // Confirm with a direct lookup: the list may predate a launch.
            let gone = match ctx.cloud.get(provider).await {
                Err(CloudError::NotFound { .. }) => true,
                Ok(i) => matches!(i.state, InstanceState::Terminated | InstanceState::ShuttingDown),
                Err(_) => false,
            };
            if gone {
                let name = claim.name_any();
                tracing::info!("Deleting nodeclaim {name}: its instance {provider} is gone");
                let _ = delete_claim(&ctx, &name).await;
            }
        }
    }
}

impl Actor for GarbageCollector {
    type Msg = GarbageCollectorMessage;
    type State = GarbageCollectorState;
    type Arguments = GarbageCollectorArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, ctx: Ctx) -> Result<Self::State, ActorProcessingErr> {
        let _ = myself.cast(GarbageCollectorMessage::Collect);
        Ok(GarbageCollectorState { ctx, orphans: HashMap::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let GarbageCollectorMessage::Collect = message;
        self.collect(state).await;
        myself.send_after(state.ctx.config.gc_period, || GarbageCollectorMessage::Collect);
        Ok(())
    }
}
