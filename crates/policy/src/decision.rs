//! The placement decision (SPEC §2.2): given the switches, eligibility, `LOCAL_REPLICAS` and the
//! workload's local count, does the pod go local, to the cloud, or stay local-only. The
//! toleration controller, the scheduler extender and `explain` all ask [`decide`].

use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

use crate::eligibility::Eligibility;
use crate::local_replicas::{InvalidLocalReplicas, LOCAL_REPLICAS, local_replicas};
use crate::reason::{Reason, Violation};
use crate::switch::{
    AUTO_SCALE_EKS, BurstPermission, DecidedBy, InvalidSwitch, Switch, SwitchMode, SwitchSetting,
    burst_permission,
};

/// What the caller knows when a pod needs a place.
#[derive(Debug, Clone, Copy)]
pub struct PlacementInput<'a> {
    pub pod: &'a Pod,
    /// The global switch, read once per ConfigMap change with [`SwitchSetting::global`].
    pub global: &'a SwitchSetting,
    pub mode: SwitchMode,
    /// The pod's [`crate::check`] result.
    pub eligibility: &'a Eligibility,
    /// The workload's local pods, including those already decided local but not yet bound.
    pub local_count: u32,
    /// Whether at least one local (non-virtual) node can take the pod.
    pub local_node_fits: bool,
}

/// Where the pod goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "placement")]
pub enum BurstDecision {
    /// Onto a local node.
    Local,
    /// Onto a virtual node: the toleration is added and the extender keeps only virtual nodes.
    Cloud,
    /// Never onto a virtual node, for these reasons ([`Reason::BurstDisabled`] first when the
    /// switches say no, then every eligibility violation). The pod waits for local capacity.
    LocalOnly { reasons: Vec<Violation> },
}

impl BurstDecision {
    /// Whether the pod may use a virtual node.
    pub fn may_burst(&self) -> bool {
        !matches!(self, BurstDecision::LocalOnly { .. })
    }

    /// `Local`, `Cloud` or `LocalOnly`.
    pub fn as_str(&self) -> &'static str {
        match self {
            BurstDecision::Local => "Local",
            BurstDecision::Cloud => "Cloud",
            BurstDecision::LocalOnly { .. } => "LocalOnly",
        }
    }
}

/// Reads like `Cloud` or `LocalOnly (BurstDisabled, ReservedPort)`.
impl fmt::Display for BurstDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BurstDecision::LocalOnly { reasons } => {
                let codes: Vec<&str> = reasons
                    .iter()
                    .map(|violation| violation.reason.as_str())
                    .collect();
                write!(f, "LocalOnly ({})", codes.join(", "))
            }
            other => f.write_str(other.as_str()),
        }
    }
}

/// A bad annotation on the pod, to report as a Warning event; the decision went on as if the
/// annotation were unset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Warning {
    #[error("pod annotation {}", .0)]
    InvalidSwitch(InvalidSwitch),
    #[error(transparent)]
    InvalidLocalReplicas(InvalidLocalReplicas),
}

impl Warning {
    /// The event reason for this warning.
    pub fn reason(&self) -> &'static str {
        match self {
            Warning::InvalidSwitch(_) => "InvalidAutoScaleEks",
            Warning::InvalidLocalReplicas(_) => "InvalidLocalReplicas",
        }
    }
}

/// The decision with everything that led to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementOutcome {
    pub decision: BurstDecision,
    /// What the switches said.
    pub permission: BurstPermission,
    /// The pod's local switch as read.
    pub local_switch: SwitchSetting,
    /// `LOCAL_REPLICAS` as read; `None` when absent or invalid.
    pub local_replicas: Option<u32>,
    /// Invalid local switch or `LOCAL_REPLICAS`; the global switch's own warning is reported by
    /// whoever reads the ConfigMap ([`SwitchSetting::warning`]), once, not per pod.
    pub warnings: Vec<Warning>,
}

impl PlacementOutcome {
    /// One sentence on why the decision came out this way.
    pub fn summary(&self, local_count: u32) -> String {
        match (&self.decision, self.local_replicas) {
            (BurstDecision::LocalOnly { .. }, _) => {
                "the pod never goes to a virtual node; it waits for a local node to fit".to_owned()
            }
            (BurstDecision::Cloud, Some(wanted)) if local_count >= wanted => {
                format!(
                    "local count {local_count} has reached {LOCAL_REPLICAS} {wanted}, so the pod goes to the cloud"
                )
            }
            (BurstDecision::Cloud, Some(wanted)) => format!(
                "local count {local_count} is below {LOCAL_REPLICAS} {wanted} but no local node fits, so the pod goes \
                 to the cloud"
            ),
            (BurstDecision::Cloud, None) => "no local node fits, so the pod goes to the cloud".to_owned(),
            (BurstDecision::Local, Some(wanted)) => format!(
                "local count {local_count} is below {LOCAL_REPLICAS} {wanted} and a local node fits, so the pod goes \
                 local"
            ),
            (BurstDecision::Local, None) => {
                "a local node fits, so the pod goes local (local nodes come first)".to_owned()
            }
        }
    }
}

/// Decides where the pod goes, exactly as SPEC §2.2 says: not allowed or not eligible →
/// `LocalOnly`; with `LOCAL_REPLICAS=N`, below N → local if a local node fits else cloud, at or
/// above N → cloud; without it → local if a local node fits else cloud.
pub fn decide(input: &PlacementInput<'_>) -> PlacementOutcome {
    let local_switch = SwitchSetting::local(input.pod);
    let mut warnings: Vec<Warning> = local_switch
        .warning()
        .map(Warning::InvalidSwitch)
        .into_iter()
        .collect();
    let local_replicas = local_replicas(input.pod).unwrap_or_else(|invalid| {
        warnings.push(Warning::InvalidLocalReplicas(invalid));
        None
    });
    let permission = burst_permission(input.global, &local_switch, input.mode);

    let mut reasons = Vec::new();
    if !permission.allowed {
        reasons.push(burst_disabled(input, &permission, &local_switch));
    }
    reasons.extend(input.eligibility.violations.iter().cloned());

    let decision = if !reasons.is_empty() {
        BurstDecision::LocalOnly { reasons }
    } else if local_replicas.is_some_and(|wanted| input.local_count >= wanted) || !input.local_node_fits {
        BurstDecision::Cloud
    } else {
        BurstDecision::Local
    };
    PlacementOutcome {
        decision,
        permission,
        local_switch,
        local_replicas,
        warnings,
    }
}

fn burst_disabled(
    input: &PlacementInput<'_>,
    permission: &BurstPermission,
    local: &SwitchSetting,
) -> Violation {
    let fix = match (permission.decided_by, local.value) {
        (DecidedBy::Local, Switch::Off) => {
            format!(
                "to let it burst, set the pod template annotation {AUTO_SCALE_EKS} to \"true\" or remove it"
            )
        }
        _ => format!(
            "to let it burst, set {AUTO_SCALE_EKS}: \"true\" in the pod template annotations or in {}",
            input.global.location()
        ),
    };
    Violation::new(
        Reason::BurstDisabled,
        format!("bursting is off: {}; {fix}", permission.because),
    )
}
