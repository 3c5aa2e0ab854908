//! `kubectl exec` and `kubectl port-forward` on a cloud pod of the `tencent` provider, with real
//! kubectl through the real apiserver: kubectl → apiserver → eklet's kubelet API → the tencent
//! provider → a signed WebSocket to the sandbox agent cloudsim runs at the pod IP (a loopback
//! address) → a real process on this machine with the container's env, or the HTTP responder of a
//! port the container declares (and `kubectl cp` and `attach`). `kubectl exec -it` and
//! `kubectl run -it --rm` run on a pseudo-terminal of the test's, as at a user's terminal; the
//! last test puts a target cluster in between (IDC → `kubernetes` provider → target → its own
//! eklet with the `tencent` provider → cloudsim).

mod support;

use std::process::Stdio;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use serde_json::json;
use support::{
    eklet::*,
    kubectl::{PortForward, kubectl, run},
    terminal::Terminal,
};
use tke_cloudsim::Handle;
use tke_testbed::{ControlPlane, wait};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A Running pod `web` on the virtual node of an eklet (started with `eklet_flags`) with the
/// tencent provider, in its own namespace; its container has stdin and a tty (for attach) and
/// declares port 8080.
struct CloudPod {
    cp: std::sync::Arc<ControlPlane>,
    client: kube::Client,
    ns: String,
    id: Identity,
    instance_id: String,
    _eklet: Eklet,
}

impl CloudPod {
    async fn start(
        cloud: &Handle,
        agents: &str,
        label: &str,
        eklet_flags: &[&str],
    ) -> anyhow::Result<CloudPod> {
        let cp = ControlPlane::shared().await?;
        let client = cp.client().await?;
        let ns = cp.namespace(label).await?;
        let id = Identity::unique();
        let flags: Vec<&str> = [agents].into_iter().chain(eklet_flags.iter().copied()).collect();
        let eklet = Eklet::start(&cp, cloud, &id, &flags).await?;
        let mut spec = cloud_pod_spec(
            &id,
            json!([{
                "name": "web",
                "image": "busybox:1.36",
                "stdin": true,
                "tty": true,
                "env": [
                    {"name": "GREETING", "value": "hello from the cloud pod"},
                    {"name": tke_cloudsim::PORTS_ENV, "value": "8080"},
                ],
                "ports": [{"containerPort": 8080}],
            }]),
        );
        spec["automountServiceAccountToken"] = json!(false);
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": spec}))?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        pods.create(&PostParams::default(), &pod).await?;
        wait::until(PATIENCE, "the cloud pod Running", || async {
            pods.get("web").await.is_ok_and(|p| is_running(&p))
        })
        .await?;
        let uid = pods.get("web").await?.metadata.uid.context("the pod's uid")?;
        let instance_id = instance_for(cloud, &id.cluster_id, &uid)
            .await?
            .context("the pod's instance")?
            .eks_ci_id;
        Ok(CloudPod {
            cp,
            client,
            ns,
            id,
            instance_id,
            _eklet: eklet,
        })
    }

    async fn finish(self) {
        remove_node(&self.client, &self.id.node()).await;
    }
}

/// A cloudsim whose instances have agents; the eklet flag that points the provider at them.
async fn cloud_with_agents() -> anyhow::Result<(Handle, Agents)> {
    tke_testbed::install_crypto();
    let cp = ControlPlane::shared().await?;
    let mut agents = None;
    let cloud = start_cloudsim(|config| agents = Some(enable_agents(&cp, config))).await?;
    Ok((cloud, agents.context("cloudsim was not configured")??))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_and_port_forward_on_a_cloud_pod_reach_its_sandbox_through_the_agent()
-> anyhow::Result<()> {
    let (cloud, agents) = cloud_with_agents().await?;
    let pod = CloudPod::start(&cloud, &agents, "exec-cloud", &[]).await?;
    let (cp, ns, instance_id) = (&*pod.cp, pod.ns.as_str(), pod.instance_id.as_str());

    // Output on both streams, the container's env, and the exit code, as from a local pod.
    let mut exec = kubectl(cp);
    exec.args(["exec", "-n", ns, "web", "--", "sh", "-c"])
        .arg("echo \"$GREETING\"; echo to-stderr >&2; exit 3");
    let (code, stdout, stderr) = run(exec, None).await?;
    assert_eq!(code, 3, "the command's exit code; stderr: {stderr}");
    assert_eq!(stdout.trim(), "hello from the cloud pod");
    assert!(stderr.contains("to-stderr"), "{stderr}");

    // A command the sandbox does not have.
    let mut exec = kubectl(cp);
    exec.args(["exec", "-n", ns, "web", "--", "no-such-command-here"]);
    let (code, _, stderr) = run(exec, None).await?;
    assert_eq!(code, 127, "{stderr}");

    // stdin piped in.
    let mut exec = kubectl(cp);
    exec.args([
        "exec",
        "-i",
        "-n",
        ns,
        "web",
        "--",
        "sh",
        "-c",
        "read line; echo \"got $line\"",
    ]);
    let (code, stdout, stderr) = run(exec, Some("typed in\n")).await?;
    assert_eq!((code, stdout.trim()), (0, "got typed in"), "{stderr}");

    // kubectl cp both ways: tar in the sandbox's working directory.
    let local = tempfile::tempdir()?;
    let upload = local.path().join("upload.txt");
    std::fs::write(&upload, "uploaded through kubectl cp\n")?;
    let mut cp_in = kubectl(cp);
    cp_in
        .args(["cp", "-n", ns, "-c", "web"])
        .arg(&upload)
        .arg("web:upload.txt");
    let (code, _, stderr) = run(cp_in, None).await?;
    assert_eq!(code, 0, "{stderr}");
    let mut back = kubectl(cp);
    back.args(["cp", "-n", ns, "-c", "web", "web:upload.txt"])
        .arg(local.path().join("back.txt"));
    let (code, _, stderr) = run(back, None).await?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(local.path().join("back.txt"))?,
        "uploaded through kubectl cp\n",
        "the file went into the sandbox and came back"
    );

    // kubectl attach joins the simulated main process: its log lines as they are written.
    let mut attach = kubectl(cp);
    attach
        .args(["attach", "-n", ns, "web", "-c", "web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut attached = attach.spawn()?;
    let mut lines = BufReader::new(attached.stdout.take().context("stdout")?).lines();
    let line = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("web log line") {
                return Ok(line);
            }
        }
        bail!("kubectl attach ended without output")
    })
    .await
    .context("no output from kubectl attach")??;
    assert!(line.contains(" web log line "), "{line}");
    let _ = attached.kill().await;

    // With stdin, what is typed is echoed into its output, and the end of it ends the attach.
    let mut attach = kubectl(cp);
    attach.args(["attach", "-i", "-n", ns, "web", "-c", "web"]);
    let (code, stdout, stderr) = run(attach, Some("typed into the main process\n")).await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("typed into the main process\n"), "{stdout}");
    // The process read it: its log says so.
    let mut logs = kubectl(cp);
    logs.args(["logs", "-n", ns, "web"]);
    let (code, stdout, stderr) = run(logs, None).await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout
            .lines()
            .any(|line| line == "web read: typed into the main process"),
        "{stdout}"
    );

    // kubectl killed mid-exec: the process it started in the sandbox goes with it.
    let marker = format!("3600.{}", std::process::id());
    let mut long = kubectl(cp);
    long.args(["exec", "-n", ns, "web", "--", "sleep", &marker])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut sleeping = long.spawn()?;
    wait::until(PATIENCE, "the sandbox's sleep started", || async {
        sleeps(&marker) == 1
    })
    .await?;
    sleeping.kill().await?;
    wait::until(PATIENCE, "the sandbox's sleep gone with kubectl", || async {
        sleeps(&marker) == 0
    })
    .await?;

    // A declared port of the pod, through kubectl port-forward.
    let mut forward = kubectl(cp);
    forward.args(["port-forward", "-n", ns, "pod/web", ":8080"]);
    let forwarding = PortForward::start(forward).await?;
    let (status, body) = forwarding.get("/").await?;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("cloudsim {instance_id} web port 8080\n")
    );
    drop(forwarding);

    pod.finish().await;
    Ok(())
}

/// `kubectl exec -it web -- sh` in `ns` on a terminal: the shell has a terminal of the size kubectl's
/// has, follows it when it changes, and its exit code is kubectl's.
async fn shell_on_a_terminal(cp: &ControlPlane, ns: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut terminal = Terminal::kubectl(cp, &["exec", "-it", "-n", ns, "web", "--", "sh"], env, (100, 30))?;
    // Arithmetic, so that the answer differs from the echo of what was typed.
    terminal
        .type_text("[ -t 0 ] && echo \"term-$((6*7)) $TERM\"\r")
        .await?;
    terminal.expect("term-42 xterm").await?;
    assert_eq!(
        terminal_size(&mut terminal).await?,
        "30x100",
        "the size kubectl started with"
    );
    terminal.resize(120, 40)?;
    // kubectl sends the new size when its SIGWINCH arrives, which may be after what is typed next.
    let mut sizes = Vec::new();
    while sizes.last().is_none_or(|size| size != "40x120") {
        anyhow::ensure!(sizes.len() < 100, "the resize never arrived: {sizes:?}");
        sizes.push(terminal_size(&mut terminal).await?);
    }
    terminal.type_text("exit 5\r").await?;
    assert_eq!(terminal.exit_code().await?, 5, "the shell's exit code");
    Ok(())
}

/// `stty size` in the remote shell, as `ROWSxCOLUMNS`.
async fn terminal_size(terminal: &mut Terminal) -> anyhow::Result<String> {
    terminal
        .type_text("echo \"size=$(stty size | tr ' ' x)=$((6*7))\"\r")
        .await?;
    let shown = terminal.expect("=42").await?;
    let size = shown
        .rsplit("size=")
        .next()
        .and_then(|rest| rest.strip_suffix("=42"))
        .context("no size shown")?;
    Ok(size.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_it_on_a_cloud_pod_is_a_real_terminal_that_follows_resizes_on_each_path()
-> anyhow::Result<()> {
    let (cloud, agents) = cloud_with_agents().await?;
    let pod = CloudPod::start(&cloud, &agents, "tty-ws", &[]).await?;
    shell_on_a_terminal(&pod.cp, &pod.ns, &[])
        .await
        .context("WebSocket proxied unchanged")?;
    shell_on_a_terminal(
        &pod.cp,
        &pod.ns,
        &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")],
    )
    .await
    .context("SPDY from kubectl")?;

    // A job the shell leaves in the background keeps the terminal open, not the exec: kubectl ends
    // with the shell, as with a runtime. The job outlives it (as in a container) until killed here.
    let marker = format!("3601.{}", std::process::id());
    let terminal = Terminal::kubectl(
        &pod.cp,
        &["exec", "-it", "-n", &pod.ns, "web", "--", "sh"],
        &[],
        (80, 24),
    )?;
    terminal.type_text(&format!("sleep {marker} &\r")).await?;
    wait::until(PATIENCE, "the background job started", || async {
        sleeps(&marker) == 1
    })
    .await?;
    terminal.type_text("exit 4\r").await?;
    let code = terminal.exit_code().await;
    for pid in sleep_pids(&marker) {
        let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
    }
    assert_eq!(code?, 4, "kubectl ends with the shell");
    pod.finish().await;
    // cloudsim serves one subnet per test's loopback block: another eklet needs another cloudsim.
    let (cloud, agents) = cloud_with_agents().await?;
    let pod = CloudPod::start(
        &cloud,
        &agents,
        "tty-wsspdy",
        &["--declare-websocket-streaming=false"],
    )
    .await?;
    shell_on_a_terminal(&pod.cp, &pod.ns, &[])
        .await
        .context("WebSocket translated to SPDY by the apiserver")?;
    pod.finish().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_run_it_rm_attaches_to_a_new_cloud_pod_and_deletes_it_afterwards() -> anyhow::Result<()> {
    let (cloud, agents) = cloud_with_agents().await?;
    let pod = CloudPod::start(&cloud, &agents, "run-it", &[]).await?;
    let mut spec = cloud_pod_spec(&pod.id, json!([]));
    spec.as_object_mut().context("a spec")?.remove("containers");
    spec["automountServiceAccountToken"] = json!(false);
    let overrides = json!({"apiVersion": "v1", "spec": spec}).to_string();
    let mut terminal = Terminal::kubectl(
        &pod.cp,
        &[
            "run",
            "-n",
            &pod.ns,
            "shell",
            "-it",
            "--rm",
            "--image=busybox:1.36",
            "--overrides",
            &overrides,
        ],
        &[],
        (80, 24),
    )?;
    terminal.expect("If you don't see a command prompt").await?;
    terminal.type_text("typed at the terminal\r").await?;
    terminal.expect("typed at the terminal\r\n").await?;
    // Ctrl-D: the end of the simulated process's input ends the attach; --rm then deletes the pod.
    terminal.type_text("\x04").await?;
    let screen = terminal.screen();
    assert_eq!(terminal.exit_code().await?, 0, "{screen}");
    let pods: Api<Pod> = Api::namespaced(pod.client.clone(), &pod.ns);
    wait::until(PATIENCE, "the pod kubectl run made gone", || async {
        matches!(pods.get("shell").await, Err(kube::Error::Api(e)) if e.code == 404)
    })
    .await?;
    pod.finish().await;
    Ok(())
}

/// How many processes on this machine run `sleep <marker>` (cloudsim's sandbox processes are
/// real ones; kubectl's own command line only mentions them after `--`).
fn sleeps(marker: &str) -> usize {
    sleep_pids(marker).len()
}

/// The processes on this machine that run `sleep <marker>`.
fn sleep_pids(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let mut args = cmdline.split(|b| *b == 0);
            let program = args.next().unwrap_or_default();
            (program.ends_with(b"sleep") && args.next() == Some(marker.as_bytes())).then_some(pid)
        })
        .collect()
}

/// The chain IDC → target cluster (the `kubernetes` provider) → cloudsim (the target's own eklet,
/// with the `tencent` provider): `kubectl exec` and `kubectl port-forward` in the IDC reach the
/// sandbox two virtual nodes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_and_port_forward_reach_a_cloudsim_sandbox_through_a_target_clusters_virtual_node()
-> anyhow::Result<()> {
    let (cloud, agents) = cloud_with_agents().await?;
    let idc = ControlPlane::shared().await?;
    let target = ControlPlane::start(tke_testbed::Options::default()).await?;
    // The target's own virtual node, onto cloudsim.
    let target_id = Identity::unique();
    let target_eklet = Eklet::start(&target, &cloud, &target_id, &[agents.as_str()]).await?;
    // The IDC's, bursting into the target, onto that virtual node.
    let id = Identity::unique();
    let provider = [
        "--provider=kubernetes".to_owned(),
        format!("--target-kubeconfig={}", target.kubeconfig().display()),
    ];
    let node_selector = format!(
        "--target-node-selector=kubernetes.io/hostname={}",
        target_id.node()
    );
    let idc_eklet = Eklet::start_with_provider(
        &idc,
        &provider,
        &id,
        &[
            node_selector.as_str(),
            "--target-toleration=eks.tke.cloud.tencent.com/eklet:NoSchedule",
        ],
    )
    .await?;

    let client = idc.client().await?;
    let ns = idc.namespace("exec-chain").await?;
    let mut spec = cloud_pod_spec(
        &id,
        json!([{
            "name": "web",
            "image": "busybox:1.36",
            "env": [
                {"name": "GREETING", "value": "hello from two clusters away"},
                {"name": tke_cloudsim::PORTS_ENV, "value": "8080"},
            ],
            "ports": [{"containerPort": 8080}],
        }]),
    );
    spec["automountServiceAccountToken"] = json!(false);
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": spec}))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod).await?;
    wait::until(
        PATIENCE,
        "the IDC pod Running through both virtual nodes",
        || async { pods.get("web").await.is_ok_and(|p| is_running(&p)) },
    )
    .await?;
    let on_target_node = Api::<Pod>::all(target.client().await?)
        .list(&kube::api::ListParams::default().labels("eklet.tke-resilience.io/pod-uid"))
        .await?
        .items
        .into_iter()
        .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(target_id.node().as_str()));
    assert!(
        on_target_node.is_some(),
        "the target pod runs on the target's virtual node"
    );

    let mut exec = kubectl(&idc);
    exec.args(["exec", "-n", &ns, "web", "--", "sh", "-c"])
        .arg("echo \"$GREETING\"; echo to-stderr >&2; exit 3");
    let (code, stdout, stderr) = run(exec, None).await?;
    assert_eq!(code, 3, "the command's exit code; stderr: {stderr}");
    assert_eq!(stdout.trim(), "hello from two clusters away");
    assert!(stderr.contains("to-stderr"), "{stderr}");

    let mut forward = kubectl(&idc);
    forward.args(["port-forward", "-n", &ns, "pod/web", ":8080"]);
    let forwarding = PortForward::start(forward).await?;
    let (status, body) = forwarding.get("/").await?;
    assert!(status.contains(" 200 "), "{status}");
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.starts_with("cloudsim eksci-") && body.ends_with(" web port 8080\n"),
        "cloudsim's responder on the sandbox's port: {body:?}"
    );
    drop(forwarding);

    shell_on_a_terminal(&idc, &ns, &[])
        .await
        .context("a terminal two clusters away")?;

    remove_node(&client, &id.node()).await;
    remove_node(&target.client().await?, &target_id.node()).await;
    // eklets before the target control plane they talk to.
    drop((idc_eklet, target_eklet));
    Ok(())
}

/// `kubectl <args>` `runs` times: p50 and p99 wall time in ms.
async fn latency(
    cp: &ControlPlane,
    args: &[&str],
    env: &[(&str, &str)],
    runs: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut command = kubectl(cp);
        command.envs(env.iter().copied()).args(args);
        let started = std::time::Instant::now();
        let (code, _, stderr) = run(command, None).await?;
        anyhow::ensure!(code == 0, "kubectl {args:?}: {stderr}");
        samples.push(started.elapsed());
    }
    samples.sort();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok((at(0.5), at(0.99)))
}

/// A benchmark, not a test: `kubectl exec web -- true` through eklet and the sandbox agent,
/// `EXEC_RUNS` (100) times on each streaming path (p50 / p99 ms), next to `kubectl get pod web`,
/// what kubectl and the apiserver cost alone:
///
/// ```text
/// TKE_TESTBED_BIN=... cargo test -p tke-resilience --test exec_cloudsim -- --ignored --nocapture
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn bench_exec_latency_through_the_sandbox_agent() -> anyhow::Result<()> {
    let runs = std::env::var("EXEC_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let spdy = [("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")];
    println!("{runs} runs each (p50 / p99 ms):");
    for (label, flags, env) in [
        ("websocket, proxied to eklet", &[][..], &[][..]),
        (
            "websocket, translated to SPDY by the apiserver",
            &["--declare-websocket-streaming=false"][..],
            &[][..],
        ),
        ("SPDY from kubectl", &[][..], &spdy[..]),
    ] {
        let (cloud, agents) = cloud_with_agents().await?;
        let pod = CloudPod::start(&cloud, &agents, "bench", flags).await?;
        let (cp, ns) = (&*pod.cp, pod.ns.as_str());
        let exec = latency(cp, &["exec", "-n", ns, "web", "--", "true"], env, runs).await?;
        let get = latency(cp, &["get", "pod", "-n", ns, "web"], env, runs).await?;
        println!(
            "  {label:48} kubectl exec -- true {:7.1} / {:7.1}   kubectl get pod {:7.1} / {:7.1}",
            exec.0, exec.1, get.0, get.1
        );
        pod.finish().await;
    }
    Ok(())
}
