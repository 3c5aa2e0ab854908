//! The sandbox agents against `tke_tencent::agent`, the scraper eklet uses: the contract between the
//! two sides, over real sockets. Each test takes its own random 127.X.0.0/16 block and a free port, so
//! that the instances' private IPs are loopback addresses and parallel tests do not collide.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tke_cloudsim::{CPU_MILLICORES_ENV, Config, Error, Handle, MEMORY_BYTES_ENV, UsageChange, serve};
use tke_tencent::agent::{AgentClient, AgentError, ContainerUsage};
use tke_tencent::model::*;

const MIB: u64 = 1 << 20;

/// One container `web` with `env`.
fn pod(name: &str, env: &[(&str, &str)]) -> CreateEksContainerInstancesRequest {
    request(name, vec![container("web", env)])
}

fn scraper() -> AgentClient {
    AgentClient::new(Duration::from_secs(10))
}

fn refused(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr, SECOND),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

async fn admin_usage(handle: &Handle, body: Value) -> (u16, Value) {
    let response = admin_post(handle, "/admin/usage", &body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn the_agent_reports_the_usage_the_env_asks_for_to_the_tencent_scraper() {
    let (sim, client, port, _) = start_with_agents().await;
    let env = [(CPU_MILLICORES_ENV, "250"), (MEMORY_BYTES_ENV, "67108864")];
    let (id, addr) = create(&client, port, &pod("metered", &env)).await;

    match scraper().scrape(addr).await {
        Err(AgentError::NotRunning { message, .. }) => assert!(message.contains("Pending"), "{message}"),
        other => panic!("a pending instance's agent answers 503, got {other:?}"),
    }

    sim.advance_clock(10 * SECOND);
    sim.advance_clock(10 * SECOND);
    let usage = scraper().scrape(addr).await.unwrap();
    let state = state(&client, &id).await;
    let started = tke_tencent::time::parse_api_time(&state.start_time).unwrap();
    // Sample timestamps are whole milliseconds.
    let sampled = jiff::Timestamp::from_millisecond((started + 10 * SECOND).as_millisecond()).unwrap();
    assert_eq!(
        usage,
        [ContainerUsage {
            name: "web".into(),
            cpu_core_nano_seconds: 2_500_000_000,
            memory_working_set_bytes: 64 * MIB,
            start_time: Some(started),
            time: Some(sampled),
        }],
        "2.5 core-seconds after 10 s at 250m, stamped with the sim clock's wall time"
    );
}

#[tokio::test]
async fn the_agent_serves_the_text_format_on_slash_metrics_only() {
    let (sim, client, port, _) = start_with_agents().await;
    let (_, addr) = create(&client, port, &pod("paths", &[])).await;
    sim.advance_clock(11 * SECOND);
    let http = reqwest::Client::new();
    let metrics = http.get(format!("http://{addr}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert_eq!(metrics.headers()["content-type"], "text/plain; version=0.0.4");
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("# TYPE container_cpu_usage_seconds_total counter\n"),
        "{text}"
    );
    let other = http
        .get(format!("http://{addr}/stats/summary"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

#[tokio::test]
async fn after_delete_the_agent_port_is_closed() {
    let (sim, client, port, _) = start_with_agents().await;
    let (id, addr) = create(&client, port, &pod("deleted", &[])).await;
    sim.advance_clock(11 * SECOND);
    let scraper = scraper();
    assert_eq!(scraper.scrape(addr).await.unwrap().len(), 1);

    client.delete_instances(&[id]).await.unwrap();
    assert!(
        refused(addr),
        "nothing listens on {addr} once the delete is answered"
    );
    assert!(
        matches!(scraper.scrape(addr).await, Err(AgentError::Unreachable { .. })),
        "not even over the connection the scraper had open"
    );
}

#[tokio::test]
async fn a_usage_change_keeps_the_cpu_counter_continuous() {
    let (sim, client, port, _) = start_with_agents().await;
    let env = [(CPU_MILLICORES_ENV, "250"), (MEMORY_BYTES_ENV, "67108864")];
    let (id, addr) = create(&client, port, &pod("changed", &env)).await;
    sim.advance_clock(10 * SECOND + 10 * SECOND);

    let (status, _) = admin_usage(
        &sim,
        json!({"id": id, "cpu_millicores": 1000, "memory_bytes": 128 * MIB}),
    )
    .await;
    assert_eq!(status, 200);
    let usage = &scraper().scrape(addr).await.unwrap()[0];
    assert_eq!(
        (usage.cpu_core_nano_seconds, usage.memory_working_set_bytes),
        (2_500_000_000, 128 * MIB),
        "the counter does not jump at the change; the working set does"
    );
    sim.advance_clock(5 * SECOND);
    let usage = &scraper().scrape(addr).await.unwrap()[0];
    assert_eq!(usage.cpu_core_nano_seconds, 2_500_000_000 + 5_000_000_000);

    let slower = UsageChange {
        cpu_millicores: Some(100),
        memory_bytes: None,
    };
    sim.set_usage(&id, Some("web"), slower).unwrap();
    sim.advance_clock(10 * SECOND);
    let usage = &scraper().scrape(addr).await.unwrap()[0];
    assert_eq!(
        (usage.cpu_core_nano_seconds, usage.memory_working_set_bytes),
        (7_500_000_000 + 1_000_000_000, 128 * MIB)
    );

    let (status, body) = admin_usage(&sim, json!({"id": "eksci-missing", "cpu_millicores": 1})).await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("eksci-missing"),
        "{body}"
    );
    let (status, _) = admin_usage(&sim, json!({"id": id, "container": "nope", "cpu_millicores": 1})).await;
    assert_eq!(status, 404);
    let (status, _) = admin_usage(&sim, json!({"id": id})).await;
    assert_eq!(status, 400, "a change must change something");
    assert!(sim.set_usage("eksci-missing", None, slower).is_err());
}

#[tokio::test]
async fn a_restart_resets_the_counter_the_agent_reports() {
    let (sim, client, port, _) = start_with_agents().await;
    let (id, addr) = create(&client, port, &pod("restarted", &[(CPU_MILLICORES_ENV, "1000")])).await;
    sim.advance_clock(10 * SECOND + 4 * SECOND);
    let before = scraper().scrape(addr).await.unwrap().remove(0);
    assert_eq!(before.cpu_core_nano_seconds, 4_000_000_000);
    sim.crash(&id, None, 137).unwrap();
    assert_eq!(
        scraper().scrape(addr).await.unwrap(),
        [],
        "the instance still runs, its exited container is not reported"
    );
    sim.advance_clock(SECOND + 2 * SECOND);
    let after = scraper().scrape(addr).await.unwrap().remove(0);
    assert_eq!(after.cpu_core_nano_seconds, 2_000_000_000);
    assert_eq!(
        after
            .start_time
            .unwrap()
            .duration_since(before.start_time.unwrap()),
        jiff::SignedDuration::from_secs(5),
        "4 s of the first run and the 1 s restart delay"
    );
}

#[tokio::test]
async fn invalid_usage_env_is_refused_with_invalid_parameter_value() {
    let (_sim, client, _, _) = start_with_agents().await;
    let err = client
        .create_instances(&pod("bad", &[(MEMORY_BYTES_ENV, "64Mi")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InvalidParameterValue", "{err}");
    assert!(err.to_string().contains("container web"), "{err}");
}

#[tokio::test]
async fn a_port_that_cannot_be_bound_does_not_fail_the_create() {
    let (config, taken_ip) = agents_config();
    let port = config.agent_port.unwrap();
    let taken = std::net::TcpListener::bind((taken_ip, port)).unwrap();
    let (sim, client) = start(config).await;
    let (id, addr) = create(&client, port, &pod("unbound", &[])).await;
    assert_eq!(addr.ip(), taken_ip);
    sim.advance_clock(11 * SECOND);
    let instance = client.describe_instances_by_id(&[id]).await.unwrap().remove(0);
    assert_eq!(instance.status, InstanceStatus::Running);
    drop(taken);
}

#[tokio::test]
async fn shutting_down_the_handle_stops_every_agent() {
    let (sim, client, port, _) = start_with_agents().await;
    let ids = client
        .create_instances(&CreateEksContainerInstancesRequest {
            replicas: Some(3),
            ..pod("many", &[])
        })
        .await
        .unwrap();
    let addrs: Vec<SocketAddr> = client
        .describe_instances_by_id(&ids)
        .await
        .unwrap()
        .iter()
        .map(|instance| SocketAddr::new(instance.private_ip.parse().unwrap(), port))
        .collect();
    assert_eq!(addrs.len(), 3);
    assert!(addrs.iter().all(|addr| !refused(*addr)));
    sim.shutdown().await.unwrap();
    for addr in addrs {
        assert!(refused(addr), "{addr} still listens");
    }
}

#[tokio::test]
async fn without_an_agent_port_no_instance_listens() {
    let (config, _) = agents_config();
    let port = config.agent_port.unwrap();
    let (sim, client) = start(Config {
        agent_port: None,
        ..config
    })
    .await;
    let (_, addr) = create(&client, port, &pod("quiet", &[])).await;
    sim.advance_clock(11 * SECOND);
    assert!(refused(addr));
}

#[tokio::test]
async fn a_private_block_smaller_than_a_sixteen_or_with_host_bits_is_refused() {
    for block in [
        (Ipv4Addr::new(127, 9, 9, 0), 24),
        (Ipv4Addr::new(127, 0, 0, 1), 8),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = Config {
            private_cidr: block,
            ..Config::new(credentials())
        };
        assert!(matches!(
            serve(config, listener).await,
            Err(Error::PrivateCidr(_))
        ));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = Config {
        agent_port: Some(0),
        ..Config::new(credentials())
    };
    assert!(matches!(serve(config, listener).await, Err(Error::AgentPortZero)));
}

#[tokio::test]
async fn dropping_the_handle_stops_the_agents_too() {
    let (sim, client, port, _) = start_with_agents().await;
    let (_, addr) = create(&client, port, &pod("dropped", &[])).await;
    assert!(!refused(addr));
    drop((sim, client));
    // The simulator goes once its server has drained; the agents, which only hold it weakly, with it.
    let stopped = poll(async || refused(addr).then_some(())).await;
    assert!(
        stopped.is_some(),
        "{addr} still listens after the handle was dropped"
    );
}
