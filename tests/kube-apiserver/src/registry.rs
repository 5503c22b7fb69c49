//! The resource types a test server serves and the Kubernetes URL layout.
//!
//! A [`ResourceType`] is made from a k8s-openapi type ([`ResourceType::of`]);
//! the server is schema-driven like the real one: it stores objects as JSON
//! and consults the registry for the group, version, kind, plural and scope.
//! Adding a resource type to a server is adding an entry to
//! [`crate::TestApiServerOptions::resources`]. It also knows each type's
//! subresources (`status` for the kinds whose status the real server keeps
//! apart from the main resource, `token` for service accounts).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::{ClusterResourceScope, ListableResource, NamespaceResourceScope};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Maps a k8s-openapi scope marker type to "is this kind namespaced".
pub trait Scope {
    /// True for namespaced kinds.
    const NAMESPACED: bool;
}

impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// One served resource type.
#[derive(Clone, Debug)]
pub struct ResourceType {
    /// API group ("" for the core group).
    pub group: &'static str,
    /// API version within the group (`v1`).
    pub version: &'static str,
    /// `apiVersion` as written in objects (`v1`, `discovery.k8s.io/v1`).
    pub api_version: &'static str,
    /// `kind` of one object.
    pub kind: &'static str,
    /// `kind` of a list.
    pub list_kind: &'static str,
    /// Plural name used in URLs and RBAC rules.
    pub plural: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Served subresources (`status`, `token`), by the kind's name.
    pub subresources: &'static [&'static str],
    validate: fn(&Value) -> Result<(), String>,
}

impl ResourceType {
    /// The resource type of a k8s-openapi type.
    pub fn of<K>() -> Self
    where
        K: ListableResource + DeserializeOwned,
        K::Scope: Scope,
    {
        Self {
            group: K::GROUP,
            version: K::VERSION,
            api_version: K::API_VERSION,
            kind: K::KIND,
            list_kind: K::LIST_KIND,
            plural: K::URL_PATH_SEGMENT,
            namespaced: <K::Scope as Scope>::NAMESPACED,
            subresources: match (K::GROUP, K::KIND) {
                ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
                | ("", "Service") => &["status"],
                ("", "ServiceAccount") => &["token"],
                _ => &[],
            },
            validate: |value| {
                serde_json::from_value::<K>(value.clone())
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        }
    }

    /// `authentication.k8s.io/v1` `TokenReview`: create only, never stored
    /// (the answer reviews the token; see `review`).
    pub fn token_reviews() -> Self {
        Self {
            group: "authentication.k8s.io",
            version: "v1",
            api_version: "authentication.k8s.io/v1",
            kind: "TokenReview",
            list_kind: "TokenReviewList",
            plural: "tokenreviews",
            namespaced: false,
            subresources: &[],
            validate: |value| {
                serde_json::from_value::<k8s_openapi::api::authentication::v1::TokenReview>(
                    value.clone(),
                )
                .map(drop)
                .map_err(|e| e.to_string())
            },
        }
    }

    /// Whether objects of this type are only created, as requests, and
    /// never stored (`TokenReview`).
    pub fn create_only(&self) -> bool {
        self.group == "authentication.k8s.io" && self.plural == "tokenreviews"
    }

    /// Checks that a JSON object is a valid object of this type (it
    /// deserializes into the k8s-openapi type).
    pub fn validate(&self, value: &Value) -> Result<(), String> {
        (self.validate)(value)
    }

    /// The types served when the options name none: core/v1 `Service`,
    /// `Namespace`, `ServiceAccount`, `Secret`, `ConfigMap`;
    /// `discovery.k8s.io/v1` `EndpointSlice`; `apps/v1` `Deployment`; and
    /// `rbac.authorization.k8s.io/v1` `Role`, `RoleBinding`, `ClusterRole`,
    /// `ClusterRoleBinding`; `authentication.k8s.io/v1` `TokenReview`
    /// (create only). (`Service` and `EndpointSlice` come first, so their
    /// indices are 0 and 1.)
    pub fn defaults() -> Vec<Self> {
        vec![
            Self::of::<Service>(),
            Self::of::<EndpointSlice>(),
            Self::of::<Namespace>(),
            Self::of::<ServiceAccount>(),
            Self::of::<Secret>(),
            Self::of::<ConfigMap>(),
            Self::of::<Deployment>(),
            Self::of::<Role>(),
            Self::of::<RoleBinding>(),
            Self::of::<ClusterRole>(),
            Self::of::<ClusterRoleBinding>(),
            Self::token_reviews(),
            Self::of::<Pod>(),
        ]
    }

    /// Whether the kind has a `status` subresource (main-resource writes
    /// then keep the stored status, and `/status` writes change only it).
    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }

    /// `plural` for the core group, `plural.group` otherwise (as in RBAC
    /// messages: `endpointslices.discovery.k8s.io`).
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// The served types, looked up by URL or by `apiVersion` + `kind`.
#[derive(Clone, Debug)]
pub(crate) struct Registry {
    types: Vec<ResourceType>,
}

impl Registry {
    pub(crate) fn new(types: Vec<ResourceType>) -> Self {
        Self { types }
    }

    pub(crate) fn types(&self) -> &[ResourceType] {
        &self.types
    }

    pub(crate) fn get(&self, index: usize) -> &ResourceType {
        &self.types[index]
    }

    pub(crate) fn by_kind(&self, api_version: &str, kind: &str) -> Option<usize> {
        self.types
            .iter()
            .position(|t| t.api_version == api_version && t.kind == kind)
    }

    fn by_plural(&self, group: &str, version: &str, plural: &str) -> Option<usize> {
        self.types
            .iter()
            .position(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// Whether any served type is in this group (and version, when given).
    pub(crate) fn serves_group(&self, group: &str, version: Option<&str>) -> bool {
        self.types
            .iter()
            .any(|t| t.group == group && version.is_none_or(|v| t.version == v))
    }

    /// Parses a request path into what it addresses.
    pub(crate) fn route(&self, path: &str) -> Route {
        let segments: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let (group, version, rest) = match segments.as_slice() {
            [] => return Route::Root,
            ["version"] => return Route::Version,
            ["healthz" | "livez" | "readyz", ..] => return Route::Health,
            ["api"] => return Route::CoreVersions,
            ["apis"] => return Route::GroupList,
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group] => return Route::Group((*group).to_owned()),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return Route::NotFound,
        };
        if !self.serves_group(group, Some(version)) {
            return Route::NotFound;
        }
        let find = |plural: &str| self.by_plural(group, version, plural);
        let target =
            |plural: &str, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| {
                let index = find(plural)?;
                let rt = &self.types[index];
                let misplaced = if rt.namespaced {
                    // Only collections may be addressed across all namespaces.
                    namespace.is_none() && name.is_some()
                } else {
                    namespace.is_some()
                };
                if misplaced {
                    return None;
                }
                if sub.is_some_and(|s| !rt.subresources.contains(&s)) {
                    return None;
                }
                Some(Target {
                    resource: index,
                    namespace: namespace.map(str::to_owned),
                    name: name.map(str::to_owned),
                    subresource: sub.map(str::to_owned),
                })
            };
        let target = match rest {
            [] => {
                return Route::ResourceList {
                    group: group.to_owned(),
                    version: version.to_owned(),
                };
            }
            ["namespaces", namespace, plural] => target(plural, Some(namespace), None, None)
                .or_else(|| target("namespaces", None, Some(namespace), Some(plural))),
            ["namespaces", namespace, plural, name] => {
                target(plural, Some(namespace), Some(name), None)
            }
            ["namespaces", namespace, plural, name, sub] => {
                target(plural, Some(namespace), Some(name), Some(sub))
            }
            [plural] => find(plural).map(|i| Target {
                resource: i,
                namespace: None,
                name: None,
                subresource: None,
            }),
            [plural, name] => target(plural, None, Some(name), None),
            [plural, name, sub] => target(plural, None, Some(name), Some(sub)),
            _ => None,
        };
        target.map_or(Route::NotFound, Route::Resource)
    }
}

/// What a request path addresses.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/`: the list of paths.
    Root,
    /// `/version`.
    Version,
    /// `/healthz`, `/livez`, `/readyz`.
    Health,
    /// `/api`: the core group's versions.
    CoreVersions,
    /// `/apis`: the API groups.
    GroupList,
    /// `/apis/{group}`.
    Group(String),
    /// `/api/v1`, `/apis/{group}/{version}`: the resources of a group version.
    ResourceList { group: String, version: String },
    /// A collection or one object of a served type.
    Resource(Target),
    /// Nothing served here.
    NotFound,
}

/// A collection (no name) or an object (name) of one served type, in one
/// namespace or across all of them (namespace `None`), or a subresource of
/// an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) resource: usize,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    /// `status`, `token`: a subresource of the named object.
    pub(crate) subresource: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = Registry::new(ResourceType::defaults());
        assert_eq!(
            r.route("/api/v1/namespaces/prod/services"),
            Route::Resource(Target {
                resource: 0,
                namespace: Some("prod".into()),
                name: None,
                subresource: None,
            })
        );
        assert_eq!(
            r.route("/apis/discovery.k8s.io/v1/endpointslices"),
            Route::Resource(Target {
                resource: 1,
                namespace: None,
                name: None,
                subresource: None,
            })
        );
        assert_eq!(
            r.route("/apis/discovery.k8s.io/v1/namespaces/a/endpointslices/web-1"),
            Route::Resource(Target {
                resource: 1,
                namespace: Some("a".into()),
                name: Some("web-1".into()),
                subresource: None,
            })
        );
        assert_eq!(r.route("/api/v1/services/web"), Route::NotFound);
        assert_eq!(r.route("/api/v1/nodes"), Route::NotFound);
        assert_eq!(r.route("/apis/apps/v1/replicasets"), Route::NotFound);
        assert_eq!(
            r.route("/apis/apps/v1/namespaces/a/deployments/web/status"),
            Route::Resource(Target {
                resource: 6,
                namespace: Some("a".into()),
                name: Some("web".into()),
                subresource: Some("status".into()),
            })
        );
        assert_eq!(
            r.route("/api/v1/namespaces/a/serviceaccounts/fed/token"),
            Route::Resource(Target {
                resource: 3,
                namespace: Some("a".into()),
                name: Some("fed".into()),
                subresource: Some("token".into()),
            })
        );
        assert_eq!(
            r.route("/api/v1/namespaces/a"),
            Route::Resource(Target {
                resource: 2,
                namespace: None,
                name: Some("a".into()),
                subresource: None,
            })
        );
        assert_eq!(
            r.route("/api/v1/namespaces/a/services/web/token"),
            Route::NotFound
        );
        assert_eq!(r.route("/api/v1/namespaces/a/namespaces"), Route::NotFound);
        assert_eq!(r.route("/version"), Route::Version);
        assert_eq!(
            r.route("/api/v1"),
            Route::ResourceList {
                group: String::new(),
                version: "v1".into()
            }
        );
    }
}
