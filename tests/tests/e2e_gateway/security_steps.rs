//! Steps about who may talk: the public entry, refused certificates,
//! passthrough, access by caller, TLS versions, and the data path without
//! the federation.

use super::*;

/// The public entry (identity `external`): closed to a service until a
/// policy allows `external` by name; then, with west without endpoints now,
/// a client outside every cluster is sent on to east; a policy that denies
/// `external` closes the service again, to it only, not to in-cluster clients.
pub(crate) async fn the_public_entry_serves_outside_clients_until_external_is_denied(w: &World) {
    let (east_gw, west_gw) = (w.east_gw(), w.west_gw());
    assert_eq!(
        through(west_gw.public, None).await.0,
        403,
        "closed to outside clients by default"
    );
    w.post_policy(
        json!({"name": "outside-in", "from": ["external"], "to": "web", "action": "allow"}),
    )
    .await;
    eventually(
        "the public entry to reach east",
        Duration::from_secs(15),
        async || match through(west_gw.public, None).await {
            (200, body) if body == "east" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    w.post_policy(
        json!({"name": "no-outside", "from": ["external"], "to": "web", "action": "deny"}),
    )
    .await;
    eventually(
        "the public entry to refuse web",
        Duration::from_secs(15),
        async || match through(west_gw.public, None).await {
            (403, _) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert_eq!(
        through(east_gw.egress, None).await,
        (200, "east".to_owned()),
        "in-cluster clients still pass"
    );
    assert!(metric(west_gw.admin, "gns_gateway_access_denied_total").await >= 1);
}

/// A TLS client with `chain`/`key` gets nothing from west's ingress: the
/// handshake fails, or (TLS 1.3, where the server judges the client's
/// certificate after the client's Finished) the first read does; and the
/// refusal is counted.
pub(crate) async fn west_refuses_client(
    w: &World,
    what: &str,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) {
    let west_gw = w.west_gw();
    let refused_before = metric(west_gw.admin, "gns_gateway_mtls_refused_total").await;
    let outcome = ingress_get(
        w.west_ingress(),
        FLAKY_HOST,
        &w.bundle_roots,
        chain,
        key,
        None,
    )
    .await;
    assert!(outcome.is_err(), "{what} must get no answer: {outcome:?}");
    eventually(
        &format!("the refusal of {what} to be counted"),
        Duration::from_secs(5),
        async || {
            let now = metric(west_gw.admin, "gns_gateway_mtls_refused_total").await;
            if now > refused_before {
                Ok(())
            } else {
                Err(format!("{now}"))
            }
        },
    )
    .await;
}

/// A client with a certificate from another CA (naming east's gateway) is
/// refused by west's ingress.
pub(crate) async fn a_certificate_from_another_ca_is_refused(w: &World) {
    let rogue_key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://acme.test/cluster/east/gateway"
            .try_into()
            .expect("uri"),
    )];
    let rogue = params.self_signed(&rogue_key).expect("rogue cert");
    west_refuses_client(
        w,
        "a certificate of another CA",
        vec![rogue.der().clone()],
        PrivateKeyDer::try_from(rogue_key.serialize_der()).expect("key"),
    )
    .await;
}

/// A workload certificate of the federation's own CA (a valid chain, but
/// not a gateway's identity) is refused by west's ingress, and the log
/// says why.
pub(crate) async fn a_workload_certificate_of_the_same_ca_is_refused(w: &World) {
    let (chain, key) = workload_certificate(&w.base).await;
    west_refuses_client(
        w,
        "a workload certificate",
        chain,
        PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
    )
    .await;
    let log = std::fs::read_to_string(&w.west_gw().log).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.contains("ingress connection refused")
            && l.contains("spiffe://acme.test/ns/shop/sa/web")
            && l.contains("not a gateway of this trust domain")),
        "west's log names the refused identity and why"
    );
}

/// TCP passthrough: a connection to db's port on east's egress comes out
/// at west's TCP upstream, through a CONNECT tunnel in the peer
/// connection; a TLS ClientHello naming secure on the same port goes to
/// secure's upstream, untouched (TLS passthrough by SNI).
pub(crate) async fn tcp_and_tls_passthrough_cross_clusters(w: &World) {
    let east_gw = w.east_gw();
    let (east_ip, db_port) = (east_gw.egress.ip(), w.db_port);
    eventually(
        "TCP through east to west",
        Duration::from_secs(15),
        async || {
            let mut tcp = tokio::net::TcpStream::connect((east_ip, db_port))
                .await
                .map_err(|e| e.to_string())?;
            tcp.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf))
                .await
                .map_err(|_| "no answer".to_owned())?
                .map_err(|e| e.to_string())?;
            if &buf[..n] == b"west:ping" {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&buf[..n]).into_owned())
            }
        },
    )
    .await;
    assert!(metric(east_gw.admin, "gns_gateway_tcp_connections_total").await >= 1);
    let hello = {
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("secure.production.app.acme.com")
            .expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    };
    let mut tcp = tokio::net::TcpStream::connect((east_ip, db_port))
        .await
        .expect("connect");
    tcp.write_all(&hello).await.expect("send hello");
    let mut answer = vec![0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    assert_eq!(&answer, b"secure:", "routed by the server name");
}

/// Access by caller: once policies let no caller reach db, east's egress
/// refuses its client (a web endpoint, named by its address) before
/// anything leaves the cluster, and counts it.
pub(crate) async fn the_egress_refuses_callers_the_policy_denies(w: &World) {
    let east_gw = w.east_gw();
    let (east_ip, db_port) = (east_gw.egress.ip(), w.db_port);
    let denied_before = metric(east_gw.admin, "gns_gateway_access_denied_total").await;
    w.post_policy(json!({"name": "no-db", "from": ["*"], "to": "db", "action": "deny"}))
        .await;
    eventually(
        "east's egress to refuse the TCP client of db",
        Duration::from_secs(15),
        async || {
            let mut tcp = tokio::net::TcpStream::connect((east_ip, db_port))
                .await
                .map_err(|e| e.to_string())?;
            tcp.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf)).await;
            let denied = metric(east_gw.admin, "gns_gateway_access_denied_total").await;
            match read {
                Ok(Ok(0)) | Ok(Err(_)) if denied > denied_before => Ok(()),
                other => Err(format!("{other:?}, denied {denied_before} -> {denied}")),
            }
        },
    )
    .await;
}

/// West's ingress checks the caller east's gateway names: with api denied
/// flaky, a request naming api is refused (and counted) while one naming
/// no service is admitted (200, allowed by default), and so are east's own
/// clients (web endpoints).
pub(crate) async fn the_ingress_judges_the_caller_the_peer_names(w: &World) {
    let west_gw = w.west_gw();
    w.post_policy(
        json!({"name": "no-api-to-flaky", "from": ["api"], "to": "flaky", "action": "deny"}),
    )
    .await;
    let (chain, key) = east_certificate(&w.base).await;
    let key_der = || PrivateKeyDer::try_from(key.serialize_der()).expect("key");
    let denied_before = metric(west_gw.admin, "gns_gateway_access_denied_total").await;
    eventually(
        "west's ingress to refuse a request naming api",
        Duration::from_secs(15),
        async || {
            let named = ingress_get(
                w.west_ingress(),
                FLAKY_HOST,
                &w.bundle_roots,
                chain.clone(),
                key_der(),
                Some("api"),
            )
            .await?;
            match named {
                (403, body) if body.contains("api may not call") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(
        metric(west_gw.admin, "gns_gateway_access_denied_total").await > denied_before,
        "west counts the refusal"
    );
    let unnamed = ingress_get(
        w.west_ingress(),
        FLAKY_HOST,
        &w.bundle_roots,
        chain.clone(),
        key_der(),
        None,
    )
    .await;
    assert_eq!(
        unnamed,
        Ok((200, "flaky".to_owned())),
        "a caller that is no service's endpoint is admitted by default"
    );
    let named_web = ingress_get(
        w.west_ingress(),
        FLAKY_HOST,
        &w.bundle_roots,
        chain,
        key_der(),
        Some("web"),
    )
    .await;
    assert_eq!(
        named_web,
        Ok((200, "flaky".to_owned())),
        "web may call flaky"
    );
}

/// A client's own `x-gns-caller` is dropped by the egress and the request
/// judged by the client's real identity (the services its address is an
/// endpoint of): web claiming to be api still gets through to flaky; api
/// (a client at API_CLIENT_IP) claiming to be web is still refused.
pub(crate) async fn a_spoofed_caller_header_is_dropped_and_the_real_caller_judged(w: &World) {
    let east_gw = w.east_gw();
    w.east_config_has("api", "east").await;
    let send = async |from: &str, claimed: &str| {
        let client = gns_tests::client()
            .local_address(from.parse::<std::net::IpAddr>().expect("ip"))
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        match client
            .get(format!("http://{}/hello", east_gw.egress))
            .header("host", FLAKY_HOST)
            .header("x-gns-caller", claimed)
            .send()
            .await
        {
            Ok(resp) => {
                let status = resp.status().as_u16();
                (status, resp.text().await.unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        }
    };
    eventually(
        "api's client to be refused flaky whatever it claims",
        Duration::from_secs(15),
        async || match send(API_CLIENT_IP, "web").await {
            (403, body) if body.contains("api") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert_eq!(
        send("127.0.0.1", "api").await,
        (200, "flaky".to_owned()),
        "web's client claiming to be api is judged as web"
    );
    w.delete_policy("no-api-to-flaky").await;
}

/// The ingress speaks no plaintext, and refuses TLS 1.2 and 1.1 with a TLS
/// alert, to an OpenSSL client that speaks TLS 1.1 on this machine (a
/// listener that never speaks TLS sends no alert).
pub(crate) async fn the_ingress_speaks_neither_plaintext_nor_tls_below_1_3(w: &World) {
    let mut plain = tokio::net::TcpStream::connect(w.west_ingress())
        .await
        .expect("connect");
    plain
        .write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), plain.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plaintext HTTP must get no HTTP answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    let dir = w.dir.path().to_owned();
    tokio::task::spawn_blocking(move || openssl_speaks_tls_1_1(&dir))
        .await
        .expect("TLS 1.1 control");
    for flag in ["-tls1_2", "-tls1_1"] {
        let addr = w.west_ingress();
        let text = tokio::task::spawn_blocking(move || openssl_client(addr, flag))
            .await
            .expect("openssl");
        // The TLS server's own refusal: an alert (protocol version, or
        // handshake failure where no offered version leaves anything to
        // agree on). A listener that never speaks TLS sends no alert.
        assert!(
            (text.contains("alert protocol version") || text.contains("alert handshake failure"))
                && text.contains("Cipher is (NONE)"),
            "{flag} must be refused with a TLS alert: {text}"
        );
    }
}

/// The certificate west's ingress accepted at the start has expired by
/// now: the same client is refused, and the refusal counted and logged.
pub(crate) async fn an_expired_gateway_certificate_is_refused(w: &World) {
    let west_gw = w.west_gw();
    let (chain, key, issued_at) = w
        .east_cert
        .clone()
        .expect("the certificate of the earlier step");
    tokio::time::sleep(
        (issued_at + CERT_LIFETIME + Duration::from_secs(1))
            .saturating_duration_since(Instant::now()),
    )
    .await;
    let handshake_failures = "gns_gateway_mtls_handshake_failures_total{reason=\"handshake\"}";
    let handshake_before = metric(west_gw.admin, handshake_failures).await;
    west_refuses_client(
        w,
        "an expired certificate",
        chain,
        PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
    )
    .await;
    assert!(
        metric(west_gw.admin, handshake_failures).await > handshake_before,
        "counted as a handshake failure"
    );
    let west_log = west_gw.process.log_text();
    assert!(
        west_log
            .lines()
            .any(|l| l.contains("ingress connection refused") && l.contains("certificate expired")),
        "west refused the certificate for its expiry"
    );
}

/// The federation dies: the gateways keep serving from their config, also
/// across clusters while their certificates last; east's gateway, restarted
/// from its state dir while the federation is still down, serves again.
pub(crate) async fn the_data_path_outlives_the_federation_and_a_restart(w: &mut World) {
    w.fed.kill();
    let killed = Instant::now();
    assert_eq!(
        get(w.east_gw().egress, FLAKY_HOST, None, Duration::from_secs(5)).await,
        (200, "flaky".to_owned()),
        "east → west with the federation down"
    );
    // For 3 s and at least 10 requests (however slow the machine is today),
    // through the gateways' own failed polls of the federation.
    let mut served = 0;
    while killed.elapsed() < Duration::from_secs(3) || served < 10 {
        let (status, body) = through(w.east_gw().egress, None).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "east"),
            "with the federation down"
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let down_log = std::fs::read_to_string(&w.east_gw().log).unwrap_or_default();
    assert!(!down_log.is_empty());

    // East's gateway restarts (same arguments, its one-time join token long
    // spent) with only its state dir: it serves from the persisted config.
    let east = w.gateways.get_mut("east").expect("east");
    east.process.kill();
    let log = w.dir.path().join("gateway-east-restarted.log");
    east.process = Proc::spawn(&binary("gns-gateway"), &east.args, log.clone());
    east.log = log;
    let (egress, admin) = (east.egress, east.admin);
    eventually(
        "the restarted gateway to be ready without the federation",
        Duration::from_secs(15),
        async || {
            let ready = gns_tests::client()
                .build()
                .expect("client")
                .get(format!("http://{admin}/readyz"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())?;
            if ready == 200 {
                Ok(())
            } else {
                Err(format!("readyz {ready}"))
            }
        },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(
            through(egress, None).await,
            (200, "east".to_owned()),
            "the restarted gateway serves with the federation down"
        );
    }
}
