//! Placement decisions (SPEC §2.2) and the `explain` report built from them.

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use serde_json::{Value, json};
use tke_policy::explain::Placement;
use tke_policy::{
    BurstDecision, ClaimStatus, Eligibility, EligibilityConfig, ExplainInput, PlacementInput,
    PlacementOutcome, Reason, SwitchMode, SwitchSetting, Warning, check, decide, explain,
};

fn pod(annotations: Value, container_port: u16) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": "nginx-77b9b9bc97-cq9ds",
            "namespace": "default",
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "nginx-77b9b9bc97", "uid": "rs-1",
                "controller": true
            }]
        },
        "spec": { "containers": [{ "name": "nginx", "image": "nginx", "ports": [{ "containerPort": container_port }] }] }
    }))
    .expect("test pod")
}

fn global(value: Option<&str>) -> SwitchSetting {
    let config_map: Option<ConfigMap> = value.map(|value| {
        serde_json::from_value(
            json!({ "metadata": { "name": "eks-config" }, "data": { "AUTO_SCALE_EKS": value } }),
        )
        .expect("ConfigMap")
    });
    SwitchSetting::global("kube-system", config_map.as_ref())
}

fn eligibility(pod: &Pod) -> Eligibility {
    check(
        pod,
        &|_: &str, _: &str| ClaimStatus::NotFound,
        &EligibilityConfig::default(),
    )
}

fn decide_for(
    pod: &Pod,
    global: &SwitchSetting,
    local_count: u32,
    local_node_fits: bool,
) -> PlacementOutcome {
    let eligibility = eligibility(pod);
    decide(&PlacementInput {
        pod,
        global,
        mode: SwitchMode::Seed,
        eligibility: &eligibility,
        local_count,
        local_node_fits,
    })
}

fn reason_codes(decision: &BurstDecision) -> Vec<Reason> {
    match decision {
        BurstDecision::LocalOnly { reasons } => reasons.iter().map(|violation| violation.reason).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn without_local_replicas_pods_go_local_first_and_to_the_cloud_only_when_nothing_local_fits() {
    let pod = pod(json!({}), 80);
    assert_eq!(
        decide_for(&pod, &global(None), 0, true).decision,
        BurstDecision::Local
    );
    assert_eq!(
        decide_for(&pod, &global(None), 0, false).decision,
        BurstDecision::Cloud
    );
    assert_eq!(
        decide_for(&pod, &global(None), 50, true).decision,
        BurstDecision::Local
    );
}

#[test]
fn below_local_replicas_a_pod_goes_local_if_a_local_node_fits_and_otherwise_to_the_cloud() {
    let pod = pod(json!({ "LOCAL_REPLICAS": "2" }), 80);
    let local = decide_for(&pod, &global(None), 1, true);
    assert_eq!(local.decision, BurstDecision::Local);
    assert_eq!(local.local_replicas, Some(2));
    assert_eq!(
        decide_for(&pod, &global(None), 1, false).decision,
        BurstDecision::Cloud
    );
}

#[test]
fn pods_beyond_local_replicas_go_to_the_cloud_even_when_a_local_node_fits() {
    let pod = pod(json!({ "LOCAL_REPLICAS": "2" }), 80);
    for count in [2, 3, u32::MAX] {
        let outcome = decide_for(&pod, &global(None), count, true);
        assert_eq!(outcome.decision, BurstDecision::Cloud, "local count {count}");
        assert!(
            outcome.summary(count).contains("has reached LOCAL_REPLICAS 2"),
            "{}",
            outcome.summary(count)
        );
    }
}

#[test]
fn local_replicas_zero_sends_every_pod_to_the_cloud() {
    let pod = pod(json!({ "LOCAL_REPLICAS": "0" }), 80);
    assert_eq!(
        decide_for(&pod, &global(None), 0, true).decision,
        BurstDecision::Cloud
    );
}

#[test]
fn the_seed_walkthrough_keeps_one_of_four_nginx_pods_local_and_bursts_three() {
    let pod = pod(json!({ "AUTO_SCALE_EKS": "true", "LOCAL_REPLICAS": "1" }), 80);
    let global = global(None);
    let mut local_count = 0;
    let mut placements = Vec::new();
    for _ in 0..4 {
        let decision = decide_for(&pod, &global, local_count, true).decision;
        if decision == BurstDecision::Local {
            local_count += 1;
        }
        placements.push(decision);
    }
    let clouds = placements
        .iter()
        .filter(|decision| **decision == BurstDecision::Cloud)
        .count();
    assert_eq!((local_count, clouds), (1, 3), "{placements:?}");
}

#[test]
fn when_the_switches_forbid_bursting_the_pod_stays_local_only_and_local_replicas_has_no_effect() {
    let pod = pod(json!({ "LOCAL_REPLICAS": "1" }), 80);
    let outcome = decide_for(&pod, &global(Some("false")), 5, false);
    assert_eq!(reason_codes(&outcome.decision), [Reason::BurstDisabled]);
    assert!(!outcome.decision.may_burst());
    let BurstDecision::LocalOnly { reasons } = &outcome.decision else {
        unreachable!("checked above")
    };
    assert!(
        reasons[0]
            .message
            .contains("AUTO_SCALE_EKS=false in ConfigMap kube-system/eks-config"),
        "{}",
        reasons[0].message
    );
    assert!(
        reasons[0].message.contains("AUTO_SCALE_EKS: \"true\""),
        "{}",
        reasons[0].message
    );
    assert_eq!(
        decide_for(&pod, &global(Some("false")), 0, true)
            .decision
            .as_str(),
        "LocalOnly"
    );
}

#[test]
fn a_workloads_true_lets_it_burst_while_the_global_switch_is_false() {
    let pod = pod(json!({ "AUTO_SCALE_EKS": "true" }), 80);
    assert_eq!(
        decide_for(&pod, &global(Some("false")), 0, false).decision,
        BurstDecision::Cloud
    );
}

#[test]
fn with_local_switch_overrides_a_workloads_false_keeps_it_local_only() {
    let pod = pod(json!({ "AUTO_SCALE_EKS": "false" }), 80);
    let eligibility = eligibility(&pod);
    let global = global(Some("true"));
    let input = |mode| PlacementInput {
        pod: &pod,
        global: &global,
        mode,
        eligibility: &eligibility,
        local_count: 0,
        local_node_fits: false,
    };
    assert_eq!(decide(&input(SwitchMode::Seed)).decision, BurstDecision::Cloud);
    let overridden = decide(&input(SwitchMode::LocalOverrides)).decision;
    assert_eq!(reason_codes(&overridden), [Reason::BurstDisabled]);
    let BurstDecision::LocalOnly { reasons } = &overridden else {
        unreachable!("checked above")
    };
    assert!(
        reasons[0]
            .message
            .contains("set the pod template annotation AUTO_SCALE_EKS to \"true\" or remove it")
    );
}

#[test]
fn an_ineligible_pod_stays_local_only_even_when_bursting_is_allowed() {
    let pod = pod(json!({ "AUTO_SCALE_EKS": "true" }), 62000);
    let outcome = decide_for(&pod, &global(None), 0, false);
    assert_eq!(reason_codes(&outcome.decision), [Reason::ReservedPort]);
    assert_eq!(outcome.decision.to_string(), "LocalOnly (ReservedPort)");
}

#[test]
fn a_disabled_and_ineligible_pod_lists_the_switch_first_and_then_every_rule() {
    let pod = pod(json!({}), 62000);
    let outcome = decide_for(&pod, &global(Some("false")), 0, false);
    assert_eq!(
        reason_codes(&outcome.decision),
        [Reason::BurstDisabled, Reason::ReservedPort]
    );
}

#[test]
fn bad_annotations_are_ignored_with_a_warning_each() {
    let pod = pod(json!({ "AUTO_SCALE_EKS": "yes", "LOCAL_REPLICAS": "-1" }), 80);
    let outcome = decide_for(&pod, &global(None), 3, true);
    assert_eq!(
        outcome.decision,
        BurstDecision::Local,
        "LOCAL_REPLICAS counts as unset"
    );
    assert_eq!(outcome.local_replicas, None);
    let reasons: Vec<&str> = outcome.warnings.iter().map(Warning::reason).collect();
    assert_eq!(reasons, ["InvalidAutoScaleEks", "InvalidLocalReplicas"]);
    assert!(
        outcome.warnings[0].to_string().contains("\"yes\""),
        "{}",
        outcome.warnings[0]
    );
    assert!(
        outcome.warnings[1].to_string().contains("\"-1\""),
        "{}",
        outcome.warnings[1]
    );
}

fn explanation(
    pod: &Pod,
    global: &SwitchSetting,
    local_count: u32,
    local_node_fits: Option<bool>,
) -> tke_policy::Explanation {
    let eligibility = eligibility(pod);
    explain(&ExplainInput {
        pod,
        global,
        mode: SwitchMode::Seed,
        eligibility: &eligibility,
        local_count,
        local_node_fits,
    })
}

#[test]
fn explain_lists_every_rule_with_pass_or_fail_and_the_decision() {
    let pod = pod(json!({ "LOCAL_REPLICAS": "1" }), 62000);
    let report = explanation(&pod, &global(Some("false")), 0, None);
    assert_eq!(report.rules.len(), 9);
    let failed: Vec<Reason> = report
        .rules
        .iter()
        .filter(|rule| !rule.passed)
        .map(|rule| rule.code)
        .collect();
    assert_eq!(failed, [Reason::ReservedPort]);
    assert!(!report.eligible);
    assert!(!report.switches.burst_allowed);
    assert_eq!(report.decision.placement, Placement::LocalOnly);
    assert_eq!(report.local_replicas.value, Some(1));
    assert_eq!(
        report.workload.as_ref().map(ToString::to_string).as_deref(),
        Some("ReplicaSet default/nginx-77b9b9bc97")
    );

    let text = report.to_string();
    for line in [
        "Pod:            default/nginx-77b9b9bc97-cq9ds",
        "  global:       AUTO_SCALE_EKS=false in ConfigMap kube-system/eks-config",
        "  FAIL ReservedPort",
        "  pass DaemonsetForbidden",
        "LOCAL_REPLICAS: 1 (local count 0)",
        "Decision:       LocalOnly",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}

#[test]
fn explain_json_names_codes_switch_values_and_placement() {
    let pod = pod(json!({ "AUTO_SCALE_EKS": "true" }), 80);
    let report = explanation(&pod, &global(Some("false")), 0, Some(false));
    let value = serde_json::to_value(&report).expect("serialisable");
    assert_eq!(value["switches"]["global"]["value"], "false");
    assert_eq!(value["switches"]["local"]["value"], "true");
    assert_eq!(value["switches"]["decidedBy"], "local");
    assert_eq!(value["switches"]["mode"], "seed");
    assert_eq!(value["rules"][4]["code"], "ReservedPort");
    assert_eq!(value["rules"][4]["passed"], true);
    assert_eq!(value["decision"]["placement"], "Cloud");
    assert_eq!(value["workload"]["uid"], "rs-1");
}

#[test]
fn explain_without_knowing_local_fit_says_what_happens_either_way() {
    let below = explanation(&pod(json!({ "LOCAL_REPLICAS": "3" }), 80), &global(None), 1, None);
    assert_eq!(below.decision.placement, Placement::LocalFirst);
    assert!(
        below
            .decision
            .summary
            .contains("local count 1 is below LOCAL_REPLICAS 3"),
        "{}",
        below.decision.summary
    );
    let reached = explanation(&pod(json!({ "LOCAL_REPLICAS": "3" }), 80), &global(None), 3, None);
    assert_eq!(reached.decision.placement, Placement::Cloud);
    let known = explanation(&pod(json!({}), 80), &global(None), 0, Some(true));
    assert_eq!(known.decision.placement, Placement::Local);
}

#[test]
fn explain_reports_the_global_switch_warning_and_the_pods_own() {
    let report = explanation(
        &pod(json!({ "LOCAL_REPLICAS": "ten" }), 80),
        &global(Some("flase")),
        0,
        None,
    );
    assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
    assert!(
        report.warnings[0].starts_with("ConfigMap kube-system/eks-config: "),
        "{}",
        report.warnings[0]
    );
    assert!(report.warnings[0].contains("\"flase\""), "{}", report.warnings[0]);
    assert!(report.warnings[1].contains("\"ten\""), "{}", report.warnings[1]);
    assert!(
        report.to_string().contains("LOCAL_REPLICAS: invalid, ignored"),
        "{report}"
    );
}
