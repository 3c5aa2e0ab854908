//! The stable reason codes users see in events, in `explain` output and in metric labels, and
//! the [`Violation`] that pairs a code with what the user must change. The codes are part of the
//! product contract (SPEC §2.4): never rename one.

use std::fmt;

use serde::Serialize;

/// Why a pod may not run on a virtual node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Reason {
    /// The pod is controlled by a DaemonSet.
    DaemonsetForbidden,
    /// The pod's namespace is on the forbidden list.
    ForbiddenNamespace,
    /// `net.ipv4.ip_local_port_range` overlaps the sandbox's reserved ports, or is malformed.
    ReservedPortRangeSysctl,
    /// The pod asks for a retained VPC IP.
    VpcIpClaimDeletePolicy,
    /// A container or init container declares a reserved containerPort or hostPort.
    ReservedPort,
    /// A probe targets a reserved port.
    ReservedProbePort,
    /// A PersistentVolume of a type the sandbox cannot mount.
    UnsupportedVolume,
    /// A PersistentVolumeClaim that is not bound (or does not exist) yet.
    UnboundVolume,
    /// The pod uses the fixed-IP feature.
    FixedIp,
    /// Not an eligibility rule: the `AUTO_SCALE_EKS` switches do not allow bursting. Only
    /// [`crate::decide`] reports it; [`crate::check`] never does.
    BurstDisabled,
}

impl Reason {
    /// The eligibility rules in the order SPEC §2.4 lists them, which is also the order of
    /// [`crate::Eligibility::violations`].
    pub const ELIGIBILITY_RULES: [Reason; 9] = [
        Reason::DaemonsetForbidden,
        Reason::ForbiddenNamespace,
        Reason::ReservedPortRangeSysctl,
        Reason::VpcIpClaimDeletePolicy,
        Reason::ReservedPort,
        Reason::ReservedProbePort,
        Reason::UnsupportedVolume,
        Reason::UnboundVolume,
        Reason::FixedIp,
    ];

    /// The code, e.g. `ReservedPort`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::DaemonsetForbidden => "DaemonsetForbidden",
            Reason::ForbiddenNamespace => "ForbiddenNamespace",
            Reason::ReservedPortRangeSysctl => "ReservedPortRangeSysctl",
            Reason::VpcIpClaimDeletePolicy => "VpcIpClaimDeletePolicy",
            Reason::ReservedPort => "ReservedPort",
            Reason::ReservedProbePort => "ReservedProbePort",
            Reason::UnsupportedVolume => "UnsupportedVolume",
            Reason::UnboundVolume => "UnboundVolume",
            Reason::FixedIp => "FixedIp",
            Reason::BurstDisabled => "BurstDisabled",
        }
    }

    /// The rule in one line, for `explain`.
    pub fn rule(self) -> &'static str {
        match self {
            Reason::DaemonsetForbidden => "not controlled by a DaemonSet",
            Reason::ForbiddenNamespace => "not in a forbidden namespace",
            Reason::ReservedPortRangeSysctl => "sysctl net.ipv4.ip_local_port_range outside 61000-65534",
            Reason::VpcIpClaimDeletePolicy => {
                "no tke.cloud.tencent.com/vpc-ip-claim-delete-policy annotation"
            }
            Reason::ReservedPort => "no containerPort or hostPort in 61000-65534",
            Reason::ReservedProbePort => "no liveness, readiness or startup probe on 61000-65534",
            Reason::UnsupportedVolume => "PersistentVolumes are nfs, cephfs, hostPath or Tencent CBS (CSI)",
            Reason::UnboundVolume => "every PersistentVolumeClaim is bound",
            Reason::FixedIp => "does not use the fixed-IP feature",
            Reason::BurstDisabled => "the AUTO_SCALE_EKS switches allow bursting",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One broken rule: its code and, in words, what is wrong and what to change.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Violation {
    pub reason: Reason,
    pub message: String,
}

impl Violation {
    pub fn new(reason: Reason, message: impl Into<String>) -> Violation {
        Violation {
            reason,
            message: message.into(),
        }
    }
}

/// Reads like `ReservedPort: container "web" declares containerPort 62000, …`.
impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}
