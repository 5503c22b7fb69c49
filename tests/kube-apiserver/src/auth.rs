//! Authentication and authorization: bearer tokens map to a [`Grant`] (the
//! user name and RBAC-like rules: verbs, resources, namespaces); a request
//! with no or an unknown token is `401 Unauthorized`, one outside its grant is
//! `403 Forbidden` with the message kube-apiserver's RBAC authorizer writes.

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
        self.verbs.as_ref().is_none_or(|v| v.contains(&verb))
            && self
                .resources
                .as_ref()
                .is_none_or(|r| r.contains(resource.plural))
            && match (&self.namespaces, namespace) {
                (None, _) => true,
                (Some(allowed), Some(ns)) => allowed.contains(ns),
                (Some(_), None) => false,
            }
    }
}

/// The 401 body.
pub(crate) fn unauthorized() -> Value {
    status::failure(401, "Unauthorized", "Unauthorized", None)
}

/// The 403 body, worded like the RBAC authorizer's.
pub(crate) fn forbidden(
    user: &str,
    verb: Verb,
    rt: &ResourceType,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Value {
    let subject = match name {
        Some(name) => format!("{} \"{name}\"", rt.qualified_plural()),
        None => rt.qualified_plural(),
    };
    let scope = match namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_owned(),
    };
    let message = format!(
        "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
        rt.plural, rt.group
    );
    status::failure(
        403,
        "Forbidden",
        &message,
        Some(status::details(name, rt.group, rt.plural)),
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
        let body = forbidden("alice", Verb::Watch, &rt, None, None);
        assert_eq!(
            body["message"],
            "endpointslices.discovery.k8s.io is forbidden: User \"alice\" cannot watch resource \
             \"endpointslices\" in API group \"discovery.k8s.io\" at the cluster scope"
        );
        assert_eq!(body["code"], 403);
    }
}
