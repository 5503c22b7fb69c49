//! The versioned object store: the objects of every served type, one
//! store-wide monotonically increasing resourceVersion, the history of
//! changes that watches resume from, compaction, consistent list snapshots,
//! and the fan-out of new changes to open watches.
//!
//! Like etcd behind kube-apiserver: every change bumps the revision and
//! becomes the object's `resourceVersion`; history holds every change after
//! `compacted`, so a watch from resourceVersion `X` can be served exactly
//! when `X >= compacted` and the state at any such revision can be rebuilt
//! (for `resourceVersionMatch=Exact` and `continue` tokens).

use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::error::HookError;
use crate::registry::ResourceType;

/// An object's key within its type: (namespace, name); namespace is empty for
/// cluster-scoped kinds.
pub(crate) type Key = (String, String);

/// The objects of one type, shared copy-on-write with list snapshots.
type Objects = Arc<BTreeMap<Key, Arc<Value>>>;

/// How many rebuilt or paged states are kept for `continue` tokens.
const SNAPSHOT_CACHE: usize = 16;

/// What a change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One change, as history keeps it and watches receive it.
#[derive(Debug)]
pub(crate) struct Change {
    /// The revision this change made.
    pub(crate) rv: u64,
    /// Index of the resource type in the registry.
    pub(crate) resource: usize,
    pub(crate) kind: ChangeKind,
    /// The object after the change; for a deletion, its last state with the
    /// deletion's resourceVersion.
    pub(crate) object: Arc<Value>,
    /// The object before the change (modifications and deletions).
    pub(crate) previous: Option<Arc<Value>>,
}

/// Where a list is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ListFrom {
    /// The newest state.
    Current,
    /// The state at exactly this revision.
    Exact(u64),
    /// Any state at least this new (served from the newest).
    NotOlderThan(u64),
    /// The next page of a list at revision `rv`, after key `after`.
    Continue { rv: u64, after: Key },
}

/// Why a list could not be served.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ListError {
    /// The revision asked for (or the token's) is compacted away.
    Expired { continuing: bool },
    /// The revision asked for is newer than the store's.
    TooLarge { requested: u64, current: u64 },
}

/// One page of a list.
#[derive(Debug)]
pub(crate) struct Page {
    /// The list's resourceVersion (the same on every page of one list).
    pub(crate) rv: u64,
    pub(crate) items: Vec<Arc<Value>>,
    /// The key of the last item, when more matching items follow.
    pub(crate) next: Option<Key>,
    /// How many matching items follow, when counted.
    pub(crate) remaining: Option<usize>,
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WatchFrom {
    /// Synthetic `ADDED` events for the current objects, then new changes.
    Current,
    /// Every change after this revision.
    After(u64),
}

/// What a new watch sends first, and its feed of later changes.
pub(crate) struct WatchStart {
    /// Current objects to send as `ADDED` (for [`WatchFrom::Current`]).
    pub(crate) initial: Vec<Arc<Value>>,
    /// Changes from history to send first (for [`WatchFrom::After`]).
    pub(crate) replay: Vec<Arc<Change>>,
    /// The store's revision when the watch started.
    pub(crate) rv: u64,
    /// Changes made after the start.
    pub(crate) feed: broadcast::Receiver<Arc<Change>>,
}

/// Why [`Store::write`] wrote nothing.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The result is not a valid object of its type.
    Invalid(String),
    /// The change refused, with the `Status` to answer.
    Rejected(Value),
}

/// What [`Store::write`] did.
#[derive(Debug)]
pub(crate) struct Written {
    /// The object as stored (or as it would be, for a dry run).
    pub(crate) object: Arc<Value>,
    /// Whether it did not exist before.
    pub(crate) created: bool,
}

/// The store; cheap to share behind an `Arc`.
pub(crate) struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Change>>,
}

struct Inner {
    rv: u64,
    objects: Vec<Objects>,
    history: VecDeque<Arc<Change>>,
    /// Watches may resume from any revision `>= compacted`.
    compacted: u64,
    history_limit: usize,
    snapshots: VecDeque<(usize, u64, Objects)>,
    random: u64,
    counter: u64,
}

impl Store {
    pub(crate) fn new(types: usize, history_limit: usize, watch_buffer: usize) -> Self {
        let (events, _) = broadcast::channel(watch_buffer.max(16));
        Self {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: vec![Objects::default(); types],
                history: VecDeque::new(),
                compacted: 1,
                history_limit: history_limit.max(1),
                snapshots: VecDeque::new(),
                random: random_u64(),
                counter: 0,
            }),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest revision.
    pub(crate) fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// The oldest revision a watch may resume from.
    pub(crate) fn compacted(&self) -> u64 {
        self.lock().compacted
    }

    /// Creates or replaces an object; returns it as stored. An object equal
    /// to the stored one changes nothing (no new revision, no event), as in
    /// kube-apiserver. The stored `managedFields` are kept when the object
    /// has none.
    pub(crate) fn apply(
        &self,
        index: usize,
        rt: &ResourceType,
        mut object: Value,
    ) -> Result<Arc<Value>, HookError> {
        rt.validate(&object).map_err(HookError::Invalid)?;
        let meta = object
            .as_object_mut()
            .ok_or_else(|| HookError::Invalid("not a JSON object".to_owned()))?
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| HookError::Invalid("metadata is not an object".to_owned()))?;
        let namespace = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if rt.namespaced && namespace.is_empty() {
            return Err(HookError::Invalid(format!(
                "a {} needs metadata.namespace",
                rt.kind
            )));
        }
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if name.is_empty() {
            let prefix = meta
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if prefix.is_empty() {
                return Err(HookError::Invalid(
                    "metadata.name or metadata.generateName is required".to_owned(),
                ));
            }
            name = self.generate_name(prefix);
        }
        let key = (
            if rt.namespaced {
                namespace
            } else {
                String::new()
            },
            name,
        );
        let written = self.write(index, rt, &key, false, |previous| {
            if let Some(fields) = previous.and_then(|p| p.pointer("/metadata/managedFields"))
                && object.pointer("/metadata/managedFields").is_none()
            {
                set_meta(&mut object, "managedFields", fields.clone());
            }
            Ok(object)
        });
        match written {
            Ok(written) => Ok(written.object),
            Err(WriteError::Invalid(message)) => Err(HookError::Invalid(message)),
            Err(WriteError::Rejected(status)) => Err(HookError::Invalid(
                status
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("refused")
                    .to_owned(),
            )),
        }
    }

    /// A name for `generateName`: the prefix and five random characters.
    pub(crate) fn generate_name(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.lock().name_suffix())
    }

    /// Writes the object at `key`, atomically: `change` gets the stored
    /// object (if any) and returns the new content (or refuses). The store
    /// then sets `apiVersion`, `kind`, the name and namespace from `key`,
    /// validates the object against its type, and sets the server's fields:
    /// uid and creationTimestamp (kept from the stored object, or new),
    /// generation (bumped when anything outside metadata and status
    /// changed) and resourceVersion. A result equal to the stored object
    /// changes nothing (no new revision, no event). With `dry_run`, nothing
    /// is stored, but the result is what would have been.
    pub(crate) fn write<F>(
        &self,
        index: usize,
        rt: &ResourceType,
        key: &Key,
        dry_run: bool,
        change: F,
    ) -> Result<Written, WriteError>
    where
        F: FnOnce(Option<&Arc<Value>>) -> Result<Value, WriteError>,
    {
        let mut inner = self.lock();
        let previous = inner.objects[index].get(key).cloned();
        let mut object = change(previous.as_ref())?;
        let map = object
            .as_object_mut()
            .ok_or_else(|| WriteError::Invalid("not a JSON object".to_owned()))?;
        map.insert("apiVersion".to_owned(), json!(rt.api_version));
        map.insert("kind".to_owned(), json!(rt.kind));
        let meta = map
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| WriteError::Invalid("metadata is not an object".to_owned()))?;
        meta.insert("name".to_owned(), json!(key.1));
        if rt.namespaced {
            meta.insert("namespace".to_owned(), json!(key.0));
        } else {
            meta.remove("namespace");
        }
        meta.remove("resourceVersion");
        rt.validate(&object).map_err(WriteError::Invalid)?;
        let kind = match &previous {
            Some(old) => {
                let meta = object
                    .get_mut("metadata")
                    .and_then(Value::as_object_mut)
                    .ok_or_else(|| WriteError::Invalid("metadata is not an object".to_owned()))?;
                for field in ["uid", "creationTimestamp"] {
                    match old.pointer(&format!("/metadata/{field}")) {
                        Some(v) => meta.insert(field.to_owned(), v.clone()),
                        None => meta.remove(field),
                    };
                }
                let old_generation = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                meta.insert(
                    "resourceVersion".to_owned(),
                    old.pointer("/metadata/resourceVersion")
                        .cloned()
                        .unwrap_or(Value::Null),
                );
                meta.insert("generation".to_owned(), json!(old_generation));
                if body_differs(old, &object) {
                    set_meta(&mut object, "generation", json!(old_generation + 1));
                }
                if **old == object {
                    return Ok(Written {
                        object: Arc::clone(old),
                        created: false,
                    });
                }
                ChangeKind::Modified
            }
            None => {
                let uid = inner.uid();
                set_meta(&mut object, "uid", json!(uid));
                set_meta(
                    &mut object,
                    "creationTimestamp",
                    serde_json::to_value(now()).unwrap_or(Value::Null),
                );
                set_meta(&mut object, "generation", json!(1));
                ChangeKind::Added
            }
        };
        let rv = inner.rv + 1;
        set_meta(&mut object, "resourceVersion", json!(rv.to_string()));
        let object = Arc::new(object);
        let created = kind == ChangeKind::Added;
        if dry_run {
            return Ok(Written { object, created });
        }
        Arc::make_mut(&mut inner.objects[index]).insert(key.clone(), Arc::clone(&object));
        self.record(
            &mut inner,
            Change {
                rv,
                resource: index,
                kind,
                object: Arc::clone(&object),
                previous,
            },
        );
        Ok(Written { object, created })
    }

    /// A feed of every change from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.events.subscribe()
    }

    /// Deletes an object; returns its last state (with the deletion's
    /// resourceVersion, as the `DELETED` event carries it).
    pub(crate) fn delete(
        &self,
        index: usize,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<Value>, HookError> {
        let namespace = if rt.namespaced { namespace } else { "" };
        let key = (namespace.to_owned(), name.to_owned());
        let mut inner = self.lock();
        let Some(previous) = Arc::make_mut(&mut inner.objects[index]).remove(&key) else {
            return Err(HookError::NotFound {
                plural: rt.plural.to_owned(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            });
        };
        let rv = inner.rv + 1;
        let mut last = (*previous).clone();
        set_meta(&mut last, "resourceVersion", json!(rv.to_string()));
        let last = Arc::new(last);
        self.record(
            &mut inner,
            Change {
                rv,
                resource: index,
                kind: ChangeKind::Deleted,
                object: Arc::clone(&last),
                previous: Some(previous),
            },
        );
        Ok(last)
    }

    /// Appends a change to history (compacting past the limit) and sends it
    /// to open watches, under the lock so watches see changes in order.
    fn record(&self, inner: &mut Inner, change: Change) {
        inner.rv = change.rv;
        let change = Arc::new(change);
        inner.history.push_back(Arc::clone(&change));
        while inner.history.len() > inner.history_limit {
            if let Some(dropped) = inner.history.pop_front() {
                inner.compacted = dropped.rv;
            }
        }
        // No receiver is not an error: nobody is watching.
        let _ = self.events.send(change);
    }

    /// One object.
    pub(crate) fn get(&self, index: usize, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.lock().objects[index]
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every object of a type, in key order.
    pub(crate) fn all(&self, index: usize) -> Vec<Arc<Value>> {
        self.lock().objects[index].values().cloned().collect()
    }

    /// Forgets history up to now: watches from an older revision get
    /// `410 Gone`, and continue tokens of older lists expire.
    pub(crate) fn compact(&self) {
        let mut inner = self.lock();
        inner.compacted = inner.rv;
        inner.history.clear();
        let compacted = inner.compacted;
        inner.snapshots.retain(|(_, rv, _)| *rv >= compacted);
    }

    /// A page of a list. `filter` selects the items; `limit` of `None` or 0
    /// means everything.
    pub(crate) fn list(
        &self,
        index: usize,
        from: &ListFrom,
        limit: Option<usize>,
        count_remaining: bool,
        filter: &dyn Fn(&Value) -> bool,
    ) -> Result<Page, ListError> {
        let limit = limit.filter(|&l| l > 0);
        let (rv, objects, after) = {
            let mut inner = self.lock();
            let (rv, after) = match from {
                ListFrom::Current => (inner.rv, None),
                ListFrom::NotOlderThan(rv) => {
                    if *rv > inner.rv {
                        return Err(ListError::TooLarge {
                            requested: *rv,
                            current: inner.rv,
                        });
                    }
                    (inner.rv, None)
                }
                ListFrom::Exact(rv) => (*rv, None),
                ListFrom::Continue { rv, after } => (*rv, Some(after.clone())),
            };
            let continuing = after.is_some();
            if rv < inner.compacted {
                return Err(ListError::Expired { continuing });
            }
            if rv > inner.rv {
                return Err(ListError::TooLarge {
                    requested: rv,
                    current: inner.rv,
                });
            }
            (rv, inner.state_at(index, rv), after)
        };
        let range = match &after {
            Some(key) => objects.range((Bound::Excluded(key.clone()), Bound::Unbounded)),
            None => objects.range::<Key, _>(..),
        };
        let mut items = Vec::new();
        let mut last = None;
        let mut range = range.filter(|(_, v)| filter(v));
        for (key, value) in range.by_ref() {
            items.push(Arc::clone(value));
            last = Some(key);
            if limit.is_some_and(|l| items.len() >= l) {
                break;
            }
        }
        let (next, remaining) = if limit.is_some_and(|l| items.len() >= l) {
            if count_remaining {
                let remaining = range.count();
                (
                    Some(remaining).filter(|&n| n > 0).and(last.cloned()),
                    Some(remaining),
                )
            } else {
                (range.next().and(last.cloned()), None)
            }
        } else {
            (None, None)
        };
        if next.is_some() {
            // Keep the state this list was read at for the next pages.
            self.lock().remember(index, rv, &objects);
        }
        let remaining = remaining.filter(|_| next.is_some());
        Ok(Page {
            rv,
            items,
            next,
            remaining,
        })
    }

    /// Starts a watch. Fails with the oldest servable revision when `from`
    /// is older than that.
    pub(crate) fn watch(&self, index: usize, from: WatchFrom) -> Result<WatchStart, u64> {
        let inner = self.lock();
        let feed = self.events.subscribe();
        match from {
            WatchFrom::Current => Ok(WatchStart {
                initial: inner.objects[index].values().cloned().collect(),
                replay: Vec::new(),
                rv: inner.rv,
                feed,
            }),
            WatchFrom::After(rv) if rv < inner.compacted => Err(inner.compacted),
            WatchFrom::After(rv) => Ok(WatchStart {
                initial: Vec::new(),
                replay: inner
                    .history
                    .iter()
                    .filter(|c| c.rv > rv && c.resource == index)
                    .cloned()
                    .collect(),
                rv: inner.rv,
                feed,
            }),
        }
    }

    /// The revision a bookmark may carry for a watch fed by `feed`: the
    /// store's, when the watch has received every change up to it.
    pub(crate) fn bookmark_rv(&self, feed: &broadcast::Receiver<Arc<Change>>) -> Option<u64> {
        let inner = self.lock();
        feed.is_empty().then_some(inner.rv)
    }
}

impl Inner {
    /// The objects of a type as they were at revision `rv` (which must be
    /// `>= compacted`): the newest state with later changes undone.
    fn state_at(&mut self, index: usize, rv: u64) -> Objects {
        if rv == self.rv {
            return Arc::clone(&self.objects[index]);
        }
        if let Some((_, _, objects)) = self
            .snapshots
            .iter()
            .find(|(i, r, _)| *i == index && *r == rv)
        {
            return Arc::clone(objects);
        }
        let mut objects = (*self.objects[index]).clone();
        for change in self.history.iter().rev().take_while(|c| c.rv > rv) {
            if change.resource != index {
                continue;
            }
            let key = object_key(&change.object);
            match &change.previous {
                Some(previous) if change.kind != ChangeKind::Added => {
                    objects.insert(key, Arc::clone(previous))
                }
                _ => objects.remove(&key),
            };
        }
        Arc::new(objects)
    }

    fn remember(&mut self, index: usize, rv: u64, objects: &Objects) {
        if self
            .snapshots
            .iter()
            .any(|(i, r, _)| *i == index && *r == rv)
        {
            return;
        }
        self.snapshots.push_back((index, rv, Arc::clone(objects)));
        while self.snapshots.len() > SNAPSHOT_CACHE {
            self.snapshots.pop_front();
        }
    }

    fn uid(&mut self) -> String {
        self.counter += 1;
        let (r, c) = (self.random, self.counter);
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            r >> 32,
            (r >> 16) & 0xffff,
            r & 0xfff,
            0x8000 | ((c >> 48) & 0x3fff),
            c & 0xffff_ffff_ffff
        )
    }

    fn name_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        self.counter += 1;
        let mut n = random_u64() ^ self.counter;
        (0..5)
            .map(|_| {
                let c = ALPHABET[(n % ALPHABET.len() as u64) as usize];
                n /= ALPHABET.len() as u64;
                char::from(c)
            })
            .collect()
    }
}

/// (namespace, name) of a stored object.
pub(crate) fn object_key(object: &Value) -> Key {
    let field = |f: &str| {
        object
            .pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (field("namespace"), field("name"))
}

/// Whether two objects differ outside `metadata` and `status` (a change that
/// bumps `metadata.generation`).
fn body_differs(a: &Value, b: &Value) -> bool {
    let body = |v: &Value| -> Map<String, Value> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| {
                        !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    body(a) != body(b)
}

fn set_meta(object: &mut Value, field: &str, value: Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(field.to_owned(), value);
    }
}

/// The current time, to the second (as creationTimestamp is written).
fn now() -> Time {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let seconds = i64::try_from(seconds).unwrap_or_default();
    Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap_or_default())
}

fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;

    use super::*;

    fn svc(ns: &str, name: &str, app: &str) -> Value {
        json!({"metadata": {"namespace": ns, "name": name, "labels": {"app": app}}, "spec": {"type": "ClusterIP"}})
    }

    fn setup() -> (Store, ResourceType) {
        (Store::new(1, 1000, 64), ResourceType::of::<Service>())
    }

    #[test]
    fn apply_sets_server_fields_and_skips_noops() {
        let (store, rt) = setup();
        let a = store.apply(0, &rt, svc("p", "a", "x")).expect("create");
        assert_eq!(a.pointer("/metadata/resourceVersion"), Some(&json!("2")));
        assert_eq!(a.pointer("/metadata/generation"), Some(&json!(1)));
        assert!(a.pointer("/metadata/uid").is_some());
        let same = store.apply(0, &rt, svc("p", "a", "x")).expect("noop");
        assert_eq!(store.resource_version(), 2);
        assert!(Arc::ptr_eq(&a, &same));
        let relabel = store.apply(0, &rt, svc("p", "a", "y")).expect("relabel");
        assert_eq!(relabel.pointer("/metadata/generation"), Some(&json!(1)));
        assert_eq!(relabel.pointer("/metadata/uid"), a.pointer("/metadata/uid"));
        let mut changed = svc("p", "a", "y");
        changed["spec"]["type"] = json!("NodePort");
        let changed = store.apply(0, &rt, changed).expect("spec change");
        assert_eq!(changed.pointer("/metadata/generation"), Some(&json!(2)));
        assert_eq!(
            changed.pointer("/metadata/resourceVersion"),
            Some(&json!("4"))
        );
        assert!(
            store
                .apply(0, &rt, json!({"metadata": {"name": "x"}}))
                .is_err()
        );
    }

    #[test]
    fn exact_lists_rebuild_history_and_expire_after_compaction() {
        let (store, rt) = setup();
        for n in ["a", "b", "c"] {
            store.apply(0, &rt, svc("p", n, "x")).expect("create");
        }
        let at3 = store.resource_version() - 1;
        store.delete(0, &rt, "p", "a").expect("delete");
        store
            .apply(0, &rt, svc("p", "b", "changed"))
            .expect("modify");
        store.apply(0, &rt, svc("p", "d", "x")).expect("create");
        let page = store
            .list(0, &ListFrom::Exact(at3), None, false, &|_| true)
            .expect("exact");
        let names: Vec<_> = page.items.iter().map(|o| object_key(o).1).collect();
        assert_eq!(names, ["a", "b"]);
        let now = store
            .list(0, &ListFrom::Current, Some(2), true, &|_| true)
            .expect("current");
        assert_eq!(now.remaining, Some(1));
        let next = now.next.clone().expect("more");
        store.delete(0, &rt, "p", "d").expect("delete");
        let rest = store
            .list(
                0,
                &ListFrom::Continue {
                    rv: now.rv,
                    after: next.clone(),
                },
                Some(2),
                true,
                &|_| true,
            )
            .expect("continue");
        assert_eq!(
            rest.items.len(),
            1,
            "the page is read at the first page's revision"
        );
        store.compact();
        assert_eq!(
            store
                .list(
                    0,
                    &ListFrom::Continue {
                        rv: now.rv,
                        after: next
                    },
                    Some(2),
                    true,
                    &|_| true
                )
                .err(),
            Some(ListError::Expired { continuing: true })
        );
        assert_eq!(
            store.watch(0, WatchFrom::After(at3)).err(),
            Some(store.resource_version())
        );
        assert!(
            store
                .watch(0, WatchFrom::After(store.resource_version()))
                .is_ok()
        );
    }

    #[test]
    fn history_limit_compacts() {
        let store = Store::new(1, 2, 16);
        let rt = ResourceType::of::<Service>();
        for n in ["a", "b", "c", "d"] {
            store.apply(0, &rt, svc("p", n, "x")).expect("create");
        }
        assert_eq!(store.compacted(), 3);
        assert!(store.watch(0, WatchFrom::After(2)).is_err());
        let start = store.watch(0, WatchFrom::After(3)).expect("servable");
        assert_eq!(start.replay.len(), 2);
    }
}
