//! A member cluster's stored status, typed. It holds only effective state,
//! each field changed by a transition: the sync phase and since when the
//! API is unreachable (discovery), the withdrawal of its endpoints (the
//! snapshot builder), whether its gateways all went silent (the liveness
//! sweeper), and the deployed gateway (the rollout, through discovery).
//! What changes with every report (last sync, counts, gateway instances)
//! is a liveness fact, overlaid when shown.
//!
//! Read with [`ClusterStatus::of`]; changed only as a [`ClusterChange`],
//! whose [`ClusterChange::patch`] is merged into the stored status by the
//! one writer, `crate::liveness::cluster::record`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Where discovery stands with a cluster's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterPhase {
    /// Registered, not synced yet.
    Pending,
    /// Connecting: not synced yet.
    Connecting,
    /// Every watch is healthy.
    Connected,
    /// Some watches fail.
    Degraded,
    /// No watch works; the last known endpoints are kept (stale).
    Unreachable,
}

impl ClusterPhase {
    /// The status value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterPhase::Pending => "Pending",
            ClusterPhase::Connecting => "Connecting",
            ClusterPhase::Connected => "Connected",
            ClusterPhase::Degraded => "Degraded",
            ClusterPhase::Unreachable => "Unreachable",
        }
    }
}

/// A cluster's stored status (the fields this crate reads).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The sync phase.
    #[serde(default)]
    pub phase: Option<ClusterPhase>,
    /// Since when the API is unreachable (Unix ms), while it is.
    #[serde(default)]
    pub unreachable_since_millis: Option<i64>,
    /// When its endpoints were withdrawn (Unix ms), while unreachable.
    #[serde(default)]
    pub withdrawn_at_millis: Option<i64>,
    /// Since when every gateway instance is silent (Unix ms), while they are.
    #[serde(default)]
    pub gateways_silent_since_millis: Option<i64>,
    /// The deployed gateway as the rollout reads it back.
    #[serde(default)]
    pub gateway: Option<Value>,
}

impl ClusterStatus {
    /// The typed view of a stored status; a field that does not read as
    /// its type is taken as absent.
    pub fn of(status: &Value) -> ClusterStatus {
        if let Ok(typed) = serde_json::from_value::<ClusterStatus>(status.clone()) {
            return typed;
        }
        let field = |name: &str| status.get(name).and_then(Value::as_i64);
        ClusterStatus {
            phase: status
                .get("phase")
                .and_then(|p| serde_json::from_value(p.clone()).ok()),
            unreachable_since_millis: field("unreachableSinceMillis"),
            withdrawn_at_millis: field("withdrawnAtMillis"),
            gateways_silent_since_millis: field("gatewaysSilentSinceMillis"),
            gateway: status.get("gateway").filter(|g| g.is_object()).cloned(),
        }
    }

    /// Whether its API is unreachable now.
    pub fn unreachable(&self) -> bool {
        self.phase == Some(ClusterPhase::Unreachable)
    }

    /// Whether the withdrawal of its endpoints is recorded for the current
    /// outage.
    pub fn withdrawn(&self) -> bool {
        self.unreachable()
            && matches!(
                (self.unreachable_since_millis, self.withdrawn_at_millis),
                (Some(since), Some(at)) if at >= since
            )
    }

    /// Whether every gateway instance of the cluster is recorded silent.
    pub fn gateways_silent(&self) -> bool {
        self.gateways_silent_since_millis.is_some()
    }
}

/// A transition of a cluster's effective state: the only way its stored
/// status changes.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterChange {
    /// What discovery saw: the phase (with the message that explains it),
    /// since when the API is unreachable, the deployed gateway.
    Sync {
        /// The phase.
        phase: ClusterPhase,
        /// Why.
        message: String,
        /// Since when unreachable, if it is.
        unreachable_since_millis: Option<i64>,
        /// The deployed gateway (`None`: none deployed or not read).
        gateway: Option<Value>,
    },
    /// The cluster could not be synced at all (credentials that make no
    /// client): unreachable from `at_millis`, so its stale endpoints are
    /// withdrawn by its policy.
    Failed {
        /// Why.
        message: String,
        /// When (Unix ms).
        at_millis: i64,
    },
    /// Its endpoints were withdrawn at this time (unreachable for longer
    /// than its stale-endpoint policy allows).
    Withdrawn {
        /// When (Unix ms).
        at_millis: i64,
    },
    /// Every gateway instance went silent.
    GatewaysSilent {
        /// Since when (Unix ms): the last report plus the timeout.
        since_millis: i64,
    },
    /// A gateway instance reported again.
    GatewaysBack,
}

/// The status a cluster is registered with: pending its first sync.
pub fn registered_status() -> Value {
    json!({"phase": ClusterPhase::Pending.as_str(), "lastSync": null, "message": "waiting for discovery sync"})
}

impl ClusterChange {
    /// The audit action naming the transition.
    pub fn action(&self) -> &'static str {
        match self {
            ClusterChange::Sync { .. } | ClusterChange::Failed { .. } => "status",
            ClusterChange::Withdrawn { .. } => "withdrawn",
            ClusterChange::GatewaysSilent { .. } => "gateways-silent",
            ClusterChange::GatewaysBack => "gateways-back",
        }
    }

    /// The fields it sets (`null`: removes) in the stored status; every
    /// other field is kept.
    pub fn patch(&self) -> Map<String, Value> {
        let mut patch = Map::new();
        match self {
            ClusterChange::Sync {
                phase,
                message,
                unreachable_since_millis,
                gateway,
            } => {
                patch.insert("phase".into(), json!(phase.as_str()));
                patch.insert("message".into(), json!(message));
                patch.insert(
                    "unreachableSinceMillis".into(),
                    json!(unreachable_since_millis),
                );
                if *phase != ClusterPhase::Unreachable {
                    // Reachable again: the withdrawal is over.
                    patch.insert("withdrawnAtMillis".into(), Value::Null);
                }
                patch.insert("gateway".into(), gateway.clone().unwrap_or(Value::Null));
                // Written by discovery before the liveness plane; now facts.
                for moved in ["lastSync", "lastSyncMillis", "services", "endpoints"] {
                    patch.insert(moved.into(), Value::Null);
                }
            }
            ClusterChange::Failed { message, at_millis } => {
                patch.insert("phase".into(), json!(ClusterPhase::Unreachable.as_str()));
                patch.insert("message".into(), json!(message));
                patch.insert("unreachableSinceMillis".into(), json!(at_millis));
            }
            ClusterChange::Withdrawn { at_millis } => {
                patch.insert("withdrawnAtMillis".into(), json!(at_millis));
            }
            ClusterChange::GatewaysSilent { since_millis } => {
                patch.insert("gatewaysSilentSinceMillis".into(), json!(since_millis));
            }
            ClusterChange::GatewaysBack => {
                patch.insert("gatewaysSilentSinceMillis".into(), Value::Null);
            }
        }
        patch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Merges `change` into `status` as the store does.
    fn merged(mut status: Value, change: &ClusterChange) -> Value {
        let map = status.as_object_mut().expect("object");
        for (k, v) in change.patch() {
            if v.is_null() {
                map.remove(&k);
            } else {
                map.insert(k, v);
            }
        }
        status
    }

    #[test]
    fn a_status_refresh_keeps_the_withdrawal_while_the_cluster_stays_unreachable() {
        let down = ClusterChange::Sync {
            phase: ClusterPhase::Unreachable,
            message: "connection refused".into(),
            unreachable_since_millis: Some(1_000),
            gateway: None,
        };
        let status = merged(json!({}), &down);
        let status = merged(status, &ClusterChange::Withdrawn { at_millis: 31_000 });
        // Two more refreshes while it stays down, with other words.
        let mut again = down.clone();
        if let ClusterChange::Sync { message, .. } = &mut again {
            *message = "timed out".into();
        }
        let status = merged(merged(status, &again), &again);
        let typed = ClusterStatus::of(&status);
        assert!(typed.withdrawn(), "{status}");
        assert_eq!(typed.withdrawn_at_millis, Some(31_000));
        // Reachable again: the withdrawal is over.
        let up = ClusterChange::Sync {
            phase: ClusterPhase::Connected,
            message: "synced".into(),
            unreachable_since_millis: None,
            gateway: None,
        };
        let typed = ClusterStatus::of(&merged(status, &up));
        assert!(!typed.withdrawn() && typed.withdrawn_at_millis.is_none());
    }

    #[test]
    fn gateway_silence_is_set_and_cleared_without_touching_the_sync_state() {
        let status =
            json!({"phase": "Connected", "message": "synced", "gateway": {"phase": "Ready"}});
        let silent = merged(
            status.clone(),
            &ClusterChange::GatewaysSilent {
                since_millis: 5_000,
            },
        );
        let typed = ClusterStatus::of(&silent);
        assert!(typed.gateways_silent());
        assert_eq!(typed.phase, Some(ClusterPhase::Connected));
        assert_eq!(merged(silent, &ClusterChange::GatewaysBack), status);
    }

    #[test]
    fn a_field_of_the_wrong_type_is_absent_and_the_others_still_read() {
        let typed = ClusterStatus::of(
            &json!({"phase": "Unreachable", "unreachableSinceMillis": "x", "withdrawnAtMillis": 5}),
        );
        assert!(typed.unreachable());
        assert_eq!(typed.unreachable_since_millis, None);
        assert_eq!(typed.withdrawn_at_millis, Some(5));
        assert!(!typed.withdrawn());
    }
}
