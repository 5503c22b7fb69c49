//! The sync of one member cluster: kube-rs watchers on Services and
//! EndpointSlices in every namespace global namespaces select there, an
//! in-memory model replaced atomically after each (re)list, and catalog
//! diffs written in batches. Reports the cluster's status (phase, last sync,
//! counts, last error in words). Losing the API keeps the last endpoints.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::health::{ApiHealth, is_connect_failure};
use super::model::{self, Member, NamespaceObjects, ServiceInfo, SliceInfo};
use crate::model::{ClusterChange, ClusterPhase, DiscoveredService, Kind};
use crate::store::{BatchOp, ObjectKey, Store};

/// Actor name of discovery writes in the audit log.
pub const ACTOR: &str = "system:discovery";
/// How long changes are gathered before one batch is written.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// The sync report (`lastSync`, counts) is recorded at least this often while connected.
const STATUS_REFRESH: Duration = Duration::from_secs(15);
/// Shortest time between two writes of a cluster's sync counts.
const COUNTS_EVERY: Duration = Duration::from_secs(1);
/// How often the API server is probed (`GET /version`), so that an API that
/// turns slow or answers garbage shows even while watches wait quietly.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// A probe not answered within this is a failure ("slow").
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// A watch that reported no error for this long is healthy again (a resumed
/// watch with nothing new to say reports nothing at all). Longer than the
/// largest backoff plus the connect timeout.
const ERROR_FRESHNESS: Duration = Duration::from_secs(8);

/// Longest a watcher waits, after its requests could not connect, for the
/// probe to see the API back before it tries again on its own.
/// (The probe decides when it is back; this bounds what the watchers, three
/// per namespace, cost on their own while it is dead.)
const CONNECT_CEILING: Duration = Duration::from_secs(45);

/// Watcher retry delays: 100 ms doubling to `ceiling`, each 50–100 % of
/// that (jitter). Reset only by progress (an object, a finished list), not
/// by `Event::Init`, which kube's watcher emits before every list attempt:
/// kube's own `StreamBackoff` resets on any `Ok` and so retried a failing
/// list at 50–100 ms for as long as it failed.
pub struct RetryDelays {
    next: Duration,
    ceiling: Duration,
    seed: u64,
}

impl RetryDelays {
    const MIN: Duration = Duration::from_millis(100);

    /// Delays from 100 ms up to `ceiling`.
    pub fn new(ceiling: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 | 1);
        Self {
            next: Self::MIN,
            ceiling,
            seed,
        }
    }

    /// Delays of `ceiling` (each 50–100 % of it) until reset.
    pub fn starting_at(ceiling: Duration) -> Self {
        Self {
            next: ceiling,
            ..Self::new(ceiling)
        }
    }

    /// Starts again from 100 ms.
    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

impl Iterator for RetryDelays {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let base = self.next;
        self.next = (self.next * 2).min(self.ceiling);
        // Jitter: 50–100 % of the base delay.
        let jitter = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        Some(base.mul_f64(jitter))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Resource {
    Services,
    Slices,
    Pods,
}

enum Update {
    Services(String, Reduced<model::ServiceInfo>),
    Slices(String, Reduced<model::SliceInfo>),
    Pods(String, Reduced<model::PodInfo>),
    /// A watcher failed: namespace, resource, the error in words, and
    /// whether its request could not connect at all.
    Failed(String, Resource, String, bool),
    /// Outcome of an API probe: `None` when it answered in time.
    Probe(Option<String>),
}

/// A watcher event with its object already reduced to what the catalog
/// needs (`I`), in the watcher's own task: the channel to the cluster's
/// task never holds whole Kubernetes objects, however far behind that task
/// is during a large first list.
#[derive(Debug)]
enum Reduced<I> {
    /// A (re)list begins.
    Init,
    /// An object of the (re)list, by name.
    InitApply(String, I),
    /// The (re)list is complete.
    InitDone,
    /// An object created or changed, by name.
    Apply(String, I),
    /// An object deleted, by name.
    Delete(String),
}

impl<I> Reduced<I> {
    fn of<K>(event: Event<K>, reduce: &impl Fn(&K) -> I) -> Self
    where
        K: kube::Resource,
    {
        match event {
            Event::Init => Self::Init,
            Event::InitApply(obj) => Self::InitApply(obj.name_any(), reduce(&obj)),
            Event::InitDone => Self::InitDone,
            Event::Apply(obj) => Self::Apply(obj.name_any(), reduce(&obj)),
            Event::Delete(obj) => Self::Delete(obj.name_any()),
        }
    }
}

/// Probes the API server every [`PROBE_INTERVAL`] until the receiver is
/// gone, and keeps the cluster's [`ApiHealth`]: an answer marks it up (and
/// wakes the watchers waiting for that), a failed connection marks it down.
fn spawn_probe(
    client: kube::Client,
    tx: mpsc::Sender<Update>,
    health: ApiHealth,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(PROBE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let outcome =
                match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
                    Ok(Ok(_)) => {
                        health.mark_up();
                        None
                    }
                    Ok(Err(e)) => {
                        if is_connect_failure(&e) {
                            health.mark_down();
                        }
                        Some(format!("API probe failed: {}", describe_client_error(&e)))
                    }
                    Err(_) => Some(format!(
                        "API server slow: GET /version not answered within {PROBE_TIMEOUT:?}"
                    )),
                };
            if tx.send(Update::Probe(outcome)).await.is_err() {
                return;
            }
        }
    })
}

/// What an error means for the cluster, in words.
fn describe(error: &watcher::Error) -> String {
    let inner = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        other => return other.to_string(),
    };
    describe_client_error(inner)
}

/// What a client error means, in words (bad credentials, forbidden, TLS
/// failure, unreachable).
pub(crate) fn describe_client_error(inner: &kube::Error) -> String {
    match inner {
        kube::Error::Api(status) if status.code == 401 => {
            "bad credentials: the API server answered 401 Unauthorized".into()
        }
        kube::Error::Api(status) if status.code == 403 => format!("forbidden: {}", status.message),
        kube::Error::Api(status) => format!("API error {}: {}", status.code, status.message),
        kube::Error::HyperError(e) => format!("unreachable: {e}"),
        kube::Error::Service(e) => {
            let text = e.to_string();
            if text.contains("certificate") || text.contains("tls") || text.contains("TLS") {
                format!("TLS failure: {text}")
            } else {
                format!("unreachable: {text}")
            }
        }
        other => other.to_string(),
    }
}

/// The client error inside a watcher error, if there is one.
fn client_error(error: &watcher::Error) -> Option<&kube::Error> {
    match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => Some(e),
        _ => None,
    }
}

/// Follows one resource of one namespace with a kube-rs watcher, retrying
/// after errors: after a failure that says nothing about reachability (a
/// cut watch, `410 Gone`, an API error) at once and then backing off to
/// 2 s; after a request that could not connect once fast, then by waiting
/// for the cluster's probe to see the API back (at most 50–100 % of
/// [`CONNECT_CEILING`]), so a dead API costs almost no retries of its own.
#[allow(
    clippy::too_many_arguments,
    reason = "one watcher's whole wiring, each argument used once"
)]
fn spawn_watch<K, I>(
    events: impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    ns: String,
    resource: Resource,
    tx: mpsc::Sender<Update>,
    reduce: impl Fn(&K) -> I + Send + 'static,
    wrap: fn(String, Reduced<I>) -> Update,
    health: ApiHealth,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    I: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = events.boxed();
        let mut delays = RetryDelays::new(Duration::from_secs(2));
        // Starts at the ceiling: a watcher that could not connect waits for the probe.
        let mut connect_delays = RetryDelays::starting_at(CONNECT_CEILING);
        let mut connect_failures = 0u32;
        while let Some(item) = stream.next().await {
            let (update, wait) = match item {
                Ok(event) => {
                    // `Init` comes before every list attempt: not progress.
                    if !matches!(event, Event::Init) {
                        delays.reset();
                        connect_failures = 0;
                    }
                    (wrap(ns.clone(), Reduced::of(event, &reduce)), Wait::None)
                }
                Err(e) => {
                    let connect = client_error(&e).is_some_and(is_connect_failure);
                    let wait = if connect {
                        connect_failures += 1;
                        if connect_failures == 1 {
                            Wait::Sleep(delays.next().unwrap_or(RetryDelays::MIN))
                        } else {
                            health.mark_down();
                            // The probe decides; its own timer (22–45 s, the
                            // ceiling with jitter) is only a safety net.
                            Wait::UntilUp(connect_delays.next().unwrap_or(CONNECT_CEILING))
                        }
                    } else {
                        Wait::Sleep(delays.next().unwrap_or(RetryDelays::MIN))
                    };
                    (
                        Update::Failed(ns.clone(), resource, describe(&e), connect),
                        wait,
                    )
                }
            };
            if tx.send(update).await.is_err() {
                return;
            }
            match wait {
                Wait::None => {}
                Wait::Sleep(delay) => tokio::time::sleep(delay).await,
                Wait::UntilUp(most) => {
                    tokio::select! {
                        () = health.wait_up() => {}
                        () = tokio::time::sleep(most) => {}
                    }
                }
            }
        }
    })
}

/// What a watcher does before its next attempt.
enum Wait {
    None,
    Sleep(Duration),
    /// Until the probe sees the API back, or this long.
    UntilUp(Duration),
}

/// Per-watcher progress: buffered objects during a (re)list, and health.
struct WatchState<K> {
    buffer: Option<BTreeMap<String, K>>,
    synced: bool,
    error: Option<(String, Instant)>,
}

impl<K> Default for WatchState<K> {
    fn default() -> Self {
        Self {
            buffer: None,
            synced: false,
            error: None,
        }
    }
}

impl<K> WatchState<K> {
    /// The watch's error if it is recent, or any while the API is down.
    fn current_error(&self, api_down: bool) -> Option<String> {
        self.error
            .as_ref()
            .filter(|(_, at)| api_down || at.elapsed() < ERROR_FRESHNESS)
            .map(|(e, _)| e.clone())
    }
}

/// Objects per list page of a (re)list.
const LIST_PAGE: u32 = 100;

/// Runs the sync of `cluster` until aborted.
pub async fn run(
    cluster: String,
    client: kube::Client,
    members: Vec<Member>,
    all_gns: Vec<String>,
    label_keys: model::LabelKeys,
    store: Arc<dyn Store>,
    gateway: tokio::sync::watch::Receiver<Option<serde_json::Value>>,
) {
    let namespaces: BTreeSet<String> = members.iter().map(|m| m.namespace.clone()).collect();
    let (tx, mut rx) = mpsc::channel(1024);
    let health = ApiHealth::new();
    let mut tasks = Vec::new();
    // Lists come in pages of 100 (kube's default is 500): a page is held as
    // whole Kubernetes objects until its events are reduced, and with many
    // clusters syncing at once those pages were most of the first sync's
    // memory.
    let config = || watcher::Config::default().timeout(60).page_size(LIST_PAGE);
    for ns in &namespaces {
        tasks.push(spawn_watch(
            watcher::watcher(Api::<Service>::namespaced(client.clone(), ns), config()),
            ns.clone(),
            Resource::Services,
            tx.clone(),
            |service: &Service| ServiceInfo::from(service),
            Update::Services,
            health.clone(),
        ));
        tasks.push(spawn_watch(
            watcher::watcher(
                Api::<EndpointSlice>::namespaced(client.clone(), ns),
                config(),
            ),
            ns.clone(),
            Resource::Slices,
            tx.clone(),
            |slice: &EndpointSlice| SliceInfo::from(slice),
            Update::Slices,
            health.clone(),
        ));
        // Pods as metadata only: their labels, not their specs.
        tasks.push(spawn_watch(
            watcher::watcher(
                Api::<PartialObjectMeta<Pod>>::namespaced(client.clone(), ns),
                config(),
            ),
            ns.clone(),
            Resource::Pods,
            tx.clone(),
            {
                let keys = Arc::clone(&label_keys);
                move |pod: &PartialObjectMeta<Pod>| model::PodInfo::of(pod, &keys)
            },
            Update::Pods,
            health.clone(),
        ));
    }
    tasks.push(spawn_probe(client.clone(), tx.clone(), health.clone()));
    drop(tx);
    let _guard = AbortOnDrop(tasks);
    let mut probe_error: Option<(String, Instant)> = None;
    let mut outage = gns_outage::Outage::new("member cluster API", cluster.as_str());

    let mut objects: HashMap<String, NamespaceObjects> = HashMap::new();
    let mut svc_watch: HashMap<String, WatchState<ServiceInfo>> = HashMap::new();
    let mut slice_watch: HashMap<String, WatchState<SliceInfo>> = HashMap::new();
    let mut pod_watch: HashMap<String, WatchState<model::PodInfo>> = HashMap::new();
    // Services whose catalog entries may have changed, by namespace.
    let mut dirty: HashMap<String, BTreeSet<String>> = HashMap::new();
    // Hash of each catalog entry this cluster has in the store; `None` until read.
    let mut written: Option<HashMap<ObjectKey, u64>> = None;
    let mut status = StatusWriter::new(&cluster, Arc::clone(&store), gateway);
    status
        .report(ClusterPhase::Connecting, "connecting", None, None)
        .await;

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let mut updates = Vec::new();
        tokio::select! {
            first = rx.recv() => match first {
                Some(u) => updates.push(u),
                None => return,
            },
            _ = tick.tick() => {}
        }
        // Gather what arrives within the debounce window into one batch.
        let deadline = tokio::time::Instant::now() + DEBOUNCE;
        while let Ok(Some(u)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            updates.push(u);
        }
        // Pods whose labels changed, by namespace (their services are
        // found once per batch).
        let mut pods_changed: HashMap<String, BTreeSet<String>> = HashMap::new();
        for update in updates {
            match update {
                Update::Pods(ns, event) => {
                    let state = pod_watch.entry(ns.clone()).or_default();
                    let target = &mut objects.entry(ns.clone()).or_default().pods;
                    apply(
                        event,
                        state,
                        target,
                        pods_changed.entry(ns).or_default(),
                        |name, _| Some(name.to_owned()),
                    );
                }
                Update::Services(ns, event) => {
                    let state = svc_watch.entry(ns.clone()).or_default();
                    let target = &mut objects.entry(ns.clone()).or_default().services;
                    apply(
                        event,
                        state,
                        target,
                        dirty.entry(ns).or_default(),
                        |name, _| Some(name.to_owned()),
                    );
                }
                Update::Slices(ns, event) => {
                    let state = slice_watch.entry(ns.clone()).or_default();
                    let target = &mut objects.entry(ns.clone()).or_default().slices;
                    apply(
                        event,
                        state,
                        target,
                        dirty.entry(ns).or_default(),
                        |_, slice| slice.service.clone(),
                    );
                }
                Update::Probe(outcome) => {
                    match &outcome {
                        Some(message) => outage.failed(message),
                        None => outage.reached(),
                    }
                    probe_error = outcome.map(|m| (m, Instant::now()));
                }
                Update::Failed(ns, resource, message, connect) => {
                    // Logged per attempt at debug; the outage is logged once.
                    tracing::debug!(cluster, namespace = ns, ?resource, error = %message, "watch failed");
                    if connect {
                        outage.failed(&message);
                    }
                    let error = Some((message, Instant::now()));
                    match resource {
                        Resource::Services => svc_watch.entry(ns).or_default().error = error,
                        Resource::Slices => slice_watch.entry(ns).or_default().error = error,
                        Resource::Pods => pod_watch.entry(ns).or_default().error = error,
                    }
                }
            }
        }
        for (ns, pods) in pods_changed.into_iter().filter(|(_, p)| !p.is_empty()) {
            if let Some(objects) = objects.get(&ns) {
                dirty
                    .entry(ns)
                    .or_default()
                    .extend(objects.services_of_pods(&pods));
            }
        }
        let total = namespaces.len() * 2;
        let synced = namespaces
            .iter()
            .filter(|ns| svc_watch.get(*ns).is_some_and(|w| w.synced))
            .count()
            + namespaces
                .iter()
                .filter(|ns| slice_watch.get(*ns).is_some_and(|w| w.synced))
                .count();
        // Endpoint labels come from pods: the first write waits for them,
        // unless pods can't be read (the error shows in the status, and
        // endpoints go without labels meanwhile).
        let pods_known = namespaces.iter().all(|ns| {
            pod_watch
                .get(ns)
                .is_some_and(|w| w.synced || w.error.is_some())
        });
        // While the API is down the watchers wait for the probe instead of
        // failing again: their last errors stand until it is back.
        let api_down = health.is_down();
        let watch_errors: Vec<String> = svc_watch
            .values()
            .filter_map(|w| w.current_error(api_down))
            .chain(
                slice_watch
                    .values()
                    .filter_map(|w| w.current_error(api_down)),
            )
            .collect();
        let pod_errors: Vec<String> = pod_watch
            .values()
            .filter_map(|w| w.current_error(api_down))
            .map(|e| format!("pods (endpoint labels): {e}"))
            .collect();
        // Unreachable when every watch fails; Degraded when some do, or the probe does.
        let all_failing = watch_errors.len() >= total;
        let errors: Vec<String> = watch_errors
            .into_iter()
            .chain(pod_errors)
            .chain(
                probe_error
                    .as_ref()
                    .filter(|(_, at)| at.elapsed() < ERROR_FRESHNESS)
                    .map(|(m, _)| m.clone()),
            )
            .collect();
        if synced == total && pods_known {
            let (ops, updated) = match &written {
                Some(previous) => changed_entries(&cluster, &members, &objects, &dirty, previous),
                None => {
                    let previous = existing_objects(store.as_ref(), &cluster, &all_gns).await;
                    all_entries(&cluster, &members, &objects, previous)
                }
            };
            let outcome = if ops.is_empty() {
                Ok(())
            } else {
                store.write_batch(ops, ACTOR).await.map(drop)
            };
            match outcome {
                Ok(()) => {
                    let hashes = written.get_or_insert_with(HashMap::new);
                    for (key, hash) in updated {
                        match hash {
                            Some(h) => hashes.insert(key, h),
                            None => hashes.remove(&key),
                        };
                    }
                    dirty.clear();
                }
                Err(e) => {
                    // The dirty set stays, so the next round writes it again.
                    tracing::warn!(cluster, error = %e, "catalog write failed; will retry");
                    status
                        .report(
                            ClusterPhase::Degraded,
                            &format!("catalog write failed: {e}"),
                            None,
                            None,
                        )
                        .await;
                    continue;
                }
            }
            let endpoints: usize = objects
                .values()
                .flat_map(|o| o.slices.values())
                .map(SliceInfo::address_count)
                .sum();
            let services: usize = objects.values().map(|o| o.services.len()).sum();
            let (phase, message) = if errors.is_empty() {
                (ClusterPhase::Connected, "synced".to_owned())
            } else if all_failing {
                (ClusterPhase::Unreachable, errors[0].clone())
            } else {
                (ClusterPhase::Degraded, errors[0].clone())
            };
            status
                .report(phase, &message, Some(services), Some(endpoints))
                .await;
        } else if !errors.is_empty() {
            let phase = if all_failing {
                ClusterPhase::Unreachable
            } else {
                ClusterPhase::Degraded
            };
            status.report(phase, &errors[0], None, None).await;
        }
    }
}

/// Applies one watcher event to a namespace's objects (kept reduced to what
/// the catalog needs); a (re)list replaces them at its end. The services
/// whose entries may change are added to `dirty` (`service_of` names the
/// service an object belongs to).
fn apply<I: PartialEq>(
    event: Reduced<I>,
    state: &mut WatchState<I>,
    target: &mut BTreeMap<String, I>,
    dirty: &mut BTreeSet<String>,
    service_of: fn(&str, &I) -> Option<String>,
) {
    let mut touch = |name: &str, old: Option<&I>, new: Option<&I>| {
        if old == new {
            return;
        }
        for info in [old, new].into_iter().flatten() {
            if let Some(service) = service_of(name, info) {
                dirty.insert(service);
            }
        }
    };
    match event {
        Reduced::Init => state.buffer = Some(BTreeMap::new()),
        Reduced::InitApply(name, info) => {
            state
                .buffer
                .get_or_insert_with(BTreeMap::new)
                .insert(name, info);
        }
        Reduced::InitDone => {
            let fresh = state.buffer.take().unwrap_or_default();
            for (name, old) in target.iter() {
                touch(name, Some(old), fresh.get(name));
            }
            for (name, new) in fresh.iter().filter(|(n, _)| !target.contains_key(*n)) {
                touch(name, None, Some(new));
            }
            *target = fresh;
            state.synced = true;
            state.error = None;
        }
        Reduced::Apply(name, info) => {
            touch(&name, target.get(&name), Some(&info));
            target.insert(name, info);
            state.error = None;
        }
        Reduced::Delete(name) => {
            if let Some(old) = target.remove(&name) {
                touch(&name, Some(&old), None);
            }
            state.error = None;
        }
    }
}

/// A catalog entry encoded once: its JSON text (what the store writes) and
/// the hash of that text (to tell whether it changed).
struct Encoded {
    text: String,
    hash: u64,
}

fn encode(svc: &DiscoveredService) -> Option<Encoded> {
    let text = serde_json::to_string(svc).ok()?;
    Some(Encoded {
        hash: text_hash(&text),
        text,
    })
}

/// The hash of a catalog entry's text.
fn text_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Store writes for one entry, and its new hash (`None`: deleted).
type EntryUpdate = (ObjectKey, Option<u64>);

/// Writes for the entries of the dirty services only.
fn changed_entries(
    cluster: &str,
    members: &[Member],
    objects: &HashMap<String, NamespaceObjects>,
    dirty: &HashMap<String, BTreeSet<String>>,
    written: &HashMap<ObjectKey, u64>,
) -> (Vec<BatchOp>, Vec<EntryUpdate>) {
    let (mut ops, mut updated) = (Vec::new(), Vec::new());
    let empty = NamespaceObjects::default();
    for (ns, names) in dirty.iter().filter(|(_, names)| !names.is_empty()) {
        let ns_objects = objects.get(ns).unwrap_or(&empty);
        let slices = ns_objects.slices_by_service();
        for member in members.iter().filter(|m| &m.namespace == ns) {
            for name in names {
                let key = model::catalog_key(cluster, member, name);
                let desired = model::contribution(cluster, member, ns_objects, &slices, name)
                    .and_then(|svc| encode(&svc));
                let hash = desired.as_ref().map(|e| e.hash);
                if hash == written.get(&key).copied() {
                    continue;
                }
                ops.push(match desired {
                    Some(encoded) => BatchOp::PutEncoded {
                        key: key.clone(),
                        spec: encoded.text,
                    },
                    None => BatchOp::Delete(key.clone()),
                });
                updated.push((key, hash));
            }
        }
    }
    (ops, updated)
}

/// Writes that make the store hold exactly this cluster's entries, given
/// what it holds (`previous`, by hash).
fn all_entries(
    cluster: &str,
    members: &[Member],
    objects: &HashMap<String, NamespaceObjects>,
    previous: HashMap<ObjectKey, u64>,
) -> (Vec<BatchOp>, Vec<EntryUpdate>) {
    let (mut ops, mut updated) = (Vec::new(), Vec::new());
    let desired = model::contributions(cluster, members, objects);
    for (key, svc) in &desired {
        let Some(encoded) = encode(svc) else {
            continue;
        };
        if previous.get(key) != Some(&encoded.hash) {
            ops.push(BatchOp::PutEncoded {
                key: key.clone(),
                spec: encoded.text,
            });
        }
        updated.push((key.clone(), Some(encoded.hash)));
    }
    for key in previous.into_keys().filter(|k| !desired.contains_key(k)) {
        ops.push(BatchOp::Delete(key.clone()));
        updated.push((key, None));
    }
    (ops, updated)
}

/// This cluster's catalog entries already in the store (from an earlier run), by hash.
async fn existing_objects(
    store: &dyn Store,
    cluster: &str,
    all_gns: &[String],
) -> HashMap<ObjectKey, u64> {
    let suffix = format!(".{cluster}");
    let mut out = HashMap::new();
    for gns in all_gns {
        match store.spec_texts(Kind::Service, gns, &suffix).await {
            // Discovery wrote these texts (`encode`): hashed as they are, not
            // parsed. One written otherwise hashes differently: rewritten.
            Ok(entries) => out.extend(
                entries
                    .into_iter()
                    .map(|(key, text)| (key, text_hash(&text))),
            ),
            Err(e) => tracing::warn!(
                cluster,
                gns = %gns,
                error = %e,
                "cannot read the catalog written before; rewriting it"
            ),
        }
    }
    out
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The effective state a status write recorded: phase, since when
/// unreachable, the deployed gateway's status.
type Transition = (ClusterPhase, Option<i64>, Option<Value>);

/// Writes the cluster status when it changes (and now and then for lastSync).
struct StatusWriter {
    key: ObjectKey,
    store: Arc<dyn Store>,
    /// The last transition written.
    last: Option<Transition>,
    /// The last sync report recorded as a liveness fact.
    last_facts: Option<Value>,
    /// The deployed gateway's status, from the rollout (if the cluster has one).
    gateway: tokio::sync::watch::Receiver<Option<Value>>,
    /// When the sync report was last recorded.
    last_write: Option<Instant>,
    /// Service and endpoint counts of the last full sync.
    counts: (Option<usize>, Option<usize>),
    last_sync_ms: Option<i64>,
    unreachable_since_ms: Option<i64>,
}

impl StatusWriter {
    fn new(
        cluster: &str,
        store: Arc<dyn Store>,
        gateway: tokio::sync::watch::Receiver<Option<Value>>,
    ) -> Self {
        Self {
            key: ObjectKey::global(Kind::Cluster, cluster),
            store,
            gateway,
            last: None,
            last_facts: None,
            last_write: None,
            counts: (None, None),
            last_sync_ms: None,
            unreachable_since_ms: None,
        }
    }

    async fn report(
        &mut self,
        phase: ClusterPhase,
        message: &str,
        services: Option<usize>,
        endpoints: Option<usize>,
    ) {
        let now = crate::api::now_millis();
        if phase == ClusterPhase::Connected
            || (phase == ClusterPhase::Degraded && services.is_some())
        {
            self.last_sync_ms = Some(now);
        }
        if phase == ClusterPhase::Unreachable {
            self.unreachable_since_ms.get_or_insert(now);
        } else {
            self.unreachable_since_ms = None;
        }
        if services.is_some() {
            self.counts = (services, endpoints);
        }
        let (services, endpoints) = self.counts;
        let gateway = self.gateway.borrow().clone();
        // What the sync reported (last sync, counts) is a liveness fact: no
        // revision, no audit row; refreshed now and then for `lastSync`.
        let facts = json!({
            "message": message,
            "lastSync": self.last_sync_ms.map(crate::api::rfc3339),
            "lastSyncMillis": self.last_sync_ms,
            "services": services,
            "endpoints": endpoints,
        });
        // A busy cluster syncs many times a second: a new message is written
        // at once, new counts at most once a second (held ones go with the
        // next round: the next change or probe, within about 5 s), `lastSync`
        // alone every STATUS_REFRESH; not a write per sync competing with
        // the catalog's.
        let since_write = self.last_write.map(|t| t.elapsed());
        let stale = since_write.is_none_or(|t| t > STATUS_REFRESH);
        let last = self.last_facts.as_ref();
        let new_message = last.is_none_or(|l| l["message"] != facts["message"]);
        let new_counts = last.is_none_or(|l| {
            l["services"] != facts["services"] || l["endpoints"] != facts["endpoints"]
        });
        let counts_due = since_write.is_none_or(|t| t >= COUNTS_EVERY);
        if stale || new_message || (new_counts && counts_due) {
            let fact = crate::store::Liveness {
                key: self.key.clone(),
                beat_ms: now,
                expires_ms: crate::store::NO_EXPIRY,
                data: facts.clone(),
            };
            match self.store.record_liveness(&[fact]).await {
                Ok(()) => {
                    self.last_facts = Some(facts);
                    self.last_write = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(cluster = %self.key.name, error = %e, "cannot record the cluster's sync report")
                }
            }
        }
        // A change of the effective state (phase, since when it is
        // unreachable, the deployed gateway) is a transition: merged into
        // the stored status (a withdrawal recorded meanwhile is kept while
        // the cluster stays unreachable), one revision, audited. The words
        // of the last error are a fact above: they vary while it is down.
        let transition = (phase, self.unreachable_since_ms, gateway.clone());
        if self.last.as_ref() == Some(&transition) {
            return;
        }
        let change = ClusterChange::Sync {
            phase,
            message: message.to_owned(),
            unreachable_since_millis: self.unreachable_since_ms,
            gateway,
        };
        match crate::liveness::cluster::record(
            self.store.as_ref(),
            &self.key.name,
            &change,
            None,
            ACTOR,
        )
        .await
        {
            Ok(_) => self.last = Some(transition),
            Err(e) => {
                tracing::warn!(cluster = %self.key.name, error = %e, "cannot write cluster status")
            }
        }
    }
}
