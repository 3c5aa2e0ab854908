//! What the extender reports to Prometheus (prefix `tke_extender`): its decisions and how long a
//! filter call takes. Served on its own plain-HTTP port (`--metrics-port`) by
//! `tke_runtime::metrics`, so Prometheus can scrape it while the filter port stays on loopback,
//! and on the filter port's `/metrics` as before.
//!
//! There is no `leader` gauge: the extender holds no lease. It answers the kube-scheduler beside
//! it, which only schedules while it holds kube-scheduler's own lease
//! (`leader_election_master_status` on kube-scheduler's port).

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The placement decided: `Local`, `Cloud` or `LocalOnly`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// `bad_request` or `not_ready`.
    pub reason: String,
}

/// Every metric of the extender.
pub struct Metrics {
    registry: Registry,
    pub decisions: Family<DecisionLabels, Counter>,
    pub rejected: Family<RejectLabels, Counter>,
    pub pending_local: Gauge,
    pub filter_duration: Histogram,
    pub filter_request_bytes: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tke_extender");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Filter decisions by outcome (the placement decided)",
            decisions.clone(),
        );
        let rejected = Family::<RejectLabels, Counter>::default();
        registry.register(
            "rejected_requests",
            "Filter requests answered with an error, by reason",
            rejected.clone(),
        );
        let pending_local = Gauge::default();
        registry.register(
            "pending_local_decisions",
            "Pods decided local, not yet seen bound",
            pending_local.clone(),
        );
        // 50 µs to 6.5 s in factors of 2: a filter call is answered from memory in well under a
        // millisecond (quantiles need the fine buckets), kube-scheduler gives up at 5 s.
        let filter_duration = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.00005, 2.0, 18,
        ));
        registry.register(
            "filter_duration_seconds",
            "Time to answer a filter call",
            filter_duration.clone(),
        );
        // 256 B to 64 MiB (the body limit) in factors of 4.
        let filter_request_bytes = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(256.0, 4.0, 10),
        );
        registry.register(
            "filter_request_bytes",
            "Size of the filter requests' bodies (node names only with nodeCacheCapable, whole Nodes without)",
            filter_request_bytes.clone(),
        );
        tke_runtime::metrics::register_build_info(&mut registry, "extender");
        Metrics {
            registry,
            decisions,
            rejected,
            pending_local,
            filter_duration,
            filter_request_bytes,
        }
    }

    pub fn decided(&self, outcome: &str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&RejectLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
