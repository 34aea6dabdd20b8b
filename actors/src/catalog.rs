//! The instance catalog every replica keeps warm (the `CatalogRefresher` actor fills it): each
//! pool's instance types from the cloud, refreshed periodically.

use kube::ResourceExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rafter::api::NodePool;
use rafter::scheduling::instance_types::InstanceType;

#[derive(Debug, Default)]
struct Inner {
    /// Pool name → (the pool's resourceVersion when fetched, its types).
    types: HashMap<String, (Option<String>, Arc<Vec<InstanceType>>)>,
}

/// Instance types by pool, shared by the Catalog actor (writer) and the Solver (reader).
#[derive(Debug, Default)]
pub struct Catalog {
    inner: Mutex<Inner>,
}

impl Catalog {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        match self.inner.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// A pool's types as last fetched; `None` until fetched. Offerings the cloud avoids now are
    /// not marked here (`CloudProvider::mask_unavailable` does that, from the one cache).
    pub fn types_for(&self, name: &str) -> Option<Vec<InstanceType>> {
        self.with(|inner| inner.types.get(name).map(|(_, types)| types.as_ref().clone()))
    }

    /// One type of a pool, as fetched (capacity and allocatable; offerings not re-marked).
    pub fn instance_type(&self, pool: &str, name: &str) -> Option<InstanceType> {
        self.with(|inner| inner.types.get(pool)?.1.iter().find(|t| t.name == name).cloned())
    }

    pub fn needs_refresh(&self, pool: &NodePool) -> bool {
        let name = pool.name_any();
        self.with(|inner| inner.types.get(&name).is_none_or(|(rv, _)| rv != &pool.metadata.resource_version))
    }

    pub fn store(&self, pool: &NodePool, types: Vec<InstanceType>) {
        let name = pool.name_any();
        self.with(|inner| inner.types.insert(name, (pool.metadata.resource_version.clone(), Arc::new(types))));
    }
}
