//! CatalogRefresher: fetches each pool's instance types into the catalog, at start, when a pool
//! changes, and every `REFRESH`.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;

use crate::context::Ctx;

/// Refreshes the catalog: at start, whenever a pool changes, and every `REFRESH`.
#[derive(Debug)]
pub struct CatalogRefresher;

#[derive(Debug)]
pub enum CatalogMessage {
    /// Fetch types for pools that are new or changed (`all`: for every pool).
    Refresh { all: bool },
}

#[derive(Debug)]
pub struct CatalogState {
    ctx: Ctx,
    last_full: Instant,
}

pub type CatalogArgs = Ctx;

/// How often every pool's types are fetched again, as Karpenter does for instance types and prices.
pub const REFRESH: Duration = Duration::from_secs(300);

impl Actor for CatalogRefresher {
    type Msg = CatalogMessage;
    type State = CatalogState;
    type Arguments = CatalogArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, ctx: Ctx) -> Result<Self::State, ActorProcessingErr> {
        let _ = myself.cast(CatalogMessage::Refresh { all: true });
        Ok(CatalogState { ctx, last_full: Instant::now() })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let CatalogMessage::Refresh { all } = message;
        let all = all || state.last_full.elapsed() >= REFRESH;
        if all {
            state.last_full = Instant::now();
        }
        for pool in state.ctx.caches.effective_pools() {
            if !all && !state.ctx.catalog.needs_refresh(&pool) {
                continue;
            }
            match state.ctx.cloud.instance_types(&pool).await {
                Ok(types) => state.ctx.catalog.store(&pool, types),
                Err(error) => {
                    tracing::warn!(pool = ?pool.metadata.name, %error, "cannot fetch instance types; keeping the last good list")
                }
            }
        }
        // Pools appear through the watch; look for new ones often, fetch all rarely.
        myself.send_after(Duration::from_millis(250), || CatalogMessage::Refresh { all: false });
        Ok(())
    }
}
