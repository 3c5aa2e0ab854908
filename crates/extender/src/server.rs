//! The HTTP side: the routes kube-scheduler and operators call, and how each failure is
//! answered. kube-scheduler only accepts HTTP 200 as an answer, so anything else fails the
//! scheduling attempt and the pod is retried with backoff; the body then says why for people
//! reading logs or calling the endpoint by hand.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use k8s_openapi::api::core::v1::ObjectReference;
use tke_policy::BurstDecision;
use tke_runtime::events::{Event, EventType, Recorder};
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

use crate::{
    filter::{FilterOutcome, PolicyConfig, filter},
    metrics::Metrics,
    view::ClusterView,
    wire::{ExtenderFilterResult, decode_filter_args},
};

/// Where kube-scheduler's `urlPrefix` must point: `<scheme>://<host>:<port>/scheduler`.
pub const URL_PATH_PREFIX: &str = "/scheduler";
/// The filter verb, as `filterVerb` in the scheduler configuration.
pub const FILTER_VERB: &str = "filter";

/// How long a filter call waits for the caches' first list before answering 503. Well inside
/// kube-scheduler's default 5 s `httpTimeout`, so the scheduler sees our message, not a timeout.
const READY_WAIT: Duration = Duration::from_secs(2);
/// kube-scheduler sends whole Node objects when `nodeCacheCapable` is false; a few thousand
/// nodes fit.
const MAX_BODY: usize = 64 << 20;
/// Distinct workload warnings remembered before the memory is reset (and each may be reported
/// once more).
const MAX_REMEMBERED_WARNINGS: usize = 10_000;

/// The running extender: the view, the policy settings, readiness, metrics and events.
pub struct Extender {
    view: Mutex<ClusterView>,
    policy: PolicyConfig,
    ready: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    recorder: Option<Recorder>,
    warned: Mutex<HashSet<String>>,
}

impl Extender {
    /// An extender over `view`; `recorder` publishes Warning events for bad annotations (none
    /// in unit tests).
    pub fn new(view: ClusterView, policy: PolicyConfig, recorder: Option<Recorder>) -> Arc<Extender> {
        let ready = view.synced().all();
        Arc::new(Extender {
            view: Mutex::new(view),
            policy,
            ready: watch::Sender::new(ready),
            metrics: Arc::new(Metrics::new()),
            recorder,
            warned: Mutex::new(HashSet::new()),
        })
    }

    /// Changes the view (a watch event) and marks the extender ready once every cache is listed.
    pub fn update(&self, change: impl FnOnce(&mut ClusterView)) {
        let mut view = self.lock_view();
        change(&mut view);
        if !*self.ready.borrow() && view.synced().all() {
            info!("caches synced; answering filter calls");
            self.ready.send_replace(true);
        }
    }

    fn lock_view(&self) -> MutexGuard<'_, ClusterView> {
        // Every change to the view completes under the lock, so a panic elsewhere cannot leave
        // it half-updated; keep serving.
        self.view.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn wait_ready(&self) -> bool {
        let mut ready = self.ready.subscribe();
        tokio::time::timeout(READY_WAIT, ready.wait_for(|ready| *ready))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn record(&self, outcome: &FilterOutcome, pending: usize, started: Instant, request_bytes: usize) {
        self.metrics.decided(outcome.decision.as_str());
        self.metrics
            .pending_local
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.metrics
            .filter_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.filter_request_bytes.observe(request_bytes as f64);
    }

    fn reject(&self, reason: &str) {
        self.metrics.rejected(reason);
    }

    /// The extender's metrics, to serve on a port of their own.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Publishes each distinct annotation warning once per workload.
    fn report_warnings(&self, outcome: &FilterOutcome, pod: &k8s_openapi::api::core::v1::Pod) {
        let Some(recorder) = &self.recorder else { return };
        for warning in &outcome.warnings {
            let reference = match &outcome.owner {
                Some(owner) => ObjectReference {
                    api_version: Some(owner.api_version.clone()),
                    kind: Some(owner.kind.clone()),
                    name: Some(owner.name.clone()),
                    namespace: Some(owner.namespace.clone()),
                    uid: Some(owner.uid.clone()),
                    ..ObjectReference::default()
                },
                None => ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    namespace: pod.metadata.namespace.clone(),
                    uid: pod.metadata.uid.clone(),
                    ..ObjectReference::default()
                },
            };
            let key = format!("{}/{warning}", reference.uid.as_deref().unwrap_or_default());
            {
                let mut warned = self
                    .warned
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if warned.len() >= MAX_REMEMBERED_WARNINGS {
                    warned.clear();
                }
                if !warned.insert(key) {
                    continue;
                }
            }
            let event = Event {
                type_: EventType::Warning,
                reason: warning.reason().to_owned(),
                note: Some(warning.to_string()),
                action: "Scheduling".to_owned(),
                secondary: None,
            };
            let recorder = recorder.clone();
            tokio::spawn(async move {
                if let Err(error) = recorder.publish(&event, &reference).await {
                    warn!(%error, "publishing a {} event failed", event.reason);
                }
            });
        }
    }
}

/// The routes: `POST /scheduler/filter`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
pub fn router(extender: Arc<Extender>) -> Router {
    let measured = extender.clone();
    Router::new()
        .route(&format!("{URL_PATH_PREFIX}/{FILTER_VERB}"), post(filter_handler))
        .route("/readyz", get(readyz))
        .merge(tke_runtime::metrics::routes(move || measured.metrics.render()))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(extender)
}

async fn filter_handler(State(extender): State<Arc<Extender>>, body: Bytes) -> Response {
    let started = Instant::now();
    let args = match decode_filter_args(&body) {
        Ok(args) => args,
        Err(error) => {
            extender.reject("bad_request");
            warn!(%error, "refused a malformed filter request");
            return answer(
                StatusCode::BAD_REQUEST,
                ExtenderFilterResult::error(format!("malformed ExtenderArgs: {error}")),
            );
        }
    };
    if !extender.wait_ready().await {
        extender.reject("not_ready");
        let missing = extender.lock_view().synced().missing();
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            ExtenderFilterResult::error(format!("the tke-scheduler extender is still listing {missing}")),
        );
    }
    let (outcome, pending) = {
        let mut view = extender.lock_view();
        let outcome = filter(&mut view, &args, &extender.policy, Instant::now());
        (outcome, view.pending_count())
    };
    extender.record(&outcome, pending, started, body.len());
    extender.report_warnings(&outcome, &args.pod);
    let pod = format!(
        "{}/{}",
        tke_policy::workload::namespace_of(&args.pod),
        args.pod.metadata.name.as_deref().unwrap_or_default()
    );
    match outcome.decision {
        BurstDecision::Local => {
            debug!(%pod, decision = %outcome.decision, local_count = outcome.local_count, "{}", outcome.summary)
        }
        _ => {
            info!(%pod, decision = %outcome.decision, local_count = outcome.local_count, "{}", outcome.summary)
        }
    }
    answer(StatusCode::OK, outcome.result)
}

async fn readyz(State(extender): State<Arc<Extender>>) -> Response {
    let synced = extender.lock_view().synced();
    if synced.all() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("still listing {}", synced.missing()),
        )
            .into_response()
    }
}

async fn unknown_route(method: Method, uri: Uri) -> Response {
    answer(
        StatusCode::NOT_FOUND,
        ExtenderFilterResult::error(format!(
            "no such endpoint {method} {}; the tke-scheduler extender serves POST {URL_PATH_PREFIX}/{FILTER_VERB} \
             (urlPrefix <scheme>://<host>:<port>{URL_PATH_PREFIX}, filterVerb {FILTER_VERB}), /healthz, /readyz \
             and /metrics",
            uri.path()
        )),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    answer(
        StatusCode::METHOD_NOT_ALLOWED,
        ExtenderFilterResult::error(format!("{method} is not served on {}", uri.path())),
    )
}

fn answer(status: StatusCode, result: ExtenderFilterResult) -> Response {
    (status, Json(result)).into_response()
}

#[cfg(test)]
mod tests {
    use axum::{
        body::{Body, to_bytes},
        http::header,
    };
    use k8s_openapi::api::core::v1::Node;
    use kube::runtime::watcher::Event as WatchEvent;
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use super::*;

    fn synced_view() -> ClusterView {
        let mut view = ClusterView::new("kube-system", Duration::from_secs(60));
        let nodes: Vec<Node> = [
            ("idc-1", json!({})),
            (
                "eklet-subnet-1",
                json!({"node.kubernetes.io/instance-type": "eklet"}),
            ),
        ]
        .into_iter()
        .map(|(name, labels)| {
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                .expect("node fixture")
        })
        .collect();
        view.on_node(WatchEvent::Init);
        for node in nodes {
            view.on_node(WatchEvent::InitApply(node));
        }
        view.on_node(WatchEvent::InitDone);
        view.on_pod(WatchEvent::InitDone);
        view.on_config_map(WatchEvent::InitDone);
        view.on_claim(WatchEvent::InitDone);
        view.on_volume(WatchEvent::InitDone);
        view
    }

    async fn call(app: Router, method: &str, path: &str, body: impl Into<Body>) -> (StatusCode, Value) {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.into())
            .expect("request");
        let response = app.oneshot(request).await.expect("the router always answers");
        let status = response.status();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn app() -> Router {
        router(Extender::new(synced_view(), PolicyConfig::default(), None))
    }

    const FILTER: &str = "/scheduler/filter";

    #[tokio::test]
    async fn a_filter_call_answers_200_with_the_nodes_that_pass() {
        let body = json!({
            "Pod": {"metadata": {"name": "p", "namespace": "shop", "uid": "u1"}, "spec": {"containers": []}},
            "Nodes": null,
            "NodeNames": ["idc-1", "eklet-subnet-1"],
        });
        let (status, answer) = call(app(), "POST", FILTER, body.to_string()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["NodeNames"], json!(["idc-1"]));
        assert_eq!(answer["Error"], json!(""));
        assert!(
            answer["FailedAndUnresolvableNodes"]["eklet-subnet-1"]
                .as_str()
                .is_some_and(|why| why.contains("stays local"))
        );
    }

    #[tokio::test]
    async fn a_malformed_body_gets_400_with_the_error_in_error() {
        let (status, answer) = call(app(), "POST", FILTER, r#"{"Pod": 3}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let error = answer["Error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("malformed ExtenderArgs: ExtenderArgs.Pod is not a valid Pod"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_unknown_path_gets_404_naming_the_right_one() {
        let (status, answer) = call(app(), "POST", "/scheduler/prioritize", "{}").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let error = answer["Error"].as_str().unwrap_or_default();
        assert!(
            error.contains("POST /scheduler/prioritize") && error.contains("POST /scheduler/filter"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_get_on_the_filter_gets_405_not_a_silent_empty_answer() {
        let (status, answer) = call(app(), "GET", FILTER, Body::empty()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(answer["Error"].as_str().is_some_and(|e| e.contains("GET")));
    }

    #[tokio::test(start_paused = true)]
    async fn before_the_caches_are_listed_filter_calls_get_503_saying_what_is_missing() {
        let app = router(Extender::new(
            ClusterView::new("kube-system", Duration::from_secs(60)),
            PolicyConfig::default(),
            None,
        ));
        let body = json!({"Pod": {"metadata": {"name": "p"}}, "NodeNames": ["idc-1"]});
        let (status, answer) = call(app.clone(), "POST", FILTER, body.to_string()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            answer["Error"].as_str().is_some_and(|e| e.contains("pods")),
            "{answer}"
        );
        let (ready, _) = call(app, "GET", "/readyz", Body::empty()).await;
        assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn a_filter_call_waiting_for_the_caches_is_answered_once_they_are_listed() {
        let extender = Extender::new(
            ClusterView::new("kube-system", Duration::from_secs(60)),
            PolicyConfig::default(),
            None,
        );
        let app = router(extender.clone());
        let body = json!({"Pod": {"metadata": {"name": "p"}}, "NodeNames": []});
        let pending = tokio::spawn(call(app, "POST", FILTER, body.to_string()));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!pending.is_finished(), "the call waits for the caches");
        extender.update(|view| *view = synced_view());
        let (status, _) = pending.await.expect("the call completes");
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_count_decisions_by_outcome() {
        let extender = Extender::new(synced_view(), PolicyConfig::default(), None);
        let app = router(extender.clone());
        let body = json!({"Pod": {"metadata": {"name": "p", "uid": "u"}}, "NodeNames": ["idc-1"]});
        call(app.clone(), "POST", FILTER, body.to_string()).await;
        let text = extender.metrics().render();
        assert!(
            text.contains(r#"tke_extender_decisions_total{outcome="Local"} 1"#),
            "{text}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_bodies_get_an_answer_never_a_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let (status, _) = runtime.block_on(call(app(), "POST", FILTER, body));
            prop_assert!(status == StatusCode::OK || status == StatusCode::BAD_REQUEST, "{status}");
        }
    }
}
