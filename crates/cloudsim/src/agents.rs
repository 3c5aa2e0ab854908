//! The sandbox agents. With [`Config::agent_port`](crate::Config) set, every instance has, for its
//! lifetime, a listener on `(PrivateIp, agent_port)` that answers as the agent in a real sandbox VM
//! does: `GET /metrics` is Prometheus text with a CPU counter, a working set and a start time per
//! running container (the contract `tke_tencent::agent` reads), `503` while the instance is not
//! Running, `404` for any other path. The numbers come from the store's usage model at the sim
//! clock's now and the timestamps from its wall time, so a manual clock makes every answer
//! predictable.
//!
//! Lock ordering: there is one lock, the simulator's state. An agent request takes it only to copy
//! the samples, the log or a SecretKey out, never across an await. The API starts an agent while
//! holding it (the binds and the working directory's mkdir are quick syscalls, and no delete can
//! come between the instance and its agent), but waits for
//! stopped agents only once it has released it: a stopping agent may be finishing a request that
//! needs the lock.
//!
//! Exec, attach and port-forward (`tke_tencent::agent_stream`, done in `streams`): each request
//! must carry a signature by one of the credentials cloudsim accepts, bound to this instance, and
//! the instance must be Running; then the connection is upgraded to a WebSocket. Each agent owns a
//! working directory for its execs (removed when it stops) and a listener on every port its
//! containers declare in [`PORTS_ENV`](crate::PORTS_ENV), answering any HTTP request with
//! `cloudsim <instance> <container> port <n>`, for port-forward to reach. Stopping an agent cancels
//! its sessions, which kills their processes.

use std::fmt::Write;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use tke_tencent::agent_stream::{self, StreamRequest};
use tke_tencent::model::{Container, InstanceStatus};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::Sim;
use crate::clock::SimClock;
use crate::instances::ContainerSample;
use crate::netns::Listeners;
use crate::streams::{self, ExecSpec};

/// The Prometheus text format the agent serves.
const EXPOSITION: &str = "text/plain; version=0.0.4";
/// How long a stopping agent may take to finish its requests before it is cut off.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often an attach looks for new lines of the simulated process.
const ATTACH_POLL: Duration = Duration::from_millis(200);
/// Lines an attach poll reads; more written between two polls are skipped.
const ATTACH_TAIL: u64 = 100;
const WEBSOCKET_UPGRADE: &str = "websocket";

/// One instance's agent, serving until [`stop`]ped (or until the simulator is dropped).
#[derive(Debug)]
pub struct Agent {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
    /// The port responders.
    responders: Vec<JoinHandle<()>>,
    /// Cancels the exec, attach and port-forward sessions (dropping it does too).
    sessions: tokio_util::sync::DropGuard,
    /// The execs' working directory, removed when the agent is dropped.
    _workdir: tempfile::TempDir,
}

#[derive(Debug)]
struct AgentState {
    /// Weak: the simulator owns its agents, and an agent must not keep a dropped simulator alive.
    sim: Weak<Sim>,
    eks_ci_id: String,
    addr: SocketAddr,
    containers: Vec<Container>,
    workdir: std::path::PathBuf,
    sessions: CancellationToken,
}

impl Agent {
    /// Binds `addr` and serves the agent of instance `eks_ci_id` on it. Must be called within a Tokio
    /// runtime.
    pub fn start(
        sim: Weak<Sim>,
        listeners: &Listeners,
        eks_ci_id: String,
        addr: SocketAddr,
        containers: Vec<Container>,
    ) -> io::Result<Self> {
        let listener = TcpListener::from_std(listeners.bind(addr)?)?;
        let workdir = tempfile::Builder::new()
            .prefix(&format!("cloudsim-{eks_ci_id}-"))
            .tempdir()?;
        let responders = containers
            .iter()
            .flat_map(|container| {
                declared_ports(container)
                    .into_iter()
                    .filter(|port| *port != addr.port())
                    .filter_map(|port| {
                        let body = format!("cloudsim {eks_ci_id} {} port {port}\n", container.name);
                        respond(listeners, SocketAddr::new(addr.ip(), port), body)
                            .inspect_err(|err| {
                                tracing::warn!(eks_ci_id = %eks_ci_id, port, error = %err, "cannot serve a declared port");
                            })
                            .ok()
                    })
            })
            .collect();
        let sessions = CancellationToken::new();
        let (shutdown, stop) = oneshot::channel::<()>();
        let state = Arc::new(AgentState {
            sim,
            eks_ci_id,
            addr,
            containers,
            workdir: workdir.path().to_owned(),
            sessions: sessions.clone(),
        });
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/exec/{container}", get(exec))
            .route("/attach/{container}", get(attach))
            .route(agent_stream::PORT_FORWARD_PATH, get(port_forward))
            .fallback(not_found)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            // TCP_NODELAY: an exec's frames are small writes that must go out at once.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // A dropped sender (the simulator is gone) stops the agent too.
                    let _ = stop.await;
                })
                .await;
            if let Err(err) = served {
                tracing::warn!(eks_ci_id = %state.eks_ci_id, %addr, error = %err, "sandbox agent stopped");
            }
        });
        Ok(Self {
            shutdown,
            task,
            responders,
            sessions: sessions.drop_guard(),
            _workdir: workdir,
        })
    }
}

/// The ports a container declares in [`PORTS_ENV`](crate::PORTS_ENV): comma-separated numbers,
/// others ignored.
fn declared_ports(container: &Container) -> Vec<u16> {
    container
        .environment_vars
        .iter()
        .filter(|var| var.name == crate::PORTS_ENV)
        .flat_map(|var| var.value.split(',').filter_map(|p| p.trim().parse::<u16>().ok()))
        .filter(|port| *port > 0)
        .collect()
}

/// Answers every HTTP request on `addr` with `body`.
fn respond(listeners: &Listeners, addr: SocketAddr, body: String) -> io::Result<JoinHandle<()>> {
    let listener = TcpListener::from_std(listeners.bind(addr)?)?;
    let app = Router::new().fallback(move || {
        let body = body.clone();
        async move { ([(CONTENT_TYPE, "text/plain; charset=utf-8")], body) }
    });
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    }))
}

/// Stops agents and waits until their listeners are closed, so that a connection to a deleted
/// instance is refused as soon as the delete has been answered.
pub async fn stop(agents: Vec<Agent>) {
    let mut tasks = Vec::with_capacity(agents.len());
    let mut dropped = Vec::with_capacity(agents.len());
    for Agent {
        shutdown,
        task,
        responders,
        sessions,
        _workdir,
    } in agents
    {
        let _ = shutdown.send(());
        tasks.push(task);
        for responder in responders {
            responder.abort();
            tasks.push(responder);
        }
        // Cancels the sessions, killing their processes.
        drop(sessions);
        dropped.push(_workdir);
    }
    let deadline = Instant::now() + STOP_GRACE;
    for mut task in tasks {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }
    // The processes are killed; their working directories go.
    drop(dropped);
}

/// Why a streaming request is refused before its upgrade: the status and a line of text.
#[derive(Debug)]
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (
            self.0,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.1 + "\n",
        )
            .into_response()
    }
}

fn refuse(status: StatusCode, message: String) -> Response {
    Refused(status, message).into_response()
}

/// The checks every streaming request passes before its upgrade: a WebSocket upgrade, a signature
/// by accepted credentials for this instance (`tke_tencent::agent_stream`), and a Running instance.
fn authorize(agent: &AgentState, request: &Request) -> Result<(), Refused> {
    let Some(sim) = agent.sim.upgrade() else {
        return Err(Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cloudsim is shutting down; instance {} is gone", agent.eks_ci_id),
        ));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let authorization = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    agent_stream::verify(
        authorization,
        |id| sim.secret_key(id),
        &agent.eks_ci_id,
        request.method().as_str(),
        request.uri().path(),
        request.uri().query().unwrap_or(""),
        now,
    )
    .map_err(|err| {
        let status = StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::FORBIDDEN);
        Refused(status, err.to_string())
    })?;
    match sim.samples(&agent.eks_ci_id, sim.clock.now()) {
        Err(_) => Err(Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("instance {} no longer exists", agent.eks_ci_id),
        )),
        Ok(samples) if samples.status != InstanceStatus::Running => Err(Refused(
            StatusCode::CONFLICT,
            format!("instance {} is {}, not Running", agent.eks_ci_id, samples.status),
        )),
        Ok(_) => Ok(()),
    }
}

/// Answers a checked request with 101 and runs `session` on the WebSocket once upgraded.
fn upgrade<F>(
    request: Request,
    subprotocol: Option<&'static str>,
    session: impl FnOnce(streams::Socket) -> F + Send + 'static,
) -> Response
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let upgrading = request
        .headers()
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(WEBSOCKET_UPGRADE));
    let Some(key) = request.headers().get("Sec-WebSocket-Key").filter(|_| upgrading) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the sandbox agent streams over a WebSocket: send an Upgrade: websocket request".into(),
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    if let Some(protocol) = subprotocol {
        let offered = request
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim() == protocol);
        if !offered {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("the sandbox agent speaks the WebSocket subprotocol {protocol} only"),
            );
        }
    }
    let mut builder = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::CONNECTION, "Upgrade")
        .header(axum::http::header::UPGRADE, WEBSOCKET_UPGRADE)
        .header("Sec-WebSocket-Accept", accept);
    if let Some(protocol) = subprotocol {
        builder = builder.header("Sec-WebSocket-Protocol", protocol);
    }
    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => session(streams::websocket(upgraded).await).await,
            Err(err) => tracing::debug!(error = %err, "sandbox agent: the upgrade failed"),
        }
    });
    builder
        .body(axum::body::Body::empty())
        .unwrap_or_else(|err| refuse(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))
}

fn stream_request(request: &Request) -> Result<StreamRequest, Refused> {
    StreamRequest::parse(request.uri().query().unwrap_or(""))
        .map_err(|err| Refused(StatusCode::BAD_REQUEST, format!("malformed query: {err}")))
}

fn container<'a>(agent: &'a AgentState, name: &str) -> Result<&'a Container, Refused> {
    agent.containers.iter().find(|c| c.name == name).ok_or_else(|| {
        Refused(
            StatusCode::NOT_FOUND,
            format!("container {name:?} is not in instance {}", agent.eks_ci_id),
        )
    })
}

async fn exec(State(agent): State<Arc<AgentState>>, Path(name): Path<String>, request: Request) -> Response {
    let checked =
        authorize(&agent, &request).and_then(|()| Ok((container(&agent, &name)?, stream_request(&request)?)));
    let (container, stream) = match checked {
        Ok(checked) => checked,
        Err(refused) => return refused.into_response(),
    };
    if stream.command.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "an exec needs a command".into());
    }
    let spec = ExecSpec {
        request: stream,
        env: container
            .environment_vars
            .iter()
            .map(|var| (var.name.clone(), var.value.clone()))
            .collect(),
        workdir: agent.workdir.clone(),
    };
    let stop = agent.sessions.clone();
    upgrade(request, Some(agent_stream::SUBPROTOCOL), move |socket| {
        streams::exec(socket, spec, stop)
    })
}

async fn attach(
    State(agent): State<Arc<AgentState>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let checked = authorize(&agent, &request)
        .and_then(|()| Ok((container(&agent, &name)?.name.clone(), stream_request(&request)?)));
    let (container, stream) = match checked {
        Ok(checked) => checked,
        Err(refused) => return refused.into_response(),
    };
    let (lines, receiver) = tokio::sync::mpsc::channel(64);
    let stop = agent.sessions.clone();
    let (sim, eks_ci_id) = (agent.sim.clone(), agent.eks_ci_id.clone());
    let follow = follow_log(sim.clone(), eks_ci_id.clone(), container.clone(), lines);
    let read = move |line: &str| {
        if let Some(sim) = sim.upgrade() {
            let _ = sim.type_line(&eks_ci_id, &container, line);
        }
    };
    upgrade(
        request,
        Some(agent_stream::SUBPROTOCOL),
        move |socket| async move {
            let following = tokio::spawn(follow);
            streams::attach(socket, stream, receiver, read, stop).await;
            following.abort();
        },
    )
}

/// Sends the lines the simulated process writes from now on, until it stops running.
async fn follow_log(
    sim: Weak<Sim>,
    eks_ci_id: String,
    container: String,
    lines: tokio::sync::mpsc::Sender<String>,
) {
    let mut last: Option<String> = None;
    let mut first = true;
    loop {
        let Some(content) = sim
            .upgrade()
            .and_then(|sim| sim.container_log(&eks_ci_id, &container, ATTACH_TAIL).ok())
        else {
            return;
        };
        let all: Vec<&str> = content.lines().collect();
        let start = match &last {
            Some(last) => all.iter().position(|line| line == last).map_or(0, |i| i + 1),
            None => 0,
        };
        if !first {
            for line in &all[start..] {
                if lines.send(format!("{line}\n")).await.is_err() {
                    return;
                }
            }
        }
        first = false;
        if let Some(line) = all.last() {
            last = Some((*line).to_owned());
        }
        tokio::time::sleep(ATTACH_POLL).await;
    }
}

async fn port_forward(State(agent): State<Arc<AgentState>>, request: Request) -> Response {
    if let Err(refused) = authorize(&agent, &request) {
        return refused.into_response();
    }
    let port = agent_stream::parse_query(request.uri().query().unwrap_or(""))
        .ok()
        .and_then(|pairs| pairs.into_iter().find(|(name, _)| name == "port"))
        .and_then(|(_, value)| value.parse::<u16>().ok())
        .filter(|port| *port > 0);
    let Some(port) = port else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "port-forward needs ?port=N, a port number".into(),
        );
    };
    let target = SocketAddr::new(agent.addr.ip(), port);
    let connection = match tokio::net::TcpStream::connect(target).await {
        Ok(connection) => connection,
        Err(err) => {
            return refuse(
                StatusCode::BAD_GATEWAY,
                format!("connecting to port {port} of instance {}: {err}", agent.eks_ci_id),
            );
        }
    };
    let stop = agent.sessions.clone();
    upgrade(request, None, move |socket| {
        streams::port_forward(socket, connection, stop)
    })
}

async fn metrics(State(agent): State<Arc<AgentState>>) -> Response {
    let id = &agent.eks_ci_id;
    let Some(sim) = agent.sim.upgrade() else {
        return unavailable(format!("cloudsim is shutting down; instance {id} is gone"));
    };
    let now = sim.clock.now();
    match sim.samples(id, now) {
        Err(_) => unavailable(format!("instance {id} no longer exists")),
        Ok(samples) if samples.status != InstanceStatus::Running => {
            unavailable(format!("instance {id} is {}, not Running", samples.status))
        }
        Ok(samples) => (
            StatusCode::OK,
            [(CONTENT_TYPE, EXPOSITION)],
            render(&samples.containers, now, &sim.clock),
        )
            .into_response(),
    }
}

fn unavailable(message: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        "not found; the sandbox agent serves /metrics, /exec/{container}, /attach/{container} and /portForward\n",
    )
        .into_response()
}

/// The exposition text of the running containers' samples taken at `now`.
pub fn render(containers: &[ContainerSample], now: Instant, clock: &SimClock) -> String {
    let millis = clock.wall(now).as_millisecond();
    let mut text = String::new();
    let family = |text: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut text,
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
    );
    for sample in containers {
        let nanos = sample.cpu_core_nanoseconds;
        let _ = writeln!(
            text,
            "container_cpu_usage_seconds_total{{container=\"{}\"}} {}.{:09} {millis}",
            escape(&sample.name),
            nanos / 1_000_000_000,
            nanos % 1_000_000_000
        );
    }
    family(
        &mut text,
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
    );
    for sample in containers {
        let _ = writeln!(
            text,
            "container_memory_working_set_bytes{{container=\"{}\"}} {} {millis}",
            escape(&sample.name),
            sample.memory_working_set_bytes
        );
    }
    family(
        &mut text,
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
    );
    for sample in containers {
        let _ = writeln!(
            text,
            "container_start_time_seconds{{container=\"{}\"}} {}",
            escape(&sample.name),
            seconds(clock.wall(sample.started))
        );
    }
    text
}

/// A label value as the text format escapes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Unix seconds with as many decimals as needed, up to nanoseconds: `1764589990.5`.
fn seconds(at: jiff::Timestamp) -> String {
    let nanos = at.as_nanosecond();
    let (whole, fraction) = (nanos.div_euclid(1_000_000_000), nanos.rem_euclid(1_000_000_000));
    if fraction == 0 {
        return whole.to_string();
    }
    let fraction = format!("{fraction:09}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_follows_the_agent_contract() {
        let clock = SimClock::manual();
        let started = clock.now();
        clock.advance(Duration::from_millis(10_500));
        let now = clock.now();
        let containers = [
            ContainerSample {
                name: "web".into(),
                started,
                cpu_core_nanoseconds: 12_345_678_000,
                memory_working_set_bytes: 64 << 20,
            },
            ContainerSample {
                name: "odd\"name\\".into(),
                started: now,
                cpu_core_nanoseconds: 7,
                memory_working_set_bytes: 1,
            },
        ];
        let text = render(&containers, now, &clock);
        let millis = clock.wall(now).as_millisecond();
        assert!(text.contains(&format!(
            "\ncontainer_cpu_usage_seconds_total{{container=\"web\"}} 12.345678000 {millis}\n"
        )));
        assert!(text.contains(&format!(
            "\ncontainer_memory_working_set_bytes{{container=\"web\"}} 67108864 {millis}\n"
        )));
        assert!(
            text.contains("container_cpu_usage_seconds_total{container=\"odd\\\"name\\\\\"} 0.000000007")
        );
        assert!(text.starts_with(
            "# HELP container_cpu_usage_seconds_total Cumulative cpu time consumed by the container in core-seconds\n\
             # TYPE container_cpu_usage_seconds_total counter\n"
        ));
        let parsed = tke_tencent::agent::parse(&text).unwrap();
        assert_eq!(parsed[1].name, "odd\"name\\");
        assert_eq!(parsed[0].start_time, Some(clock.wall(started)));
        assert_eq!(parsed[1].start_time, Some(clock.wall(now)));
    }

    #[test]
    fn start_times_show_only_the_decimals_they_need() {
        let at = |nanos: i128| jiff::Timestamp::from_nanosecond(nanos).unwrap();
        assert_eq!(seconds(at(1_764_589_990_500_000_000)), "1764589990.5");
        assert_eq!(seconds(at(1_764_589_990_000_000_000)), "1764589990");
        assert_eq!(seconds(at(1_000_000_001)), "1.000000001");
    }
}
