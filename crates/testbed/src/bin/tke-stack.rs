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
use tke_testbed::{ControlPlane, NodeSpec, Options, Proc, random_suffix};

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

fn step(n: usize, what: &str) {
    println!("[stack] {n}/6 {what}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let begun = Instant::now();
    std::fs::create_dir_all(&args.state_dir)?;
    let state = std::fs::canonicalize(&args.state_dir)?;
    let _ = std::fs::remove_file(state.join("ready"));

    let [
        extender_port,
        cloudsim_port,
        eklet_metrics,
        kubelet_port,
        admission_metrics,
        agent_port,
    ] = tke_testbed::free_ports::<6>()?;
    let extender = SocketAddr::from(([127, 0, 0, 1], extender_port));

    step(
        1,
        "control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, tke-scheduler, kwok",
    );
    let scheduler_config =
        std::fs::read_to_string(tke_testbed::workspace_root().join("deploy/tke-scheduler.yaml"))?
            .replace("${EXTENDER_URL}", &format!("http://{extender}"));
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
    })
    .await
    .context("starting the control plane")?;
    let run = cp.run_dir().to_owned();
    let kubeconfig = cp.kubeconfig().display().to_string();

    // Demo credentials, fresh for every stack; cloudsim accepts only these.
    let secret_id = format!("AKIDlocal{}", random_suffix());
    let secret_key = format!("{}{}{}", random_suffix(), random_suffix(), random_suffix());
    let credentials = run.join("cloud-credentials");
    std::fs::write(
        &credentials,
        format!("secretID={secret_id}\nsecretKey={secret_key}\n"),
    )?;
    let credentials_flag = format!("--credentials-file={}", credentials.display());
    let cloudsim_url = format!("http://127.0.0.1:{cloudsim_port}");
    let subnet = format!(
        "subnet-{}",
        random_suffix()
            .chars()
            .chain(random_suffix().chars())
            .take(8)
            .collect::<String>()
    );

    step(2, "cloudsim, the local Tencent Cloud EKS container-instance API");
    let mut procs: Vec<Proc> = Vec::new();
    procs.push(cp.spawn_process(
        "cloudsim",
        &args.binary,
        &[
            "cloudsim".into(),
            format!("--listen=127.0.0.1:{cloudsim_port}"),
            format!("--region={REGION}"),
            credentials_flag.clone(),
            // Sandbox agents on loopback addresses, so eklet can read usage as it would over
            // Direct Connect; the block is the stack's own.
            format!("--agent-port={agent_port}"),
            format!("--private-cidr=127.{}.0.0/16", 16 + std::process::id() % 200),
        ],
        &[],
    )?);
    wait_http(&format!("{cloudsim_url}/admin/stats"), "cloudsim", &mut procs).await?;

    step(3, &format!("eklet: virtual node eklet-{subnet}"));
    let node_name = format!("eklet-{subnet}");
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
    procs.push(cp.spawn_process(
        "eklet",
        &args.binary,
        &[
            "eklet".into(),
            format!("--kubeconfig={kubeconfig}"),
            format!("--cloud-endpoint={cloudsim_url}"),
            credentials_flag.clone(),
            format!("--region={REGION}"),
            "--vpc-id=vpc-local".into(),
            "--security-group-id=sg-local".into(),
            format!("--subnet={subnet}={ZONE}"),
            "--cluster-id=cls-local".into(),
            format!("--node-ip={node_ip}"),
            format!("--kubelet-port={kubelet_port}"),
            // The apiserver's kubelet client certificate is signed by the test bed CA.
            format!("--client-ca-file={}", cp.pki().ca.cert_file.display()),
            format!("--metrics-port={eklet_metrics}"),
            "--bind-address=127.0.0.1".into(),
            format!("--tls-cert-file={}", serving.cert_file.display()),
            format!("--tls-private-key-file={}", serving.key_file.display()),
            format!("--sandbox-metrics-port={agent_port}"),
        ],
        &[],
    )?);
    if let Some(address) = node_address.as_mut() {
        address.forward(kubelet_port, SocketAddr::from(([127, 0, 0, 1], kubelet_port)))?;
    }
    let client = cp.client().await?;
    tke_testbed::nodes::wait_ready(&client, &node_name, Duration::from_secs(60))
        .await
        .with_context(|| logs_hint(&procs))?;

    step(4, "eks-admission, the toleration controller");
    procs.push(cp.spawn_process(
        "admission",
        &args.binary,
        &[
            "admission".into(),
            format!("--kubeconfig={kubeconfig}"),
            format!("--metrics-port={admission_metrics}"),
            "--metrics-bind-address=127.0.0.1".into(),
        ],
        &[],
    )?);
    wait_http(
        &format!("http://127.0.0.1:{admission_metrics}/healthz"),
        "admission",
        &mut procs,
    )
    .await?;

    step(5, "tke-scheduler's extender");
    procs.push(cp.spawn_process(
        "scheduler-extender",
        &args.binary,
        &[
            "scheduler-extender".into(),
            format!("--kubeconfig={kubeconfig}"),
            format!("--listen={extender}"),
        ],
        &[],
    )?);
    wait_http(
        &format!("http://{extender}/readyz"),
        "scheduler-extender",
        &mut procs,
    )
    .await?;

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

    step(7, "writing .stack/kubeconfig and .stack/env");
    std::fs::copy(cp.kubeconfig(), state.join("kubeconfig"))?;
    std::fs::write(
        state.join("env"),
        format!(
            "CLOUDSIM_ENDPOINT={cloudsim_url}\nTENCENTCLOUD_SECRET_ID={secret_id}\nTENCENTCLOUD_SECRET_KEY={secret_key}\nTENCENTCLOUD_REGION={REGION}\n"
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

async fn wait_http(url: &str, what: &str, procs: &mut [Proc]) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(resp) = http.get(url).send().await
            && resp.status().is_success()
        {
            return Ok(());
        }
        for proc in procs.iter_mut() {
            if let Some(status) = proc.exited() {
                bail!("{} exited ({status}):\n{}", proc.name, proc.log_tail(30));
            }
        }
        if Instant::now() > deadline {
            bail!("{what} did not answer {url} within 60s; {}", logs_hint(procs));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn logs_hint(procs: &[Proc]) -> String {
    let logs: Vec<String> = procs.iter().map(|p| p.log.display().to_string()).collect();
    format!("logs: {}", logs.join(", "))
}
