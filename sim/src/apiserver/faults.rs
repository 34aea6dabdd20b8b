//! Fault injection, deterministic under a seed: latency, error rates per verb and resource, dropped
//! watches, partitioned clients, and pausing the whole server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use rafter::mix::{fnv1a, splitmix64, unit};

use super::error::ApiError;

/// An error rate for requests matching a verb and resource (either may be `*` or absent: any).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRule {
    #[serde(default)]
    pub verb: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
    /// 429, 500 or 503.
    pub code: u16,
    /// Share of matching requests that fail, 0 to 1.
    pub rate: f64,
}

/// How a partitioned client is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PartitionMode {
    /// Requests are held until the partition is lifted (the client's own timeouts fire).
    Hang,
    /// The connection is closed without an answer.
    Refuse,
}

/// A client cut off from the server, matched by a substring of its user agent or its bearer token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Partition {
    pub client: String,
    pub mode: PartitionMode,
}

/// Every fault in force.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultSpec {
    pub seed: u64,
    pub latency_ms: u64,
    pub jitter_ms: u64,
    /// The verbs latency and jitter apply to (`get`, `list`, `watch`, `create`, `update`,
    /// `patch`, `delete`; `write` for the four that change objects); empty: every request.
    pub latency_verbs: Vec<String>,
    pub errors: Vec<ErrorRule>,
    pub partitions: Vec<Partition>,
    pub paused: bool,
}

/// What happens to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Proceed,
    Fail(ApiError),
    Hang,
    Refuse,
}

/// The fault state shared by every connection.
#[derive(Debug)]
pub struct Faults {
    /// Whether any fault is set: the common case (none) costs one atomic load per request.
    active: AtomicBool,
    spec: RwLock<FaultSpec>,
    counters: Mutex<HashMap<(usize, String, String), u64>>,
    changed: watch::Sender<u64>,
    drop_watches: watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            active: AtomicBool::new(false),
            spec: RwLock::new(FaultSpec::default()),
            counters: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            drop_watches: watch::channel(0).0,
        }
    }
}

impl Faults {
    /// Whether any fault is set.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    pub fn spec(&self) -> FaultSpec {
        self.spec.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces every fault; counters restart so the same spec gives the same sequence.
    pub fn set(&self, spec: FaultSpec) {
        self.active.store(spec != FaultSpec::default(), Ordering::SeqCst);
        *self.spec.write().unwrap_or_else(|p| p.into_inner()) = spec;
        self.counters.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.changed.send_modify(|g| *g += 1);
    }

    pub fn update(&self, change: impl FnOnce(&mut FaultSpec)) {
        let mut spec = self.spec();
        change(&mut spec);
        self.set(spec);
    }

    pub fn clear(&self) {
        self.set(FaultSpec::default());
    }

    /// Closes every open watch now; clients resume from their last resourceVersion.
    pub fn drop_watches(&self) {
        self.drop_watches.send_modify(|g| *g += 1);
    }

    pub fn watch_drops(&self) -> watch::Receiver<u64> {
        self.drop_watches.subscribe()
    }

    pub fn pause(&self) {
        self.update(|s| s.paused = true);
    }

    pub fn resume(&self) {
        self.update(|s| s.paused = false);
    }

    /// Waits while the server is paused.
    pub async fn wait_unpaused(&self) {
        if !self.active.load(Ordering::SeqCst) {
            return;
        }
        let mut rx = self.changed.subscribe();
        while self.spec().paused {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Decides a request's fate and the latency to add. Error draws are a pure function of the seed,
    /// the rule, the verb, the resource and how many such requests came before.
    pub fn decide(&self, verb: &str, resource: &str, user_agent: &str, token: &str) -> (Duration, Decision) {
        if !self.active.load(Ordering::SeqCst) {
            return (Duration::ZERO, Decision::Proceed);
        }
        let spec = self.spec();
        for p in &spec.partitions {
            if !p.client.is_empty() && (user_agent.contains(&p.client) || token == p.client) {
                return (Duration::ZERO, if p.mode == PartitionMode::Hang { Decision::Hang } else { Decision::Refuse });
            }
        }
        let slowed = spec.latency_verbs.is_empty()
            || spec
                .latency_verbs
                .iter()
                .any(|v| v == verb || (v == "write" && matches!(verb, "create" | "update" | "patch" | "delete")));
        let mut latency = if slowed { Duration::from_millis(spec.latency_ms) } else { Duration::ZERO };
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if spec.jitter_ms > 0 && slowed {
            let n = counters.entry((usize::MAX, verb.to_string(), resource.to_string())).or_insert(0);
            *n += 1;
            let x = splitmix64(spec.seed ^ fnv1a(verb) ^ fnv1a(resource).rotate_left(17) ^ n.wrapping_mul(0x9e37));
            latency += Duration::from_millis(x % (spec.jitter_ms + 1));
        }
        for (i, rule) in spec.errors.iter().enumerate() {
            let verb_ok = rule.verb.as_deref().is_none_or(|v| v == "*" || v == verb);
            let resource_ok = rule.resource.as_deref().is_none_or(|r| r == "*" || r == resource);
            if !(verb_ok && resource_ok) {
                continue;
            }
            let n = counters.entry((i, verb.to_string(), resource.to_string())).or_insert(0);
            *n += 1;
            let x = splitmix64(
                spec.seed
                    ^ (i as u64).wrapping_mul(0x1234_5678)
                    ^ fnv1a(verb)
                    ^ fnv1a(resource).rotate_left(29)
                    ^ n.wrapping_mul(0x2545_f491),
            );
            if unit(x) < rule.rate {
                let error = match rule.code {
                    429 => ApiError::too_many_requests(
                        "the server has received too many requests and has asked us to try again later (injected)",
                    ),
                    503 => {
                        let mut e = ApiError::new(
                            503,
                            "ServiceUnavailable",
                            "the server is currently unable to handle the request (injected)",
                        );
                        e.retry_after = Some(1);
                        e
                    }
                    code => ApiError::new(
                        code,
                        "InternalError",
                        "an error on the server (injected) has prevented the request from succeeding",
                    ),
                };
                return (latency, Decision::Fail(error));
            }
        }
        (latency, Decision::Proceed)
    }

    /// Resolves when the fault spec changes (a hanging request re-decides then).
    pub async fn changed(&self) {
        let mut rx = self.changed.subscribe();
        let _ = rx.changed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failures(faults: &Faults) -> Vec<bool> {
        (0..200).map(|_| matches!(faults.decide("create", "pods", "ua", "").1, Decision::Fail(_))).collect()
    }

    #[test]
    fn error_injection_is_deterministic_under_a_seed() {
        let faults = Faults::default();
        let spec = FaultSpec {
            seed: 7,
            errors: vec![ErrorRule {
                verb: Some("create".into()),
                resource: Some("pods".into()),
                code: 503,
                rate: 0.3,
            }],
            ..FaultSpec::default()
        };
        faults.set(spec.clone());
        let first = failures(&faults);
        faults.set(spec);
        assert_eq!(first, failures(&faults));
        let rate = first.iter().filter(|f| **f).count() as f64 / 200.0;
        assert!((0.15..0.45).contains(&rate), "rate {rate}");
        assert_eq!(faults.decide("get", "pods", "ua", "").1, Decision::Proceed, "other verbs are untouched");
    }

    #[test]
    fn a_partitioned_client_is_matched_by_user_agent_or_token() {
        let faults = Faults::default();
        faults.set(FaultSpec {
            partitions: vec![Partition { client: "replica-1".into(), mode: PartitionMode::Hang }],
            ..FaultSpec::default()
        });
        assert_eq!(faults.decide("get", "leases", "rafter/replica-1", "").1, Decision::Hang);
        assert_eq!(faults.decide("get", "leases", "rafter/replica-2", "").1, Decision::Proceed);
        assert_eq!(faults.decide("get", "leases", "x", "replica-1").1, Decision::Hang);
    }
}
