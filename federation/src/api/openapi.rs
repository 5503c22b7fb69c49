//! The OpenAPI 3.1 document served at `/openapi.json`, built from one table
//! of operations (a test checks every operation in it is routed) and the
//! `ToSchema` types of the model.

use std::sync::OnceLock;

use serde_json::Value;
use utoipa::ToSchema;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref,
    RefOr, Required, ResponseBuilder,
};

use super::ErrorBody;
use crate::model::{
    AccessPolicy, Cluster, DiscoveredService, ExternalWorkload, GlobalNamespace, Routing,
    TokenRequest,
};

/// One documented operation.
pub struct Operation {
    /// HTTP method.
    pub method: HttpMethod,
    /// Path template, `{param}` style.
    pub path: &'static str,
    /// Summary.
    pub summary: &'static str,
    /// Tag.
    pub tag: &'static str,
    /// Request body schema name.
    pub request: Option<&'static str>,
    /// Response schema name; `Some("[X]")` for a list of X.
    pub response: Option<&'static str>,
    /// Success status.
    pub success: u16,
    /// Needs a bearer token.
    pub auth: bool,
}

const fn op(
    method: HttpMethod,
    path: &'static str,
    summary: &'static str,
    tag: &'static str,
    request: Option<&'static str>,
    response: Option<&'static str>,
    success: u16,
) -> Operation {
    Operation {
        method,
        path,
        summary,
        tag,
        request,
        response,
        success,
        auth: true,
    }
}

const CLUSTERS: &str = "/v1/clusters";
const CLUSTER: &str = "/v1/clusters/{name}";
const GNSES: &str = "/v1/global-namespaces";
const GNS: &str = "/v1/global-namespaces/{gns}";
const SERVICES: &str = "/v1/global-namespaces/{gns}/services";
const SERVICE: &str = "/v1/global-namespaces/{gns}/services/{svc}";
const ROUTING: &str = "/v1/global-namespaces/{gns}/services/{svc}/routing";
const ROUTINGS: &str = "/v1/global-namespaces/{gns}/routing";
const WORKLOADS: &str = "/v1/global-namespaces/{gns}/external-workloads";
const WORKLOAD: &str = "/v1/global-namespaces/{gns}/external-workloads/{name}";
const HEARTBEAT: &str = "/v1/global-namespaces/{gns}/external-workloads/{name}/heartbeat";
const POLICIES: &str = "/v1/global-namespaces/{gns}/access-policies";
const POLICY: &str = "/v1/global-namespaces/{gns}/access-policies/{name}";
const CONFIG_DNS: &str = "/v1/config/dns";

/// Every operation of the API.
pub const OPERATIONS: &[Operation] = {
    use HttpMethod::{Delete, Get, Post, Put};
    &[
        op(
            Get,
            CLUSTERS,
            "List member clusters",
            "clusters",
            None,
            Some("[Cluster]"),
            200,
        ),
        op(
            Post,
            CLUSTERS,
            "Register a member cluster",
            "clusters",
            Some("Cluster"),
            Some("Cluster"),
            201,
        ),
        op(
            Get,
            CLUSTER,
            "Get a cluster (credentials are never returned)",
            "clusters",
            None,
            Some("Cluster"),
            200,
        ),
        op(
            Put,
            CLUSTER,
            "Replace a cluster; credentials are kept unless given",
            "clusters",
            Some("Cluster"),
            Some("Cluster"),
            200,
        ),
        op(
            Delete,
            CLUSTER,
            "Unregister a cluster (409 while global namespaces refer to it)",
            "clusters",
            None,
            Some("Cluster"),
            200,
        ),
        op(
            Get,
            GNSES,
            "List global namespaces",
            "global-namespaces",
            None,
            Some("[GlobalNamespace]"),
            200,
        ),
        op(
            Post,
            GNSES,
            "Create a global namespace",
            "global-namespaces",
            Some("GlobalNamespace"),
            Some("GlobalNamespace"),
            201,
        ),
        op(
            Get,
            GNS,
            "Get a global namespace",
            "global-namespaces",
            None,
            Some("GlobalNamespace"),
            200,
        ),
        op(
            Put,
            GNS,
            "Replace a global namespace",
            "global-namespaces",
            Some("GlobalNamespace"),
            Some("GlobalNamespace"),
            200,
        ),
        op(
            Delete,
            GNS,
            "Delete a global namespace and everything in it",
            "global-namespaces",
            None,
            Some("GlobalNamespace"),
            200,
        ),
        op(
            Get,
            SERVICES,
            "Discovered service catalog",
            "services",
            None,
            Some("[DiscoveredService]"),
            200,
        ),
        op(
            Get,
            SERVICE,
            "One discovered service",
            "services",
            None,
            Some("DiscoveredService"),
            200,
        ),
        op(
            Get,
            ROUTING,
            "Get a service's routing",
            "routing",
            None,
            Some("Routing"),
            200,
        ),
        op(
            Put,
            ROUTING,
            "Create (201) or replace (200) a service's routing",
            "routing",
            Some("Routing"),
            Some("Routing"),
            200,
        ),
        op(
            Delete,
            ROUTING,
            "Delete a service's routing",
            "routing",
            None,
            Some("Routing"),
            200,
        ),
        op(
            Get,
            ROUTINGS,
            "List routing of every service",
            "routing",
            None,
            Some("[Routing]"),
            200,
        ),
        op(
            Get,
            WORKLOADS,
            "List external workloads",
            "external-workloads",
            None,
            Some("[ExternalWorkload]"),
            200,
        ),
        op(
            Post,
            WORKLOADS,
            "Register an external workload",
            "external-workloads",
            Some("ExternalWorkload"),
            Some("ExternalWorkload"),
            201,
        ),
        op(
            Get,
            WORKLOAD,
            "Get an external workload with its liveness",
            "external-workloads",
            None,
            Some("ExternalWorkload"),
            200,
        ),
        op(
            Put,
            WORKLOAD,
            "Replace an external workload",
            "external-workloads",
            Some("ExternalWorkload"),
            Some("ExternalWorkload"),
            200,
        ),
        op(
            Delete,
            WORKLOAD,
            "Deregister an external workload",
            "external-workloads",
            None,
            Some("ExternalWorkload"),
            200,
        ),
        op(
            Put,
            HEARTBEAT,
            "Heartbeat: renew an external workload's TTL",
            "external-workloads",
            None,
            Some("ExternalWorkload"),
            200,
        ),
        op(
            Get,
            POLICIES,
            "List access policies",
            "access-policies",
            None,
            Some("[AccessPolicy]"),
            200,
        ),
        op(
            Post,
            POLICIES,
            "Create an access policy",
            "access-policies",
            Some("AccessPolicy"),
            Some("AccessPolicy"),
            201,
        ),
        op(
            Get,
            POLICY,
            "Get an access policy",
            "access-policies",
            None,
            Some("AccessPolicy"),
            200,
        ),
        op(
            Put,
            POLICY,
            "Replace an access policy",
            "access-policies",
            Some("AccessPolicy"),
            Some("AccessPolicy"),
            200,
        ),
        op(
            Delete,
            POLICY,
            "Delete an access policy",
            "access-policies",
            None,
            Some("AccessPolicy"),
            200,
        ),
        op(
            Put,
            "/v1/clusters/{name}/gateway-instances/{instance}",
            "A gateway instance's report (the cluster's gateway token, or admin), every few seconds: body {version, configVersion?, certificateExpiresAt?: RFC 3339, intervalMillis, traffic: [{globalNamespace, service, cluster (that served), entry: egress|public, requests, responses: {1xx..5xx}, latencyBuckets: 12 counts (<=5,10,25,50,100,250,500,1000,2500,5000,10000 ms, slower), requestBytes, responseBytes}] since the last report}. A liveness fact: no revision, no audit row. When every instance of a cluster stayed silent for --gateway-timeout, the cluster leaves the external view and its peers' destinations until one reports again. Returns the instance as the cluster's status shows it",
            "clusters",
            None,
            None,
            200,
        ),
        op(
            Get,
            "/v1/clusters/{name}/gateway-instances",
            "The cluster's gateway instances as they last reported, newest first, with their last traffic: {cluster, gatewayHealth: NeverReported|Reporting|Silent, items: [{instance, version, configVersion, lastSeen, certificateExpiresAt, silent, intervalMillis, traffic}]}",
            "clusters",
            None,
            None,
            200,
        ),
        op(
            Post,
            "/v1/clusters/{name}/join-tokens",
            "Create a one-time join token for the cluster's gateway, body {\"ttl\": \"1h\"} (default 1h, at most 168h); returns {cluster, token, expiresAt}, the token once (admin)",
            "identity",
            None,
            None,
            201,
        ),
        op(
            Get,
            "/v1/config/gateways/{cluster}",
            "Gateway config for the cluster's gns-gateway (services by host, endpoints and HTTP ports per cluster, rules, failover, retries, peer gateways, trust domain); long-poll like /v1/config/dns with ?after= and ?timeout=",
            "config",
            None,
            None,
            200,
        ),
        op(
            Post,
            "/v1/identity/sign",
            "Sign a gateway CSR: body {csr: PEM PKCS#10, joinToken}, or {csr, cluster, serviceAccountToken: a Kubernetes token of the cluster's gateway service account (default gns-system/gns-gateway) for audience gns-federation, checked by a TokenReview in that cluster; any number of pods may use it}, for a first certificate (returns also the gateway's apiToken, once: role gateway, its cluster's config watch and instance reports only), or {csr, certificate: the current PEM, keyProof?} to renew (the CSR is for the certificate's key, or for a new key with keyProof: base64 of the CSR's PEM text signed by the current key, ECDSA P-256 SHA-256); returns {certificate: PEM leaf + root, spiffeId, expiresAt}. No bearer token",
            "identity",
            None,
            None,
            200,
        ),
        op(
            Get,
            "/v1/identity/trust-bundle",
            "The trust domain, its root certificates (PEM; the signing root first, then roots still trusted during a rotation) and whether a rotation is in progress; public",
            "identity",
            None,
            None,
            200,
        ),
        op(
            Post,
            "/v1/identity/workloads/sign",
            "Sign a workload CSR (editor): body {csr: PEM PKCS#10, namespace, serviceAccount, ttl?}; returns {certificate: PEM leaf + root, spiffeId: spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccount>, expiresAt}",
            "identity",
            None,
            None,
            200,
        ),
        op(
            Post,
            "/v1/identity/root-rotation",
            "Root rotation (admin), three steps: {phase: start} adds a new root to the trust bundle while the current one keeps signing; {phase: activate} makes the new root sign (the old stays trusted); {phase: finish} drops the old root once gateways have renewed. 409 when the step does not fit the state. Returns the trust bundle",
            "identity",
            None,
            None,
            200,
        ),
        op(
            Get,
            "/v1/tokens",
            "List API tokens (admin)",
            "tokens",
            None,
            None,
            200,
        ),
        op(
            Post,
            "/v1/tokens",
            "Create an API token; the secret is returned once (admin)",
            "tokens",
            Some("TokenRequest"),
            None,
            201,
        ),
        op(
            Delete,
            "/v1/tokens/{name}",
            "Revoke an API token (admin)",
            "tokens",
            None,
            None,
            204,
        ),
        op(
            Get,
            "/v1/audit",
            "Audit log, newest first (admin)",
            "audit",
            None,
            None,
            200,
        ),
        op(
            Get,
            CONFIG_DNS,
            "DNS zone snapshot for DNS replicas; long-poll: answers at once when its version is newer than ?after=, else 304 after ?timeout= seconds (default 30, at most 60)",
            "config",
            None,
            None,
            200,
        ),
        op(
            Get,
            "/v1/whoami",
            "The calling token: {name, role, globalNamespaces} (every token may ask)",
            "tokens",
            None,
            None,
            200,
        ),
        op(
            Post,
            "/v1/trace",
            "What happens to one request, and why: DNS answer, matching rule, destinations with probabilities, access",
            "trace",
            Some("TraceQuery"),
            Some("Trace"),
            200,
        ),
        op(
            Post,
            "/v1/trace/dns",
            "The DNS answers for one name in every view (each cluster's clients, then outside every cluster), with why",
            "trace",
            Some("DnsViewsQuery"),
            Some("DnsViews"),
            200,
        ),
        op(
            Get,
            "/v1/telemetry/services",
            "Traffic per service over the telemetry window (?window=, 10s to 15m, default 15m; ?globalNamespace= and ?service= narrow it): requests, rps, responses by class, error rate, p50/p90/p99, bytes, and a series at 10 s resolution; from every gateway's reports",
            "telemetry",
            None,
            Some("ServicesWindow"),
            200,
        ),
        op(
            Get,
            "/v1/telemetry/links",
            "Traffic per link (the cluster whose gateway took the requests → the cluster that served them) over the telemetry window",
            "telemetry",
            None,
            Some("LinksWindow"),
            200,
        ),
        op(
            Get,
            "/v1/telemetry/instances",
            "Traffic per gateway instance over the telemetry window, with its last report",
            "telemetry",
            None,
            Some("InstancesWindow"),
            200,
        ),
        op(
            Get,
            "/v1/config/status",
            "Current snapshot version and the objects left out of it, with why",
            "config",
            None,
            None,
            200,
        ),
        Operation {
            auth: false,
            ..op(Get, "/healthz", "Liveness", "health", None, None, 200)
        },
        Operation {
            auth: false,
            ..op(
                Get,
                "/readyz",
                "Readiness: the store answers",
                "health",
                None,
                None,
                200,
            )
        },
        Operation {
            auth: false,
            ..op(
                Get,
                "/metrics",
                "Prometheus metrics",
                "health",
                None,
                None,
                200,
            )
        },
        Operation {
            auth: false,
            ..op(
                Get,
                "/openapi.json",
                "This document",
                "health",
                None,
                None,
                200,
            )
        },
    ]
};

fn schema_ref(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

fn json_content(name: &str) -> utoipa::openapi::Content {
    let schema = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(item) => RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .property(
                    "items",
                    utoipa::openapi::schema::ArrayBuilder::new().items(schema_ref(item)),
                )
                .required("items")
                .property(
                    "continue",
                    ObjectBuilder::new()
                        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
                            Type::String,
                            Type::Null,
                        ]))
                        .description(Some("pass as ?continue= for the next page")),
                )
                .build(),
        )),
        None => schema_ref(name),
    };
    ContentBuilder::new().schema(Some(schema)).build()
}

/// Lower-case name of an HTTP method.
pub fn method_name(method: &HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "get",
        HttpMethod::Post => "post",
        HttpMethod::Put => "put",
        HttpMethod::Delete => "delete",
        HttpMethod::Patch => "patch",
        HttpMethod::Head => "head",
        HttpMethod::Options => "options",
        HttpMethod::Trace => "trace",
    }
}

fn build_operation(o: &Operation) -> utoipa::openapi::path::Operation {
    let mut b = OperationBuilder::new()
        .summary(Some(o.summary))
        .tag(o.tag)
        .operation_id(Some(format!(
            "{}{}",
            method_name(&o.method),
            o.path.replace(['/', '{', '}', '-', '.'], "_")
        )));
    for segment in o.path.split('/') {
        if let Some(param) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            b = b.parameter(
                ParameterBuilder::new()
                    .name(param)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            );
        }
    }
    if (o.response.is_some_and(|r| r.starts_with('['))
        || o.path == "/v1/tokens"
        || o.path == "/v1/audit")
        && o.method == HttpMethod::Get
    {
        b = b
            .parameter(
                ParameterBuilder::new()
                    .name("limit")
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(1))
                            .maximum(Some(1000)),
                    )),
            )
            .parameter(
                ParameterBuilder::new()
                    .name("continue")
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            );
    }
    if o.path.starts_with("/v1/telemetry/") {
        for (name, what) in [
            (
                "window",
                "how far back: a duration from 10s to 15m (default 15m)",
            ),
            (
                "globalNamespace",
                "only the traffic of this global namespace's services",
            ),
            (
                "service",
                "only this service of globalNamespace (needs globalNamespace)",
            ),
        ] {
            b = b.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some(what))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            );
        }
    }
    if o.path == CONFIG_DNS {
        b = b
            .parameter(
                ParameterBuilder::new()
                    .name("after")
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some("version the caller has; answer only a newer one"))
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(0)),
                    )),
            )
            .parameter(
                ParameterBuilder::new()
                    .name("timeout")
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some("seconds to wait for a newer version"))
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(0))
                            .maximum(Some(60)),
                    )),
            )
            .response(
                "304",
                ResponseBuilder::new()
                    .description("nothing newer than ?after= within the timeout")
                    .build(),
            );
    }
    if let Some(req) = o.request {
        b = b.request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content("application/json", json_content(req))
                .build(),
        ));
    }
    let mut ok = ResponseBuilder::new().description("success");
    if let Some(resp) = o.response {
        ok = ok.content("application/json", json_content(resp));
    }
    b = b.response(o.success.to_string(), ok.build());
    if o.method == HttpMethod::Put && o.path == ROUTING {
        b = b.response(
            "201",
            ResponseBuilder::new()
                .description("created")
                .content("application/json", json_content("Routing"))
                .build(),
        );
    }
    let errors: &[(&str, &str)] = if o.auth {
        &[
            ("400", "malformed request"),
            ("401", "missing or unknown token"),
            ("403", "role may not do this"),
            ("404", "not found"),
            (
                "409",
                "exists already, stale resourceVersion, or still referenced",
            ),
            ("413", "body larger than 1 MiB"),
            ("422", "invalid fields (details name them)"),
            ("503", "store unavailable"),
        ]
    } else {
        &[("503", "not ready")]
    };
    for (status, description) in errors {
        b = b.response(
            *status,
            ResponseBuilder::new()
                .description(*description)
                .content("application/json", json_content("ErrorBody"))
                .build(),
        );
    }
    if o.auth {
        b = b.security(SecurityRequirement::new("bearer", Vec::<String>::new()));
    }
    b.build()
}

/// Adds `T`'s schema and the schemas it refers to.
fn add_schema<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(schemas);
}

/// Server-set fields every stored object carries; accepted and ignored on input.
fn add_server_fields(schema: &mut RefOr<Schema>) {
    if let RefOr::T(Schema::Object(object)) = schema {
        let string = || ObjectBuilder::new().schema_type(Type::String).build();
        object
            .properties
            .insert("resourceVersion".into(), RefOr::T(Schema::Object(string())));
        object
            .properties
            .insert("createdAt".into(), RefOr::T(Schema::Object(string())));
        object
            .properties
            .insert("updatedAt".into(), RefOr::T(Schema::Object(string())));
        object.properties.insert(
            "status".into(),
            RefOr::T(Schema::Object(
                ObjectBuilder::new().schema_type(Type::Object).build(),
            )),
        );
    }
}

fn build() -> OpenApi {
    let mut paths = PathsBuilder::new().build();
    for o in OPERATIONS {
        paths.add_path_operation(o.path, vec![o.method.clone()], build_operation(o));
    }
    let mut schemas = Vec::new();
    add_schema::<Cluster>(&mut schemas);
    add_schema::<GlobalNamespace>(&mut schemas);
    add_schema::<Routing>(&mut schemas);
    add_schema::<ExternalWorkload>(&mut schemas);
    add_schema::<AccessPolicy>(&mut schemas);
    add_schema::<DiscoveredService>(&mut schemas);
    add_schema::<TokenRequest>(&mut schemas);
    add_schema::<ErrorBody>(&mut schemas);
    add_schema::<crate::trace::TraceQuery>(&mut schemas);
    add_schema::<crate::trace::Trace>(&mut schemas);
    add_schema::<crate::trace::DnsViewsQuery>(&mut schemas);
    add_schema::<crate::trace::DnsViews>(&mut schemas);
    add_schema::<crate::telemetry::ServicesWindow>(&mut schemas);
    add_schema::<crate::telemetry::LinksWindow>(&mut schemas);
    add_schema::<crate::telemetry::InstancesWindow>(&mut schemas);
    for (name, schema) in &mut schemas {
        if [
            "Cluster",
            "GlobalNamespace",
            "Routing",
            "ExternalWorkload",
            "AccessPolicy",
        ]
        .contains(&name.as_str())
        {
            add_server_fields(schema);
        }
        if name == "Routing"
            && let RefOr::T(Schema::Object(object)) = schema
        {
            object.properties.insert(
                "service".into(),
                RefOr::T(Schema::Object(
                    ObjectBuilder::new().schema_type(Type::String).build(),
                )),
            );
        }
    }
    let components = ComponentsBuilder::new()
        .schemas_from_iter(schemas)
        .security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("GNS federation API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Global namespaces over many Kubernetes clusters and VMs.",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(components))
        .build()
}

/// The OpenAPI document as JSON (built once).
pub fn document() -> Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::to_value(build()).unwrap_or(Value::Null))
        .clone()
}
