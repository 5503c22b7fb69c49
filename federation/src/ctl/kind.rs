//! The kinds `gnsctl` knows: how users may spell them (case-insensitive,
//! singular or plural, aliases such as `gns`), where their objects live in the
//! REST API, and how an object is named in gnsctl's output (`kind/name`, or
//! `kind/gns/name` inside a global namespace, as the server names referrers).

use std::fmt;
use std::str::FromStr;

use super::CtlError;

/// A kind as seen by `gnsctl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CtlKind {
    /// A member cluster (`/v1/clusters`).
    Cluster,
    /// A global namespace (`/v1/global-namespaces`).
    GlobalNamespace,
    /// A discovered service (read-only catalog).
    Service,
    /// Routing of one service.
    Routing,
    /// A VM / bare-metal workload.
    ExternalWorkload,
    /// An access policy.
    AccessPolicy,
}

impl CtlKind {
    /// Every kind.
    pub const ALL: [CtlKind; 6] = [
        CtlKind::Cluster,
        CtlKind::GlobalNamespace,
        CtlKind::Service,
        CtlKind::Routing,
        CtlKind::ExternalWorkload,
        CtlKind::AccessPolicy,
    ];

    /// Canonical singular name, as used in output (`cluster/east`).
    pub fn as_str(self) -> &'static str {
        match self {
            CtlKind::Cluster => "cluster",
            CtlKind::GlobalNamespace => "globalnamespace",
            CtlKind::Service => "service",
            CtlKind::Routing => "routing",
            CtlKind::ExternalWorkload => "externalworkload",
            CtlKind::AccessPolicy => "accesspolicy",
        }
    }

    /// Plural in words, for messages ("no external workloads found").
    pub fn plural_words(self) -> &'static str {
        match self {
            CtlKind::Cluster => "clusters",
            CtlKind::GlobalNamespace => "global namespaces",
            CtlKind::Service => "services",
            CtlKind::Routing => "routing objects",
            CtlKind::ExternalWorkload => "external workloads",
            CtlKind::AccessPolicy => "access policies",
        }
    }

    /// Parses a kind: case-insensitive, `-`/`_` ignored, plural forms and aliases accepted.
    pub fn parse(text: &str) -> Result<CtlKind, CtlError> {
        let folded: String = text
            .trim()
            .chars()
            .filter(|c| !matches!(c, '-' | '_'))
            .flat_map(char::to_lowercase)
            .collect();
        let kind = match folded.as_str() {
            "cluster" | "clusters" => CtlKind::Cluster,
            "globalnamespace" | "globalnamespaces" | "gns" => CtlKind::GlobalNamespace,
            "service" | "services" | "svc" => CtlKind::Service,
            "routing" | "routings" => CtlKind::Routing,
            "externalworkload" | "externalworkloads" => CtlKind::ExternalWorkload,
            "accesspolicy" | "accesspolicies" => CtlKind::AccessPolicy,
            _ => return Err(CtlError::UnknownKind(text.to_owned())),
        };
        Ok(kind)
    }

    /// True for kinds that live inside a global namespace.
    pub fn is_scoped(self) -> bool {
        !matches!(self, CtlKind::Cluster | CtlKind::GlobalNamespace)
    }

    /// The body field that names an object (`service` for routing, else `name`).
    pub fn name_field(self) -> &'static str {
        match self {
            CtlKind::Routing => "service",
            _ => "name",
        }
    }

    /// Order in which `apply` writes kinds: what others refer to comes first.
    pub fn apply_rank(self) -> u8 {
        match self {
            CtlKind::Cluster => 0,
            CtlKind::GlobalNamespace => 1,
            _ => 2,
        }
    }

    fn gns_of(self, gns: Option<&str>) -> Result<Option<String>, CtlError> {
        if !self.is_scoped() {
            return Ok(None);
        }
        match gns {
            Some(g) if !g.is_empty() => Ok(Some(g.to_owned())),
            _ => Err(CtlError::NeedGns {
                kind: self.as_str(),
            }),
        }
    }

    /// Path segments of the collection (what a list GETs and a create POSTs to).
    pub fn collection_path(self, gns: Option<&str>) -> Result<Vec<String>, CtlError> {
        let mut path = vec!["v1".to_owned()];
        match self.gns_of(gns)? {
            None => path.push(match self {
                CtlKind::Cluster => "clusters".to_owned(),
                _ => "global-namespaces".to_owned(),
            }),
            Some(g) => {
                path.extend(["global-namespaces".to_owned(), g]);
                path.push(
                    match self {
                        CtlKind::Service => "services",
                        CtlKind::Routing => "routing",
                        CtlKind::ExternalWorkload => "external-workloads",
                        _ => "access-policies",
                    }
                    .to_owned(),
                );
            }
        }
        Ok(path)
    }

    /// Path segments of one object.
    pub fn object_path(self, gns: Option<&str>, name: &str) -> Result<Vec<String>, CtlError> {
        if self == CtlKind::Routing {
            // Routing lives under its service: …/services/{svc}/routing.
            let mut path = CtlKind::Service.collection_path(gns)?;
            path.extend([name.to_owned(), "routing".to_owned()]);
            return Ok(path);
        }
        let mut path = self.collection_path(gns)?;
        path.push(name.to_owned());
        Ok(path)
    }

    /// How output names one object: `cluster/east`, `routing/production/web`.
    pub fn display(self, gns: Option<&str>, name: &str) -> String {
        match gns.filter(|_| self.is_scoped()) {
            Some(g) => format!("{}/{g}/{name}", self.as_str()),
            None => format!("{}/{name}", self.as_str()),
        }
    }
}

impl fmt::Display for CtlKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CtlKind {
    type Err = CtlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CtlKind::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_are_accepted() {
        for (text, kind) in [
            ("cluster", CtlKind::Cluster),
            ("Clusters", CtlKind::Cluster),
            ("gns", CtlKind::GlobalNamespace),
            ("GlobalNamespace", CtlKind::GlobalNamespace),
            ("global-namespaces", CtlKind::GlobalNamespace),
            ("svc", CtlKind::Service),
            ("services", CtlKind::Service),
            ("Routing", CtlKind::Routing),
            ("routings", CtlKind::Routing),
            ("ExternalWorkload", CtlKind::ExternalWorkload),
            ("external-workloads", CtlKind::ExternalWorkload),
            ("AccessPolicy", CtlKind::AccessPolicy),
            ("accesspolicies", CtlKind::AccessPolicy),
        ] {
            assert_eq!(CtlKind::parse(text).ok(), Some(kind), "{text}");
        }
        assert!(matches!(
            CtlKind::parse("deployment"),
            Err(CtlError::UnknownKind(_))
        ));
        for kind in CtlKind::ALL {
            assert_eq!(CtlKind::parse(kind.as_str()).ok(), Some(kind));
        }
    }

    #[test]
    fn paths_follow_the_rest_api() {
        let p = |k: CtlKind, gns: Option<&str>, name: Option<&str>| {
            match name {
                Some(n) => k.object_path(gns, n),
                None => k.collection_path(gns),
            }
            .map(|segments| segments.join("/"))
            .ok()
        };
        let g = Some("production");
        assert_eq!(
            p(CtlKind::Cluster, None, Some("east")).as_deref(),
            Some("v1/clusters/east")
        );
        assert_eq!(
            p(CtlKind::GlobalNamespace, None, None).as_deref(),
            Some("v1/global-namespaces")
        );
        assert_eq!(
            p(CtlKind::Routing, g, None).as_deref(),
            Some("v1/global-namespaces/production/routing")
        );
        assert_eq!(
            p(CtlKind::Routing, g, Some("web")).as_deref(),
            Some("v1/global-namespaces/production/services/web/routing")
        );
        assert_eq!(
            p(CtlKind::Service, g, Some("web")).as_deref(),
            Some("v1/global-namespaces/production/services/web")
        );
        assert_eq!(
            p(CtlKind::ExternalWorkload, g, None).as_deref(),
            Some("v1/global-namespaces/production/external-workloads")
        );
        assert_eq!(
            p(CtlKind::AccessPolicy, g, Some("a")).as_deref(),
            Some("v1/global-namespaces/production/access-policies/a")
        );
        assert!(matches!(
            CtlKind::AccessPolicy.collection_path(None),
            Err(CtlError::NeedGns { .. })
        ));
    }

    #[test]
    fn display_names() {
        assert_eq!(
            CtlKind::Cluster.display(Some("ignored"), "east"),
            "cluster/east"
        );
        assert_eq!(
            CtlKind::Routing.display(Some("production"), "web"),
            "routing/production/web"
        );
    }
}
