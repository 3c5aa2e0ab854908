//! cloudsim runs the containers' readiness and liveness probes as a kubelet would, and its agents
//! report readiness to `tke_tencent::agent`, the scraper eklet uses. Over real sockets, each test
//! on its own random 127.X.0.0/16 block, as in `agents.rs`. Probes run every second; the tests wait
//! on what the agent and the API report, never on a fixed time.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::json;
use tke_cloudsim::{Handle, PORTS_ENV};
use tke_tencent::Client;
use tke_tencent::agent::AgentClient;
use tke_tencent::model::*;

/// A container `web` whose simulated process serves `port`.
fn serving(port: u16) -> Container {
    container("web", &[(PORTS_ENV, &port.to_string())])
}

/// Every second, two failures in a row to fail.
fn every_second() -> Probe {
    Probe {
        period_seconds: Some(1),
        failure_threshold: Some(2),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

fn http_get(port: u16, path: &str) -> LivenessOrReadinessProbe {
    LivenessOrReadinessProbe {
        probe: every_second(),
        http_get: Some(HttpGet {
            path: path.into(),
            port: port.into(),
            scheme: "HTTP".into(),
        }),
        ..Default::default()
    }
}

fn tcp_socket(port: u16) -> LivenessOrReadinessProbe {
    LivenessOrReadinessProbe {
        probe: every_second(),
        tcp_socket: Some(TcpSocket { port: port.into() }),
        ..Default::default()
    }
}

fn exec(command: &[&str]) -> LivenessOrReadinessProbe {
    LivenessOrReadinessProbe {
        probe: every_second(),
        exec: Some(Exec {
            commands: command.iter().map(|part| part.to_string()).collect(),
        }),
        ..Default::default()
    }
}

/// Creates an instance of `containers` and lets it start: its id and its agent's address.
async fn running(
    handle: &Handle,
    client: &Client,
    agent_port: u16,
    containers: Vec<Container>,
) -> (String, SocketAddr) {
    common::running(handle, client, agent_port, &request("probes", containers)).await
}

/// What the agent says of each container's readiness, as eklet reads it.
async fn readiness(agent: SocketAddr) -> std::collections::BTreeMap<String, bool> {
    AgentClient::new(10 * SECOND)
        .scrape_page(agent)
        .await
        .unwrap()
        .ready
}

/// Waits until the agent reports `container` with readiness `want`.
async fn until_ready(agent: SocketAddr, container: &str, want: bool) {
    let waited = poll(async || (readiness(agent).await.get(container) == Some(&want)).then_some(())).await;
    assert!(
        waited.is_some(),
        "{container} never became ready={want}: {:?}",
        readiness(agent).await
    );
}

async fn status_of(url: String) -> u16 {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_readiness_probe_fails_while_the_responder_answers_500_and_passes_again_at_200() {
    let (handle, client, agent_port, first) = start_with_agents().await;
    let declared = free_port(first);
    let web = Container {
        readiness_probe: Some(http_get(declared, "/healthz")),
        ..serving(declared)
    };
    let (id, agent) = running(&handle, &client, agent_port, vec![web]).await;
    until_ready(agent, "web", true).await;

    // Over the admin API, as a demo would.
    let admin = async |body: serde_json::Value| {
        let response = admin_post(&handle, "/admin/responders", &body).await;
        response.status().as_u16()
    };
    let unhealthy = json!({"eksCiId": id, "port": declared, "path": "/healthz", "status": 500});
    assert_eq!(admin(unhealthy).await, 200);
    let responder = format!("http://{first}:{declared}");
    assert_eq!(status_of(format!("{responder}/healthz")).await, 500);
    assert_eq!(
        status_of(format!("{responder}/")).await,
        200,
        "other paths keep answering"
    );
    until_ready(agent, "web", false).await;

    assert_eq!(
        admin(json!({"eksCiId": "eksci-none", "port": declared, "status": 500})).await,
        404
    );
    assert_eq!(
        admin(json!({"eksCiId": id, "port": declared, "status": 99})).await,
        400
    );
    assert_eq!(admin(json!({"eksCiId": id, "port": 0, "status": 500})).await, 400);
    assert_eq!(
        admin(json!({"eksCiId": id, "port": declared, "status": 500, "path": "healthz"})).await,
        400
    );

    handle
        .set_responder_status(&id, declared, Some("/healthz"), 200)
        .unwrap();
    assert_eq!(status_of(format!("{responder}/healthz")).await, 200);
    until_ready(agent, "web", true).await;
}

#[tokio::test]
async fn a_tcp_probe_passes_on_a_declared_port_only() {
    let (handle, client, agent_port, first) = start_with_agents().await;
    let (declared, undeclared) = (free_port(first), free_port(first));
    let web = Container {
        readiness_probe: Some(tcp_socket(declared)),
        ..serving(declared)
    };
    let side = Container {
        readiness_probe: Some(tcp_socket(undeclared)),
        ..container("side", &[])
    };
    let (_, agent) = running(&handle, &client, agent_port, vec![web, side]).await;
    until_ready(agent, "web", true).await;
    // Both probe every second from the same start: by now the other one has tried too.
    assert_eq!(readiness(agent).await.get("side"), Some(&false));
    // Something listening there is all a TCP probe asks for.
    let _listener = tokio::net::TcpListener::bind((first, undeclared)).await.unwrap();
    until_ready(agent, "side", true).await;
}

#[tokio::test]
async fn an_exec_probe_passes_when_the_command_exits_0_in_the_containers_environment() {
    let (handle, client, agent_port, _) = start_with_agents().await;
    let containers = vec![
        Container {
            readiness_probe: Some(exec(&["true"])),
            ..container("yes", &[])
        },
        Container {
            readiness_probe: Some(exec(&["sh", "-c", "exit 1"])),
            ..container("no", &[])
        },
        Container {
            readiness_probe: Some(exec(&["sh", "-c", "test \"$FLAVOUR\" = vanilla"])),
            ..container("env", &[("FLAVOUR", "vanilla")])
        },
    ];
    let (_, agent) = running(&handle, &client, agent_port, containers).await;
    until_ready(agent, "yes", true).await;
    until_ready(agent, "env", true).await;
    assert_eq!(readiness(agent).await.get("no"), Some(&false));
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container_and_resets_its_readiness() {
    let (handle, client, agent_port, first) = start_with_agents().await;
    let declared = free_port(first);
    let web = Container {
        liveness_probe: Some(http_get(declared, "/healthz")),
        readiness_probe: Some(http_get(declared, "/")),
        ..serving(declared)
    };
    let (id, agent) = running(&handle, &client, agent_port, vec![web]).await;
    until_ready(agent, "web", true).await;
    handle
        .set_responder_status(&id, declared, Some("/healthz"), 500)
        .unwrap();

    let killed = poll(async || {
        let state = state(&client, &id).await;
        (state.state == ContainerStateName::Exited).then_some(state)
    })
    .await
    .expect("the liveness probe never killed the container");
    assert_eq!((killed.exit_code, killed.reason.as_str()), (137, "Error"));
    assert_eq!(
        killed.message,
        "Liveness probe failed: HTTP probe failed with statuscode: 500"
    );
    assert_eq!(killed.restart_count, 0);
    assert_eq!(
        readiness(agent).await.get("web"),
        Some(&false),
        "not ready while not running"
    );

    // The clock stands still: the restart comes when the restart delay has passed on it.
    handle
        .set_responder_status(&id, declared, Some("/healthz"), 200)
        .unwrap();
    handle.advance_clock(SECOND);
    let restarted = state(&client, &id).await;
    assert_eq!(
        (restarted.state, restarted.restart_count),
        (ContainerStateName::Running, 1)
    );
    until_ready(agent, "web", true).await;
    assert_eq!(
        state(&client, &id).await.restart_count,
        1,
        "a healthy container is left alone"
    );
}
