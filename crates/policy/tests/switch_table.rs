//! The `AUTO_SCALE_EKS` switch table of SPEC §2.1, row by row, in both modes.

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use serde_json::json;
use tke_policy::switch::SwitchSource;
use tke_policy::{DecidedBy, Switch, SwitchMode, SwitchSetting, burst_allowed, burst_permission};

use Switch::{Off, On, Undefined};

/// (row name, global, local, allowed) — the seed's table, in its order.
const SEED_TABLE: [(&str, Switch, Switch, bool); 9] = [
    ("global true, local false", On, Off, true),
    ("global true, local undefined", On, Undefined, true),
    ("global true, local true", On, On, true),
    ("global false, local false", Off, Off, false),
    ("global false, local undefined", Off, Undefined, false),
    ("global false, local true", Off, On, true),
    ("global undefined, local false", Undefined, Off, true),
    ("global undefined, local undefined", Undefined, Undefined, true),
    ("global undefined, local true", Undefined, On, true),
];

/// The chart README's rule: the local value takes precedence over the global one.
const LOCAL_OVERRIDES_TABLE: [(&str, Switch, Switch, bool); 9] = [
    ("global true, local false", On, Off, false),
    ("global true, local undefined", On, Undefined, true),
    ("global true, local true", On, On, true),
    ("global false, local false", Off, Off, false),
    ("global false, local undefined", Off, Undefined, false),
    ("global false, local true", Off, On, true),
    ("global undefined, local false", Undefined, Off, false),
    ("global undefined, local undefined", Undefined, Undefined, true),
    ("global undefined, local true", Undefined, On, true),
];

#[test]
fn the_default_mode_follows_the_seed_switch_table_row_by_row() {
    assert_eq!(SwitchMode::default(), SwitchMode::Seed);
    for (row, global, local, allowed) in SEED_TABLE {
        assert_eq!(
            burst_allowed(global, local, SwitchMode::Seed),
            allowed,
            "seed table row: {row}"
        );
    }
}

#[test]
fn with_local_switch_overrides_a_workloads_own_value_wins() {
    let mode = SwitchMode::from_local_switch_overrides(true);
    assert_eq!(mode, SwitchMode::LocalOverrides);
    assert_eq!(SwitchMode::from_local_switch_overrides(false), SwitchMode::Seed);
    for (row, global, local, allowed) in LOCAL_OVERRIDES_TABLE {
        assert_eq!(
            burst_allowed(global, local, mode),
            allowed,
            "local-overrides row: {row}"
        );
    }
}

#[test]
fn the_two_modes_differ_only_where_a_workload_says_false() {
    for ((row, global, local, seed), (_, _, _, overrides)) in
        SEED_TABLE.into_iter().zip(LOCAL_OVERRIDES_TABLE)
    {
        assert_eq!(seed != overrides, local == Off && global != Off, "row: {row}");
    }
}

#[test]
fn switch_values_are_true_or_false_in_any_case_with_whitespace_ignored() {
    for (text, expected) in [
        ("true", On),
        ("TRUE", On),
        (" True\n", On),
        ("false", Off),
        ("\tFaLsE ", Off),
    ] {
        assert_eq!(Switch::parse(Some(text)), Ok(expected), "{text:?}");
    }
    assert_eq!(Switch::parse(None), Ok(Undefined));
}

#[test]
fn any_other_switch_value_is_an_error_that_names_the_value() {
    for text in ["yes", "1", "", "on", "true false", "ture"] {
        let invalid = Switch::parse(Some(text)).expect_err(text);
        assert_eq!(invalid.value, text);
        assert!(invalid.to_string().contains(&format!("{text:?}")), "{invalid}");
        assert!(invalid.to_string().contains("undefined"), "{invalid}");
    }
}

fn config_map(data: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({ "metadata": { "name": "eks-config", "namespace": "ops" }, "data": data }))
        .expect("ConfigMap")
}

fn annotated(annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({ "metadata": { "name": "web", "annotations": annotations } })).expect("Pod")
}

#[test]
fn the_global_switch_is_read_from_the_eks_config_config_map() {
    let off = SwitchSetting::global("ops", Some(&config_map(json!({ "AUTO_SCALE_EKS": "false" }))));
    assert_eq!(off.value, Off);
    assert_eq!(
        off.source,
        SwitchSource::ConfigMap {
            namespace: "ops".to_owned(),
            exists: true
        }
    );
    assert_eq!(
        off.to_string(),
        "AUTO_SCALE_EKS=false in ConfigMap ops/eks-config"
    );
    assert_eq!(off.warning(), None);
}

#[test]
fn a_missing_config_map_or_key_leaves_the_global_switch_undefined_without_a_warning() {
    let missing = SwitchSetting::global("kube-system", None);
    assert_eq!((missing.value, missing.warning()), (Undefined, None));
    assert_eq!(
        missing.to_string(),
        "ConfigMap kube-system/eks-config does not exist (undefined)"
    );
    let without_key = SwitchSetting::global("ops", Some(&config_map(json!({ "OTHER": "x" }))));
    assert_eq!((without_key.value, without_key.warning()), (Undefined, None));
    assert!(
        without_key.to_string().contains("has no AUTO_SCALE_EKS key"),
        "{without_key}"
    );
}

#[test]
fn an_unreadable_global_switch_is_undefined_and_warns_with_the_value() {
    let typo = SwitchSetting::global("ops", Some(&config_map(json!({ "AUTO_SCALE_EKS": "flase" }))));
    assert_eq!(typo.value, Undefined);
    let warning = typo.warning().expect("a warning");
    assert!(warning.to_string().contains("\"flase\""), "{warning}");
    assert!(typo.to_string().contains("\"flase\""), "{typo}");
}

#[test]
fn the_local_switch_is_read_from_the_pod_annotation() {
    let on = SwitchSetting::local(&annotated(json!({ "AUTO_SCALE_EKS": " TRUE " })));
    assert_eq!((on.value, on.source.clone()), (On, SwitchSource::PodAnnotation));
    assert_eq!(on.to_string(), "pod annotation AUTO_SCALE_EKS=true");
    let absent = SwitchSetting::local(&annotated(json!({})));
    assert_eq!((absent.value, absent.warning()), (Undefined, None));
    let bad = SwitchSetting::local(&annotated(json!({ "AUTO_SCALE_EKS": "maybe" })));
    assert_eq!(bad.value, Undefined);
    assert!(bad.warning().is_some_and(|warning| warning.value == "maybe"));
}

#[test]
fn the_permission_says_which_switch_decided_and_where_it_was_read() {
    let global_off = SwitchSetting::global(
        "kube-system",
        Some(&config_map(json!({ "AUTO_SCALE_EKS": "false" }))),
    );
    let local_on = SwitchSetting::local(&annotated(json!({ "AUTO_SCALE_EKS": "true" })));
    let local_absent = SwitchSetting::local(&annotated(json!({})));

    let refused = burst_permission(&global_off, &local_absent, SwitchMode::Seed);
    assert!(!refused.allowed);
    assert_eq!(refused.decided_by, DecidedBy::Global);
    assert!(
        refused
            .because
            .starts_with("AUTO_SCALE_EKS=false in ConfigMap kube-system/eks-config"),
        "{}",
        refused.because
    );

    let overridden = burst_permission(&global_off, &local_on, SwitchMode::Seed);
    assert!(overridden.allowed);
    assert_eq!(overridden.decided_by, DecidedBy::Local);
    assert!(
        overridden
            .because
            .starts_with("pod annotation AUTO_SCALE_EKS=true"),
        "{}",
        overridden.because
    );

    let by_default = burst_permission(
        &SwitchSetting::global("kube-system", None),
        &local_absent,
        SwitchMode::Seed,
    );
    assert!(by_default.allowed);
    assert_eq!(by_default.decided_by, DecidedBy::Default);
}

#[test]
fn in_the_seed_table_a_workloads_false_is_ignored_and_the_permission_says_so() {
    let global_on = SwitchSetting::global(
        "kube-system",
        Some(&config_map(json!({ "AUTO_SCALE_EKS": "true" }))),
    );
    let local_off = SwitchSetting::local(&annotated(json!({ "AUTO_SCALE_EKS": "false" })));
    let seed = burst_permission(&global_on, &local_off, SwitchMode::Seed);
    assert!(seed.allowed);
    assert!(
        seed.because.contains("--local-switch-overrides"),
        "{}",
        seed.because
    );
    let overrides = burst_permission(&global_on, &local_off, SwitchMode::LocalOverrides);
    assert!(!overrides.allowed);
    assert_eq!(overrides.decided_by, DecidedBy::Local);
    assert!(
        overrides.because.contains("takes precedence"),
        "{}",
        overrides.because
    );
}
