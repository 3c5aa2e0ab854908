//! The sandbox agents. With [`Config::agent_port`](crate::Config) set, every instance has, for its
//! lifetime, a listener on `(PrivateIp, agent_port)` that answers as the agent in a real sandbox VM
//! does: `GET /metrics` is Prometheus text with a CPU counter, a working set and a start time per
//! running container (the contract `tke_tencent::agent` reads), `503` while the instance is not
//! Running, `404` for any other path. The numbers come from the store's usage model at the sim
//! clock's now and the timestamps from its wall time, so a manual clock makes every answer
//! predictable.
//!
//! Lock ordering: there is one lock, the simulator's state. An agent request takes it only to copy
//! the samples out, never across an await. The API starts an agent while holding it (the bind is a
//! non-blocking syscall, and no delete can come between the instance and its agent), but waits for
//! stopped agents only once it has released it: a stopping agent may be finishing a request that
//! needs the lock.

use std::fmt::Write;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tke_tencent::model::InstanceStatus;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::Sim;
use crate::clock::SimClock;
use crate::instances::ContainerSample;

/// The Prometheus text format the agent serves.
const EXPOSITION: &str = "text/plain; version=0.0.4";
/// How long a stopping agent may take to finish its requests before it is cut off.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// One instance's agent, serving until [`stop`]ped (or until the simulator is dropped).
#[derive(Debug)]
pub struct Agent {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct AgentState {
    /// Weak: the simulator owns its agents, and an agent must not keep a dropped simulator alive.
    sim: Weak<Sim>,
    eks_ci_id: String,
}

impl Agent {
    /// Binds `addr` and serves the agent of instance `eks_ci_id` on it. Must be called within a Tokio
    /// runtime.
    pub fn start(sim: Weak<Sim>, eks_ci_id: String, addr: SocketAddr) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let (shutdown, stop) = oneshot::channel::<()>();
        let state = Arc::new(AgentState { sim, eks_ci_id });
        let app = Router::new()
            .route("/metrics", get(metrics))
            .fallback(not_found)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
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
        Ok(Self { shutdown, task })
    }
}

/// Stops agents and waits until their listeners are closed, so that a connection to a deleted
/// instance is refused as soon as the delete has been answered.
pub async fn stop(agents: Vec<Agent>) {
    let mut tasks = Vec::with_capacity(agents.len());
    for Agent { shutdown, task } in agents {
        let _ = shutdown.send(());
        tasks.push(task);
    }
    let deadline = Instant::now() + STOP_GRACE;
    for mut task in tasks {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }
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
        "not found; the sandbox agent serves /metrics\n",
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
