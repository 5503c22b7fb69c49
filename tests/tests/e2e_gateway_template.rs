//! The gateway Deployment the federation renders starts a gateway that joins.
//!
//! A real `gns-federation` process installs the gateway of member cluster
//! `east` into a Kubernetes API test server, as it would into a real cluster
//! (the cluster is registered with a `gatewayDeployment` and joins a global
//! namespace; the federation renders `deploy/gateway/gateway.yaml` with a
//! join token it minted and server-side applies it). The test reads the
//! Deployment back from that API server and plays the kubelet: it takes the
//! container's `args` and `env`, resolves `env[].valueFrom` (and `envFrom`)
//! from the Secrets and ConfigMaps the federation applied, expands `$(VAR)`
//! references, and starts the real `gns-gateway` binary with exactly those
//! arguments and that environment (nothing inherited from the test). The
//! gateway must then trade the Secret's join token for a certificate, load
//! its config from the federation and pass the Deployment's own readiness
//! and liveness probes.
//!
//! What the test changes, and why only that:
//!
//! * listen flags (`--*-listen`, or `GNS_*_LISTEN` in the env) whose address
//!   is a wildcard (`0.0.0.0:PORT`, `[::]:PORT`) become `127.0.0.1:<free
//!   port>`. In a pod the wildcard binds the pod's own network namespace;
//!   here it would bind every interface of the shared test machine and
//!   collide with fixed ports of other tests (traffic stays on 127.0.0.0/8).
//!   The port is free instead of the template's because tests run in
//!   parallel. The probes and Services are then followed to these addresses
//!   through the container ports they name, as the kubelet and kube-proxy
//!   would.
//! * `--state-dir` (or `GNS_STATE_DIR`), the mount path of the pod's
//!   `emptyDir` volume, becomes an empty temporary directory: the kubelet
//!   mounts a fresh empty directory there, and `/var/lib/gns-gateway` does
//!   not exist (or is not ours) on the test machine.
//! * a path under the mount path of a `configMap` volume (the federation's
//!   CA, `GNS_FEDERATION_CA`) or of a `projected` volume of
//!   `serviceAccountToken` sources (`GNS_SERVICE_ACCOUNT_TOKEN`) becomes the
//!   same path under a temporary directory into which the test writes the
//!   ConfigMap's keys, or a token the API test server mints for the pod's
//!   service account with the source's audience and lifetime, bound to the
//!   pod, as the kubelet projects them.
//!
//! The gateway joins with that token (no join token is deployed); a second
//! replica joins with the same token file, and a replica restarted with an
//! empty state dir joins again. A token of another account, another
//! audience or another cluster is refused.
//!
//! Every other argument and variable is passed through byte for byte, and
//! the test asserts so. The federation URL needs no rewriting: the cluster is
//! registered with `gatewayDeployment.federationUrl` set to the test
//! federation's real `https://127.0.0.1:PORT`, which the gateway verifies
//! with the CA the federation put into the ConfigMap.
//!
//! What the kubelet would know and the API objects don't say, the test makes
//! up plausibly for `fieldRef` (the template takes the instance name from
//! `metadata.name`; a new reference must not silently become an empty value): `metadata.name` is a
//! ReplicaSet-style pod name (`gns-gateway-7c5d9b8f6d-x2k4q`),
//! `metadata.namespace` the Deployment's, `metadata.uid` a fixed UUID,
//! `metadata.labels['…']`/`metadata.annotations['…']` the pod template's (plus
//! `pod-template-hash`), `spec.serviceAccountName` the pod spec's,
//! `spec.nodeName` `gns-test-node`, and `status.podIP(s)`/`status.hostIP(s)`
//! `127.0.0.1`, where the pod's listeners end up here. Any other `fieldRef`,
//! a `resourceFieldRef`, a missing Secret/ConfigMap/key that is not
//! `optional`, a `command` overriding the image's entrypoint (the test runs
//! `gns-gateway` as the image's entrypoint) or a second container fails the
//! test, saying what to teach it. The container runtime's own additions
//! (`HOSTNAME`, `KUBERNETES_SERVICE_*`, the image's `ENV`) are left out: the
//! gateway reads none of them.
//!
//! The binaries must be built first: `cargo build --workspace --bins`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use gns_tests::{Proc, binary, free_port, gateway_metric, start_federation};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Probe, Secret, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_apiserver_test::{Grant, TestApiServer, TestApiServerOptions};
use serde_json::{Value, json};

/// The federation's admin token.
const ADMIN_TOKEN: &str = "gns_e2e_gateway_template_admin";
/// The token the federation uses against the member cluster's API server.
const KUBE_TOKEN: &str = "federation-kube-token";
const CLUSTER: &str = "east";
const NAMESPACE: &str = "gns-system";
const DEPLOYMENT: &str = "gns-gateway";
const IMAGE: &str = "registry.example/gns-gateway:0.1.0";
const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The kubelet's part: a container's environment and arguments.

/// What the kubelet knows about the pod that the API objects don't say.
struct PodFacts {
    name: String,
    namespace: String,
    uid: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    service_account: String,
    node_name: String,
    pod_ip: String,
    host_ip: String,
}

impl PodFacts {
    /// The pod made an object of the API server, as the scheduler's
    /// binding does: the uid is the server's (projected tokens are bound to
    /// it, and a TokenReview checks the pod still exists).
    fn created_in(mut self, kube: &TestApiServer) -> PodFacts {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": self.labels},
            "spec": {"serviceAccountName": self.service_account, "nodeName": self.node_name,
                     "containers": [{"name": "gateway"}]},
        }))
        .expect("pod");
        let stored = kube.apply(&pod).expect("the pod is created");
        self.uid = stored.metadata.uid.expect("the server gives the pod a uid");
        self
    }

    /// The facts of a pod of `deployment` running on this machine.
    fn of(deployment: &Deployment) -> PodFacts {
        let name = deployment.metadata.name.clone().unwrap_or_default();
        let template = deployment
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let meta = template.metadata.unwrap_or_default();
        let mut labels = meta.labels.unwrap_or_default();
        labels.insert("pod-template-hash".into(), "7c5d9b8f6d".into());
        PodFacts {
            name: format!("{name}-7c5d9b8f6d-x2k4q"),
            namespace: deployment
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            uid: "0b6f2d8e-4c1a-4f3e-9a57-2d1c8e6b9f40".into(),
            labels,
            annotations: meta.annotations.unwrap_or_default(),
            service_account: template
                .spec
                .and_then(|s| s.service_account_name)
                .unwrap_or_else(|| "default".into()),
            node_name: "gns-test-node".into(),
            pod_ip: "127.0.0.1".into(),
            host_ip: "127.0.0.1".into(),
        }
    }

    /// A `fieldRef` path's value, as the kubelet's downward API gives it.
    fn field(&self, path: &str) -> Result<String, String> {
        let keyed = |prefix: &str, map: &BTreeMap<String, String>| {
            let key = path.strip_prefix(prefix)?.strip_suffix("']")?.to_owned();
            Some(map.get(&key).cloned().unwrap_or_default())
        };
        if let Some(v) = keyed("metadata.labels['", &self.labels) {
            return Ok(v);
        }
        if let Some(v) = keyed("metadata.annotations['", &self.annotations) {
            return Ok(v);
        }
        Ok(match path {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.namespace.clone(),
            "metadata.uid" => self.uid.clone(),
            "spec.serviceAccountName" => self.service_account.clone(),
            "spec.nodeName" => self.node_name.clone(),
            "status.podIP" | "status.podIPs" => self.pod_ip.clone(),
            "status.hostIP" | "status.hostIPs" => self.host_ip.clone(),
            other => {
                return Err(format!(
                    "fieldRef {other:?} is not resolved by this test: give it a plausible value in PodFacts::field"
                ));
            }
        })
    }
}

/// The Secrets and ConfigMaps a pod's environment can come from.
#[derive(Default)]
struct Objects {
    /// `(namespace, name)` → key → bytes.
    secrets: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
    /// `(namespace, name)` → key → bytes (`data`, then `binaryData`).
    config_maps: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
}

impl Objects {
    /// Everything of these kinds in the API server.
    fn read(api: &TestApiServer) -> Objects {
        let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            (
                m.namespace.clone().unwrap_or_default(),
                m.name.clone().unwrap_or_default(),
            )
        };
        let mut objects = Objects::default();
        for secret in api.list::<Secret>().expect("list secrets") {
            // The kubelet sees `data` only: the API server folds `stringData` into it.
            let data = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            objects.secrets.insert(key(&secret.metadata), data);
        }
        for map in api.list::<ConfigMap>().expect("list config maps") {
            let mut data: BTreeMap<String, Vec<u8>> = map
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in map.binary_data.unwrap_or_default() {
                data.entry(k).or_insert(v.0);
            }
            objects.config_maps.insert(key(&map.metadata), data);
        }
        objects
    }

    fn source(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<&BTreeMap<String, Vec<u8>>> {
        let key = (namespace.to_owned(), name.to_owned());
        match kind {
            "Secret" => self.secrets.get(&key),
            _ => self.config_maps.get(&key),
        }
    }

    /// One key of a Secret or ConfigMap; `Ok(None)` when it is missing but optional.
    fn key(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        key: &str,
        optional: Option<bool>,
    ) -> Result<Option<String>, String> {
        let value = self.source(kind, namespace, name).and_then(|d| d.get(key));
        match value {
            Some(bytes) => String::from_utf8(bytes.clone())
                .map(Some)
                .map_err(|_| format!("{kind} {namespace}/{name} key {key:?} is not UTF-8")),
            None if optional == Some(true) => Ok(None),
            None => Err(format!(
                "{kind} {namespace}/{name} has no key {key:?} (or does not exist) and the \
                 reference is not optional: the kubelet would not start the container"
            )),
        }
    }
}

/// Expands `$(VAR)` as Kubernetes does in `env[].value`, `args` and
/// `command`: a defined variable is replaced, an undefined reference stays as
/// written, `$$` is a literal `$`.
fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(end) => {
                    let name = &tail[..end];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &tail[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment as the kubelet makes it: `envFrom` sources
/// in order, then `env` entries in order (a later one overrides an earlier
/// one of the same name), each `value` expanded with what is defined before
/// it. An error says which source can't be resolved.
fn container_env(
    pod: &PodFacts,
    container: &Container,
    objects: &Objects,
) -> Result<Vec<(String, String)>, String> {
    fn set(env: &mut Vec<(String, String)>, name: String, value: String) {
        match env.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = value,
            None => env.push((name, value)),
        }
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for source in container.env_from.iter().flatten() {
        let (kind, name, optional) = match (&source.secret_ref, &source.config_map_ref) {
            (Some(s), None) => ("Secret", &s.name, s.optional),
            (None, Some(c)) => ("ConfigMap", &c.name, c.optional),
            _ => {
                return Err(format!(
                    "envFrom entry {source:?} names not exactly one of secretRef and configMapRef"
                ));
            }
        };
        let Some(data) = objects.source(kind, &pod.namespace, name) else {
            if optional == Some(true) {
                continue;
            }
            return Err(format!(
                "envFrom {kind} {}/{name} does not exist and is not optional: the kubelet \
                 would not start the container",
                pod.namespace
            ));
        };
        let prefix = source.prefix.clone().unwrap_or_default();
        for (key, bytes) in data {
            let value = String::from_utf8(bytes.clone())
                .map_err(|_| format!("envFrom {kind} {name} key {key:?} is not UTF-8"))?;
            set(&mut env, format!("{prefix}{key}"), value);
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, None) => {
                let defined = env.clone();
                Some(expand(var.value.as_deref().unwrap_or_default(), |n| {
                    defined.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
                }))
            }
            (Some(_), Some(_)) => {
                return Err(format!("env {} has both value and valueFrom", var.name));
            }
            (None, Some(from)) => {
                match (
                    &from.secret_key_ref,
                    &from.config_map_key_ref,
                    &from.field_ref,
                    &from.resource_field_ref,
                ) {
                    (Some(s), None, None, None) => {
                        objects.key("Secret", &pod.namespace, &s.name, &s.key, s.optional)?
                    }
                    (None, Some(c), None, None) => {
                        objects.key("ConfigMap", &pod.namespace, &c.name, &c.key, c.optional)?
                    }
                    (None, None, Some(f), None) => Some(
                        pod.field(&f.field_path)
                            .map_err(|e| format!("env {}: {e}", var.name))?,
                    ),
                    (None, None, None, Some(r)) => {
                        return Err(format!(
                            "env {}: resourceFieldRef {:?} is not resolved by this test: teach container_env",
                            var.name, r.resource
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "env {}: valueFrom {from:?} names not exactly one source",
                            var.name
                        ));
                    }
                }
            }
        };
        if let Some(value) = value {
            set(&mut env, var.name.clone(), value);
        }
    }
    Ok(env)
}

/// The container's arguments with `$(VAR)` expanded from its environment.
fn container_args(container: &Container, env: &[(String, String)]) -> Vec<String> {
    container
        .args
        .iter()
        .flatten()
        .map(|arg| {
            expand(arg, |n| {
                env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The test's part: from a pod to a process on this machine.

/// Where one setting was changed for the test machine.
#[derive(Debug, Clone, PartialEq)]
enum Place {
    /// `args[i]` (the value is in the same argument after `=`, or in `args[i]` itself).
    Arg(usize),
    /// The environment variable of this name.
    Env(String),
}

/// One value the test changed, and to what.
#[derive(Debug, Clone, PartialEq)]
struct Rewrite {
    place: Place,
    /// The flag (`--admin-listen`) or variable (`GNS_ADMIN_LISTEN`).
    setting: String,
    from: String,
    to: String,
}

/// The process to start: arguments, environment, and what was changed.
struct Launch {
    args: Vec<String>,
    env: Vec<(String, String)>,
    rewrites: Vec<Rewrite>,
}

impl Launch {
    /// The loopback address that replaced the wildcard listen address on `port`.
    fn listener_for_port(&self, port: u16) -> Option<SocketAddr> {
        self.listeners().find_map(|r| {
            let from: SocketAddr = r.from.parse().ok()?;
            (from.port() == port).then(|| r.to.parse().ok())?
        })
    }

    /// The rewritten state dir.
    fn state_dir(&self) -> Option<&Rewrite> {
        self.rewrites
            .iter()
            .find(|r| r.setting == "--state-dir" || r.setting == "GNS_STATE_DIR")
    }

    /// The rewritten listen addresses.
    fn listeners(&self) -> impl Iterator<Item = &Rewrite> {
        self.rewrites.iter().filter(|r| wildcard(&r.from).is_some())
    }

    /// The loopback address of a listen setting (`--admin-listen`).
    fn listener(&self, flag: &str) -> Option<SocketAddr> {
        let env_name = flag_env_name(flag);
        self.rewrites
            .iter()
            .find(|r| r.setting == flag || r.setting == env_name)
            .and_then(|r| r.to.parse().ok())
    }
}

/// `--admin-listen` → `GNS_ADMIN_LISTEN` (the gateway reads both).
fn flag_env_name(flag: &str) -> String {
    format!(
        "GNS_{}",
        flag.trim_start_matches('-')
            .replace('-', "_")
            .to_uppercase()
    )
}

/// A listen address that binds every interface.
fn wildcard(value: &str) -> Option<SocketAddr> {
    value
        .parse::<SocketAddr>()
        .ok()
        .filter(|a| a.ip().is_unspecified())
}

/// Where the pod's volumes are on the test machine.
struct Volumes {
    /// The emptyDir of the state dir.
    state_dir: PathBuf,
    /// Mount path in the container → the directory holding its ConfigMap's keys.
    config_maps: Vec<(String, PathBuf)>,
}

/// Writes the keys of every `configMap` volume the container mounts, and
/// the tokens of every `projected` volume of `serviceAccountToken` sources
/// (minted by `kube` for the pod's service account, bound to the pod), into
/// `root/<volume>/`, as the kubelet projects them; returns mount path →
/// directory. A missing ConfigMap or key that is not optional fails, and so
/// does any other projected source.
fn project_volumes(
    pod_spec: &PodSpec,
    container: &Container,
    pod: &PodFacts,
    kube: &TestApiServer,
    objects: &Objects,
    root: &Path,
) -> Result<Vec<(String, PathBuf)>, String> {
    let namespace = pod.namespace.as_str();
    let mut out = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let Some(volume) = pod_spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
        else {
            return Err(format!("volume mount {} names no volume", mount.name));
        };
        if let Some(projected) = &volume.projected {
            let dir = root.join(&volume.name);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            for source in projected.sources.iter().flatten() {
                let Some(sat) = &source.service_account_token else {
                    return Err(format!(
                        "projected volume {} has a source other than serviceAccountToken: teach the test",
                        volume.name
                    ));
                };
                let audience = sat.audience.clone().unwrap_or_default();
                let seconds = sat.expiration_seconds.unwrap_or(3600);
                let token = kube
                    .projected_token(
                        namespace,
                        &pod.service_account,
                        &[audience.as_str()],
                        Duration::from_secs(u64::try_from(seconds).unwrap_or(3600)),
                        Some((&pod.name, &pod.uid)),
                    )
                    .map_err(|e| format!("projected token of volume {}: {e}", volume.name))?;
                std::fs::write(dir.join(&sat.path), token).map_err(|e| e.to_string())?;
            }
            out.push((mount.mount_path.trim_end_matches('/').to_owned(), dir));
            continue;
        }
        let Some(source) = &volume.config_map else {
            continue;
        };
        let name = source.name.clone();
        let optional = source.optional == Some(true);
        let Some(data) = objects.source("ConfigMap", namespace, &name) else {
            if optional {
                continue;
            }
            return Err(format!(
                "ConfigMap {namespace}/{name} of volume {} does not exist: the kubelet would not start the pod",
                volume.name
            ));
        };
        let dir = root.join(&volume.name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let items: Vec<(String, String)> = match &source.items {
            Some(items) => items
                .iter()
                .map(|i| (i.key.clone(), i.path.clone()))
                .collect(),
            None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
        };
        for (key, path) in items {
            let bytes = data.get(&key).ok_or_else(|| {
                format!(
                    "ConfigMap {namespace}/{name} has no key {key:?} for volume {}",
                    volume.name
                )
            })?;
            std::fs::write(dir.join(path), bytes).map_err(|e| e.to_string())?;
        }
        out.push((mount.mount_path.trim_end_matches('/').to_owned(), dir));
    }
    Ok(out)
}

/// What `setting = value` becomes on the test machine, if it changes.
fn rewritten(setting: &str, value: &str, volumes: &Volumes) -> Option<String> {
    let listen = setting.starts_with("--") && setting.ends_with("-listen")
        || setting.starts_with("GNS_") && setting.ends_with("_LISTEN");
    if setting == "--state-dir" || setting == "GNS_STATE_DIR" {
        Some(volumes.state_dir.display().to_string())
    } else if listen && wildcard(value).is_some() {
        Some(format!("127.0.0.1:{}", free_port()))
    } else {
        volumes.config_maps.iter().find_map(|(mount, dir)| {
            let rest = value.strip_prefix(mount.as_str())?.strip_prefix('/')?;
            Some(dir.join(rest).display().to_string())
        })
    }
}

/// The container's arguments and environment with the listen addresses,
/// the state dir and paths into ConfigMap volumes changed for this machine
/// (see the module doc), and nothing else.
fn for_this_machine(args: &[String], env: &[(String, String)], volumes: &Volumes) -> Launch {
    let mut launch = Launch {
        args: args.to_vec(),
        env: env.to_vec(),
        rewrites: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if let Some((flag, value)) = arg.split_once('=').filter(|_| arg.starts_with("--")) {
            if let Some(to) = rewritten(flag, value, volumes) {
                launch.args[i] = format!("{flag}={to}");
                launch.rewrites.push(Rewrite {
                    place: Place::Arg(i),
                    setting: flag.to_owned(),
                    from: value.to_owned(),
                    to,
                });
            }
        } else if arg.starts_with("--")
            && let Some(value) = args.get(i + 1).filter(|v| !v.starts_with("--"))
            && let Some(to) = rewritten(arg, value, volumes)
        {
            launch.args[i + 1] = to.clone();
            launch.rewrites.push(Rewrite {
                place: Place::Arg(i + 1),
                setting: arg.clone(),
                from: value.clone(),
                to,
            });
            i += 1;
        }
        i += 1;
    }
    for (name, value) in &mut launch.env {
        if let Some(to) = rewritten(name, value, volumes) {
            launch.rewrites.push(Rewrite {
                place: Place::Env(name.clone()),
                setting: name.clone(),
                from: std::mem::replace(value, to.clone()),
                to,
            });
        }
    }
    launch
}

/// Every argument and variable the test did not rewrite is the container's,
/// byte for byte, in the same order; a rewritten one keeps its flag; and
/// nothing is left binding a wildcard address.
fn assert_passed_through(args: &[String], env: &[(String, String)], launch: &Launch) {
    assert_eq!(
        args.len(),
        launch.args.len(),
        "no argument added or dropped"
    );
    for (i, (theirs, ours)) in args.iter().zip(&launch.args).enumerate() {
        match launch.rewrites.iter().find(|r| r.place == Place::Arg(i)) {
            None => assert_eq!(ours, theirs, "argument {i} is passed through untouched"),
            Some(r) => {
                assert_ne!(ours, theirs, "argument {i} was rewritten");
                assert!(
                    ours == &r.to || ours == &format!("{}={}", r.setting, r.to),
                    "argument {i} keeps its flag: {theirs:?} -> {ours:?}"
                );
            }
        }
    }
    let names = |e: &[(String, String)]| e.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(env),
        names(&launch.env),
        "the same variables, in order"
    );
    for ((name, theirs), (_, ours)) in env.iter().zip(&launch.env) {
        if !launch
            .rewrites
            .iter()
            .any(|r| r.place == Place::Env(name.clone()))
        {
            assert_eq!(ours, theirs, "env {name} is passed through untouched");
        }
    }
    for value in launch.args.iter().chain(launch.env.iter().map(|(_, v)| v)) {
        let value = value.split_once('=').map_or(value.as_str(), |(_, v)| v);
        assert!(
            wildcard(value).is_none(),
            "{value:?} would bind every interface of the test machine: teach `rewritten` about its flag"
        );
    }
}

/// A container: the gateway process, killed when dropped (also when the test panics).
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    /// Starts `program` with exactly `args` and `env` (nothing inherited), in `workdir`.
    fn start(program: &Path, launch: &Launch, workdir: &Path, log: PathBuf) -> Running {
        let file = std::fs::File::create(&log).expect("create the gateway log");
        let err = file.try_clone().expect("clone the log");
        let child = Command::new(program)
            .args(&launch.args)
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(workdir)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Running { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Panics, with the exit status, the log and `more()`, once the process has
    /// exited: a container that stopped will not become ready by waiting.
    fn assert_running(&mut self, more: impl FnOnce() -> String) {
        match self.child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => panic!(
                "gns-gateway exited ({status}); its log ({}):\n{}\n{}",
                self.log.display(),
                self.log_text(),
                more()
            ),
            Err(e) => panic!("cannot wait for gns-gateway: {e}"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Federation and API server helpers.

/// Polls `check` every 100 ms until `Ok`; on timeout panics with `what`, the
/// last `Err` and `logs()`.
async fn eventually<T>(
    what: &str,
    logs: impl Fn() -> String,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {TIMEOUT:?} waiting for {what}; last: {last}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn api(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, String) {
    let client = gns_tests::client()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut request = client.request(method, url).bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

async fn get_json(url: &str) -> Result<Value, String> {
    let (status, body) = api(reqwest::Method::GET, url, None).await;
    if status != 200 {
        return Err(format!("GET {url}: {status} {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET {url}: {e}: {body}"))
}

/// `GET http://{addr}{path}`'s status (0 when nothing answers).
async fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let client = gns_tests::client()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// The container port a probe or Service names (a number, or a port's name).
fn container_port(container: &Container, port: &IntOrString) -> Option<u16> {
    let port = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))?
                .container_port
        }
    };
    u16::try_from(port).ok()
}

/// A CSR for a fresh key, as a gateway makes one.
fn csr() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

/// The URI SANs of the first certificate of a PEM chain.
fn leaf_uris(chain_pem: &str) -> Vec<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .expect("a certificate in cert.pem")
        .expect("cert.pem is PEM");
    gns_gateway::tls::uri_sans(&leaf)
}

/// Registers east with a gateway the federation deploys (following this
/// federation) and makes it a member of a global namespace, which is what
/// makes the federation install the gateway; returns the Deployment read
/// back from east's API server.
async fn install_east(kube: &TestApiServer, base: &str, logs: impl Fn() -> String) -> Deployment {
    let (status, body) = api(
        reqwest::Method::POST,
        &format!("{base}/v1/clusters"),
        Some(json!({
            "name": CLUSTER,
            "kubernetes": {"server": kube.url(), "token": KUBE_TOKEN,
                           "caData": base64::engine::general_purpose::STANDARD.encode(kube.ca_pem())},
            "networks": ["10.8.0.0/16"],
            "gatewayDeployment": {"image": IMAGE, "federationUrl": base},
        })),
    )
    .await;
    assert_eq!(status, 201, "register {CLUSTER}: {body}");
    let (status, body) = api(
        reqwest::Method::POST,
        &format!("{base}/v1/global-namespaces"),
        Some(
            json!({"name": "production", "domain": "production.app.acme.com",
                    "members": [{"cluster": CLUSTER, "namespace": "shop"}]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "create the global namespace: {body}");
    eventually(
        "the federation to apply deployment gns-system/gns-gateway",
        logs,
        async || {
            kube.get::<Deployment>(NAMESPACE, DEPLOYMENT)
                .map_err(|e| format!("{e:?}"))?
                .ok_or_else(|| "not applied yet".to_owned())
        },
    )
    .await
}

/// The pod spec of the Deployment and its only container, which the test
/// can run as `gns-gateway` (no init containers, no `command`).
fn gateway_container(deployment: &Deployment) -> (PodSpec, Container) {
    let spec = deployment.spec.clone().expect("deployment spec");
    assert_eq!(
        spec.replicas.unwrap_or(1),
        1,
        "the default gatewayDeployment has one replica"
    );
    let pod_spec = spec.template.spec.expect("pod spec");
    assert!(
        pod_spec.init_containers.as_ref().is_none_or(Vec::is_empty),
        "the pod has init containers: teach this test to run them"
    );
    assert_eq!(
        pod_spec.containers.len(),
        1,
        "one container (the gateway): {:?}",
        pod_spec.containers
    );
    let container = pod_spec.containers[0].clone();
    assert_eq!(container.image.as_deref(), Some(IMAGE));
    assert!(
        container.command.is_none(),
        "the template overrides the image's entrypoint with {:?}: this test runs gns-gateway \
         as the entrypoint, teach it the command",
        container.command
    );
    (pod_spec, container)
}

/// What the test changed fits the pod: the state dir is the mount path of an
/// emptyDir volume, every wildcard listener binds a declared container port,
/// and every port of the Services (selecting the pod) reaches one of them.
fn assert_fits_the_pod(
    pod: &PodFacts,
    pod_spec: &PodSpec,
    container: &Container,
    launch: &Launch,
    services: &[Service],
) {
    let state = launch
        .state_dir()
        .expect("the container names its --state-dir");
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == state.from)
        .unwrap_or_else(|| panic!("--state-dir {} is no volume mount", state.from));
    assert!(
        pod_spec
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == mount.name && v.empty_dir.is_some()),
        "the state dir is an emptyDir volume"
    );
    let declared: BTreeSet<u16> = container
        .ports
        .iter()
        .flatten()
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    for r in launch.listeners() {
        let port = wildcard(&r.from).expect("a wildcard address").port();
        assert!(
            declared.contains(&port),
            "{} binds port {port}, which the container does not declare ({declared:?})",
            r.setting
        );
    }
    assert!(
        !services.is_empty(),
        "the federation applied the gateway's Services"
    );
    for service in services {
        let name = service.metadata.name.clone().unwrap_or_default();
        let spec = service.spec.clone().unwrap_or_default();
        let selector = spec.selector.unwrap_or_default();
        assert!(
            selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)),
            "service {name} selects the gateway's pods: {selector:?}"
        );
        for port in spec.ports.iter().flatten() {
            let target = port
                .target_port
                .clone()
                .unwrap_or(IntOrString::Int(port.port));
            let cport = container_port(container, &target)
                .unwrap_or_else(|| panic!("service {name} targets {target:?}, no container port"));
            assert!(
                launch.listener_for_port(cport).is_some(),
                "service {name} targets container port {cport}, where the gateway does not listen"
            );
        }
    }
}

/// Where an httpGet probe of the container lands on this machine, and its path.
fn probe_target(
    container: &Container,
    launch: &Launch,
    which: &str,
    probe: Option<&Probe>,
) -> (SocketAddr, String) {
    let get = probe
        .and_then(|p| p.http_get.clone())
        .unwrap_or_else(|| panic!("the container has an httpGet {which} probe"));
    let port = container_port(container, &get.port).unwrap_or_else(|| {
        panic!(
            "the {which} probe's port {:?} is no container port",
            get.port
        )
    });
    let addr = launch.listener_for_port(port).unwrap_or_else(|| {
        panic!("the {which} probe's port {port} is not where the gateway listens")
    });
    (addr, get.path.unwrap_or_else(|| "/".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_gateway_deployment_starts_a_gateway_that_joins() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let started = Instant::now();
    let kube = TestApiServer::start(TestApiServerOptions::default().token(
        KUBE_TOKEN,
        Grant::admin("system:serviceaccount:gns-system:gns-federation"),
    ))
    .await
    .expect("test API server");
    let dir = tempfile::tempdir().expect("tempdir");
    let (federation, base): (Proc, String) = start_federation(dir.path(), ADMIN_TOKEN, &[]).await;
    let federation_log = || format!("federation log:\n{}", federation.log_text());

    // What the federation applied, read back from the cluster's API server.
    let deployment = install_east(&kube, &base, federation_log).await;
    let applied_after = started.elapsed();
    let (pod_spec, container) = gateway_container(&deployment);
    let pod = PodFacts::of(&deployment).created_in(&kube);

    // The kubelet's part.
    let env = container_env(&pod, &container, &Objects::read(&kube))
        .unwrap_or_else(|e| panic!("the container's environment can't be made: {e}"));
    let args = container_args(&container, &env);
    eprintln!("rendered args: {args:?}");
    eprintln!(
        "rendered env: {:?}",
        env.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    let env_value = |name: &str| {
        env.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("the container has no {name} in {env:?}"))
    };
    assert_eq!(
        env_value("GNS_FEDERATION"),
        base,
        "the gateway follows the test federation (from the Secret)"
    );
    assert!(
        env.iter().all(|(n, _)| n != "GNS_JOIN_TOKEN"),
        "no one-time join token is deployed (replicas would fight over it)"
    );
    let token_path = env_value("GNS_SERVICE_ACCOUNT_TOKEN");

    // The test's part: loopback listeners and an empty state dir, nothing else.
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&state_dir).expect("state dir");
    let workdir = dir.path().join("workdir");
    std::fs::create_dir(&workdir).expect("workdir");
    let objects = Objects::read(&kube);
    let config_maps = project_volumes(
        &pod_spec,
        &container,
        &pod,
        &kube,
        &objects,
        &dir.path().join("volumes"),
    )
    .unwrap_or_else(|e| panic!("the pod's volumes can't be made: {e}"));
    assert!(
        config_maps
            .iter()
            .any(|(mount, _)| token_path.starts_with(&format!("{mount}/"))),
        "GNS_SERVICE_ACCOUNT_TOKEN {token_path} is in a projected volume"
    );
    let launch = for_this_machine(
        &args,
        &env,
        &Volumes {
            state_dir: state_dir.clone(),
            config_maps: config_maps.clone(),
        },
    );
    assert_passed_through(&args, &env, &launch);
    for r in &launch.rewrites {
        eprintln!(
            "rewritten for this machine: {} {} -> {}",
            r.setting, r.from, r.to
        );
    }
    let services: Vec<Service> = kube
        .list::<Service>()
        .expect("list services")
        .into_iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(NAMESPACE))
        .collect();
    assert_fits_the_pod(&pod, &pod_spec, &container, &launch, &services);
    let (ready_addr, ready_path) = probe_target(
        &container,
        &launch,
        "readiness",
        container.readiness_probe.as_ref(),
    );
    let (live_addr, live_path) = probe_target(
        &container,
        &launch,
        "liveness",
        container.liveness_probe.as_ref(),
    );
    let admin = launch
        .listener("--admin-listen")
        .expect("the container sets --admin-listen");
    assert_eq!(
        ready_addr, admin,
        "the readiness probe asks the admin listener"
    );

    // The container starts.
    let mut gateway = Running::start(
        &binary("gns-gateway"),
        &launch,
        &workdir,
        dir.path().join("gateway.log"),
    );
    let started_gateway = Instant::now();
    let gateway_log = gateway.log.clone();
    let logs = || {
        format!(
            "gateway log ({}):\n{}\n{}",
            gateway_log.display(),
            std::fs::read_to_string(&gateway_log).unwrap_or_default(),
            federation_log()
        )
    };

    // It traded its projected service-account token for a certificate of east's gateway...
    let cert = eventually(
        "the gateway's certificate in its state dir",
        logs,
        async || {
            gateway.assert_running(federation_log);
            let read = |f: &str| {
                std::fs::read_to_string(state_dir.join(f)).map_err(|e| format!("{f}: {e}"))
            };
            let cert = read("cert.pem")?;
            read("key.pem")?;
            Ok(cert)
        },
    )
    .await;
    let uris = leaf_uris(&cert);
    assert!(
        uris.len() == 1
            && uris[0].starts_with("spiffe://")
            && uris[0].ends_with(&format!("/cluster/{CLUSTER}/gateway")),
        "the certificate names east's gateway: {uris:?}"
    );
    let tokens = get_json(&format!("{base}/v1/tokens"))
        .await
        .expect("tokens");
    assert!(
        tokens["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|t| {
                t["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&format!("gateway-{CLUSTER}-")))
                    && t["createdBy"]
                        == format!(
                            "serviceaccount:{CLUSTER}:system:serviceaccount:gns-system:gns-gateway"
                        )
                    && t["role"] == "gateway"
                    && t["cluster"] == CLUSTER
            })),
        "the federation lists the gateway's API token, a gateway token of {CLUSTER}: {tokens}"
    );

    // ...loaded east's config, and passes the Deployment's own probes.
    let version = eventually(
        "the gateway to pass its readiness probe with the federation's current config",
        logs,
        async || {
            gateway.assert_running(federation_log);
            let ready = http_status(ready_addr, &ready_path).await;
            if ready != 200 {
                return Err(format!("readiness probe {ready_path}: {ready}"));
            }
            let config = get_json(&format!("{base}/v1/config/gateways/{CLUSTER}")).await?;
            let wanted = config["version"].as_u64().ok_or("config without version")?;
            let loaded = gateway_metric(admin, "gns_gateway_config_version").await;
            if loaded == wanted && wanted > 0 {
                Ok(loaded)
            } else {
                Err(format!(
                    "config version {loaded}, the federation's {wanted}"
                ))
            }
        },
    )
    .await;
    let ready_after = started_gateway.elapsed();
    assert_eq!(
        http_status(live_addr, &live_path).await,
        200,
        "the liveness probe {live_path} passes"
    );
    assert!(
        gateway_metric(admin, "gns_gateway_trust_roots").await >= 1,
        "the gateway trusts the federation's root"
    );
    assert!(
        state_dir.join("config.json").is_file(),
        "the gateway keeps its config in its state dir"
    );
    // Every listener is up where the test put it.
    for r in launch.listeners() {
        let addr: SocketAddr = r.to.parse().expect("address");
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
            "{} ({addr}) accepts connections",
            r.setting
        );
    }
    // It reports itself under its pod's name (the downward API's
    // metadata.name), with the config it serves.
    let pod_name = pod.name.clone();
    eventually(
        "the cluster's status to list the pod as a reporting gateway instance",
        logs,
        async || {
            let cluster = get_json(&format!("{base}/v1/clusters/{CLUSTER}")).await?;
            let status = &cluster["status"];
            let instances = status["gatewayInstances"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let listed = instances.iter().any(|i| {
                i["instance"] == pod_name.as_str()
                    && i["configVersion"].as_u64() == Some(version)
                    && i["version"] == env!("CARGO_PKG_VERSION")
                    && i["certificateExpiresAt"].is_string()
            });
            if listed && status["gatewayHealth"] == "Reporting" {
                Ok(())
            } else {
                Err(format!("status: {status}"))
            }
        },
    )
    .await;
    gateway.assert_running(federation_log);
    eprintln!(
        "deployment applied {applied_after:?} after start; gateway ready with config version \
         {version} {ready_after:?} after it started; total {:?}",
        started.elapsed()
    );

    // A second replica: the same token file (the same pod spec), its own
    // empty state dir and ports. Both join; one-time join tokens would have
    // left it crash-looping. Then it restarts as a new pod would (empty
    // state dir) and joins again, with no join token anywhere.
    for round in ["second replica", "second replica restarted"] {
        let replica_state = dir.path().join("state-2");
        let _ = std::fs::remove_dir_all(&replica_state);
        std::fs::create_dir(&replica_state).expect("state dir");
        let replica_launch = for_this_machine(
            &args,
            &env,
            &Volumes {
                state_dir: replica_state.clone(),
                config_maps: config_maps.clone(),
            },
        );
        let mut replica = Running::start(
            &binary("gns-gateway"),
            &replica_launch,
            &workdir,
            dir.path().join(format!("{}.log", round.replace(' ', "-"))),
        );
        let replica_admin = replica_launch
            .listener("--admin-listen")
            .expect("the replica's admin listener");
        eventually(
            &format!("the {round} to join and be ready"),
            logs,
            async || {
                replica.assert_running(federation_log);
                std::fs::read_to_string(replica_state.join("cert.pem"))
                    .map_err(|e| e.to_string())?;
                match http_status(replica_admin, &ready_path).await {
                    200 => Ok(()),
                    other => Err(format!("readiness {other}")),
                }
            },
        )
        .await;
        gateway.assert_running(federation_log);
        drop(replica);
    }

    // What the federation refuses: a token of another account, for another
    // audience, or of another cluster (its API server does not know it).
    let sign = async |token: &str| {
        api(
            reqwest::Method::POST,
            &format!("{base}/v1/identity/sign"),
            Some(json!({"csr": csr(), "cluster": CLUSTER, "serviceAccountToken": token})),
        )
        .await
    };
    let other_account: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "gns-system"}}))
            .expect("account");
    kube.apply(&other_account).expect("account");
    let hour = Duration::from_secs(3600);
    let other = kube
        .projected_token("gns-system", "web", &["gns-federation"], hour, None)
        .expect("token");
    let elsewhere = kube
        .projected_token("gns-system", "gns-gateway", &["vault"], hour, None)
        .expect("token");
    let west = TestApiServer::start(TestApiServerOptions::default())
        .await
        .expect("west's API server");
    west.apply(
        &serde_json::from_value::<k8s_openapi::api::core::v1::ServiceAccount>(
            json!({"metadata": {"name": "gns-gateway", "namespace": "gns-system"}}),
        )
        .expect("account"),
    )
    .expect("account");
    let wests = west
        .projected_token("gns-system", "gns-gateway", &["gns-federation"], hour, None)
        .expect("token");
    for (what, token) in [
        ("another account", other),
        ("another audience", elsewhere),
        ("another cluster", wests),
    ] {
        let (status, body) = sign(&token).await;
        assert_eq!(status, 401, "{what}: {body}");
    }
    let (status, body) = sign(
        &std::fs::read_to_string(
            config_maps
                .iter()
                .find_map(|(mount, dir)| {
                    Some(dir.join(token_path.strip_prefix(&format!("{mount}/"))?))
                })
                .expect("the token file"),
        )
        .expect("token"),
    )
    .await;
    assert_eq!(status, 200, "the pod's own token signs: {body}");
}

// ---------------------------------------------------------------------------
// The kubelet stand-in itself, on made-up pods.

fn container(value: Value) -> Container {
    serde_json::from_value(value).expect("container")
}

fn facts() -> PodFacts {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "gw", "namespace": "ns"},
        "spec": {"selector": {}, "template": {
            "metadata": {"labels": {"app": "gw"}, "annotations": {"a": "b"}},
            "spec": {"serviceAccountName": "sa", "containers": []}}}
    }))
    .expect("deployment");
    PodFacts::of(&deployment)
}

fn objects() -> Objects {
    let mut objects = Objects::default();
    objects.secrets.insert(
        ("ns".into(), "s".into()),
        [("token".to_owned(), b"t0k".to_vec())].into(),
    );
    objects.config_maps.insert(
        ("ns".into(), "c".into()),
        [
            ("url".to_owned(), b"http://f".to_vec()),
            ("LEVEL".to_owned(), b"debug".to_vec()),
        ]
        .into(),
    );
    objects
}

#[test]
fn the_kubelet_stand_in_resolves_env_like_the_kubelet() {
    let c = container(json!({"name": "x",
        "envFrom": [{"configMapRef": {"name": "c"}, "prefix": "CM_"},
                    {"secretRef": {"name": "absent", "optional": true}}],
        "env": [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
            {"name": "URL", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "url"}}},
            {"name": "GONE", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "no", "optional": true}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "BOTH", "value": "$(URL)/$(NS)/$(LATER)/$$(URL)/$(CM_LEVEL)"},
            {"name": "LATER", "value": "l"},
            {"name": "TOKEN", "value": "override"}],
        "args": ["--url=$(URL)", "--later=$(LATER)", "--unknown=$(NOPE)", "$$", "a$"]}));
    let env = container_env(&facts(), &c, &objects()).expect("resolves");
    let get = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(get("CM_url"), Some("http://f"));
    assert_eq!(get("TOKEN"), Some("override"), "a later entry wins");
    assert_eq!(get("URL"), Some("http://f"));
    assert_eq!(get("GONE"), None, "an optional missing key is left out");
    assert_eq!(get("POD"), Some("gw-7c5d9b8f6d-x2k4q"));
    assert_eq!(get("NS"), Some("ns"));
    assert_eq!(get("IP"), Some("127.0.0.1"));
    assert_eq!(get("APP"), Some("gw"));
    assert_eq!(
        get("BOTH"),
        Some("http://f/ns/$(LATER)/$(URL)/debug"),
        "only what is defined before is expanded; $$ escapes"
    );
    assert_eq!(
        container_args(&c, &env),
        [
            "--url=http://f",
            "--later=l",
            "--unknown=$(NOPE)",
            "$",
            "a$"
        ]
    );
}

#[test]
fn the_kubelet_stand_in_refuses_what_it_cannot_resolve() {
    let cases = [
        (
            json!({"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope"}}}),
            "no key \"nope\"",
        ),
        (
            json!({"name": "A", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}),
            "ConfigMap ns/absent",
        ),
        (
            json!({"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}),
            "fieldRef \"status.phase\"",
        ),
        (
            json!({"name": "A", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}}),
            "resourceFieldRef",
        ),
    ];
    for (var, words) in cases {
        let c = container(json!({"name": "x", "env": [var]}));
        let err = container_env(&facts(), &c, &objects()).expect_err("refused");
        assert!(err.contains(words), "{err:?} names {words:?}");
    }
    let c = container(json!({"name": "x", "envFrom": [{"secretRef": {"name": "absent"}}]}));
    let err = container_env(&facts(), &c, &objects()).expect_err("refused");
    assert!(err.contains("Secret ns/absent does not exist"), "{err}");
}

#[test]
fn only_wildcard_listeners_the_state_dir_and_config_map_paths_are_rewritten() {
    let args: Vec<String> = [
        "--cluster=east",
        "--egress-listen=0.0.0.0:15001",
        "--admin-listen",
        "[::]:15021",
        "--public-listen=10.0.0.1:80",
        "--state-dir=/var/lib/gns-gateway",
    ]
    .map(str::to_owned)
    .to_vec();
    let env = vec![
        ("GNS_INGRESS_LISTEN".to_owned(), "0.0.0.0:15443".to_owned()),
        (
            "GNS_FEDERATION".to_owned(),
            "http://0.0.0.0:8080".to_owned(),
        ),
        (
            "GNS_FEDERATION_CA".to_owned(),
            "/etc/gns/ca/ca.pem".to_owned(),
        ),
    ];
    let launch = for_this_machine(
        &args,
        &env,
        &Volumes {
            state_dir: "/tmp/state".into(),
            config_maps: vec![("/etc/gns/ca".into(), "/tmp/volumes/ca".into())],
        },
    );
    let settings: Vec<&str> = launch.rewrites.iter().map(|r| r.setting.as_str()).collect();
    assert_eq!(
        settings,
        [
            "--egress-listen",
            "--admin-listen",
            "--state-dir",
            "GNS_INGRESS_LISTEN",
            "GNS_FEDERATION_CA"
        ]
    );
    assert_eq!(launch.env[2].1, "/tmp/volumes/ca/ca.pem");
    assert_eq!(launch.args[0], "--cluster=east");
    assert!(launch.args[1].starts_with("--egress-listen=127.0.0.1:"));
    assert_eq!(launch.args[2], "--admin-listen");
    assert!(launch.args[3].starts_with("127.0.0.1:"));
    assert_eq!(launch.args[4], "--public-listen=10.0.0.1:80");
    assert_eq!(launch.args[5], "--state-dir=/tmp/state");
    assert_eq!(launch.env[1].1, "http://0.0.0.0:8080");
    assert!(launch.listener("--ingress-listen").is_some());
    assert_eq!(launch.listener_for_port(15021), launch.args[3].parse().ok());
}
