//! The kubelet API routes and the TLS server that carries them. Every request passes the
//! [`Guard`] first; the path decides the subresource it is authorised against, as in the
//! kubelet: `/containerLogs` → `log` (or `proxy`, what a real kubelet checks), `/stats` →
//! `stats`, `/metrics` → `metrics`, `/pods` → `pods` (or `proxy`), `/healthz` → `healthz` (or
//! `proxy`), everything else → `proxy`; the node is the pod's node for a pod's logs and every
//! node this server answers for otherwise.
//!
//! Exec, attach, run and port-forward need `create` on `nodes/proxy` whatever the HTTP method:
//! a WebSocket upgrade is a GET, and `get` on `nodes/proxy` must not be enough to run commands
//! in pods (kubernetes#136550).

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::{Path, Query, Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
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
    streaming::{self, Limits, Sessions},
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
    sessions: Sessions,
}

impl<B: Backend, R: Reviews> KubeletApi<B, R> {
    /// The API for `nodes` (the virtual nodes whose InternalIP and kubelet port lead here; the
    /// first names the node in `/stats/summary`).
    pub fn new(nodes: Vec<String>, backend: B, reviews: R) -> Arc<KubeletApi<B, R>> {
        KubeletApi::with_limits(nodes, backend, reviews, Limits::default())
    }

    /// [`new`](KubeletApi::new) with the streaming endpoints' limits (sessions at once, idle
    /// timeout, stream creation timeout) set rather than defaulted.
    pub fn with_limits(nodes: Vec<String>, backend: B, reviews: R, limits: Limits) -> Arc<KubeletApi<B, R>> {
        Arc::new(KubeletApi {
            nodes,
            backend,
            guard: Guard::new(reviews),
            counters: CpuCounters::default(),
            started: Timestamp::now(),
            sessions: Sessions::new(limits),
        })
    }

    /// The attributes a request needs: per node concerned, the subresource and its fallbacks.
    fn required(&self, method: &Method, path: &str) -> Vec<Vec<Attributes>> {
        let verb = match first_segment(path) {
            // Running commands and opening ports is never a read.
            "exec" | "attach" | "run" | "portForward" => "create".to_owned(),
            _ => verb(method),
        };
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

/// The pod a path names, for the paths that name one.
fn container_logs_target(path: &str) -> Option<(String, String)> {
    let mut segments = path.trim_start_matches('/').split('/');
    if !matches!(
        segments.next()?,
        "containerLogs" | "exec" | "attach" | "run" | "portForward"
    ) {
        return None;
    }
    let namespace = segments.next().filter(|s| !s.is_empty())?;
    let name = segments.next().filter(|s| !s.is_empty())?;
    Some((namespace.to_owned(), name.to_owned()))
}

/// The routes, guarded.
pub fn router<B: Backend, R: Reviews>(api: Arc<KubeletApi<B, R>>) -> Router {
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
        .route("/exec/{*rest}", get(exec::<B, R>).post(exec::<B, R>))
        .route("/attach/{*rest}", get(attach::<B, R>).post(attach::<B, R>))
        .route(
            "/portForward/{*rest}",
            get(port_forward::<B, R>).post(port_forward::<B, R>),
        )
        .route("/run/{*rest}", get(run::<B, R>).post(run::<B, R>))
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            plain(
                StatusCode::NOT_FOUND,
                format!(
                    "{method} {}: not a kubelet API path this virtual node serves (it serves /healthz, \
                     /pods, /runningpods/, /containerLogs/NAMESPACE/POD/CONTAINER, /stats/summary, \
                     /metrics/resource, /exec, /attach, /run and /portForward)",
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
        // TCP_NODELAY, as Go's servers (the kubelet's) have it: a stream's frames are small
        // writes that must go out at once, not wait for the peer's ACK of the one before.
        .acceptor(
            axum_server::tls_rustls::RustlsAcceptor::new(axum_server::tls_rustls::RustlsConfig::from_config(
                tls,
            ))
            .acceptor(axum_server::accept::NoDelayAcceptor::new()),
        )
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

fn refuse(status: StatusCode, message: String) -> Box<Response> {
    Box::new(plain(status, message))
}

/// A pod a streaming path names, checked: it exists here, the UID matches if given, the
/// container is in its spec and, as far as the pod's status says, running.
struct Target {
    pod: Arc<Pod>,
    container: String,
}

/// `NS/POD/CONTAINER` or `NS/POD/UID/CONTAINER`; `NS/POD` or `NS/POD/UID` for port-forward.
fn target<B: Backend, R: Reviews>(
    api: &KubeletApi<B, R>,
    rest: &str,
    with_container: bool,
) -> Result<Target, Box<Response>> {
    let segments: Vec<&str> = rest.trim_matches('/').split('/').collect();
    let (namespace, name, uid, container) = match (with_container, segments.as_slice()) {
        (true, [namespace, name, container]) => (*namespace, *name, None, *container),
        (true, [namespace, name, uid, container]) => (*namespace, *name, Some(*uid), *container),
        (false, [namespace, name]) => (*namespace, *name, None, ""),
        (false, [namespace, name, uid]) => (*namespace, *name, Some(*uid), ""),
        _ => {
            let form = if with_container {
                "NAMESPACE/POD/CONTAINER or NAMESPACE/POD/UID/CONTAINER"
            } else {
                "NAMESPACE/POD or NAMESPACE/POD/UID"
            };
            return Err(refuse(StatusCode::NOT_FOUND, format!("{rest:?} is not {form}")));
        }
    };
    let pod = api
        .backend
        .pod(namespace, name)
        .filter(|pod| uid.is_none() || pod.metadata.uid.as_deref() == uid)
        .ok_or_else(|| {
            let uid = uid.map(|uid| format!(" with UID {uid}")).unwrap_or_default();
            refuse(
                StatusCode::NOT_FOUND,
                format!("pod {name:?}{uid} does not exist in namespace {namespace:?} on this node"),
            )
        })?;
    if with_container {
        if !container_names(&pod).any(|c| c == container) {
            let known: Vec<&str> = container_names(&pod).collect();
            return Err(refuse(
                StatusCode::NOT_FOUND,
                format!(
                    "container {container:?} not found in pod {name:?} (its containers: {})",
                    known.join(", ")
                ),
            ));
        }
        if let Some(why) = not_running(&pod, container) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("container {container:?} in pod {name:?} is not running ({why})"),
            ));
        }
    }
    Ok(Target {
        pod,
        container: container.to_owned(),
    })
}

/// Why the pod's status says `container` does not run, if it says so.
fn not_running(pod: &Pod, container: &str) -> Option<String> {
    let status = pod.status.as_ref()?;
    let state = [
        &status.container_statuses,
        &status.init_container_statuses,
        &status.ephemeral_container_statuses,
    ]
    .into_iter()
    .flatten()
    .flatten()
    .find(|s| s.name == container)?
    .state
    .as_ref()?;
    if state.running.is_some() {
        return None;
    }
    Some(match (&state.waiting, &state.terminated) {
        (Some(waiting), _) => format!(
            "waiting: {}",
            waiting.reason.as_deref().unwrap_or("unknown reason")
        ),
        (_, Some(terminated)) => format!(
            "terminated: {} with exit code {}",
            terminated.reason.as_deref().unwrap_or("unknown reason"),
            terminated.exit_code
        ),
        _ => "no state reported".to_owned(),
    })
}

fn query_of(request: &Request) -> Result<Vec<(String, String)>, Box<Response>> {
    Query::<Vec<(String, String)>>::try_from_uri(request.uri())
        .map(|Query(query)| query)
        .map_err(|e| {
            refuse(
                StatusCode::BAD_REQUEST,
                format!("unable to decode the query: {e}"),
            )
        })
}

fn upgrade_is(request: &Request, protocol: &str) -> bool {
    request
        .headers()
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(protocol))
}

fn header_values(request: &Request, name: &str) -> Vec<String> {
    request
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect()
}

fn switching(upgrade: &'static str) -> axum::http::response::Builder {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, upgrade)
}

/// The SPDY handshake (`httpstream.Handshake`): the newest protocol both speak, "" for a client
/// that offers none, 403 naming ours when nothing matches.
fn spdy_handshake(
    request: &Request,
    ours: &[&'static str],
) -> Result<(&'static str, Response), Box<Response>> {
    let offered = header_values(request, "X-Stream-Protocol-Version");
    let protocol = if offered.is_empty() {
        ""
    } else {
        match streaming::negotiate(&offered, ours) {
            Some(protocol) => protocol,
            None => {
                let mut response = refuse(
                    StatusCode::FORBIDDEN,
                    format!(
                        "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {ours:?}"
                    ),
                );
                for protocol in ours {
                    response.headers_mut().append(
                        "X-Accepted-Stream-Protocol-Versions",
                        HeaderValue::from_static(protocol),
                    );
                }
                return Err(response);
            }
        }
    };
    let mut builder = switching("SPDY/3.1");
    if !protocol.is_empty() {
        builder = builder.header("X-Stream-Protocol-Version", protocol);
    }
    let response = builder.body(Body::empty()).map_err(|e| {
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("upgrade response: {e}"),
        )
    })?;
    Ok((protocol, response))
}

/// The WebSocket handshake: our first subprotocol the client offers (`None` when it offers
/// none), and the 101 answer.
fn websocket_handshake(
    request: &Request,
    ours: &[&'static str],
) -> Result<(Option<&'static str>, Response), Box<Response>> {
    let Some(key) = request.headers().get("Sec-WebSocket-Key") else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade needs a Sec-WebSocket-Key header".into(),
        ));
    };
    let offered = header_values(request, "Sec-WebSocket-Protocol");
    let protocol = if offered.is_empty() {
        None
    } else {
        match streaming::negotiate(&offered, ours) {
            Some(protocol) => Some(protocol),
            None => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "none of the WebSocket subprotocols {offered:?} is spoken here; this server speaks {ours:?}"
                    ),
                ));
            }
        }
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut builder = switching("websocket").header("Sec-WebSocket-Accept", accept);
    if let Some(protocol) = protocol {
        builder = builder.header("Sec-WebSocket-Protocol", protocol);
    }
    let response = builder.body(Body::empty()).map_err(|e| {
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("upgrade response: {e}"),
        )
    })?;
    Ok((protocol, response))
}

fn too_many_sessions(limits: Limits) -> Response {
    plain(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "this node already serves {} exec, attach and port-forward sessions; try again later",
            limits.max_sessions
        ),
    )
}

fn no_upgrade(what: &str) -> Response {
    plain(
        StatusCode::BAD_REQUEST,
        format!(
            "{what} needs a connection upgrade: Upgrade: SPDY/3.1 (with X-Stream-Protocol-Version) or a WebSocket"
        ),
    )
}

async fn upgraded(on_upgrade: hyper::upgrade::OnUpgrade) -> Option<streaming::ws::Upgraded> {
    match on_upgrade.await {
        Ok(upgraded) => Some(hyper_util::rt::TokioIo::new(upgraded)),
        Err(error) => {
            tracing::info!(%error, "streaming: the connection upgrade failed");
            None
        }
    }
}

async fn exec<B: Backend, R: Reviews>(
    State(api): State<Arc<KubeletApi<B, R>>>,
    Path(rest): Path<String>,
    request: Request,
) -> Response {
    remote_command(api, &rest, request, false).await
}

async fn attach<B: Backend, R: Reviews>(
    State(api): State<Arc<KubeletApi<B, R>>>,
    Path(rest): Path<String>,
    request: Request,
) -> Response {
    remote_command(api, &rest, request, true).await
}

async fn remote_command<B: Backend, R: Reviews>(
    api: Arc<KubeletApi<B, R>>,
    rest: &str,
    mut request: Request,
    attach: bool,
) -> Response {
    use streaming::{Outbound, StatusFormat, ws};
    let what = if attach { "attach" } else { "exec" };
    let query = match query_of(&request) {
        Ok(query) => query,
        Err(response) => return *response,
    };
    let Target { pod, container } = match target(&api, rest, true) {
        Ok(target) => target,
        Err(response) => return *response,
    };
    let options = match streaming::Options::parse(&query) {
        Ok(options) => options,
        Err(error) => return plain(StatusCode::BAD_REQUEST, error.to_string()),
    };
    let action = if attach {
        streaming::Action::Attach
    } else if options.command.is_empty() {
        return plain(StatusCode::BAD_REQUEST, streaming::Error::NoCommand.to_string());
    } else {
        streaming::Action::Exec(options.command.clone())
    };
    let websocket = upgrade_is(&request, "websocket");
    if !websocket && !upgrade_is(&request, "SPDY/3.1") {
        return no_upgrade(what);
    }
    let limits = api.sessions.limits();
    let Some(permit) = api.sessions.try_start() else {
        return too_many_sessions(limits);
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    if websocket {
        let (protocol, response) = match websocket_handshake(&request, &ws::EXEC_PROTOCOLS) {
            Ok(handshake) => handshake,
            Err(response) => return *response,
        };
        let protocol = protocol.unwrap_or("channel.k8s.io");
        tokio::spawn(async move {
            let _permit = permit;
            let Some(io) = upgraded(on_upgrade).await else {
                return;
            };
            let mut readable = vec![ws::RESIZE];
            if options.stdin {
                readable.push(ws::STDIN);
            }
            let v5 = protocol == "v5.channel.k8s.io";
            let mut channels =
                ws::channels(io, ws::Encoding::of(protocol), &readable, v5, limits.idle_timeout).await;
            // As the kubelet does: an empty first message tells the client its streams are ready.
            let first = if options.stdout {
                ws::STDOUT
            } else if options.stderr {
                ws::STDERR
            } else {
                ws::ERROR
            };
            let _ = channels.writer(first).write(bytes::Bytes::new()).await;
            let streams = streaming::Channels {
                stdin: channels.inputs.remove(&ws::STDIN),
                stdout: options.stdout.then(|| Outbound::Ws(channels.writer(ws::STDOUT))),
                stderr: options.stderr.then(|| Outbound::Ws(channels.writer(ws::STDERR))),
                error: Outbound::Ws(channels.writer(ws::ERROR)),
                resize: channels.inputs.remove(&ws::RESIZE),
                status: if protocol.starts_with("v4.") || v5 {
                    StatusFormat::Json
                } else {
                    StatusFormat::Text
                },
            };
            let client_gone = channels.closed();
            // Dropping the last writer closes the WebSocket once everything is sent.
            drop(channels);
            streaming::remote_command(
                &api.backend,
                pod,
                &container,
                action,
                options.tty,
                streams,
                client_gone,
            )
            .await;
        });
        return response;
    }
    let (protocol, response) = match spdy_handshake(&request, &streaming::EXEC_PROTOCOLS) {
        Ok(handshake) => handshake,
        Err(response) => return *response,
    };
    tokio::spawn(async move {
        let _permit = permit;
        let Some(io) = upgraded(on_upgrade).await else {
            return;
        };
        let connection = streaming::spdy_connection(io, limits);
        let command = streaming::RemoteCommand {
            pod,
            container,
            action,
            options,
        };
        streaming::spdy_remote_command(connection, protocol, &api.backend, command, limits).await;
    });
    response
}

async fn port_forward<B: Backend, R: Reviews>(
    State(api): State<Arc<KubeletApi<B, R>>>,
    Path(rest): Path<String>,
    mut request: Request,
) -> Response {
    use streaming::{Outbound, ws};
    let query = match query_of(&request) {
        Ok(query) => query,
        Err(response) => return *response,
    };
    let Target { pod, .. } = match target(&api, &rest, false) {
        Ok(target) => target,
        Err(response) => return *response,
    };
    let websocket = upgrade_is(&request, "websocket");
    if !websocket && !upgrade_is(&request, "SPDY/3.1") {
        return no_upgrade("port-forward");
    }
    let limits = api.sessions.limits();
    if websocket {
        let (protocol, response) = match websocket_handshake(&request, &ws::PORT_FORWARD_PROTOCOLS) {
            Ok(handshake) => handshake,
            Err(response) => return *response,
        };
        if protocol == Some(ws::SPDY_TUNNEL) {
            let Some(permit) = api.sessions.try_start() else {
                return too_many_sessions(limits);
            };
            let on_upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let _permit = permit;
                let Some(io) = upgraded(on_upgrade).await else {
                    return;
                };
                let connection = streaming::spdy_connection(ws::tunnel(io).await, limits);
                streaming::spdy_port_forward(connection, &api.backend, pod, limits).await;
            });
            return response;
        }
        // Channel pairs: data on 2i, errors on 2i+1, for the i-th `port`.
        let ports = match streaming::ports(&query) {
            Ok(ports) if ports.len() <= 127 => ports,
            Ok(ports) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{} ports in one request; at most 127 fit the channels",
                        ports.len()
                    ),
                );
            }
            Err(error) => return plain(StatusCode::BAD_REQUEST, error.to_string()),
        };
        let Some(permit) = api.sessions.try_start() else {
            return too_many_sessions(limits);
        };
        let encoding = ws::Encoding::of(protocol.unwrap_or_default());
        let on_upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let _permit = permit;
            let Some(io) = upgraded(on_upgrade).await else {
                return;
            };
            let readable: Vec<u8> = (0..ports.len()).map(|i| (2 * i) as u8).collect();
            let mut channels = ws::channels(io, encoding, &readable, false, limits.idle_timeout).await;
            let client_gone = channels.closed();
            let mut forwards = Vec::new();
            for (i, port) in ports.into_iter().enumerate() {
                let data = channels.writer((2 * i) as u8);
                let error = channels.writer((2 * i + 1) as u8);
                // The first message of each channel names its port, little-endian.
                let prefix = bytes::Bytes::copy_from_slice(&port.to_le_bytes());
                let _ = data.write(prefix.clone()).await;
                let _ = error.write(prefix).await;
                let Some(incoming) = channels.inputs.remove(&((2 * i) as u8)) else {
                    continue;
                };
                forwards.push(streaming::forward(
                    &api.backend,
                    pod.clone(),
                    port,
                    incoming,
                    Outbound::Ws(data),
                    Outbound::Ws(error),
                    client_gone.clone(),
                ));
            }
            drop(channels);
            futures::future::join_all(forwards).await;
        });
        return response;
    }
    let (_, response) = match spdy_handshake(&request, &[streaming::PORT_FORWARD_PROTOCOL]) {
        Ok(handshake) => handshake,
        Err(response) => return *response,
    };
    let Some(permit) = api.sessions.try_start() else {
        return too_many_sessions(limits);
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let _permit = permit;
        let Some(io) = upgraded(on_upgrade).await else {
            return;
        };
        let connection = streaming::spdy_connection(io, limits);
        streaming::spdy_port_forward(connection, &api.backend, pod, limits).await;
    });
    response
}

/// `/run`: the command in `cmd` (query or form), split at white space as the kubelet does; the
/// answer is its combined stdout and stderr.
async fn run<B: Backend, R: Reviews>(
    State(api): State<Arc<KubeletApi<B, R>>>,
    Path(rest): Path<String>,
    request: Request,
) -> Response {
    let mut query = match query_of(&request) {
        Ok(query) => query,
        Err(response) => return *response,
    };
    let Target { pod, container } = match target(&api, &rest, true) {
        Ok(target) => target,
        Err(response) => return *response,
    };
    let form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if form {
        let body = match axum::body::to_bytes(request.into_body(), 64 * 1024).await {
            Ok(body) => body,
            Err(e) => return plain(StatusCode::BAD_REQUEST, format!("reading the form: {e}")),
        };
        let uri = format!("/?{}", String::from_utf8_lossy(&body));
        match uri
            .parse::<axum::http::Uri>()
            .map(|uri| Query::<Vec<(String, String)>>::try_from_uri(&uri))
        {
            Ok(Ok(Query(fields))) => query.extend(fields),
            _ => return plain(StatusCode::BAD_REQUEST, "unable to decode the form".into()),
        }
    }
    let command: Vec<String> = query
        .iter()
        .filter(|(key, _)| key == "cmd")
        .flat_map(|(_, value)| value.split_whitespace().map(str::to_owned))
        .collect();
    if command.is_empty() {
        return plain(
            StatusCode::BAD_REQUEST,
            "no command given: pass it as the `cmd` parameter".into(),
        );
    }
    let output = streaming::Collected::default();
    let io = backend::StreamIo {
        stdin: None,
        stdout: Some(Box::pin(output.clone())),
        stderr: Some(Box::pin(output.clone())),
        tty: false,
        resize: None,
    };
    match api.backend.exec(pod, &container, command, io).await {
        Ok(backend::ExitStatus::Code(0)) => {
            let mut response = Response::new(Body::from(output.take()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        }
        Ok(backend::ExitStatus::Code(code)) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "command terminated with non-zero exit code {code}; its output:\n{}",
                String::from_utf8_lossy(&output.take())
            ),
        ),
        Ok(backend::ExitStatus::Killed(how)) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("command did not exit by itself: {how}"),
        ),
        Err(error) => failure(error),
    }
}
