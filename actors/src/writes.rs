//! The Kubernetes writes several actors share (claim conditions and deletion, the disrupted
//! taint, a new batch): one home each, so no actor reaches into another's module for them.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use rafter::api::labels;
use rafter::api::nodeclaim::NodeClaim;
use serde_json::{Value, json};

use crate::clock::Clock;
use crate::context::Ctx;
use crate::messages::{BatcherMessage, peer};

/// Sets one condition in a list (keeping `lastTransitionTime` when the status did not change).
pub fn set_condition(
    list: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    clock: &dyn Clock,
) {
    let status = if status { "True" } else { "False" };
    if let Some(c) = list.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = Time(clock.now());
        }
        c.status = status.into();
        c.reason = reason.into();
        c.message = message.into();
        return;
    }
    list.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(clock.now()),
        observed_generation: None,
    });
}

/// Writes a claim's conditions (and optional other status fields) through the status subresource.
pub async fn patch_status(
    ctx: &Ctx,
    claim: &NodeClaim,
    extra: Value,
    set: &[(&str, bool, &str, &str)],
) -> Result<(), kube::Error> {
    let mut list = claim.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    for (t, s, r, m) in set {
        set_condition(&mut list, t, *s, r, m, ctx.clock.as_ref());
    }
    let mut status = extra;
    status["conditions"] = serde_json::to_value(&list).unwrap_or(Value::Null);
    Api::<NodeClaim>::all(ctx.client.clone())
        .patch_status(&claim.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
        .await
        .map(|_| ())
}

/// Deletes a claim (the Terminator finishes it through the finalizer).
pub async fn delete_claim(ctx: &Ctx, name: &str) -> Result<(), kube::Error> {
    // A claim going away is no longer capacity in flight, even if the cache never showed it.
    ctx.in_flight.forget(name);
    match Api::<NodeClaim>::all(ctx.client.clone()).delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Asks the batcher to look at pending pods again.
pub fn rebatch(ctx: &Ctx) {
    if let Some(b) = peer(&ctx.peers.batcher) {
        let _ = b.cast(BatcherMessage::Pending);
    }
}

/// Taints a node `karpenter.sh/disrupted:NoSchedule` so nothing new lands on it; false when it
/// already was.
pub async fn taint_disrupted(ctx: &Ctx, node: &Node) -> Result<bool, kube::Error> {
    let node_name = node.name_any();
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    if taints.iter().any(|t| t.key == labels::DISRUPTED_TAINT_KEY) {
        return Ok(false);
    }
    let mut next: Vec<serde_json::Value> = taints.iter().filter_map(|t| serde_json::to_value(t).ok()).collect();
    next.push(json!({"key": labels::DISRUPTED_TAINT_KEY, "effect": "NoSchedule"}));
    // The resourceVersion makes this a compare-and-swap: a taint added meanwhile is not lost.
    let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version}, "spec": {"taints": next}});
    Api::<Node>::all(ctx.client.clone()).patch(&node_name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    tracing::info!("Cordoned node {node_name}");
    Ok(true)
}

/// Takes the `karpenter.sh/disrupted` taint off a node whose disruption was abandoned; false when
/// it had none.
pub async fn untaint_disrupted(ctx: &Ctx, node: &Node) -> Result<bool, kube::Error> {
    let node_name = node.name_any();
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    if !taints.iter().any(|t| t.key == labels::DISRUPTED_TAINT_KEY) {
        return Ok(false);
    }
    let next: Vec<serde_json::Value> = taints
        .iter()
        .filter(|t| t.key != labels::DISRUPTED_TAINT_KEY)
        .filter_map(|t| serde_json::to_value(t).ok())
        .collect();
    let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version}, "spec": {"taints": next}});
    Api::<Node>::all(ctx.client.clone()).patch(&node_name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    tracing::info!("Uncordoned node {node_name}");
    Ok(true)
}

/// Records an Event (events.k8s.io/v1) with this note. Unlike kube-runtime's `Recorder`, which
/// folds every later event of the same reason into the first one's series and keeps its note,
/// each call is a new Event: callers that say something new (a node kept for another reason)
/// must be heard, and they call only when what they say changes.
pub async fn record_event(
    ctx: &Ctx,
    regarding: k8s_openapi::api::core::v1::ObjectReference,
    warning: bool,
    reason: &str,
    action: &str,
    note: &str,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::events::v1::Event;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let now = jiff::Timestamp::now();
    let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
    let name = format!("{}.{:x}", regarding.name.as_deref().unwrap_or("rafter"), now.as_nanosecond());
    let event = Event {
        metadata: kube::core::ObjectMeta { name: Some(name), namespace: Some(namespace.clone()), ..Default::default() },
        action: Some(action.into()),
        reason: Some(reason.into()),
        note: Some(note.chars().take(1024).collect()),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding),
        reporting_controller: Some("rafter".into()),
        reporting_instance: Some(ctx.config.identity.clone()),
        type_: Some(if warning { "Warning" } else { "Normal" }.into()),
        ..Default::default()
    };
    Api::<Event>::namespaced(ctx.client.clone(), &namespace).create(&Default::default(), &event).await.map(|_| ())
}

/// The Node registered for a provider ID.
pub fn node_of<'a>(provider: Option<&str>, nodes: &'a [Arc<Node>]) -> Option<&'a Arc<Node>> {
    provider.and_then(|p| nodes.iter().find(|n| n.spec.as_ref().and_then(|s| s.provider_id.as_deref()) == Some(p)))
}
