//! Which workload a pod belongs to (its controlling owner) and which of a workload's pods count
//! as "local" for `LOCAL_REPLICAS`. Counting is per controlling owner, so each ReplicaSet of a
//! Deployment keeps its own N local pods through a rolling update.

use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

/// The controlling owner of a pod: the ownerReference with `controller: true`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    /// Owner references are namespace-local, so this is the pod's namespace.
    pub namespace: String,
}

/// Reads like `ReplicaSet default/nginx-77b9b9bc97`.
impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The pod's namespace; an object without one is in `default`, as the API server would put it.
pub fn namespace_of(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// The pod's controlling owner, if it has one.
pub fn controlling_owner(pod: &Pod) -> Option<WorkloadRef> {
    let owner = pod
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|owner| owner.controller == Some(true))?;
    Some(WorkloadRef {
        api_version: owner.api_version.clone(),
        kind: owner.kind.clone(),
        name: owner.name.clone(),
        uid: owner.uid.clone(),
        namespace: namespace_of(pod).to_owned(),
    })
}

/// Whether `owner` is the pod's controlling owner (same UID and namespace).
pub fn is_controlled_by(pod: &Pod, owner: &WorkloadRef) -> bool {
    namespace_of(pod) == owner.namespace
        && pod.metadata.owner_references.as_ref().is_some_and(|owners| {
            owners
                .iter()
                .any(|reference| reference.controller == Some(true) && reference.uid == owner.uid)
        })
}

/// Whether the pod is being deleted.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Whether the pod has run to completion (phase `Succeeded` or `Failed`).
pub fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|status| status.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The node the pod is bound to, if any.
pub fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.node_name.as_deref())
        .filter(|name| !name.is_empty())
}

/// Whether the pod counts towards its workload's local replicas: not terminating, not finished,
/// and bound to a node that `is_virtual_node` says is not virtual. Pods decided "local" but not
/// yet bound are the caller's ledger, not this function's.
pub fn counts_as_local(pod: &Pod, is_virtual_node: impl Fn(&str) -> bool) -> bool {
    !is_terminating(pod) && !is_finished(pod) && bound_node(pod).is_some_and(|node| !is_virtual_node(node))
}

/// How many of `pods` are controlled by `owner` and count as local.
pub fn count_local<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    owner: &WorkloadRef,
    is_virtual_node: impl Fn(&str) -> bool,
) -> u32 {
    let count = pods
        .into_iter()
        .filter(|pod| is_controlled_by(pod, owner) && counts_as_local(pod, &is_virtual_node))
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

    use super::*;

    fn owner_reference(kind: &str, name: &str, uid: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            controller,
            block_owner_deletion: None,
        }
    }

    fn pod(owners: Vec<OwnerReference>, node: Option<&str>, phase: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some("shop".to_owned()),
                owner_references: Some(owners),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_owned),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: phase.map(str::to_owned),
                ..PodStatus::default()
            }),
        }
    }

    fn is_eklet(node: &str) -> bool {
        node.starts_with("eklet-")
    }

    #[test]
    fn the_workload_is_the_owner_reference_marked_controller() {
        let pod = pod(
            vec![
                owner_reference("ConfigMap", "not-a-controller", "u1", None),
                owner_reference("ReplicaSet", "web-5d8f", "u2", Some(true)),
            ],
            None,
            None,
        );
        let owner = controlling_owner(&pod).expect("controlled pod");
        assert_eq!(owner.to_string(), "ReplicaSet shop/web-5d8f");
        assert_eq!(owner.uid, "u2");
        assert!(is_controlled_by(&pod, &owner));
    }

    #[test]
    fn a_pod_without_a_controller_reference_has_no_workload() {
        let pod = pod(
            vec![owner_reference("ReplicaSet", "web", "u1", Some(false))],
            None,
            None,
        );
        assert_eq!(controlling_owner(&pod), None);
        assert_eq!(controlling_owner(&Pod::default()), None);
    }

    #[test]
    fn only_running_or_pending_pods_bound_to_local_nodes_count_as_local() {
        let rs = || vec![owner_reference("ReplicaSet", "web", "u1", Some(true))];
        let mut terminating = pod(rs(), Some("idc-1"), Some("Running"));
        terminating.metadata.deletion_timestamp = Some(Time(Default::default()));
        let cases = [
            (
                "running on a local node",
                pod(rs(), Some("idc-1"), Some("Running")),
                true,
            ),
            (
                "pending but bound to a local node",
                pod(rs(), Some("idc-1"), Some("Pending")),
                true,
            ),
            (
                "on the virtual node",
                pod(rs(), Some("eklet-subnet-1"), Some("Running")),
                false,
            ),
            ("not bound yet", pod(rs(), None, Some("Pending")), false),
            (
                "bound to an empty node name",
                pod(rs(), Some(""), Some("Pending")),
                false,
            ),
            ("succeeded", pod(rs(), Some("idc-1"), Some("Succeeded")), false),
            ("failed", pod(rs(), Some("idc-1"), Some("Failed")), false),
            ("terminating", terminating, false),
        ];
        for (name, pod, expected) in &cases {
            assert_eq!(counts_as_local(pod, is_eklet), *expected, "case {name}");
        }
        let owner = controlling_owner(&cases[0].1).expect("controlled pod");
        let pods: Vec<&Pod> = cases.iter().map(|(_, pod, _)| pod).collect();
        assert_eq!(count_local(pods, &owner, is_eklet), 2);
    }

    #[test]
    fn each_replica_set_counts_only_its_own_pods() {
        let old = pod(
            vec![owner_reference("ReplicaSet", "web-old", "old", Some(true))],
            Some("idc-1"),
            None,
        );
        let new = pod(
            vec![owner_reference("ReplicaSet", "web-new", "new", Some(true))],
            Some("idc-2"),
            None,
        );
        let mut elsewhere = new.clone();
        elsewhere.metadata.namespace = Some("other".to_owned());
        let owner = controlling_owner(&new).expect("controlled pod");
        assert_eq!(count_local([&old, &new, &elsewhere], &owner, is_eklet), 1);
    }
}
