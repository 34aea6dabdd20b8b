//! The object store: one resourceVersion sequence, per-resource tables with change history, watch fan-out,
//! finalizers, graceful pod deletion and ownerReference garbage collection.
//!
//! Tables are persistent ordered maps, so a list takes an O(1) snapshot under the lock and is filtered and
//! serialised outside it, and `continue` tokens page through the snapshot they started from.
//!
//! It is one piece because the resourceVersion sequence, the tables and the watch fan-out change
//! together under one lock; a seventh of the file is its tests.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use imbl::OrdMap;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use rafter::mix::{name_suffix, splitmix64};

use super::error::ApiError;

/// Where a table lives: (group, plural).
pub type StorageKey = (String, String);
/// An object's place in its table: (namespace, name); the namespace is empty for cluster-scoped kinds.
pub type ObjKey = (String, String);

/// An object as stored: the JSON and its serialised bytes, made once per write.
#[derive(Debug)]
pub struct Stored {
    pub value: Value,
    pub bytes: Bytes,
    pub rv: u64,
}

impl Stored {
    fn new(value: Value, rv: u64) -> Arc<Self> {
        let bytes = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        Arc::new(Self { value, bytes, rv })
    }

    pub fn meta(&self, field: &str) -> &str {
        self.value.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or_default()
    }

    pub fn labels(&self) -> Option<&serde_json::Map<String, Value>> {
        self.value.pointer("/metadata/labels").and_then(Value::as_object)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change, with its watch line serialised once for every watcher.
#[derive(Debug)]
pub struct Change {
    pub kind: EventType,
    pub rv: u64,
    pub object: Arc<Stored>,
    pub previous: Option<Arc<Stored>>,
    pub line: Bytes,
}

/// What watchers receive: changes in resourceVersion order, and bookmarks at the current version.
#[derive(Debug, Clone)]
pub enum Broadcast {
    Change(Arc<Change>),
    Bookmark(u64),
}

/// The serialised watch line for an event.
pub fn watch_line(kind: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

struct Table {
    objects: OrdMap<ObjKey, Arc<Stored>>,
    history: VecDeque<Arc<Change>>,
    compacted: u64,
    tx: broadcast::Sender<Broadcast>,
}

/// Limits of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Changes kept per table for watches that resume; older resourceVersions get 410 Gone.
    pub history: usize,
    /// Changes a watcher may fall behind before its watch is closed (it then resumes from the history).
    pub watch_buffer: usize,
    /// How long a `continue` token stays valid.
    pub continue_ttl: Duration,
    /// Seed for uids and generated names.
    pub seed: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { history: 10_000, watch_buffer: 8_192, continue_ttl: Duration::from_secs(300), seed: 0x5eed }
    }
}

/// A table as a list saw it, kept for its `continue` tokens: (resourceVersion, table, objects, taken at).
type Snapshot = (u64, StorageKey, OrdMap<ObjKey, Arc<Stored>>, Instant);

struct Inner {
    rv: u64,
    counter: u64,
    tables: HashMap<StorageKey, Table>,
    /// owner uid → dependents.
    dependents: HashMap<String, HashSet<(StorageKey, ObjKey)>>,
    /// uid → where the object lives.
    uids: HashMap<String, (StorageKey, ObjKey)>,
    snapshots: VecDeque<Snapshot>,
}

/// How a delete is asked for.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub orphan: bool,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// What a write did.
#[derive(Debug, Clone)]
pub enum Written {
    Updated(Arc<Stored>),
    Deleted(Arc<Stored>),
    Unchanged(Arc<Stored>),
}

impl Written {
    pub fn object(&self) -> &Arc<Stored> {
        match self {
            Written::Updated(o) | Written::Deleted(o) | Written::Unchanged(o) => o,
        }
    }
}

/// What a modification closure decides.
#[derive(Debug)]
pub enum Outcome {
    Replace(Value),
    Delete(DeleteOptions),
    Keep,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    config: StoreConfig,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").field("rv", &self.rv).field("tables", &self.tables.len()).finish_non_exhaustive()
    }
}

/// The current time as the API server writes `metav1.Time`.
pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The API server's timestamp `seconds` from now.
pub fn time_in(seconds: i64) -> String {
    let ts = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .unwrap_or_else(|_| jiff::Timestamp::now());
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

const PODS: (&str, &str) = ("", "pods");

fn is_pods(key: &StorageKey) -> bool {
    key.0 == PODS.0 && key.1 == PODS.1
}

fn owner_uids(value: &Value) -> Vec<String> {
    value
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| refs.iter().filter_map(|r| r.get("uid").and_then(Value::as_str)).map(str::to_string).collect())
        .unwrap_or_default()
}

fn has_finalizers(value: &Value) -> bool {
    value.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty())
}

/// A pod bound to a node and not finished is deleted gracefully: its kubelet confirms.
fn graceful_pod(value: &Value) -> bool {
    let bound = value.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
    let phase = value.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default();
    bound && phase != "Succeeded" && phase != "Failed"
}

impl Store {
    pub fn new(config: StoreConfig) -> Self {
        let inner = Inner {
            rv: 1,
            counter: 0,
            tables: HashMap::new(),
            dependents: HashMap::new(),
            uids: HashMap::new(),
            snapshots: VecDeque::new(),
        };
        Self { inner: Mutex::new(inner), config }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied write: every write is built
        // first and committed with infallible steps, so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The newest resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, key: &StorageKey, objkey: &ObjKey) -> Option<Arc<Stored>> {
        self.lock().tables.get(key).and_then(|t| t.objects.get(objkey).cloned())
    }

    /// An O(1) snapshot of a table and the resourceVersion it is at.
    pub fn snapshot(&self, key: &StorageKey) -> (OrdMap<ObjKey, Arc<Stored>>, u64) {
        let inner = self.lock();
        (inner.tables.get(key).map(|t| t.objects.clone()).unwrap_or_default(), inner.rv)
    }

    /// Keeps a snapshot for a `continue` token.
    pub fn keep_snapshot(&self, key: &StorageKey, rv: u64, objects: OrdMap<ObjKey, Arc<Stored>>) {
        let mut inner = self.lock();
        let ttl = self.config.continue_ttl;
        inner.snapshots.retain(|(_, _, _, at)| at.elapsed() < ttl);
        if inner.snapshots.iter().any(|(r, k, _, _)| *r == rv && k == key) {
            return;
        }
        if inner.snapshots.len() >= 256 {
            inner.snapshots.pop_front();
        }
        inner.snapshots.push_back((rv, key.clone(), objects, Instant::now()));
    }

    /// The snapshot a `continue` token refers to, if it has not expired.
    pub fn kept_snapshot(&self, key: &StorageKey, rv: u64) -> Option<OrdMap<ObjKey, Arc<Stored>>> {
        let inner = self.lock();
        inner
            .snapshots
            .iter()
            .find(|(r, k, _, at)| *r == rv && k == key && at.elapsed() < self.config.continue_ttl)
            .map(|(_, _, objects, _)| objects.clone())
    }

    fn table<'a>(inner: &'a mut Inner, key: &StorageKey, buffer: usize) -> &'a mut Table {
        inner.tables.entry(key.clone()).or_insert_with(|| Table {
            objects: OrdMap::new(),
            history: VecDeque::new(),
            compacted: 0,
            tx: broadcast::channel(buffer).0,
        })
    }

    /// Subscribes to a table's changes after `from` (None: the current state as ADDED events first).
    #[allow(clippy::type_complexity)]
    pub fn watch(
        &self,
        key: &StorageKey,
        from: Option<u64>,
    ) -> Result<(Vec<Broadcast>, Vec<Arc<Stored>>, broadcast::Receiver<Broadcast>), ApiError> {
        let mut inner = self.lock();
        let buffer = self.config.watch_buffer;
        let table = Self::table(&mut inner, key, buffer);
        let rx = table.tx.subscribe();
        match from {
            None => Ok((Vec::new(), table.objects.values().cloned().collect(), rx)),
            Some(rv) => {
                if rv < table.compacted {
                    return Err(ApiError::gone(format!("too old resource version: {rv} ({})", table.compacted + 1)));
                }
                let start = table.history.partition_point(|c| c.rv <= rv);
                let replay = table.history.iter().skip(start).map(|c| Broadcast::Change(c.clone())).collect();
                Ok((replay, Vec::new(), rx))
            }
        }
    }

    /// Sends a bookmark at the current resourceVersion to every watcher.
    pub fn bookmark(&self) {
        let inner = self.lock();
        for table in inner.tables.values() {
            let _ = table.tx.send(Broadcast::Bookmark(inner.rv));
        }
    }

    /// Forgets the change history of a table, so watches from any older version get 410 Gone.
    pub fn compact(&self, key: &StorageKey) {
        let mut inner = self.lock();
        let rv = inner.rv;
        let table = Self::table(&mut inner, key, self.config.watch_buffer);
        table.history.clear();
        table.compacted = rv;
    }

    /// Watchers subscribed, over all tables (to see that closed watches leave nothing behind).
    pub fn watcher_count(&self) -> usize {
        self.lock().tables.values().map(|t| t.tx.receiver_count()).sum()
    }

    pub fn object_count(&self) -> usize {
        self.lock().tables.values().map(|t| t.objects.len()).sum()
    }

    /// Creates an object; `value` must carry `metadata.name` or `metadata.generateName`.
    pub fn create(
        &self,
        key: &StorageKey,
        namespaced: bool,
        mut value: Value,
        resource: &str,
        group: &str,
    ) -> Result<Arc<Stored>, ApiError> {
        let mut inner = self.lock();
        let namespace = value.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default().to_string();
        if namespaced {
            let ns_key = (String::new(), "namespaces".to_string());
            let exists =
                inner.tables.get(&ns_key).is_some_and(|t| t.objects.contains_key(&(String::new(), namespace.clone())));
            if !exists {
                return Err(ApiError::not_found("namespaces", "", &namespace));
            }
            let terminating = inner
                .tables
                .get(&ns_key)
                .and_then(|t| t.objects.get(&(String::new(), namespace.clone())))
                .is_some_and(|ns| ns.value.pointer("/metadata/deletionTimestamp").is_some());
            if terminating {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!("unable to create new content in namespace {namespace} because it is being terminated"),
                ));
            }
        }
        let mut name = value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        if name.is_empty() {
            let prefix =
                value.pointer("/metadata/generateName").and_then(Value::as_str).unwrap_or_default().to_string();
            for _ in 0..16 {
                inner.counter += 1;
                let x = splitmix64(self.config.seed ^ inner.counter.wrapping_mul(0x2545_f491_4f6c_dd1d));
                let suffix = name_suffix(x, 5);
                let candidate = format!("{prefix}{suffix}");
                let taken = inner
                    .tables
                    .get(key)
                    .is_some_and(|t| t.objects.contains_key(&(namespace.clone(), candidate.clone())));
                if !taken {
                    name = candidate;
                    break;
                }
            }
            if name.is_empty() {
                return Err(ApiError::new(
                    500,
                    "AlreadyExists",
                    format!("could not generate a unique name from {prefix:?}"),
                ));
            }
        }
        let objkey = (namespace.clone(), name.clone());
        if inner.tables.get(key).is_some_and(|t| t.objects.contains_key(&objkey)) {
            return Err(ApiError::already_exists(resource, group, &name));
        }
        inner.counter += 1;
        let a = splitmix64(self.config.seed.wrapping_add(inner.counter));
        let b = splitmix64(a);
        let uid = format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48 & 0x3fff),
            b & 0xffff_ffff_ffff
        );
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("name".into(), json!(name));
            meta.insert("uid".into(), json!(uid));
            meta.insert("creationTimestamp".into(), json!(now()));
            meta.insert("generation".into(), json!(1));
            meta.remove("deletionTimestamp");
            meta.remove("deletionGracePeriodSeconds");
        }
        let stored = self
            .commit(&mut inner, key, objkey.clone(), Some(value))
            .ok_or_else(|| ApiError::internal("create did not store"))?;
        // An object whose owners are all gone already (a controller acting on a stale cache) is
        // garbage: kube-controller-manager's garbage collector deletes it soon after, as here.
        let owners = owner_uids(&stored.value);
        if !owners.is_empty() && owners.iter().all(|uid| !inner.uids.contains_key(uid)) {
            let _ = self.delete_locked(&mut inner, key, &objkey, &DeleteOptions::default());
        }
        Ok(stored)
    }

    /// Reads, decides and writes under one lock, so the decision sees the object it replaces.
    pub fn modify(
        &self,
        key: &StorageKey,
        objkey: &ObjKey,
        not_found: impl FnOnce() -> ApiError,
        decide: impl FnOnce(&Arc<Stored>) -> Result<Outcome, ApiError>,
    ) -> Result<Written, ApiError> {
        let mut inner = self.lock();
        let current = inner.tables.get(key).and_then(|t| t.objects.get(objkey).cloned()).ok_or_else(not_found)?;
        match decide(&current)? {
            Outcome::Keep => Ok(Written::Unchanged(current)),
            Outcome::Delete(options) => self.delete_locked(&mut inner, key, objkey, &options),
            Outcome::Replace(value) => {
                if value == current.value {
                    return Ok(Written::Unchanged(current));
                }
                let finished = value.pointer("/metadata/deletionTimestamp").is_some()
                    && !has_finalizers(&value)
                    && value.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0) == 0;
                if finished {
                    self.commit(&mut inner, key, objkey.clone(), Some(value));
                    return self.delete_locked(&mut inner, key, objkey, &DeleteOptions::default());
                }
                let stored = self
                    .commit(&mut inner, key, objkey.clone(), Some(value))
                    .ok_or_else(|| ApiError::internal("update did not store"))?;
                Ok(Written::Updated(stored))
            }
        }
    }

    /// Deletes an object: finalizers and graceful pods first mark it terminating; otherwise it goes, and
    /// dependents whose owners are all gone follow (background propagation) unless orphaned.
    pub fn delete(
        &self,
        key: &StorageKey,
        objkey: &ObjKey,
        options: &DeleteOptions,
        not_found: impl FnOnce() -> ApiError,
    ) -> Result<Written, ApiError> {
        let mut inner = self.lock();
        if inner.tables.get(key).and_then(|t| t.objects.get(objkey)).is_none() {
            return Err(not_found());
        }
        self.delete_locked(&mut inner, key, objkey, options)
    }

    fn delete_locked(
        &self,
        inner: &mut Inner,
        key: &StorageKey,
        objkey: &ObjKey,
        options: &DeleteOptions,
    ) -> Result<Written, ApiError> {
        let Some(current) = inner.tables.get(key).and_then(|t| t.objects.get(objkey).cloned()) else {
            return Err(ApiError::not_found(&key.1, &key.0, &objkey.1));
        };
        let uid = current.meta("uid").to_string();
        if let Some(want) = &options.uid
            && *want != uid
        {
            return Err(ApiError::conflict(
                &key.1,
                &key.0,
                &objkey.1,
                &format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"),
            ));
        }
        if let Some(want) = &options.resource_version
            && *want != current.meta("resourceVersion")
        {
            return Err(ApiError::conflict(
                &key.1,
                &key.0,
                &objkey.1,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {}",
                    current.meta("resourceVersion")
                ),
            ));
        }
        if options.orphan {
            self.orphan_dependents(inner, &uid);
        }
        let grace = if is_pods(key) && graceful_pod(&current.value) {
            let default =
                current.value.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(30);
            options.grace_period.unwrap_or(default).max(0)
        } else {
            0
        };
        let terminating = current.value.pointer("/metadata/deletionTimestamp").is_some();
        let current_grace = current.value.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64);
        if has_finalizers(&current.value) || grace > 0 {
            if terminating && current_grace.is_some_and(|g| g <= grace) {
                return Ok(Written::Unchanged(current));
            }
            let mut value = current.value.clone();
            if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("deletionTimestamp".into(), json!(time_in(grace)));
                meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
            let stored = self
                .commit(inner, key, objkey.clone(), Some(value))
                .ok_or_else(|| ApiError::internal("delete did not store"))?;
            return Ok(Written::Updated(stored));
        }
        let removed =
            self.commit(inner, key, objkey.clone(), None).ok_or_else(|| ApiError::internal("delete did not remove"))?;
        if key.0.is_empty() && key.1 == "namespaces" {
            self.empty_namespace(inner, &objkey.1);
        }
        self.collect_garbage(inner, &uid);
        Ok(Written::Deleted(removed))
    }

    fn orphan_dependents(&self, inner: &mut Inner, owner: &str) {
        let dependents: Vec<(StorageKey, ObjKey)> =
            inner.dependents.get(owner).map(|d| d.iter().cloned().collect()).unwrap_or_default();
        for (key, objkey) in dependents {
            let Some(current) = inner.tables.get(&key).and_then(|t| t.objects.get(&objkey).cloned()) else { continue };
            let mut value = current.value.clone();
            if let Some(refs) = value.pointer_mut("/metadata/ownerReferences").and_then(Value::as_array_mut) {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(owner));
            }
            self.commit(inner, &key, objkey, Some(value));
        }
    }

    fn collect_garbage(&self, inner: &mut Inner, owner: &str) {
        let dependents: Vec<(StorageKey, ObjKey)> =
            inner.dependents.remove(owner).map(|d| d.into_iter().collect()).unwrap_or_default();
        let mut dependents = dependents;
        dependents.sort();
        for (key, objkey) in dependents {
            let Some(current) = inner.tables.get(&key).and_then(|t| t.objects.get(&objkey).cloned()) else { continue };
            let owners = owner_uids(&current.value);
            if owners.iter().all(|uid| !inner.uids.contains_key(uid))
                && current.value.pointer("/metadata/deletionTimestamp").is_none()
            {
                let _ = self.delete_locked(inner, &key, &objkey, &DeleteOptions::default());
            }
        }
    }

    fn empty_namespace(&self, inner: &mut Inner, namespace: &str) {
        let mut doomed = Vec::new();
        for (key, table) in &inner.tables {
            for (objkey, _) in table.objects.iter().filter(|(k, _)| k.0 == namespace) {
                doomed.push((key.clone(), objkey.clone()));
            }
        }
        for (key, objkey) in doomed {
            let options = DeleteOptions { grace_period: Some(0), ..DeleteOptions::default() };
            let finalizers_free = inner.tables.get(&key).and_then(|t| t.objects.get(&objkey)).map(|o| {
                let mut v = o.value.clone();
                if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("finalizers");
                }
                v
            });
            if let Some(value) = finalizers_free {
                self.commit(inner, &key, objkey.clone(), Some(value));
            }
            let _ = self.delete_locked(inner, &key, &objkey, &options);
        }
    }

    /// Writes (Some) or removes (None) one object: the next resourceVersion, the indexes, the history and
    /// the watch fan-out. Returns the object as stored (or as it was at deletion).
    fn commit(&self, inner: &mut Inner, key: &StorageKey, objkey: ObjKey, value: Option<Value>) -> Option<Arc<Stored>> {
        inner.rv += 1;
        let rv = inner.rv;
        let history_limit = self.config.history;
        let buffer = self.config.watch_buffer;
        let previous = inner.tables.get(key).and_then(|t| t.objects.get(&objkey).cloned());
        let (kind, stored) = match value {
            Some(mut value) => {
                if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("resourceVersion".into(), json!(rv.to_string()));
                }
                let stored = Stored::new(value, rv);
                let kind = if previous.is_some() { EventType::Modified } else { EventType::Added };
                (kind, stored)
            }
            None => {
                let previous = previous.clone()?;
                let mut value = previous.value.clone();
                if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("resourceVersion".into(), json!(rv.to_string()));
                }
                (EventType::Deleted, Stored::new(value, rv))
            }
        };
        let uid = stored.meta("uid").to_string();
        let old_owners = previous.as_ref().map(|p| owner_uids(&p.value)).unwrap_or_default();
        let new_owners = if kind == EventType::Deleted { Vec::new() } else { owner_uids(&stored.value) };
        for owner in old_owners.iter().filter(|o| !new_owners.contains(o)) {
            if let Some(set) = inner.dependents.get_mut(owner) {
                set.remove(&(key.clone(), objkey.clone()));
                if set.is_empty() {
                    inner.dependents.remove(owner);
                }
            }
        }
        for owner in new_owners.iter().filter(|o| !old_owners.contains(o)) {
            inner.dependents.entry(owner.clone()).or_default().insert((key.clone(), objkey.clone()));
        }
        if kind == EventType::Deleted {
            inner.uids.remove(&uid);
        } else {
            inner.uids.insert(uid, (key.clone(), objkey.clone()));
        }
        let line = watch_line(kind.as_str(), &stored.bytes);
        let change = Arc::new(Change { kind, rv, object: stored.clone(), previous, line });
        let table = Self::table(inner, key, buffer);
        if kind == EventType::Deleted {
            table.objects.remove(&objkey);
        } else {
            table.objects.insert(objkey, stored.clone());
        }
        table.history.push_back(change.clone());
        while table.history.len() > history_limit {
            if let Some(old) = table.history.pop_front() {
                table.compacted = old.rv;
            }
        }
        let _ = table.tx.send(Broadcast::Change(change));
        Some(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(plural: &str) -> StorageKey {
        (String::new(), plural.to_string())
    }

    fn store() -> Store {
        let store = Store::new(StoreConfig { history: 4, ..StoreConfig::default() });
        store
            .create(&key("namespaces"), false, json!({"metadata": {"name": "default"}}), "namespaces", "")
            .expect("namespace");
        store
    }

    fn pod(name: &str, owner: Option<&str>) -> Value {
        let mut pod = json!({"metadata": {"name": name, "namespace": "default"}, "spec": {}});
        if let Some(uid) = owner {
            pod["metadata"]["ownerReferences"] =
                json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": uid}]);
        }
        pod
    }

    #[test]
    fn every_write_takes_the_next_resource_version() {
        let store = store();
        let a = store.create(&key("pods"), true, pod("a", None), "pods", "").expect("a");
        let b = store.create(&key("pods"), true, pod("b", None), "pods", "").expect("b");
        assert!(b.rv > a.rv);
        assert_eq!(b.meta("resourceVersion"), b.rv.to_string());
        let err = store.create(&key("pods"), true, pod("a", None), "pods", "").expect_err("exists");
        assert_eq!((err.code, err.reason), (409, "AlreadyExists"));
    }

    #[test]
    fn a_namespaced_object_needs_its_namespace() {
        let store = store();
        let mut p = pod("a", None);
        p["metadata"]["namespace"] = json!("nope");
        assert_eq!(store.create(&key("pods"), true, p, "pods", "").expect_err("no ns").code, 404);
    }

    #[test]
    fn finalizers_keep_an_object_until_they_are_removed() {
        let store = store();
        let mut p = pod("a", None);
        p["metadata"]["finalizers"] = json!(["x"]);
        store.create(&key("pods"), true, p, "pods", "").expect("a");
        let objkey = ("default".to_string(), "a".to_string());
        let written =
            store.delete(&key("pods"), &objkey, &DeleteOptions::default(), ApiError::path_not_found).expect("deletes");
        assert!(matches!(written, Written::Updated(_)));
        let current = store.get(&key("pods"), &objkey).expect("still there");
        assert!(current.value.pointer("/metadata/deletionTimestamp").is_some());
        store
            .modify(&key("pods"), &objkey, ApiError::path_not_found, |o| {
                let mut v = o.value.clone();
                v["metadata"]["finalizers"] = json!([]);
                Ok(Outcome::Replace(v))
            })
            .expect("removes finalizer");
        assert!(store.get(&key("pods"), &objkey).is_none());
    }

    #[test]
    fn deleting_an_owner_deletes_its_dependents() {
        let store = store();
        let owner = store
            .create(
                &key("configmaps"),
                true,
                json!({"metadata": {"name": "o", "namespace": "default"}}),
                "configmaps",
                "",
            )
            .expect("owner");
        let uid = owner.meta("uid").to_string();
        store.create(&key("pods"), true, pod("a", Some(&uid)), "pods", "").expect("a");
        store.create(&key("pods"), true, pod("b", None), "pods", "").expect("b");
        store
            .delete(
                &key("configmaps"),
                &("default".into(), "o".into()),
                &DeleteOptions::default(),
                ApiError::path_not_found,
            )
            .expect("deletes");
        assert!(store.get(&key("pods"), &("default".into(), "a".into())).is_none());
        assert!(store.get(&key("pods"), &("default".into(), "b".into())).is_some());
    }

    #[test]
    fn a_watch_from_before_the_kept_history_is_gone() {
        let store = store();
        let first = store.create(&key("pods"), true, pod("p0", None), "pods", "").expect("p0");
        for i in 1..8 {
            store.create(&key("pods"), true, pod(&format!("p{i}"), None), "pods", "").expect("pod");
        }
        let err = store.watch(&key("pods"), Some(first.rv)).expect_err("compacted");
        assert_eq!(err.code, 410);
        let (replay, _, _) = store.watch(&key("pods"), Some(store.current_rv() - 2)).expect("recent");
        assert_eq!(replay.len(), 2);
    }
}
