//! Identity endpoints: join tokens for a cluster's gateway
//! (`POST /v1/clusters/{name}/join-tokens`, admin), certificate signing for a
//! CSR plus a join token (`POST /v1/identity/sign`; the join token is the
//! credential, no bearer token) and the trust bundle
//! (`GET /v1/identity/trust-bundle`, public: it is public key material), and
//! root rotation (`POST /v1/identity/root-rotation` `{"phase": "start" |
//! "activate" | "finish"}`, admin).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Principal, generate_token, hash_token};
use super::body::JsonObject;
use super::render::{now_millis, rfc3339};
use super::{ApiError, AppState};
use crate::identity::{Identity, IdentityError};
use crate::model::{DurationSpec, FieldError};

/// Default lifetime of a join token.
const DEFAULT_JOIN_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Longest lifetime of a join token.
const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Body of `POST /v1/clusters/{name}/join-tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinTokenRequest {
    #[serde(default)]
    ttl: Option<DurationSpec>,
}

/// Body of `POST /v1/identity/sign`: a CSR with a join token or with a
/// cluster and a Kubernetes service-account token (first certificate), or
/// with the current certificate (renewal).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SignRequest {
    csr: String,
    #[serde(default)]
    join_token: Option<String>,
    /// The cluster whose API server vouches for `service_account_token`.
    #[serde(default)]
    cluster: Option<crate::model::Name>,
    /// A service-account token (audience `gns-federation`) of the cluster's
    /// gateway service account, reviewed by the cluster's API server.
    #[serde(default)]
    service_account_token: Option<String>,
    #[serde(default)]
    certificate: Option<String>,
    /// Renewal with a new key: the CSR's PEM text signed by the current key
    /// (base64 of an ASN.1 ECDSA P-256 SHA-256 signature).
    #[serde(default)]
    key_proof: Option<String>,
}

/// Body of `POST /v1/identity/workloads/sign`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WorkloadSignRequest {
    csr: String,
    namespace: crate::model::Name,
    service_account: crate::model::Name,
    #[serde(default)]
    ttl: Option<DurationSpec>,
}

/// `POST /v1/identity/workloads/sign` (editor): a certificate for a workload
/// identity, `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccount>`,
/// for workload agents and tests; lifetime `ttl` (default and at most the
/// gateway certificate lifetime).
pub async fn sign_workload(
    State(state): State<AppState>,
    identity_ext: Option<Extension<Arc<Identity>>>,
    Extension(principal): Extension<Principal>,
    body: JsonObject,
) -> Result<Json<Value>, ApiError> {
    let identity = current_identity(identity_ext, &state).await?;
    let request: WorkloadSignRequest = body.into_typed()?;
    let max = identity.gateway_lifetime();
    let lifetime = request.ttl.map_or(max, DurationSpec::get);
    if lifetime > max || lifetime < Duration::from_secs(1) {
        return Err(invalid(
            "ttl",
            format!(
                "from 1s to {} (the certificate lifetime)",
                humantime::format_duration(max)
            ),
        ));
    }
    let signed = identity
        .sign_workload(
            &request.csr,
            request.namespace.as_str(),
            request.service_account.as_str(),
            lifetime,
        )
        .map_err(identity_error)?;
    state
        .store
        .record_audit(&principal.name, "sign", "certificate", &signed.spiffe_id)
        .await?;
    tracing::info!(
        by = principal.name,
        spiffe_id = signed.spiffe_id,
        "workload certificate signed"
    );
    Ok(Json(json!({
        "certificate": signed.chain_pem,
        "spiffeId": signed.spiffe_id,
        "expiresAt": rfc3339(signed.expires_at_ms),
    })))
}

/// Body of `POST /v1/identity/root-rotation`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotationRequest {
    phase: RotationPhase,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
enum RotationPhase {
    Start,
    Activate,
    Finish,
}

fn identity_error(e: IdentityError) -> ApiError {
    match e {
        IdentityError::BadCsr(m) => invalid("csr", m),
        IdentityError::NotTrusted(m) => ApiError::Unauthorized(m),
        IdentityError::Rotation(m) => ApiError::Conflict {
            message: m,
            details: Vec::new(),
        },
        IdentityError::Store(e) => e.into(),
        other => ApiError::Internal(other.to_string()),
    }
}

fn bundle_body(identity: &Identity) -> Value {
    json!({
        "trustDomain": identity.trust_domain(),
        "roots": identity.trust_bundle(),
        "rotating": identity.rotating(),
    })
}

/// `POST /v1/identity/root-rotation`: `start` adds a new root to the trust
/// bundle (the current one keeps signing); `activate` makes the new root sign
/// (once every gateway has the new bundle); `finish` drops the old root (once
/// every gateway renewed onto the new one). Answers the trust bundle.
pub async fn root_rotation(
    State(state): State<AppState>,
    identity_ext: Option<Extension<Arc<Identity>>>,
    Extension(principal): Extension<Principal>,
    body: JsonObject,
) -> Result<Json<Value>, ApiError> {
    let identity = identity(identity_ext)?;
    let request: RotationRequest = body.into_typed()?;
    let store = state.store.as_ref();
    match request.phase {
        RotationPhase::Start => identity.start_rotation(store).await,
        RotationPhase::Activate => identity.activate_rotation(store).await,
        RotationPhase::Finish => identity.finish_rotation(store).await,
    }
    .map_err(identity_error)?;
    let step = match request.phase {
        RotationPhase::Start => "rotation-start",
        RotationPhase::Activate => "rotation-activate",
        RotationPhase::Finish => "rotation-finish",
    };
    store
        .record_audit(&principal.name, step, "root", identity.trust_domain())
        .await?;
    tracing::info!(
        by = principal.name,
        phase = ?request.phase,
        roots = identity.trust_bundle().len(),
        "root rotation step"
    );
    Ok(Json(bundle_body(&identity)))
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    ApiError::Invalid {
        message: format!("{field}: {message}"),
        details: vec![FieldError {
            field: field.to_owned(),
            message,
        }],
    }
}

fn identity(ext: Option<Extension<Arc<Identity>>>) -> Result<Arc<Identity>, ApiError> {
    ext.map(|Extension(i)| i)
        .ok_or_else(|| ApiError::NotReady("this federation has no certificate authority".into()))
}

/// The CA, as the store has it now (another replica may have rotated it).
async fn current_identity(
    ext: Option<Extension<Arc<Identity>>>,
    state: &AppState,
) -> Result<Arc<Identity>, ApiError> {
    let identity = identity(ext)?;
    identity
        .refresh(state.store.as_ref())
        .await
        .map_err(identity_error)?;
    Ok(identity)
}

/// `POST /v1/clusters/{name}/join-tokens`: a one-time token, shown once.
pub async fn create_join_token(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(params): Path<HashMap<String, String>>,
    body: JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let cluster = params.get("name").cloned().unwrap_or_default();
    let request: JoinTokenRequest = body.into_typed()?;
    let ttl = request
        .ttl
        .map_or(DEFAULT_JOIN_TOKEN_TTL, DurationSpec::get);
    if ttl > MAX_JOIN_TOKEN_TTL {
        return Err(invalid("ttl", "at most 168h"));
    }
    let secret = generate_token()?;
    let expires_at =
        now_millis().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    state
        .store
        .create_join_token(&cluster, &hash_token(&secret), expires_at, &principal.name)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"cluster": cluster, "token": secret, "expiresAt": rfc3339(expires_at)})),
    ))
}

/// `POST /v1/identity/sign`: a certificate for the gateway of the join token's cluster.
pub async fn sign(
    State(state): State<AppState>,
    identity_ext: Option<Extension<Arc<Identity>>>,
    body: JsonObject,
) -> Result<Json<Value>, ApiError> {
    let identity = current_identity(identity_ext, &state).await?;
    let request: SignRequest = body.into_typed()?;
    let lifetime = identity.gateway_lifetime();
    let join_token = match (
        request.join_token,
        request.certificate,
        request.service_account_token,
    ) {
        (None, None, Some(sa_token)) => {
            let Some(cluster) = request.cluster else {
                return Err(invalid(
                    "cluster",
                    "a serviceAccountToken is reviewed by its cluster: name it",
                ));
            };
            return sign_for_service_account(
                &state,
                &identity,
                &request.csr,
                cluster.as_str(),
                &sa_token,
            )
            .await;
        }
        (Some(token), None, None) => token,
        (None, Some(current), None) => {
            let key_proof = match request.key_proof.as_deref() {
                Some(proof) => Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(proof)
                        .map_err(|_| invalid("keyProof", "not base64"))?,
                ),
                None => None,
            };
            let (signed, cluster) = identity
                .renew_gateway(&request.csr, &current, key_proof.as_deref(), lifetime)
                .map_err(identity_error)?;
            let key = crate::store::ObjectKey::global(crate::model::Kind::Cluster, cluster.clone());
            if state.store.get(&key).await?.is_none() {
                return Err(ApiError::Unauthorized(format!(
                    "cluster {cluster} is no longer registered"
                )));
            }
            state
                .store
                .record_audit(
                    &format!("gateway:{cluster}"),
                    "renew",
                    "certificate",
                    &signed.spiffe_id,
                )
                .await?;
            tracing::info!(
                cluster,
                spiffe_id = signed.spiffe_id,
                "gateway certificate renewed"
            );
            return Ok(Json(json!({
                "certificate": signed.chain_pem,
                "spiffeId": signed.spiffe_id,
                "expiresAt": rfc3339(signed.expires_at_ms),
            })));
        }
        _ => {
            return Err(invalid(
                "joinToken",
                "give exactly one of joinToken or serviceAccountToken (first certificate) and certificate (renewal)",
            ));
        }
    };
    if request.cluster.is_some() {
        return Err(invalid(
            "cluster",
            "only with serviceAccountToken (a join token names its cluster)",
        ));
    }
    // Check the CSR before spending the one-time token on it.
    if rcgen::CertificateSigningRequestParams::from_pem(&request.csr).is_err() {
        return Err(invalid(
            "csr",
            "not a valid PEM PKCS#10 request signed by its key",
        ));
    }
    let spent = || ApiError::Unauthorized("join token unknown, already used or expired".into());
    let join_hash = hash_token(&join_token);
    let cluster = state
        .store
        .join_token_cluster(&join_hash, now_millis())
        .await?
        .ok_or_else(spent)?;
    let signed = identity
        .sign_gateway(&request.csr, &cluster, lifetime)
        .map_err(identity_error)?;
    // The gateway's token (shown once, like every token): its cluster's
    // config watch and instance reports, nothing else. It is stored as the
    // join token is spent, in one transaction; a join token spent meanwhile
    // by another request gets nothing (the certificate is not returned).
    let api_token = generate_token()?;
    let token_name = format!("gateway-{cluster}-{}", &hash_token(&api_token)[..8]);
    let minted = state
        .store
        .redeem_join_token_for_gateway(
            &join_hash,
            now_millis(),
            &token_name,
            &hash_token(&api_token),
        )
        .await?
        .ok_or_else(spent)?;
    if minted.cluster.as_deref() != Some(cluster.as_str()) {
        return Err(ApiError::Internal(
            "the join token changed cluster while it was redeemed".into(),
        ));
    }
    state
        .store
        .record_audit(
            &format!("join-token:{cluster}"),
            "sign",
            "certificate",
            &signed.spiffe_id,
        )
        .await?;
    tracing::info!(
        cluster,
        spiffe_id = signed.spiffe_id,
        token = token_name,
        "gateway certificate signed"
    );
    Ok(first_certificate(&signed, &api_token, &token_name))
}

/// The first certificate of a gateway pod that proves itself with a
/// service-account token of its cluster: reviewed by the cluster's API
/// server, then signed, with a gateway token minted for the pod. Any number
/// of replicas may use the same account; each gets its own certificate.
async fn sign_for_service_account(
    state: &AppState,
    identity: &Identity,
    csr: &str,
    cluster: &str,
    sa_token: &str,
) -> Result<Json<Value>, ApiError> {
    use crate::discovery::review::{self, ReviewError};
    if rcgen::CertificateSigningRequestParams::from_pem(csr).is_err() {
        return Err(invalid(
            "csr",
            "not a valid PEM PKCS#10 request signed by its key",
        ));
    }
    let reviewed = match review::gateway_token(state.store.as_ref(), cluster, sa_token).await {
        Ok(reviewed) => reviewed,
        Err(ReviewError::Store(e)) => return Err(e.into()),
        Err(e @ ReviewError::Unreachable { .. }) => {
            tracing::warn!(cluster, error = %e, "cannot review a gateway's service-account token");
            return Err(ApiError::NotReady(e.to_string()));
        }
        Err(e) => {
            metrics::counter!("gns_gateway_token_reviews_refused_total").increment(1);
            return Err(ApiError::Unauthorized(e.to_string()));
        }
    };
    let signed = identity
        .sign_gateway(csr, cluster, identity.gateway_lifetime())
        .map_err(identity_error)?;
    let api_token = generate_token()?;
    let who = reviewed.pod.as_deref().unwrap_or("pod");
    let token_name = format!("gateway-{cluster}-{who}-{}", &hash_token(&api_token)[..8]);
    let actor = format!("serviceaccount:{cluster}:{}", reviewed.user);
    state
        .store
        .create_token(
            &token_name,
            crate::model::Role::Gateway,
            Some(cluster),
            &[],
            &hash_token(&api_token),
            &actor,
        )
        .await?;
    state
        .store
        .record_audit(&actor, "sign", "certificate", &signed.spiffe_id)
        .await?;
    tracing::info!(
        cluster,
        pod = reviewed.pod.as_deref().unwrap_or(""),
        spiffe_id = signed.spiffe_id,
        token = token_name,
        "gateway certificate signed for a service-account token"
    );
    Ok(first_certificate(&signed, &api_token, &token_name))
}

/// The answer to a gateway's first signing: its certificate and its API
/// token (shown this once).
fn first_certificate(
    signed: &crate::identity::SignedCertificate,
    api_token: &str,
    token_name: &str,
) -> Json<Value> {
    Json(json!({
        "certificate": signed.chain_pem,
        "spiffeId": signed.spiffe_id,
        "expiresAt": rfc3339(signed.expires_at_ms),
        "apiToken": api_token,
        "apiTokenName": token_name,
    }))
}

/// `GET /v1/identity/trust-bundle`.
pub async fn trust_bundle(
    State(state): State<AppState>,
    identity_ext: Option<Extension<Arc<Identity>>>,
) -> Result<Json<Value>, ApiError> {
    let identity = current_identity(identity_ext, &state).await?;
    Ok(Json(bundle_body(&identity)))
}
