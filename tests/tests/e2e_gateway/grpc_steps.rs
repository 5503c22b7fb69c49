//! gRPC through the gateways: a real tonic client calls tonic's health
//! service in west through east's egress (h2c from the client, HTTP/2 over
//! mTLS between the gateways, h2c to the endpoint because its port is
//! named `grpc`).

use super::*;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as Status;
use tonic_health::pb::health_client::HealthClient;

const GRPC_ORIGIN: &str = "http://health.production.app.acme.com";

/// Unary calls answer with the status in trailers, an endpoint's own error
/// status arrives as sent, a server stream delivers each message as it is
/// sent, and with no ready endpoint left the gateway answers UNAVAILABLE as
/// a gRPC status, not an HTTP error page.
pub(crate) async fn grpc_crosses_clusters_with_trailers_streams_and_statuses(w: &World) {
    let east_gw = w.east_gw();
    w.east_config_has("health", "west").await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", east_gw.egress))
        .expect("endpoint")
        .origin(GRPC_ORIGIN.parse().expect("origin"))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("a channel to east's egress");
    let mut client = HealthClient::new(channel);
    let check = |service: &str| HealthCheckRequest {
        service: service.to_owned(),
    };
    // Unary: tonic fails a response whose trailers (grpc-status) were lost.
    let overall = client.check(check("")).await.expect("overall health");
    assert_eq!(overall.get_ref().status, Status::Serving as i32);
    // The endpoint's own error status crosses as it was sent.
    let unknown = client
        .check(check("no-such-service"))
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

    // Server streaming: each status change arrives as it is sent.
    w.grpc
        .set_service_status("shop", ServingStatus::Serving)
        .await;
    let mut stream = client
        .watch(check("shop"))
        .await
        .expect("watch")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("first message in time")
        .expect("first message")
        .expect("not ended");
    assert_eq!(first.status, Status::Serving as i32);
    w.grpc
        .set_service_status("shop", ServingStatus::NotServing)
        .await;
    let second = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the change streamed while the call is open")
        .expect("second message")
        .expect("not ended");
    assert_eq!(second.status, Status::NotServing as i32);
    drop(stream);

    // No ready endpoint anywhere: UNAVAILABLE, made by east's gateway.
    let set_ready = |ready: bool| {
        w.west
            .apply::<EndpointSlice>(&endpoint_slice(
                "shop",
                "health",
                "health-1",
                &[("127.0.0.1", ready, ready, false, None)],
                &[("grpc", i32::from(w.grpc_port))],
            ))
            .expect("slice");
    };
    set_ready(false);
    eventually(
        "calls to fail with UNAVAILABLE",
        Duration::from_secs(15),
        async || match client.check(check("")).await {
            Err(status) if status.code() == tonic::Code::Unavailable => {
                assert!(
                    status.message().contains("no cluster has ready endpoints"),
                    "the gateway says why: {status:?}"
                );
                Ok(())
            }
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    set_ready(true);
    eventually(
        "calls to succeed again",
        Duration::from_secs(15),
        async || match client.check(check("")).await {
            Ok(_) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
}
