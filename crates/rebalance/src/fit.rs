//! Whether a local node fits a pod now, judged as kube-scheduler's filters judge it (node
//! unschedulable or not Ready, taints with `NoSchedule`/`NoExecute`, `nodeSelector`, required node
//! affinity, and requests against allocatable minus what is bound), with a margin: a share of
//! every resource kept free, so a pod is not brought home onto a node it would fill to the brim.
//! Pure: the controller hands in the nodes and pods it watches.

use std::{collections::BTreeMap, fmt};

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};
use tke_runtime::quantity;

/// CPU (millicores), memory (bytes) and pod slots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pods: u64,
}

impl Amount {
    fn add(&mut self, other: Amount) {
        self.cpu_millis += other.cpu_millis;
        self.memory_bytes += other.memory_bytes;
        self.pods += other.pods;
    }
}

/// One local node as the filters read it.
#[derive(Debug, Clone)]
pub struct NodeRoom {
    pub name: String,
    pub allocatable: Amount,
    /// The requests of the pods bound to it that are not finished.
    pub used: Amount,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub schedulable: bool,
}

impl NodeRoom {
    /// The node with nothing bound yet; add its pods with [`NodeRoom::bind`].
    pub fn of(node: &Node) -> Option<NodeRoom> {
        let name = node.metadata.name.clone()?;
        let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let read = |key: &str, parse: fn(&str) -> quantity::Result<u64>| {
            allocatable
                .and_then(|a| a.get(key))
                .and_then(|q| parse(&q.0).ok())
                .unwrap_or(0)
        };
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
        Some(NodeRoom {
            name,
            allocatable: Amount {
                cpu_millis: read("cpu", quantity::millis),
                memory_bytes: read("memory", quantity::units),
                pods: read("pods", quantity::units),
            },
            used: Amount::default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default(),
            schedulable: ready && !cordoned,
        })
    }

    /// Counts a pod bound to this node.
    pub fn bind(&mut self, pod: &Pod) {
        self.used.add(requests(pod));
    }
}

/// What keeps a node from taking a pod, the first one the filters find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Short {
    /// Cordoned or not Ready.
    Unschedulable,
    /// A `NoSchedule`/`NoExecute` taint the pod does not tolerate.
    Taint(String),
    /// A `nodeSelector` label the node lacks or has another value of.
    Selector(String),
    /// No term of the pod's required node affinity matches.
    Affinity,
    /// Requests above what is free once the margin is kept: (resource, needed, free).
    Resources(Vec<(&'static str, u64, u64)>),
}

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Short::Unschedulable => f.write_str("cordoned or not Ready"),
            Short::Taint(key) => write!(f, "taint {key} not tolerated"),
            Short::Selector(key) => write!(f, "nodeSelector {key} does not match"),
            Short::Affinity => f.write_str("required node affinity does not match"),
            Short::Resources(short) => {
                let parts: Vec<String> = short
                    .iter()
                    .map(|(what, need, free)| match *what {
                        "cpu" => format!("cpu {need}m needed, {free}m free"),
                        "memory" => format!("memory {}Mi needed, {}Mi free", need >> 20, free >> 20),
                        _ => format!("{what} {need} needed, {free} free"),
                    })
                    .collect();
                f.write_str(&parts.join(", "))
            }
        }
    }
}

/// The pod's requests as the scheduler counts them: the larger of the containers' sum and any
/// one init container's, plus the pod overhead; one pod slot.
pub fn requests(pod: &Pod) -> Amount {
    let Some(spec) = &pod.spec else {
        return Amount::default();
    };
    let of = |container: &Container| {
        let requests = container.resources.as_ref().and_then(|r| r.requests.as_ref());
        let read = |key: &str, parse: fn(&str) -> quantity::Result<u64>| {
            requests
                .and_then(|r| r.get(key))
                .and_then(|q| parse(&q.0).ok())
                .unwrap_or(0)
        };
        (read("cpu", quantity::millis), read("memory", quantity::units))
    };
    let (mut cpu, mut memory) = spec
        .containers
        .iter()
        .map(of)
        .fold((0, 0), |(c, m), (a, b)| (c + a, m + b));
    for init in spec.init_containers.iter().flatten() {
        let (c, m) = of(init);
        cpu = cpu.max(c);
        memory = memory.max(m);
    }
    if let Some(overhead) = &spec.overhead {
        cpu += overhead
            .get("cpu")
            .and_then(|q| quantity::millis(&q.0).ok())
            .unwrap_or(0);
        memory += overhead
            .get("memory")
            .and_then(|q| quantity::units(&q.0).ok())
            .unwrap_or(0);
    }
    Amount {
        cpu_millis: cpu,
        memory_bytes: memory,
        pods: 1,
    }
}

/// Whether `node` takes `pod` now with `margin` (0.0–1.0) of each resource kept free.
pub fn fits(pod: &Pod, node: &NodeRoom, margin: f64) -> Result<(), Short> {
    if !node.schedulable {
        return Err(Short::Unschedulable);
    }
    let spec = pod.spec.as_ref();
    let tolerations: &[Toleration] = spec.and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
    for taint in &node.taints {
        if matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
            && !tolerations.iter().any(|t| tolerates(t, taint))
        {
            return Err(Short::Taint(taint.key.clone()));
        }
    }
    for (key, value) in spec.and_then(|s| s.node_selector.as_ref()).into_iter().flatten() {
        if node.labels.get(key) != Some(value) {
            return Err(Short::Selector(key.clone()));
        }
    }
    let required = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
    if let Some(required) = required
        && !required
            .node_selector_terms
            .iter()
            .any(|term| term_matches(term, node))
    {
        return Err(Short::Affinity);
    }
    let need = requests(pod);
    let keep = margin.clamp(0.0, 1.0);
    let free = |allocatable: u64, used: u64| {
        let usable = (allocatable as f64 * (1.0 - keep)).floor() as u64;
        usable.saturating_sub(used)
    };
    let mut short = Vec::new();
    for (what, needed, allocatable, used) in [
        (
            "cpu",
            need.cpu_millis,
            node.allocatable.cpu_millis,
            node.used.cpu_millis,
        ),
        (
            "memory",
            need.memory_bytes,
            node.allocatable.memory_bytes,
            node.used.memory_bytes,
        ),
    ] {
        let free = free(allocatable, used);
        if needed > free {
            short.push((what, needed, free));
        }
    }
    // Pod slots are counted without the margin, as a count.
    let slots = node.allocatable.pods.saturating_sub(node.used.pods);
    if need.pods > slots {
        short.push(("pods", need.pods, slots));
    }
    if short.is_empty() {
        Ok(())
    } else {
        Err(Short::Resources(short))
    }
}

/// The first node that fits, or the closest one and what it is short of: a node short only of
/// resources is closer than one a filter refuses, and the smaller the shortfall the closer.
pub fn place<'a>(
    pod: &Pod,
    nodes: &'a [NodeRoom],
    margin: f64,
) -> Result<&'a NodeRoom, Option<(&'a NodeRoom, Short)>> {
    let mut closest: Option<(&NodeRoom, Short, f64)> = None;
    for node in nodes {
        match fits(pod, node, margin) {
            Ok(()) => return Ok(node),
            Err(short) => {
                let distance = match &short {
                    Short::Resources(parts) => parts
                        .iter()
                        .map(|(_, need, free)| (*need - *free) as f64 / (*need).max(1) as f64)
                        .sum(),
                    _ => f64::INFINITY,
                };
                if closest.as_ref().is_none_or(|(_, _, d)| distance < *d) {
                    closest = Some((node, short, distance));
                }
            }
        }
    }
    Err(closest.map(|(node, short, _)| (node, short)))
}

fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    match toleration.operator.as_deref() {
        Some("Exists") => toleration
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key),
        _ => {
            toleration.key.as_deref() == Some(taint.key.as_str())
                && toleration.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &NodeRoom) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        // An empty term matches nothing, as the scheduler reads it.
        return false;
    }
    expressions
        .iter()
        .all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then_some(node.name.as_str());
            requirement_matches(r, value)
        })
}

fn requirement_matches(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let number = |text: &str| text.parse::<i64>().ok();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v > x)
        }
        "Lt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v < x)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(extra: serde_json::Value) -> NodeRoom {
        let mut node = json!({
            "metadata": {"name": "idc-1", "labels": {"zone": "a", "rank": "5"}},
            "spec": {},
            "status": {
                "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        });
        merge(&mut node, extra);
        let node: Node = serde_json::from_value(node).unwrap_or_else(|e| panic!("{e}"));
        NodeRoom::of(&node).unwrap_or_else(|| panic!("a node"))
    }

    fn pod(cpu: &str, memory: &str, extra: serde_json::Value) -> Pod {
        let mut pod = json!({
            "metadata": {"name": "web-1"},
            "spec": {"containers": [{"name": "app", "image": "nginx",
                "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}
        });
        merge(&mut pod, extra);
        serde_json::from_value(pod).unwrap_or_else(|e| panic!("{e}"))
    }

    fn merge(target: &mut serde_json::Value, extra: serde_json::Value) {
        match (target, extra) {
            (serde_json::Value::Object(t), serde_json::Value::Object(e)) => {
                for (k, v) in e {
                    merge(t.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (t, e) => *t = e,
        }
    }

    #[test]
    fn requests_count_against_what_is_free_after_the_margin() {
        let mut idc = node(json!({}));
        idc.bind(&pod("2", "2Gi", json!({})));
        assert_eq!(fits(&pod("1", "1Gi", json!({})), &idc, 0.0), Ok(()));
        assert_eq!(
            fits(&pod("2", "1Gi", json!({})), &idc, 0.0),
            Ok(()),
            "exactly full fits"
        );
        // A 10% margin keeps 400m of the 4 cores free: 2 cores no longer fit.
        let short = fits(&pod("2", "1Gi", json!({})), &idc, 0.1).unwrap_err();
        assert_eq!(short, Short::Resources(vec![("cpu", 2000, 1600)]));
        assert_eq!(short.to_string(), "cpu 2000m needed, 1600m free");
    }

    #[test]
    fn init_containers_and_overhead_count_as_the_scheduler_counts_them() {
        let pod = pod(
            "500m",
            "256Mi",
            json!({"spec": {
                "initContainers": [{"name": "init", "image": "busybox", "resources": {"requests": {"cpu": "1", "memory": "64Mi"}}}],
                "overhead": {"cpu": "100m", "memory": "32Mi"}
            }}),
        );
        assert_eq!(
            requests(&pod),
            Amount {
                cpu_millis: 1100,
                memory_bytes: (256 + 32) << 20,
                pods: 1
            }
        );
    }

    #[test]
    fn taints_selectors_affinity_and_cordons_refuse_by_name() {
        let small = || pod("100m", "64Mi", json!({}));
        let tainted =
            node(json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}));
        assert_eq!(
            fits(&small(), &tainted, 0.0),
            Err(Short::Taint("dedicated".into()))
        );
        let tolerating = pod(
            "100m",
            "64Mi",
            json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(fits(&tolerating, &tainted, 0.0), Ok(()));
        let preferred = node(json!({"spec": {"taints": [{"key": "soft", "effect": "PreferNoSchedule"}]}}));
        assert_eq!(
            fits(&small(), &preferred, 0.0),
            Ok(()),
            "a preference is not a filter"
        );

        let selecting = pod("100m", "64Mi", json!({"spec": {"nodeSelector": {"zone": "b"}}}));
        assert_eq!(
            fits(&selecting, &node(json!({})), 0.0),
            Err(Short::Selector("zone".into()))
        );

        let affinity = |operator: &str, values: serde_json::Value| {
            pod(
                "100m",
                "64Mi",
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [{"matchExpressions": [{"key": "rank", "operator": operator, "values": values}]}]}}}}}),
            )
        };
        assert_eq!(fits(&affinity("Gt", json!(["3"])), &node(json!({})), 0.0), Ok(()));
        assert_eq!(
            fits(&affinity("Lt", json!(["3"])), &node(json!({})), 0.0),
            Err(Short::Affinity)
        );
        assert_eq!(
            fits(&affinity("In", json!(["5", "6"])), &node(json!({})), 0.0),
            Ok(())
        );
        assert_eq!(
            fits(&affinity("NotIn", json!(["5"])), &node(json!({})), 0.0),
            Err(Short::Affinity)
        );

        let cordoned = node(json!({"spec": {"unschedulable": true}}));
        assert_eq!(fits(&small(), &cordoned, 0.0), Err(Short::Unschedulable));
        let not_ready = node(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}));
        assert_eq!(fits(&small(), &not_ready, 0.0), Err(Short::Unschedulable));
    }

    #[test]
    fn the_closest_node_is_the_one_shortest_of_resources() {
        let mut a = node(json!({"metadata": {"name": "a"}}));
        a.bind(&pod("3500m", "1Gi", json!({})));
        let mut b = node(json!({"metadata": {"name": "b"}}));
        b.bind(&pod("3", "1Gi", json!({})));
        let c = node(json!({"metadata": {"name": "c"}, "spec": {"unschedulable": true}}));
        let nodes = [c, a, b];
        let Err(Some((closest, short))) = place(&pod("2", "1Gi", json!({})), &nodes, 0.0) else {
            panic!("nothing fits")
        };
        assert_eq!(closest.name, "b");
        assert_eq!(short, Short::Resources(vec![("cpu", 2000, 1000)]));
        let placed = place(&pod("1", "1Gi", json!({})), &nodes, 0.0)
            .map(|n| n.name.clone())
            .ok();
        assert_eq!(placed.as_deref(), Some("b"));
    }
}
