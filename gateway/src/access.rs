//! Who calls, and whether they may: the caller a gateway names to its
//! peers ([`CALLER_HEADER`]) and the subset it asks for
//! ([`SUBSET_HEADER`]), neither of which a client can set; the access
//! policy applied to local clients (by the services they are endpoints of)
//! and to peers (by cluster and named caller).

use std::sync::atomic::Ordering;

use http::{HeaderName, HeaderValue};

use crate::proxy::Gateway;
use crate::refusal::Refusal;
use crate::route::{Route, RouteTable};

/// The header a gateway names the caller in when it forwards a request:
/// the services the calling workload is an endpoint of (comma-separated;
/// absent when it is none's), or `external` from the public entry. Set by
/// the gateway that took the request (a client's own is dropped) and
/// trusted only from peer gateways, over mutual TLS.
pub const CALLER_HEADER: HeaderName = HeaderName::from_static("x-gns-caller");
/// Between gateways: the subset of the receiving cluster's endpoints a
/// request is for (a key of the service's `subsets`), when a rule chose one.
pub const SUBSET_HEADER: HeaderName = HeaderName::from_static("x-gns-subset");

impl Gateway {
    /// Who the client at `client` (in this cluster) is when it calls
    /// `route`'s service (`host` in messages), if the access policy lets it;
    /// else why not (the refusal is counted).
    pub(crate) fn local_caller<'t>(
        &self,
        routes: &'t RouteTable,
        route: &Route,
        client: std::net::IpAddr,
        host: &str,
    ) -> Result<Option<&'t crate::route::Caller>, Refusal> {
        let caller = routes.caller_at(client, &route.config.gns);
        let services = caller.map_or(&[][..], |c| c.services.as_slice());
        if route.admits(services) {
            return Ok(caller);
        }
        self.counters.access_denied.fetch_add(1, Ordering::Relaxed);
        Err(Refusal::CallerDenied(denied_caller(services, host)))
    }

    /// Why a peer's request for `route`'s service (`host`) is refused, if
    /// the access policy refuses it (counted): the peer's cluster must run a
    /// permitted caller, and the caller it names must be permitted.
    pub(crate) fn peer_refusal(
        &self,
        route: &Route,
        peer: &str,
        headers: &http::HeaderMap,
        host: &str,
    ) -> Option<Refusal> {
        let cluster_allowed = route
            .config
            .allowed_clusters
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|c| c == peer));
        let refusal = if !cluster_allowed {
            Refusal::ClusterDenied {
                peer: peer.to_owned(),
                host: host.to_owned(),
            }
        } else {
            let callers = callers_named(headers);
            let admitted = if callers == ["external"] {
                route.config.external
            } else {
                route.admits(&callers)
            };
            if admitted {
                return None;
            }
            Refusal::CallerDenied(denied_caller(&callers, host))
        };
        self.counters.access_denied.fetch_add(1, Ordering::Relaxed);
        Some(refusal)
    }
}

/// Names the subset a request to a peer is for ([`SUBSET_HEADER`]).
pub(crate) fn name_subset(headers: &mut http::HeaderMap, subset: Option<&str>) {
    if let Some(value) = subset.and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.insert(SUBSET_HEADER, value);
    }
}

/// The subset a peer named ([`SUBSET_HEADER`]).
pub(crate) fn subset_named(headers: &http::HeaderMap) -> Option<&str> {
    headers.get(SUBSET_HEADER).and_then(|v| v.to_str().ok())
}

/// Replaces whatever caller a client named with `caller`.
pub(crate) fn name_caller(headers: &mut http::HeaderMap, caller: Option<HeaderValue>) {
    headers.remove(&CALLER_HEADER);
    // Only gateways name subsets to each other, never a client.
    headers.remove(&SUBSET_HEADER);
    if let Some(value) = caller {
        headers.insert(CALLER_HEADER, value);
    }
}

/// The callers a peer gateway named ([`CALLER_HEADER`]).
pub(crate) fn callers_named(headers: &http::HeaderMap) -> Vec<&str> {
    headers
        .get(&CALLER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Why callers `callers` were refused `host`, for the answer and the log.
pub(crate) fn denied_caller<S: AsRef<str>>(callers: &[S], host: &str) -> String {
    if callers.is_empty() {
        return format!(
            "{host}: callers that are no service's endpoint may not call it (access policy)"
        );
    }
    let names: Vec<&str> = callers.iter().map(AsRef::as_ref).collect();
    format!("{} may not call {host} (access policy)", names.join(", "))
}
