//! Authentication and authorization: static bearer tokens map to a
//! [`Grant`] (the user name and RBAC-like rules: verbs, resources,
//! namespaces); service-account tokens minted by the server (TokenRequest,
//! token Secrets) authenticate as `system:serviceaccount:{ns}:{name}`. A
//! request with no or an unknown token is `401 Unauthorized`. A request is
//! allowed when its static grant allows it or when the RBAC objects in the
//! store do (see the `rbac` module); otherwise it is `403 Forbidden` with the
//! message kube-apiserver's RBAC authorizer writes. [`Attributes`] is what
//! the authorizer looks at.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::Value;

use crate::registry::ResourceType;
use crate::status;

/// An API verb, as RBAC names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// Read one object.
    Get,
    /// Read a collection.
    List,
    /// Watch a collection or object.
    Watch,
    /// Create an object.
    Create,
    /// Replace an object.
    Update,
    /// Patch an object (including server-side apply).
    Patch,
    /// Delete an object.
    Delete,
}

impl Verb {
    /// The verbs that only read: get, list, watch.
    pub const READ: [Verb; 3] = [Verb::Get, Verb::List, Verb::Watch];

    /// The RBAC name (`get`, `list`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one token may do. `None` in a rule means "any".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The user name reported in 403 messages.
    pub user: String,
    /// Allowed verbs.
    pub verbs: Option<BTreeSet<Verb>>,
    /// Allowed resources by plural name (`services`, `endpointslices`).
    pub resources: Option<BTreeSet<String>>,
    /// Allowed namespaces; `None` also allows cluster-wide requests (lists
    /// and watches across all namespaces, cluster-scoped kinds).
    pub namespaces: Option<BTreeSet<String>>,
}

impl Grant {
    /// Everything (like `cluster-admin`).
    pub fn admin(user: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            verbs: None,
            resources: None,
            namespaces: None,
        }
    }

    /// get, list and watch on every resource in every namespace.
    pub fn read_only(user: impl Into<String>) -> Self {
        Self::admin(user).verbs(Verb::READ)
    }

    /// Authenticated, but allowed nothing (every API request is 403).
    pub fn nothing(user: impl Into<String>) -> Self {
        Self::admin(user).resources(std::iter::empty::<String>())
    }

    /// Restricts the verbs.
    pub fn verbs(mut self, verbs: impl IntoIterator<Item = Verb>) -> Self {
        self.verbs = Some(verbs.into_iter().collect());
        self
    }

    /// Restricts the resources (plural names).
    pub fn resources<S: Into<String>>(mut self, resources: impl IntoIterator<Item = S>) -> Self {
        self.resources = Some(resources.into_iter().map(Into::into).collect());
        self
    }

    /// Restricts the namespaces (and so forbids cluster-wide requests).
    pub fn namespaces<S: Into<String>>(mut self, namespaces: impl IntoIterator<Item = S>) -> Self {
        self.namespaces = Some(namespaces.into_iter().map(Into::into).collect());
        self
    }

    /// Whether this grant allows `verb` on `resource` in `namespace`
    /// (`None`: cluster-wide).
    pub fn allows(&self, verb: Verb, resource: &ResourceType, namespace: Option<&str>) -> bool {
        self.allows_resource(verb, resource.plural, namespace)
    }

    /// Like [`Grant::allows`], by the resource's RBAC name (a plural, or
    /// `plural/subresource` such as `serviceaccounts/token`).
    pub fn allows_resource(&self, verb: Verb, resource: &str, namespace: Option<&str>) -> bool {
        self.verbs.as_ref().is_none_or(|v| v.contains(&verb))
            && self.resources.as_ref().is_none_or(|r| r.contains(resource))
            && match (&self.namespaces, namespace) {
                (None, _) => true,
                (Some(allowed), Some(ns)) => allowed.contains(ns),
                (Some(_), None) => false,
            }
    }

    /// Whether this grant allows a request.
    pub fn allows_request(&self, attributes: &Attributes) -> bool {
        self.allows_resource(
            attributes.verb,
            &attributes.rbac_resource(),
            attributes.namespace.as_deref(),
        )
    }
}

/// What a request asks to do, as the authorizer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    /// The verb.
    pub verb: Verb,
    /// The API group ("" for core).
    pub api_group: String,
    /// The resource's plural name.
    pub resource: String,
    /// The subresource (`status`, `token`), if any.
    pub subresource: Option<String>,
    /// The namespace; `None` for cluster-scoped kinds and requests across
    /// all namespaces.
    pub namespace: Option<String>,
    /// The object's name (`None` for collections and creates).
    pub name: Option<String>,
}

impl Attributes {
    /// Parses `kubectl auth can-i` style resources: `services`,
    /// `deployments.apps`, `serviceaccounts/token`, `deployments.apps/status`.
    pub fn parse(verb: Verb, resource: &str, namespace: Option<&str>) -> Self {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r, Some(s.to_owned())),
            None => (resource, None),
        };
        let (resource, api_group) = resource.split_once('.').unwrap_or((resource, ""));
        Self {
            verb,
            api_group: api_group.to_owned(),
            resource: resource.to_owned(),
            subresource,
            namespace: namespace.map(str::to_owned),
            name: None,
        }
    }

    /// Names one object.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// `resource` or `resource/subresource`, as RBAC rules name it.
    pub fn rbac_resource(&self) -> String {
        match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.clone(),
        }
    }
}

/// Who made a request.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    /// The user name.
    pub(crate) user: String,
    /// The user's groups.
    pub(crate) groups: Vec<String>,
    /// The static grant (tokens given in the options), if any.
    pub(crate) grant: Option<Grant>,
}

impl Identity {
    /// The identity of a static token.
    pub(crate) fn of_grant(grant: Grant) -> Self {
        Self {
            user: grant.user.clone(),
            groups: vec!["system:authenticated".to_owned()],
            grant: Some(grant),
        }
    }

    /// The identity of a service account's token.
    pub(crate) fn of_service_account(namespace: &str, name: &str) -> Self {
        Self {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ],
            grant: None,
        }
    }
}

/// The 401 body.
pub(crate) fn unauthorized() -> Value {
    status::failure(401, "Unauthorized", "Unauthorized", None)
}

/// The 403 body, worded like the RBAC authorizer's.
pub(crate) fn forbidden(user: &str, attributes: &Attributes) -> Value {
    let qualified = if attributes.api_group.is_empty() {
        attributes.resource.clone()
    } else {
        format!("{}.{}", attributes.resource, attributes.api_group)
    };
    let name = attributes.name.as_deref();
    let subject = match name {
        Some(name) => format!("{qualified} \"{name}\""),
        None => qualified,
    };
    let scope = match &attributes.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_owned(),
    };
    let message = format!(
        "{subject} is forbidden: User \"{user}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
        attributes.verb,
        attributes.rbac_resource(),
        attributes.api_group
    );
    status::failure(
        403,
        "Forbidden",
        &message,
        Some(status::details(
            name,
            &attributes.api_group,
            &attributes.resource,
        )),
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    use super::*;

    #[test]
    fn grants_and_messages() {
        let rt = ResourceType::of::<EndpointSlice>();
        let g = Grant::read_only("alice").namespaces(["prod"]);
        assert!(g.allows(Verb::List, &rt, Some("prod")));
        assert!(!g.allows(Verb::List, &rt, Some("dev")));
        assert!(!g.allows(Verb::List, &rt, None));
        assert!(!g.allows(Verb::Delete, &rt, Some("prod")));
        assert!(!Grant::nothing("bob").allows(Verb::Get, &rt, Some("prod")));
        assert!(
            !Grant::admin("c")
                .resources(["services"])
                .allows(Verb::Get, &rt, Some("prod"))
        );
        let body = forbidden(
            "alice",
            &Attributes::parse(Verb::Watch, "endpointslices.discovery.k8s.io", None),
        );
        assert_eq!(
            body["message"],
            "endpointslices.discovery.k8s.io is forbidden: User \"alice\" cannot watch resource \
             \"endpointslices\" in API group \"discovery.k8s.io\" at the cluster scope"
        );
        assert_eq!(body["code"], 403);
        let body = forbidden(
            "bob",
            &Attributes::parse(Verb::Create, "serviceaccounts/token", Some("gns")).name("fed"),
        );
        assert_eq!(
            body["message"],
            "serviceaccounts \"fed\" is forbidden: User \"bob\" cannot create resource \
             \"serviceaccounts/token\" in API group \"\" in the namespace \"gns\""
        );
    }
}
