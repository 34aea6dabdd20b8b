//! The instance catalog every replica keeps warm (the `CatalogRefresher` actor fills it): each pool's instance types from the cloud,
//! refreshed periodically, with offerings the cloud recently had no capacity for marked
//! unavailable for a while (the insufficient-capacity cache).

use kube::ResourceExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rafter::api::NodePool;
use rafter::cloud::OfferingKey;
use rafter::scheduling::instance_types::InstanceType;
use tokio::time::Instant;

#[derive(Debug, Default)]
struct Inner {
    /// Pool name → (the pool's resourceVersion when fetched, its types).
    types: HashMap<String, (Option<String>, Arc<Vec<InstanceType>>)>,
    unavailable: HashMap<OfferingKey, Instant>,
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

    /// A pool's types with recently exhausted offerings marked unavailable; `None` until fetched.
    pub fn types_for(&self, name: &str) -> Option<Vec<InstanceType>> {
        let now = Instant::now();
        self.with(|inner| {
            inner.unavailable.retain(|_, until| *until > now);
            let (_, types) = inner.types.get(name)?;
            let mut types = types.as_ref().clone();
            if !inner.unavailable.is_empty() {
                for it in &mut types {
                    for offering in &mut it.offerings {
                        let key = OfferingKey {
                            instance_type: it.name.clone(),
                            zone: offering.zone.clone(),
                            capacity_type: offering.capacity_type,
                        };
                        if inner.unavailable.contains_key(&key) {
                            offering.available = false;
                        }
                    }
                }
            }
            Some(types)
        })
    }

    /// One type of a pool, as fetched (capacity and allocatable; offerings not re-marked).
    pub fn instance_type(&self, pool: &str, name: &str) -> Option<InstanceType> {
        self.with(|inner| inner.types.get(pool)?.1.iter().find(|t| t.name == name).cloned())
    }

    /// Avoid these offerings for `ttl`.
    pub fn mark_unavailable(&self, offerings: &[OfferingKey], ttl: Duration) {
        let until = Instant::now() + ttl;
        self.with(|inner| {
            for o in offerings {
                inner.unavailable.insert(o.clone(), until);
            }
        });
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
