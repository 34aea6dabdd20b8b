//! NodeClassStatus: resolves every EC2NodeClass through the cloud and writes what its selectors
//! matched, and Ready/NotReady conditions naming the selector that matched nothing, to its status.

use kube::ResourceExt;
use std::time::Duration;

use futures::StreamExt;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rafter::api::EC2NodeClass;
use rafter::api::ec2nodeclass::EC2NodeClassStatus;
use rafter::cloud::NodeClassReport;
use rafter_aws::NodeClassSource;

use crate::clock::Clock;
use crate::context::Ctx;
use crate::writes::set_condition;

#[derive(Debug)]
pub struct NodeClassStatus;

#[derive(Debug)]
pub enum NodeClassStatusMessage {
    Resolve,
}

#[derive(Debug)]
pub struct NodeClassStatusState {
    ctx: Ctx,
}

pub type NodeClassStatusArgs = Ctx;

/// How often node classes are resolved again (selectors match what exists now, not at creation).
pub const PERIOD: Duration = Duration::from_secs(30);

/// The status a report leads to, keeping condition transition times that did not change.
pub fn status_from(
    report: &NodeClassReport,
    old: Option<&EC2NodeClassStatus>,
    clock: &dyn Clock,
) -> EC2NodeClassStatus {
    let mut conditions = old.map(|s| s.conditions.clone()).unwrap_or_default();
    for check in &report.checks {
        set_condition(&mut conditions, &check.type_, check.ok, &check.reason, &check.message, clock);
    }
    EC2NodeClassStatus {
        subnets: report.subnets.clone(),
        security_groups: report.security_groups.clone(),
        amis: report.amis.clone(),
        instance_profile: report.instance_profile.clone(),
        conditions,
    }
}

impl NodeClassStatus {
    async fn resolve(&self, state: &mut NodeClassStatusState) {
        let ctx = &state.ctx;
        let api = Api::<EC2NodeClass>::all(ctx.client.clone());
        for class in ctx.caches.classes.all() {
            let name = class.name_any();
            let report = match ctx.cloud.node_class_report(&class).await {
                Ok(Some(report)) => report,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(ec2nodeclass = %name, %error, "cannot resolve the node class; its status is unchanged");
                    continue;
                }
            };
            let status = status_from(&report, class.status.as_ref(), ctx.clock.as_ref());
            if class.status.as_ref() == Some(&status) {
                continue;
            }
            let patch = serde_json::json!({"status": status});
            if let Err(error) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                tracing::warn!(ec2nodeclass = %name, %error, "cannot write the node class status");
            }
        }
    }
}

impl Actor for NodeClassStatus {
    type Msg = NodeClassStatusMessage;
    type State = NodeClassStatusState;
    type Arguments = NodeClassStatusArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, ctx: Ctx) -> Result<Self::State, ActorProcessingErr> {
        let _ = myself.cast(NodeClassStatusMessage::Resolve);
        Ok(NodeClassStatusState { ctx })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let NodeClassStatusMessage::Resolve = message;
        self.resolve(state).await;
        myself.send_after(PERIOD, || NodeClassStatusMessage::Resolve);
        Ok(())
    }
}

/// EC2NodeClasses for the AWS provider, from a watch of its own (the provider is built before the
/// replica's caches).
#[derive(Debug, Clone)]
pub struct WatchedNodeClasses(Store<EC2NodeClass>);

impl WatchedNodeClasses {
    /// Starts the watch; it lives as long as the runtime.
    pub fn start(client: kube::Client) -> Self {
        let (reader, writer) = reflector::store();
        // Decoded one by one, as the caches do: one bad class must not hide the others. The
        // replica's caches report it; this watch only skips it.
        let events = crate::caches::decoded_events(client, "EC2NodeClass", Default::default());
        let stream = reflector::reflector(writer, events).touched_objects();
        tokio::spawn(stream.for_each(|_| async {}));
        Self(reader)
    }
}

impl NodeClassSource for WatchedNodeClasses {
    fn node_class(&self, name: &str) -> Option<EC2NodeClass> {
        self.0.get(&ObjectRef::new(name)).map(|c| c.as_ref().clone())
    }
}
