//! The watched caches every replica keeps warm (hot standby), and the reflectors that fill them;
//! the actors that run the reflectors are `ClusterState` and `PodWatcher`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use rafter::api::decode::{DecodeError, decode};
use rafter::api::legacy::{AWSNodeTemplate, Provisioner};
use rafter::api::nodeclaim::NodeClaim;
use rafter::api::{EC2NodeClass, NodePool};
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

/// A store that a restarted watcher replaces.
#[derive(Debug)]
pub struct Slot<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    store: RwLock<Option<Store<K>>>,
    synced: AtomicBool,
}

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Default for Slot<K> {
    fn default() -> Self {
        Self { store: RwLock::new(None), synced: AtomicBool::new(false) }
    }
}

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Slot<K> {
    /// Every cached object.
    pub fn all(&self) -> Vec<Arc<K>> {
        let guard = match self.store.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard.as_ref().map(Store::state).unwrap_or_default()
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    fn replace(&self, store: Option<Store<K>>) {
        self.synced.store(false, Ordering::Release);
        match self.store.write() {
            Ok(mut g) => *g = store,
            Err(p) => *p.into_inner() = store,
        }
    }

    /// Marks a kind the API server does not serve (legacy CRDs not installed) as synced and empty.
    pub fn absent(&self) {
        self.replace(None);
        self.synced.store(true, Ordering::Release);
    }
}

/// What this replica knows about the cluster.
#[derive(Debug, Default)]
pub struct Caches {
    pub pods: Slot<Pod>,
    pub nodes: Slot<Node>,
    pub claims: Slot<NodeClaim>,
    pub pools: Slot<NodePool>,
    pub classes: Slot<EC2NodeClass>,
    pub provisioners: Slot<Provisioner>,
    pub templates: Slot<AWSNodeTemplate>,
    pub daemonsets: Slot<DaemonSet>,
    pub pdbs: Slot<PodDisruptionBudget>,
    /// Storage, for the zones pending pods' volumes confine them to.
    pub pvcs: Slot<PersistentVolumeClaim>,
    pub pvs: Slot<PersistentVolume>,
    pub storage_classes: Slot<StorageClass>,
    /// Objects of Rafter's own kinds that do not decode: left out of the caches (so one bad
    /// object never blocks the others) and reported on the object by the leader.
    pub rejected: Arc<Rejected>,
    /// Wakes the reconcilers when nodes or claims change.
    pub changed: tokio::sync::Notify,
}

/// A stored object the watch could not decode, as the API server holds it.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub error: DecodeError,
    pub object: DynamicObject,
}

/// The undecodable objects, by (kind, name).
#[derive(Debug, Default)]
pub struct Rejected(Mutex<BTreeMap<(&'static str, String), Rejection>>);

impl Rejected {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(&'static str, String), Rejection>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every rejected object now.
    pub fn all(&self) -> BTreeMap<(&'static str, String), Rejection> {
        self.lock().clone()
    }

    /// Records a rejection; whether it is new (or says something new).
    fn insert(&self, kind: &'static str, name: String, rejection: Rejection) -> bool {
        let mut map = self.lock();
        let new = map.get(&(kind, name.clone())).is_none_or(|old| old.error != rejection.error);
        map.insert((kind, name), rejection);
        new
    }

    fn remove(&self, kind: &'static str, name: &str) {
        let mut map = self.lock();
        // The common case, on every decoded event: nothing was ever rejected.
        if !map.is_empty() {
            map.remove(&(kind, name.to_string()));
        }
    }

    fn clear(&self, kind: &'static str) {
        self.lock().retain(|(k, _), _| *k != kind);
    }
}

impl Caches {
    /// Whether every watch has listed once: `/readyz` is green only then.
    pub fn synced(&self) -> bool {
        self.pods.is_synced()
            && self.nodes.is_synced()
            && self.claims.is_synced()
            && self.pools.is_synced()
            && self.classes.is_synced()
            && self.provisioners.is_synced()
            && self.templates.is_synced()
            && self.daemonsets.is_synced()
            && self.pdbs.is_synced()
            && self.pvcs.is_synced()
            && self.pvs.is_synced()
            && self.storage_classes.is_synced()
    }

    /// The storage objects now, owned, for a solve off the actor's thread.
    pub fn volumes(&self) -> Volumes {
        Volumes { claims: self.pvcs.all(), volumes: self.pvs.all(), classes: self.storage_classes.all() }
    }

    /// [`Self::effective_pools`] by name.
    pub fn pools_by_name(&self) -> std::collections::HashMap<String, NodePool> {
        self.effective_pools().into_iter().map(|p| (p.name_any(), p)).collect()
    }

    /// NodePools, with legacy Provisioners converted (a Provisioner that cannot be converted is
    /// reported and left out; a NodePool of the same name wins).
    pub fn effective_pools(&self) -> Vec<NodePool> {
        let mut pools: Vec<NodePool> = self.pools.all().iter().map(|p| p.as_ref().clone()).collect();
        let templates: Vec<AWSNodeTemplate> = self.templates.all().iter().map(|t| t.as_ref().clone()).collect();
        for provisioner in self.provisioners.all() {
            match rafter::api::convert::node_pool_from_provisioner(&provisioner, &templates) {
                Ok(pool) if !pools.iter().any(|p| p.metadata.name == pool.metadata.name) => pools.push(pool),
                Ok(_) => {}
                Err(errors) => {
                    let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    tracing::warn!(provisioner = ?provisioner.metadata.name, "Provisioner cannot be used: {}", reasons.join("; "));
                }
            }
        }
        pools
    }
}

/// A fresh store in its slot, marked synced once its first list is in; the writer fills it.
fn install<K>(
    tasks: &mut JoinSet<()>,
    slot: &'static str,
    caches: &Arc<Caches>,
    pick: fn(&Caches) -> &Slot<K>,
) -> reflector::store::Writer<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    pick(caches).replace(Some(store.clone()));
    let ready_caches = caches.clone();
    tasks.spawn(async move {
        if store.wait_until_ready().await.is_ok() {
            pick(&ready_caches).synced.store(true, Ordering::Release);
            tracing::debug!(cache = slot, "cache synced");
        }
    });
    writer
}

/// Runs one reflector into `slot` until the task is aborted, calling `on_applied` for each object
/// the watch delivers. A missing resource (legacy CRDs not installed) leaves the slot empty.
pub fn reflect<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    slot: &'static str,
    caches: Arc<Caches>,
    pick: fn(&Caches) -> &Slot<K>,
    on_applied: impl Fn(&K) + Send + 'static,
) where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let writer = install(tasks, slot, &caches, pick);
    tasks.spawn(async move {
        let stream =
            reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff()).applied_objects();
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(object) => {
                    on_applied(&object);
                    caches.changed.notify_waiters();
                }
                Err(error) => tracing::debug!(cache = slot, %error, "watch interrupted; resuming"),
            }
        }
    });
}

/// Decodes one object of a watch on Rafter's own kinds: an object that does not fit its type is
/// recorded as rejected and skipped, so the rest of the list still fills the cache.
fn decode_object<K: DeserializeOwned>(kind: &'static str, rejected: &Rejected, object: DynamicObject) -> Option<K> {
    let name = object.name_any();
    // The object's fields are moved, not copied, into the document the type is decoded from:
    // every watch event of every claim passes through here.
    let DynamicObject { types, metadata, mut data } = object;
    if let serde_json::Value::Object(fields) = &mut data {
        if let Some(t) = &types {
            fields.insert("apiVersion".into(), t.api_version.clone().into());
            fields.insert("kind".into(), t.kind.clone().into());
        }
        fields.insert("metadata".into(), serde_json::to_value(&metadata).unwrap_or_default());
    }
    match decode::<K>(&data) {
        Ok(k) => {
            rejected.remove(kind, &name);
            Some(k)
        }
        Err(error) => {
            let message = error.to_string();
            let object = DynamicObject { types, metadata, data };
            if rejected.insert(kind, name.clone(), Rejection { error, object }) {
                tracing::warn!(kind, %name, "{kind} {name} does not decode and is ignored until it is fixed: {message}");
            }
            None
        }
    }
}

/// A watch of one of Rafter's own kinds that reads objects untyped and decodes each on its own:
/// one that does not decode is recorded in `rejected` and left out.
pub fn decoded_events<K>(
    client: kube::Client,
    kind: &'static str,
    rejected: Arc<Rejected>,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let api: Api<DynamicObject> = Api::all_with(client, &ApiResource::erase::<K>(&()));
    watcher(api, watcher::Config::default()).default_backoff().filter_map(move |event| {
        let rejected = &rejected;
        let typed = match event {
            Err(e) => Some(Err(e)),
            Ok(watcher::Event::Init) => {
                rejected.clear(kind);
                Some(Ok(watcher::Event::Init))
            }
            Ok(watcher::Event::InitDone) => Some(Ok(watcher::Event::InitDone)),
            Ok(watcher::Event::InitApply(o)) => {
                decode_object(kind, rejected, o).map(|k| Ok(watcher::Event::InitApply(k)))
            }
            Ok(watcher::Event::Apply(o)) => decode_object(kind, rejected, o).map(|k| Ok(watcher::Event::Apply(k))),
            Ok(watcher::Event::Delete(o)) => {
                let name = o.name_any();
                let typed = decode_object(kind, rejected, o).map(|k| Ok(watcher::Event::Delete(k)));
                rejected.remove(kind, &name);
                typed
            }
        };
        futures::future::ready(typed)
    })
}

/// Like [`reflect`], for Rafter's own kinds: the watch reads objects untyped and decodes each on
/// its own, so an object stored under an older, looser schema (`operator: Sometimes`) is skipped
/// and reported instead of failing every list (and with it all provisioning).
pub fn reflect_custom<K>(
    tasks: &mut JoinSet<()>,
    client: kube::Client,
    kind: &'static str,
    caches: Arc<Caches>,
    pick: fn(&Caches) -> &Slot<K>,
) where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let writer = install(tasks, kind, &caches, pick);
    let typed = decoded_events::<K>(client, kind, caches.rejected.clone());
    tasks.spawn(async move {
        let stream = reflector::reflector(writer, typed).applied_objects();
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => caches.changed.notify_waiters(),
                Err(error) => tracing::debug!(cache = kind, %error, "watch interrupted; resuming"),
            }
        }
    });
}

/// Whether the API server serves a custom kind (the legacy CRDs are optional).
pub async fn served<K: Resource<DynamicType = ()>>(client: &kube::Client) -> bool {
    let path = format!("{}/{}", K::group(&()), K::version(&()));
    match client.list_api_group_resources(&path).await {
        Ok(list) => list.resources.iter().any(|r| r.name == K::plural(&())),
        Err(_) => false,
    }
}

/// PersistentVolumeClaims, PersistentVolumes and StorageClasses as the caches held them.
#[derive(Debug, Clone, Default)]
pub struct Volumes {
    pub claims: Vec<Arc<PersistentVolumeClaim>>,
    pub volumes: Vec<Arc<PersistentVolume>>,
    pub classes: Vec<Arc<StorageClass>>,
}

impl Volumes {
    /// The borrowed form the core's decisions take.
    pub fn view(&self) -> rafter::state::volumes::Storage<'_> {
        rafter::state::volumes::Storage { claims: &self.claims, volumes: &self.volumes, classes: &self.classes }
    }
}
