//! `tke-resilience`: one binary, one subcommand per component.

mod explain;
mod report;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tke-resilience",
    version,
    about = "Burst pending pods to serverless cloud containers through a virtual node"
)]
struct Cli {
    /// Log format: `text` for people, `json` for log pipelines. The level comes from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Explain, rule by rule, whether a pod may burst to the cloud and where it would go.
    Explain(explain::Args),
    /// What the burst used and cost: cloud pod-hours, CPU core-hours, memory GiB-hours, GPU-hours
    /// and an estimated cost, per namespace or workload, from the Prometheus that scrapes eklet.
    Report(report::Args),
    /// Print the version of this binary.
    Version,
    /// The tke-scheduler extender: kube-scheduler asks it whether a pod stays local or goes to the cloud.
    SchedulerExtender(tke_extender::Args),
    /// A local server speaking the Tencent Cloud EKS container-instance API, for demos and tests.
    Cloudsim(tke_cloudsim::Args),
    /// eks-admission, the toleration controller: unschedulable pods that may burst get the virtual node's toleration.
    Admission(tke_admission::Args),
    /// Bring burst pods home: evict cloud pods, one per workload at a time, once a local node fits them again.
    Rebalance(tke_rebalance::Args),
    /// eklet, the virtual node manager: one virtual node per cloud subnet, its pods run as cloud sandboxes.
    Eklet(Box<tke_eklet::Args>),
    /// Before uninstalling: cordon eklet's virtual nodes, evict every pod on them like `kubectl drain
    /// --force --ignore-daemonsets` (PodDisruptionBudgets hold; bare pods too, or their cloud
    /// sandboxes would be orphaned), wait until eklet has removed every sandbox, stop eklet, then
    /// delete the Nodes and their Leases.
    EkletDrain(tke_eklet::drain::Args),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // ring is the only rustls provider in the tree; install it before any TLS client or server.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Explain(args) => {
            if let Err(error) = explain::run(args).await {
                eprintln!("error: {error}");
                std::process::exit(1);
            }
        }
        Command::Report(args) => {
            if let Err(error) = report::run(args).await {
                eprintln!("error: {error}");
                std::process::exit(1);
            }
        }
        Command::Version => println!("tke-resilience {}", env!("CARGO_PKG_VERSION")),
        Command::SchedulerExtender(args) => tke_extender::run(args).await?,
        Command::Cloudsim(args) => tke_cloudsim::run(args).await?,
        Command::Admission(args) => tke_admission::run(args).await?,
        Command::Rebalance(args) => tke_rebalance::run(args).await?,
        Command::Eklet(args) => tke_eklet::run(*args).await?,
        Command::EkletDrain(args) => {
            if let Err(error) = tke_eklet::drain::run(args).await {
                tracing::error!(%error, "eklet-drain failed");
                eprintln!("error: {error}");
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
