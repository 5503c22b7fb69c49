//! Gateways end to end with real processes: `gns-federation` plus one
//! `gns-gateway` per cluster (each bootstrapped with a join token: CSR →
//! certificate from the federation's CA), two Kubernetes API test servers as
//! clusters `east` and `west`, and real HTTP upstreams. The scenario runs on
//! both store backends (SQLite and Postgres), one after the other, as named
//! steps: a failure names the behaviour that broke and the steps that passed
//! before it.
//!
//! What it checks: a request to east's egress reaches west's upstream
//! through west's ingress over mutual TLS; the 99/1 split and the User-Agent
//! rule hold; bodies of 1 MiB and 16 MiB cross clusters both ways, chunked
//! and with a length, and those with a length are replayed whole on a retry
//! (chunked ones stream once); 1 GiB goes up and 1 GiB comes down with both
//! gateways' memory flat; certificates renew
//! under load without a failed request; when west's endpoints go away the
//! request fails over to east; a 503 is retried within the retry budget and
//! passed on beyond it, an overall timeout answers 504 before a slow upstream
//! does, and a per-try timeout abandons a slow try for a fast one; the public
//! entry serves clients outside every cluster until an access policy denies
//! `external`; a certificate from another CA, a workload certificate of the
//! federation's own CA and an expired gateway certificate are refused by the
//! ingress (and counted); TCP and TLS passthrough; access by caller at the
//! egress and the ingress, where a client's own `x-gns-caller` is dropped and
//! the request judged by its real caller; the ingress speaks neither
//! plaintext nor TLS 1.2 or 1.1 (checked with an OpenSSL client shown to speak
//! TLS 1.1 on this machine); the data path outlives the federation, and a
//! gateway restarted from its state dir while the federation is down serves.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use gns_tests::{
    Proc, Steps, StoreBackend, binary, free_port, gateway_metric as metric, start_federation,
};
use http_body_util::BodyExt;
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_apiserver_test::{Grant, TestApiServer, TestApiServerOptions, endpoint_slice, service};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod bulk_steps;
mod clients;
mod grpc_steps;
mod match_steps;
mod routing_steps;
mod security_steps;
mod stream_steps;
mod telemetry_steps;
mod trace_steps;
mod upstreams;
mod vm_steps;
mod world;

use bulk_steps::*;
use clients::*;
use grpc_steps::*;
use match_steps::*;
use routing_steps::*;
use security_steps::*;
use stream_steps::*;
use telemetry_steps::*;
use trace_steps::*;
use upstreams::*;
use vm_steps::*;
use world::*;

const TOKEN: &str = "gateway-e2e-admin";
const HOST: &str = "web.production.app.acme.com";
const FLAKY_HOST: &str = "flaky.production.app.acme.com";
const SLOW_HOST: &str = "slow.production.app.acme.com";
/// The federation's `--gateway-cert-lifetime`.
const CERT_LIFETIME: Duration = Duration::from_secs(12);
/// How long a slow answer of a [`scripted`] upstream takes.
const SLOW: Duration = Duration::from_secs(2);

const ECHO_WEST_HOST: &str = "echo-west.production.app.acme.com";
const ECHO_EAST_HOST: &str = "echo-east.production.app.acme.com";
/// Where east's clients that are endpoints of `api` connect from.
const API_CLIENT_IP: &str = "127.0.0.5";
const SHOPFRONT_HOST: &str = "shopfront.production.app.acme.com";
/// shopfront's pods in west: name, address, `version` label, `env` label.
const SHOPFRONT_PODS: [(&str, &str, &str, Option<&str>); 3] = [
    ("shopfront-v15", "127.0.0.1", "v1.5", Some("us-prod")),
    (
        "shopfront-alpha",
        "127.0.0.8",
        "v2.0-alpha",
        Some("us-staging"),
    ),
    ("shopfront-canary", "127.0.0.9", "canary", None),
];

/// Serializes the scenarios of this binary: each runs two gateways with
/// timing-sensitive steps (timeouts, renewals) on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn scenario(backend: StoreBackend) {
    let _serial = SERIAL.lock().await;
    let mut steps = Steps::new(format!("gateways on {}", backend.name()));
    let mut w = setup(backend).await;
    steps
        .run(
            "connections spread over both workers",
            connections_spread_over_both_workers(&w),
        )
        .await;
    steps
        .run(
            "a valid gateway certificate is served",
            a_valid_gateway_certificate_is_served(&mut w),
        )
        .await;
    steps
        .run(
            "routing sends east's clients to west over mTLS",
            routing_sends_east_clients_to_west_over_mtls(&w),
        )
        .await;
    steps
        .run(
            "the 99/1 split and the User-Agent rule hold",
            the_99_1_split_and_the_user_agent_rule_hold(&w),
        )
        .await;
    steps
        .run(
            "every series the gateways export is typed",
            every_series_the_gateways_export_is_typed(&w),
        )
        .await;
    steps
        .run(
            "source, path, method and precedence rules route",
            source_path_method_and_precedence_rules_route(&w),
        )
        .await;
    steps
        .run(
            "the seed's canary: 99/1 between version subsets and the iPhone rule",
            the_seeds_canary_splits_between_version_subsets(&w),
        )
        .await;
    steps
        .run(
            "the telemetry window shows the canary traffic",
            the_telemetry_window_shows_the_canary_traffic(&w),
        )
        .await;
    steps
        .run(
            "every dashboard query names a metric the binaries export",
            every_dashboard_query_names_a_metric_the_binaries_export(&w),
        )
        .await;
    steps
        .run(
            "traces cross both gateways to the endpoint",
            traces_cross_both_gateways_to_the_endpoint(&w),
        )
        .await;
    steps
        .run(
            "server-sent events arrive one by one across clusters",
            server_sent_events_arrive_one_by_one_across_clusters(&w),
        )
        .await;
    steps
        .run(
            "a WebSocket crosses clusters",
            a_websocket_crosses_clusters(&w),
        )
        .await;
    steps
        .run(
            "VM-backed services answer through the egress and the public entry",
            vm_backed_services_answer_through_egress_and_public_entry(&w),
        )
        .await;
    steps
        .run(
            "gRPC crosses clusters with trailers, streams and statuses",
            grpc_crosses_clusters_with_trailers_streams_and_statuses(&w),
        )
        .await;
    steps
        .run(
            "large bodies cross clusters both ways; declared ones are replayed on retry",
            large_bodies_cross_clusters_both_ways_and_only_declared_ones_are_replayed(&w),
        )
        .await;
    steps
        .run(
            "a GiB crosses clusters each way in flat gateway memory",
            a_gibibyte_crosses_clusters_each_way_in_flat_gateway_memory(&w),
        )
        .await;
    steps
        .run(
            "certificates renew under load without a failed request",
            certificates_renew_under_load_without_a_failed_request(&w),
        )
        .await;
    steps
        .run(
            "requests fail over when west's endpoints go",
            requests_fail_over_when_west_endpoints_go(&w),
        )
        .await;
    steps
        .run(
            "a 503 is retried within the budget and passed on beyond it",
            a_503_is_retried_within_the_budget_and_passed_on_beyond_it(&w),
        )
        .await;
    steps
        .run(
            "timeouts cut slow answers and abandon slow tries",
            timeouts_cut_slow_answers_and_abandon_slow_tries(&w),
        )
        .await;
    steps
        .run(
            "the public entry serves outside clients until external is denied",
            the_public_entry_serves_outside_clients_until_external_is_denied(&w),
        )
        .await;
    steps
        .run(
            "a certificate from another CA is refused",
            a_certificate_from_another_ca_is_refused(&w),
        )
        .await;
    steps
        .run(
            "a workload certificate of the same CA is refused",
            a_workload_certificate_of_the_same_ca_is_refused(&w),
        )
        .await;
    steps
        .run(
            "TCP and TLS passthrough cross clusters",
            tcp_and_tls_passthrough_cross_clusters(&w),
        )
        .await;
    steps
        .run(
            "the egress refuses callers the policy denies",
            the_egress_refuses_callers_the_policy_denies(&w),
        )
        .await;
    steps
        .run(
            "the ingress judges the caller the peer names",
            the_ingress_judges_the_caller_the_peer_names(&w),
        )
        .await;
    steps
        .run(
            "a spoofed caller header is dropped and the real caller judged",
            a_spoofed_caller_header_is_dropped_and_the_real_caller_judged(&w),
        )
        .await;
    steps
        .run(
            "the ingress speaks neither plaintext nor TLS below 1.3",
            the_ingress_speaks_neither_plaintext_nor_tls_below_1_3(&w),
        )
        .await;
    steps
        .run(
            "an expired gateway certificate is refused",
            an_expired_gateway_certificate_is_refused(&w),
        )
        .await;
    steps
        .run(
            "the data path outlives the federation and a restart",
            the_data_path_outlives_the_federation_and_a_restart(&mut w),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_across_clusters_on_sqlite() {
    scenario(StoreBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_across_clusters_on_postgres() {
    scenario(StoreBackend::postgres()).await;
}
