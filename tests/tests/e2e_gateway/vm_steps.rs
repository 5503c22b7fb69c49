//! VM workloads behind the gateways: an external workload is a gateway's
//! endpoint, dialled directly by any gateway when it names no cluster, or
//! only by its own cluster's gateway (the others go through it) when it does.

use super::*;

const BILLING_HOST: &str = "billing.production.app.acme.com";
const LEDGER_HOST: &str = "ledger.production.app.acme.com";

/// A VM-only service answers in-cluster clients through their egress and
/// outside clients through the public entry; a VM in west's network is
/// reached from east through west's gateway.
pub(crate) async fn vm_backed_services_answer_through_egress_and_public_entry(w: &World) {
    let (east_gw, west_gw) = (w.east_gw(), w.west_gw());
    let anywhere = upstream("vm-anywhere").await;
    let in_west = upstream("vm-in-west").await;
    for body in [
        json!({"name": "billing-vm-1", "service": "billing", "address": "127.0.0.1",
               "ports": [{"name": "http", "port": anywhere, "protocol": "HTTP"}], "ttl": "1h"}),
        json!({"name": "ledger-vm-1", "service": "ledger", "address": "127.0.0.1", "cluster": "west",
               "ports": [{"name": "http", "port": in_west, "protocol": "HTTP"}], "ttl": "1h"}),
    ] {
        let (status, answer) = api(
            reqwest::Method::POST,
            &format!(
                "{}/v1/global-namespaces/production/external-workloads",
                w.base
            ),
            Some(body),
        )
        .await;
        assert_eq!(status, 201, "{answer}");
    }
    let answers = async |gateway: SocketAddr, host: &str, want: &str| {
        eventually(
            &format!("{host} to answer {want} through {gateway}"),
            Duration::from_secs(15),
            async || match get(gateway, host, None, Duration::from_secs(5)).await {
                (200, body) if body == want => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .await;
    };
    // No cluster: east's egress dials the VM itself.
    let west_ingress_before = metric(west_gw.admin, "gns_gateway_ingress_requests_total").await;
    answers(east_gw.egress, BILLING_HOST, "vm-anywhere").await;
    assert_eq!(
        metric(west_gw.admin, "gns_gateway_ingress_requests_total").await,
        west_ingress_before,
        "no hop through west"
    );
    // In west's network: east's egress goes through west's gateway.
    answers(east_gw.egress, LEDGER_HOST, "vm-in-west").await;
    assert!(
        metric(west_gw.admin, "gns_gateway_ingress_requests_total").await > west_ingress_before,
        "ledger's VM is reached through west"
    );
    // Outside clients, once a policy opens billing to them.
    assert_eq!(
        get(west_gw.public, BILLING_HOST, None, Duration::from_secs(5))
            .await
            .0,
        403,
        "closed to outside clients by default"
    );
    w.post_policy(
        json!({"name": "billing-outside-in", "from": ["external"], "to": "billing", "action": "allow"}),
    )
    .await;
    answers(west_gw.public, BILLING_HOST, "vm-anywhere").await;
}
