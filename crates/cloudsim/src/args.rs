//! `tke-resilience cloudsim`: the command line. Credentials are never flags (they would show in `ps`
//! and in shell history): they come from `TENCENTCLOUD_SECRET_ID` / `TENCENTCLOUD_SECRET_KEY` (and
//! optional `TENCENTCLOUD_SESSION_TOKEN`) or from `--credentials-file`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tke_tencent::Credentials;

use crate::faults::{ANY_ACTION, ErrorRates, Faults};
use crate::instances::Ipv4Cidr;
use crate::{Config, serve};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8780")]
    pub listen: SocketAddr,
    /// The region served; requests for others get UnsupportedRegion.
    #[arg(long, default_value = "ap-guangzhou")]
    pub region: String,
    /// The accepted credentials: a mounted Secret directory (files secretID, secretKey) or a
    /// key=value file; without it, TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY.
    #[arg(long, env = "CLOUDSIM_CREDENTIALS_FILE")]
    pub credentials_file: Option<PathBuf>,
    /// From create to Running, e.g. 1s, 250ms, 0.
    #[arg(long, default_value = "1s", value_parser = tke_runtime::duration::flag)]
    pub start_delay: Duration,
    /// From a container's exit to its restart.
    #[arg(long, default_value = "1s", value_parser = tke_runtime::duration::flag)]
    pub restart_delay: Duration,
    /// Between two log lines of a running container.
    #[arg(long, default_value = "1s", value_parser = tke_runtime::duration::flag)]
    pub log_interval: Duration,
    /// Most live instances in a subnet, as SUBNET=N; repeatable.
    #[arg(long = "quota", value_name = "SUBNET=N", value_parser = parse_quota)]
    pub quotas: Vec<(String, usize)>,
    /// Requests per second per action before RequestLimitExceeded; 0 for no limit.
    #[arg(long, default_value_t = tke_tencent::rate_limit::DEFAULT_PER_SECOND)]
    pub rate_limit: u32,
    /// A subnet whose creates fail with ResourcesSoldOut; repeatable.
    #[arg(long = "sold-out-subnet", value_name = "SUBNET")]
    pub sold_out_subnets: Vec<String>,
    /// Share (0-1) of all calls refused with RequestLimitExceeded.
    #[arg(long, default_value_t = 0.0)]
    pub throttle_rate: f64,
    /// Share (0-1) of all calls refused with InternalError.
    #[arg(long, default_value_t = 0.0)]
    pub internal_error_rate: f64,
    /// Added before every API answer.
    #[arg(long, default_value = "0", value_parser = tke_runtime::duration::flag)]
    pub latency: Duration,
    /// Seed for ids and random faults, for reproducible runs.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Serve a sandbox agent (GET /metrics, the containers' usage; exec, attach and port-forward
    /// for signed callers, running real processes here) for every instance on PrivateIp:PORT.
    /// Needs a loopback --private-cidr (within 127.0.0.0/8) or --netns.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub agent_port: Option<u16>,
    /// The VPC: a network namespace (e.g. /run/netns/NAME) holding the whole --private-cidr and
    /// routed from the IDC, where the sandbox agents listen (as root).
    #[arg(long, value_name = "PATH", requires = "agent_port")]
    pub netns: Option<PathBuf>,
    /// The block private IPs come from, a /16 per subnet (so at most a /16).
    #[arg(long, value_name = "CIDR", default_value = "10.0.0.0/8", value_parser = parse_cidr)]
    pub private_cidr: (Ipv4Addr, u8),
    /// Cut --private-cidr into subnets of this prefix length instead of /16s (a VPC's /16 into
    /// /20s, say), from the block's own prefix to 28.
    #[arg(long, value_name = "BITS", value_parser = clap::value_parser!(u8).range(1..=28))]
    pub subnet_prefix: Option<u8>,
}

impl Args {
    pub fn config(&self, credentials: Credentials) -> Config {
        let mut faults = Faults {
            latency_ms: u64::try_from(self.latency.as_millis()).unwrap_or(u64::MAX),
            sold_out_subnets: self.sold_out_subnets.iter().cloned().collect(),
            ..Faults::default()
        };
        if self.throttle_rate > 0.0 || self.internal_error_rate > 0.0 {
            let rates = ErrorRates {
                throttle: self.throttle_rate,
                internal_error: self.internal_error_rate,
            };
            faults.error_rates.insert(ANY_ACTION.to_string(), rates);
        }
        Config {
            region: self.region.clone(),
            start_delay: self.start_delay,
            restart_delay: self.restart_delay,
            log_interval: self.log_interval,
            quotas: self.quotas.iter().cloned().collect::<BTreeMap<_, _>>(),
            rate_limit_per_second: self.rate_limit,
            faults,
            seed: self.seed,
            agent_port: self.agent_port,
            private_cidr: self.private_cidr,
            netns: self.netns.clone(),
            subnet_prefix: self.subnet_prefix,
            ..Config::new(credentials)
        }
    }
}

fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let block: Ipv4Cidr = text.parse()?;
    Ok((block.network(), block.prefix()))
}

fn parse_quota(text: &str) -> Result<(String, usize), String> {
    let (subnet, count) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not SUBNET=N"))?;
    let count = count
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: {count:?} is not a number of instances"))?;
    let subnet = subnet.trim();
    if subnet.is_empty() {
        return Err(format!("{text:?} names no subnet"));
    }
    Ok((subnet.to_string(), count))
}

/// Runs the simulator until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The binary may have installed a subscriber already; keep it.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    let credentials = match &args.credentials_file {
        Some(path) => Credentials::from_path(path).context("reading the credentials cloudsim accepts")?,
        None => Credentials::from_env().context(
            "cloudsim needs the credentials it accepts: set TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY or pass --credentials-file",
        )?,
    };
    let secret_id = credentials.secret_id.clone();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cloudsim cannot listen on {}", args.listen))?;
    let handle = serve(args.config(credentials), listener).await?;
    tracing::info!(
        address = %handle.local_addr(),
        endpoint = %handle.endpoint(),
        region = %args.region,
        %secret_id,
        start_delay = ?args.start_delay,
        rate_limit = args.rate_limit,
        private_cidr = %format_args!("{}/{}", args.private_cidr.0, args.private_cidr.1),
        agent_port = ?args.agent_port,
        netns = ?args.netns,
        "cloudsim listening"
    );
    tke_runtime::process::shutdown_signal().await;
    tracing::info!("cloudsim stopping");
    handle.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn durations_take_the_usual_units_and_bare_seconds() {
        assert_eq!(
            tke_runtime::duration::flag("250ms"),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(
            tke_runtime::duration::flag("1.5s"),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(tke_runtime::duration::flag("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(tke_runtime::duration::flag("0"), Ok(Duration::ZERO));
        assert!(tke_runtime::duration::flag("soon").is_err());
        assert!(
            tke_runtime::duration::flag("5d")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(tke_runtime::duration::flag("-1s").is_err());
    }

    #[test]
    fn flags_become_the_configuration() {
        let cli = Cli::try_parse_from([
            "cloudsim",
            "--start-delay=0",
            "--quota=subnet-a=3",
            "--quota",
            "subnet-b=0",
            "--sold-out-subnet=subnet-c",
            "--throttle-rate=0.1",
            "--rate-limit=5",
            "--latency=20ms",
        ])
        .unwrap();
        let config = cli.args.config(Credentials::new("AKID", "key"));
        assert_eq!(config.start_delay, Duration::ZERO);
        assert_eq!(
            config.quotas,
            BTreeMap::from([("subnet-a".into(), 3), ("subnet-b".into(), 0)])
        );
        assert!(config.faults.sold_out_subnets.contains("subnet-c"));
        assert_eq!(config.faults.error_rates[ANY_ACTION].throttle, 0.1);
        assert_eq!((config.rate_limit_per_second, config.faults.latency_ms), (5, 20));
    }

    #[test]
    fn agents_and_the_private_block_are_flags() {
        let cli =
            Cli::try_parse_from(["cloudsim", "--private-cidr", "127.0.0.0/8", "--agent-port=9100"]).unwrap();
        let config = cli.args.config(Credentials::new("AKID", "key"));
        assert_eq!(config.agent_port, Some(9100));
        assert_eq!(config.private_cidr, (Ipv4Addr::new(127, 0, 0, 0), 8));
        let defaults = Cli::try_parse_from(["cloudsim"])
            .unwrap()
            .args
            .config(Credentials::new("AKID", "key"));
        assert_eq!(
            (defaults.agent_port, defaults.private_cidr),
            (None, (Ipv4Addr::new(10, 0, 0, 0), 8)),
            "no agents, and the 10/8 of the real VPCs"
        );
        let error = |flags: &[&str]| {
            let mut argv = vec!["cloudsim"];
            argv.extend_from_slice(flags);
            Cli::try_parse_from(argv)
                .err()
                .map(|err| err.to_string())
                .unwrap_or_default()
        };
        assert!(error(&["--agent-port=0"]).contains("--agent-port"));
        assert!(error(&["--agent-port=70000"]).contains("--agent-port"));
        for (flag, says) in [
            ("--private-cidr=127.0.0.0", "ADDRESS/PREFIX"),
            ("--private-cidr=127.0.0/8", "not an IPv4 address"),
            ("--private-cidr=127.0.0.0/33", "not a prefix length"),
            ("--private-cidr=127.0.0.0/24", "prefix must be 16 or less"),
            ("--private-cidr=127.0.0.1/8", "did you mean 127.0.0.0/8?"),
        ] {
            let message = error(&[flag]);
            assert!(message.contains(says), "{flag}: {message}");
        }
    }

    #[test]
    fn credentials_are_not_flags() {
        assert!(Cli::try_parse_from(["cloudsim", "--secret-key=x"]).is_err());
        assert!(Cli::try_parse_from(["cloudsim", "--quota=nonsense"]).is_err());
    }
}
