//! What the simulated components share: caches fed by kube-runtime watchers, and a handle that stops a
//! component's tasks when dropped.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// A running component; dropping it stops it.
#[derive(Debug, Default)]
pub struct Component {
    tasks: JoinSet<()>,
}

impl Component {
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// A reflector cache over `api` that pokes `notify` on every change. Watch errors are retried with
/// kube-runtime's default backoff, so a dropped watch or a 410 only delays the cache.
pub fn cache<K>(component: &mut Component, api: Api<K>, config: watcher::Config, notify: Arc<Notify>) -> Store<K>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff().touched_objects();
    component.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if let Err(error) = item {
                tracing::debug!(%error, "watch error; the watcher retries");
            }
            notify.notify_one();
        }
    });
    reader
}

/// [`cache`] of every object of a kind, cluster-wide.
pub fn cache_all<K>(component: &mut Component, client: &kube::Client, notify: &Arc<Notify>) -> Store<K>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    cache(component, Api::all(client.clone()), watcher::Config::default(), notify.clone())
}

/// Waits for a poke or a period, whichever comes first.
pub async fn wait(notify: &Notify, period: Duration) {
    let _ = tokio::time::timeout(period, notify.notified()).await;
}

fn condition_true(conditions: Option<&Vec<k8s_openapi::api::core::v1::PodCondition>>, kind: &str) -> bool {
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"))
}

/// A pod whose Ready condition is True.
pub fn ready(pod: &Pod) -> bool {
    condition_true(pod.status.as_ref().and_then(|s| s.conditions.as_ref()), "Ready")
}

/// A pod that finished (Succeeded or Failed).
pub fn terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// A pod that counts towards its controller: not finished and not being deleted.
pub fn active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !terminal(pod)
}

/// A node whose Ready condition is True.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The first of a node's NoSchedule/NoExecute taints the pod does not tolerate.
pub fn untolerated_taint(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    node: &Node,
) -> Option<rafter::api::nodeclaim::Taint> {
    let node_taints: Vec<_> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|t| t.iter().filter_map(rafter::scheduling::taints::from_kube).collect())
        .unwrap_or_default();
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    rafter::scheduling::taints::first_untolerated(&tolerations, &node_taints, false).cloned()
}

/// The current time as `metav1.Time`.
pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The current time as `metav1.MicroTime`.
pub fn now_micro() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}
