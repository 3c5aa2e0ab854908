//! What makes a node a virtual node and a pod able to use one: the labels, annotation and taint
//! that eklet puts on each virtual node, and the toleration the toleration controller adds.
//! Everything that needs to recognise a virtual node asks this module, so the rule lives once.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};

/// Taint key on every virtual node; only pods that tolerate it may be scheduled there.
pub const TAINT_KEY: &str = "eks.tke.cloud.tencent.com/eklet";
/// Effect of the virtual-node taint.
pub const TAINT_EFFECT: &str = "NoSchedule";

/// Label whose value [`INSTANCE_TYPE`] marks a node as virtual.
pub const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";
/// Instance type of a virtual node.
pub const INSTANCE_TYPE: &str = "eklet";
/// Label carrying the cloud zone of the subnet behind the node.
pub const ZONE_NAME_LABEL: &str = "eks.tke.cloud.tencent.com/zone-name";
/// The well-known topology label, set to the same zone so topology spreading sees it.
pub const TOPOLOGY_ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Label naming the generation of the virtual-node implementation.
pub const VERSION_LABEL: &str = "eks.tke.cloud.tencent.com/version";
/// Value of [`VERSION_LABEL`].
pub const VERSION: &str = "v2";
/// The well-known operating-system label.
pub const OS_LABEL: &str = "kubernetes.io/os";
/// Cloud sandboxes run Linux.
pub const OS: &str = "linux";
/// Node annotation with the cloud subnet the node stands for.
pub const SUBNET_ANNOTATION: &str = "eks.tke.cloud.tencent.com/subnet-id";
/// Virtual nodes are named `eklet-<subnet-id>`.
pub const NODE_NAME_PREFIX: &str = "eklet-";

/// The name of the virtual node for a subnet, e.g. `eklet-subnet-bu17jw8a`.
pub fn node_name(subnet_id: &str) -> String {
    format!("{NODE_NAME_PREFIX}{subnet_id}")
}

/// The labels of the virtual node for a subnet in `zone`.
pub fn node_labels(zone: &str) -> BTreeMap<String, String> {
    [
        (INSTANCE_TYPE_LABEL, INSTANCE_TYPE),
        (ZONE_NAME_LABEL, zone),
        (TOPOLOGY_ZONE_LABEL, zone),
        (VERSION_LABEL, VERSION),
        (OS_LABEL, OS),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect()
}

/// The taint every virtual node carries.
pub fn taint() -> Taint {
    Taint {
        key: TAINT_KEY.to_owned(),
        effect: TAINT_EFFECT.to_owned(),
        value: None,
        time_added: None,
    }
}

/// The toleration that lets a pod onto a virtual node: key [`TAINT_KEY`], operator `Exists`,
/// effect `NoSchedule`.
pub fn burst_toleration() -> Toleration {
    Toleration {
        key: Some(TAINT_KEY.to_owned()),
        operator: Some("Exists".to_owned()),
        effect: Some(TAINT_EFFECT.to_owned()),
        value: None,
        toleration_seconds: None,
    }
}

/// Whether the node is a virtual node, judged by its instance-type label (the taint can be
/// removed by hand; the label is what eklet owns and what users select on).
pub fn is_virtual_node(node: &Node) -> bool {
    has_virtual_node_labels(node.metadata.labels.as_ref())
}

/// [`is_virtual_node`] for callers that hold only a node's labels.
pub fn has_virtual_node_labels(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|labels| labels.get(INSTANCE_TYPE_LABEL))
        .is_some_and(|value| value == INSTANCE_TYPE)
}

/// Whether any of the pod's tolerations tolerates the virtual-node taint, with the same
/// matching rules as the Kubernetes scheduler (an empty key with operator `Exists` tolerates
/// every taint; an empty effect matches every effect).
pub fn tolerates_virtual_node(pod: &Pod) -> bool {
    let taint = taint();
    pod.spec
        .as_ref()
        .and_then(|spec| spec.tolerations.as_ref())
        .is_some_and(|tolerations| tolerations.iter().any(|toleration| tolerates(toleration, &taint)))
}

/// Mirrors `Toleration.ToleratesTaint` in k8s.io/api/core/v1.
fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or_default() {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
        }
        "Exists" => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod_with(tolerations: Vec<Toleration>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                tolerations: Some(tolerations),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn toleration(key: &str, operator: &str, value: &str, effect: &str) -> Toleration {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Toleration {
            key: some(key),
            operator: some(operator),
            value: some(value),
            effect: some(effect),
            toleration_seconds: None,
        }
    }

    #[test]
    fn a_node_labelled_instance_type_eklet_is_virtual_and_others_are_not() {
        let labelled = |labels: BTreeMap<String, String>| Node {
            metadata: ObjectMeta {
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        assert!(is_virtual_node(&labelled(node_labels("ap-guangzhou-3"))));
        let mut kwok = BTreeMap::new();
        kwok.insert(INSTANCE_TYPE_LABEL.to_owned(), "S5.LARGE8".to_owned());
        assert!(!is_virtual_node(&labelled(kwok)));
        assert!(!is_virtual_node(&Node::default()));
    }

    #[test]
    fn virtual_node_labels_carry_the_zone_twice_and_the_version() {
        let labels = node_labels("ap-guangzhou-3");
        assert_eq!(
            labels.get(ZONE_NAME_LABEL).map(String::as_str),
            Some("ap-guangzhou-3")
        );
        assert_eq!(
            labels.get(TOPOLOGY_ZONE_LABEL).map(String::as_str),
            Some("ap-guangzhou-3")
        );
        assert_eq!(labels.get(VERSION_LABEL).map(String::as_str), Some("v2"));
        assert_eq!(node_name("subnet-bu17jw8a"), "eklet-subnet-bu17jw8a");
    }

    #[test]
    fn the_burst_toleration_tolerates_the_virtual_node_taint() {
        assert!(tolerates(&burst_toleration(), &taint()));
        assert!(tolerates_virtual_node(&pod_with(vec![burst_toleration()])));
    }

    #[test]
    fn tolerations_match_the_taint_like_the_kubernetes_scheduler_does() {
        let cases = [
            ("tolerate-everything", toleration("", "Exists", "", ""), true),
            (
                "empty key exists NoSchedule",
                toleration("", "Exists", "", "NoSchedule"),
                true,
            ),
            (
                "key exists without effect",
                toleration(TAINT_KEY, "Exists", "", ""),
                true,
            ),
            (
                "key equal with empty value",
                toleration(TAINT_KEY, "Equal", "", "NoSchedule"),
                true,
            ),
            (
                "key with default operator",
                toleration(TAINT_KEY, "", "", "NoSchedule"),
                true,
            ),
            (
                "key equal with a value",
                toleration(TAINT_KEY, "Equal", "x", "NoSchedule"),
                false,
            ),
            (
                "other effect",
                toleration(TAINT_KEY, "Exists", "", "NoExecute"),
                false,
            ),
            (
                "other key",
                toleration("node.kubernetes.io/unreachable", "Exists", "", ""),
                false,
            ),
            ("unknown operator", toleration(TAINT_KEY, "Gt", "", ""), false),
        ];
        for (name, toleration, expected) in cases {
            assert_eq!(
                tolerates_virtual_node(&pod_with(vec![toleration])),
                expected,
                "case {name}"
            );
        }
        assert!(!tolerates_virtual_node(&Pod::default()));
    }
}
