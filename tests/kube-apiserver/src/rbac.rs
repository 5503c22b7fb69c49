//! The RBAC authorizer: decides from the `Role`, `ClusterRole`,
//! `RoleBinding` and `ClusterRoleBinding` objects in the store, as
//! kube-apiserver's does. A `ClusterRoleBinding` grants its `ClusterRole`'s
//! rules everywhere; a `RoleBinding` grants its `Role`'s (or a referenced
//! `ClusterRole`'s) rules in its own namespace only. Rules match by
//! `apiGroups`, `resources` (`plural`, `plural/subresource`, `*`,
//! `*/subresource`), `verbs` and `resourceNames`, with `*` wildcards.
//! Subjects are `User`, `Group` and `ServiceAccount`. Aggregated cluster
//! roles and non-resource URLs are not modelled.

use serde_json::Value;

use crate::auth::Attributes;
use crate::registry::Registry;
use crate::store::Store;

const RBAC: &str = "rbac.authorization.k8s.io/v1";

/// Whether the RBAC objects in the store allow `user` (in `groups`) to do
/// what `attributes` asks.
pub(crate) fn allows(
    registry: &Registry,
    store: &Store,
    user: &str,
    groups: &[String],
    attributes: &Attributes,
) -> bool {
    let objects = |kind: &str| {
        registry
            .by_kind(RBAC, kind)
            .map(|i| store.all(i))
            .unwrap_or_default()
    };
    let role = |kind: &str, namespace: &str, name: &str| {
        registry
            .by_kind(RBAC, kind)
            .and_then(|i| store.get(i, namespace, name))
    };
    let bound = |binding: &Value| {
        binding
            .get("subjects")
            .and_then(Value::as_array)
            .is_some_and(|subjects| subjects.iter().any(|s| subject_matches(s, user, groups)))
    };
    let granted = |role: Option<std::sync::Arc<Value>>| {
        role.is_some_and(|r| {
            r.get("rules")
                .and_then(Value::as_array)
                .is_some_and(|rules| rules.iter().any(|rule| rule_matches(rule, attributes)))
        })
    };
    let role_ref = |binding: &Value| {
        let text = |f: &str| {
            binding
                .pointer(&format!("/roleRef/{f}"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        (text("kind"), text("name"))
    };
    for binding in objects("ClusterRoleBinding") {
        let (kind, name) = role_ref(&binding);
        if kind == "ClusterRole" && bound(&binding) && granted(role("ClusterRole", "", &name)) {
            return true;
        }
    }
    let Some(namespace) = attributes.namespace.as_deref() else {
        return false;
    };
    for binding in objects("RoleBinding") {
        if binding
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            != Some(namespace)
            || !bound(&binding)
        {
            continue;
        }
        let (kind, name) = role_ref(&binding);
        let rules = match kind.as_str() {
            "Role" => role("Role", namespace, &name),
            "ClusterRole" => role("ClusterRole", "", &name),
            _ => None,
        };
        if granted(rules) {
            return true;
        }
    }
    false
}

fn subject_matches(subject: &Value, user: &str, groups: &[String]) -> bool {
    let field = |f: &str| subject.get(f).and_then(Value::as_str).unwrap_or("");
    match field("kind") {
        "User" => field("name") == user,
        "Group" => groups.iter().any(|g| g == field("name")),
        "ServiceAccount" => {
            user == format!(
                "system:serviceaccount:{}:{}",
                field("namespace"),
                field("name")
            )
        }
        _ => false,
    }
}

fn strings<'a>(rule: &'a Value, field: &str) -> Vec<&'a str> {
    rule.get(field)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether one policy rule covers a request.
pub(crate) fn rule_matches(rule: &Value, attributes: &Attributes) -> bool {
    let verbs = strings(rule, "verbs");
    let groups = strings(rule, "apiGroups");
    let resources = strings(rule, "resources");
    let names = strings(rule, "resourceNames");
    let resource_matches = |r: &str| match (&attributes.subresource, r) {
        (_, "*") => true,
        (None, r) => r == attributes.resource,
        (Some(sub), r) => r == format!("{}/{sub}", attributes.resource) || r == format!("*/{sub}"),
    };
    verbs
        .iter()
        .any(|v| *v == "*" || *v == attributes.verb.as_str())
        && groups
            .iter()
            .any(|g| *g == "*" || *g == attributes.api_group)
        && resources.iter().any(|r| resource_matches(r))
        && (names.is_empty()
            || attributes
                .name
                .as_deref()
                .is_some_and(|n| names.contains(&n)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::auth::Verb;

    #[test]
    fn rules() {
        let rule = json!({"apiGroups": [""], "resources": ["services", "serviceaccounts/token"], "verbs": ["get", "create"]});
        let a = |verb, resource: &str| Attributes::parse(verb, resource, Some("ns"));
        assert!(rule_matches(&rule, &a(Verb::Get, "services")));
        assert!(!rule_matches(&rule, &a(Verb::List, "services")));
        assert!(!rule_matches(&rule, &a(Verb::Get, "services/status")));
        assert!(rule_matches(
            &rule,
            &a(Verb::Create, "serviceaccounts/token")
        ));
        assert!(!rule_matches(&rule, &a(Verb::Create, "serviceaccounts")));
        assert!(!rule_matches(&rule, &a(Verb::Get, "deployments.apps")));
        let star = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]});
        assert!(rule_matches(
            &star,
            &a(Verb::Delete, "deployments.apps/status")
        ));
        let named = json!({"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["patch"], "resourceNames": ["gw"]});
        assert!(rule_matches(
            &named,
            &a(Verb::Patch, "deployments.apps").name("gw")
        ));
        assert!(!rule_matches(
            &named,
            &a(Verb::Patch, "deployments.apps").name("x")
        ));
        assert!(!rule_matches(&named, &a(Verb::Patch, "deployments.apps")));
    }
}
