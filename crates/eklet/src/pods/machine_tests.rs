//! The pod state machine, branch by branch: [`reconcile`] against a provider and an apiserver of
//! the test's own. The provider records its calls and answers as told; the apiserver records every
//! request and answers the few eklet makes (status and metadata patches, deletes, events). The
//! end-to-end tests prove the same paths against real parts; these say which branch does what.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Client, client::Body, runtime::controller::Action};
use serde_json::json;
use tokio::sync::{Notify, watch};

use super::*;
use crate::{
    config::{Args, Config},
    events::Events,
    metrics::Metrics,
    node::NodeViews,
    provider::{
        Capabilities, ContainerState, ContainerStatus, ProbeKind, Sandbox, SandboxEvent, SandboxSpec,
        SandboxStats, SourceObjects, StatsTarget, VolumeSpec,
    },
    registry::Registry,
};

const NODE: &str = "eklet-subnet-a";
const UID: &str = "0b6f1f5e-0000-4000-8000-000000000001";

/// One request the apiserver saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: String,
}

#[derive(Clone, Default)]
struct Apiserver {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Objects a GET of their path finds.
    objects: Arc<Mutex<HashMap<String, serde_json::Value>>>,
}

impl Apiserver {
    fn client(&self) -> Client {
        let (seen, objects) = (self.seen.clone(), self.objects.clone());
        let service = tower::service_fn(move |request: http::Request<Body>| {
            let (seen, objects) = (seen.clone(), objects.clone());
            async move {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body = String::from_utf8_lossy(&bytes).into_owned();
                let (method, path) = (parts.method.to_string(), parts.uri.path().to_owned());
                seen.lock().unwrap_or_else(|e| e.into_inner()).push(Seen {
                    method: method.clone(),
                    path: path.clone(),
                    body: body.clone(),
                });
                let name = path.rsplit('/').find(|s| *s != "status").unwrap_or_default();
                let stored = objects
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&path)
                    .cloned();
                let (status, answer) = match method.as_str() {
                    "GET" if stored.is_some() => (200, stored.unwrap_or_default().to_string()),
                    "PATCH" | "DELETE" if path.contains("/pods/") => (
                        200,
                        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}}).to_string(),
                    ),
                    "POST" if path.ends_with("/events") => (201, body),
                    _ => (
                        404,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
                            .to_string(),
                    ),
                };
                let response = http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(answer)
                    .unwrap_or_default();
                Ok::<_, Infallible>(response)
            }
        });
        Client::new(service, "default")
    }

    fn store(&self, path: &str, object: serde_json::Value) {
        self.objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_owned(), object);
    }

    /// How many GETs of `path` it answered.
    fn gets(&self, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == "GET" && s.path == path)
            .count()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The bodies of status patches, in order.
    fn status_patches(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "PATCH" && s.path.ends_with("/status"))
            .map(|s| s.body)
            .collect()
    }

    /// The reasons of the events published, in order.
    fn event_reasons(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "POST" && s.path.ends_with("/events"))
            .filter_map(|s| {
                serde_json::from_str::<serde_json::Value>(&s.body)
                    .ok()?
                    .get("reason")?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }
}

/// A provider that answers as the test says and records what it was asked.
struct Script {
    capabilities: Capabilities,
    calls: Mutex<Vec<String>>,
    creates: Mutex<VecDeque<provider::Result<Sandbox>>>,
    found: Mutex<Option<Sandbox>>,
    /// The source objects each create was handed.
    sources: Mutex<Vec<Option<Arc<SourceObjects>>>>,
    /// What `describe` answers.
    described: Mutex<Vec<Sandbox>>,
}

impl Script {
    fn new() -> Script {
        Script {
            capabilities: Capabilities {
                volumes: vec![],
                service_account_token: false,
                probes: vec![ProbeKind::HttpGet, ProbeKind::TcpSocket],
                startup_probe: false,
                reports_readiness: false,
                logs: true,
                stats: false,
                resolves_pod_ip: false,
                exec: false,
                attach: false,
                port_forward: false,
            },
            calls: Mutex::default(),
            creates: Mutex::default(),
            found: Mutex::default(),
            sources: Mutex::default(),
            described: Mutex::default(),
        }
    }

    fn create_answers(self, answers: Vec<provider::Result<Sandbox>>) -> Script {
        *self.creates.lock().unwrap_or_else(|e| e.into_inner()) = answers.into();
        self
    }

    fn record(&self, call: String) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(call);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn sandbox(phase: SandboxPhase) -> Sandbox {
    Sandbox {
        id: "eksci-1".into(),
        name: SandboxName::for_pod("cls-1", UID).as_str().to_owned(),
        phase,
        ip: Some("10.0.0.9".into()),
        created_at: None,
        containers: vec![ContainerStatus {
            name: "app".into(),
            image: "nginx".into(),
            state: match phase {
                SandboxPhase::Running => ContainerState::Running { started_at: None },
                _ => ContainerState::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                },
            },
            restart_count: 0,
            ready: None,
        }],
        init_containers: vec![],
        billed: None,
    }
}

/// The registry's record of pod `web-1`'s sandbox, as a create would have made it.
fn record(phase: SandboxPhase) -> Record {
    Record::new(
        sandbox(phase),
        SandboxName::for_pod("cls-1", UID),
        NODE.into(),
        &pod(json!({})),
    )
}

fn transient(maybe_executed: bool) -> provider::Error {
    provider::Error {
        action: "CreateEKSContainerInstances",
        kind: ErrorKind::Transient,
        code: "InternalError".into(),
        message: "the cloud timed out".into(),
        maybe_executed,
    }
}

impl Provider for Script {
    fn name(&self) -> &'static str {
        "script"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn create(&self, spec: &SandboxSpec) -> provider::Result<Sandbox> {
        self.record(format!("create {}", spec.name.as_str()));
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(spec.source.clone());
        self.creates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
            .unwrap_or_else(|| Ok(sandbox(SandboxPhase::Pending)))
    }

    async fn delete(&self, id: &str, grace: Duration) -> provider::Result<()> {
        self.record(format!("delete {id} {}s", grace.as_secs()));
        Ok(())
    }

    async fn describe(&self, ids: &[String]) -> provider::Result<Vec<Sandbox>> {
        self.record(format!("describe {}", ids.join(",")));
        Ok(self.described.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    async fn find(&self, name: &SandboxName) -> provider::Result<Option<Sandbox>> {
        self.record(format!("find {}", name.as_str()));
        Ok(self.found.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    async fn list(&self, _cluster_id: &str) -> provider::Result<Vec<Sandbox>> {
        Ok(vec![])
    }

    async fn refresh_files(&self, _id: &str, _volume: &VolumeSpec) -> provider::Result<()> {
        Ok(())
    }

    async fn logs(
        &self,
        _id: &str,
        _container: &str,
        _options: &provider::LogOptions,
    ) -> provider::Result<String> {
        Ok(String::new())
    }

    async fn events(&self, _id: &str) -> provider::Result<Vec<SandboxEvent>> {
        Ok(vec![])
    }

    async fn stats(&self, _targets: &[StatsTarget]) -> provider::Result<Vec<SandboxStats>> {
        Ok(vec![])
    }
}

fn context(script: Script, apiserver: &Apiserver, flags: &[&str]) -> Arc<Context<Script>> {
    context_of(script, apiserver, flags, false)
}

/// A context whose provider pushes sandbox changes instead of being polled.
fn pushing_context(script: Script, apiserver: &Apiserver) -> Arc<Context<Script>> {
    context_of(script, apiserver, &[], true)
}

fn context_of(script: Script, apiserver: &Apiserver, flags: &[&str], pushed: bool) -> Arc<Context<Script>> {
    let mut argv = vec![
        "eklet",
        "--subnet=subnet-a=ap-guangzhou-3",
        "--cluster-id=cls-1",
        "--region=ap-guangzhou",
        "--vpc-id=vpc-1",
        "--pod-used-apiserver=https://10.0.0.1:6443",
    ];
    argv.extend_from_slice(flags);
    let args = Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
    let config = Config::from_args(&args).unwrap_or_else(|e| panic!("{e}"));
    let client = apiserver.client();
    let (adopted, _) = watch::channel(true);
    Arc::new(Context {
        client: client.clone(),
        provider: script,
        apiserver: config
            .pod_used_apiserver
            .clone()
            .unwrap_or_else(|| panic!("apiserver")),
        nodes: Arc::new(NodeViews::new(&config)),
        config: Arc::new(config),
        registry: Registry::default(),
        events: Events::new(client, "test"),
        metrics: Arc::new(Metrics::new()),
        stores: vec![],
        triggers: HashMap::new(),
        adopted,
        sweep_now: Arc::new(Notify::new()),
        node_cpu_millis: u64::MAX,
        node_memory_bytes: u64::MAX,
        pushed,
    })
}

fn pod(extra_spec: serde_json::Value) -> Arc<Pod> {
    let mut spec = json!({
        "nodeName": NODE,
        "automountServiceAccountToken": false,
        "containers": [{"name": "app", "image": "nginx"}],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        spec.extend(extra.clone());
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "shop", "uid": UID},
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    Arc::new(pod)
}

use clap::Parser;

#[tokio::test]
async fn an_ineligible_pod_is_held_pending_with_its_reason_and_gets_no_sandbox() {
    let apiserver = Apiserver::default();
    let ctx = context(Script::new(), &apiserver, &[]);
    let pod =
        pod(json!({"containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 62000}]}]}));
    let action = reconcile(pod, ctx.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(action, Action::await_change());
    assert!(ctx.provider.calls().is_empty(), "{:?}", ctx.provider.calls());
    let patches = apiserver.status_patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert!(
        patches[0].contains("ReservedPort") && patches[0].contains("Pending"),
        "{}",
        patches[0]
    );
    assert_eq!(apiserver.event_reasons(), ["ReservedPort"]);
}

#[tokio::test]
async fn a_pod_on_a_cordoned_node_is_held_without_a_sandbox() {
    let apiserver = Apiserver::default();
    let ctx = context(Script::new(), &apiserver, &[]);
    ctx.nodes.update(NODE, |view| view.cordoned = true);
    reconcile(pod(json!({})), ctx.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ctx.provider.calls().is_empty());
    assert!(apiserver.status_patches()[0].contains(events::SUBNET_CORDONED));
}

#[tokio::test]
async fn an_eligible_pod_gets_one_sandbox_and_its_state_in_the_status() {
    let apiserver = Apiserver::default();
    let ctx = context(Script::new(), &apiserver, &[]);
    let action = reconcile(pod(json!({})), ctx.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let name = SandboxName::for_pod("cls-1", UID);
    assert_eq!(ctx.provider.calls(), [format!("create {}", name.as_str())]);
    assert_eq!(
        ctx.registry.get(UID).map(|r| r.sandbox_id),
        Some("eksci-1".to_owned())
    );
    assert_eq!(apiserver.event_reasons(), [events::SANDBOX_CREATED]);
    assert!(
        apiserver
            .status_patches()
            .iter()
            .any(|p| p.contains("ContainerCreating"))
    );
    // Not running yet: only the running deadline brings it back, the status loop wakes it sooner.
    assert_ne!(action, Action::await_change());
}

#[tokio::test]
async fn a_create_reads_each_referenced_object_once_and_hands_those_reads_to_the_provider() {
    let apiserver = Apiserver::default();
    apiserver.store(
        "/api/v1/namespaces/shop/configmaps/settings",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "settings", "namespace": "shop", "resourceVersion": "41"},
               "data": {"mode": "fast"}}),
    );
    apiserver.store(
        "/api/v1/namespaces/shop/secrets/db",
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "db", "namespace": "shop", "resourceVersion": "42"},
               "data": {"password": "aHVudGVyMg=="}}),
    );
    let ctx = context(Script::new(), &apiserver, &[]);
    // The ConfigMap is named twice (envFrom and a key reference): still one read.
    let pod = pod(json!({"containers": [{"name": "app", "image": "nginx",
    "envFrom": [{"configMapRef": {"name": "settings"}}],
    "env": [
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}
    ]}]}));
    reconcile(pod, ctx.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(apiserver.gets("/api/v1/namespaces/shop/configmaps/settings"), 1);
    assert_eq!(apiserver.gets("/api/v1/namespaces/shop/secrets/db"), 1);
    assert_eq!(
        apiserver.gets("/api/v1/namespaces/shop/pods/web-1"),
        0,
        "the pod comes from the cache"
    );
    let sources = ctx
        .provider
        .sources
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let [Some(source)] = sources.as_slice() else {
        panic!("one create with its sources: {sources:?}")
    };
    assert_eq!(source.pod.metadata.uid.as_deref(), Some(UID));
    let version = |o: Option<&Option<String>>| o.cloned().flatten();
    assert_eq!(
        version(
            source
                .config_maps
                .get("settings")
                .map(|o| &o.metadata.resource_version)
        ),
        Some("41".to_owned())
    );
    assert_eq!(
        version(source.secrets.get("db").map(|o| &o.metadata.resource_version)),
        Some("42".to_owned())
    );
    assert!(
        !format!("{source:?}").contains("aHVudGVyMg"),
        "secret data never shows in debug output"
    );
}

#[tokio::test]
async fn a_pushing_provider_is_asked_once_for_a_new_sandbox_and_its_pushes_reach_the_pod() {
    let apiserver = Apiserver::default();
    let script = Script::new();
    // Running already: the change was pushed before eklet tracked the sandbox.
    *script.described.lock().unwrap_or_else(|e| e.into_inner()) = vec![sandbox(SandboxPhase::Running)];
    let ctx = pushing_context(script, &apiserver);
    reconcile(pod(json!({})), ctx.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let name = SandboxName::for_pod("cls-1", UID);
    assert_eq!(
        ctx.provider.calls(),
        [format!("create {}", name.as_str()), "describe eksci-1".to_owned()]
    );
    assert_eq!(
        ctx.registry.get(UID).map(|r| r.observed.phase),
        Some(SandboxPhase::Running),
        "the catch-up found what the provider pushed too early"
    );
    let (wake, _) = ctx
        .registry
        .pushed(provider::SandboxChange::Gone("eksci-1".into()));
    assert_eq!(wake, [(NODE.to_owned(), ObjectRef::new("web-1").within("shop"))]);
}

#[tokio::test]
async fn after_a_create_that_may_have_succeeded_the_next_reconcile_looks_before_creating_again() {
    let apiserver = Apiserver::default();
    let script = Script::new().create_answers(vec![Err(transient(true))]);
    let ctx = context(script, &apiserver, &[]);
    let pod = pod(json!({}));
    let failed = reconcile(pod.clone(), ctx.clone()).await;
    assert!(failed.is_err(), "a transient failure is retried with backoff");
    assert_eq!(apiserver.event_reasons(), [events::SANDBOX_CREATE_RETRYING]);
    *ctx.provider.found.lock().unwrap_or_else(|e| e.into_inner()) = Some(sandbox(SandboxPhase::Pending));
    reconcile(pod, ctx.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let name = SandboxName::for_pod("cls-1", UID);
    assert_eq!(
        ctx.provider.calls(),
        [
            format!("create {}", name.as_str()),
            format!("find {}", name.as_str())
        ],
        "the sandbox the first create made is adopted, not made twice"
    );
    assert!(ctx.registry.get(UID).is_some());
}

#[tokio::test]
async fn a_create_that_certainly_failed_is_simply_tried_again() {
    let apiserver = Apiserver::default();
    let script = Script::new().create_answers(vec![Err(transient(false))]);
    let ctx = context(script, &apiserver, &[]);
    let pod = pod(json!({}));
    assert!(reconcile(pod.clone(), ctx.clone()).await.is_err());
    reconcile(pod, ctx.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let name = SandboxName::for_pod("cls-1", UID);
    assert_eq!(
        ctx.provider.calls(),
        [
            format!("create {}", name.as_str()),
            format!("create {}", name.as_str())
        ]
    );
}

#[tokio::test]
async fn a_permanent_cloud_refusal_holds_the_pod_with_the_clouds_code_and_asks_again_later() {
    let apiserver = Apiserver::default();
    let refusal = provider::Error {
        action: "CreateEKSContainerInstances",
        kind: ErrorKind::Permanent,
        code: "InvalidParameter.ImageInvalid".into(),
        message: "no such image".into(),
        maybe_executed: false,
    };
    let ctx = context(Script::new().create_answers(vec![Err(refusal)]), &apiserver, &[]);
    let action = reconcile(pod(json!({})), ctx.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(action, Action::requeue(PERMANENT_RETRY));
    let patch = &apiserver.status_patches()[0];
    assert!(
        patch.contains(events::SANDBOX_CREATE_FAILED) && patch.contains("InvalidParameter.ImageInvalid"),
        "{patch}"
    );
    assert!(ctx.registry.get(UID).is_none());
}

#[tokio::test]
async fn a_sandbox_not_running_by_the_timeout_is_deleted_and_its_pod_failed() {
    let apiserver = Apiserver::default();
    let ctx = context(Script::new(), &apiserver, &["--wait-sandbox-running-timeout=1s"]);
    let mut record = record(SandboxPhase::Pending);
    record.created = tokio::time::Instant::now()
        .checked_sub(Duration::from_secs(5))
        .unwrap_or_else(tokio::time::Instant::now);
    ctx.registry.insert(UID, record);
    reconcile(pod(json!({})), ctx.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ctx.provider.calls(), ["delete eksci-1 0s"]);
    let patch = &apiserver.status_patches()[0];
    assert!(
        patch.contains("Failed") && patch.contains(events::SANDBOX_RUNNING_TIMEOUT),
        "{patch}"
    );
    assert!(ctx.registry.get(UID).is_none());
}

#[tokio::test]
async fn a_sandbox_the_cloud_lost_fails_its_pod_and_is_not_replaced() {
    let apiserver = Apiserver::default();
    let ctx = context(Script::new(), &apiserver, &[]);
    let mut record = record(SandboxPhase::Running);
    record.gone = true;
    ctx.registry.insert(UID, record);
    reconcile(pod(json!({})), ctx.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ctx.provider.calls().is_empty(),
        "never a second sandbox: {:?}",
        ctx.provider.calls()
    );
    let patch = &apiserver.status_patches()[0];
    assert!(
        patch.contains("Failed") && patch.contains(events::SANDBOX_LOST),
        "{patch}"
    );
}

/// The bodies of metadata patches of the pod, in order.
fn metadata_patches(apiserver: &Apiserver) -> Vec<String> {
    apiserver
        .seen()
        .into_iter()
        .filter(|s| s.method == "PATCH" && s.path.ends_with("/pods/web-1"))
        .map(|s| s.body)
        .collect()
}

#[tokio::test]
async fn a_cloud_pod_shows_its_billed_size_once_and_its_deletion_cost_once_running() {
    let apiserver = Apiserver::default();
    let ctx = context(Script::new(), &apiserver, &[]);
    let mut pending = record(SandboxPhase::Pending);
    pending.observed.billed = Some(provider::BilledSize {
        cpu_millis: 1000,
        memory_mib: 2048,
        gpu: 0,
        gpu_type: None,
    });
    ctx.registry.insert(UID, pending.clone());
    reconcile(pod(json!({})), ctx.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let patches = metadata_patches(&apiserver);
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert!(
        patches[0].contains(r#""eklet.tke-resilience.io/billed-size":"cpu=1,memory=2Gi""#)
            && !patches[0].contains(POD_DELETION_COST),
        "the size at once, the cost only once it runs: {}",
        patches[0]
    );

    // The pod shows the size now; once Running only the cost is owed.
    let mut shown = Pod::clone(&pod(json!({})));
    shown.metadata.annotations =
        Some([(BilledSize::ANNOTATION.to_owned(), "cpu=1,memory=2Gi".to_owned())].into());
    let mut running = pending;
    running.observed.phase = SandboxPhase::Running;
    ctx.registry.insert(UID, running);
    reconcile(Arc::new(shown.clone()), ctx.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let patches = metadata_patches(&apiserver);
    assert_eq!(patches.len(), 2, "{patches:?}");
    assert!(
        patches[1].contains(POD_DELETION_COST) && !patches[1].contains("billed-size"),
        "{}",
        patches[1]
    );

    // Both shown: nothing more is written.
    if let Some(annotations) = shown.metadata.annotations.as_mut() {
        annotations.insert(POD_DELETION_COST.to_owned(), "-1000".to_owned());
    }
    reconcile(Arc::new(shown), ctx.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(metadata_patches(&apiserver).len(), 2);
}

#[tokio::test]
async fn a_deleted_pod_loses_its_sandbox_with_its_grace_period_then_its_object() {
    let apiserver = Apiserver::default();
    let ctx = context(Script::new(), &apiserver, &[]);
    ctx.registry.insert(UID, record(SandboxPhase::Running));
    let mut deleting = Pod::clone(&pod(json!({})));
    deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));
    deleting.metadata.deletion_grace_period_seconds = Some(7);
    reconcile(Arc::new(deleting), ctx.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ctx.provider.calls(), ["delete eksci-1 7s"]);
    let deletes: Vec<Seen> = apiserver
        .seen()
        .into_iter()
        .filter(|s| s.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert!(
        deletes[0].path.ends_with("/namespaces/shop/pods/web-1"),
        "{deletes:?}"
    );
    assert!(
        deletes[0].body.contains("\"gracePeriodSeconds\":0") && deletes[0].body.contains(UID),
        "grace 0, on this UID only: {}",
        deletes[0].body
    );
    assert!(ctx.registry.get(UID).is_none());
}

#[tokio::test]
async fn a_pod_gone_from_the_apiserver_takes_its_sandbox_and_a_racing_create_undoes_itself() {
    let apiserver = Apiserver::default();
    let ctx = context(Script::new(), &apiserver, &[]);
    ctx.registry.insert(UID, record(SandboxPhase::Running));
    let pod = pod(json!({}));
    gone(&pod, &ctx).await;
    assert_eq!(ctx.provider.calls(), ["delete eksci-1 0s"]);
    // A reconcile that was already creating when the pod went away.
    reconcile(pod, ctx.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let calls = ctx.provider.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(
        calls[1].starts_with("create ") && calls[2] == "delete eksci-1 0s",
        "{calls:?}"
    );
    assert!(ctx.registry.get(UID).is_none());
}
