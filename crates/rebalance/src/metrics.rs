//! The rebalancer's Prometheus metrics (prefix `tke_rebalance`), served by
//! [`tke_runtime::metrics`].

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `moved`, `dry_run`, `disruption_budget` (a 429 from the Eviction API), `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A [`crate::plan::Skip::reason`] or `Budget`.
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    pub moves: Family<ResultLabels, Counter>,
    pub skipped: Family<ReasonLabels, Counter>,
    pub eligible_to_moved: Histogram,
    pub candidates: Gauge,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tke_rebalance");
        let moves = Family::<ResultLabels, Counter>::default();
        registry.register(
            "moves",
            "Evictions of cloud pods to bring them home, by result",
            moves.clone(),
        );
        let skipped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "skipped",
            "Workloads with cloud pods left where they are in one round, by the first reason",
            skipped.clone(),
        );
        let eligible_to_moved =
            Histogram::new([1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0]);
        registry.register(
            "eligible_to_moved_seconds",
            "From the first round a local node fitted a cloud pod to its eviction",
            eligible_to_moved.clone(),
        );
        let candidates = Gauge::default();
        registry.register(
            "candidates",
            "Workloads with Running and Ready pods on virtual nodes in the last round",
            candidates.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this process holds the leader lease",
            leader.clone(),
        );
        tke_runtime::metrics::register_build_info(&mut registry, "tke-rebalance");
        Metrics {
            registry,
            moves,
            skipped,
            eligible_to_moved,
            candidates,
            leader,
        }
    }

    pub fn moved(&self, result: &str) {
        self.moves
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn skip(&self, reason: &str) {
        self.skipped
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
