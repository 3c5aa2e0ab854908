//! What the controller counts and how long bursting takes, served as Prometheus text on
//! `/metrics` next to `/healthz` by `tke_runtime::metrics`. The latency histogram starts at the pod's Unschedulable
//! condition (`lastTransitionTime`, which the API stores in whole seconds, so each observation
//! is up to one second longer than the true delay) and ends when the toleration is written.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tke_policy::Switch;

/// Outcome of a decision, as a metric label.
pub const TOLERATED: &str = "tolerated";
pub const REFUSED: &str = "refused";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// [`TOLERATED`] or [`REFUSED`].
    pub outcome: String,
    /// For a refusal the first reason code (`BurstDisabled`, `ReservedPort`, …); for a
    /// toleration which switch allowed it (`GlobalSwitch`, `LocalSwitch`, `DefaultOn`).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SwitchLabels {
    pub value: String,
}

/// Every metric of the controller, registered under the prefix `eks_admission`.
pub struct Metrics {
    registry: Registry,
    /// Decisions that changed something a user sees: a toleration written, or a refusal
    /// reported (once per pod and reason, like its event).
    pub decisions: Family<DecisionLabels, Counter>,
    pub toleration_latency: Histogram,
    pub reconcile_duration: Histogram,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Toleration patches refused because the pod had changed since it was read.
    pub patch_conflicts: Counter,
    pub global_switch_changes: Counter,
    global_switch: Family<SwitchLabels, Gauge>,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("eks_admission");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Burst decisions by outcome and reason",
            decisions.clone(),
        );
        let toleration_latency = Histogram::new([
            0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        ]);
        registry.register(
            "toleration_latency_seconds",
            "From the pod's Unschedulable condition (whole seconds) to the toleration being written",
            toleration_latency.clone(),
        );
        let reconcile_duration =
            Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]);
        registry.register(
            "reconcile_duration_seconds",
            "Time to decide on one pod and write the result",
            reconcile_duration.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and were retried",
            reconcile_errors.clone(),
        );
        let patch_conflicts = Counter::default();
        registry.register(
            "patch_conflicts",
            "Toleration patches refused because the pod had changed since it was read",
            patch_conflicts.clone(),
        );
        let global_switch_changes = Counter::default();
        registry.register(
            "global_switch_changes",
            "Changes of the global AUTO_SCALE_EKS switch seen, each re-deciding every waiting pod",
            global_switch_changes.clone(),
        );
        let global_switch = Family::<SwitchLabels, Gauge>::default();
        registry.register(
            "global_switch",
            "The global AUTO_SCALE_EKS switch in force (1 for its value: true, false or undefined)",
            global_switch.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this process holds the leader lease",
            leader.clone(),
        );
        tke_runtime::metrics::register_build_info(&mut registry, "eks-admission");
        Metrics {
            registry,
            decisions,
            toleration_latency,
            reconcile_duration,
            reconcile_errors,
            patch_conflicts,
            global_switch_changes,
            global_switch,
            leader,
        }
    }

    /// Counts a decision.
    pub fn decided(&self, outcome: &str, reason: &str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                outcome: outcome.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Shows `value` as the switch in force.
    pub fn global_switch(&self, value: Switch) {
        for candidate in [Switch::On, Switch::Off, Switch::Undefined] {
            let labels = SwitchLabels {
                value: candidate.as_str().to_owned(),
            };
            self.global_switch
                .get_or_create(&labels)
                .set(i64::from(candidate == value));
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_counted_by_outcome_and_reason() {
        let metrics = Metrics::new();
        metrics.decided(REFUSED, "ReservedPort");
        metrics.decided(REFUSED, "ReservedPort");
        metrics.decided(TOLERATED, "DefaultOn");
        let text = metrics.render();
        assert!(
            text.contains(r#"eks_admission_decisions_total{outcome="refused",reason="ReservedPort"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"eks_admission_decisions_total{outcome="tolerated",reason="DefaultOn"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn the_switch_in_force_is_the_only_one_set() {
        let metrics = Metrics::new();
        metrics.global_switch(Switch::On);
        metrics.global_switch(Switch::Off);
        let text = metrics.render();
        assert!(
            text.contains(r#"eks_admission_global_switch{value="false"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"eks_admission_global_switch{value="true"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"eks_admission_global_switch{value="undefined"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn latency_is_a_histogram_with_buckets() {
        let metrics = Metrics::new();
        metrics.toleration_latency.observe(0.7);
        let text = metrics.render();
        assert!(
            text.contains(r#"eks_admission_toleration_latency_seconds_bucket{le="0.5"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"eks_admission_toleration_latency_seconds_bucket{le="1.0"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("eks_admission_toleration_latency_seconds_count 1"),
            "{text}"
        );
    }
}
