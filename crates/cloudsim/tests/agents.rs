//! The sandbox agents against `tke_tencent::agent`, the scraper eklet uses: the contract between the
//! two sides, over real sockets. Each test takes its own random 127.X.0.0/16 block and a free port, so
//! that the instances' private IPs are loopback addresses and parallel tests do not collide.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};
use tke_cloudsim::{CPU_MILLICORES_ENV, Config, Error, Handle, MEMORY_BYTES_ENV, UsageChange, serve};
use tke_tencent::agent::{AgentClient, AgentError, ContainerUsage};
use tke_tencent::model::*;
use tke_tencent::rate_limit::RateLimits;
use tke_tencent::{Client, ClientConfig, Credentials};

const SECOND: Duration = Duration::from_secs(1);
const MIB: u64 = 1 << 20;

fn credentials() -> Credentials {
    Credentials::new("AKIDcloudsimAGENTS", "cloudsim-agents-secret-key")
}

/// A manual clock, a ten-second start delay, agents on, and a private block of our own.
fn config() -> Config {
    let block = Ipv4Addr::new(127, rand::random_range(1..=254), 0, 0);
    // Free on the block's first host address, where the first instance will be.
    let port = std::net::TcpListener::bind((first_ip(block), 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Config {
        start_delay: 10 * SECOND,
        restart_delay: SECOND,
        rate_limit_per_second: 0,
        manual_clock: true,
        agent_port: Some(port),
        private_cidr: (block, 16),
        ..Config::new(credentials())
    }
}

fn first_ip(block: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(block) + 1)
}

async fn start(config: Config) -> (Handle, Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = serve(config, listener).await.unwrap();
    let client = Client::new(ClientConfig {
        rate_limits: RateLimits::unlimited(),
        ..handle.client_config(credentials())
    })
    .unwrap();
    (handle, client)
}

fn pod(name: &str, env: &[(&str, &str)]) -> CreateEksContainerInstancesRequest {
    CreateEksContainerInstancesRequest {
        containers: vec![Container {
            image: "nginx:1.27".into(),
            name: "web".into(),
            environment_vars: env
                .iter()
                .map(|(name, value)| EnvironmentVariable {
                    name: name.to_string(),
                    value: value.to_string(),
                })
                .collect(),
            ..Default::default()
        }],
        eks_ci_name: name.into(),
        security_group_ids: vec!["sg-agents".into()],
        subnet_id: "subnet-agents".into(),
        vpc_id: "vpc-agents".into(),
        memory: 2.0,
        cpu: 1.0,
        ..Default::default()
    }
}

/// Creates the pod and returns its id and where its agent listens, as eklet would learn it: the
/// instance's `PrivateIp` from Describe and the configured port.
async fn create(
    client: &Client,
    port: u16,
    request: &CreateEksContainerInstancesRequest,
) -> (String, SocketAddr) {
    let ids = client.create_instances(request).await.unwrap();
    let instance = client.describe_instances_by_id(&ids).await.unwrap().remove(0);
    let ip: Ipv4Addr = instance.private_ip.parse().unwrap();
    assert!(ip.is_loopback(), "{ip}");
    (ids[0].clone(), SocketAddr::from((ip, port)))
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
    let response = reqwest::Client::new()
        .post(format!("{}/admin/usage", handle.endpoint()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn the_agent_reports_the_usage_the_env_asks_for_to_the_tencent_scraper() {
    let config = config();
    let port = config.agent_port.unwrap();
    let (sim, client) = start(config).await;
    let env = [(CPU_MILLICORES_ENV, "250"), (MEMORY_BYTES_ENV, "67108864")];
    let (id, addr) = create(&client, port, &pod("metered", &env)).await;

    match scraper().scrape(addr).await {
        Err(AgentError::NotRunning { message, .. }) => assert!(message.contains("Pending"), "{message}"),
        other => panic!("a pending instance's agent answers 503, got {other:?}"),
    }

    sim.advance_clock(10 * SECOND);
    sim.advance_clock(10 * SECOND);
    let usage = scraper().scrape(addr).await.unwrap();
    let instance = client.describe_instances_by_id(&[id]).await.unwrap().remove(0);
    let state = instance.containers[0].current_state.clone().unwrap();
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
    let config = config();
    let port = config.agent_port.unwrap();
    let (sim, client) = start(config).await;
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
    let config = config();
    let port = config.agent_port.unwrap();
    let (sim, client) = start(config).await;
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
    let config = config();
    let port = config.agent_port.unwrap();
    let (sim, client) = start(config).await;
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
    let config = config();
    let port = config.agent_port.unwrap();
    let (sim, client) = start(config).await;
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
    let (_sim, client) = start(config()).await;
    let err = client
        .create_instances(&pod("bad", &[(MEMORY_BYTES_ENV, "64Mi")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InvalidParameterValue", "{err}");
    assert!(err.to_string().contains("container web"), "{err}");
}

#[tokio::test]
async fn a_port_that_cannot_be_bound_does_not_fail_the_create() {
    let config = config();
    let port = config.agent_port.unwrap();
    let taken_ip = first_ip(config.private_cidr.0);
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
    let config = config();
    let port = config.agent_port.unwrap();
    let (sim, client) = start(config).await;
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
    let config = config();
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
    let config = config();
    let port = config.agent_port.unwrap();
    let (sim, client) = start(config).await;
    let (_, addr) = create(&client, port, &pod("dropped", &[])).await;
    assert!(!refused(addr));
    drop((sim, client));
    // The simulator goes once its server has drained; the agents, which only hold it weakly, with it.
    let deadline = tokio::time::Instant::now() + 10 * SECOND;
    while !refused(addr) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} still listens after the handle was dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
