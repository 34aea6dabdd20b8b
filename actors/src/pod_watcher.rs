//! PodWatcher: keeps the pod cache filled, and tells the Batcher about each pod that needs capacity.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinSet;

use crate::caches::reflect;
use crate::context::Ctx;
use crate::messages::{BatcherMessage, peer};

/// Watches pods, and tells the Batcher about each pod that needs capacity.
#[derive(Debug)]
pub struct PodWatcher;

#[derive(Debug)]
pub enum PodWatcherMessage {}

#[derive(Debug)]
pub struct PodWatcherState {
    tasks: JoinSet<()>,
}

pub type PodWatcherArgs = Ctx;

impl Actor for PodWatcher {
    type Msg = PodWatcherMessage;
    type State = PodWatcherState;
    type Arguments = PodWatcherArgs;

    async fn pre_start(&self, _: ActorRef<Self::Msg>, ctx: Ctx) -> Result<Self::State, ActorProcessingErr> {
        let mut tasks = JoinSet::new();
        let peers = ctx.peers.clone();
        let timeline = ctx.timeline.clone();
        reflect(
            &mut tasks,
            Api::<Pod>::all(ctx.client.clone()),
            "pods",
            ctx.caches.clone(),
            |c| &c.pods,
            move |pod| {
                if rafter::state::provisionable(pod) {
                    timeline.pod_seen();
                    if let Some(batcher) = peer(&peers.batcher) {
                        let _ = batcher.cast(BatcherMessage::Pending);
                    }
                }
            },
        );
        Ok(PodWatcherState { tasks })
    }

    async fn post_stop(&self, _: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.tasks.abort_all();
        Ok(())
    }
}
