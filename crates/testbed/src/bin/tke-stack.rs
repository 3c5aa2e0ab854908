//! `tke-stack`: the local stack behind `make up` — a test-bed control plane with two kwok "IDC"
//! nodes, cloudsim, eklet (provider `tencent` against cloudsim), eks-admission and tke-scheduler
//! (a second kube-scheduler with the extender). It stays in the foreground until SIGTERM or
//! SIGINT, then stops everything it started; the test bed's watchdog does the same if it is
//! killed outright.
//!
//! Usage: `tke-stack --state-dir .stack --binary target/debug/tke-resilience`

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tke_testbed::{ControlPlane, NodeSpec, Options, Proc, components, random_suffix};

const REGION: &str = "ap-guangzhou";
const ZONE: &str = "ap-guangzhou-3";

struct Args {
    state_dir: PathBuf,
    binary: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut state_dir = PathBuf::from(".stack");
    let mut binary = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--state-dir" => state_dir = args.next().context("--state-dir needs a value")?.into(),
            "--binary" => binary = Some(PathBuf::from(args.next().context("--binary needs a value")?)),
            other => bail!("unknown argument {other:?}; usage: tke-stack --state-dir DIR --binary PATH"),
        }
    }
    let binary = binary.context("--binary PATH (the tke-resilience binary) is required")?;
    Ok(Args {
        state_dir,
        binary: std::fs::canonicalize(&binary).with_context(|| binary.display().to_string())?,
    })
}

/// The steps `main` prints, counted once so that the last is not "7/6".
const STEPS: usize = 7;

fn step(n: usize, what: &str) {
    println!("[stack] {n}/{STEPS} {what}");
}

/// How long a component may take to answer once started.
const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let begun = Instant::now();
    std::fs::create_dir_all(&args.state_dir)?;
    let state = std::fs::canonicalize(&args.state_dir)?;
    let _ = std::fs::remove_file(state.join("ready"));

    // The extender's address goes into tke-scheduler's configuration before either starts.
    let [extender_port] = tke_testbed::free_ports::<1>()?;
    let extender = components::Extender::new(&args.binary, SocketAddr::from(([127, 0, 0, 1], extender_port)));

    step(
        1,
        "control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, tke-scheduler, kwok",
    );
    let scheduler_config = components::scheduler_config(&format!("http://{}", extender.addr()))?;
    let nodes = (1..=2)
        .map(|i| {
            NodeSpec::new(format!("idc-node-{i}"))
                .cpu("4")
                .memory("8Gi")
                .pods(110)
        })
        .collect();
    let cp = ControlPlane::start(Options {
        second_scheduler_config: Some(scheduler_config),
        nodes,
        ..Options::default()
    })
    .await
    .context("starting the control plane")?;
    let run = cp.run_dir().to_owned();

    // Demo credentials, fresh for every stack; cloudsim accepts only these.
    let secret_id = format!("AKIDlocal{}", random_suffix());
    let secret_key = format!("{}{}{}", random_suffix(), random_suffix(), random_suffix());
    let credentials = run.join("cloud-credentials");
    components::write_credentials(&credentials, &secret_id, &secret_key)?;
    let subnet = format!(
        "subnet-{}",
        random_suffix()
            .chars()
            .chain(random_suffix().chars())
            .take(8)
            .collect::<String>()
    );
    // The VPC: a network namespace holding the sandboxes' addresses, routed from this namespace
    // like Direct Connect, where cloudsim's sandbox agents listen (usage, exec, port-forward, the
    // ports pods declare). Without one, sandboxes get addresses nothing answers on.
    let vpc = match tke_testbed::realnode::address::unavailable() {
        None => Some(cp.add_vpc("vpc").context("creating the VPC network namespace")?),
        Some(why) => {
            eprintln!(
                "    (no VPC network namespace: {why}; cloud pods get addresses nothing serves, so \
                 no exec, port-forward, kubectl top or Service traffic to them)"
            );
            None
        }
    };
    let agents = vpc.as_ref().map(components::AgentBlock::in_vpc).transpose()?;

    step(
        2,
        &match &vpc {
            Some(vpc) => format!(
                "cloudsim, the local Tencent Cloud EKS container-instance API; VPC {} in network namespace {}",
                vpc.block_text(),
                vpc.netns
            ),
            None => "cloudsim, the local Tencent Cloud EKS container-instance API".to_owned(),
        },
    );
    let mut cloudsim = components::Cloudsim::new(&args.binary, &credentials)?.region(REGION);
    if let Some(agents) = &agents {
        cloudsim = cloudsim.agents(agents);
    }
    let cloudsim_url = cloudsim.endpoint();
    let mut procs: Vec<Proc> = vec![cloudsim.spawn(&cp)?];
    components::wait_http(&mut procs, &cloudsim.stats_url(), PATIENCE).await?;

    let eklet = components::Eklet::new(&args.binary, "cls-local", &subnet, ZONE)?
        .tencent(&cloudsim_url, REGION, "vpc-local", "sg-local")
        .arg(format!("--credentials-file={}", credentials.display()));
    let eklet = match &agents {
        Some(agents) => eklet.agents(agents),
        None => eklet,
    };
    let node_name = eklet.node_name();
    step(3, &format!("eklet: virtual node {node_name}"));
    // kube-apiserver will not proxy to a loopback node address (`kubectl get --raw
    // /api/v1/nodes/NODE/proxy/...`), so where the machine allows it eklet's node address lives in a
    // network namespace of the stack's own, relayed to eklet's loopback port.
    let mut node_address = match tke_testbed::realnode::address::unavailable() {
        None => Some(cp.add_node_address("eklet")?),
        Some(why) => {
            eprintln!(
                "    (virtual node on 127.0.0.1: the apiserver's node proxy will refuse it; a node address needs {why})"
            );
            None
        }
    };
    let node_ip = node_address
        .as_ref()
        .map_or_else(|| "127.0.0.1".to_owned(), |a| a.ip.to_string());
    let serving =
        cp.pki()
            .issue_server("eklet-kubelet", &node_name, &["127.0.0.1", "localhost", &node_ip])?;
    let eklet = eklet
        .node_ip(Some(node_ip))
        .serving_certificate(&serving.cert_file, &serving.key_file);
    procs.push(eklet.spawn(&cp)?);
    if let Some(address) = node_address.as_mut() {
        let kubelet = eklet.kubelet_addr();
        address.forward(kubelet.port(), kubelet)?;
    }
    let eklet_metrics = eklet.metrics_addr();
    let client = cp.client().await?;
    tke_testbed::nodes::wait_ready(&client, &node_name, PATIENCE)
        .await
        .with_context(|| logs_hint(&procs))?;

    step(4, "eks-admission, the toleration controller");
    let admission = components::Admission::new(&args.binary)?;
    procs.push(admission.spawn(&cp)?);
    components::wait_http(
        &mut procs,
        &format!("http://{}/healthz", admission.metrics_addr()),
        PATIENCE,
    )
    .await?;

    step(5, "tke-scheduler's extender");
    procs.push(extender.spawn(&cp)?);
    components::wait_http(&mut procs, &extender.ready_url(), PATIENCE).await?;

    step(6, "metrics-server, for kubectl top and the HPA");
    let metrics_server = cp
        .start_metrics_server(tke_testbed::metrics_server::Options {
            // kwok's simulated nodes have no kubelet to scrape.
            node_selector: Some("node.kubernetes.io/instance-type=eklet".into()),
            kubelet_ca: Some(cp.pki().ca.cert_file.clone()),
            ..Default::default()
        })
        .await
        .context("starting metrics-server")?;
    procs.push(metrics_server.proc);

    step(STEPS, "writing .stack/kubeconfig and .stack/env");
    std::fs::copy(cp.kubeconfig(), state.join("kubeconfig"))?;
    std::fs::write(
        state.join("env"),
        format!(
            "CLOUDSIM_ENDPOINT={cloudsim_url}\nTENCENTCLOUD_SECRET_ID={secret_id}\nTENCENTCLOUD_SECRET_KEY={secret_key}\nTENCENTCLOUD_REGION={REGION}\nEKLET_METRICS={eklet_metrics}\n"
        ),
    )?;
    let logs = state.join("logs");
    let _ = std::fs::remove_file(&logs);
    std::os::unix::fs::symlink(run.join("logs"), &logs)?;
    std::fs::write(state.join("ready"), "")?;
    println!(
        "[stack] up in {:.0}s: API server {}, cloudsim {cloudsim_url}, virtual node {node_name}",
        begun.elapsed().as_secs_f64(),
        cp.apiserver_url()
    );
    println!("[stack] export KUBECONFIG={}", state.join("kubeconfig").display());
    println!("[stack] logs in {}", logs.display());

    supervise(&mut procs).await;
    println!("[stack] stopping");
    drop(procs);
    drop(node_address);
    drop(vpc);
    drop(cp);
    for file in ["ready", "kubeconfig", "env", "logs", "pid"] {
        let _ = std::fs::remove_file(state.join(file));
    }
    Ok(())
}

/// Until SIGTERM or SIGINT; says so when a component dies, and keeps the rest running so its log
/// can be read.
async fn supervise(procs: &mut [Proc]) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return;
    };
    let mut reported = vec![false; procs.len()];
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = tick.tick() => {
                for (proc, reported) in procs.iter_mut().zip(reported.iter_mut()) {
                    if !*reported && let Some(status) = proc.exited() {
                        *reported = true;
                        eprintln!("[stack] {} exited ({status}); its log: {}", proc.name, proc.log.display());
                    }
                }
            }
        }
    }
}

fn logs_hint(procs: &[Proc]) -> String {
    let logs: Vec<String> = procs.iter().map(|p| p.log.display().to_string()).collect();
    format!("logs: {}", logs.join(", "))
}
