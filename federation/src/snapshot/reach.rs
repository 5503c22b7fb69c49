//! Which endpoints each destination of a routing reaches, from the gateway
//! config a snapshot compiled (pure): shown on the routing object's status,
//! so a destination whose `subset`, `tags` or `cluster` selects no ready
//! endpoint is visible instead of silently falling back.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::Routing;

/// A subset's key in the gateway config: its selector, `k=v` by key,
/// comma-separated; `None` for no selector (every endpoint).
pub fn subset_key(selector: &BTreeMap<String, String>) -> Option<String> {
    (!selector.is_empty()).then(|| {
        selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// What one destination of a routing reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationReach {
    /// Index of the rule, as written.
    pub rule: usize,
    /// Index of the destination in the rule.
    pub destination: usize,
    /// Ready endpoints it selects, over every cluster it may go to.
    pub ready_endpoints: usize,
}

impl DestinationReach {
    /// The status line of a destination that reaches nothing.
    pub fn unmatched(&self) -> String {
        format!(
            "rules[{}].destinations[{}] selects no ready endpoint",
            self.rule, self.destination
        )
    }
}

/// What every destination of `routing` reaches in `service` (its compiled
/// gateway config).
pub fn reach(
    routing: &Routing,
    service: &gns_contract::config::ServiceConfig,
) -> Vec<DestinationReach> {
    let mut out = Vec::new();
    for (i, rule) in routing.rules.iter().enumerate() {
        for (j, d) in rule.destinations.iter().enumerate() {
            let by_cluster = match subset_key(&d.selector()) {
                Some(key) => service.subsets.get(&key),
                None => Some(&service.endpoints),
            };
            let ready_endpoints = by_cluster
                .into_iter()
                .flatten()
                .filter(|(c, _)| d.cluster.as_ref().is_none_or(|want| want.as_str() == *c))
                .map(|(_, addresses)| addresses.len())
                .sum();
            out.push(DestinationReach {
                rule: i,
                destination: j,
                ready_endpoints,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_selecting_nothing_reaches_zero() {
        let routing: Routing = serde_json::from_value(serde_json::json!({"rules": [
            {"destinations": [
                {"cluster": "west", "subset": "v1", "weight": 98},
                {"tags": {"version": "v1"}, "weight": 1},
                {"cluster": "west", "subset": "v9", "weight": 1}]},
            {"destinations": [{"cluster": "east", "weight": 100}]}]}))
        .expect("routing");
        let ip = |s: &str| s.parse().expect("ip");
        let service = gns_contract::config::ServiceConfig {
            endpoints: [
                ("east".to_owned(), vec![ip("10.8.0.1"), ip("10.8.0.2")]),
                ("west".to_owned(), vec![ip("10.9.0.1")]),
            ]
            .into_iter()
            .collect(),
            subsets: BTreeMap::from([(
                "version=v1".to_owned(),
                [
                    ("east".to_owned(), vec![ip("10.8.0.1")]),
                    ("west".to_owned(), vec![ip("10.9.0.1")]),
                ]
                .into_iter()
                .collect(),
            )]),
            ..Default::default()
        };
        let counts: Vec<usize> = reach(&routing, &service)
            .iter()
            .map(|r| r.ready_endpoints)
            .collect();
        assert_eq!(counts, [1, 2, 0, 2]);
        assert_eq!(
            reach(&routing, &service)[2].unmatched(),
            "rules[0].destinations[2] selects no ready endpoint"
        );
    }
}
