//! The chart README's table of each component's metrics against that component's real registry,
//! both ways (every exported metric documented with its type and labels, every documented one
//! exported), and the naming scheme the README states, so neither can drift from the code.

use std::collections::BTreeMap;

use tke_policy::Switch;

/// name as queried (counters with `_total`) → (type, label names).
type Families = BTreeMap<String, (String, Vec<String>)>;

fn readme() -> String {
    let path = tke_testbed::workspace_root().join("charts/tke-resilience/README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The table between `<!-- {marker}: begin -->` and `<!-- {marker}: end -->` in the chart README.
fn documented(marker: &str) -> Families {
    let readme = readme();
    let table = readme
        .split_once(&format!("<!-- {marker}: begin -->"))
        .and_then(|(_, rest)| rest.split_once(&format!("<!-- {marker}: end -->")))
        .map(|(table, _)| table)
        .unwrap_or_else(|| panic!("the chart README has no {marker} table"));
    let cell = |text: &str| text.trim().trim_matches('`').to_owned();
    table
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().strip_prefix("| `")?.split('|').collect();
            let labels = cells
                .get(2)?
                .split(',')
                .map(cell)
                .filter(|l| !l.is_empty())
                .collect();
            Some((cell(cells.first()?), (cell(cells.get(1)?), labels)))
        })
        .collect()
}

/// The families of an exposition, from its `# TYPE` lines and the first sample of each (a
/// labelled family shows only once it has a series, so the caller gives each one).
fn exported(text: &str) -> Families {
    text.lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split(' ');
            let (family, kind) = (words.next()?, words.next()?);
            let name = match kind {
                "counter" => format!("{family}_total"),
                _ => family.to_owned(),
            };
            // A histogram's own label (`le`) is not the family's.
            let labels = match kind {
                "histogram" => Vec::new(),
                _ => text
                    .lines()
                    .find_map(|l| l.strip_prefix(&name)?.strip_prefix('{'))
                    .map(|labels| {
                        labels
                            .split(',')
                            .filter_map(|pair| pair.split_once('=').map(|(k, _)| k.to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            Some((name, (kind.to_owned(), labels)))
        })
        .collect()
}

fn assert_documented(marker: &str, exposition: &str) {
    let (documented, exported) = (documented(marker), exported(exposition));
    let undocumented: Vec<_> = exported.keys().filter(|n| !documented.contains_key(*n)).collect();
    let gone: Vec<_> = documented.keys().filter(|n| !exported.contains_key(*n)).collect();
    assert!(
        undocumented.is_empty() && gone.is_empty(),
        "{marker}: exported but not in the README: {undocumented:?}; in the README but not exported: {gone:?}"
    );
    for (name, kind_and_labels) in &exported {
        assert_eq!(
            documented.get(name),
            Some(kind_and_labels),
            "{name}: the README's (type, labels) against the exported ones"
        );
    }
}

/// eklet's registry with a series in every labelled family.
fn eklet() -> String {
    use tke_eklet::{metrics::*, usage::UsageLabels};
    let metrics = Metrics::new();
    let pods = PodLabels {
        node: "eklet-subnet-a".into(),
        phase: "Running".into(),
    };
    metrics.pods.get_or_create(&pods).set(1);
    let action = ActionLabels {
        action: "create".into(),
    };
    metrics.cloud_calls.get_or_create(&action).inc();
    let error = ErrorLabels {
        action: "create".into(),
        code: "InternalError".into(),
    };
    metrics.cloud_errors.get_or_create(&error).inc();
    metrics.refused("SubnetCordoned");
    for family in [
        &metrics.usage.cpu_core_seconds,
        &metrics.usage.memory_byte_seconds,
        &metrics.usage.gpu_seconds,
        &metrics.usage.pod_seconds,
    ] {
        family.get_or_create(&UsageLabels::default()).inc_by(1.0);
    }
    metrics.render()
}

fn eks_admission() -> String {
    use tke_admission::metrics::*;
    let metrics = Metrics::new();
    metrics.decided(TOLERATED, "DefaultOn");
    let error = ErrorLabels {
        error: "conflict".into(),
    };
    metrics.reconcile_errors.get_or_create(&error).inc();
    metrics.global_switch(Switch::On);
    metrics.render()
}

fn extender() -> String {
    let metrics = tke_extender::metrics::Metrics::new();
    metrics.decided("Cloud");
    metrics.rejected("not_ready");
    metrics.render()
}

fn rebalance() -> String {
    let metrics = tke_rebalance::metrics::Metrics::new();
    metrics.moved("moved");
    metrics.skip("Budget");
    metrics.render()
}

#[test]
fn the_chart_readme_lists_every_metric_eklet_exports_with_its_type_and_labels() {
    assert_documented("eklet-metrics", &eklet());
}

#[test]
fn the_chart_readme_lists_every_metric_eks_admission_exports_with_its_type_and_labels() {
    assert_documented("eks-admission-metrics", &eks_admission());
}

#[test]
fn the_chart_readme_lists_every_metric_the_extender_exports_with_its_type_and_labels() {
    assert_documented("extender-metrics", &extender());
}

#[test]
fn the_chart_readme_lists_every_metric_the_rebalancer_exports_with_its_type_and_labels() {
    assert_documented("rebalance-metrics", &rebalance());
}

#[test]
fn every_component_follows_the_one_naming_scheme() {
    let version = format!("{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    for (prefix, exposition, leads) in [
        ("eklet", eklet(), true),
        ("eks_admission", eks_admission(), true),
        ("tke_extender", extender(), false),
        ("tke_rebalance", rebalance(), true),
    ] {
        let families = exported(&exposition);
        for (name, (kind, labels)) in &families {
            assert!(name.starts_with(&format!("{prefix}_")), "{name} lacks {prefix}_");
            if kind == "histogram" {
                assert!(
                    name.ends_with("_seconds") || name.ends_with("_bytes"),
                    "{name}: a histogram in a base unit (times in seconds, sizes in bytes)"
                );
            }
            // Per-object labels would grow a series for every pod that ever ran.
            for unbounded in ["pod", "uid", "name", "instance_id", "sandbox"] {
                assert!(
                    !labels.iter().any(|l| l == unbounded),
                    "{name} has a {unbounded} label"
                );
            }
        }
        assert!(
            exposition.contains(&format!("{prefix}_build_info{version}")),
            "{prefix}_build_info{version} missing:\n{exposition}"
        );
        assert_eq!(
            families.contains_key(&format!("{prefix}_leader")),
            leads,
            "{prefix}_leader is exported by the components that hold a lease"
        );
    }
}

/// The aim for a scrape at 1000 cloud pods is under 1 MiB. The pods themselves add no
/// series (no label names a pod); what grows is the usage counters, one series per namespace and
/// workload each. The worst case for 1000 pods is 1000 workloads, each with GPUs, beside every
/// refusal reason, every cloud action failing with a few codes and ten virtual nodes.
#[test]
fn a_thousand_cloud_pods_of_a_thousand_workloads_make_a_scrape_under_one_mebibyte() {
    use tke_eklet::{metrics::*, usage::UsageLabels};
    let metrics = Metrics::new();
    for node in 0..10 {
        for phase in ["Pending", "Running", "Succeeded", "Failed", "Unknown"] {
            let labels = PodLabels {
                node: format!("eklet-subnet-{node:08x}"),
                phase: phase.into(),
            };
            metrics.pods.get_or_create(&labels).set(100);
        }
    }
    for action in [
        "create",
        "delete",
        "describe",
        "find",
        "list",
        "refresh_files",
        "logs",
        "events",
        "stats",
        "exec",
        "attach",
        "port_forward",
    ] {
        for code in [
            "InternalError",
            "RequestLimitExceeded",
            "ResourcesSoldOut",
            "InvalidParameter",
        ] {
            let labels = ErrorLabels {
                action: action.into(),
                code: code.into(),
            };
            metrics.cloud_errors.get_or_create(&labels).inc();
        }
    }
    for reason in tke_policy::Reason::ELIGIBILITY_RULES {
        metrics.refused(reason.as_str());
    }
    for reason in [
        "SubnetCordoned",
        "InvalidResolvConf",
        "UnsupportedByProvider",
        "ResourcesSoldOut",
    ] {
        metrics.refused(reason);
    }
    for workload in 0..1000 {
        let labels = UsageLabels {
            namespace: format!("team-{:02}-production", workload % 40),
            workload_kind: "Deployment".into(),
            workload: format!("service-{workload:04}-frontend-api"),
        };
        for family in [
            &metrics.usage.cpu_core_seconds,
            &metrics.usage.memory_byte_seconds,
            &metrics.usage.gpu_seconds,
            &metrics.usage.pod_seconds,
        ] {
            family.get_or_create(&labels).inc_by(123_456.789);
        }
    }
    let text = metrics.render();
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    println!("{} bytes, {series} series", text.len());
    assert!(series > 4000, "every workload's usage is in the exposition");
    assert!(text.len() < 1 << 20, "{} bytes, {series} series", text.len());
}
