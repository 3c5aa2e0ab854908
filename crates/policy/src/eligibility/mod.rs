//! Eligibility: what may never run on a virtual node (SPEC §2.4). [`check`] applies every rule
//! and returns every violation, in rule order, so events and `explain` can list all of them
//! and the user fixes a pod in one pass instead of one rule per attempt.

mod ports;
mod volumes;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

pub use ports::{
    InvalidPortRange, PORT_RANGE_SYSCTL, RESERVED_PORTS_FIRST, RESERVED_PORTS_LAST, is_reserved_port,
    overlaps_reserved_ports, parse_port_range,
};
pub use volumes::{CBS_CSI_DRIVER, ClaimStatus, VolumeLookup, is_supported_volume, volume_type};

use crate::quote::quoted;
use crate::reason::{Reason, Violation};
use crate::workload::{controlling_owner, namespace_of};

/// Annotation asking TKE's VPC-CNI to keep the pod's VPC IP after the pod is gone.
pub const VPC_IP_CLAIM_DELETE_POLICY: &str = "tke.cloud.tencent.com/vpc-ip-claim-delete-policy";
/// Namespaces whose pods never burst unless configured otherwise.
pub const DEFAULT_FORBIDDEN_NAMESPACES: [&str; 2] = ["kube-system", "tke-eni-ip-webhook"];
/// Galaxy (TKEStack's CNI) float-IP release policy; `immutable` and `never` keep the IP.
pub const GALAXY_RELEASE_POLICY: &str = "k8s.v1.cni.galaxy.io/release-policy";
/// Galaxy float-IP pool shared by several workloads; pooled IPs are always kept.
pub const GALAXY_ENI_IP_POOL: &str = "tke.cloud.tencent.com/eni-ip-pool";

/// An annotation that marks a pod as using a feature: the key, and optionally one value that
/// must appear in the annotation's comma-separated value (compared ignoring ASCII case).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct AnnotationMatch {
    pub key: String,
    pub value: Option<String>,
}

impl AnnotationMatch {
    /// Matches whenever the annotation is present.
    pub fn present(key: &str) -> AnnotationMatch {
        AnnotationMatch {
            key: key.to_owned(),
            value: None,
        }
    }

    /// Matches when the annotation's value lists `value`.
    pub fn with_value(key: &str, value: &str) -> AnnotationMatch {
        AnnotationMatch {
            key: key.to_owned(),
            value: Some(value.to_owned()),
        }
    }

    /// The annotation's value when it matches the pod.
    fn matched<'a>(&self, pod: &'a Pod) -> Option<&'a str> {
        let found = pod.metadata.annotations.as_ref()?.get(&self.key)?;
        match &self.value {
            None => Some(found),
            Some(wanted) => found
                .split(',')
                .any(|item| item.trim().eq_ignore_ascii_case(wanted.trim()))
                .then_some(found.as_str()),
        }
    }
}

pub type Result<T, E = InvalidAnnotationMatch> = std::result::Result<T, E>;

/// A `--fixed-ip-annotation` flag value that names no annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation match {} has an empty key; write KEY or KEY=VALUE", quoted(text))]
pub struct InvalidAnnotationMatch {
    pub text: String,
}

/// Parses `KEY` or `KEY=VALUE`, the form of the `--fixed-ip-annotation` flag.
impl FromStr for AnnotationMatch {
    type Err = InvalidAnnotationMatch;

    fn from_str(text: &str) -> Result<AnnotationMatch> {
        let (key, value) = match text.split_once('=') {
            Some((key, value)) => (key.trim(), Some(value.trim())),
            None => (text.trim(), None),
        };
        if key.is_empty() {
            return Err(InvalidAnnotationMatch {
                text: text.to_owned(),
            });
        }
        Ok(match value {
            Some(value) => AnnotationMatch::with_value(key, value),
            None => AnnotationMatch::present(key),
        })
    }
}

/// Reads like `KEY` or `KEY=VALUE`.
impl fmt::Display for AnnotationMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            None => f.write_str(&self.key),
            Some(value) => write!(f, "{}={value}", self.key),
        }
    }
}

/// What the eligibility rules may be configured with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EligibilityConfig {
    /// Pods in these namespaces never burst. Default: [`DEFAULT_FORBIDDEN_NAMESPACES`].
    pub forbidden_namespaces: Vec<String>,
    /// Annotations that mean "this pod uses a fixed IP". The defaults cover Galaxy, the
    /// TKEStack CNI used by IDC clusters: `k8s.v1.cni.galaxy.io/release-policy` with value
    /// `immutable` or `never`, and any `tke.cloud.tencent.com/eni-ip-pool`. TKE's own VPC-CNI
    /// fixed IP is marked by `tke.cloud.tencent.com/vpc-ip-claim-delete-policy`, which has its
    /// own rule. Add e.g. `tke.cloud.tencent.com/networks=tke-route-eni` to refuse every
    /// VPC-CNI pod.
    pub fixed_ip_annotations: Vec<AnnotationMatch>,
    /// Whether the fixed-IP rule applies at all (the chart README's start-up switch).
    pub fixed_ip_check: bool,
}

impl Default for EligibilityConfig {
    fn default() -> EligibilityConfig {
        EligibilityConfig {
            forbidden_namespaces: DEFAULT_FORBIDDEN_NAMESPACES.map(str::to_owned).to_vec(),
            fixed_ip_annotations: vec![
                AnnotationMatch::with_value(GALAXY_RELEASE_POLICY, "immutable"),
                AnnotationMatch::with_value(GALAXY_RELEASE_POLICY, "never"),
                AnnotationMatch::present(GALAXY_ENI_IP_POOL),
            ],
            fixed_ip_check: true,
        }
    }
}

/// Every rule the pod breaks. Empty means the pod may run on a virtual node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Eligibility {
    /// In the order of [`Reason::ELIGIBILITY_RULES`], then in the order of the pod spec.
    pub violations: Vec<Violation>,
}

impl Eligibility {
    pub fn is_eligible(&self) -> bool {
        self.violations.is_empty()
    }

    /// The first violation, whose code eklet shows as the pod's reason.
    pub fn first(&self) -> Option<&Violation> {
        self.violations.first()
    }

    /// The distinct codes broken, in rule order.
    pub fn reasons(&self) -> Vec<Reason> {
        let mut reasons: Vec<Reason> = self.violations.iter().map(|violation| violation.reason).collect();
        reasons.dedup();
        reasons
    }

    /// The violations of one rule.
    pub fn violations_of(&self, reason: Reason) -> impl Iterator<Item = &Violation> {
        self.violations
            .iter()
            .filter(move |violation| violation.reason == reason)
    }
}

/// Applies every eligibility rule to the pod.
pub fn check(pod: &Pod, volumes: &dyn VolumeLookup, config: &EligibilityConfig) -> Eligibility {
    let mut violations = Vec::new();
    check_daemonset(pod, &mut violations);
    check_namespace(pod, config, &mut violations);
    if let Some(spec) = &pod.spec {
        ports::check_port_range_sysctl(spec, &mut violations);
    }
    check_vpc_ip_claim(pod, &mut violations);
    if let Some(spec) = &pod.spec {
        ports::check_declared_ports(spec, &mut violations);
        ports::check_probe_ports(spec, &mut violations);
    }
    volumes::check_volumes(pod, volumes, &mut violations);
    if config.fixed_ip_check {
        check_fixed_ip(pod, config, &mut violations);
    }
    // The volume rule emits two codes as it walks the volumes; a stable sort puts them back in
    // rule order without disturbing spec order within a rule.
    violations.sort_by_key(|violation| violation.reason);
    Eligibility { violations }
}

fn check_daemonset(pod: &Pod, violations: &mut Vec<Violation>) {
    // Any group: OpenKruise's Advanced DaemonSet places one pod per node just the same.
    let Some(owner) = controlling_owner(pod).filter(|owner| owner.kind == "DaemonSet") else {
        return;
    };
    violations.push(Violation::new(
        Reason::DaemonsetForbidden,
        format!(
            "the pod is controlled by {owner} ({}); DaemonSet pods belong on real machines, so keep them off \
             virtual nodes with a node affinity on {} NotIn [{}] instead of tolerating {}",
            owner.api_version,
            crate::virtual_node::INSTANCE_TYPE_LABEL,
            crate::virtual_node::INSTANCE_TYPE,
            crate::virtual_node::TAINT_KEY,
        ),
    ));
}

fn check_namespace(pod: &Pod, config: &EligibilityConfig, violations: &mut Vec<Violation>) {
    let namespace = namespace_of(pod);
    if !config
        .forbidden_namespaces
        .iter()
        .any(|forbidden| forbidden == namespace)
    {
        return;
    }
    violations.push(Violation::new(
        Reason::ForbiddenNamespace,
        format!(
            "namespace {} may not burst to the cloud (forbidden namespaces: {}); run the workload in another \
             namespace",
            quoted(namespace),
            config.forbidden_namespaces.join(", ")
        ),
    ));
}

fn check_vpc_ip_claim(pod: &Pod, violations: &mut Vec<Violation>) {
    let Some(value) = AnnotationMatch::present(VPC_IP_CLAIM_DELETE_POLICY).matched(pod) else {
        return;
    };
    violations.push(Violation::new(
        Reason::VpcIpClaimDeletePolicy,
        format!(
            "annotation {VPC_IP_CLAIM_DELETE_POLICY}={} asks VPC-CNI to keep the pod's IP, which a cloud sandbox \
             cannot; remove the annotation to let the pod burst",
            quoted(value)
        ),
    ));
}

fn check_fixed_ip(pod: &Pod, config: &EligibilityConfig, violations: &mut Vec<Violation>) {
    for matcher in &config.fixed_ip_annotations {
        let Some(value) = matcher.matched(pod) else {
            continue;
        };
        violations.push(Violation::new(
            Reason::FixedIp,
            format!(
                "annotation {}={} turns on the fixed-IP feature, which a cloud sandbox cannot honour; remove it \
                 to let the pod burst, or start the components with the fixed-IP check off",
                matcher.key,
                quoted(value)
            ),
        ));
    }
}
