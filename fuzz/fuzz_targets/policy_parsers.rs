//! Feeds arbitrary input to every parser of the burst policy, and to `check`, `decide` and
//! `explain` whenever the input is a Pod in JSON: none may panic, and the same pod must always
//! get the same answer.

#![no_main]

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use libfuzzer_sys::fuzz_target;
use tke_policy::eligibility::parse_port_range;
use tke_policy::{
    AnnotationMatch, ClaimStatus, EligibilityConfig, ExplainInput, PlacementInput, Switch, SwitchMode,
    SwitchSetting, check, decide, explain, parse_local_replicas,
};

/// Every kind of answer a volume lookup can give, chosen by claim name.
fn claims(_namespace: &str, name: &str) -> ClaimStatus {
    match name.len() % 3 {
        0 => ClaimStatus::NotFound,
        1 => ClaimStatus::Unbound,
        _ => ClaimStatus::Bound(Arc::new(PersistentVolume::default())),
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = Switch::parse(Some(&text));
    let _ = parse_local_replicas(Some(&text));
    let _ = parse_port_range(&text);
    let _ = text.parse::<AnnotationMatch>();

    let Ok(pod) = serde_json::from_str::<Pod>(&text) else {
        return;
    };
    let config = EligibilityConfig::default();
    let eligibility = check(&pod, &claims, &config);
    assert_eq!(
        eligibility,
        check(&pod, &claims, &config),
        "check is deterministic"
    );

    let _ = tke_policy::tolerates_virtual_node(&pod);
    let _ = tke_policy::counts_as_local(&pod, |node| node.starts_with("eklet-"));
    let global = SwitchSetting::global("kube-system", None);
    for mode in [SwitchMode::Seed, SwitchMode::LocalOverrides] {
        let input = PlacementInput {
            pod: &pod,
            global: &global,
            mode,
            eligibility: &eligibility,
            local_count: u32::try_from(data.len()).unwrap_or(u32::MAX),
            local_node_fits: data.len() % 2 == 0,
        };
        let outcome = decide(&input);
        assert_eq!(outcome, decide(&input), "decide is deterministic");
        let report = explain(&ExplainInput {
            pod: &pod,
            global: &global,
            mode,
            eligibility: &eligibility,
            local_count: input.local_count,
            local_node_fits: None,
        });
        let _ = report.to_string();
        let _ = serde_json::to_string(&report);
    }
});
