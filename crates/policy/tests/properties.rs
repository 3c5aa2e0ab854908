//! Properties: the parsers take any text without panicking, and `check`, `decide` and `explain`
//! take any pod built from ports, probes, sysctls, annotations, owners and volumes, always
//! answering the same way and never contradicting SPEC §2.2.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EphemeralVolumeSource, GRPCAction, HTTPGetAction, PersistentVolume,
    PersistentVolumeClaimTemplate, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec,
    Probe, Sysctl, TCPSocketAction, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;
use serde_json::json;
use tke_policy::eligibility::{is_reserved_port, overlaps_reserved_ports, parse_port_range};
use tke_policy::{
    BurstDecision, ClaimStatus, EligibilityConfig, ExplainInput, PlacementInput, Reason, Switch, SwitchMode,
    SwitchSetting, burst_allowed, check, decide, explain, parse_local_replicas,
};

proptest! {
    #[test]
    fn switch_parsing_accepts_true_and_false_in_any_case_and_padding(
        word in prop_oneof![Just("true"), Just("false")],
        upper in proptest::collection::vec(any::<bool>(), 5),
        before in "[ \t\n]{0,3}",
        after in "[ \t\n]{0,3}",
    ) {
        let cased: String = word
            .chars()
            .zip(upper.iter().cycle())
            .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
            .collect();
        let expected = if word == "true" { Switch::On } else { Switch::Off };
        prop_assert_eq!(Switch::parse(Some(&format!("{before}{cased}{after}"))), Ok(expected));
    }

    #[test]
    fn any_other_switch_text_is_reported_with_its_value(text in any::<String>()) {
        let word = text.trim().to_ascii_lowercase();
        match Switch::parse(Some(&text)) {
            Ok(_) => prop_assert!(word == "true" || word == "false", "accepted {:?}", text),
            Err(invalid) => {
                prop_assert!(word != "true" && word != "false");
                prop_assert_eq!(invalid.value, text);
            }
        }
    }

    #[test]
    fn local_replicas_reads_back_every_number_and_rejects_everything_else(
        number in any::<u32>(),
        pad in "[ \t]{0,2}",
        text in any::<String>(),
    ) {
        prop_assert_eq!(parse_local_replicas(Some(&format!("{pad}{number}{pad}"))), Ok(Some(number)));
        if let Ok(Some(parsed)) = parse_local_replicas(Some(&text)) {
            prop_assert!(text.trim().bytes().all(|b| b.is_ascii_digit()), "accepted {:?}", text);
            prop_assert_eq!(text.trim().trim_start_matches('0').parse::<u32>().unwrap_or(0), parsed);
        }
    }

    #[test]
    fn the_port_range_parser_never_panics_and_reads_back_valid_ranges(
        text in any::<String>(),
        low in 1u16..=65535,
        high in 1u16..=65535,
        separator in "[ \t]{1,3}",
    ) {
        let _ = parse_port_range(&text);
        let (low, high) = (low.min(high), low.max(high));
        prop_assert_eq!(parse_port_range(&format!("{low}{separator}{high}")), Ok((low, high)));
        let brute_force = (low..=high).any(|port| is_reserved_port(i32::from(port)));
        prop_assert_eq!(overlaps_reserved_ports(low, high), brute_force);
    }

    #[test]
    fn check_is_deterministic_and_lists_violations_in_rule_order(pod in pods()) {
        let config = EligibilityConfig::default();
        let first = check(&pod, &claims, &config);
        prop_assert_eq!(&check(&pod, &claims, &config), &first);
        let reasons: Vec<Reason> = first.violations.iter().map(|violation| violation.reason).collect();
        let mut sorted = reasons.clone();
        sorted.sort();
        prop_assert_eq!(&reasons, &sorted);
        prop_assert!(!reasons.contains(&Reason::BurstDisabled));
        prop_assert!(first.violations.iter().all(|violation| !violation.message.is_empty()));
    }

    #[test]
    fn decide_is_deterministic_and_follows_the_local_replicas_rules(
        pod in pods(),
        global in prop_oneof![Just(None), Just(Some("true")), Just(Some("false")), Just(Some("maybe"))],
        mode in prop_oneof![Just(SwitchMode::Seed), Just(SwitchMode::LocalOverrides)],
        local_count in prop_oneof![0u32..5, any::<u32>()],
        local_node_fits in any::<bool>(),
    ) {
        let config_map = global.map(|value| {
            serde_json::from_value(json!({ "metadata": { "name": "eks-config" }, "data": { "AUTO_SCALE_EKS": value } }))
                .expect("ConfigMap")
        });
        let global = SwitchSetting::global("kube-system", config_map.as_ref());
        let eligibility = check(&pod, &claims, &EligibilityConfig::default());
        let input = PlacementInput { pod: &pod, global: &global, mode, eligibility: &eligibility, local_count, local_node_fits };
        let outcome = decide(&input);
        prop_assert_eq!(&decide(&input), &outcome);

        let local = SwitchSetting::local(&pod);
        let allowed = burst_allowed(global.value, local.value, mode);
        prop_assert_eq!(outcome.permission.allowed, allowed);
        match &outcome.decision {
            BurstDecision::LocalOnly { reasons } => {
                prop_assert!(!allowed || !eligibility.is_eligible());
                prop_assert_eq!(reasons.first().map(|v| v.reason) == Some(Reason::BurstDisabled), !allowed);
            }
            BurstDecision::Local => {
                prop_assert!(allowed && eligibility.is_eligible() && local_node_fits);
                prop_assert!(outcome.local_replicas.is_none_or(|wanted| local_count < wanted));
            }
            BurstDecision::Cloud => {
                prop_assert!(allowed && eligibility.is_eligible());
                prop_assert!(!local_node_fits || outcome.local_replicas.is_some_and(|wanted| local_count >= wanted));
            }
        }

        let report = explain(&ExplainInput {
            pod: &pod,
            global: &global,
            mode,
            eligibility: &eligibility,
            local_count,
            local_node_fits: Some(local_node_fits),
        });
        prop_assert_eq!(report.rules.len(), Reason::ELIGIBILITY_RULES.len());
        prop_assert_eq!(report.eligible, eligibility.is_eligible());
        prop_assert!(serde_json::to_string(&report).is_ok());
        prop_assert!(!report.to_string().is_empty());
    }
}

/// Claims the generated pods may name: one of each kind of answer.
fn claims(_namespace: &str, name: &str) -> ClaimStatus {
    let volume = |spec: serde_json::Value| -> Arc<PersistentVolume> {
        Arc::new(
            serde_json::from_value(json!({ "metadata": { "name": format!("pv-{name}") }, "spec": spec }))
                .expect("PV"),
        )
    };
    match name {
        "nfs" => ClaimStatus::Bound(volume(json!({ "nfs": { "server": "10.0.0.2", "path": "/" } }))),
        "cbs" => ClaimStatus::Bound(volume(
            json!({ "csi": { "driver": "com.tencent.cloud.csi.cbs", "volumeHandle": "d" } }),
        )),
        "ebs" => ClaimStatus::Bound(volume(json!({ "awsElasticBlockStore": { "volumeID": "v" } }))),
        "pending" => ClaimStatus::Unbound,
        _ => ClaimStatus::NotFound,
    }
}

fn port() -> impl Strategy<Value = i32> {
    prop_oneof![any::<i32>(), 60990..61010i32, 65525..65545i32, 1..1024i32]
}

fn port_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("http".to_owned()),
        Just("admin".to_owned()),
        Just("missing".to_owned()),
        "[0-9]{1,6}",
        ".{0,8}"
    ]
}

fn probe() -> impl Strategy<Value = Option<Probe>> {
    let target = prop_oneof![
        port().prop_map(IntOrString::Int),
        port_name().prop_map(IntOrString::String)
    ];
    let action = prop_oneof![
        target.clone().prop_map(|port| Probe {
            http_get: Some(HTTPGetAction {
                port,
                ..Default::default()
            }),
            ..Default::default()
        }),
        target.prop_map(|port| Probe {
            tcp_socket: Some(TCPSocketAction { port, host: None }),
            ..Default::default()
        }),
        port().prop_map(|port| Probe {
            grpc: Some(GRPCAction { port, service: None }),
            ..Default::default()
        }),
    ];
    proptest::option::of(action)
}

fn container() -> impl Strategy<Value = Container> {
    let declared = (
        proptest::option::of(port_name()),
        port(),
        proptest::option::of(port()),
    )
        .prop_map(|(name, container_port, host_port)| ContainerPort {
            name,
            container_port,
            host_port,
            ..Default::default()
        });
    (
        "[a-z]{1,6}",
        proptest::collection::vec(declared, 0..3),
        probe(),
        probe(),
        probe(),
    )
        .prop_map(
            |(name, ports, liveness_probe, readiness_probe, startup_probe)| Container {
                name,
                ports: Some(ports),
                liveness_probe,
                readiness_probe,
                startup_probe,
                ..Default::default()
            },
        )
}

fn sysctl() -> impl Strategy<Value = Sysctl> {
    let name = prop_oneof![
        Just("net.ipv4.ip_local_port_range".to_owned()),
        Just("net/ipv4/ip_local_port_range".to_owned()),
        Just("net.core.somaxconn".to_owned()),
    ];
    let value = prop_oneof![
        (port(), port()).prop_map(|(low, high)| format!("{low} {high}")),
        any::<String>()
    ];
    (name, value).prop_map(|(name, value)| Sysctl { name, value })
}

fn volume() -> impl Strategy<Value = Volume> {
    let claim = prop_oneof![
        Just("nfs"),
        Just("cbs"),
        Just("ebs"),
        Just("pending"),
        Just("absent")
    ];
    (claim, any::<bool>()).prop_map(|(claim, ephemeral)| {
        if ephemeral {
            Volume {
                name: claim.to_owned(),
                ephemeral: Some(EphemeralVolumeSource {
                    volume_claim_template: Some(PersistentVolumeClaimTemplate::default()),
                }),
                ..Default::default()
            }
        } else {
            Volume {
                name: format!("vol-{claim}"),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.to_owned(),
                    read_only: None,
                }),
                ..Default::default()
            }
        }
    })
}

fn annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
    let key = prop_oneof![
        Just("AUTO_SCALE_EKS"),
        Just("LOCAL_REPLICAS"),
        Just("tke.cloud.tencent.com/vpc-ip-claim-delete-policy"),
        Just("k8s.v1.cni.galaxy.io/release-policy"),
        Just("tke.cloud.tencent.com/eni-ip-pool"),
        Just("example.com/other"),
    ];
    let value = prop_oneof![
        Just("true".to_owned()),
        Just(" FALSE ".to_owned()),
        Just("never".to_owned()),
        "[0-9]{0,12}",
        "-?[0-9]{1,3}",
        any::<String>(),
    ];
    proptest::collection::btree_map(key.prop_map(str::to_owned), value, 0..5)
}

fn owner() -> impl Strategy<Value = Option<OwnerReference>> {
    let kind = prop_oneof![
        Just("ReplicaSet"),
        Just("DaemonSet"),
        Just("StatefulSet"),
        Just("Job")
    ];
    proptest::option::of(
        (kind, any::<bool>()).prop_map(|(kind, controller)| OwnerReference {
            api_version: "apps/v1".to_owned(),
            kind: kind.to_owned(),
            name: "owner".to_owned(),
            uid: format!("uid-{kind}"),
            controller: Some(controller),
            block_owner_deletion: None,
        }),
    )
}

fn pods() -> impl Strategy<Value = Pod> {
    let namespace = prop_oneof![Just("default"), Just("kube-system"), Just("shop")];
    (
        namespace,
        annotations(),
        owner(),
        proptest::collection::vec(container(), 1..3),
        proptest::collection::vec(container(), 0..2),
        proptest::collection::vec(sysctl(), 0..3),
        proptest::collection::vec(volume(), 0..3),
    )
        .prop_map(
            |(namespace, annotations, owner, containers, init_containers, sysctls, volumes)| Pod {
                metadata: ObjectMeta {
                    name: Some("pod".to_owned()),
                    namespace: Some(namespace.to_owned()),
                    annotations: Some(annotations),
                    owner_references: owner.map(|owner| vec![owner]),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    containers,
                    init_containers: Some(init_containers),
                    security_context: Some(PodSecurityContext {
                        sysctls: Some(sysctls),
                        ..Default::default()
                    }),
                    volumes: Some(volumes),
                    ..Default::default()
                }),
                status: None,
            },
        )
}
