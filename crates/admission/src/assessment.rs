//! The decision for one pod, without I/O: is it waiting for a node, does it already tolerate the
//! virtual node, and if not, does tke-policy let it burst. The controller feeds it what its
//! caches hold and acts on the answer.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use tke_policy::{
    EligibilityConfig, PlacementInput, PlacementOutcome, SwitchMode, SwitchSetting, VolumeLookup, decide,
    tolerates_virtual_node, workload,
};

/// The condition type and reason the scheduler sets when no node fits a pod.
pub const POD_SCHEDULED: &str = "PodScheduled";
pub const UNSCHEDULABLE: &str = "Unschedulable";

/// The policy flags the controller was started with.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub mode: SwitchMode,
    pub eligibility: EligibilityConfig,
}

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assessment {
    /// Bound, being deleted, or not marked Unschedulable: the scheduler has not given up on it.
    NotWaiting,
    /// It already tolerates the virtual node's taint; the next scheduling attempt can use it.
    AlreadyTolerated,
    /// tke-policy's answer for a pod no local node fits.
    Decided(Box<PlacementOutcome>),
}

/// A pod the scheduler has given up on for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unschedulable {
    /// When the scheduler marked it so (whole seconds: the API stores condition times that way).
    pub since: Option<Timestamp>,
}

/// Whether the pod is unbound, alive and marked Unschedulable now.
pub fn unschedulable(pod: &Pod) -> Option<Unschedulable> {
    if pod.metadata.deletion_timestamp.is_some() || workload::bound_node(pod).is_some() {
        return None;
    }
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|condition| condition.type_ == POD_SCHEDULED)?;
    (condition.status == "False" && condition.reason.as_deref() == Some(UNSCHEDULABLE)).then(|| {
        Unschedulable {
            since: condition.last_transition_time.as_ref().map(|time| time.0),
        }
    })
}

/// Assesses a pod the scheduler may have given up on.
pub fn assess(pod: &Pod, global: &SwitchSetting, policy: &Policy, volumes: &dyn VolumeLookup) -> Assessment {
    if unschedulable(pod).is_none() {
        return Assessment::NotWaiting;
    }
    if tolerates_virtual_node(pod) {
        return Assessment::AlreadyTolerated;
    }
    let eligibility = tke_policy::check(pod, volumes, &policy.eligibility);
    let outcome = decide(&PlacementInput {
        pod,
        global,
        mode: policy.mode,
        eligibility: &eligibility,
        // The scheduler has just found no local node that fits, whether because the IDC is
        // full or because tke-scheduler's extender keeps the pod off local nodes once
        // LOCAL_REPLICAS are local; either way the only place left is the cloud.
        local_count: 0,
        local_node_fits: false,
    });
    Assessment::Decided(Box::new(outcome))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{
        ConfigMap, Container, ContainerPort, PersistentVolume, PersistentVolumeClaim, PodCondition, PodSpec,
        PodStatus, Toleration,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use serde_json::json;
    use tke_policy::{BurstDecision, ClaimStatus, Reason, burst_toleration};

    use super::*;

    fn waiting_pod(namespace: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".to_owned()),
                namespace: Some(namespace.to_owned()),
                uid: Some("uid-1".to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".to_owned(),
                    ..Container::default()
                }],
                tolerations: Some(vec![Toleration {
                    key: Some("node.kubernetes.io/not-ready".to_owned()),
                    operator: Some("Exists".to_owned()),
                    effect: Some("NoExecute".to_owned()),
                    toleration_seconds: Some(300),
                    value: None,
                }]),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Pending".to_owned()),
                conditions: Some(vec![PodCondition {
                    type_: POD_SCHEDULED.to_owned(),
                    status: "False".to_owned(),
                    reason: Some(UNSCHEDULABLE.to_owned()),
                    last_transition_time: Some(Time(
                        Timestamp::from_second(1_700_000_000).unwrap_or_default(),
                    )),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    fn global(value: Option<&str>) -> SwitchSetting {
        let config_map = value.map(|value| ConfigMap {
            data: Some(BTreeMap::from([("AUTO_SCALE_EKS".to_owned(), value.to_owned())])),
            ..ConfigMap::default()
        });
        SwitchSetting::global("kube-system", config_map.as_ref())
    }

    fn no_claims(_: &str, _: &str) -> ClaimStatus {
        ClaimStatus::NotFound
    }

    fn decision(assessment: Assessment) -> BurstDecision {
        match assessment {
            Assessment::Decided(outcome) => outcome.decision,
            other => panic!("expected a decision, got {other:?}"),
        }
    }

    fn reasons(decision: &BurstDecision) -> Vec<Reason> {
        match decision {
            BurstDecision::LocalOnly { reasons } => {
                reasons.iter().map(|violation| violation.reason).collect()
            }
            _ => Vec::new(),
        }
    }

    #[test]
    fn an_unschedulable_pod_goes_to_the_cloud_when_nothing_forbids_it() {
        let pod = waiting_pod("shop");
        let decision = decision(assess(&pod, &global(None), &Policy::default(), &no_claims));
        assert_eq!(decision, BurstDecision::Cloud);
    }

    #[test]
    fn pods_the_scheduler_has_not_given_up_on_are_left_alone() {
        let mut pending = waiting_pod("shop");
        if let Some(status) = pending.status.as_mut() {
            status.conditions = None;
        }
        let mut bound = waiting_pod("shop");
        if let Some(spec) = bound.spec.as_mut() {
            spec.node_name = Some("idc-1".to_owned());
        }
        let mut gated = waiting_pod("shop");
        if let Some(condition) = gated
            .status
            .as_mut()
            .and_then(|s| s.conditions.as_mut())
            .and_then(|c| c.first_mut())
        {
            condition.reason = Some("SchedulingGated".to_owned());
        }
        let mut deleting = waiting_pod("shop");
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        for (name, pod) in [
            ("pending", pending),
            ("bound", bound),
            ("gated", gated),
            ("deleting", deleting),
        ] {
            assert_eq!(
                assess(&pod, &global(None), &Policy::default(), &no_claims),
                Assessment::NotWaiting,
                "{name}"
            );
        }
    }

    #[test]
    fn a_pod_that_already_tolerates_the_virtual_node_is_not_decided_again() {
        let mut pod = waiting_pod("shop");
        if let Some(tolerations) = pod.spec.as_mut().and_then(|spec| spec.tolerations.as_mut()) {
            tolerations.push(burst_toleration());
        }
        assert_eq!(
            assess(&pod, &global(Some("false")), &Policy::default(), &no_claims),
            Assessment::AlreadyTolerated
        );
    }

    #[test]
    fn the_global_switch_off_keeps_pods_local_unless_their_template_says_true() {
        let pod = waiting_pod("shop");
        let off = decision(assess(
            &pod,
            &global(Some(" FALSE ")),
            &Policy::default(),
            &no_claims,
        ));
        assert_eq!(reasons(&off), [Reason::BurstDisabled]);

        let mut opted_in = waiting_pod("shop");
        opted_in.metadata.annotations =
            Some(BTreeMap::from([("AUTO_SCALE_EKS".to_owned(), "true".to_owned())]));
        let decided = decision(assess(
            &opted_in,
            &global(Some("false")),
            &Policy::default(),
            &no_claims,
        ));
        assert_eq!(decided, BurstDecision::Cloud);
    }

    #[test]
    fn with_local_switch_overrides_a_pod_false_opts_out_of_an_allowing_global_switch() {
        let mut pod = waiting_pod("shop");
        pod.metadata.annotations = Some(BTreeMap::from([(
            "AUTO_SCALE_EKS".to_owned(),
            "false".to_owned(),
        )]));
        let seed = decision(assess(
            &pod,
            &global(Some("true")),
            &Policy::default(),
            &no_claims,
        ));
        assert_eq!(
            seed,
            BurstDecision::Cloud,
            "the seed's table ignores a local false while global is true"
        );
        let overrides = Policy {
            mode: SwitchMode::LocalOverrides,
            ..Policy::default()
        };
        let overridden = decision(assess(&pod, &global(Some("true")), &overrides, &no_claims));
        assert_eq!(reasons(&overridden), [Reason::BurstDisabled]);
    }

    #[test]
    fn ineligible_pods_are_refused_with_every_reason() {
        let mut pod = waiting_pod("kube-system");
        if let Some(spec) = pod.spec.as_mut() {
            spec.containers[0].ports = Some(vec![ContainerPort {
                container_port: 62000,
                ..ContainerPort::default()
            }]);
        }
        let decided = decision(assess(
            &pod,
            &global(Some("false")),
            &Policy::default(),
            &no_claims,
        ));
        assert_eq!(
            reasons(&decided),
            [
                Reason::BurstDisabled,
                Reason::ForbiddenNamespace,
                Reason::ReservedPort
            ]
        );
    }

    #[test]
    fn claims_are_looked_up_in_the_callers_cache() {
        let mut pod = waiting_pod("shop");
        if let Some(spec) = pod.spec.as_mut() {
            spec.volumes = Some(vec![
                serde_json::from_value(
                    json!({"name": "data", "persistentVolumeClaim": {"claimName": "data"}}),
                )
                .unwrap_or_default(),
            ]);
        }
        let nfs: PersistentVolume = serde_json::from_value(
            json!({"metadata": {"name": "pv-1"}, "spec": {"nfs": {"server": "n", "path": "/"}}}),
        )
        .unwrap_or_default();
        let claim: PersistentVolumeClaim = serde_json::from_value(
            json!({"metadata": {"name": "data"}, "spec": {"volumeName": "pv-1"}, "status": {"phase": "Bound"}}),
        )
        .unwrap_or_default();
        let nfs = Arc::new(nfs);
        let bound = |namespace: &str, name: &str| {
            assert_eq!((namespace, name), ("shop", "data"));
            ClaimStatus::of(Some(&claim), |_| Some(nfs.clone()))
        };
        assert_eq!(
            decision(assess(&pod, &global(None), &Policy::default(), &bound)),
            BurstDecision::Cloud
        );
        let pending = |_: &str, _: &str| ClaimStatus::Unbound;
        let refused = decision(assess(&pod, &global(None), &Policy::default(), &pending));
        assert_eq!(reasons(&refused), [Reason::UnboundVolume]);
    }

    #[test]
    fn the_unschedulable_time_is_the_conditions_last_transition() {
        let pod = waiting_pod("shop");
        let since = Timestamp::from_second(1_700_000_000).ok();
        assert_eq!(unschedulable(&pod), Some(Unschedulable { since }));
    }
}
