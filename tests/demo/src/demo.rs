//! `gns-demo up`: brings the whole system up on this machine and keeps it
//! running until Ctrl-C, SIGTERM or `gns-demo down`.
//!
//! Order: echo upstreams → two Kubernetes API test servers seeded with the
//! services → `gns-federation` (embedded store) → clusters, the global
//! namespace, routing and the VM workload through the REST API → a
//! `gns-gateway` per cluster with a join token → the first cross-cluster
//! request. A small control listener (address in `<dir>/control`) takes
//! `fail`/`heal`/`down` from the other subcommands.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_apiserver_test::{Grant, TestApiServer, TestApiServerOptions, endpoint_slice, service};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::procs::Process;
use crate::topology::{self, CLUSTERS, SimCluster};
use crate::upstream;

/// The token the simulated clusters accept from the federation.
const MEMBER_TOKEN: &str = "demo-federation-sa-token";
/// How often the VM workload's heartbeat is sent.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Settings of `gns-demo up`.
#[derive(Debug, Clone)]
pub struct Options {
    /// State, logs, pid and control files.
    pub dir: PathBuf,
    /// Federation API address.
    pub listen: SocketAddr,
    /// Federation DNS address.
    pub dns_listen: SocketAddr,
    /// Where gns-federation and gns-gateway are.
    pub bin_dir: PathBuf,
}

/// What a control request asks.
#[derive(Debug)]
pub enum Control {
    /// Take a cluster down: its gateway dies and its API server stops.
    Fail(String, tokio::sync::oneshot::Sender<Result<String, String>>),
    /// Bring it back.
    Heal(String, tokio::sync::oneshot::Sender<Result<String, String>>),
    /// Stop everything.
    Down,
}

/// One simulated cluster while the demo runs.
struct Member {
    spec: &'static SimCluster,
    api: TestApiServer,
    gateway: Option<Process>,
}

/// Runs the demo until it is told to stop.
pub async fn up(options: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    prepare_dir(&options.dir)?;
    let mut upstreams = Vec::new();
    for cluster in &CLUSTERS {
        for instance in cluster.instances {
            let addr: SocketAddr = format!("{}:{}", instance.ip, topology::UPSTREAM_PORT)
                .parse()
                .context("upstream address")?;
            let text = format!(
                "{} {} in {} ({})",
                instance.service, instance.version, cluster.name, instance.ip
            );
            upstreams.push(upstream::http_echo(addr, text).await?);
        }
    }
    let db: SocketAddr = format!("{}:{}", topology::DB_VM_IP, topology::DB_PORT).parse()?;
    upstreams
        .push(upstream::tcp_banner(db, "db on db-vm-1 (a VM outside every cluster)".into()).await?);

    let mut members = BTreeMap::new();
    for spec in &CLUSTERS {
        let api = TestApiServer::start(TestApiServerOptions::default().token(
            MEMBER_TOKEN,
            Grant::read_only("system:serviceaccount:gns-system:gns-federation"),
        ))
        .await
        .with_context(|| format!("start the API server of {}", spec.name))?;
        seed(&api, spec)?;
        members.insert(
            spec.name,
            Member {
                spec,
                api,
                gateway: None,
            },
        );
    }

    let data_dir = options.dir.join("federation");
    let mut federation = Process::spawn(
        &options.bin_dir,
        "gns-federation",
        "gns-federation",
        &[
            "--listen".into(),
            options.listen.to_string(),
            "--dns-listen".into(),
            options.dns_listen.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--trust-domain".into(),
            "acme.demo".into(),
        ],
        options.dir.join("federation.log"),
    )?;
    let base = format!("https://{}", options.listen);
    let ca_file = data_dir.join("ca.pem");
    wait_ready(&base, &ca_file, &mut federation).await?;
    let token_file = data_dir.join("admin-token");
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("read {}", token_file.display()))?
        .trim()
        .to_owned();
    let api = Api::new(&base, &token, &ca_file)?;
    configure(&api, &members).await?;
    for member in members.values_mut() {
        member.gateway = Some(start_gateway(&api, &options, member.spec, true).await?);
    }
    write_pids(&options.dir, &federation, &members)?;
    let east = topology::cluster("east").context("east")?;
    let first = first_cross_cluster_request(east, &mut members).await?;
    wait_for_dns(options.dns_listen).await?;
    let elapsed = started.elapsed();

    let (control_tx, mut control_rx) = mpsc::channel(8);
    let control_addr = crate::control::serve(control_tx.clone()).await?;
    std::fs::write(options.dir.join("control"), control_addr.to_string())
        .context("write the control address")?;
    print_guide(&options, &token_file, elapsed, &first);

    // A fixed schedule: control requests in between don't postpone heartbeats.
    let mut heartbeats =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate() => break,
            control = control_rx.recv() => match control {
                Some(Control::Down) | None => break,
                Some(Control::Fail(name, reply)) => {
                    let _ = reply.send(fail(&mut members, &name).await);
                }
                Some(Control::Heal(name, reply)) => {
                    let _ = reply.send(heal(&api, &options, &mut members, &name).await);
                }
            },
            _ = heartbeats.tick() => heartbeat(&api).await,
        }
        if let Some(status) = federation.exited() {
            eprintln!(
                "gns-federation exited ({status}); see {}",
                federation.log.display()
            );
            break;
        }
    }
    println!("stopping the demo");
    for member in members.values_mut() {
        if let Some(gateway) = member.gateway.as_mut() {
            gateway.stop().await;
        }
    }
    federation.stop().await;
    for task in upstreams {
        task.abort();
    }
    let _ = std::fs::remove_file(options.dir.join("control"));
    let _ = std::fs::remove_file(options.dir.join("pids"));
    let _ = std::fs::remove_file(options.dir.join("demo.pid"));
    println!("demo stopped");
    Ok(())
}

/// Waits for SIGTERM (never returns elsewhere).
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// Keeps the VM workload alive (sent every [`HEARTBEAT`]; its TTL is 30 s).
async fn heartbeat(api: &Api) {
    let path = format!(
        "/v1/global-namespaces/{}/external-workloads/db-vm-1/heartbeat",
        topology::GNS
    );
    if let Err(e) = api.call(reqwest::Method::PUT, &path, None).await {
        eprintln!("heartbeat of db-vm-1 failed: {e:#}");
    }
}

fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let pid_file = dir.join("demo.pid");
    if let Ok(text) = std::fs::read_to_string(&pid_file)
        && let Ok(pid) = text.trim().parse::<u32>()
        && Path::new(&format!("/proc/{pid}")).exists()
    {
        bail!(
            "a demo is already running from {} (pid {pid}); stop it with `gns-demo down`",
            dir.display()
        );
    }
    stop_leftovers(dir);
    // The gateways' ports must be free (another demo, or something else, may hold them).
    for cluster in &CLUSTERS {
        for port in [
            topology::EGRESS_PORT,
            topology::INGRESS_PORT,
            topology::PUBLIC_PORT,
            topology::ADMIN_PORT,
        ] {
            let addr = format!("{}:{port}", cluster.gateway_ip);
            std::net::TcpListener::bind(&addr).with_context(|| {
                format!(
                    "{addr} (the {} gateway's) is taken; is another demo running?",
                    cluster.name
                )
            })?;
        }
    }
    // A fresh start: the previous run's store and gateway state go.
    for stale in ["federation", "gateway-east", "gateway-west"] {
        let path = dir.join(stale);
        if path.exists() {
            std::fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    std::fs::write(&pid_file, std::process::id().to_string()).context("write demo.pid")?;
    Ok(())
}

/// Stops processes a previous demo from `dir` left behind (it was killed
/// before it could stop them): the pids it recorded whose command line still
/// names `dir`.
fn stop_leftovers(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("pids")) else {
        return;
    };
    let needle = dir.display().to_string();
    for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle));
        if ours {
            eprintln!("stopping process {pid} left by an earlier demo");
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
    }
    let _ = std::fs::remove_file(dir.join("pids"));
}

fn write_pids(
    dir: &Path,
    federation: &Process,
    members: &BTreeMap<&str, Member>,
) -> anyhow::Result<()> {
    let mut pids: Vec<String> = federation
        .pid()
        .map(|p| p.to_string())
        .into_iter()
        .collect();
    for member in members.values() {
        if let Some(pid) = member.gateway.as_ref().and_then(Process::pid) {
            pids.push(pid.to_string());
        }
    }
    std::fs::write(dir.join("pids"), pids.join("\n")).context("write pids")
}

/// Services `web` and `api` as the cluster runs them: one EndpointSlice per
/// version, each endpoint with the upstream's address.
fn seed(api: &TestApiServer, cluster: &SimCluster) -> anyhow::Result<()> {
    let mut services: BTreeMap<&str, Vec<&topology::Instance>> = BTreeMap::new();
    for instance in cluster.instances {
        services.entry(instance.service).or_default().push(instance);
    }
    for (name, instances) in services {
        let mut svc = service(topology::NAMESPACE, name, &[("app", name)], &[("http", 80)]);
        if let Some(port) = svc
            .spec
            .as_mut()
            .and_then(|s| s.ports.as_mut())
            .and_then(|p| p.first_mut())
        {
            port.target_port = Some(
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(
                    topology::UPSTREAM_PORT,
                )),
            );
        }
        api.apply::<Service>(&svc)
            .map_err(|e| anyhow::anyhow!("seed service {name}: {e}"))?;
        for instance in instances {
            // The pod behind the endpoint: its labels are what routing
            // rules select by (`version`, `env`).
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": pod_name(name, instance.version), "namespace": topology::NAMESPACE,
                             "labels": {"app": name, "version": instance.version, "env": instance.env}},
                "spec": {"containers": [{"name": name, "image": format!("demo/{name}:{}", instance.version)}]}}))
            .context("pod")?;
            api.apply(&pod)
                .map_err(|e| anyhow::anyhow!("seed pod of {name}: {e}"))?;
            let slice = slice(name, instance.version, instance.ip, true);
            api.apply::<EndpointSlice>(&slice)
                .map_err(|e| anyhow::anyhow!("seed slice of {name}: {e}"))?;
        }
    }
    Ok(())
}

fn slice(service_name: &str, version: &str, ip: &str, ready: bool) -> EndpointSlice {
    let mut slice = endpoint_slice(
        topology::NAMESPACE,
        service_name,
        &format!("{service_name}-{version}"),
        &[(ip, ready, ready, false, None)],
        &[("http", i32::from(topology::UPSTREAM_PORT))],
    );
    if let Some(labels) = slice.metadata.labels.as_mut() {
        labels.insert("version".into(), version.into());
    }
    for endpoint in &mut slice.endpoints {
        endpoint.target_ref = Some(k8s_openapi::api::core::v1::ObjectReference {
            kind: Some("Pod".into()),
            name: Some(pod_name(service_name, version)),
            namespace: Some(topology::NAMESPACE.into()),
            ..Default::default()
        });
    }
    slice
}

/// The demo's one pod per service and version.
fn pod_name(service_name: &str, version: &str) -> String {
    format!("{service_name}-{version}-0")
}

/// A small client of the federation's REST API.
pub struct Api {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Api {
    fn new(base: &str, token: &str, ca_file: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            base: base.to_owned(),
            token: token.to_owned(),
            client: gns_trust::client_builder(Some(ca_file))?
                .timeout(Duration::from_secs(10))
                .build()
                .context("HTTP client")?,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {path}: {status}: {value}");
        }
        Ok(value)
    }
}

async fn wait_ready(base: &str, ca_file: &Path, federation: &mut Process) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The federation writes its CA file as it starts.
        if ca_file.is_file()
            && let Ok(r) = gns_trust::client(Some(ca_file))?
                .get(format!("{base}/readyz"))
                .send()
                .await
            && r.status().is_success()
        {
            return Ok(());
        }
        if let Some(status) = federation.exited() {
            bail!(
                "gns-federation exited ({status}); see {}",
                federation.log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "gns-federation not ready within 30 s; see {}",
                federation.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Registers the clusters, the global namespace, web's routing (a 99/1
/// canary split with a User-Agent rule and failover), the policy opening api
/// to outside clients and the VM workload.
async fn configure(api: &Api, members: &BTreeMap<&str, Member>) -> anyhow::Result<()> {
    use reqwest::Method;
    for member in members.values() {
        let spec = member.spec;
        let ca = base64::engine::general_purpose::STANDARD.encode(member.api.ca_pem());
        api.call(
            Method::POST,
            "/v1/clusters",
            Some(json!({
                "name": spec.name,
                "labels": {"region": spec.region},
                "kubernetes": {"server": member.api.url(), "token": MEMBER_TOKEN, "caData": ca},
                "networks": [spec.network],
                "gateway": {
                    "ingressAddress": format!("{}:{}", spec.gateway_ip, topology::INGRESS_PORT),
                    "egressAddress": spec.gateway_ip,
                    "publicAddress": spec.gateway_ip,
                },
                "staleEndpointPolicy": {"withdrawAfter": "10s"},
            })),
        )
        .await?;
    }
    let members_json: Vec<Value> = members
        .keys()
        .map(|name| json!({"cluster": name, "namespace": topology::NAMESPACE}))
        .collect();
    api.call(
        Method::POST,
        "/v1/global-namespaces",
        Some(json!({"name": topology::GNS, "domain": topology::DOMAIN,
                    "defaultAccess": "allow", "members": members_json})),
    )
    .await?;
    api.call(
        Method::PUT,
        &format!(
            "/v1/global-namespaces/{}/services/web/routing",
            topology::GNS
        ),
        Some(json!({
            "rules": [
                {"match": {"headers": [{"name": "user-agent", "regex": ".*Mobile.*"}]},
                 "destinations": [{"cluster": "west", "weight": 100}]},
                // The seed's steering rule, tried first: the pods labelled
                // `version: canary`, wherever they run.
                {"match": {"headers": [{"name": "user-agent", "regex": "^(.*?;)?(iPhone)(;.*)?$"}]},
                 "precedence": 2,
                 "destinations": [{"tags": {"version": "canary"}, "weight": 100}]},
                // The seed's split by the pods' labels: 99 % to
                // `version: v1.5, env: us-prod` (the caller's own cluster
                // first), 1 % to west's `version: v2.0-alpha, env: us-staging`.
                {"destinations": [{"tags": {"version": "v1.5", "env": "us-prod"}, "weight": 99},
                                  {"cluster": "west",
                                   "tags": {"version": "v2.0-alpha", "env": "us-staging"}, "weight": 1}]}
            ],
            "retries": {"attempts": 3, "on": ["5xx", "connect-failure"], "perTryTimeout": "500ms"},
            "timeout": "2s",
            "failover": ["east", "west"],
        })),
    )
    .await?;
    // The public entries serve outside clients (`external`) only what a
    // policy opens to them by name: api.
    api.call(
        Method::POST,
        &format!("/v1/global-namespaces/{}/access-policies", topology::GNS),
        Some(
            json!({"name": "outside-to-api", "from": ["external"], "to": "api", "action": "allow"}),
        ),
    )
    .await?;
    api.call(
        Method::POST,
        &format!("/v1/global-namespaces/{}/external-workloads", topology::GNS),
        Some(json!({
            "name": "db-vm-1", "service": "db", "address": topology::DB_VM_IP,
            "ports": [{"name": "pg", "port": topology::DB_PORT, "protocol": "TCP"}],
            "ttl": "30s", "labels": {"zone": "dc-1"},
        })),
    )
    .await?;
    Ok(())
}

/// Starts the gateway of `cluster`; the first start trades a join token for
/// its certificate, a restart uses the certificate in its state directory.
async fn start_gateway(
    api: &Api,
    options: &Options,
    cluster: &SimCluster,
    join: bool,
) -> anyhow::Result<Process> {
    let ip = cluster.gateway_ip;
    let mut args = vec![
        "--federation".to_owned(),
        format!("https://{}", options.listen),
        "--federation-ca".to_owned(),
        options
            .dir
            .join("federation")
            .join("ca.pem")
            .display()
            .to_string(),
        "--cluster".into(),
        cluster.name.into(),
        "--egress-listen".into(),
        format!("{ip}:{}", topology::EGRESS_PORT),
        "--ingress-listen".into(),
        format!("{ip}:{}", topology::INGRESS_PORT),
        "--public-listen".into(),
        format!("{ip}:{}", topology::PUBLIC_PORT),
        "--admin-listen".into(),
        format!("{ip}:{}", topology::ADMIN_PORT),
        "--state-dir".into(),
        options
            .dir
            .join(format!("gateway-{}", cluster.name))
            .display()
            .to_string(),
        "--worker-threads".into(),
        "1".into(),
    ];
    if join {
        let token = api
            .call(
                reqwest::Method::POST,
                &format!("/v1/clusters/{}/join-tokens", cluster.name),
                Some(json!({"ttl": "10m"})),
            )
            .await?;
        args.push("--join-token".into());
        args.push(
            token["token"]
                .as_str()
                .context("join token in the answer")?
                .to_owned(),
        );
    }
    Process::spawn(
        &options.bin_dir,
        "gns-gateway",
        &format!("gns-gateway ({})", cluster.name),
        &args,
        options.dir.join(format!("gateway-{}.log", cluster.name)),
    )
}

/// Sends mobile requests into east's egress until one is answered by west.
async fn first_cross_cluster_request(
    east: &SimCluster,
    members: &mut BTreeMap<&str, Member>,
) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("http://{}:{}/", east.gateway_ip, topology::EGRESS_PORT);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        for member in members.values_mut() {
            if let Some(gateway) = member.gateway.as_mut()
                && let Some(status) = gateway.exited()
            {
                bail!(
                    "{} exited ({status}); see {}",
                    gateway.name,
                    gateway.log.display()
                );
            }
        }
        match client
            .get(&url)
            .header("host", format!("web.{}", topology::DOMAIN))
            .header("user-agent", "Demo Mobile")
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                let body = r.text().await.unwrap_or_default();
                if body.contains("in west") {
                    return Ok(body.trim().to_owned());
                }
                last = body;
            }
            Ok(r) => last = r.status().to_string(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("no request crossed from east to west within 60 s; last answer: {last}")
}

/// Waits until DNS gives the external view of `web`: both public gateways.
async fn wait_for_dns(server: SocketAddr) -> anyhow::Result<()> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let name = Name::from_ascii(format!("web.{}.", topology::DOMAIN))?;
    let mut query = Message::new(0x6e73, MessageType::Query, OpCode::Query);
    query.add_query(Query::query(name, RecordType::A));
    let wire = query.to_vec()?;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 4096];
    loop {
        socket.send_to(&wire, server).await?;
        if let Ok(Ok((len, _))) =
            tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await
            && let Ok(answer) = Message::from_vec(&buf[..len])
            && answer.answers.len() >= CLUSTERS.len()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "DNS at {server} did not answer web.{} within 30 s",
                topology::DOMAIN
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn fail(members: &mut BTreeMap<&str, Member>, name: &str) -> Result<String, String> {
    let member = members
        .get_mut(name)
        .ok_or_else(|| format!("no cluster {name:?} (east or west)"))?;
    if let Some(mut gateway) = member.gateway.take() {
        gateway.stop().await;
    }
    member.api.go_down().await;
    Ok(format!(
        "{name} is down: its gateway stopped and its API server is unreachable; \
         requests fail over at once, DNS withdraws {name} after 10 s"
    ))
}

async fn heal(
    api: &Api,
    options: &Options,
    members: &mut BTreeMap<&str, Member>,
    name: &str,
) -> Result<String, String> {
    let member = members
        .get_mut(name)
        .ok_or_else(|| format!("no cluster {name:?} (east or west)"))?;
    if !member.api.is_up() {
        member.api.come_up().await.map_err(|e| e.to_string())?;
    }
    if member.gateway.is_none() {
        let gateway = start_gateway(api, options, member.spec, false)
            .await
            .map_err(|e| format!("{e:#}"))?;
        member.gateway = Some(gateway);
    }
    Ok(format!("{name} is back"))
}

fn print_guide(options: &Options, token_file: &Path, elapsed: Duration, first: &str) {
    let east = &CLUSTERS[0];
    let west = &CLUSTERS[1];
    let domain = topology::DOMAIN;
    let dns = options.dns_listen;
    let demo = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "gns-demo".into());
    let dir = options.dir.display();
    let egress = format!("http://{}:{}/", east.gateway_ip, topology::EGRESS_PORT);
    let public = format!("http://{}:{}/", west.gateway_ip, topology::PUBLIC_PORT);
    let (dns_ip, dns_port) = (dns.ip(), dns.port());
    println!(
        "\nGNS demo is up: first cross-cluster request after {:.2} s ({first})\n",
        elapsed.as_secs_f64()
    );
    let ca_file = token_file.with_file_name("ca.pem");
    println!(
        "federation  https://{}   (admin token in {}, CA in {})",
        options.listen,
        token_file.display(),
        ca_file.display()
    );
    println!(
        "console     https://{}/ui/   (sign in with the admin token)",
        options.listen
    );
    println!("DNS         {dns} (UDP and TCP)");
    for c in &CLUSTERS {
        println!(
            "{:<11} gateway {} (egress :{}, ingress :{} mTLS, public :{}), pod network {}",
            c.name,
            c.gateway_ip,
            topology::EGRESS_PORT,
            topology::INGRESS_PORT,
            topology::PUBLIC_PORT,
            c.network
        );
    }
    println!("logs        {dir}/*.log\n");
    println!("Try:");
    println!("# DNS from outside every cluster: the public gateways of clusters running web");
    println!("  $ dig @{dns_ip} -p {dns_port} web.{domain} +short");
    println!("# DNS from inside east: web has routing, so east's egress gateway");
    println!(
        "  $ dig @{dns_ip} -p {dns_port} -b {} web.{domain} +short",
        east.client_ip
    );
    println!("# the VM workload db, and its port");
    println!("  $ dig @{dns_ip} -p {dns_port} _pg._tcp.db.{domain} SRV +short");
    println!("# a mobile client in east: the User-Agent rule sends it to west, over mTLS");
    println!("  $ curl -s -H 'Host: web.{domain}' -A 'Demo Mobile' {egress}");
    println!(
        "# the seed's iPhone app (User-Agent ^(.*?;)?(iPhone)(;.*)?$, precedence 2): west too"
    );
    println!("  $ curl -s -H 'Host: web.{domain}' -A 'DemoApp/1.0;iPhone;iOS 17' {egress}");
    println!(
        "# anyone else in east: the 99/1 split by version (about 1 in 100 answers from west's v2.0-alpha)"
    );
    println!(
        "  $ for i in $(seq 200); do curl -s -H 'Host: web.{domain}' {egress}; done | sort | uniq -c"
    );
    println!(
        "# from outside every cluster, through west's public entry (policy outside-to-api allows it)"
    );
    println!("  $ curl -s -H 'Host: api.{domain}' {public}");
    println!("# the catalog, as the federation sees it");
    println!(
        "  $ curl -s --cacert {} -H \"Authorization: Bearer $(cat {})\" https://{}/v1/global-namespaces/{}/services",
        ca_file.display(),
        token_file.display(),
        options.listen,
        topology::GNS
    );
    let gnsctl = format!(
        "{} --server https://{} --ca-file {} --token \"$(cat {})\"",
        options.bin_dir.join("gnsctl").display(),
        options.listen,
        ca_file.display(),
        token_file.display()
    );
    println!(
        "# why a request goes where it goes, from the federation's snapshot (-o json: every field)"
    );
    println!(
        "  $ {gnsctl} trace web.{domain} --from east -H 'User-Agent: DemoApp/1.0;iPhone;iOS 17'"
    );
    println!("  $ {gnsctl} trace web.{domain}");
    println!("\nThen take west down and watch requests fail over to east:");
    println!("  {demo} fail west --dir {dir}");
    println!("  curl -s -H 'Host: web.{domain}' -A 'Demo Mobile' {egress}");
    println!("  {demo} heal west --dir {dir}");
    println!("\nStop with Ctrl-C or `{demo} down --dir {dir}`.");
    println!("GNS demo ready");
}
