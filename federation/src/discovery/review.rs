//! Gateways that prove who they are with a Kubernetes service-account
//! token (as SPIRE's k8s_psat attestor and istiod's CSR signing do): the
//! federation asks the member cluster's own API server, with a TokenReview
//! for audience [`GATEWAY_AUDIENCE`], whether the token is valid and whose
//! it is, and accepts it only as the cluster's gateway service account. The
//! token never authenticates to the federation by itself, and one of another
//! cluster, account or audience is refused.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use crate::model::{Cluster, ClusterCredentials, Kind};
use crate::store::{ObjectKey, Store, StoreError};

/// The audience gateway tokens must be minted for (the projected token in
/// the gateway template asks for it).
pub const GATEWAY_AUDIENCE: &str = "gns-federation";

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The cluster is not registered.
    #[error("cluster {0} is not registered")]
    NoCluster(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The member cluster's API server could not be asked.
    #[error("cannot review the token with cluster {cluster}'s API server: {reason}")]
    Unreachable {
        /// The cluster.
        cluster: String,
        /// Why.
        reason: String,
    },
    /// The token is not valid, or not the gateway's.
    #[error("service-account token refused: {0}")]
    Refused(String),
}

/// A token the member cluster vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewedGateway {
    /// `system:serviceaccount:<namespace>:<name>`.
    pub user: String,
    /// The pod the token is bound to, when it is a projected token.
    pub pod: Option<String>,
}

/// Reviews `token` in `cluster_name`'s API server: valid, for
/// [`GATEWAY_AUDIENCE`], and of the cluster's gateway service account.
pub async fn gateway_token(
    store: &dyn Store,
    cluster_name: &str,
    token: &str,
) -> Result<ReviewedGateway, ReviewError> {
    let key = ObjectKey::global(Kind::Cluster, cluster_name.to_owned());
    let object = store
        .get(&key)
        .await?
        .ok_or_else(|| ReviewError::NoCluster(cluster_name.to_owned()))?;
    let unreachable = |reason: String| ReviewError::Unreachable {
        cluster: cluster_name.to_owned(),
        reason,
    };
    let cluster: Cluster =
        serde_json::from_value(object.spec).map_err(|e| unreachable(e.to_string()))?;
    let credentials: ClusterCredentials = store
        .secret(&key)
        .await?
        .as_deref()
        .and_then(|s| serde_json::from_slice(s).ok())
        .unwrap_or_default();
    let client =
        super::client::client(&cluster, &credentials).map_err(|e| unreachable(e.to_string()))?;
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![GATEWAY_AUDIENCE.to_owned()]),
        },
        ..TokenReview::default()
    };
    let answer = Api::<TokenReview>::all(client)
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = answer.status.unwrap_or_default();
    judge(&cluster, &status)
}

/// The decision on a TokenReview's answer (pure): authenticated, for
/// [`GATEWAY_AUDIENCE`], as the cluster's gateway service account.
pub fn judge(
    cluster: &Cluster,
    status: &k8s_openapi::api::authentication::v1::TokenReviewStatus,
) -> Result<ReviewedGateway, ReviewError> {
    if status.authenticated != Some(true) {
        let why = status
            .error
            .clone()
            .unwrap_or_else(|| "not authenticated".to_owned());
        return Err(ReviewError::Refused(why));
    }
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == GATEWAY_AUDIENCE) {
        return Err(ReviewError::Refused(format!(
            "the token is not for audience {GATEWAY_AUDIENCE}"
        )));
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let expected = cluster.gateway_account_user();
    if username != expected {
        return Err(ReviewError::Refused(format!(
            "the token is {username}'s, not {expected}'s"
        )));
    }
    let pod = user
        .extra
        .as_ref()
        .and_then(|e| e.get("authentication.kubernetes.io/pod-name"))
        .and_then(|names| names.first().cloned());
    Ok(ReviewedGateway {
        user: username,
        pod,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    fn cluster(account: Option<&str>) -> Cluster {
        let mut value = serde_json::json!({"name": "east",
            "kubernetes": {"server": "https://127.0.0.1:6443"}});
        if let Some(a) = account {
            value["gatewayServiceAccount"] = a.into();
        }
        serde_json::from_value(value).expect("cluster")
    }

    fn status(user: &str, audiences: &[&str], ok: bool) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(ok),
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
            user: Some(UserInfo {
                username: Some(user.to_owned()),
                ..UserInfo::default()
            }),
            error: (!ok).then(|| "invalid bearer token".to_owned()),
        }
    }

    #[test]
    fn only_the_gateway_account_for_the_gns_audience_is_accepted() {
        let gateway = "system:serviceaccount:gns-system:gns-gateway";
        let ok = judge(&cluster(None), &status(gateway, &[GATEWAY_AUDIENCE], true));
        assert_eq!(ok.map(|r| r.user).ok().as_deref(), Some(gateway));
        for (account, user, audiences, authenticated) in [
            (None, gateway, &[GATEWAY_AUDIENCE][..], false),
            (None, gateway, &["https://kubernetes.default.svc"][..], true),
            (
                None,
                "system:serviceaccount:default:web",
                &[GATEWAY_AUDIENCE][..],
                true,
            ),
            (Some("edge/gw"), gateway, &[GATEWAY_AUDIENCE][..], true),
        ] {
            let refused = judge(&cluster(account), &status(user, audiences, authenticated));
            assert!(
                matches!(refused, Err(ReviewError::Refused(_))),
                "{account:?} {user} {audiences:?} {authenticated}: {refused:?}"
            );
        }
        let custom = judge(
            &cluster(Some("edge/gw")),
            &status("system:serviceaccount:edge:gw", &[GATEWAY_AUDIENCE], true),
        );
        assert!(custom.is_ok(), "{custom:?}");
    }
}
