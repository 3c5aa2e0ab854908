//! The kubelet API routes and the TLS server that carries them. Every request passes the
//! [`Guard`] first; the path decides the subresource it is authorised against, as in the
//! kubelet: `/containerLogs` → `log` (or `proxy`, what a real kubelet checks), `/stats` →
//! `stats`, `/metrics` → `metrics`, `/pods` → `pods` (or `proxy`), `/healthz` → `healthz` (or
//! `proxy`), everything else → `proxy`; the node is the pod's node for a pod's logs and every
//! node this server answers for otherwise.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::{Path, Query, Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use axum_server::tls::TlsInfo;
use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::{Container, Pod, PodSpec},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::{
    auth::{Attributes, Guard, Reviews, Verdict},
    backend::{self, Backend, ErrorKind},
    logs,
    stats::{self, CpuCounters},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubelet API server: {0}")]
    Serve(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the routes share.
pub struct KubeletApi<B, R> {
    nodes: Vec<String>,
    backend: B,
    guard: Guard<R>,
    counters: CpuCounters,
    started: Timestamp,
}

impl<B: Backend, R: Reviews> KubeletApi<B, R> {
    /// The API for `nodes` (the virtual nodes whose InternalIP and kubelet port lead here; the
    /// first names the node in `/stats/summary`).
    pub fn new(nodes: Vec<String>, backend: B, reviews: R) -> Arc<KubeletApi<B, R>> {
        Arc::new(KubeletApi {
            nodes,
            backend,
            guard: Guard::new(reviews),
            counters: CpuCounters::default(),
            started: Timestamp::now(),
        })
    }

    /// The attributes a request needs: per node concerned, the subresource and its fallbacks.
    fn required(&self, method: &Method, path: &str) -> Vec<Vec<Attributes>> {
        let verb = verb(method);
        let subresources: &[&'static str] = match first_segment(path) {
            "containerLogs" => &["log", "proxy"],
            "stats" => &["stats"],
            "metrics" => &["metrics"],
            "pods" | "runningpods" => &["pods", "proxy"],
            "healthz" => &["healthz", "proxy"],
            _ => &["proxy"],
        };
        let pod_node = match container_logs_target(path) {
            Some((namespace, name)) => self
                .backend
                .pod(&namespace, &name)
                .and_then(|pod| pod.spec.as_ref()?.node_name.clone()),
            None => None,
        };
        let nodes = match pod_node {
            Some(node) => vec![node],
            None => self.nodes.clone(),
        };
        nodes
            .into_iter()
            .map(|node| {
                subresources
                    .iter()
                    .map(|subresource| Attributes {
                        verb: verb.clone(),
                        subresource,
                        node: node.clone(),
                    })
                    .collect()
            })
            .collect()
    }
}

/// The kubelet's verb for a method (`pkg/kubelet/server/auth.go`).
fn verb(method: &Method) -> String {
    match *method {
        Method::GET | Method::HEAD => "get".into(),
        Method::POST => "create".into(),
        Method::PUT => "update".into(),
        Method::PATCH => "patch".into(),
        Method::DELETE => "delete".into(),
        ref other => other.as_str().to_ascii_lowercase(),
    }
}

fn first_segment(path: &str) -> &str {
    path.trim_start_matches('/').split('/').next().unwrap_or_default()
}

fn container_logs_target(path: &str) -> Option<(String, String)> {
    let mut segments = path.trim_start_matches('/').split('/');
    if segments.next()? != "containerLogs" {
        return None;
    }
    let namespace = segments.next().filter(|s| !s.is_empty())?;
    let name = segments.next().filter(|s| !s.is_empty())?;
    Some((namespace.to_owned(), name.to_owned()))
}

/// The routes, guarded.
pub fn router<B: Backend, R: Reviews>(api: Arc<KubeletApi<B, R>>) -> Router {
    let streaming = |what: &'static str| {
        any(move || async move {
            plain(
                StatusCode::NOT_IMPLEMENTED,
                format!(
                    "{what} is not implemented by this virtual node yet; `kubectl logs` works, \
                     and {what} will come with the streaming (SPDY/WebSocket) support"
                ),
            )
        })
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/pods", get(pods::<B, R>))
        .route("/pods/", get(pods::<B, R>))
        .route("/runningpods", get(running_pods::<B, R>))
        .route("/runningpods/", get(running_pods::<B, R>))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs::<B, R>),
        )
        .route("/stats/summary", get(summary::<B, R>))
        .route("/stats/summary/", get(summary::<B, R>))
        .route("/metrics/resource", get(resource_metrics::<B, R>))
        .route("/metrics/resource/", get(resource_metrics::<B, R>))
        .route("/exec/{*rest}", streaming("exec"))
        .route("/attach/{*rest}", streaming("attach"))
        .route("/portForward/{*rest}", streaming("port-forward"))
        .route("/run/{*rest}", streaming("run"))
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            plain(
                StatusCode::NOT_FOUND,
                format!(
                    "{method} {}: not a kubelet API path this virtual node serves (it serves /healthz, \
                     /pods, /runningpods/, /containerLogs/NAMESPACE/POD/CONTAINER, /stats/summary, \
                     /metrics/resource)",
                    uri.path()
                ),
            )
        })
        .layer(middleware::from_fn_with_state(api.clone(), guard::<B, R>))
        .with_state(api)
}

async fn guard<B: Backend, R: Reviews>(
    State(api): State<Arc<KubeletApi<B, R>>>,
    request: Request,
    next: Next,
) -> Response {
    let certificate = request
        .extensions()
        .get::<Arc<TlsInfo>>()
        .and_then(|info| info.peer_certificates.first().cloned());
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let required = api.required(request.method(), request.uri().path());
    match api
        .guard
        .check(certificate.as_deref(), authorization.as_deref(), &required)
        .await
    {
        Verdict::Allowed(user) => {
            tracing::debug!(user = %user.name, method = %request.method(), path = %request.uri().path(), "kubelet API");
            next.run(request).await
        }
        Verdict::Unauthenticated => plain(StatusCode::UNAUTHORIZED, "Unauthorized".into()),
        Verdict::Forbidden(message) => {
            tracing::debug!(%message, path = %request.uri().path(), "kubelet API request forbidden");
            plain(StatusCode::FORBIDDEN, message)
        }
        Verdict::Failed(message) => plain(StatusCode::INTERNAL_SERVER_ERROR, message),
    }
}

fn plain(status: StatusCode, message: String) -> Response {
    let mut response = (status, message).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Backend failures to HTTP, in one place.
fn failure(error: backend::Error) -> Response {
    let status = match error.kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    plain(status, error.message)
}

async fn pods<B: Backend, R: Reviews>(State(api): State<Arc<KubeletApi<B, R>>>) -> Response {
    let items: Vec<Pod> = api.backend.pods().iter().map(|pod| Pod::clone(pod)).collect();
    pod_list(items)
}

/// What runs, in the kubelet's format: a PodList whose pods have only their name, namespace,
/// UID and running containers with their images (`kubecontainer.Pod.ToAPIPod`).
async fn running_pods<B: Backend, R: Reviews>(State(api): State<Arc<KubeletApi<B, R>>>) -> Response {
    let items = api
        .backend
        .running_pods()
        .into_iter()
        .map(|running| Pod {
            metadata: ObjectMeta {
                name: Some(running.name),
                namespace: Some(running.namespace),
                uid: Some(running.uid),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: running
                    .containers
                    .into_iter()
                    .map(|c| Container {
                        name: c.name,
                        image: Some(c.image),
                        ..Container::default()
                    })
                    .collect(),
                ..PodSpec::default()
            }),
            status: None,
        })
        .collect();
    pod_list(items)
}

fn pod_list(items: Vec<Pod>) -> Response {
    let list = k8s_openapi::List::<Pod> {
        items,
        metadata: Default::default(),
    };
    match serde_json::to_vec(&list) {
        Ok(body) => json(body),
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the pod list: {e}"),
        ),
    }
}

fn json(body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn container_names(pod: &Pod) -> impl Iterator<Item = &str> {
    let spec = pod.spec.as_ref();
    let containers = spec
        .into_iter()
        .flat_map(|s| s.containers.iter().map(|c| c.name.as_str()));
    let init = spec
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.name.as_str());
    let ephemeral = spec
        .and_then(|s| s.ephemeral_containers.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.name.as_str());
    containers.chain(init).chain(ephemeral)
}

async fn container_logs<B: Backend, R: Reviews>(
    State(api): State<Arc<KubeletApi<B, R>>>,
    Path((namespace, name, container)): Path<(String, String, String)>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let request = match logs::parse_query(&query) {
        Ok(request) => request,
        Err(error) if error.is_invalid() => {
            return plain(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("invalid log options: {error}"),
            );
        }
        Err(error) => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("unable to decode the query: {error}"),
            );
        }
    };
    let Some(pod) = api.backend.pod(&namespace, &name) else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("pod {name:?} does not exist in namespace {namespace:?} on this node"),
        );
    };
    if !container_names(&pod).any(|c| c == container) {
        let known: Vec<&str> = container_names(&pod).collect();
        return plain(
            StatusCode::NOT_FOUND,
            format!(
                "container {container:?} not found in pod {name:?} (its containers: {})",
                known.join(", ")
            ),
        );
    }
    let stream = match api.backend.logs(pod, &container, request.options).await {
        Ok(stream) => stream,
        Err(error) => return failure(error),
    };
    let body = Body::from_stream(logs::body(stream, request.timestamps, request.limit_bytes));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Joins the cache and the source for one scrape; `Err` holds why usage is missing.
async fn sample<B: Backend, R: Reviews>(
    api: &KubeletApi<B, R>,
) -> (stats::NodeSample, Option<backend::Error>) {
    let pods = stats::running(&api.backend.pods());
    let (usage, error) = match api.backend.usage(&pods).await {
        Ok(usage) => (usage, None),
        Err(error) => (Vec::new(), Some(error)),
    };
    let node = api.nodes.first().map(String::as_str).unwrap_or_default();
    (api.counters.sample(node, api.started, &pods, &usage), error)
}

async fn summary<B: Backend, R: Reviews>(State(api): State<Arc<KubeletApi<B, R>>>) -> Response {
    let (sample, error) = sample(&api).await;
    match error {
        // A source without usage still lists the pods, as a kubelet lists pods it cannot measure.
        None => {}
        Some(error) if error.kind == ErrorKind::Unsupported => {
            tracing::debug!(%error, "stats without usage");
        }
        Some(error) => return failure(error),
    }
    match serde_json::to_vec(&sample.summary()) {
        Ok(body) => json(body),
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the summary: {e}"),
        ),
    }
}

async fn resource_metrics<B: Backend, R: Reviews>(State(api): State<Arc<KubeletApi<B, R>>>) -> Response {
    let (sample, error) = sample(&api).await;
    if let Some(error) = &error {
        tracing::debug!(%error, "resource metrics without usage");
    }
    let mut response = Response::new(Body::from(sample.resource_metrics(error.is_some())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Serves the API over TLS on `listener` until the future is dropped (then open connections,
/// such as followed logs, are closed too) or the listener fails.
pub async fn serve<B: Backend, R: Reviews>(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    api: Arc<KubeletApi<B, R>>,
) -> Result<()> {
    let handle = axum_server::Handle::<SocketAddr>::new();
    let _shutdown = ShutdownOnDrop(handle.clone());
    axum_server::Server::<SocketAddr>::from_listener(listener)
        .acceptor(axum_server::tls_rustls::RustlsAcceptor::new(
            axum_server::tls_rustls::RustlsConfig::from_config(tls),
        ))
        .handle(handle)
        .serve(router(api).into_make_service())
        .await
        .map_err(Error::Serve)
}

struct ShutdownOnDrop(axum_server::Handle<SocketAddr>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}
