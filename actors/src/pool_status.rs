//! NodePoolStatus: writes each NodePool's `resources` (with the `nodes` count) and its
//! `ValidationSucceeded`, `NodeClassReady` and `Ready` conditions, so `kubectl get nodepools`
//! shows what Karpenter's does.

use std::time::Duration;

use kube::Api;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rafter::api::NodePool;
use rafter::api::nodeclaim::ResourceList;
use rafter::state::pool_status::pool_report;
use serde_json::json;

use crate::context::Ctx;
use crate::writes::set_condition;

/// How often pool status is computed again; a write happens only when something changed.
pub const PERIOD: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct NodePoolStatus;

#[derive(Debug)]
pub enum NodePoolStatusMessage {
    Refresh,
}

#[derive(Debug)]
pub struct NodePoolStatusState {
    ctx: Ctx,
}

pub type NodePoolStatusArgs = Ctx;

impl NodePoolStatus {
    async fn refresh(&self, state: &mut NodePoolStatusState) {
        let ctx = &state.ctx;
        let caches = &ctx.caches;
        let (claims, nodes, classes) = (caches.claims.all(), caches.nodes.all(), caches.classes.all());
        let api = Api::<NodePool>::all(ctx.client.clone());
        for pool in caches.pools.all() {
            if pool.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = pool.name_any();
            let class_name = &pool.spec.template.spec.node_class_ref.name;
            let class = classes.iter().find(|c| c.metadata.name.as_deref() == Some(class_name.as_str()));
            let report = pool_report(&pool, &claims, &nodes, class.map(AsRef::as_ref));
            let old = pool.status.clone().unwrap_or_default();
            let mut conditions = old.conditions.clone();
            for check in &report.checks {
                set_condition(
                    &mut conditions,
                    check.type_,
                    check.ok,
                    &check.reason,
                    &check.message,
                    ctx.clock.as_ref(),
                );
            }
            let resources: Option<ResourceList> =
                serde_json::to_value(&report.resources).ok().and_then(|v| serde_json::from_value(v).ok());
            let Some(resources) = resources else { continue };
            if old.conditions == conditions && old.resources == resources {
                continue;
            }
            let patch = json!({"status": {"resources": resources, "conditions": conditions}});
            if let Err(error) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                tracing::warn!(nodepool = %name, %error, "cannot write the NodePool's status");
            }
        }
    }
}

impl Actor for NodePoolStatus {
    type Msg = NodePoolStatusMessage;
    type State = NodePoolStatusState;
    type Arguments = NodePoolStatusArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, ctx: Ctx) -> Result<Self::State, ActorProcessingErr> {
        let _ = myself.cast(NodePoolStatusMessage::Refresh);
        Ok(NodePoolStatusState { ctx })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let NodePoolStatusMessage::Refresh = message;
        self.refresh(state).await;
        myself.send_after(PERIOD, || NodePoolStatusMessage::Refresh);
        Ok(())
    }
}
