//! What eklet reports to Prometheus, served with `/healthz` on the plain-HTTP port (10240) by
//! `tke_runtime::metrics`. Cloud calls are counted at the provider boundary by [`Measured`], so every
//! provider is measured the same way. Cloud usage (`eklet_cloud_*_total`) is counted by the
//! [`Meter`](crate::usage::Meter), advanced to the instant of each scrape.

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{
    provider::{
        self, Capabilities, LogOptions, Provider, Sandbox, SandboxEvent, SandboxName, SandboxSpec,
        SandboxStats, StatsTarget, VolumeSpec,
    },
    usage::Meter,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    /// The virtual node (one per subnet), so a bounded set.
    pub node: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub action: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Every metric eklet exports, under the `eklet_` prefix.
pub struct Metrics {
    registry: Registry,
    /// Pods bound to this eklet's virtual nodes, by node and phase.
    pub pods: Family<PodLabels, Gauge>,
    /// From sandbox creation to the sandbox first seen Running.
    pub create_to_running: Histogram,
    pub cloud_calls: Family<ActionLabels, Counter>,
    pub cloud_errors: Family<ErrorLabels, Counter>,
    /// Pods refused a sandbox, by reason code.
    pub refusals: Family<ReasonLabels, Counter>,
    pub sandboxes_created: Counter,
    pub sandboxes_deleted: Counter,
    pub sandboxes_adopted: Counter,
    pub orphans_deleted: Counter,
    /// Sandboxes found for a pod that already had one; should stay 0.
    pub duplicates_found: Counter,
    pub leader: Gauge,
    /// Cloud usage by namespace and workload; the registry feeds it.
    pub usage: Arc<Meter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("eklet");
        let pods = Family::<PodLabels, Gauge>::default();
        registry.register(
            "pods",
            "Pods bound to this eklet's virtual nodes, by node and phase",
            pods.clone(),
        );
        // 0.1 s to ~30 min: cloudsim starts in milliseconds, real sandboxes in tens of seconds.
        let create_to_running = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.1, 2.0, 15,
        ));
        registry.register(
            "sandbox_create_to_running_seconds",
            "Time from sandbox creation until it was first seen Running",
            create_to_running.clone(),
        );
        let cloud_calls = Family::<ActionLabels, Counter>::default();
        registry.register("cloud_calls", "Provider calls by action", cloud_calls.clone());
        let cloud_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "cloud_errors",
            "Failed provider calls by action and cloud error code",
            cloud_errors.clone(),
        );
        let refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "pod_refusals",
            "Pods refused a sandbox, by reason code",
            refusals.clone(),
        );
        let sandboxes_created = Counter::default();
        registry.register(
            "sandboxes_created",
            "Sandboxes created",
            sandboxes_created.clone(),
        );
        let sandboxes_deleted = Counter::default();
        registry.register(
            "sandboxes_deleted",
            "Sandboxes deleted for deleted or failed pods",
            sandboxes_deleted.clone(),
        );
        let sandboxes_adopted = Counter::default();
        registry.register(
            "sandboxes_adopted",
            "Existing sandboxes adopted after a start",
            sandboxes_adopted.clone(),
        );
        let orphans_deleted = Counter::default();
        registry.register(
            "orphan_sandboxes_deleted",
            "Sandboxes deleted because their pod is gone",
            orphans_deleted.clone(),
        );
        let duplicates_found = Counter::default();
        registry.register(
            "duplicate_sandboxes_found",
            "Extra sandboxes found for a pod that already had one",
            duplicates_found.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this eklet is the active leader",
            leader.clone(),
        );
        tke_runtime::metrics::register_build_info(&mut registry, "eklet");
        let usage = Arc::new(Meter::default());
        registry.register(
            "cloud_cpu_core_seconds",
            "Billed CPU cores × seconds of Running sandboxes, by namespace and workload",
            usage.cpu_core_seconds.clone(),
        );
        registry.register(
            "cloud_memory_byte_seconds",
            "Billed memory bytes × seconds of Running sandboxes, by namespace and workload",
            usage.memory_byte_seconds.clone(),
        );
        registry.register(
            "cloud_gpu_seconds",
            "Billed GPUs × seconds of Running sandboxes with GPUs, by namespace and workload",
            usage.gpu_seconds.clone(),
        );
        registry.register(
            "cloud_pod_seconds",
            "Seconds sandboxes were Running, by namespace and workload",
            usage.pod_seconds.clone(),
        );
        Metrics {
            registry,
            pods,
            create_to_running,
            cloud_calls,
            cloud_errors,
            refusals,
            sandboxes_created,
            sandboxes_deleted,
            sandboxes_adopted,
            orphans_deleted,
            duplicates_found,
            leader,
            usage,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.usage.flush();
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    pub fn refused(&self, reason: &str) {
        self.refusals
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    fn call<T>(&self, action: &'static str, result: &provider::Result<T>) {
        self.cloud_calls
            .get_or_create(&ActionLabels {
                action: action.to_owned(),
            })
            .inc();
        if let Err(e) = result {
            self.cloud_errors
                .get_or_create(&ErrorLabels {
                    action: action.to_owned(),
                    code: e.code.clone(),
                })
                .inc();
        }
    }
}

/// A provider whose every call is counted by action and cloud error code.
pub struct Measured<P> {
    inner: P,
    metrics: Arc<Metrics>,
}

impl<P> Measured<P> {
    pub fn new(inner: P, metrics: Arc<Metrics>) -> Self {
        Measured { inner, metrics }
    }
}

impl<P: Provider> Provider for Measured<P> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }

    async fn create(&self, spec: &SandboxSpec) -> provider::Result<Sandbox> {
        let result = self.inner.create(spec).await;
        self.metrics.call("create", &result);
        result
    }

    async fn delete(&self, id: &str, grace: Duration) -> provider::Result<()> {
        let result = self.inner.delete(id, grace).await;
        self.metrics.call("delete", &result);
        result
    }

    async fn describe(&self, ids: &[String]) -> provider::Result<Vec<Sandbox>> {
        let result = self.inner.describe(ids).await;
        self.metrics.call("describe", &result);
        result
    }

    async fn find(&self, name: &SandboxName) -> provider::Result<Option<Sandbox>> {
        let result = self.inner.find(name).await;
        self.metrics.call("find", &result);
        result
    }

    async fn list(&self, cluster_id: &str) -> provider::Result<Vec<Sandbox>> {
        let result = self.inner.list(cluster_id).await;
        self.metrics.call("list", &result);
        result
    }

    async fn refresh_files(&self, id: &str, volume: &VolumeSpec) -> provider::Result<()> {
        let result = self.inner.refresh_files(id, volume).await;
        self.metrics.call("refresh_files", &result);
        result
    }

    async fn logs(&self, id: &str, container: &str, options: &LogOptions) -> provider::Result<String> {
        let result = self.inner.logs(id, container, options).await;
        self.metrics.call("logs", &result);
        result
    }

    async fn events(&self, id: &str) -> provider::Result<Vec<SandboxEvent>> {
        let result = self.inner.events(id).await;
        self.metrics.call("events", &result);
        result
    }

    async fn stats(&self, targets: &[StatsTarget]) -> provider::Result<Vec<SandboxStats>> {
        let result = self.inner.stats(targets).await;
        self.metrics.call("stats", &result);
        result
    }

    async fn exec(
        &self,
        id: &str,
        container: &str,
        command: Vec<String>,
        io: provider::StreamIo,
    ) -> provider::Result<provider::ExitStatus> {
        let result = self.inner.exec(id, container, command, io).await;
        self.metrics.call("exec", &result);
        result
    }

    async fn attach(&self, id: &str, container: &str, io: provider::StreamIo) -> provider::Result<()> {
        let result = self.inner.attach(id, container, io).await;
        self.metrics.call("attach", &result);
        result
    }

    async fn port_forward(&self, id: &str, port: u16) -> provider::Result<provider::PortStream> {
        let result = self.inner.port_forward(id, port).await;
        self.metrics.call("port_forward", &result);
        result
    }

    fn notifier(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<provider::SandboxChange>> {
        self.inner.notifier()
    }

    fn followed_sources(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<provider::Source>> {
        self.inner.followed_sources()
    }

    fn source_version(&self, source: provider::Source, version: String) {
        self.inner.source_version(source, version);
    }

    async fn source_read(&self, source: &provider::Source, object: Option<provider::SourceObject>) {
        self.inner.source_read(source, object).await;
    }
}

#[cfg(test)]
mod tests {
    // The chart README's table of these metrics is checked against this registry by
    // crates/tke-resilience/tests/metrics.rs, with the other components'.
    use super::*;

    #[test]
    fn the_exposition_names_every_family_with_the_eklet_prefix() {
        let metrics = Metrics::new();
        metrics
            .pods
            .get_or_create(&PodLabels {
                node: "eklet-subnet-a".into(),
                phase: "Running".into(),
            })
            .set(3);
        metrics.create_to_running.observe(1.5);
        metrics.call::<()>("create", &Err(provider::Error::unsupported("create", "x")));
        let text = metrics.render();
        assert!(
            text.contains("eklet_pods{node=\"eklet-subnet-a\",phase=\"Running\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("eklet_sandbox_create_to_running_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("eklet_cloud_calls_total{action=\"create\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("eklet_cloud_errors_total{action=\"create\",code=\"UnsupportedByProvider\"} 1"),
            "{text}"
        );
    }
}
