//! Claims the Solver planned and the claims cache does not show yet, shared by the Solver (which
//! counts them), the Launcher (which creates them) and every actor that deletes claims.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rafter::api::nodeclaim::NodeClaim;
use tokio::time::Instant;

/// Claims the Solver planned that the claims cache does not show yet (the Launcher creates them a
/// few at a time, between cloud calls): the next batch counts them as capacity in flight instead
/// of buying it again. A claim leaves the list once the cache shows it, when Rafter deletes it or
/// the Launcher could not create it (so capacity that will never come is not counted), and at the
/// latest 10 s after its creation (deleted by someone else before the cache showed it).
#[derive(Debug, Default)]
pub struct InFlight(std::sync::Mutex<Vec<Planned>>);

#[derive(Debug)]
struct Planned {
    at: Instant,
    created: Option<Instant>,
    claim: Arc<NodeClaim>,
}

/// How long after its creation a claim is left to the cache: well beyond a watch's delay under load.
const CREATED_GRACE: Duration = Duration::from_secs(10);

impl InFlight {
    fn with<T>(&self, f: impl FnOnce(&mut Vec<Planned>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn record(&self, claims: Vec<Arc<NodeClaim>>) {
        let at = Instant::now();
        self.with(|list| list.extend(claims.into_iter().map(|claim| Planned { at, created: None, claim })));
    }

    /// The planned claims still to come, given the names the cache shows.
    pub fn pending(&self, cached: &HashSet<String>) -> Vec<Arc<NodeClaim>> {
        let now = Instant::now();
        self.with(|list| {
            list.retain(|p| {
                now.duration_since(p.at) < IN_FLIGHT_TTL
                    && p.created.is_none_or(|c| now.duration_since(c) < CREATED_GRACE)
                    && !p.claim.metadata.name.as_ref().is_some_and(|n| cached.contains(n))
            });
            list.iter().map(|p| p.claim.clone()).collect()
        })
    }

    /// The Launcher created the claim: the cache shows it within moments.
    pub fn created(&self, name: &str) {
        let now = Instant::now();
        self.with(|list| {
            for p in list.iter_mut().filter(|p| p.claim.metadata.name.as_deref() == Some(name)) {
                p.created = Some(now);
            }
        });
    }

    /// A planned claim that will not come (its create failed, or it was given up).
    pub fn forget(&self, name: &str) {
        self.with(|list| list.retain(|p| p.claim.metadata.name.as_deref() != Some(name)));
    }
}

/// How long a planned claim counts as in flight without the cache showing it: the Launcher creates
/// it within seconds, or failed to and batches its pods again.
pub const IN_FLIGHT_TTL: Duration = Duration::from_secs(30);
