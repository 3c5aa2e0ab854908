//! What the rebalancer does with one workload now: move one of its cloud pods home, or the first
//! reason it does not. Pure, like the burst policy: the controller ([`crate::controller`]) and
//! `tke-resilience explain` hand in the same view and get the same answer.
//!
//! A pod is a candidate only when it is Running and Ready on a virtual node because the IDC was
//! full: its workload has no `LOCAL_REPLICAS`, or fewer local pods than that (pods above N are in
//! the cloud by the user's choice). Pods without a controller and DaemonSet pods are never
//! moved, nor pods of a workload with fewer than 2 Ready replicas. One pod per workload at a
//! time: the next waits until the last move's replacement is Running and Ready; a replacement
//! that lands in the cloud again puts the workload in a cool-down.

use std::fmt;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use tke_policy::{
    WorkloadRef, local_replicas,
    workload::{bound_node, is_terminating},
};

use crate::fit::{self, NodeRoom, Short};

/// The pod-template annotation that opts a workload out: `"false"`.
pub const OPT_OUT_ANNOTATION: &str = "tke.cloud.tencent.com/rebalance";

/// The knobs of the decision.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Share (0–1) of each local node's allocatable CPU and memory kept free.
    pub margin: f64,
    /// How long the IDC must have been quiet (no pod went to the cloud, no pod was left
    /// unschedulable) before anything moves.
    pub hold_down: SignedDuration,
    /// How long a workload whose replacement landed in the cloud again is left alone.
    pub cool_down: SignedDuration,
}

/// What the rebalancer remembers of a workload: when a pod of it was last evicted to come home.
/// The rest follows from the pods: whether that move's replacement is Ready, and where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct History {
    pub last_move: Option<Timestamp>,
}

/// Why a workload's cloud pods stay where they are; `reason()` is the stable code in events and
/// metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    /// A DaemonSet's pods, or pods of no controller.
    NotMovable(String),
    OptedOut,
    /// Its local pods already reach `LOCAL_REPLICAS`: the cloud pods are there by choice.
    LocalReplicas {
        local: u32,
        wanted: u32,
    },
    TooFewReady {
        ready: u32,
    },
    /// A pod is starting or stopping, or the last move's replacement is not Ready yet.
    MoveInProgress,
    CoolDown {
        until: Timestamp,
    },
    HoldDown {
        until: Timestamp,
    },
    /// No local node fits the pod now; the closest one and what it is short of.
    NoLocalNodeFits {
        closest: Option<(String, Short)>,
    },
}

impl Skip {
    pub fn reason(&self) -> &'static str {
        match self {
            Skip::NotMovable(_) => "NotMovable",
            Skip::OptedOut => "OptedOut",
            Skip::LocalReplicas { .. } => "LocalReplicas",
            Skip::TooFewReady { .. } => "TooFewReady",
            Skip::MoveInProgress => "MoveInProgress",
            Skip::CoolDown { .. } => "CoolDown",
            Skip::HoldDown { .. } => "HoldDown",
            Skip::NoLocalNodeFits { .. } => "NoLocalNodeFits",
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::NotMovable(kind) => write!(f, "pods of a {kind} are never moved"),
            Skip::OptedOut => write!(f, "the pod template says {OPT_OUT_ANNOTATION}: \"false\""),
            Skip::LocalReplicas { local, wanted } => write!(
                f,
                "{local} local pods reach LOCAL_REPLICAS={wanted}; the cloud pods are there by choice"
            ),
            Skip::TooFewReady { ready } => {
                write!(f, "only {ready} Ready replica(s); a workload needs 2 to move one")
            }
            Skip::MoveInProgress => f.write_str("a pod is starting or stopping; one move at a time"),
            Skip::CoolDown { until } => write!(
                f,
                "the last replacement landed in the cloud again; left alone until {until}"
            ),
            Skip::HoldDown { until } => write!(
                f,
                "the IDC was not quiet long enough (a pod went to the cloud or waited for room); not before {until}"
            ),
            Skip::NoLocalNodeFits {
                closest: Some((node, short)),
            } => {
                write!(f, "no local node fits it now; closest is {node}: {short}")
            }
            Skip::NoLocalNodeFits { closest: None } => {
                f.write_str("no local node fits it now; there is none")
            }
        }
    }
}

/// The decision for one workload.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict<'a> {
    /// Nothing of it runs in the cloud.
    NoCloudPods,
    Skip(Skip),
    /// Evict `pod`; `node` is the local node that fits it now.
    Move {
        pod: &'a Pod,
        node: String,
    },
}

/// A workload and every pod it controls.
#[derive(Debug, Clone)]
pub struct Workload<'a> {
    pub owner: WorkloadRef,
    pub pods: Vec<&'a Pod>,
}

/// What became of the last move's replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacement {
    /// None Running and Ready yet.
    Waiting,
    Local,
    /// It landed on a virtual node again.
    Cloud,
}

pub fn is_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn created(pod: &Pod) -> Option<Timestamp> {
    pod.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// The newest pod created after `moved_at`: where it runs, once it runs. Creation times have
/// whole seconds, so a pod created in the second of the move counts.
pub fn replacement(
    workload: &Workload<'_>,
    moved_at: Timestamp,
    is_virtual: impl Fn(&str) -> bool,
) -> Replacement {
    let second = SignedDuration::from_secs(1);
    let newest = workload
        .pods
        .iter()
        .filter(|p| !is_terminating(p) && created(p).is_some_and(|c| c + second > moved_at))
        .max_by_key(|p| created(p));
    match newest {
        Some(pod) if bound_node(pod).is_some_and(&is_virtual) => Replacement::Cloud,
        Some(pod) if is_ready(pod) => Replacement::Local,
        _ => Replacement::Waiting,
    }
}

/// The last moment the IDC was under pressure: now, if a pod waits as unschedulable; else the
/// latest time a pod was scheduled onto a virtual node.
pub fn pressure<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    is_virtual: impl Fn(&str) -> bool,
    now: Timestamp,
) -> Option<Timestamp> {
    let mut latest: Option<Timestamp> = None;
    for pod in pods {
        if is_terminating(pod) {
            continue;
        }
        let scheduled = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
        let at = match bound_node(pod) {
            Some(node) if is_virtual(node) => scheduled
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0),
            Some(_) => None,
            None => scheduled
                .filter(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
                .map(|_| now),
        };
        if let Some(at) = at {
            latest = Some(latest.map_or(at, |l| l.max(at)));
        }
    }
    latest
}

/// Decides for one workload. `nodes` are the local nodes with what is bound to them now.
pub fn judge<'a>(
    workload: &Workload<'a>,
    history: &History,
    pressure: Option<Timestamp>,
    nodes: &[NodeRoom],
    is_virtual: impl Fn(&str) -> bool,
    now: Timestamp,
    settings: &Settings,
) -> Verdict<'a> {
    let on_virtual = |pod: &Pod| bound_node(pod).is_some_and(&is_virtual);
    let mut cloud: Vec<&'a Pod> = workload
        .pods
        .iter()
        .copied()
        .filter(|p| on_virtual(p) && is_ready(p) && !is_terminating(p))
        .collect();
    if cloud.is_empty() {
        return Verdict::NoCloudPods;
    }
    if !matches!(
        workload.owner.kind.as_str(),
        "ReplicaSet" | "StatefulSet" | "ReplicationController"
    ) {
        return Verdict::Skip(Skip::NotMovable(workload.owner.kind.clone()));
    }
    // The template's annotations are on every pod; the newest pod has the current template.
    cloud.sort_by_key(|p| std::cmp::Reverse(created(p)));
    let newest = cloud[0];
    let annotations = newest.metadata.annotations.as_ref();
    if annotations
        .and_then(|a| a.get(OPT_OUT_ANNOTATION))
        .is_some_and(|v| v.trim() == "false")
    {
        return Verdict::Skip(Skip::OptedOut);
    }
    let local = workload
        .pods
        .iter()
        .filter(|p| !is_terminating(p) && bound_node(p).is_some_and(|n| !is_virtual(n)))
        .count() as u32;
    if let Ok(Some(wanted)) = local_replicas(newest)
        && local >= wanted
    {
        return Verdict::Skip(Skip::LocalReplicas { local, wanted });
    }
    let ready = workload
        .pods
        .iter()
        .filter(|p| !is_terminating(p) && is_ready(p))
        .count() as u32;
    if ready < 2 {
        return Verdict::Skip(Skip::TooFewReady { ready });
    }
    let since_move = history
        .last_move
        .filter(|at| now < *at + settings.cool_down)
        .map(|at| (at, replacement(workload, at, &is_virtual)));
    let settling = workload.pods.iter().any(|p| is_terminating(p) || !is_ready(p));
    if settling || matches!(since_move, Some((_, Replacement::Waiting))) {
        return Verdict::Skip(Skip::MoveInProgress);
    }
    if let Some((at, Replacement::Cloud)) = since_move {
        return Verdict::Skip(Skip::CoolDown {
            until: at + settings.cool_down,
        });
    }
    if let Some(at) = pressure
        && now < at + settings.hold_down
    {
        return Verdict::Skip(Skip::HoldDown {
            until: at + settings.hold_down,
        });
    }
    let mut closest = None;
    for pod in cloud {
        match fit::place(pod, nodes, settings.margin) {
            Ok(node) => {
                return Verdict::Move {
                    pod,
                    node: node.name.clone(),
                };
            }
            Err(near) => {
                if closest.is_none() {
                    closest = near.map(|(node, short)| (node.name.clone(), short));
                }
            }
        }
    }
    Verdict::Skip(Skip::NoLocalNodeFits { closest })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    use super::*;

    const T0: &str = "2026-12-05T10:00:00Z";

    fn at(seconds: i64) -> Timestamp {
        T0.parse::<Timestamp>().unwrap_or_else(|e| panic!("{e}")) + SignedDuration::from_secs(seconds)
    }

    fn settings() -> Settings {
        Settings {
            margin: 0.0,
            hold_down: SignedDuration::from_mins(5),
            cool_down: SignedDuration::from_mins(30),
        }
    }

    fn pod(
        name: &str,
        node: Option<&str>,
        ready: bool,
        created_at: i64,
        annotations: serde_json::Value,
    ) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                "creationTimestamp": at(created_at).to_string(),
                "annotations": annotations,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1",
                                     "uid": "rs-1", "controller": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "nginx",
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]},
            "status": {"phase": if node.is_some() { "Running" } else { "Pending" },
                "conditions": [
                    {"type": "Ready", "status": if ready { "True" } else { "False" }},
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": at(created_at).to_string()}
                ]}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn local_node(name: &str, cpu: &str) -> NodeRoom {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"allocatable": {"cpu": cpu, "memory": "32Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        NodeRoom::of(&node).unwrap_or_else(|| panic!("node"))
    }

    fn is_virtual(node: &str) -> bool {
        node.starts_with("eklet-")
    }

    fn workload(pods: &[Pod]) -> Workload<'_> {
        Workload {
            owner: tke_policy::controlling_owner(&pods[0]).unwrap_or_else(|| panic!("owner")),
            pods: pods.iter().collect(),
        }
    }

    fn verdict(
        pods: &[Pod],
        history: History,
        pressure: Option<Timestamp>,
        nodes: &[NodeRoom],
        now: i64,
    ) -> String {
        match judge(
            &workload(pods),
            &history,
            pressure,
            nodes,
            is_virtual,
            at(now),
            &settings(),
        ) {
            Verdict::NoCloudPods => "none".into(),
            Verdict::Skip(skip) => skip.reason().into(),
            Verdict::Move { pod, node } => format!(
                "move {} to {node}",
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
        }
    }

    fn six_in_the_cloud() -> Vec<Pod> {
        (0..6)
            .map(|i| pod(&format!("web-{i}"), Some("eklet-subnet-a"), true, i, json!({})))
            .collect()
    }

    #[test]
    fn after_the_hold_down_the_newest_cloud_pod_moves_to_a_node_that_fits() {
        let pods = six_in_the_cloud();
        let nodes = [local_node("idc-1", "4")];
        assert_eq!(
            verdict(&pods, History::default(), Some(at(5)), &nodes, 200),
            "HoldDown"
        );
        assert_eq!(
            verdict(&pods, History::default(), Some(at(5)), &nodes, 306),
            "move web-5 to idc-1"
        );
        let full = [local_node("idc-1", "500m")];
        assert_eq!(
            verdict(&pods, History::default(), None, &full, 306),
            "NoLocalNodeFits"
        );
    }

    #[test]
    fn local_replicas_opt_outs_too_few_ready_and_daemon_sets_stay() {
        let with = |annotations: serde_json::Value| -> Vec<Pod> {
            let mut pods: Vec<Pod> = (0..4)
                .map(|i| {
                    pod(
                        &format!("web-{i}"),
                        Some("eklet-subnet-a"),
                        true,
                        i,
                        annotations.clone(),
                    )
                })
                .collect();
            pods.push(pod("web-local-0", Some("idc-1"), true, 9, annotations.clone()));
            pods.push(pod("web-local-1", Some("idc-1"), true, 9, annotations));
            pods
        };
        let nodes = [local_node("idc-2", "64")];
        assert_eq!(
            verdict(
                &with(json!({"LOCAL_REPLICAS": "2"})),
                History::default(),
                None,
                &nodes,
                0
            ),
            "LocalReplicas"
        );
        assert!(
            verdict(
                &with(json!({"LOCAL_REPLICAS": "3"})),
                History::default(),
                None,
                &nodes,
                0
            )
            .starts_with("move")
        );
        assert_eq!(
            verdict(
                &with(json!({OPT_OUT_ANNOTATION: "false"})),
                History::default(),
                None,
                &nodes,
                0
            ),
            "OptedOut"
        );

        let single = [pod("solo", Some("eklet-subnet-a"), true, 0, json!({}))];
        assert_eq!(
            verdict(&single, History::default(), None, &nodes, 0),
            "TooFewReady"
        );

        let mut daemon = six_in_the_cloud();
        for pod in &mut daemon {
            if let Some(owner) = pod.metadata.owner_references.as_mut().and_then(|o| o.first_mut()) {
                owner.kind = "DaemonSet".into();
            }
        }
        assert_eq!(
            verdict(&daemon, History::default(), None, &nodes, 0),
            "NotMovable"
        );
    }

    #[test]
    fn one_move_at_a_time_and_a_replacement_back_in_the_cloud_cools_the_workload_down() {
        let nodes = [local_node("idc-1", "64")];
        let moved = History {
            last_move: Some(at(100)),
        };
        // web-5 was evicted at 100; its replacement is not there yet.
        let mut pods: Vec<Pod> = six_in_the_cloud().into_iter().take(5).collect();
        assert_eq!(verdict(&pods, moved, None, &nodes, 101), "MoveInProgress");
        pods.push(pod("web-6", Some("idc-1"), false, 101, json!({})));
        assert_eq!(
            verdict(&pods, moved, None, &nodes, 102),
            "MoveInProgress",
            "not Ready yet"
        );
        pods.pop();
        pods.push(pod("web-6", Some("idc-1"), true, 101, json!({})));
        assert_eq!(
            replacement(&workload(&pods), at(100), is_virtual),
            Replacement::Local
        );
        // The API writes whole seconds: a pod created 0.4 s after a move reads as the same second.
        let later = at(101) + SignedDuration::from_millis(600);
        assert_eq!(
            replacement(&workload(&pods), later, is_virtual),
            Replacement::Local
        );
        assert!(verdict(&pods, moved, None, &nodes, 103).starts_with("move"));

        pods.pop();
        pods.push(pod("web-6", Some("eklet-subnet-a"), true, 101, json!({})));
        assert_eq!(
            replacement(&workload(&pods), at(100), is_virtual),
            Replacement::Cloud
        );
        assert_eq!(verdict(&pods, moved, None, &nodes, 200), "CoolDown");
        assert!(
            verdict(&pods, moved, None, &nodes, 1901).starts_with("move"),
            "after the cool-down"
        );
    }

    #[test]
    fn pressure_is_now_while_a_pod_is_unschedulable_else_the_last_burst() {
        let mut waiting = pod("w", None, false, 0, json!({}));
        if let Some(conditions) = waiting.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            conditions[1].status = "False".into();
            conditions[1].reason = Some("Unschedulable".into());
        }
        let burst = pod("b", Some("eklet-subnet-a"), true, 40, json!({}));
        let local = pod("l", Some("idc-1"), true, 90, json!({}));
        assert_eq!(pressure([&burst, &local], is_virtual, at(500)), Some(at(40)));
        assert_eq!(pressure([&burst, &waiting], is_virtual, at(500)), Some(at(500)));
        assert_eq!(pressure([&local], is_virtual, at(500)), None);
    }
}
