//! What cloudsim's integration tests share: a simulator on loopback and a real `tke_tencent`
//! client for it, the instances they create, and the sandbox agents' block of loopback addresses.
//! A directory module, so that cargo does not build it as a test of its own.
// Each test binary uses only part of it.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tke_cloudsim::{Config, Handle, serve};
use tke_tencent::model::*;
use tke_tencent::rate_limit::RateLimits;
use tke_tencent::{Client, ClientConfig, Credentials};

pub const SECOND: Duration = Duration::from_secs(1);
/// Bounds a test that would otherwise hang on a bug; never reached when it passes.
pub const PATIENCE: Duration = Duration::from_secs(60);
/// Between two looks at something a test waits for.
pub const POLL: Duration = Duration::from_millis(100);

/// Where [`request`] creates its instances.
pub const SUBNET: &str = "subnet-cloudsim-tests";
pub const VPC: &str = "vpc-cloudsim-tests";

/// The key pair the simulator accepts and the clients sign with.
pub fn credentials() -> Credentials {
    Credentials::new("AKIDcloudsimTESTS", "cloudsim-tests-secret-key")
}

/// cloudsim serving `config` on a free loopback port.
pub async fn serve_on_loopback(config: Config) -> Handle {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve(config, listener).await.unwrap()
}

/// A client configuration for `handle` signing with `credentials`, without client-side rate
/// limits.
pub fn client_config(handle: &Handle, credentials: Credentials) -> ClientConfig {
    ClientConfig {
        rate_limits: RateLimits::unlimited(),
        ..handle.client_config(credentials)
    }
}

/// The simulator and a client with [`credentials`] and the default retries.
pub async fn start(config: Config) -> (Handle, Client) {
    let handle = serve_on_loopback(config).await;
    let client = Client::new(client_config(&handle, credentials())).unwrap();
    (handle, client)
}

/// A free port on `ip`.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The block's first host address, where its first instance will be.
pub fn first_ip(block: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(block) + 1)
}

/// A manual clock, a ten-second start delay, a one-second restart delay, no rate limit, agents on
/// and a random 127.X.0.0/16 of our own, so that the instances' private IPs are loopback addresses
/// and parallel tests do not collide; and the block's first address, where the first instance
/// will be (the agent port is free there).
pub fn agents_config() -> (Config, Ipv4Addr) {
    let block = Ipv4Addr::new(127, rand::random_range(1..=254), 0, 0);
    let first = first_ip(block);
    let config = Config {
        start_delay: 10 * SECOND,
        restart_delay: SECOND,
        rate_limit_per_second: 0,
        manual_clock: true,
        agent_port: Some(free_port(first)),
        private_cidr: (block, 16),
        ..Config::new(credentials())
    };
    (config, first)
}

/// A simulator started with [`agents_config`] and a client for it; the port every instance's
/// agent listens on, and the block's first address, where the first instance will be.
pub async fn start_with_agents() -> (Handle, Client, u16, Ipv4Addr) {
    let (config, first) = agents_config();
    let port = config.agent_port.unwrap();
    let (handle, client) = start(config).await;
    (handle, client, port, first)
}

/// A container `name` of nginx with the environment `env`.
pub fn container(name: &str, env: &[(&str, &str)]) -> Container {
    Container {
        image: "nginx:1.27".into(),
        name: name.into(),
        environment_vars: env
            .iter()
            .map(|(name, value)| EnvironmentVariable {
                name: name.to_string(),
                value: value.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

/// A create of one 1-core, 2 GiB instance `name` of `containers`, in [`SUBNET`] of [`VPC`].
pub fn request(name: &str, containers: Vec<Container>) -> CreateEksContainerInstancesRequest {
    CreateEksContainerInstancesRequest {
        containers,
        eks_ci_name: name.into(),
        security_group_ids: vec!["sg-cloudsim-tests".into()],
        subnet_id: SUBNET.into(),
        vpc_id: VPC.into(),
        memory: 2.0,
        cpu: 1.0,
        ..Default::default()
    }
}

/// Creates the instance and returns its id and where its agent listens, as eklet would learn it:
/// the instance's `PrivateIp` from Describe and the configured port.
pub async fn create(
    client: &Client,
    agent_port: u16,
    request: &CreateEksContainerInstancesRequest,
) -> (String, SocketAddr) {
    let ids = client.create_instances(request).await.unwrap();
    let instance = client.describe_instances_by_id(&ids).await.unwrap().remove(0);
    let ip: Ipv4Addr = instance.private_ip.parse().unwrap();
    assert!(ip.is_loopback(), "{ip}");
    (ids[0].clone(), SocketAddr::from((ip, agent_port)))
}

/// [`create`], then the clock past the ten-second start delay: the instance runs.
pub async fn running(
    handle: &Handle,
    client: &Client,
    agent_port: u16,
    request: &CreateEksContainerInstancesRequest,
) -> (String, SocketAddr) {
    let created = create(client, agent_port, request).await;
    handle.advance_clock(11 * SECOND);
    created
}

/// The state of the instance's first container, as Describe reports it.
pub async fn state(client: &Client, id: &str) -> ContainerState {
    let instance = client
        .describe_instances_by_id(&[id.to_owned()])
        .await
        .unwrap()
        .remove(0);
    instance.containers[0].current_state.clone().unwrap()
}

/// POSTs `body` as JSON to the admin API's `path` (`/admin/...`).
pub async fn admin_post(handle: &Handle, path: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", handle.endpoint()))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Seconds since the Unix epoch, for signatures.
pub fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Looks with `check` every [`POLL`] until it finds something; `None` once [`PATIENCE`] has
/// passed without.
pub async fn poll<T>(mut check: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let found = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(found) = check().await {
                return found;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    found.ok()
}
