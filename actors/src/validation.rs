//! ObjectValidation: tells the owner of an object Rafter cannot decode why it is ignored — a
//! `ValidationSucceeded=False` condition (NodePools and EC2NodeClasses) and a Warning Event —
//! and sets the condition back to True once the object is fixed.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rafter::api::{EC2NodeClass, NodePool};
use serde_json::json;

use crate::caches::Rejection;
use crate::context::Ctx;
use crate::writes::set_condition;

/// The condition Karpenter reports a NodePool's (and node class's) validation with.
pub const VALIDATION_SUCCEEDED: &str = "ValidationSucceeded";

/// How often rejections are looked at.
pub const PERIOD: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct ObjectValidation;

#[derive(Debug)]
pub enum ObjectValidationMessage {
    Report,
}

pub struct ObjectValidationState {
    ctx: Ctx,
    recorder: Recorder,
    /// (kind, name) → the message reported, so each rejection is reported once.
    reported: BTreeMap<(&'static str, String), String>,
}

impl std::fmt::Debug for ObjectValidationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectValidationState").field("reported", &self.reported).finish_non_exhaustive()
    }
}

pub type ObjectValidationArgs = Ctx;

/// The kinds whose status carries conditions Rafter writes.
fn resource(kind: &str) -> Option<ApiResource> {
    match kind {
        "NodePool" => Some(ApiResource::erase::<NodePool>(&())),
        "EC2NodeClass" => Some(ApiResource::erase::<EC2NodeClass>(&())),
        _ => None,
    }
}

/// The message a user reads on the object.
pub fn message(kind: &str, rejection: &Rejection) -> String {
    format!("{kind} does not match its schema at {}; Rafter ignores it until it is fixed", rejection.error)
}

fn conditions_of(object: &DynamicObject) -> Vec<Condition> {
    object
        .data
        .get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default()
}

impl ObjectValidation {
    async fn write_condition(ctx: &Ctx, kind: &str, name: &str, mut conditions: Vec<Condition>, error: Option<&str>) {
        let Some(resource) = resource(kind) else { return };
        let ok = error.is_none();
        let (reason, text) = match error {
            Some(m) => ("SchemaMismatch", m),
            None => ("ValidationSucceeded", ""),
        };
        set_condition(&mut conditions, VALIDATION_SUCCEEDED, ok, reason, text, ctx.clock.as_ref());
        if !ok {
            set_condition(&mut conditions, "Ready", false, "ValidationFailed", text, ctx.clock.as_ref());
        }
        let api: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &resource);
        let patch = json!({"status": {"conditions": conditions}});
        if let Err(error) = api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::warn!(kind, %name, %error, "cannot write the validation condition");
        }
    }

    async fn report(&self, state: &mut ObjectValidationState) {
        let ctx = state.ctx.clone();
        let rejected = ctx.caches.rejected.all();
        for ((kind, name), rejection) in &rejected {
            let text = message(kind, rejection);
            if state.reported.get(&(*kind, name.clone())) == Some(&text) {
                continue;
            }
            tracing::warn!(kind, %name, "{text}");
            Self::write_condition(&ctx, kind, name, conditions_of(&rejection.object), Some(&text)).await;
            let types = &rejection.object.types;
            let reference = ObjectReference {
                api_version: types.as_ref().map(|t| t.api_version.clone()),
                kind: Some(kind.to_string()),
                name: Some(name.clone()),
                uid: rejection.object.metadata.uid.clone(),
                ..ObjectReference::default()
            };
            let event = Event {
                type_: EventType::Warning,
                reason: "FailedValidation".into(),
                note: Some(text.clone()),
                action: "Decode".into(),
                secondary: None,
            };
            if let Err(error) = state.recorder.publish(&event, &reference).await {
                tracing::debug!(%error, "cannot record an event");
            }
            state.reported.insert((*kind, name.clone()), text);
        }
        // Fixed since: say so on the object (where its kind has conditions).
        let fixed: Vec<(&'static str, String)> =
            state.reported.keys().filter(|k| !rejected.contains_key(*k)).cloned().collect();
        for (kind, name) in fixed {
            let conditions = match kind {
                "NodePool" => ctx
                    .caches
                    .pools
                    .all()
                    .iter()
                    .find(|p| p.metadata.name.as_deref() == Some(&name))
                    .map(|p| p.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default()),
                "EC2NodeClass" => ctx
                    .caches
                    .classes
                    .all()
                    .iter()
                    .find(|c| c.metadata.name.as_deref() == Some(&name))
                    .map(|c| c.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default()),
                _ => None,
            };
            match conditions {
                Some(conditions) => {
                    tracing::info!(kind, %name, "{kind} {name} decodes again and is used");
                    Self::write_condition(&ctx, kind, &name, conditions, None).await;
                    state.reported.remove(&(kind, name));
                }
                // Deleted, or a kind without conditions.
                None => {
                    state.reported.remove(&(kind, name));
                }
            }
        }
    }
}

impl Actor for ObjectValidation {
    type Msg = ObjectValidationMessage;
    type State = ObjectValidationState;
    type Arguments = ObjectValidationArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, ctx: Ctx) -> Result<Self::State, ActorProcessingErr> {
        let reporter = Reporter { controller: "rafter".into(), instance: Some(ctx.config.identity.clone()) };
        let recorder = Recorder::new(ctx.client.clone(), reporter);
        let _ = myself.cast(ObjectValidationMessage::Report);
        Ok(ObjectValidationState { ctx, recorder, reported: BTreeMap::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ObjectValidationMessage::Report = message;
        self.report(state).await;
        myself.send_after(PERIOD, || ObjectValidationMessage::Report);
        Ok(())
    }
}
