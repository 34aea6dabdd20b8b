//! ClusterState: keeps the cluster caches filled (nodes, NodeClaims, NodePools, node classes,
//! legacy Provisioners and AWSNodeTemplates, DaemonSets, PodDisruptionBudgets, volumes).

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Api;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rafter::api::legacy::{AWSNodeTemplate, Provisioner};
use tokio::task::JoinSet;

use crate::caches::{reflect, reflect_custom, served};
use crate::context::Ctx;

/// Fills the cluster caches.
#[derive(Debug)]
pub struct ClusterState;

#[derive(Debug)]
pub enum ClusterStateMessage {}

#[derive(Debug)]
pub struct ClusterStateState {
    tasks: JoinSet<()>,
}

pub type ClusterStateArgs = Ctx;

impl Actor for ClusterState {
    type Msg = ClusterStateMessage;
    type State = ClusterStateState;
    type Arguments = ClusterStateArgs;

    async fn pre_start(&self, _: ActorRef<Self::Msg>, ctx: Ctx) -> Result<Self::State, ActorProcessingErr> {
        let mut tasks = JoinSet::new();
        let c = ctx.client.clone();
        let caches = ctx.caches.clone();
        reflect(&mut tasks, Api::<Node>::all(c.clone()), "nodes", caches.clone(), |c| &c.nodes, |_| {});
        reflect_custom(&mut tasks, c.clone(), "NodeClaim", caches.clone(), |c| &c.claims);
        reflect_custom(&mut tasks, c.clone(), "NodePool", caches.clone(), |c| &c.pools);
        reflect_custom(&mut tasks, c.clone(), "EC2NodeClass", caches.clone(), |c| &c.classes);
        reflect(&mut tasks, Api::<DaemonSet>::all(c.clone()), "daemonsets", caches.clone(), |c| &c.daemonsets, |_| {});
        reflect(&mut tasks, Api::<PodDisruptionBudget>::all(c.clone()), "pdbs", caches.clone(), |c| &c.pdbs, |_| {});
        reflect(&mut tasks, Api::<PersistentVolumeClaim>::all(c.clone()), "pvcs", caches.clone(), |c| &c.pvcs, |_| {});
        reflect(&mut tasks, Api::<PersistentVolume>::all(c.clone()), "pvs", caches.clone(), |c| &c.pvs, |_| {});
        reflect(
            &mut tasks,
            Api::<StorageClass>::all(c.clone()),
            "storageclasses",
            caches.clone(),
            |c| &c.storage_classes,
            |_| {},
        );
        if served::<Provisioner>(&c).await {
            reflect_custom(&mut tasks, c.clone(), "Provisioner", caches.clone(), |c| &c.provisioners);
        } else {
            caches.provisioners.absent();
        }
        if served::<AWSNodeTemplate>(&c).await {
            reflect_custom(&mut tasks, c.clone(), "AWSNodeTemplate", caches.clone(), |c| &c.templates);
        } else {
            caches.templates.absent();
        }
        Ok(ClusterStateState { tasks })
    }

    async fn post_stop(&self, _: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.tasks.abort_all();
        Ok(())
    }
}
