//! [`Services`]: the services of one zone, by name, as a persistent sorted
//! map (`imbl::OrdMap`). A snapshot that differs from the last in a few
//! services shares the rest of the map with it, so copying, comparing,
//! dropping and diffing two snapshots' zones cost what differs, not the
//! zone's size. On the wire it is a JSON list of services in name order (the
//! contract's shape); a list naming a service twice does not parse.

use std::fmt;
use std::sync::Arc;

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::snapshot::Service;

/// One zone's services by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Services(imbl::OrdMap<String, Arc<Service>>);

/// How a service differs between two [`Services`].
#[derive(Debug)]
pub enum Change<'a> {
    /// Only in the newer.
    Added(&'a Arc<Service>),
    /// In both, different.
    Changed(&'a Arc<Service>, &'a Arc<Service>),
    /// Only in the older.
    Removed(&'a Arc<Service>),
}

impl Services {
    /// Number of services.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The services in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.0.values()
    }

    /// The service named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Service>> {
        self.0.get(name)
    }

    /// The service named `name`, to change (`Arc::make_mut` it).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Arc<Service>> {
        self.0.get_mut(name)
    }

    /// Adds `service`, or replaces the one of its name; returns that one.
    pub fn insert(&mut self, service: Arc<Service>) -> Option<Arc<Service>> {
        self.0.insert(service.name.clone(), service)
    }

    /// Takes the service named `name` out.
    pub fn remove(&mut self, name: &str) -> Option<Arc<Service>> {
        self.0.remove(name)
    }

    /// Keeps only the services `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&Service) -> bool) {
        let gone: Vec<String> = self
            .0
            .iter()
            .filter(|(_, s)| !keep(s))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.0.remove(&name);
        }
    }

    /// What changed from `self` to `newer`, in name order. Parts of the two
    /// maps that are shared are skipped without being visited.
    pub fn diff<'a>(&'a self, newer: &'a Services) -> impl Iterator<Item = Change<'a>> {
        self.0.diff(&newer.0).filter_map(|item| match item {
            imbl::ordmap::DiffItem::Add(_, s) => Some(Change::Added(s)),
            imbl::ordmap::DiffItem::Update {
                old: (_, a),
                new: (_, b),
            } => (!Arc::ptr_eq(a, b) && a != b).then_some(Change::Changed(a, b)),
            imbl::ordmap::DiffItem::Remove(_, s) => Some(Change::Removed(s)),
        })
    }
}

impl FromIterator<Arc<Service>> for Services {
    /// The services; of two with one name, the later.
    fn from_iter<I: IntoIterator<Item = Arc<Service>>>(iter: I) -> Self {
        Self(iter.into_iter().map(|s| (s.name.clone(), s)).collect())
    }
}

impl From<Vec<Arc<Service>>> for Services {
    fn from(list: Vec<Arc<Service>>) -> Self {
        list.into_iter().collect()
    }
}

impl Serialize for Services {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for service in self.iter() {
            seq.serialize_element(service.as_ref())?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Services {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Services;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of services")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Services, A::Error> {
                let mut out = Services::default();
                while let Some(service) = seq.next_element::<Service>()? {
                    let name = service.name.clone();
                    if out.insert(Arc::new(service)).is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "service {name} appears twice"
                        )));
                    }
                }
                Ok(out)
            }
        }
        deserializer.deserialize_seq(List)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, address: &str) -> Arc<Service> {
        Arc::new(Service {
            name: name.into(),
            ports: Vec::new(),
            external: vec![address.parse().expect("ip")],
            views: Default::default(),
            txt: Vec::new(),
        })
    }

    #[test]
    fn a_list_in_name_order_on_the_wire_and_a_twice_named_service_refused() {
        let services: Services =
            vec![service("web", "192.0.2.1"), service("api", "192.0.2.2")].into();
        let json = serde_json::to_value(&services).expect("encode");
        assert_eq!(json[0]["name"], "api");
        assert_eq!(json[1]["name"], "web");
        let back: Services = serde_json::from_value(json.clone()).expect("decode");
        assert_eq!(back, services);
        let twice = serde_json::json!([json[0], json[0]]);
        let err = serde_json::from_value::<Services>(twice).expect_err("twice");
        assert!(
            err.to_string().contains("service api appears twice"),
            "{err}"
        );
    }

    #[test]
    fn a_diff_names_only_what_differs() {
        let old: Services = (0..5000)
            .map(|i| service(&format!("s{i:04}"), "192.0.2.1"))
            .collect();
        let mut new = old.clone();
        new.insert(service("s0007", "192.0.2.7"));
        new.remove("s0009");
        new.insert(service("s9999", "192.0.2.9"));
        // Equal content in a new allocation is no change.
        new.insert(service("s0011", "192.0.2.1"));
        let changes: Vec<String> = old
            .diff(&new)
            .map(|c| match c {
                Change::Added(s) => format!("+{}", s.name),
                Change::Changed(_, s) => format!("~{}", s.name),
                Change::Removed(s) => format!("-{}", s.name),
            })
            .collect();
        assert_eq!(changes, ["~s0007", "-s0009", "+s9999"]);
        assert!(old.diff(&old).next().is_none());
    }
}
