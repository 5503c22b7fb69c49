//! Authentication and authorization: bearer tokens (stored as SHA-256 hashes),
//! roles `viewer` < `editor` < `admin`, the bootstrap admin token, `gateway`
//! tokens, which reach only their own cluster's gateway routes, `workload`
//! tokens, which reach only external workloads of their global namespaces,
//! and scoped viewer and editor tokens, limited to their global namespaces
//! (others answer 404, as if absent; routes outside every global namespace
//! 403).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

use super::{ApiError, AppState};
use crate::model::Role;

/// Name under which the bootstrap admin token acts in the audit log.
pub const BOOTSTRAP_ADMIN: &str = "bootstrap-admin";

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Token name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The cluster of a gateway token.
    pub cluster: Option<String>,
    /// The global namespaces a scoped token is limited to (empty: not scoped).
    pub global_namespaces: Vec<String>,
}

impl Principal {
    /// Whether the token may see global namespace `gns`.
    pub fn sees(&self, gns: &str) -> bool {
        self.global_namespaces.is_empty() || self.global_namespaces.iter().any(|g| g == gns)
    }
}

/// Hex SHA-256 of a token secret, as stored.
pub fn hash_token(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random token secret: `gns_` and 32 random bytes, base64url.
pub fn generate_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApiError::Internal("random number generator failed".into()))?;
    Ok(format!("gns_{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// How long a verified token is trusted without asking the store again.
/// Revocation is immediate on the replica that revokes, and takes at most
/// this long on other replicas.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);
const TOKEN_CACHE_MAX: usize = 10_000;

/// Verifies bearer tokens.
#[derive(Debug, Clone)]
pub struct Authenticator {
    bootstrap_hash: Arc<str>,
    /// Verified token hashes and when they were verified.
    cache: Arc<Mutex<HashMap<String, (Principal, Instant)>>>,
}

impl Authenticator {
    /// Accepts `bootstrap_token` as admin, plus every token in the store.
    pub fn new(bootstrap_token: &str) -> Self {
        Self {
            bootstrap_hash: hash_token(bootstrap_token).into(),
            cache: Arc::default(),
        }
    }

    fn cached(&self, hash: &str) -> Option<Principal> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(hash)
            .filter(|(_, at)| at.elapsed() < TOKEN_CACHE_TTL)
            .map(|(p, _)| p.clone())
    }

    fn remember(&self, hash: String, principal: &Principal) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= TOKEN_CACHE_MAX {
                cache.retain(|_, (_, at)| at.elapsed() < TOKEN_CACHE_TTL);
                if cache.len() >= TOKEN_CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(hash, (principal.clone(), Instant::now()));
        }
    }

    /// Forgets every cached verification of token `name` (after it is revoked).
    pub fn forget(&self, name: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|_, (p, _)| p.name != name);
        }
    }

    /// Forgets every cached verification of a gateway token of `cluster`
    /// (after the cluster, and with it its tokens, is deleted).
    pub fn forget_cluster(&self, cluster: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|_, (p, _)| p.cluster.as_deref() != Some(cluster));
        }
    }

    async fn authenticate(&self, state: &AppState, secret: &str) -> Result<Principal, ApiError> {
        let hash = hash_token(secret);
        // Both sides are hashes, so an early-exit comparison reveals nothing about the secret.
        if hash.as_str() == &*self.bootstrap_hash {
            return Ok(Principal {
                name: BOOTSTRAP_ADMIN.into(),
                role: Role::Admin,
                cluster: None,
                global_namespaces: Vec::new(),
            });
        }
        if let Some(principal) = self.cached(&hash) {
            return Ok(principal);
        }
        match state.store.find_token(&hash).await? {
            Some(record) => {
                let principal = Principal {
                    name: record.name,
                    role: record.role,
                    cluster: record.cluster,
                    global_namespaces: record.global_namespaces,
                };
                self.remember(hash, &principal);
                Ok(principal)
            }
            None => Err(ApiError::Unauthorized("unknown or revoked token".into())),
        }
    }
}

/// `POST /v1/trace` and `POST /v1/trace/dns`: they explain, they change nothing.
fn is_trace(path: &str) -> bool {
    path == "/v1/trace" || path == "/v1/trace/dns"
}

/// The least role that may call `method` on `path`.
pub fn required_role(method: &Method, path: &str) -> Role {
    let admin_only = path.starts_with("/v1/tokens")
        || path.starts_with("/v1/audit")
        || path.starts_with("/v1/identity/root-rotation");
    // A trace reads: it explains a request, it changes nothing.
    let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        || (*method == Method::POST && is_trace(path));
    if admin_only || (!read && path.starts_with("/v1/clusters")) {
        Role::Admin
    } else if read {
        Role::Viewer
    } else {
        Role::Editor
    }
}

/// Whether the gateway token of `cluster` may call `method` on `path`: its
/// config watch and its instances' reports.
pub fn gateway_may(method: &Method, path: &str, cluster: &str) -> bool {
    let config = path
        .strip_prefix("/v1/config/gateways/")
        .is_some_and(|c| c == cluster);
    let report = path
        .strip_prefix("/v1/clusters/")
        .and_then(|rest| rest.strip_prefix(cluster))
        .and_then(|rest| rest.strip_prefix("/gateway-instances/"))
        .is_some_and(|instance| !instance.is_empty() && !instance.contains('/'));
    (*method == Method::GET && config) || (*method == Method::PUT && report)
}

/// Where a path leads, for scoped tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach<'a> {
    /// `/v1/global-namespaces` itself (a list, or a create).
    GlobalNamespaces,
    /// Global namespace `gns` or something in it; `rest` is what follows
    /// its name (`""`, `/services`, `/external-workloads/db/heartbeat`, ...).
    Inside {
        /// The global namespace.
        gns: &'a str,
        /// The rest of the path.
        rest: &'a str,
    },
    /// Anything else (clusters, tokens, configs, identity).
    Elsewhere,
}

/// Where `path` leads.
pub fn reach(path: &str) -> Reach<'_> {
    match path.strip_prefix("/v1/global-namespaces") {
        Some("" | "/") => Reach::GlobalNamespaces,
        Some(rest) => match rest.strip_prefix('/') {
            Some(inner) => {
                let (gns, rest) = inner.find('/').map_or((inner, ""), |i| inner.split_at(i));
                Reach::Inside { gns, rest }
            }
            None => Reach::Elsewhere,
        },
        None => Reach::Elsewhere,
    }
}

/// Whether a workload token may call `method` on `rest` (the path inside
/// one of its global namespaces): external workloads and their heartbeats.
pub fn workload_may(method: &Method, rest: &str) -> bool {
    let Some(tail) = rest.strip_prefix("/external-workloads") else {
        return false;
    };
    let parts: Vec<&str> = tail.split('/').skip(1).collect();
    match parts.as_slice() {
        [] => matches!(*method, Method::GET | Method::POST),
        [name] => !name.is_empty() && matches!(*method, Method::GET | Method::PUT | Method::DELETE),
        [name, "heartbeat"] => !name.is_empty() && *method == Method::PUT,
        _ => false,
    }
}

/// What a scoped or workload token may not do: `None` when the request may
/// go on to the role check; else the error (404 for a global namespace
/// outside the scope, as if absent; 403 for the rest, naming the scope).
fn scope_refusal(principal: &Principal, method: &Method, path: &str) -> Option<ApiError> {
    if principal.global_namespaces.is_empty() && principal.role != Role::Workload {
        return None;
    }
    let scope = principal.global_namespaces.join(", ");
    let forbidden = |what: &str| {
        ApiError::Forbidden(format!(
            "token {} is limited to global namespaces [{scope}]: {what}",
            principal.name
        ))
    };
    match reach(path) {
        Reach::Inside { gns, .. } if !principal.sees(gns) => Some(ApiError::NotFound(format!(
            "global namespace {gns} not found"
        ))),
        Reach::Inside { rest, .. } if principal.role == Role::Workload => {
            (!workload_may(method, rest)).then(|| {
                forbidden("a workload token reads, writes and heartbeats external workloads there, nothing else")
            })
        }
        // Its members and domain decide which clusters' namespaces feed it:
        // changing them could pull in another team's services.
        Reach::Inside { rest: "", .. } if *method != Method::GET => Some(forbidden(
            "changing or deleting a global namespace itself (its members, its domain) needs an unscoped token",
        )),
        Reach::Inside { .. } => None,
        Reach::GlobalNamespaces
            if *method == Method::GET && principal.role != Role::Workload =>
        {
            None
        }
        Reach::GlobalNamespaces => Some(forbidden(
            "it cannot create global namespaces, only work in those",
        )),
        // The trace answers 404 for a service outside the scope itself;
        // telemetry shows the scope's services only.
        // Who the token is: every token may ask.
        Reach::Elsewhere if path == "/v1/whoami" => None,
        Reach::Elsewhere
            if (is_trace(path) || path == "/v1/telemetry/services")
                && principal.role != Role::Workload =>
        {
            None
        }
        Reach::Elsewhere => Some(forbidden("it reaches only those and what is in them")),
    }
}

/// Middleware: authenticates the bearer token and checks the role for the route.
pub async fn require_auth(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header_value = req.headers().get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::Unauthorized("missing Authorization: Bearer <token> header".into())
    })?;
    let secret = header_value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized("Authorization header must be: Bearer <token>".into())
        })?;
    let principal = state.auth.authenticate(&state, secret).await?;
    if principal.role == Role::Gateway {
        let cluster = principal.cluster.as_deref().unwrap_or_default();
        if cluster.is_empty() || !gateway_may(req.method(), req.uri().path(), cluster) {
            return Err(ApiError::Forbidden(format!(
                "token {} is the gateway token of cluster {cluster}: it reads that cluster's gateway config and reports its instances, nothing else",
                principal.name
            )));
        }
        req.extensions_mut().insert(principal);
        return Ok(next.run(req).await);
    }
    if let Some(refusal) = scope_refusal(&principal, req.method(), req.uri().path()) {
        return Err(refusal);
    }
    if principal.role == Role::Workload {
        req.extensions_mut().insert(principal);
        return Ok(next.run(req).await);
    }
    let needed = required_role(req.method(), req.uri().path());
    if principal.role < needed {
        return Err(ApiError::Forbidden(format!(
            "token {} has role {}; this needs {}",
            principal.name,
            principal.role.as_str(),
            needed.as_str()
        )));
    }
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_route() {
        assert_eq!(required_role(&Method::GET, "/v1/clusters"), Role::Viewer);
        assert_eq!(required_role(&Method::POST, "/v1/clusters"), Role::Admin);
        assert_eq!(
            required_role(&Method::PUT, "/v1/global-namespaces/p"),
            Role::Editor
        );
        assert_eq!(required_role(&Method::GET, "/v1/tokens"), Role::Admin);
        assert_eq!(required_role(&Method::GET, "/v1/audit"), Role::Admin);
    }

    #[test]
    fn a_gateway_token_reaches_only_its_own_clusters_gateway_routes() {
        let may = |m: Method, p: &str| gateway_may(&m, p, "east");
        assert!(may(Method::GET, "/v1/config/gateways/east"));
        assert!(may(Method::PUT, "/v1/clusters/east/gateway-instances/gw-0"));
        assert!(!may(Method::GET, "/v1/config/gateways/west"));
        assert!(!may(Method::GET, "/v1/config/gateways/east2"));
        assert!(!may(
            Method::PUT,
            "/v1/clusters/east2/gateway-instances/gw-0"
        ));
        assert!(!may(
            Method::PUT,
            "/v1/clusters/west/gateway-instances/gw-0"
        ));
        assert!(!may(Method::PUT, "/v1/clusters/east/gateway-instances/"));
        assert!(!may(Method::PUT, "/v1/clusters/east/gateway-instances/a/b"));
        assert!(!may(
            Method::DELETE,
            "/v1/clusters/east/gateway-instances/gw-0"
        ));
        assert!(!may(Method::GET, "/v1/clusters/east"));
        assert!(!may(Method::GET, "/v1/config/dns"));
        assert!(!may(Method::PUT, "/v1/clusters/east"));
    }

    fn scoped(role: Role, scope: &[&str]) -> Principal {
        Principal {
            name: "team".into(),
            role,
            cluster: None,
            global_namespaces: scope.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn scoped_tokens_see_their_global_namespaces_only() {
        let viewer = scoped(Role::Viewer, &["production"]);
        let refused = |p: &Principal, m: Method, path: &str| scope_refusal(p, &m, path);
        assert!(refused(&viewer, Method::GET, "/v1/global-namespaces").is_none());
        assert!(
            refused(
                &viewer,
                Method::GET,
                "/v1/global-namespaces/production/services"
            )
            .is_none()
        );
        assert!(matches!(
            refused(&viewer, Method::GET, "/v1/global-namespaces/staging"),
            Some(ApiError::NotFound(_))
        ));
        assert!(matches!(
            refused(
                &viewer,
                Method::GET,
                "/v1/global-namespaces/staging/services/web"
            ),
            Some(ApiError::NotFound(_))
        ));
        for path in ["/v1/clusters", "/v1/config/dns", "/v1/config/gateways/east"] {
            let Some(ApiError::Forbidden(m)) = refused(&viewer, Method::GET, path) else {
                panic!("{path} is not refused");
            };
            assert!(m.contains("[production]"), "{m}");
        }
        let editor = scoped(Role::Editor, &["production"]);
        assert!(matches!(
            refused(&editor, Method::POST, "/v1/global-namespaces"),
            Some(ApiError::Forbidden(_))
        ));
        for method in [Method::PUT, Method::DELETE] {
            assert!(
                matches!(
                    refused(&editor, method, "/v1/global-namespaces/production"),
                    Some(ApiError::Forbidden(_))
                ),
                "members and domain are not a scoped token's to change"
            );
        }
        assert!(refused(&editor, Method::GET, "/v1/global-namespaces/production").is_none());
        assert!(
            refused(
                &editor,
                Method::PUT,
                "/v1/global-namespaces/production/access-policies/a"
            )
            .is_none()
        );
        // Unscoped tokens are not touched here.
        assert!(refused(&scoped(Role::Viewer, &[]), Method::GET, "/v1/clusters").is_none());
    }

    #[test]
    fn workload_tokens_reach_external_workloads_of_their_namespaces_only() {
        let vm = scoped(Role::Workload, &["production"]);
        let ok = |m: Method, path: &str| scope_refusal(&vm, &m, path).is_none();
        assert!(ok(
            Method::PUT,
            "/v1/global-namespaces/production/external-workloads/db-1/heartbeat"
        ));
        assert!(ok(
            Method::POST,
            "/v1/global-namespaces/production/external-workloads"
        ));
        assert!(ok(
            Method::GET,
            "/v1/global-namespaces/production/external-workloads/db-1"
        ));
        assert!(!ok(
            Method::PUT,
            "/v1/global-namespaces/staging/external-workloads/db-1/heartbeat"
        ));
        assert!(!ok(
            Method::GET,
            "/v1/global-namespaces/production/services"
        ));
        assert!(!ok(
            Method::PUT,
            "/v1/global-namespaces/production/access-policies/a"
        ));
        assert!(!ok(Method::GET, "/v1/global-namespaces"));
        assert!(!ok(Method::GET, "/v1/clusters"));
        assert!(!ok(
            Method::POST,
            "/v1/global-namespaces/production/external-workloads/db-1/heartbeat"
        ));
    }

    #[test]
    fn token_hashes_are_hex_sha256() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let t = generate_token().expect("rng");
        assert!(t.starts_with("gns_") && t.len() > 40);
    }
}
