//! Service-account tokens the server mints: for `TokenRequest`
//! (`POST .../serviceaccounts/{name}/token`, expiring) and for Secrets of
//! type `kubernetes.io/service-account-token` (not expiring, valid while the
//! Secret exists). A token authenticates as its service account while the
//! account exists with the uid it was minted for, so the tokens of a deleted
//! account stop working. Tokens look like JWTs (header, claims, signature)
//! but are only checked against this table.
//!
//! TokenRequest lifetimes are bounded as the real kube-apiserver bounds
//! them: at least 10 minutes, at most 2^32 seconds ([`expiration`]). So that
//! a test can watch a token expire without waiting 10 minutes, the table
//! reads time from a [`Clock`] the test can move forward
//! ([`crate::TestApiServer::advance_clock`]): it simulates time passing on
//! the API server, and a token's `iat`, `nbf` and `exp` claims, its
//! `expirationTimestamp` and its expiry are all on that clock.

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

/// The lifetime of a TokenRequest token that asks for none (one hour), in
/// seconds as `spec.expirationSeconds` defaults to it.
pub(crate) const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// The shortest lifetime a TokenRequest may ask for (10 minutes), as the
/// real kube-apiserver validates `spec.expirationSeconds`.
pub(crate) const MIN_EXPIRATION_SECONDS: i64 = 10 * 60;

/// The longest lifetime a TokenRequest may ask for (2^32 seconds).
pub(crate) const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// The TokenRequest field that holds the lifetime.
pub(crate) const EXPIRATION_FIELD: &str = "spec.expirationSeconds";

/// The lifetime a TokenRequest's `spec.expirationSeconds` asks for, or why
/// the real kube-apiserver refuses it: the message of the field's cause in
/// its 422 `Invalid` (`Invalid value: 599: may not specify a duration less
/// than 10 minutes`). Zero and negative values are below the minimum like
/// any other.
pub(crate) fn expiration(seconds: i64) -> Result<Duration, String> {
    let invalid = |why: &str| format!("Invalid value: {seconds}: {why}");
    if seconds < MIN_EXPIRATION_SECONDS {
        return Err(invalid("may not specify a duration less than 10 minutes"));
    }
    if seconds > MAX_EXPIRATION_SECONDS {
        return Err(invalid(
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    Ok(Duration::from_secs(seconds.unsigned_abs()))
}

/// The API server's clock: the wall clock plus however far a test has moved
/// it forward. It simulates time passing on the API server only (the
/// clients' clocks do not move), for tokens: minting (the claims, and the
/// TokenRequest answer's `creationTimestamp` and `expirationTimestamp`) and
/// expiry checks. Stored objects' timestamps (`creationTimestamp`,
/// conditions, managed fields) stay on the wall clock.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    ahead: RwLock<Duration>,
}

impl Clock {
    /// The server's "now".
    pub(crate) fn now(&self) -> SystemTime {
        let ahead = *self.ahead.read().unwrap_or_else(PoisonError::into_inner);
        let wall = SystemTime::now();
        wall.checked_add(ahead).unwrap_or(wall)
    }

    /// Moves the clock forward by `by` (it never goes back).
    pub(crate) fn advance(&self, by: Duration) {
        let mut ahead = self.ahead.write().unwrap_or_else(PoisonError::into_inner);
        *ahead = ahead.saturating_add(by);
    }
}

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
    /// Who the token is for (the `aud` claim).
    pub(crate) audiences: Vec<String>,
    /// The pod a projected token is bound to (name, uid), if any.
    pub(crate) pod: Option<(String, String)>,
}

/// What a token is minted for.
pub(crate) struct MintRequest<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
    pub(crate) uid: &'a str,
    pub(crate) audiences: &'a [String],
    pub(crate) lifetime: Option<Duration>,
    pub(crate) secret: Option<&'a str>,
    /// The pod (name, uid) a projected token is bound to.
    pub(crate) pod: Option<(&'a str, &'a str)>,
}

/// The table of minted tokens.
#[derive(Default)]
pub(crate) struct Tokens {
    minted: RwLock<HashMap<String, Minted>>,
    counter: AtomicU64,
    /// The time tokens are minted and checked at.
    pub(crate) clock: Clock,
}

impl Tokens {
    /// Mints a token now (by the server's clock); returns it and when it
    /// expires.
    pub(crate) fn mint(&self, request: &MintRequest<'_>) -> (String, Option<SystemTime>) {
        self.mint_at(request, self.clock.now())
    }

    /// Mints a token issued at `now` (a time read from [`Tokens::clock`]);
    /// returns it and when it expires.
    pub(crate) fn mint_at(
        &self,
        request: &MintRequest<'_>,
        now: SystemTime,
    ) -> (String, Option<SystemTime>) {
        // Lifetimes are bounded (`expiration`); one past the end of time
        // would be expired from the start rather than never expire.
        let expires = request.lifetime.map(|l| now.checked_add(l).unwrap_or(now));
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
        if let Some((pod, uid)) = request.pod {
            claims["kubernetes.io"]["pod"] = json!({"name": pod, "uid": uid});
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
                    audiences: request.audiences.to_vec(),
                    pod: request.pod.map(|(n, u)| (n.to_owned(), u.to_owned())),
                },
            );
        (token, expires)
    }

    /// The token's record, if it was minted and has not expired by the
    /// server's clock.
    pub(crate) fn lookup(&self, token: &str) -> Option<Minted> {
        let minted = self
            .minted
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()?;
        minted
            .expires
            .is_none_or(|e| self.clock.now() < e)
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

    fn request(lifetime: Option<Duration>) -> MintRequest<'static> {
        MintRequest {
            namespace: "gns",
            name: "fed",
            uid: "u1",
            audiences: &[],
            lifetime,
            secret: None,
            pod: None,
        }
    }

    fn claims(token: &str) -> Value {
        let part = token.split('.').nth(1).expect("claims part");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64")).expect("json")
    }

    fn seconds(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
    }

    #[test]
    fn minted_tokens_expire_when_the_clock_passes_their_lifetime() {
        let tokens = Tokens::default();
        let (forever, none) = tokens.mint(&request(None));
        assert!(none.is_none());
        let lifetime = Duration::from_secs(600);
        let (short, expires) = tokens.mint(&request(Some(lifetime)));
        assert_ne!(forever, short);
        assert_eq!(forever.split('.').count(), 3);
        let expires = expires.expect("expires");
        assert!(tokens.clock.now() < expires);
        assert_eq!(
            tokens.lookup(&short).map(|m| m.name),
            Some("fed".to_owned())
        );
        assert!(tokens.lookup("nope").is_none());

        tokens.clock.advance(lifetime - Duration::from_secs(5));
        assert!(tokens.lookup(&short).is_some(), "not expired yet");
        tokens.clock.advance(Duration::from_secs(5));
        assert!(tokens.clock.now() >= expires);
        assert!(tokens.lookup(&short).is_none(), "expired");
        assert_eq!(
            tokens.lookup(&forever).map(|m| m.name),
            Some("fed".to_owned()),
            "a token without a lifetime never expires"
        );
    }

    #[test]
    fn claims_follow_the_servers_clock() {
        let tokens = Tokens::default();
        let ahead = Duration::from_secs(24 * 3600);
        tokens.clock.advance(ahead);
        let wall = SystemTime::now();
        let (token, expires) = tokens.mint(&request(Some(Duration::from_secs(3600))));
        let claims = claims(&token);
        let iat = claims["iat"].as_u64().expect("iat");
        assert!(iat >= seconds(wall + ahead), "{claims}");
        assert_eq!(claims["nbf"].as_u64(), Some(iat));
        assert_eq!(claims["exp"].as_u64(), Some(iat + 3600), "{claims}");
        assert_eq!(
            claims["exp"].as_u64(),
            expires.map(seconds),
            "the exp claim is expirationTimestamp"
        );
        assert_eq!(claims["sub"], "system:serviceaccount:gns:fed", "{claims}");
    }

    #[test]
    fn expiration_is_bounded_as_kube_apiserver_bounds_it() {
        assert_eq!(expiration(600), Ok(Duration::from_secs(600)));
        assert_eq!(expiration(1 << 32), Ok(Duration::from_secs(1 << 32)));
        for (seconds, why) in [
            (599, "may not specify a duration less than 10 minutes"),
            (0, "may not specify a duration less than 10 minutes"),
            (-1, "may not specify a duration less than 10 minutes"),
            (
                (1 << 32) + 1,
                "may not specify a duration larger than 2^32 seconds",
            ),
        ] {
            assert_eq!(
                expiration(seconds),
                Err(format!("Invalid value: {seconds}: {why}"))
            );
        }
    }
}
