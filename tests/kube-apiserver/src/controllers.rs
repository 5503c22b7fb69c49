//! The built-in controllers, reacting to the store's changes as the
//! cluster's controllers would:
//!
//! * Deployments: a rollout delay after a spec change (a new generation),
//!   the status says the rollout is done (`observedGeneration`, every
//!   replica count, `Available` and `Progressing` true); while rollouts are
//!   held it says the new replicas are not available;
//! * Services of type `LoadBalancer` get `status.loadBalancer.ingress`;
//! * Secrets of type `kubernetes.io/service-account-token` naming an
//!   existing service account get `data.token` (a new token), `ca.crt` and
//!   `namespace`.
//!
//! Every write is a status (or data) write through the store, so watches
//! see `MODIFIED`. Reconciling is idempotent: a controller's own writes lead
//! to no further change.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::server::Shared;
use crate::store::{Change, ChangeKind, WriteError, object_key};
use crate::tokens::{self, MintRequest};

const TOKEN_SECRET: &str = "kubernetes.io/service-account-token";
const SA_NAME: &str = "kubernetes.io/service-account.name";
const SA_UID: &str = "kubernetes.io/service-account.uid";

/// Controller settings and switches.
pub(crate) struct Controllers {
    delay: Duration,
    load_balancer_address: Option<String>,
    next_address: AtomicU64,
    hold: tokio::sync::watch::Sender<bool>,
    ca_pem: String,
}

impl Controllers {
    pub(crate) fn new(
        delay: Duration,
        load_balancer_address: Option<String>,
        ca_pem: &str,
    ) -> Self {
        Self {
            delay,
            load_balancer_address,
            next_address: AtomicU64::new(0),
            hold: tokio::sync::watch::Sender::new(false),
            ca_pem: ca_pem.to_owned(),
        }
    }

    /// Holds (or releases) Deployment rollouts.
    pub(crate) fn hold(&self, hold: bool) {
        self.hold.send_replace(hold);
    }

    fn held(&self) -> bool {
        *self.hold.borrow()
    }

    fn address(&self) -> String {
        match &self.load_balancer_address {
            Some(address) => address.clone(),
            None => {
                let n = self.next_address.fetch_add(1, Ordering::Relaxed) % 254 + 1;
                format!("203.0.113.{n}")
            }
        }
    }
}

/// Starts the controllers.
pub(crate) fn spawn(shared: Arc<Shared>) -> JoinHandle<()> {
    let feed = shared.store.subscribe();
    tokio::spawn(run(shared, feed))
}

async fn run(shared: Arc<Shared>, mut feed: broadcast::Receiver<Arc<Change>>) {
    let mut hold = shared.controllers.hold.subscribe();
    resync(&shared);
    loop {
        tokio::select! {
            received = feed.recv() => match received {
                Ok(change) => on_change(&shared, &change),
                Err(broadcast::error::RecvError::Lagged(_)) => resync(&shared),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            changed = hold.changed() => {
                if changed.is_err() {
                    return;
                }
                resync(&shared);
            }
        }
    }
}

fn index(shared: &Shared, api_version: &str, kind: &str) -> Option<usize> {
    shared.registry.by_kind(api_version, kind)
}

/// Looks at every object again.
fn resync(shared: &Arc<Shared>) {
    for (api_version, kind) in [
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("v1", "Secret"),
    ] {
        let Some(i) = index(shared, api_version, kind) else {
            continue;
        };
        for object in shared.store.all(i) {
            look_at(shared, i, &object);
        }
    }
}

fn on_change(shared: &Arc<Shared>, change: &Change) {
    if change.kind == ChangeKind::Deleted {
        return;
    }
    if Some(change.resource) == index(shared, "v1", "ServiceAccount") {
        // Token Secrets written before their account.
        if let Some(secrets) = index(shared, "v1", "Secret") {
            let (namespace, _) = object_key(&change.object);
            for secret in shared.store.all(secrets) {
                if object_key(&secret).0 == namespace {
                    look_at(shared, secrets, &secret);
                }
            }
        }
        return;
    }
    look_at(shared, change.resource, &change.object);
}

fn look_at(shared: &Arc<Shared>, resource: usize, object: &Value) {
    let rt = shared.registry.get(resource);
    match (rt.group, rt.kind) {
        ("apps", "Deployment") => {
            let held = shared.controllers.held();
            if object.get("status") != Some(&deployment_status(object, held)) {
                let shared = Arc::clone(shared);
                let key = object_key(object);
                tokio::spawn(async move {
                    tokio::time::sleep(shared.controllers.delay).await;
                    let held = shared.controllers.held();
                    update_status(&shared, resource, &key, |o| deployment_status(o, held));
                });
            }
        }
        ("", "Service") => {
            let wanted = load_balancer_status(shared, object);
            if let Some(wanted) = wanted {
                let key = object_key(object);
                update_status(shared, resource, &key, |o| {
                    let mut status = o.get("status").cloned().unwrap_or_else(|| json!({}));
                    status["loadBalancer"] = wanted.clone();
                    status
                });
            }
        }
        ("", "Secret") => fill_token_secret(shared, resource, object),
        _ => {}
    }
}

/// Writes `status` as computed from the current object (if it still exists).
fn update_status(
    shared: &Shared,
    resource: usize,
    key: &(String, String),
    status: impl FnOnce(&Value) -> Value,
) {
    let rt = shared.registry.get(resource);
    let result = shared.store.write(resource, rt, key, false, |live| {
        let live = live.ok_or(WriteError::Rejected(Value::Null))?;
        let mut new = (**live).clone();
        new["status"] = status(live);
        Ok(new)
    });
    if let Err(WriteError::Invalid(e)) = result {
        tracing::warn!(error = %e, "kube-apiserver-test: controller status write refused");
    }
}

/// What `status.loadBalancer` should become, if it should change.
fn load_balancer_status(shared: &Shared, service: &Value) -> Option<Value> {
    let is_lb = service.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer");
    let ingress = service
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .is_some_and(|i| !i.is_empty());
    match (is_lb, ingress) {
        (true, false) => Some(json!({
            "ingress": [{"ip": shared.controllers.address(), "ipMode": "VIP"}]
        })),
        (false, true) => Some(json!({})),
        _ => None,
    }
}

/// The status a Deployment's controller reports: rollout done, or (held)
/// the new replicas not available yet.
fn deployment_status(deployment: &Value, held: bool) -> Value {
    let generation = deployment
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let replicas = deployment
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let name = deployment
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut hasher = DefaultHasher::new();
    deployment
        .pointer("/spec/template")
        .map(Value::to_string)
        .hash(&mut hasher);
    let replica_set = format!("{name}-{:010x}", hasher.finish() & 0xff_ffff_ffff);
    let previous = deployment
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let now = tokens::timestamp(SystemTime::now());
    let condition = |kind: &str, status: &str, reason: &str, message: String| {
        let old = previous.iter().find(|c| c["type"] == kind);
        let same_status = old.is_some_and(|c| c["status"] == status);
        let same =
            same_status && old.is_some_and(|c| c["reason"] == reason && c["message"] == message);
        let keep = |field: &str, keep: bool| match old {
            Some(c) if keep => c[field].clone(),
            _ => now.clone(),
        };
        json!({
            "type": kind,
            "status": status,
            "lastUpdateTime": keep("lastUpdateTime", same),
            "lastTransitionTime": keep("lastTransitionTime", same_status),
            "reason": reason,
            "message": message,
        })
    };
    let mut status = serde_json::Map::new();
    status.insert("observedGeneration".to_owned(), json!(generation));
    let mut count = |field: &str, n: i64| {
        if n != 0 {
            status.insert(field.to_owned(), json!(n));
        }
    };
    count("replicas", replicas);
    count("updatedReplicas", replicas);
    let conditions = if held {
        count("unavailableReplicas", replicas);
        vec![
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".to_owned(),
            ),
            condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{replica_set}\" is progressing."),
            ),
        ]
    } else {
        count("readyReplicas", replicas);
        count("availableReplicas", replicas);
        vec![
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".to_owned(),
            ),
            condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{replica_set}\" has successfully progressed."),
            ),
        ]
    };
    status.insert("conditions".to_owned(), Value::Array(conditions));
    Value::Object(status)
}

/// Fills a service-account token Secret whose account exists.
fn fill_token_secret(shared: &Shared, resource: usize, secret: &Value) {
    if secret.get("type").and_then(Value::as_str) != Some(TOKEN_SECRET)
        || secret.pointer("/data/token").is_some()
    {
        return;
    }
    let Some(account_name) = secret
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(SA_NAME))
        .and_then(Value::as_str)
    else {
        return;
    };
    let (namespace, name) = object_key(secret);
    let Some(accounts) = index(shared, "v1", "ServiceAccount") else {
        return;
    };
    let Some(account) = shared.store.get(accounts, &namespace, account_name) else {
        return;
    };
    let uid = account
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let (token, _) = shared.tokens.mint(&MintRequest {
        namespace: &namespace,
        name: account_name,
        uid: &uid,
        audiences: &[tokens::DEFAULT_AUDIENCE.to_owned()],
        lifetime: None,
        secret: Some(&name),
        pod: None,
    });
    let rt = shared.registry.get(resource);
    let ca = STANDARD.encode(&shared.controllers.ca_pem);
    let result = shared
        .store
        .write(resource, rt, &(namespace.clone(), name), false, |live| {
            let live = live.ok_or(WriteError::Rejected(Value::Null))?;
            let mut new = (**live).clone();
            if new.pointer("/data/token").is_some() {
                return Ok(new);
            }
            let data = new
                .as_object_mut()
                .map(|m| m.entry("data").or_insert_with(|| json!({})));
            if let Some(data) = data.and_then(Value::as_object_mut) {
                data.insert("token".to_owned(), json!(STANDARD.encode(&token)));
                data.insert("ca.crt".to_owned(), json!(ca));
                data.insert("namespace".to_owned(), json!(STANDARD.encode(&namespace)));
            }
            if let Some(annotations) = new
                .pointer_mut("/metadata/annotations")
                .and_then(Value::as_object_mut)
            {
                annotations.insert(SA_UID.to_owned(), json!(uid));
            }
            Ok(new)
        });
    if let Err(WriteError::Invalid(e)) = result {
        tracing::warn!(error = %e, "kube-apiserver-test: token Secret write refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_status_is_stable() {
        let mut d = json!({"metadata": {"name": "gw", "generation": 2}, "spec": {"replicas": 3}});
        let ready = deployment_status(&d, false);
        assert_eq!(ready["readyReplicas"], 3);
        assert_eq!(ready["observedGeneration"], 2);
        d["status"] = ready.clone();
        assert_eq!(deployment_status(&d, false), ready, "idempotent");
        let held = deployment_status(&d, true);
        assert!(held.get("readyReplicas").is_none());
        assert_eq!(held["conditions"][0]["status"], "False");
    }
}
