//! The burst policy: may this pod go to the cloud, and if not, why not. Pure: no I/O, no
//! runtime. It takes Kubernetes objects as data and returns decisions, so eklet, the toleration
//! controller, the scheduler extender and `tke-resilience explain` give one answer.
//!
//! # Switches (`AUTO_SCALE_EKS`)
//!
//! The global switch is key `AUTO_SCALE_EKS` in ConfigMap `eks-config` (namespace `kube-system`
//! unless configured); the local switch is the pod annotation `AUTO_SCALE_EKS`, copied from the
//! pod template. Values are `true`/`false` in any case with surrounding whitespace ignored;
//! anything else counts as undefined and yields a warning naming the value. A missing ConfigMap
//! or key is undefined too, which both modes treat as the documented default "on".
//!
//! Two [`SwitchMode`]s combine them:
//!
//! | global | local | [`SwitchMode::Seed`] (default) | [`SwitchMode::LocalOverrides`] |
//! |---|---|---|---|
//! | true | false | allowed | not allowed |
//! | true | undefined | allowed | allowed |
//! | true | true | allowed | allowed |
//! | false | false | not allowed | not allowed |
//! | false | undefined | not allowed | not allowed |
//! | false | true | allowed | allowed |
//! | undefined | false | allowed | not allowed |
//! | undefined | undefined | allowed | allowed |
//! | undefined | true | allowed | allowed |
//!
//! `Seed` is the seed's table: bursting is allowed unless the global switch is `false` and the
//! local one is not `true`. `LocalOverrides` (`--local-switch-overrides`) is the chart README's
//! "the local value takes precedence over the global one", so a workload's `false` opts it out.
//!
//! # `LOCAL_REPLICAS: N`
//!
//! A non-negative decimal integer (digits only, whitespace trimmed); anything else is ignored
//! with a warning. Pods are counted per controlling owner ([`workload`]): a pod is local when
//! it is not terminating, not finished and bound to a non-virtual node; the caller adds pods it
//! has decided local but not yet seen bound. When bursting is allowed and the pod is eligible,
//! [`decide`] sends it local while the count is below N and a local node fits, to the cloud
//! otherwise; without `LOCAL_REPLICAS` it goes local when a local node fits.
//!
//! # Eligibility
//!
//! [`check`] reports every rule a pod breaks, each with a stable [`Reason`] code and a
//! message saying what to change:
//!
//! | code | the pod may not run on a virtual node when |
//! |---|---|
//! | `DaemonsetForbidden` | it is controlled by a DaemonSet (any API group) |
//! | `ForbiddenNamespace` | its namespace is listed (default `kube-system`, `tke-eni-ip-webhook`) |
//! | `ReservedPortRangeSysctl` | sysctl `net.ipv4.ip_local_port_range` overlaps 61000-65534, or is malformed (the sandbox would refuse it) |
//! | `VpcIpClaimDeletePolicy` | it has annotation `tke.cloud.tencent.com/vpc-ip-claim-delete-policy` |
//! | `ReservedPort` | a container or init container declares a containerPort or hostPort in 61000-65534 |
//! | `ReservedProbePort` | a liveness, readiness or startup probe (httpGet, tcpSocket, grpc) targets 61000-65534; named ports resolve through the container's ports as the kubelet does, and a name that resolves to nothing is not this rule's concern |
//! | `UnsupportedVolume` | a claim (explicit or generic ephemeral) is bound to a PersistentVolume other than nfs, cephfs, hostPath or CSI `com.tencent.cloud.csi.cbs` |
//! | `UnboundVolume` | such a claim is not bound yet, or does not exist |
//! | `FixedIp` | it carries a fixed-IP annotation (configurable list, see [`EligibilityConfig`]; the check can be switched off) |
//!
//! Inline pod volumes (nfs, emptyDir, configMap, secret, …) are not PersistentVolumes; what a
//! cloud provider can mount is eklet's provider capability check, not this crate's.
//!
//! # Decisions
//!
//! [`decide`] returns [`BurstDecision::Local`], [`BurstDecision::Cloud`] or
//! [`BurstDecision::LocalOnly`] with its reasons; when the switches say no, the first reason is
//! [`Reason::BurstDisabled`] (code `BurstDisabled`), followed by any eligibility violations.
//! [`explain()`] assembles the same facts into a report for people and machines.
//!
//! ```
//! use k8s_openapi::api::core::v1::Pod;
//! use tke_policy::{ClaimStatus, EligibilityConfig, PlacementInput, SwitchMode, SwitchSetting};
//!
//! let pod = Pod::default();
//! let global = SwitchSetting::global("kube-system", None);
//! let eligibility = tke_policy::check(&pod, &|_: &str, _: &str| ClaimStatus::NotFound, &EligibilityConfig::default());
//! let outcome = tke_policy::decide(&PlacementInput {
//!     pod: &pod,
//!     global: &global,
//!     mode: SwitchMode::Seed,
//!     eligibility: &eligibility,
//!     local_count: 0,
//!     local_node_fits: false,
//! });
//! assert_eq!(outcome.decision, tke_policy::BurstDecision::Cloud);
//! ```

#[cfg(feature = "clap")]
pub mod args;
pub mod decision;
pub mod eligibility;
pub mod explain;
pub mod local_replicas;
mod quote;
pub mod reason;
pub mod switch;
pub mod virtual_node;
pub mod workload;

#[cfg(feature = "clap")]
pub use args::PolicyArgs;
pub use decision::{BurstDecision, PlacementInput, PlacementOutcome, Warning, decide};
pub use eligibility::{AnnotationMatch, ClaimStatus, Eligibility, EligibilityConfig, VolumeLookup, check};
pub use explain::{ExplainInput, Explanation, explain};
pub use local_replicas::{InvalidLocalReplicas, LOCAL_REPLICAS, local_replicas, parse_local_replicas};
pub use reason::{Reason, Violation};
pub use switch::{
    AUTO_SCALE_EKS, BurstPermission, DecidedBy, InvalidSwitch, Switch, SwitchMode, SwitchSetting,
    burst_allowed, burst_permission,
};
pub use virtual_node::{burst_toleration, is_virtual_node, tolerates_virtual_node};
pub use workload::{WorkloadRef, controlling_owner, count_local, counts_as_local};
