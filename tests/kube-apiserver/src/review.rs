//! `POST /apis/authentication.k8s.io/v1/tokenreviews`: whether a bearer
//! token is valid and whose it is, as kube-apiserver answers it for
//! webhook authenticators and for services that accept service-account
//! tokens (the GNS federation does, from gateways). Nothing is stored; the
//! answer is `201` with `status` filled in, also for a token that does not
//! authenticate (`authenticated: false` with an `error`).
//!
//! A minted token authenticates when it has not expired, its service
//! account still exists with the uid it was minted for, its Secret (if any)
//! exists, the pod a projected token is bound to still exists (when Pods
//! are served), and its audiences meet the review's `spec.audiences`
//! (default: the API server's own). The answer's `status.audiences` is that
//! intersection, and `user.extra` names the bound pod, as the real server's.

use serde_json::{Value, json};

use crate::server::Shared;
use crate::status;
use crate::tokens;
use crate::write::Outcome;

/// Reviews the token in `body` (a `TokenReview`).
pub(crate) fn token_review(shared: &Shared, body: &[u8]) -> Outcome {
    let review: Value = serde_json::from_slice(body)
        .map_err(|e| status::bad_request(&format!("the body is not a TokenReview: {e}")))?;
    if let Err(e) =
        serde_json::from_value::<k8s_openapi::api::authentication::v1::TokenReview>(review.clone())
    {
        return Err(status::invalid(
            "authentication.k8s.io",
            "TokenReview",
            "",
            &e.to_string(),
        ));
    }
    let token = review
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or("");
    if token.is_empty() {
        return Err(status::invalid(
            "authentication.k8s.io",
            "TokenReview",
            "",
            "spec.token: Required value: token must not be empty",
        ));
    }
    let wanted: Vec<String> = review
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .map_or_else(
            || vec![tokens::DEFAULT_AUDIENCE.to_owned()],
            |a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            },
        );
    let status = match shared.review(token) {
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
        Some(minted) => {
            let meet: Vec<&String> = wanted
                .iter()
                .filter(|a| minted.audiences.contains(a))
                .collect();
            if meet.is_empty() {
                json!({
                    "authenticated": false,
                    "error": format!(
                        "invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}",
                        minted.audiences, wanted
                    ),
                })
            } else {
                let mut user = json!({
                    "username": format!("system:serviceaccount:{}:{}", minted.namespace, minted.name),
                    "uid": minted.uid,
                    "groups": [
                        "system:serviceaccounts",
                        format!("system:serviceaccounts:{}", minted.namespace),
                        "system:authenticated",
                    ],
                });
                if let Some((pod, uid)) = &minted.pod {
                    user["extra"] = json!({
                        "authentication.kubernetes.io/pod-name": [pod],
                        "authentication.kubernetes.io/pod-uid": [uid],
                    });
                }
                json!({"authenticated": true, "user": user, "audiences": meet})
            }
        }
    };
    Ok((
        201,
        json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": review.get("spec").cloned().unwrap_or(Value::Null),
            "status": status,
        }),
    ))
}
