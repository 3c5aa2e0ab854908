//! `kubectl exec` and `kubectl port-forward` on a cloud pod of the `tencent` provider, with real
//! kubectl through the real apiserver: kubectl → apiserver → eklet's kubelet API → the tencent
//! provider → a signed WebSocket to the sandbox agent cloudsim runs at the pod IP (a loopback
//! address) → a real process on this machine with the container's env, or the HTTP responder of a
//! port the container declares (and `kubectl cp` and `attach`).

mod support;

use std::process::Stdio;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use serde_json::json;
use support::{
    eklet::*,
    kubectl::{PortForward, kubectl, run},
};
use tke_testbed::{ControlPlane, wait};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_and_port_forward_on_a_cloud_pod_reach_its_sandbox_through_the_agent()
-> anyhow::Result<()> {
    tke_testbed::install_crypto();
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("exec-cloud").await?;
    let id = Identity::unique();
    let mut agents = Ok(String::new());
    let cloud = start_cloudsim(|config| agents = enable_agents(config)).await?;
    let agents = agents?;
    let _eklet = Eklet::start(&cp, &cloud, &id, &[agents.as_str()]).await?;

    let mut spec = cloud_pod_spec(
        &id,
        json!([{
            "name": "web",
            "image": "busybox:1.36",
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
    let instance_id = instance_for(&cloud, &id.cluster_id, &uid)
        .await?
        .context("the pod's instance")?
        .eks_ci_id;

    // Output on both streams, the container's env, and the exit code, as from a local pod.
    let mut exec = kubectl(&cp);
    exec.args(["exec", "-n", &ns, "web", "--", "sh", "-c"])
        .arg("echo \"$GREETING\"; echo to-stderr >&2; exit 3");
    let (code, stdout, stderr) = run(exec, None).await?;
    assert_eq!(code, 3, "the command's exit code; stderr: {stderr}");
    assert_eq!(stdout.trim(), "hello from the cloud pod");
    assert!(stderr.contains("to-stderr"), "{stderr}");

    // A command the sandbox does not have.
    let mut exec = kubectl(&cp);
    exec.args(["exec", "-n", &ns, "web", "--", "no-such-command-here"]);
    let (code, _, stderr) = run(exec, None).await?;
    assert_eq!(code, 127, "{stderr}");

    // stdin piped in.
    let mut exec = kubectl(&cp);
    exec.args([
        "exec",
        "-i",
        "-n",
        &ns,
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
    let mut cp_in = kubectl(&cp);
    cp_in
        .args(["cp", "-n", &ns, "-c", "web"])
        .arg(&upload)
        .arg("web:upload.txt");
    let (code, _, stderr) = run(cp_in, None).await?;
    assert_eq!(code, 0, "{stderr}");
    let mut back = kubectl(&cp);
    back.args(["cp", "-n", &ns, "-c", "web", "web:upload.txt"])
        .arg(local.path().join("back.txt"));
    let (code, _, stderr) = run(back, None).await?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(local.path().join("back.txt"))?,
        "uploaded through kubectl cp\n",
        "the file went into the sandbox and came back"
    );

    // kubectl attach joins the simulated main process: its log lines as they are written.
    let mut attach = kubectl(&cp);
    attach
        .args(["attach", "-n", &ns, "web", "-c", "web"])
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

    // kubectl killed mid-exec: the process it started in the sandbox goes with it.
    let marker = format!("3600.{}", std::process::id());
    let mut long = kubectl(&cp);
    long.args(["exec", "-n", &ns, "web", "--", "sleep", &marker])
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
    let mut forward = kubectl(&cp);
    forward.args(["port-forward", "-n", &ns, "pod/web", ":8080"]);
    let forwarding = PortForward::start(forward).await?;
    let (status, body) = forwarding.get("/").await?;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("cloudsim {instance_id} web port 8080\n")
    );
    drop(forwarding);

    remove_node(&client, &id.node()).await;
    Ok(())
}

/// How many processes on this machine run `sleep <marker>` (cloudsim's sandbox processes are
/// real ones; kubectl's own command line only mentions them after `--`).
fn sleeps(marker: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .filter(|cmdline| {
            let mut args = cmdline.split(|b| *b == 0);
            let program = args.next().unwrap_or_default();
            program.ends_with(b"sleep") && args.next() == Some(marker.as_bytes())
        })
        .count()
}
