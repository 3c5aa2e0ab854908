//! The filter verb's decision: split the candidate nodes into local and virtual with the node
//! cache, ask the policy where the pod goes, and keep only that side, telling kube-scheduler in
//! words why the other side was refused. Those words end up in the pod's `FailedScheduling`
//! event, so they name the workload, the count and what happens next.
//!
//! Refusals made by policy go into `FailedAndUnresolvableNodes`: preempting pods on a local
//! node cannot change a decision to go to the cloud (and must not be tried for it), nor can it
//! make a virtual node acceptable to a pod that may not burst. kube-scheduler prints both maps
//! the same way in the event.

use tke_policy::{
    BurstDecision, EligibilityConfig, LOCAL_REPLICAS, PlacementInput, SwitchMode, Warning, WorkloadRef,
    controlling_owner, decide,
};
use tokio::time::Instant;

use crate::{
    view::{ClusterView, NodeKind},
    wire::{ExtenderArgs, ExtenderFilterResult},
};

/// The policy settings the extender was started with.
#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    pub mode: SwitchMode,
    pub eligibility: EligibilityConfig,
}

/// The answer for kube-scheduler and what led to it, for logs, metrics and events.
#[derive(Debug, Clone)]
pub struct FilterOutcome {
    pub result: ExtenderFilterResult,
    pub decision: BurstDecision,
    pub owner: Option<WorkloadRef>,
    pub local_count: u32,
    pub local_replicas: Option<u32>,
    pub warnings: Vec<Warning>,
    /// Why the refused side was refused, once (the same text is on each refused node).
    pub summary: String,
}

/// Decides where the pod may go among the candidates and records a local decision in the
/// view's ledger until the pod is seen bound.
pub fn filter(
    view: &mut ClusterView,
    args: &ExtenderArgs,
    policy: &PolicyConfig,
    now: Instant,
) -> FilterOutcome {
    let pod = &args.pod;
    let candidates = args.candidates.names();
    let mut local = Vec::new();
    let mut virtual_nodes = Vec::new();
    let mut unknown = Vec::new();
    for name in candidates {
        match view.node_kind(name) {
            Some(NodeKind::Local) => local.push(name),
            Some(NodeKind::Virtual) => virtual_nodes.push(name),
            None => unknown.push(name),
        }
    }

    let pod_key = pod_key(pod);
    let owner = controlling_owner(pod);
    let local_count = owner
        .as_ref()
        .map_or(0, |owner| view.local_count(owner, &pod_key, now));
    let eligibility = tke_policy::check(
        pod,
        &|namespace: &str, name: &str| view.claim(namespace, name),
        &policy.eligibility,
    );
    let global = view.global_switch();
    let outcome = decide(&PlacementInput {
        pod,
        global: &global,
        mode: policy.mode,
        eligibility: &eligibility,
        local_count,
        local_node_fits: !local.is_empty(),
    });
    let workload = owner
        .as_ref()
        .map_or_else(|| "this bare pod".to_owned(), ToString::to_string);

    let (passing, refused, why) = match &outcome.decision {
        BurstDecision::Cloud => {
            let why = match outcome.local_replicas {
                Some(wanted) if local_count >= wanted => format!(
                    "{LOCAL_REPLICAS}={wanted} reached for {workload} ({local_count} local): this pod goes to the cloud"
                ),
                _ => format!("{}: this pod goes to the cloud", outcome.summary(local_count)),
            };
            (virtual_nodes, local, why)
        }
        BurstDecision::Local => {
            let why = match outcome.local_replicas {
                Some(wanted) => format!(
                    "{LOCAL_REPLICAS}={wanted} not reached for {workload} ({local_count} local) and a local node \
                     fits: this pod stays local"
                ),
                None => "a local node fits, and local nodes come first: this pod stays local".to_owned(),
            };
            (local, virtual_nodes, why)
        }
        BurstDecision::LocalOnly { reasons } => {
            let reasons: Vec<String> = reasons.iter().map(ToString::to_string).collect();
            (
                local,
                virtual_nodes,
                format!("this pod may not run on a virtual node: {}", reasons.join("; ")),
            )
        }
    };

    match &owner {
        Some(owner) if outcome.decision != BurstDecision::Cloud && !passing.is_empty() => {
            view.pending_local(&pod_key, owner, now);
        }
        _ => view.forget_pending(&pod_key),
    }

    let mut result = ExtenderFilterResult::passing(&args.candidates, &passing);
    for node in refused {
        result
            .failed_and_unresolvable_nodes
            .insert(node.to_owned(), why.clone());
    }
    for node in unknown {
        result.failed_nodes.insert(
            node.to_owned(),
            "the tke-scheduler extender has not seen this node yet; it is tried again when it has".to_owned(),
        );
    }
    FilterOutcome {
        result,
        decision: outcome.decision,
        owner,
        local_count,
        local_replicas: outcome.local_replicas,
        warnings: outcome.warnings,
        summary: why,
    }
}

/// The ledger key: the UID, which is what the pod cache is keyed by; `namespace/name` for a pod
/// without one (hand-made requests), which then only the TTL clears.
fn pod_key(pod: &k8s_openapi::api::core::v1::Pod) -> String {
    match pod.metadata.uid.as_deref().filter(|uid| !uid.is_empty()) {
        Some(uid) => uid.to_owned(),
        None => format!(
            "{}/{}",
            tke_policy::workload::namespace_of(pod),
            pod.metadata.name.as_deref().unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Toleration};
    use kube::runtime::watcher::Event;
    use serde_json::json;

    use super::*;
    use crate::wire::Candidates;

    const TTL: Duration = Duration::from_secs(60);

    fn node(name: &str, is_virtual: bool) -> Node {
        let labels = if is_virtual {
            json!({"node.kubernetes.io/instance-type": "eklet"})
        } else {
            json!({"kubernetes.io/hostname": name})
        };
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).expect("node fixture")
    }

    /// A view that has listed two local nodes and one virtual node, no pods, no ConfigMap.
    fn view() -> ClusterView {
        let mut view = ClusterView::new("kube-system", TTL);
        view.on_node(Event::Init);
        for node in [
            node("idc-1", false),
            node("idc-2", false),
            node("eklet-subnet-1", true),
        ] {
            view.on_node(Event::InitApply(node));
        }
        view.on_node(Event::InitDone);
        view.on_pod(Event::InitDone);
        view.on_config_map(Event::InitDone);
        view
    }

    fn pod(name: &str, annotations: BTreeMap<&str, &str>, node: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                "annotations": annotations,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc",
                                     "uid": "rs-web-abc", "controller": true}],
            },
            "spec": {"containers": [{"name": "web", "image": "nginx"}], "nodeName": node},
            "status": {"phase": if node.is_some() { "Running" } else { "Pending" }},
        }))
        .expect("pod fixture")
    }

    fn local_replicas(n: &str) -> BTreeMap<&str, &str> {
        [("LOCAL_REPLICAS", n), ("AUTO_SCALE_EKS", "true")].into()
    }

    fn tolerating(mut pod: Pod) -> Pod {
        if let Some(spec) = pod.spec.as_mut() {
            spec.tolerations = Some(vec![Toleration {
                key: Some("eks.tke.cloud.tencent.com/eklet".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Toleration::default()
            }]);
        }
        pod
    }

    fn args(pod: Pod, nodes: &[&str]) -> ExtenderArgs {
        ExtenderArgs {
            pod,
            candidates: Candidates::Names(nodes.iter().map(|n| (*n).to_owned()).collect()),
        }
    }

    const ALL: [&str; 3] = ["idc-1", "idc-2", "eklet-subnet-1"];

    fn passing(outcome: &FilterOutcome) -> Vec<&str> {
        outcome
            .result
            .node_names
            .iter()
            .flatten()
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn pods_up_to_local_replicas_stay_local_and_the_rest_go_to_the_virtual_node() {
        let mut view = view();
        let policy = PolicyConfig::default();
        let now = Instant::now();
        let mut placements = Vec::new();
        for i in 0..4 {
            let pod = tolerating(pod(&format!("web-{i}"), local_replicas("1"), None));
            let outcome = filter(&mut view, &args(pod, &ALL), &policy, now);
            placements.push(passing(&outcome).join(","));
        }
        assert_eq!(
            placements,
            [
                "idc-1,idc-2",
                "eklet-subnet-1",
                "eklet-subnet-1",
                "eklet-subnet-1"
            ]
        );
    }

    #[test]
    fn the_refusal_says_which_workload_reached_local_replicas() {
        let mut view = view();
        view.on_pod(Event::Apply(pod("web-0", local_replicas("1"), Some("idc-1"))));
        // Without the toleration the scheduler's own filter already removed the virtual node.
        let outcome = filter(
            &mut view,
            &args(pod("web-1", local_replicas("1"), None), &["idc-1", "idc-2"]),
            &PolicyConfig::default(),
            Instant::now(),
        );
        assert_eq!(outcome.decision, BurstDecision::Cloud);
        assert_eq!(passing(&outcome), Vec::<&str>::new());
        assert_eq!(
            outcome
                .result
                .failed_and_unresolvable_nodes
                .get("idc-1")
                .map(String::as_str),
            Some(
                "LOCAL_REPLICAS=1 reached for ReplicaSet shop/web-abc (1 local): this pod goes to the cloud"
            )
        );
        assert_eq!(outcome.result.failed_and_unresolvable_nodes.len(), 2);
        assert!(outcome.result.error.is_empty());
    }

    #[test]
    fn a_decision_counts_until_the_cache_shows_the_pod_bound_and_then_only_once() {
        let mut view = view();
        let policy = PolicyConfig::default();
        let now = Instant::now();
        let first = tolerating(pod("web-0", local_replicas("2"), None));
        assert_eq!(
            passing(&filter(&mut view, &args(first.clone(), &ALL), &policy, now)),
            ["idc-1", "idc-2"]
        );
        assert_eq!(view.pending_count(), 1);

        let mut bound = first.clone();
        if let Some(spec) = bound.spec.as_mut() {
            spec.node_name = Some("idc-2".into());
        }
        view.on_pod(Event::Apply(bound));
        assert_eq!(
            view.pending_count(),
            0,
            "the cache accounts for the bound pod now"
        );

        let second = tolerating(pod("web-1", local_replicas("2"), None));
        let outcome = filter(&mut view, &args(second, &ALL), &policy, now);
        assert_eq!(outcome.local_count, 1);
        assert_eq!(passing(&outcome), ["idc-1", "idc-2"]);
        let third = tolerating(pod("web-2", local_replicas("2"), None));
        assert_eq!(
            passing(&filter(&mut view, &args(third, &ALL), &policy, now)),
            ["eklet-subnet-1"]
        );
    }

    #[test]
    fn a_pod_decided_again_is_not_counted_against_itself() {
        let mut view = view();
        let policy = PolicyConfig::default();
        let now = Instant::now();
        let pod = tolerating(pod("web-0", local_replicas("1"), None));
        for attempt in 0..3 {
            let outcome = filter(&mut view, &args(pod.clone(), &ALL), &policy, now);
            assert_eq!(passing(&outcome), ["idc-1", "idc-2"], "attempt {attempt}");
        }
        assert_eq!(view.pending_count(), 1);
    }

    #[test]
    fn a_local_decision_whose_binding_never_shows_stops_counting_after_the_ttl() {
        let mut view = view();
        let policy = PolicyConfig::default();
        let start = Instant::now();
        let lost = tolerating(pod("web-0", local_replicas("1"), None));
        filter(&mut view, &args(lost, &ALL), &policy, start);
        let next = tolerating(pod("web-1", local_replicas("1"), None));
        let before = filter(&mut view, &args(next.clone(), &ALL), &policy, start + TTL / 2);
        assert_eq!(passing(&before), ["eklet-subnet-1"]);
        let after = filter(&mut view, &args(next, &ALL), &policy, start + TTL);
        assert_eq!(passing(&after), ["idc-1", "idc-2"]);
    }

    #[test]
    fn a_deleted_pod_stops_counting_at_once() {
        let mut view = view();
        let policy = PolicyConfig::default();
        let now = Instant::now();
        let gone = tolerating(pod("web-0", local_replicas("1"), None));
        filter(&mut view, &args(gone.clone(), &ALL), &policy, now);
        view.on_pod(Event::Apply(gone.clone()));
        assert_eq!(view.pending_count(), 1, "seen but not bound: still pending");
        view.on_pod(Event::Delete(gone));
        assert_eq!(view.pending_count(), 0);
        let next = tolerating(pod("web-1", local_replicas("1"), None));
        assert_eq!(
            passing(&filter(&mut view, &args(next, &ALL), &policy, now)),
            ["idc-1", "idc-2"]
        );
    }

    #[test]
    fn a_relist_that_misses_a_new_pod_keeps_its_local_decision() {
        let mut view = view();
        let policy = PolicyConfig::default();
        let now = Instant::now();
        filter(
            &mut view,
            &args(tolerating(pod("web-0", local_replicas("1"), None)), &ALL),
            &policy,
            now,
        );
        view.on_pod(Event::Init);
        view.on_pod(Event::InitDone);
        assert_eq!(view.pending_count(), 1);
        let next = tolerating(pod("web-1", local_replicas("1"), None));
        assert_eq!(
            passing(&filter(&mut view, &args(next, &ALL), &policy, now)),
            ["eklet-subnet-1"]
        );
    }

    #[test]
    fn pods_of_another_replica_set_or_on_virtual_or_finished_do_not_count() {
        let mut view = view();
        let mut other = pod("old-0", local_replicas("1"), Some("idc-1"));
        if let Some(owner) = other
            .metadata
            .owner_references
            .as_mut()
            .and_then(|o| o.first_mut())
        {
            owner.uid = "rs-web-old".into();
        }
        view.on_pod(Event::Apply(other));
        view.on_pod(Event::Apply(pod(
            "cloud-0",
            local_replicas("1"),
            Some("eklet-subnet-1"),
        )));
        let mut done = pod("done-0", local_replicas("1"), Some("idc-2"));
        if let Some(status) = done.status.as_mut() {
            status.phase = Some("Succeeded".into());
        }
        view.on_pod(Event::Apply(done));
        let outcome = filter(
            &mut view,
            &args(tolerating(pod("web-1", local_replicas("1"), None)), &ALL),
            &PolicyConfig::default(),
            Instant::now(),
        );
        assert_eq!(outcome.local_count, 0);
        assert_eq!(passing(&outcome), ["idc-1", "idc-2"]);
    }

    #[test]
    fn with_no_local_node_fitting_a_pod_below_local_replicas_bursts() {
        let mut view = view();
        let outcome = filter(
            &mut view,
            &args(
                tolerating(pod("web-0", local_replicas("3"), None)),
                &["eklet-subnet-1"],
            ),
            &PolicyConfig::default(),
            Instant::now(),
        );
        assert_eq!(outcome.decision, BurstDecision::Cloud);
        assert_eq!(passing(&outcome), ["eklet-subnet-1"]);
        assert_eq!(view.pending_count(), 0);
    }

    #[test]
    fn with_the_global_switch_off_pods_beyond_local_replicas_stay_local() {
        let mut view = view();
        let config_map: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "eks-config", "namespace": "kube-system"},
            "data": {"AUTO_SCALE_EKS": "false"},
        }))
        .expect("config map fixture");
        view.on_config_map(Event::Apply(config_map));
        view.on_pod(Event::Apply(pod(
            "web-0",
            [("LOCAL_REPLICAS", "1")].into(),
            Some("idc-1"),
        )));
        let outcome = filter(
            &mut view,
            &args(
                tolerating(pod("web-1", [("LOCAL_REPLICAS", "1")].into(), None)),
                &ALL,
            ),
            &PolicyConfig::default(),
            Instant::now(),
        );
        assert!(matches!(outcome.decision, BurstDecision::LocalOnly { .. }));
        assert_eq!(passing(&outcome), ["idc-1", "idc-2"]);
        let why = outcome
            .result
            .failed_and_unresolvable_nodes
            .get("eklet-subnet-1")
            .cloned()
            .unwrap_or_default();
        assert!(
            why.starts_with("this pod may not run on a virtual node: BurstDisabled:"),
            "{why}"
        );
    }

    #[test]
    fn an_ineligible_pod_never_gets_the_virtual_node_even_when_it_tolerates_it() {
        let mut view = view();
        let mut pod = tolerating(pod("web-0", local_replicas("0"), None));
        pod.metadata.namespace = Some("kube-system".into());
        let outcome = filter(
            &mut view,
            &args(pod.clone(), &["eklet-subnet-1"]),
            &PolicyConfig::default(),
            Instant::now(),
        );
        assert_eq!(passing(&outcome), Vec::<&str>::new());
        let why = outcome
            .result
            .failed_and_unresolvable_nodes
            .get("eklet-subnet-1")
            .cloned()
            .unwrap_or_default();
        assert!(why.contains("ForbiddenNamespace"), "{why}");
        assert_eq!(view.pending_count(), 0, "nothing was sent to a local node");
    }

    #[test]
    fn a_node_the_cache_has_not_seen_is_refused_for_now_not_for_good() {
        let mut view = view();
        let outcome = filter(
            &mut view,
            &args(
                tolerating(pod("web-0", BTreeMap::new(), None)),
                &["idc-1", "idc-new"],
            ),
            &PolicyConfig::default(),
            Instant::now(),
        );
        assert_eq!(passing(&outcome), ["idc-1"]);
        assert!(outcome.result.failed_nodes.contains_key("idc-new"));
        assert!(
            !outcome
                .result
                .failed_and_unresolvable_nodes
                .contains_key("idc-new")
        );
    }

    #[test]
    fn without_local_replicas_local_nodes_come_first() {
        let mut view = view();
        let outcome = filter(
            &mut view,
            &args(tolerating(pod("web-0", BTreeMap::new(), None)), &ALL),
            &PolicyConfig::default(),
            Instant::now(),
        );
        assert_eq!(outcome.decision, BurstDecision::Local);
        assert_eq!(passing(&outcome), ["idc-1", "idc-2"]);
    }
}
