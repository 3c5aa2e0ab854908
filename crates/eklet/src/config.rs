//! `tke-resilience eklet` flags, named like the seed chart's where they apply, and their
//! validation into a [`Config`]. Credentials are never flags: they come from the environment
//! (`TENCENTCLOUD_SECRET_ID`, `TENCENTCLOUD_SECRET_KEY`, optional `TENCENTCLOUD_SESSION_TOKEN`)
//! or from `--credentials-file`.

use std::{net::IpAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::Parser;
use tke_policy::EligibilityConfig;

use crate::{
    provider::{ProviderKind, kubernetes, tencent},
    quantity,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--subnet {0:?}: expected SUBNET_ID=ZONE, e.g. subnet-bu17jw8a=ap-guangzhou-3")]
    Subnet(String),
    #[error("at least one --subnet SUBNET_ID=ZONE is required")]
    NoSubnets,
    #[error("--subnet {0} is given twice")]
    DuplicateSubnet(String),
    #[error("{flag} {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The virtual node manager: one virtual node per cloud subnet, and every pod bound to one run
/// as a cloud sandbox.
#[derive(Debug, Clone, Parser)]
pub struct Args {
    /// A cloud subnet to offer as a virtual node `eklet-<SUBNET_ID>`, as SUBNET_ID=ZONE.
    /// Repeatable, or comma-separated.
    #[arg(
        long = "subnet",
        value_name = "SUBNET_ID=ZONE",
        value_delimiter = ',',
        required = true
    )]
    pub subnets: Vec<String>,

    /// Identifies this cluster's sandboxes in the cloud (the chart uses its unique id or the VPC
    /// id). Sandboxes are named eklet-<cluster-id>-<pod-uid>.
    #[arg(long)]
    pub cluster_id: String,

    /// The eklet's own address: the virtual nodes' InternalIP, which the apiserver dials for
    /// logs and stats.
    #[arg(long, env = "POD_IP", default_value = "127.0.0.1")]
    pub node_ip: IpAddr,

    /// Port of the first virtual node's kubelet API, published in its daemonEndpoints; each
    /// further --subnet's node gets the next port (one endpoint per node, as kubelets have).
    #[arg(long, default_value_t = 10241)]
    pub kubelet_port: u16,

    /// Serving certificate (PEM) of the kubelet API, reloaded when the files change (a rotated
    /// Secret needs no restart); without it and --tls-private-key-file a self-signed one is made
    /// at start (the apiserver does not verify it unless configured to).
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert-file.
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,

    /// CA bundle that verifies client certificates on the kubelet API (the apiserver's
    /// --kubelet-client-certificate); without it only bearer tokens authenticate.
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,

    /// Plain-HTTP port for /healthz and Prometheus /metrics.
    #[arg(long, default_value_t = 10240)]
    pub metrics_port: u16,

    /// Address the plain-HTTP port binds to.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// The apiserver address as cloud sandboxes reach it (https://HOST:PORT or HOST:PORT); sets
    /// KUBERNETES_SERVICE_HOST/_PORT in every sandbox. Default: the server of the kubeconfig.
    #[arg(long)]
    pub pod_used_apiserver: Option<String>,

    /// A sandbox not Running after this long fails its pod (e.g. 24h, 90m, 30s).
    #[arg(long, default_value = "24h", value_parser = tke_runtime::duration::flag)]
    pub wait_sandbox_running_timeout: Duration,

    /// How often sandbox states are read from the cloud (batched describes).
    #[arg(long, default_value = "2s", value_parser = tke_runtime::duration::flag)]
    pub status_sync_interval: Duration,

    /// How often the cloud is listed for sandboxes whose pod is gone.
    #[arg(long, default_value = "60s", value_parser = tke_runtime::duration::flag)]
    pub orphan_sweep_interval: Duration,

    /// Service-account tokens for providers that mount them are refreshed this often (and
    /// always before they expire).
    #[arg(long, default_value = "30m", value_parser = tke_runtime::duration::flag)]
    pub sa_token_refresh_interval: Duration,

    /// List `ExtendWebSocketsToKubelet` in each virtual node's `status.declaredFeatures`, so a
    /// 1.36 apiserver proxies WebSocket exec, attach and port-forward to eklet unchanged instead of
    /// translating them to SPDY (both work; false keeps the translation).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub declare_websocket_streaming: bool,

    /// Exec, attach and port-forward sessions each virtual node's kubelet port serves at once;
    /// more are refused with 429.
    #[arg(long, default_value_t = 256)]
    pub max_streaming_sessions: usize,

    /// An exec, attach or port-forward connection with no traffic either way for this long is
    /// closed (the kubelet's streamingConnectionIdleTimeout).
    #[arg(long, default_value = "4h", value_parser = tke_runtime::duration::flag)]
    pub streaming_connection_idle_timeout: Duration,

    /// Pods reconciled at the same time.
    #[arg(long, default_value_t = 64)]
    pub pod_sync_workers: u16,

    /// The cloud provider: `tencent` (EKS container instances) or `kubernetes` (pods in the
    /// cluster of --target-kubeconfig).
    #[arg(long, value_enum, default_value_t = ProviderKind::Tencent)]
    pub provider: ProviderKind,

    /// The flags of `--provider kubernetes`.
    #[command(flatten)]
    pub kubernetes: kubernetes::Flags,

    /// The flags of `--provider tencent`.
    #[command(flatten)]
    pub tencent: tencent::Flags,

    /// Advertised CPU capacity of each virtual node.
    #[arg(long, default_value = "1000")]
    pub node_cpu: String,

    /// Advertised memory capacity of each virtual node.
    #[arg(long, default_value = "4000Gi")]
    pub node_memory: String,

    /// Advertised pod capacity of each virtual node.
    #[arg(long, default_value_t = 1000)]
    pub node_pods: u32,

    /// Kubeconfig file; otherwise $KUBECONFIG, ~/.kube/config or the in-cluster configuration.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace of the leader-election Lease (eklet's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub namespace: String,

    /// Run with leader election, so that of several eklets of a cluster one is active.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// How long a leader's Lease is valid without renewal.
    #[arg(long, default_value = "15s", value_parser = tke_runtime::duration::flag)]
    pub leader_elect_lease_duration: Duration,

    /// The eligibility rules shared with the other components.
    #[command(flatten)]
    pub policy: tke_policy::PolicyArgs,
}

/// A subnet offered as a virtual node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub zone: String,
}

impl FromStr for Subnet {
    type Err = Error;

    fn from_str(text: &str) -> Result<Subnet> {
        let (id, zone) = text
            .split_once('=')
            .ok_or_else(|| Error::Subnet(text.to_owned()))?;
        let (id, zone) = (id.trim(), zone.trim());
        let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid(id) || !valid(zone) {
            return Err(Error::Subnet(text.to_owned()));
        }
        Ok(Subnet {
            id: id.to_owned(),
            zone: zone.to_owned(),
        })
    }
}

/// Where cloud sandboxes reach the apiserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServerAddress {
    pub host: String,
    pub port: u16,
}

impl FromStr for ApiServerAddress {
    type Err = Error;

    fn from_str(text: &str) -> Result<ApiServerAddress> {
        let invalid = |reason: &str| Error::Invalid {
            flag: "--pod-used-apiserver",
            value: text.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = text.trim();
        let rest = rest
            .strip_prefix("https://")
            .or_else(|| rest.strip_prefix("http://"))
            .unwrap_or(rest);
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(invalid("no host"));
        }
        // [v6]:port, v6 without a port, host:port, host.
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(|| invalid("unclosed ["))?;
            (host, after.strip_prefix(':'))
        } else if authority.matches(':').count() > 1 {
            (authority, None)
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| invalid("bad port"))?,
            None => 443,
        };
        Ok(ApiServerAddress {
            host: host.to_owned(),
            port,
        })
    }
}

/// Capacity and allocatable of each virtual node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeResources {
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub subnets: Vec<Subnet>,
    pub cluster_id: String,
    pub node_ip: IpAddr,
    pub kubelet_port: u16,
    pub resources: NodeResources,
    /// `None` until the kubeconfig's server is known.
    pub pod_used_apiserver: Option<ApiServerAddress>,
    pub wait_sandbox_running_timeout: Duration,
    pub status_sync_interval: Duration,
    pub orphan_sweep_interval: Duration,
    pub declare_websocket_streaming: bool,
    pub sa_token_refresh_interval: Duration,
    pub pod_sync_workers: u16,
    pub eligibility: EligibilityConfig,
}

impl Config {
    pub fn from_args(args: &Args) -> Result<Config> {
        let mut subnets: Vec<Subnet> = Vec::new();
        for text in &args.subnets {
            let subnet: Subnet = text.parse()?;
            if subnets.iter().any(|s| s.id == subnet.id) {
                return Err(Error::DuplicateSubnet(subnet.id));
            }
            subnets.push(subnet);
        }
        if subnets.is_empty() {
            return Err(Error::NoSubnets);
        }
        let cluster_id = args.cluster_id.trim();
        if cluster_id.is_empty() || !cluster_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(Error::Invalid {
                flag: "--cluster-id",
                value: args.cluster_id.clone(),
                reason: "use letters, digits and '-' only".into(),
            });
        }
        for (flag, value) in [
            ("--node-cpu", &args.node_cpu),
            ("--node-memory", &args.node_memory),
        ] {
            quantity::parse(value).map_err(|e| Error::Invalid {
                flag,
                value: value.clone(),
                reason: e.to_string(),
            })?;
        }
        let pod_used_apiserver = args.pod_used_apiserver.as_deref().map(str::parse).transpose()?;
        let eligibility = args.policy.eligibility();
        if args.status_sync_interval.is_zero() {
            return Err(Error::Invalid {
                flag: "--status-sync-interval",
                value: "0s".into(),
                reason: "must be positive".into(),
            });
        }
        let last_port = usize::from(args.kubelet_port) + subnets.len().saturating_sub(1);
        if args.kubelet_port == 0 || last_port > usize::from(u16::MAX) {
            return Err(Error::Invalid {
                flag: "--kubelet-port",
                value: args.kubelet_port.to_string(),
                reason: format!(
                    "{} virtual nodes need ports {}..={last_port}, each node its own",
                    subnets.len(),
                    args.kubelet_port
                ),
            });
        }
        let kubelet_ports = usize::from(args.kubelet_port)..=last_port;
        if kubelet_ports.contains(&usize::from(args.metrics_port)) {
            return Err(Error::Invalid {
                flag: "--metrics-port",
                value: args.metrics_port.to_string(),
                reason: format!(
                    "taken by a virtual node's kubelet API ({}..={last_port})",
                    args.kubelet_port
                ),
            });
        }
        Ok(Config {
            subnets,
            cluster_id: cluster_id.to_owned(),
            node_ip: args.node_ip,
            kubelet_port: args.kubelet_port,
            resources: NodeResources {
                cpu: args.node_cpu.clone(),
                memory: args.node_memory.clone(),
                pods: args.node_pods,
            },
            pod_used_apiserver,
            wait_sandbox_running_timeout: args.wait_sandbox_running_timeout,
            status_sync_interval: args.status_sync_interval,
            orphan_sweep_interval: args.orphan_sweep_interval,
            declare_websocket_streaming: args.declare_websocket_streaming,
            sa_token_refresh_interval: args.sa_token_refresh_interval,
            pod_sync_workers: args.pod_sync_workers.max(1),
            eligibility,
        })
    }
}

impl Config {
    /// Each virtual node and the port of its kubelet API, in `--subnet` order.
    pub fn kubelet_endpoints(&self) -> Vec<(String, u16)> {
        self.subnets
            .iter()
            .zip(self.kubelet_port..)
            .map(|(subnet, port)| (tke_policy::virtual_node::node_name(&subnet.id), port))
            .collect()
    }

    /// The kubelet port of the virtual node `node`.
    pub fn kubelet_port_of(&self, node: &str) -> Option<u16> {
        self.kubelet_endpoints()
            .into_iter()
            .find_map(|(name, port)| (name == node).then_some(port))
    }
}

#[cfg(test)]
mod tests {
    use tke_runtime::duration::flag as parse_duration;

    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec![
            "eklet",
            "--subnet",
            "subnet-a=ap-guangzhou-3",
            "--cluster-id",
            "cls-1",
            "--region",
            "ap-guangzhou",
        ];
        argv.extend_from_slice(&["--vpc-id", "vpc-1"]);
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn durations_are_read_as_the_chart_writes_them() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert!(parse_duration("10").unwrap_err().contains("unit"));
        assert!(parse_duration("10d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn each_virtual_node_has_a_kubelet_port_of_its_own() {
        let config = Config::from_args(&args(&[
            "--subnet=subnet-b=ap-guangzhou-4",
            "--kubelet-port=20000",
        ]))
        .unwrap();
        assert_eq!(
            config.kubelet_endpoints(),
            [
                ("eklet-subnet-a".to_owned(), 20000),
                ("eklet-subnet-b".to_owned(), 20001)
            ]
        );
        assert_eq!(config.kubelet_port_of("eklet-subnet-b"), Some(20001));
        assert_eq!(config.kubelet_port_of("eklet-subnet-c"), None);

        let two = ["--subnet=subnet-b=ap-guangzhou-4"];
        let error = |extra: &[&str]| {
            let mut all = two.to_vec();
            all.extend_from_slice(extra);
            Config::from_args(&args(&all)).unwrap_err().to_string()
        };
        assert!(error(&["--kubelet-port=65535"]).contains("--kubelet-port"));
        let taken = error(&["--kubelet-port=20000", "--metrics-port=20001"]);
        assert!(
            taken.contains("--metrics-port") && taken.contains("20000..=20001"),
            "{taken}"
        );
    }

    #[test]
    fn subnets_are_id_equals_zone_and_each_appears_once() {
        let config = Config::from_args(&args(&["--subnet", "subnet-b=ap-guangzhou-4"])).unwrap();
        assert_eq!(
            config.subnets,
            vec![
                Subnet {
                    id: "subnet-a".into(),
                    zone: "ap-guangzhou-3".into()
                },
                Subnet {
                    id: "subnet-b".into(),
                    zone: "ap-guangzhou-4".into()
                },
            ]
        );
        assert!(matches!(
            Config::from_args(&args(&["--subnet", "subnet-a=x"])),
            Err(Error::DuplicateSubnet(_))
        ));
        assert!(matches!("subnet-a".parse::<Subnet>(), Err(Error::Subnet(_))));
        assert!(matches!("=zone".parse::<Subnet>(), Err(Error::Subnet(_))));
        assert!(matches!("a b=zone".parse::<Subnet>(), Err(Error::Subnet(_))));
    }

    #[test]
    fn the_apiserver_for_pods_accepts_urls_and_host_port() {
        let parse = |s: &str| s.parse::<ApiServerAddress>();
        assert_eq!(
            parse("https://10.0.0.1:6443").unwrap(),
            ApiServerAddress {
                host: "10.0.0.1".into(),
                port: 6443
            }
        );
        assert_eq!(
            parse("apiserver.idc:8443").unwrap(),
            ApiServerAddress {
                host: "apiserver.idc".into(),
                port: 8443
            }
        );
        assert_eq!(parse("https://k8s.example.com/").unwrap().port, 443);
        assert_eq!(
            parse("[fd00::1]:6443").unwrap(),
            ApiServerAddress {
                host: "fd00::1".into(),
                port: 6443
            }
        );
        assert!(parse("https://:6443").is_err());
        assert!(parse("host:99999").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn bad_flags_are_named_in_the_error() {
        let err = Config::from_args(&args(&["--node-memory", "lots"])).unwrap_err();
        assert!(err.to_string().contains("--node-memory"), "{err}");
        let err = Config::from_args(&args(&["--pod-used-apiserver", "x:0"])).unwrap_err();
        assert!(err.to_string().contains("--pod-used-apiserver"), "{err}");
    }

    #[test]
    fn fixed_ip_pods_are_refused_unless_allowed() {
        assert!(Config::from_args(&args(&[])).unwrap().eligibility.fixed_ip_check);
        assert!(
            !Config::from_args(&args(&["--fixed-ip-check=false"]))
                .unwrap()
                .eligibility
                .fixed_ip_check
        );
    }
}
