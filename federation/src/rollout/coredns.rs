//! `gatewayDeployment.manageCoreDNS`: the forwarding server blocks of the
//! GNS domains merged into the cluster's own CoreDNS configuration
//! (ConfigMap `kube-system/coredns`, key `Corefile`), between marker lines
//! that say who owns them. Only that section is ever written: a server block
//! for a GNS domain someone else wrote is a conflict, reported and left
//! alone. [`merge`] is pure; [`sync`] reads and writes the ConfigMap with the
//! read's `resourceVersion` as a precondition. [`Following`] keeps a
//! rollout's last problem here (shown on its status, tried again every
//! 10 s) apart from the gateway, which is followed all the same.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::Rollout;

/// Where CoreDNS's configuration lives.
pub const NAMESPACE: &str = "kube-system";
/// Its ConfigMap.
pub const CONFIG_MAP: &str = "coredns";
/// The key of the Corefile in it.
const COREFILE: &str = "Corefile";
/// First line of the section the federation owns.
const BEGIN: &str = "# BEGIN gns-federation: forwarding of the GNS domains (managed, do not edit)";
/// Last line of it.
const END: &str = "# END gns-federation";

/// Why the Corefile could not be brought up to date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorednsError {
    /// A server block for a GNS domain exists outside the managed section.
    #[error(
        "CoreDNS already has a server block for {0} that gns-federation does not manage; remove it or turn manageCoreDNS off"
    )]
    Conflict(String),
    /// The managed section's markers are broken (a BEGIN without END).
    #[error("the gns-federation section of the Corefile is not closed ({END} missing)")]
    Unclosed,
    /// The ConfigMap is missing or unreadable, or the write failed.
    #[error("CoreDNS ConfigMap {NAMESPACE}/{CONFIG_MAP}: {0}")]
    Kube(String),
}

/// The Corefile without the managed section, and whether it had one.
fn without_section(corefile: &str) -> Result<(String, bool), CorednsError> {
    let mut out = String::with_capacity(corefile.len());
    let mut inside = false;
    let mut had = false;
    for line in corefile.lines() {
        match line.trim() {
            l if l == BEGIN => {
                inside = true;
                had = true;
            }
            l if l == END && inside => inside = false,
            _ if inside => {}
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if inside {
        return Err(CorednsError::Unclosed);
    }
    Ok((out, had))
}

/// Whether `corefile` opens a server block for `domain` (`domain {`,
/// `domain:53 {`, `domain.:53 {`, or among several zones of one block).
fn has_block_for(corefile: &str, domain: &str) -> bool {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    corefile.lines().any(|line| {
        let line = line.trim();
        let Some(head) = line.strip_suffix('{') else {
            return false;
        };
        head.split_whitespace().any(|zone| {
            let zone = zone.trim_start_matches("dns://").to_ascii_lowercase();
            let host = zone.split(':').next().unwrap_or_default();
            host.trim_end_matches('.') == domain
        })
    })
}

/// The Corefile with `blocks` (the server blocks for `domains`) as its
/// managed section, replacing the one before; `None` when that changes
/// nothing. With no blocks the section is removed.
pub fn merge(
    corefile: &str,
    domains: &[String],
    blocks: &str,
) -> Result<Option<String>, CorednsError> {
    let (rest, had) = without_section(corefile)?;
    if !had && blocks.trim().is_empty() {
        // Nothing of ours there and nothing to add: not touched at all.
        return Ok(None);
    }
    if let Some(taken) = domains.iter().find(|d| has_block_for(&rest, d)) {
        return Err(CorednsError::Conflict(taken.clone()));
    }
    let mut merged = rest.trim_end().to_owned();
    merged.push('\n');
    if !blocks.trim().is_empty() {
        merged.push_str(&format!("{BEGIN}\n{}\n{END}\n", blocks.trim_end()));
    }
    Ok((merged != corefile).then_some(merged))
}

/// Brings the cluster's Corefile to hold exactly `blocks` in its managed
/// section (none: no section). True when it was written.
pub async fn sync(
    client: &kube::Client,
    domains: &[String],
    blocks: &str,
) -> Result<bool, CorednsError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let current = api
        .get_opt(CONFIG_MAP)
        .await
        .map_err(|e| CorednsError::Kube(e.to_string()))?
        .ok_or_else(|| CorednsError::Kube("not found".into()))?;
    let corefile = current
        .data
        .as_ref()
        .and_then(|d| d.get(COREFILE))
        .cloned()
        .unwrap_or_default();
    let Some(merged) = merge(&corefile, domains, blocks)? else {
        return Ok(false);
    };
    // Written only over the version read: an edit in between fails the
    // write (409) instead of being lost, and the next round merges again.
    let patch = json!({
        "metadata": {"resourceVersion": current.metadata.resource_version},
        "data": {COREFILE: merged},
    });
    api.patch(CONFIG_MAP, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| CorednsError::Kube(e.to_string()))?;
    Ok(true)
}

/// With `manageCoreDNS`, merges the forwarding blocks into the cluster's
/// CoreDNS configuration; without, removes a section left from before (if
/// it can: that failing is no problem of the rollout's). Apart from the
/// gateway's objects: a conflict here is reported, not a reason to stop
/// following the gateway.
async fn sync_for(rollout: &Rollout) -> Result<(), CorednsError> {
    let domains = &rollout.params.domains;
    if rollout.params.spec.manage_core_dns {
        let blocks = super::dns_forwarding(domains, &rollout.params.dns_address);
        if sync(&rollout.client, domains, &blocks).await? {
            tracing::info!(
                cluster = rollout.params.cluster,
                "CoreDNS forwards the GNS domains"
            );
        }
    } else if let Err(e) = sync(&rollout.client, &[], "").await {
        tracing::debug!(cluster = rollout.params.cluster, error = %e, "CoreDNS not cleaned up");
    }
    Ok(())
}

/// How often a CoreDNS configuration that could not take the forwarding
/// blocks is tried again.
const COREDNS_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// A rollout's CoreDNS sync, followed: its last problem, if it had one,
/// and when it was tried.
pub(super) struct Following {
    pub(super) problem: Option<CorednsError>,
    at: tokio::time::Instant,
}

impl Following {
    /// Syncs CoreDNS once; `previous` is the last sync's problem (logged
    /// again only if this one differs).
    pub(super) async fn tried(rollout: &Rollout, previous: Option<&CorednsError>) -> Self {
        let state = Self {
            problem: sync_for(rollout).await.err(),
            at: tokio::time::Instant::now(),
        };
        state.log(rollout, previous);
        state
    }

    /// Syncs again if the last sync had a problem and [`COREDNS_RETRY`] passed.
    pub(super) async fn retry_when_due(&mut self, rollout: &Rollout) {
        if self.problem.is_some() && self.at.elapsed() >= COREDNS_RETRY {
            let previous = self.problem.take();
            self.problem = sync_for(rollout).await.err();
            self.at = tokio::time::Instant::now();
            self.log(rollout, previous.as_ref());
        }
    }

    /// Logs a problem once (not on every retry that finds it again), and
    /// its end.
    fn log(&self, rollout: &Rollout, previous: Option<&CorednsError>) {
        match (&self.problem, previous) {
            (Some(e), previous) if previous != Some(e) => {
                tracing::warn!(cluster = rollout.params.cluster, error = %e, "CoreDNS not configured");
            }
            (None, Some(_)) => {
                tracing::info!(cluster = rollout.params.cluster, "CoreDNS problem resolved");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEADM: &str = ".:53 {\n    errors\n    kubernetes cluster.local in-addr.arpa ip6.arpa\n    forward . /etc/resolv.conf\n    cache 30\n}\n";
    const BLOCKS: &str =
        "production.app.acme.com:53 {\n    forward . 10.0.0.53:53\n    cache 5\n}\n";

    fn domains() -> Vec<String> {
        vec!["production.app.acme.com".to_owned()]
    }

    #[test]
    fn the_section_is_added_once_and_replaced_in_place() {
        let merged = merge(KUBEADM, &domains(), BLOCKS)
            .expect("merges")
            .expect("changed");
        assert!(merged.starts_with(KUBEADM), "the rest is kept: {merged}");
        assert!(merged.contains(BEGIN) && merged.contains("forward . 10.0.0.53:53"));
        assert_eq!(
            merge(&merged, &domains(), BLOCKS).expect("merges"),
            None,
            "nothing changes the second time"
        );
        let moved = BLOCKS.replace("10.0.0.53", "10.0.0.54");
        let again = merge(&merged, &domains(), &moved)
            .expect("merges")
            .expect("changed");
        assert_eq!(again.matches(BEGIN).count(), 1);
        assert!(again.contains("10.0.0.54") && !again.contains("10.0.0.53"));
        // No blocks: the section goes, the rest stays.
        let removed = merge(&again, &[], "").expect("merges").expect("changed");
        assert_eq!(removed, KUBEADM);
        // Nothing of ours and nothing to add: untouched, whatever its layout.
        let theirs = format!("{KUBEADM}\n\n");
        assert_eq!(merge(&theirs, &[], ""), Ok(None));
    }

    #[test]
    fn a_block_someone_else_wrote_for_a_gns_domain_is_a_conflict() {
        for theirs in [
            "production.app.acme.com:53 {\n    forward . 8.8.8.8\n}\n",
            "production.app.acme.com. {\n    forward . 8.8.8.8\n}\n",
            "example.org PRODUCTION.app.acme.com:53 {\n    forward . 8.8.8.8\n}\n",
        ] {
            let corefile = format!("{KUBEADM}{theirs}");
            assert_eq!(
                merge(&corefile, &domains(), BLOCKS),
                Err(CorednsError::Conflict("production.app.acme.com".into())),
                "{theirs}"
            );
        }
        // Another domain is not ours to judge.
        let other = format!("{KUBEADM}staging.app.acme.com:53 {{\n    forward . 8.8.8.8\n}}\n");
        assert!(merge(&other, &domains(), BLOCKS).is_ok());
        let unclosed = format!("{KUBEADM}{BEGIN}\n{BLOCKS}");
        assert_eq!(
            merge(&unclosed, &domains(), BLOCKS),
            Err(CorednsError::Unclosed)
        );
    }
}
