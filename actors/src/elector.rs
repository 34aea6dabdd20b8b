//! LeaderElector: holds and renews a `coordination.k8s.io/v1` Lease on the replica's own client and
//! publishes `Leader(epoch)` or `Follower` on a channel (the supervisor holds the other end). A
//! leader that has not renewed within the renew deadline steps down before anyone else can take the
//! lease (the lease duration is longer).

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::context::Ctx;

/// What the elector publishes on its leadership channel (the supervisor listens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// This replica holds the lease; `epoch` is the lease's transition count when it was taken.
    Leader(i32),
    Follower,
}

/// The part of a Lease the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub holder: Option<String>,
    pub renew_time: Option<String>,
    pub transitions: i32,
}

/// What to do with the lease now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: write a fresh renew time.
    Renew,
    /// It is free or its holder stopped renewing: take it.
    Acquire,
    /// Someone else holds it and renews.
    Wait,
}

/// Decides from the lease as observed and from how long ago (on this replica's clock) its holder or
/// renew time last changed. Comparing against local observation rather than the `renewTime` itself
/// keeps the decision correct under clock skew between replicas.
pub fn decide(
    observed: Option<&Observed>,
    identity: &str,
    unchanged_for: Duration,
    lease_duration: Duration,
) -> Decision {
    match observed {
        None => Decision::Acquire,
        Some(o) if o.holder.as_deref() == Some(identity) => Decision::Renew,
        Some(o) if o.holder.as_deref().is_none_or(str::is_empty) => Decision::Acquire,
        Some(_) if unchanged_for >= lease_duration => Decision::Acquire,
        Some(_) => Decision::Wait,
    }
}

/// The elector actor.
#[derive(Debug)]
pub struct LeaderElector;

#[derive(Debug)]
pub enum LeaderElectorMessage {
    /// Try to acquire or renew now.
    Tick,
    /// The Lease's watch saw it released or deleted: take it at once rather than at the next tick.
    LeaseFreed,
    /// Give the lease up (graceful shutdown) and answer when done.
    Release(RpcReplyPort<()>),
}

#[derive(Debug)]
pub struct LeaderElectorArgs {
    pub ctx: Ctx,
    /// Where leadership changes go, in order.
    pub leadership: tokio::sync::mpsc::UnboundedSender<Leadership>,
}

#[derive(Debug)]
pub struct LeaderElectorState {
    ctx: Ctx,
    leadership: tokio::sync::mpsc::UnboundedSender<Leadership>,
    api: Api<Lease>,
    observed: Option<Observed>,
    observed_at: Instant,
    /// When we last renewed successfully, while leading.
    renewed_at: Option<Instant>,
    epoch: Option<i32>,
    watch: JoinSet<()>,
    released: bool,
}

fn now_micro() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl LeaderElectorState {
    fn observe(&mut self, lease: Option<&Lease>) {
        let next = lease.map(|l| {
            let spec = l.spec.clone().unwrap_or_default();
            Observed {
                holder: spec.holder_identity,
                renew_time: spec.renew_time.map(|t| t.0.to_string()),
                transitions: spec.lease_transitions.unwrap_or(0),
            }
        });
        if next != self.observed {
            self.observed = next;
            self.observed_at = Instant::now();
        }
    }

    fn spec(&self, transitions: i32, acquire: bool, holder: Option<String>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder,
            lease_duration_seconds: Some(i32::try_from(self.ctx.config.lease_duration.as_secs()).unwrap_or(15).max(1)),
            acquire_time: acquire.then(now_micro),
            renew_time: Some(now_micro()),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt, bounded by `limit`. Returns whether we hold the lease afterwards.
    async fn attempt(&mut self, limit: Duration) -> bool {
        let identity = self.ctx.config.identity.clone();
        let name = self.ctx.config.lease_name.clone();
        let result = tokio::time::timeout(limit, async {
            let current = self.api.get_opt(&name).await?;
            self.observe(current.as_ref());
            let decision =
                decide(self.observed.as_ref(), &identity, self.observed_at.elapsed(), self.ctx.config.lease_duration);
            match (decision, current) {
                (Decision::Wait, _) => Ok::<bool, kube::Error>(false),
                (Decision::Acquire | Decision::Renew, None) => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            namespace: Some(self.ctx.config.lease_namespace.clone()),
                            ..ObjectMeta::default()
                        },
                        spec: Some(self.spec(0, true, Some(identity.clone()))),
                    };
                    let created = self.api.create(&PostParams::default(), &lease).await?;
                    self.observe(Some(&created));
                    Ok(true)
                }
                (Decision::Renew | Decision::Acquire, Some(mut lease)) => {
                    let old = lease.spec.clone().unwrap_or_default();
                    let transitions = old.lease_transitions.unwrap_or(0);
                    lease.spec = Some(if decision == Decision::Renew {
                        LeaseSpec { renew_time: Some(now_micro()), ..old }
                    } else {
                        self.spec(transitions + 1, true, Some(identity.clone()))
                    });
                    // `replace` carries the resourceVersion we read: a concurrent writer makes it 409.
                    let written = self.api.replace(&name, &PostParams::default(), &lease).await?;
                    self.observe(Some(&written));
                    Ok(true)
                }
            }
        })
        .await;
        let namespace = &self.ctx.config.lease_namespace;
        let health = &self.ctx.lease;
        match result {
            Ok(Ok(held)) => {
                health.succeeded();
                held
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => {
                health.succeeded();
                false
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => {
                let error = format!(
                    "{}; the lease's namespace {namespace:?} must exist (create it, or set --namespace)",
                    s.message
                );
                if health.failed(error.clone()) {
                    tracing::warn!(%error, "cannot take part in leader election: no replica can lead");
                }
                false
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 403 => {
                let error = format!(
                    "{}; run Rafter in the namespace whose Role grants it Leases (the chart's release namespace, --namespace), or grant get, create and update on leases in {namespace:?}",
                    s.message
                );
                if health.failed(error.clone()) {
                    tracing::warn!(%error, "cannot take part in leader election: RBAC refuses the lease");
                }
                false
            }
            Ok(Err(error)) => {
                if health.failed(error.to_string()) {
                    tracing::warn!(%error, "lease request failed; retrying");
                }
                false
            }
            Err(_) => {
                if health.failed(format!("no answer within {limit:?}")) {
                    tracing::warn!("lease request timed out; retrying");
                }
                false
            }
        }
    }

    fn publish(&mut self, leadership: Leadership) {
        let _ = self.leadership.send(leadership);
    }
}

impl Actor for LeaderElector {
    type Msg = LeaderElectorMessage;
    type State = LeaderElectorState;
    type Arguments = LeaderElectorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: LeaderElectorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let config = &args.ctx.config;
        let api: Api<Lease> = Api::namespaced(args.ctx.lease_client.clone(), &config.lease_namespace);
        let mut watch = JoinSet::new();
        let selector = format!("metadata.name={}", config.lease_name);
        let watch_api = api.clone();
        let me = myself.clone();
        watch.spawn(async move {
            let stream = watcher(watch_api, watcher::Config::default().fields(&selector)).default_backoff();
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                // The event carries the Lease: only a freed one is worth waking the elector for.
                let freed = match event {
                    Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease)) => {
                        lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()).is_none_or(str::is_empty)
                    }
                    Ok(watcher::Event::Delete(_)) => true,
                    _ => false,
                };
                if freed && me.cast(LeaderElectorMessage::LeaseFreed).is_err() {
                    break;
                }
            }
        });
        let _ = myself.cast(LeaderElectorMessage::Tick);
        Ok(LeaderElectorState {
            ctx: args.ctx,
            leadership: args.leadership,
            api,
            observed: None,
            observed_at: Instant::now(),
            renewed_at: None,
            epoch: None,
            watch,
            released: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let config = state.ctx.config.clone();
        match message {
            LeaderElectorMessage::Release(reply) => {
                if state.epoch.is_some() {
                    state.released = true;
                    state.epoch = None;
                    state.publish(Leadership::Follower);
                    let name = config.lease_name.clone();
                    let release = async {
                        let mut lease = state.api.get(&name).await?;
                        if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                            == Some(config.identity.as_str())
                        {
                            let old = lease.spec.clone().unwrap_or_default();
                            lease.spec = Some(LeaseSpec { holder_identity: None, acquire_time: None, ..old });
                            state.api.replace(&name, &PostParams::default(), &lease).await?;
                        }
                        Ok::<(), kube::Error>(())
                    };
                    match tokio::time::timeout(config.retry_period, release).await {
                        Ok(Ok(())) => tracing::info!(identity = %config.identity, "released the leader lease"),
                        Ok(Err(error)) => {
                            tracing::warn!(%error, "could not release the leader lease; it expires on its own")
                        }
                        Err(_) => tracing::warn!("releasing the leader lease timed out; it expires on its own"),
                    }
                }
                state.released = true;
                let _ = reply.send(());
            }
            LeaderElectorMessage::LeaseFreed if state.released || state.epoch.is_some() => {}
            LeaderElectorMessage::LeaseFreed => self.tick(&myself, state).await,
            LeaderElectorMessage::Tick => {
                if !state.released {
                    self.tick(&myself, state).await;
                    myself.send_after(config.retry_period, || LeaderElectorMessage::Tick);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.watch.abort_all();
        Ok(())
    }
}

impl LeaderElector {
    async fn tick(&self, _myself: &ActorRef<LeaderElectorMessage>, state: &mut LeaderElectorState) {
        let config = state.ctx.config.clone();
        // While leading, an attempt may take at most what is left of the renew deadline.
        let limit = match state.renewed_at {
            Some(at) if state.epoch.is_some() => {
                config.renew_deadline.saturating_sub(at.elapsed()).min(config.retry_period)
            }
            _ => config.retry_period,
        };
        let held = if limit.is_zero() { false } else { state.attempt(limit).await };
        if held {
            state.renewed_at = Some(Instant::now());
            if state.epoch.is_none() {
                let epoch = state.observed.as_ref().map_or(0, |o| o.transitions);
                state.epoch = Some(epoch);
                tracing::info!(identity = %config.identity, epoch, "acquired the leader lease");
                state.publish(Leadership::Leader(epoch));
            }
        } else if state.epoch.is_some() {
            let stale = state.renewed_at.is_none_or(|at| at.elapsed() >= config.renew_deadline);
            let lost = state.observed.as_ref().and_then(|o| o.holder.as_deref()).is_some_and(|h| h != config.identity);
            if stale || lost {
                tracing::warn!(identity = %config.identity, "lost the leader lease (not renewed within {:?}); stopping the leader group", config.renew_deadline);
                state.epoch = None;
                state.publish(Leadership::Follower);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(who: &str) -> Observed {
        Observed { holder: Some(who.into()), renew_time: Some("t".into()), transitions: 3 }
    }

    #[test]
    fn a_missing_or_free_lease_is_acquired() {
        let d = Duration::from_secs(15);
        assert_eq!(decide(None, "a", Duration::ZERO, d), Decision::Acquire);
        let free = Observed { holder: None, renew_time: None, transitions: 1 };
        assert_eq!(decide(Some(&free), "a", Duration::ZERO, d), Decision::Acquire);
    }

    #[test]
    fn a_lease_held_by_another_is_taken_only_after_it_went_unrenewed_for_the_lease_duration() {
        let d = Duration::from_secs(15);
        assert_eq!(decide(Some(&held_by("b")), "a", Duration::from_secs(14), d), Decision::Wait);
        assert_eq!(decide(Some(&held_by("b")), "a", Duration::from_secs(15), d), Decision::Acquire);
        assert_eq!(decide(Some(&held_by("a")), "a", Duration::from_secs(99), d), Decision::Renew);
    }
}
