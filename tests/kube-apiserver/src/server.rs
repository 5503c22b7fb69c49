//! The running server and the handle tests drive it with: options, the TLS
//! listener and its connections (tracked so they can be cut), fault
//! injection, counters, the request log, the object hooks (including
//! server-side apply as a named manager), the controller switches, and
//! authentication (static tokens, minted service-account tokens) and
//! authorization checks.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_rustls::TlsAcceptor;

use crate::auth::{Attributes, Grant, Identity, Verb};
use crate::controllers::Controllers;
use crate::error::{HookError, StartError};
use crate::registry::{Registry, ResourceType, Target};
use crate::store::Store;
use crate::tls::TlsIdentity;
use crate::tokens::{MintRequest, Tokens};

/// How many requests the log keeps (the newest).
const REQUEST_LOG: usize = 4096;

/// How a test server is started. `Default` gives a server on a free port of
/// 127.0.0.1 with a new CA, no tokens, every type of
/// [`ResourceType::defaults`], a bookmark every second, and the built-in
/// controllers on (rollouts finish 200 ms after a Deployment's spec changes;
/// LoadBalancer Services get addresses from `203.0.113.0/24`).
#[derive(Clone, Debug)]
pub struct TestApiServerOptions {
    /// Where to listen; `None` is 127.0.0.1 on a free port. Give the address
    /// of a previous server (and its [`TestApiServerOptions::tls`]) to
    /// restart "the same" API server.
    pub addr: Option<SocketAddr>,
    /// The CA and serving certificate; `None` makes new ones.
    pub tls: Option<TlsIdentity>,
    /// Valid bearer tokens and what each may do.
    pub tokens: BTreeMap<String, Grant>,
    /// Served resource types ([`ResourceType::defaults`] by default).
    pub resources: Vec<ResourceType>,
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
    /// How long a watch lasts when the client gives no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
    /// How many changes history keeps before compacting the oldest away
    /// (the real watch cache is bounded too).
    pub history_limit: usize,
    /// How many changes an open watch may fall behind before the server
    /// closes it (the client then resumes from its last resourceVersion).
    pub watch_buffer: usize,
    /// Whether the built-in controllers run: Deployment status, Service
    /// load-balancer addresses, service-account token Secrets.
    pub controllers: bool,
    /// How long after a Deployment's spec changes its rollout is reported.
    pub rollout_delay: Duration,
    /// The address every LoadBalancer Service gets; `None`: `203.0.113.N`,
    /// N counting up from 1.
    pub load_balancer_address: Option<String>,
}

impl Default for TestApiServerOptions {
    fn default() -> Self {
        Self {
            addr: None,
            tls: None,
            tokens: BTreeMap::new(),
            resources: ResourceType::defaults(),
            bookmark_interval: Duration::from_secs(1),
            default_watch_timeout: Duration::from_secs(1800),
            history_limit: 1_000_000,
            watch_buffer: 16_384,
            controllers: true,
            rollout_delay: Duration::from_millis(200),
            load_balancer_address: None,
        }
    }
}

impl TestApiServerOptions {
    /// Adds a valid token.
    pub fn token(mut self, token: impl Into<String>, grant: Grant) -> Self {
        self.tokens.insert(token.into(), grant);
        self
    }

    /// Listens on this address.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    /// Serves this TLS identity.
    pub fn tls(mut self, tls: TlsIdentity) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the bookmark interval.
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// Sets the history limit.
    pub fn history_limit(mut self, limit: usize) -> Self {
        self.history_limit = limit;
        self
    }

    /// Turns the built-in controllers on or off.
    pub fn controllers(mut self, on: bool) -> Self {
        self.controllers = on;
        self
    }

    /// Sets how long a rollout takes to be reported.
    pub fn rollout_delay(mut self, delay: Duration) -> Self {
        self.rollout_delay = delay;
        self
    }

    /// Gives every LoadBalancer Service this address.
    pub fn load_balancer_address(mut self, address: impl Into<String>) -> Self {
        self.load_balancer_address = Some(address.into());
        self
    }
}

/// Counters of what the server did, for assertions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// TLS connections accepted.
    pub connections: u64,
    /// HTTP requests received.
    pub requests: u64,
    /// GETs of one object.
    pub gets: u64,
    /// LIST requests (every page counts).
    pub lists: u64,
    /// WATCH requests.
    pub watches: u64,
    /// Watch events sent (ADDED, MODIFIED, DELETED).
    pub watch_events: u64,
    /// BOOKMARK events sent.
    pub bookmarks: u64,
    /// `410 Gone` answers: ERROR events in watches and expired lists.
    pub expired: u64,
    /// 401 answers.
    pub unauthorized: u64,
    /// 403 answers.
    pub forbidden: u64,
    /// POST requests (creates and TokenRequests).
    pub creates: u64,
    /// PUT requests.
    pub updates: u64,
    /// PATCH requests (including server-side apply).
    pub patches: u64,
    /// DELETE requests.
    pub deletes: u64,
    /// `409` answers to writes (exists, stale resourceVersion, apply conflicts).
    pub conflicts: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) connections: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) gets: AtomicU64,
    pub(crate) lists: AtomicU64,
    pub(crate) watches: AtomicU64,
    pub(crate) watch_events: AtomicU64,
    pub(crate) bookmarks: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) unauthorized: AtomicU64,
    pub(crate) forbidden: AtomicU64,
    pub(crate) creates: AtomicU64,
    pub(crate) updates: AtomicU64,
    pub(crate) patches: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) conflicts: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw query string (without `?`).
    pub query: String,
    /// The authenticated user, if the token was valid.
    pub user: Option<String>,
    /// Request headers, with `authorization` redacted.
    pub headers: Vec<(String, String)>,
    /// The response status code.
    pub status: u16,
}

struct Conn {
    abort: AbortHandle,
    watches: usize,
}

/// State shared by the handle, the accept loop, connections and watches.
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) store: Store,
    static_tokens: RwLock<HashMap<String, Grant>>,
    /// Service-account tokens the server minted.
    pub(crate) tokens: Tokens,
    pub(crate) controllers: Controllers,
    latency: Mutex<Duration>,
    garbage: AtomicBool,
    /// When on, every connection is accepted, counted and reset at once.
    resetting: AtomicBool,
    pub(crate) stall: tokio::sync::watch::Sender<bool>,
    pub(crate) counters: Counters,
    conns: Mutex<HashMap<u64, Conn>>,
    next_conn: AtomicU64,
    open_watches: AtomicUsize,
    log: Mutex<VecDeque<RequestRecord>>,
    pub(crate) bookmark_interval: Duration,
    pub(crate) default_watch_timeout: Duration,
    pub(crate) addr: SocketAddr,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn grant(&self, token: &str) -> Option<Grant> {
        self.static_tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    /// Who a client certificate is: its user and groups, with the grant of a
    /// static token of the same user if there is one (else RBAC bindings decide).
    pub(crate) fn certificate_identity(&self, user: &str, groups: &[String]) -> Identity {
        let grant = self
            .static_tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .find(|g| g.user == user)
            .cloned();
        let mut all_groups = groups.to_vec();
        all_groups.push("system:authenticated".to_owned());
        Identity {
            user: user.to_owned(),
            groups: all_groups,
            grant,
        }
    }

    /// Who a bearer token is: a static token's user, or a minted token's
    /// service account (while it exists with the same uid, and the token's
    /// Secret, if any, exists). A token minted for other audiences only
    /// (a projected token for some service) does not authenticate to the
    /// API server, as on a real one.
    pub(crate) fn authenticate(&self, token: &str) -> Option<Identity> {
        if let Some(grant) = self.grant(token) {
            return Some(Identity::of_grant(grant));
        }
        let minted = self.review(token)?;
        if !minted
            .audiences
            .iter()
            .any(|a| a == crate::tokens::DEFAULT_AUDIENCE)
        {
            return None;
        }
        Some(Identity::of_service_account(
            &minted.namespace,
            &minted.name,
        ))
    }

    /// A minted token that is still valid: not expired, its service account
    /// there with the uid it was minted for, its Secret (if any) there, and
    /// its bound pod (if any, and when Pods are served) there with its uid.
    pub(crate) fn review(&self, token: &str) -> Option<crate::tokens::Minted> {
        let minted = self.tokens.lookup(token)?;
        let accounts = self.registry.by_kind("v1", "ServiceAccount")?;
        let account = self.store.get(accounts, &minted.namespace, &minted.name)?;
        if account
            .pointer("/metadata/uid")
            .and_then(serde_json::Value::as_str)
            != Some(minted.uid.as_str())
        {
            return None;
        }
        if let Some(secret) = &minted.secret {
            let secrets = self.registry.by_kind("v1", "Secret")?;
            self.store.get(secrets, &minted.namespace, secret)?;
        }
        if let (Some((pod, uid)), Some(pods)) = (&minted.pod, self.registry.by_kind("v1", "Pod")) {
            let found = self.store.get(pods, &minted.namespace, pod)?;
            if found
                .pointer("/metadata/uid")
                .and_then(serde_json::Value::as_str)
                != Some(uid)
            {
                return None;
            }
        }
        Some(minted)
    }

    /// Whether a static grant or the RBAC objects allow a request.
    pub(crate) fn authorize(&self, identity: &Identity, attributes: &Attributes) -> bool {
        identity
            .grant
            .as_ref()
            .is_some_and(|g| g.allows_request(attributes))
            || crate::rbac::allows(
                &self.registry,
                &self.store,
                &identity.user,
                &identity.groups,
                attributes,
            )
    }

    pub(crate) fn latency(&self) -> Duration {
        *lock(&self.latency)
    }

    pub(crate) fn garbage(&self) -> bool {
        self.garbage.load(Ordering::Relaxed)
    }

    pub(crate) fn record(&self, record: RequestRecord) {
        let mut log = lock(&self.log);
        if log.len() >= REQUEST_LOG {
            log.pop_front();
        }
        log.push_back(record);
    }

    /// Marks connection `conn` as carrying a watch until the guard drops.
    pub(crate) fn watch_started(self: &Arc<Self>, conn: u64) -> WatchGuard {
        if let Some(c) = lock(&self.conns).get_mut(&conn) {
            c.watches += 1;
        }
        self.open_watches.fetch_add(1, Ordering::Relaxed);
        WatchGuard {
            shared: Arc::clone(self),
            conn,
        }
    }

    fn cut(&self, only_watching: bool) -> Vec<AbortHandle> {
        let handles: Vec<AbortHandle> = {
            let mut conns = lock(&self.conns);
            let ids: Vec<u64> = conns
                .iter()
                .filter(|(_, c)| !only_watching || c.watches > 0)
                .map(|(id, _)| *id)
                .collect();
            ids.iter()
                .filter_map(|id| conns.remove(id))
                .map(|c| c.abort)
                .collect()
        };
        for handle in &handles {
            handle.abort();
        }
        handles
    }
}

/// Held by a watch while it streams.
pub(crate) struct WatchGuard {
    shared: Arc<Shared>,
    conn: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(c) = lock(&self.shared.conns).get_mut(&self.conn) {
            c.watches = c.watches.saturating_sub(1);
        }
        self.shared.open_watches.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Removes a connection from the table when its task ends or is aborted.
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        lock(&self.shared.conns).remove(&self.id);
    }
}

/// A running test API server. Dropping it stops it.
pub struct TestApiServer {
    shared: Arc<Shared>,
    tls: TlsIdentity,
    acceptor: TlsAcceptor,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    controller_task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TestApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApiServer")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

impl TestApiServer {
    /// Starts a server: makes (or reuses) the TLS identity, binds, serves.
    pub async fn start(options: TestApiServerOptions) -> Result<Self, StartError> {
        let tls = match options.tls {
            Some(tls) => tls,
            None => TlsIdentity::generate()?,
        };
        let acceptor = TlsAcceptor::from(tls.server_config()?);
        let wanted = options
            .addr
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let listener = bind(wanted).await?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: wanted,
            source,
        })?;
        let types = options.resources.len();
        let shared = Arc::new(Shared {
            registry: Registry::new(options.resources),
            store: Store::new(types, options.history_limit, options.watch_buffer),
            static_tokens: RwLock::new(options.tokens.into_iter().collect()),
            tokens: Tokens::default(),
            controllers: Controllers::new(
                options.rollout_delay,
                options.load_balancer_address.clone(),
                tls.ca_pem(),
            ),
            latency: Mutex::new(Duration::ZERO),
            garbage: AtomicBool::new(false),
            resetting: AtomicBool::new(false),
            stall: tokio::sync::watch::Sender::new(false),
            counters: Counters::default(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            open_watches: AtomicUsize::new(0),
            log: Mutex::new(VecDeque::new()),
            bookmark_interval: options.bookmark_interval,
            default_watch_timeout: options.default_watch_timeout,
            addr,
        });
        seed_namespaces(&shared);
        let controller_task = options
            .controllers
            .then(|| crate::controllers::spawn(Arc::clone(&shared)));
        let task = tokio::spawn(accept_loop(listener, acceptor.clone(), Arc::clone(&shared)));
        Ok(Self {
            shared,
            tls,
            acceptor,
            accept_task: Mutex::new(Some(task)),
            controller_task,
        })
    }

    /// The base URL, `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.shared.addr)
    }

    /// The listening address (kept across [`TestApiServer::go_down`] and
    /// [`TestApiServer::come_up`]).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The CA certificate clients must trust, PEM.
    pub fn ca_pem(&self) -> &str {
        self.tls.ca_pem()
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &[u8] {
        self.tls.ca_der()
    }

    /// The TLS identity, to start a replacement server clients still trust.
    pub fn tls_identity(&self) -> &TlsIdentity {
        &self.tls
    }

    // ----- objects -----

    fn resource_index<K: Resource>(&self) -> Result<usize, HookError> {
        self.shared
            .registry
            .by_kind(K::API_VERSION, K::KIND)
            .ok_or_else(|| HookError::UnknownResource {
                api_version: K::API_VERSION.to_owned(),
                kind: K::KIND.to_owned(),
            })
    }

    /// Creates or replaces an object (by namespace and name), as a
    /// controller in the cluster would: bumps the resourceVersion and
    /// sends `ADDED` or `MODIFIED` to watches. The server sets uid,
    /// creationTimestamp, generation and resourceVersion; an object equal to
    /// the stored one changes nothing. Returns the stored object.
    pub fn apply<K>(&self, object: &K) -> Result<K, HookError>
    where
        K: Resource + Serialize + DeserializeOwned,
    {
        let index = self.resource_index::<K>()?;
        let value = serde_json::to_value(object)?;
        let stored = self
            .shared
            .store
            .apply(index, self.shared.registry.get(index), value)?;
        Ok(serde_json::from_value((*stored).clone())?)
    }

    /// Deletes an object (`namespace` is ignored for cluster-scoped kinds);
    /// sends `DELETED` to watches. Returns its last state. A Namespace takes
    /// the objects in it along.
    pub fn delete<K>(&self, namespace: &str, name: &str) -> Result<K, HookError>
    where
        K: Resource + DeserializeOwned,
    {
        let index = self.resource_index::<K>()?;
        if K::API_VERSION == "v1" && K::KIND == "Namespace" {
            crate::write::delete_namespace_contents(&self.shared, name);
        }
        let last =
            self.shared
                .store
                .delete(index, self.shared.registry.get(index), namespace, name)?;
        Ok(serde_json::from_value((*last).clone())?)
    }

    /// Server-side apply of `object` as field manager `manager`, forced
    /// (it takes the fields from other managers): how a test makes another
    /// manager own a field. Returns the stored object.
    pub fn apply_as<K>(&self, manager: &str, object: &K) -> Result<K, HookError>
    where
        K: Resource + Serialize + DeserializeOwned,
    {
        self.server_side_apply(manager, object, true)
    }

    /// Server-side apply of `object` as field manager `manager`, as
    /// `PATCH` with `application/apply-patch+yaml` does; a conflict is
    /// [`HookError::Conflict`] unless `force`.
    pub fn server_side_apply<K>(
        &self,
        manager: &str,
        object: &K,
        force: bool,
    ) -> Result<K, HookError>
    where
        K: Resource + Serialize + DeserializeOwned,
    {
        let index = self.resource_index::<K>()?;
        let rt = self.shared.registry.get(index);
        let body = serde_json::to_vec(object)?;
        let value: serde_json::Value = serde_json::from_slice(&body)?;
        let text = |p: &str| {
            value
                .pointer(p)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let name = text("/metadata/name")
            .ok_or_else(|| HookError::Invalid("metadata.name is required".to_owned()))?;
        let namespace = text("/metadata/namespace").filter(|_| rt.namespaced);
        if rt.namespaced && namespace.is_none() {
            return Err(HookError::Invalid(format!(
                "a {} needs metadata.namespace",
                rt.kind
            )));
        }
        let target = Target {
            resource: index,
            namespace,
            name: Some(name),
            subresource: None,
        };
        let write = crate::write::Write {
            shared: &self.shared,
            target: &target,
            body: &body,
            content_type: "application/apply-patch+yaml",
            field_manager: Some(manager),
            default_manager: manager.to_owned(),
            force,
            dry_run: false,
        };
        match crate::write::patch(&write) {
            Ok((_, stored)) => Ok(serde_json::from_value(stored)?),
            Err(status) => {
                let message = status
                    .get("message")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("refused")
                    .to_owned();
                if status.get("code").and_then(serde_json::Value::as_u64) == Some(409) {
                    Err(HookError::Conflict(message))
                } else {
                    Err(HookError::Invalid(message))
                }
            }
        }
    }

    /// One stored object.
    pub fn get<K>(&self, namespace: &str, name: &str) -> Result<Option<K>, HookError>
    where
        K: Resource + DeserializeOwned,
    {
        let index = self.resource_index::<K>()?;
        let namespace = if self.shared.registry.get(index).namespaced {
            namespace
        } else {
            ""
        };
        self.shared
            .store
            .get(index, namespace, name)
            .map(|v| serde_json::from_value((*v).clone()))
            .transpose()
            .map_err(HookError::from)
    }

    /// Every stored object of a kind, ordered by namespace and name.
    pub fn list<K>(&self) -> Result<Vec<K>, HookError>
    where
        K: Resource + DeserializeOwned,
    {
        let index = self.resource_index::<K>()?;
        self.shared
            .store
            .all(index)
            .into_iter()
            .map(|v| serde_json::from_value((*v).clone()).map_err(HookError::from))
            .collect()
    }

    /// The newest resourceVersion of the store.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.resource_version()
    }

    /// The oldest resourceVersion a watch can still resume from.
    pub fn compacted_resource_version(&self) -> u64 {
        self.shared.store.compacted()
    }

    // ----- faults -----

    /// Forgets history up to now: a watch resumed from an older
    /// resourceVersion gets `410 Gone` (an `ERROR` event), and continue
    /// tokens of older lists expire.
    pub fn compact(&self) {
        self.shared.store.compact();
    }

    /// Cuts every connection that carries a watch, abruptly (no final
    /// chunk, no TLS close_notify). Returns how many connections were cut.
    pub fn drop_watches(&self) -> usize {
        self.shared.cut(true).len()
    }

    /// While stalled, open watches send nothing (no events, no bookmarks),
    /// like a stuck network path; what they missed is sent when unstalled
    /// (unless they fell more than `watch_buffer` changes behind, which
    /// closes them).
    pub fn stall_watches(&self, stalled: bool) {
        self.shared.stall.send_replace(stalled);
    }

    /// Stops accepting connections (new ones are refused) and cuts every
    /// open one; returns when they are closed. Objects and history are kept.
    pub async fn go_down(&self) {
        let task = lock(&self.accept_task).take();
        if let Some(task) = task {
            task.abort();
            // Wait until the listener is closed; the task was aborted, so
            // the join error is expected.
            let _ = task.await;
        }
        // Wait (briefly) until the connections and their watches are gone,
        // so a test sees the server down when this returns.
        let handles = self.shared.cut(false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while (handles.iter().any(|h| !h.is_finished()) || self.open_watches() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Listens again on the same address after [`TestApiServer::go_down`].
    pub async fn come_up(&self) -> Result<(), StartError> {
        if self.is_up() {
            return Err(StartError::AlreadyUp);
        }
        let listener = bind(self.shared.addr).await?;
        let task = tokio::spawn(accept_loop(
            listener,
            self.acceptor.clone(),
            Arc::clone(&self.shared),
        ));
        *lock(&self.accept_task) = Some(task);
        Ok(())
    }

    /// Whether the server is accepting connections.
    pub fn is_up(&self) -> bool {
        lock(&self.accept_task).is_some()
    }

    /// Delays every response by this much (zero: no delay).
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.shared.latency) = latency;
    }

    /// When on, every connection is accepted (and counted in
    /// [`Stats::connections`]) and reset at once, before TLS: a server that
    /// is down, as its clients see it, that still counts their attempts.
    /// Open connections are cut too.
    pub fn set_resetting(&self, resetting: bool) {
        self.shared.resetting.store(resetting, Ordering::Relaxed);
        if resetting {
            self.shared.cut(false);
        }
    }

    /// When on, every response is `200` with a body that is not JSON.
    pub fn set_garbage(&self, garbage: bool) {
        self.shared.garbage.store(garbage, Ordering::Relaxed);
    }

    // ----- auth -----

    /// Adds or replaces a valid token.
    pub fn set_token(&self, token: impl Into<String>, grant: Grant) {
        self.shared
            .static_tokens
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.into(), grant);
    }

    /// Makes a token invalid (requests with it get 401).
    pub fn revoke_token(&self, token: &str) {
        self.shared
            .static_tokens
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(token);
    }

    /// Mints a token for a service account (which must exist). With a
    /// `lifetime`, as a TokenRequest with that `expirationSeconds` would
    /// (whole seconds; the same bounds: at least 10 minutes, at most 2^32
    /// seconds, else [`HookError::Invalid`] with the real server's
    /// message); to see it expire, [`TestApiServer::advance_clock`] past
    /// it. `None` never expires, like the token of a
    /// `kubernetes.io/service-account-token` Secret. The token works until
    /// it expires or the account is deleted.
    pub fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        lifetime: Option<Duration>,
    ) -> Result<String, HookError> {
        self.mint_for_account(
            namespace,
            name,
            &[crate::tokens::DEFAULT_AUDIENCE],
            lifetime,
            None,
        )
    }

    /// A projected service-account token, as the kubelet mounts one into a
    /// pod: for `audiences`, valid for `lifetime` (10 minutes to 2^32
    /// seconds), bound to pod `pod` (with `pod_uid`) when given. It does not
    /// authenticate to this API server unless its audiences include the
    /// server's; a `TokenReview` for one of its audiences accepts it while
    /// it is valid.
    pub fn projected_token(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
        lifetime: Duration,
        pod: Option<(&str, &str)>,
    ) -> Result<String, HookError> {
        self.mint_for_account(namespace, name, audiences, Some(lifetime), pod)
    }

    /// Mints a token for service account `namespace/name` (which must
    /// exist): for `audiences`, with `lifetime` bounded as a TokenRequest's
    /// (`None`: never expires), bound to `pod` when given.
    fn mint_for_account(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
        lifetime: Option<Duration>,
        pod: Option<(&str, &str)>,
    ) -> Result<String, HookError> {
        let lifetime = lifetime
            .map(|l| {
                let seconds = i64::try_from(l.as_secs()).unwrap_or(i64::MAX);
                crate::tokens::expiration(seconds).map_err(|why| {
                    HookError::Invalid(format!("{}: {why}", crate::tokens::EXPIRATION_FIELD))
                })
            })
            .transpose()?;
        let index = self.resource_index::<k8s_openapi::api::core::v1::ServiceAccount>()?;
        let account = self
            .shared
            .store
            .get(index, namespace, name)
            .ok_or_else(|| HookError::NotFound {
                plural: "serviceaccounts".to_owned(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })?;
        let uid = account
            .pointer("/metadata/uid")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        let audiences: Vec<String> = audiences.iter().map(|a| (*a).to_owned()).collect();
        let (token, _) = self.shared.tokens.mint(&MintRequest {
            namespace,
            name,
            uid,
            audiences: &audiences,
            lifetime,
            secret: None,
            pod,
        });
        Ok(token)
    }

    /// Moves the API server's clock forward by `by`: simulates that much
    /// time passing on the API server, so a test can see a token expire
    /// without waiting for it (TokenRequest lifetimes are at least 10
    /// minutes, as on a real server). The clock decides when tokens are
    /// minted (their `iat`/`exp` claims and `expirationTimestamp`) and
    /// whether a presented token has expired; tokens minted before keep
    /// their expiry, so advancing past it makes them fail with 401 while
    /// later or longer-lived ones keep working. It never goes back, and
    /// stored objects' timestamps (`creationTimestamp`, conditions) stay on
    /// the wall clock.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.tokens.clock.advance(by);
    }

    /// Whether `user` may do what `attributes` asks, by the static grants
    /// given to that user name and the RBAC objects in the store (a
    /// `system:serviceaccount:{ns}:{name}` user is in that account's groups).
    pub fn allowed(&self, user: &str, attributes: &Attributes) -> bool {
        let mut identity = match user
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        {
            Some((namespace, name)) => Identity::of_service_account(namespace, name),
            None => Identity::of_grant(Grant::nothing(user)),
        };
        identity.grant = None;
        let grants = self
            .shared
            .static_tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|g| g.user == user && g.allows_request(attributes));
        grants || self.shared.authorize(&identity, attributes)
    }

    /// `kubectl auth can-i` for tests: whether `user` may `verb` the
    /// `resource` (`services`, `deployments.apps`, `serviceaccounts/token`)
    /// in `namespace` (`None`: cluster-wide).
    pub fn can(&self, user: &str, verb: Verb, resource: &str, namespace: Option<&str>) -> bool {
        self.allowed(user, &Attributes::parse(verb, resource, namespace))
    }

    // ----- controllers -----

    /// While held, Deployments report a rollout that is not done
    /// (`readyReplicas` 0, `Available` false); releasing reports them done.
    pub fn hold_rollouts(&self, hold: bool) {
        self.shared.controllers.hold(hold);
    }

    // ----- observation -----

    /// The counters.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            connections: load(&c.connections),
            requests: load(&c.requests),
            gets: load(&c.gets),
            lists: load(&c.lists),
            watches: load(&c.watches),
            watch_events: load(&c.watch_events),
            bookmarks: load(&c.bookmarks),
            expired: load(&c.expired),
            unauthorized: load(&c.unauthorized),
            forbidden: load(&c.forbidden),
            creates: load(&c.creates),
            updates: load(&c.updates),
            patches: load(&c.patches),
            deletes: load(&c.deletes),
            conflicts: load(&c.conflicts),
        }
    }

    /// How many watches are streaming now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::Relaxed)
    }

    /// Waits until at least `count` watches are streaming; false on timeout.
    pub async fn wait_for_watches(&self, count: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.open_watches() < count {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// The newest requests (up to 4096), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).iter().cloned().collect()
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.accept_task).take() {
            task.abort();
        }
        if let Some(task) = &self.controller_task {
            task.abort();
        }
        self.shared.cut(false);
    }
}

/// The namespaces every cluster has.
fn seed_namespaces(shared: &Shared) {
    let Some(index) = shared.registry.by_kind("v1", "Namespace") else {
        return;
    };
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let namespace = serde_json::json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}
        });
        if let Err(e) = shared
            .store
            .apply(index, shared.registry.get(index), namespace)
        {
            tracing::warn!(error = %e, "kube-apiserver-test: cannot seed namespace {name}");
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    // After `go_down` the port may take a moment to be free again.
    let mut attempt = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < 50 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(source) => return Err(StartError::Bind { addr, source }),
        }
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "kube-apiserver-test: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        bump(&shared.counters.connections);
        if shared.resetting.load(Ordering::Relaxed) {
            // Reset, not an orderly close: what a refused connection looks like.
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            drop(tcp);
            continue;
        }
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        // Insert under the lock so the connection's guard cannot remove the
        // entry before it exists.
        let mut conns = lock(&shared.conns);
        let task = tokio::spawn(serve_connection(
            tcp,
            acceptor.clone(),
            Arc::clone(&shared),
            id,
        ));
        conns.insert(
            id,
            Conn {
                abort: task.abort_handle(),
                watches: 0,
            },
        );
    }
}

async fn serve_connection(tcp: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>, id: u64) {
    let _guard = ConnGuard {
        shared: Arc::clone(&shared),
        id,
    };
    // Failing to set no-delay only costs latency.
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "kube-apiserver-test: TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let client = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(crate::tls::client_identity)
        .map(Arc::new);
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        let client = client.clone();
        async move { Ok::<_, Infallible>(crate::http::handle(shared, id, client, request).await) }
    });
    if let Err(e) = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(error = %e, "kube-apiserver-test: connection ended with an error");
    }
}
