//! Service-account tokens the server mints: for `TokenRequest`
//! (`POST .../serviceaccounts/{name}/token`, expiring) and for Secrets of
//! type `kubernetes.io/service-account-token` (not expiring, valid while the
//! Secret exists). A token authenticates as its service account while the
//! account exists with the uid it was minted for, so the tokens of a deleted
//! account stop working. Tokens look like JWTs (header, claims, signature)
//! but are only checked against this table.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// The audience tokens get when the request names none.
pub(crate) const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// The lifetime of a TokenRequest token that asks for none (one hour).
pub(crate) const DEFAULT_EXPIRATION: Duration = Duration::from_secs(3600);

/// One minted token.
#[derive(Clone, Debug)]
pub(crate) struct Minted {
    /// The service account's namespace.
    pub(crate) namespace: String,
    /// The service account's name.
    pub(crate) name: String,
    /// The service account's uid when the token was minted.
    pub(crate) uid: String,
    /// When the token stops working (`None`: never).
    pub(crate) expires: Option<SystemTime>,
    /// The Secret (in the same namespace) the token belongs to, if any.
    pub(crate) secret: Option<String>,
}

/// What a token is minted for.
pub(crate) struct MintRequest<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
    pub(crate) uid: &'a str,
    pub(crate) audiences: &'a [String],
    pub(crate) lifetime: Option<Duration>,
    pub(crate) secret: Option<&'a str>,
}

/// The table of minted tokens.
#[derive(Default)]
pub(crate) struct Tokens {
    minted: RwLock<HashMap<String, Minted>>,
    counter: AtomicU64,
}

impl Tokens {
    /// Mints a token; returns it and when it expires.
    pub(crate) fn mint(&self, request: &MintRequest<'_>) -> (String, Option<SystemTime>) {
        let now = SystemTime::now();
        let expires = request.lifetime.map(|l| now + l);
        let seconds = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default()
        };
        let mut claims = json!({
            "iss": DEFAULT_AUDIENCE,
            "aud": request.audiences,
            "sub": format!("system:serviceaccount:{}:{}", request.namespace, request.name),
            "iat": seconds(now),
            "nbf": seconds(now),
            "kubernetes.io": {
                "namespace": request.namespace,
                "serviceaccount": {"name": request.name, "uid": request.uid}
            }
        });
        if let Some(expires) = expires {
            claims["exp"] = json!(seconds(expires));
        }
        let signature: Vec<u8> = (0..4).flat_map(|_| self.random().to_be_bytes()).collect();
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"kube-apiserver-test"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(signature)
        );
        self.minted
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                token.clone(),
                Minted {
                    namespace: request.namespace.to_owned(),
                    name: request.name.to_owned(),
                    uid: request.uid.to_owned(),
                    expires,
                    secret: request.secret.map(str::to_owned),
                },
            );
        (token, expires)
    }

    /// The token's record, if it was minted and has not expired.
    pub(crate) fn lookup(&self, token: &str) -> Option<Minted> {
        let minted = self
            .minted
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()?;
        minted
            .expires
            .is_none_or(|e| SystemTime::now() < e)
            .then_some(minted)
    }

    fn random(&self) -> u64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(self.counter.fetch_add(1, Ordering::Relaxed));
        hasher.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        hasher.finish()
    }
}

/// RFC 3339 (seconds) of a time, as Kubernetes writes timestamps.
pub(crate) fn timestamp(time: SystemTime) -> Value {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let seconds = i64::try_from(seconds).unwrap_or_default();
    let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap_or_default(),
    );
    serde_json::to_value(time).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_expire() {
        let tokens = Tokens::default();
        let request = |lifetime| MintRequest {
            namespace: "gns",
            name: "fed",
            uid: "u1",
            audiences: &[],
            lifetime,
            secret: None,
        };
        let (forever, none) = tokens.mint(&request(None));
        assert!(none.is_none());
        let (short, _) = tokens.mint(&request(Some(Duration::ZERO)));
        assert_ne!(forever, short);
        assert_eq!(forever.split('.').count(), 3);
        assert_eq!(
            tokens.lookup(&forever).map(|m| m.name),
            Some("fed".to_owned())
        );
        assert!(tokens.lookup(&short).is_none());
        assert!(tokens.lookup("nope").is_none());
    }
}
