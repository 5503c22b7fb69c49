//! When a failed try is tried again: the pure decision from a service's
//! retry policy, the request's method and what went wrong. A request whose
//! method is not idempotent is not sent twice unless the policy says so;
//! each condition does what its name says: `5xx` any 5xx (and a reset or
//! timeout, as they mean no answer), `gateway-error` 502, 503 and 504 (and
//! a timeout), `reset` a broken exchange (and a timeout),
//! `retriable-status-codes` exactly the listed statuses. A per-try timeout
//! alone retries nothing.
//!
//! A try that could not connect sent nothing, so whatever the method it
//! moves on to the plan's next cluster (failover needs no policy); once
//! every cluster of the plan has refused, `connect-failure` makes the
//! remaining attempts go round the plan again (endpoints restarting),
//! without it the request ends there.

use http::Method;

use crate::config::RetryPolicy;

/// How a try that reached the upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// It answered with this status.
    Status(u16),
    /// The exchange broke off after the request was sent.
    Reset,
    /// The per-try timeout passed.
    Timeout,
}

/// Whether `method` is idempotent (RFC 9110 §9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether a try of a `method` request that ended in `failure` is tried
/// again under `policy` (attempts left are the caller's business).
pub fn again(policy: Option<&RetryPolicy>, method: &Method, failure: Failure) -> bool {
    let Some(p) = policy else {
        return false;
    };
    if !p.non_idempotent && !idempotent(method) {
        return false;
    }
    match failure {
        Failure::Status(status) => {
            (p.on_5xx && (500..600).contains(&status))
                || (p.on_gateway_error && matches!(status, 502..=504))
                || p.retriable_status_codes.contains(&status)
        }
        Failure::Reset => p.on_reset || p.on_5xx,
        Failure::Timeout => p.on_5xx || p.on_gateway_error || p.on_reset,
    }
}

/// Whether a `method` request may be sent again after a try that reached
/// the upstream, under `policy`: only then is its body kept for the retry
/// (see [`crate::body`]); otherwise it streams once.
pub fn may_resend(policy: Option<&RetryPolicy>, method: &Method) -> bool {
    policy.is_some_and(|p| {
        p.attempts > 1
            && (p.non_idempotent || idempotent(method))
            && (p.on_5xx
                || p.on_gateway_error
                || p.on_reset
                || !p.retriable_status_codes.is_empty())
    })
}

/// Whether a try that could not connect is followed by another:
/// always while the plan has a cluster not tried yet (`plan_exhausted`
/// false), after that only when the policy names `connect-failure`.
pub fn again_after_connect_failure(policy: Option<&RetryPolicy>, plan_exhausted: bool) -> bool {
    !plan_exhausted || policy.is_some_and(|p| p.on_connect_failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(change: impl FnOnce(&mut RetryPolicy)) -> RetryPolicy {
        let mut p = RetryPolicy {
            attempts: 3,
            on_5xx: false,
            on_connect_failure: false,
            per_try_timeout_ms: None,
            on_gateway_error: false,
            on_reset: false,
            retriable_status_codes: Vec::new(),
            non_idempotent: false,
        };
        change(&mut p);
        p
    }

    #[test]
    fn each_condition_retries_what_it_names_only() {
        let get = Method::GET;
        let five = policy(|p| p.on_5xx = true);
        assert!(again(Some(&five), &get, Failure::Status(500)));
        assert!(again(Some(&five), &get, Failure::Reset));
        assert!(!again(Some(&five), &get, Failure::Status(429)));
        let gateway = policy(|p| p.on_gateway_error = true);
        for status in [502, 503, 504] {
            assert!(again(Some(&gateway), &get, Failure::Status(status)));
        }
        assert!(
            !again(Some(&gateway), &get, Failure::Status(500)),
            "not any 5xx"
        );
        assert!(!again(Some(&gateway), &get, Failure::Reset));
        let reset = policy(|p| p.on_reset = true);
        assert!(again(Some(&reset), &get, Failure::Reset));
        assert!(!again(Some(&reset), &get, Failure::Status(503)));
        let codes = policy(|p| p.retriable_status_codes = vec![409]);
        assert!(again(Some(&codes), &get, Failure::Status(409)));
        assert!(!again(Some(&codes), &get, Failure::Status(503)));
        assert!(
            !again(None, &get, Failure::Status(503)),
            "no policy, no retry"
        );
    }

    #[test]
    fn connect_failures_go_round_the_plan_again_only_with_connect_failure() {
        let five = policy(|p| p.on_5xx = true);
        let connect = policy(|p| p.on_connect_failure = true);
        for p in [None, Some(&five), Some(&connect)] {
            assert!(
                again_after_connect_failure(p, false),
                "failover needs no policy"
            );
        }
        assert!(!again_after_connect_failure(None, true));
        assert!(!again_after_connect_failure(Some(&five), true));
        assert!(again_after_connect_failure(Some(&connect), true));
    }

    #[test]
    fn only_idempotent_methods_are_sent_again_unless_the_policy_says_so() {
        let gateway = policy(|p| p.on_gateway_error = true);
        assert!(!again(Some(&gateway), &Method::POST, Failure::Status(503)));
        assert!(!again(Some(&gateway), &Method::PATCH, Failure::Timeout));
        assert!(again(Some(&gateway), &Method::PUT, Failure::Status(503)));
        let any = policy(|p| {
            p.on_gateway_error = true;
            p.non_idempotent = true;
        });
        assert!(again(Some(&any), &Method::POST, Failure::Status(503)));
    }

    #[test]
    fn a_body_is_kept_for_a_resend_only_when_the_policy_could_resend_that_method() {
        let get = Method::GET;
        let post = Method::POST;
        assert!(!may_resend(None, &get), "no policy: nothing is resent");
        let on_5xx = policy(|p| p.on_5xx = true);
        assert!(may_resend(Some(&on_5xx), &get));
        assert!(!may_resend(Some(&on_5xx), &post), "POST is not resent");
        let post_too = policy(|p| {
            p.on_5xx = true;
            p.non_idempotent = true;
        });
        assert!(may_resend(Some(&post_too), &post));
        let connect_only = policy(|p| p.on_connect_failure = true);
        assert!(
            !may_resend(Some(&connect_only), &get),
            "a connect failure sent nothing: no body is needed again"
        );
        let one_attempt = policy(|p| {
            p.on_5xx = true;
            p.attempts = 1;
        });
        assert!(!may_resend(Some(&one_attempt), &get));
        let codes = policy(|p| p.retriable_status_codes = vec![409]);
        assert!(may_resend(Some(&codes), &get));
    }
}
