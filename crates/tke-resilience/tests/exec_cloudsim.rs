//! `kubectl exec` and `kubectl port-forward` on a cloud pod of the `tencent` provider, with real
//! kubectl through the real apiserver: kubectl → apiserver → eklet's kubelet API → the tencent
//! provider → a signed WebSocket to the sandbox agent cloudsim runs at the pod IP (a loopback
//! address) → a real process on this machine with the container's env, or the HTTP responder of a
//! port the container declares (and `kubectl cp` and `attach`).

mod support;

use std::{process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use serde_json::json;
use support::eklet::*;
use tke_testbed::{ControlPlane, wait};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::Command,
};

fn kubectl(cp: &ControlPlane) -> Command {
    let mut command = Command::new(cp.bin("kubectl"));
    command.arg("--kubeconfig").arg(cp.kubeconfig());
    command.kill_on_drop(true);
    command
}

/// Runs kubectl to the end; (exit code, stdout, stderr).
async fn run(mut command: Command, stdin: Option<&str>) -> anyhow::Result<(i32, String, String)> {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn()?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input.write_all(text.as_bytes()).await?;
        drop(input);
    }
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .context("kubectl did not finish")??;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

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

    // A declared port of the pod, through kubectl port-forward.
    let mut forward = kubectl(&cp);
    forward
        .args(["port-forward", "-n", &ns, "pod/web", ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut forwarding = forward.spawn()?;
    let mut lines = BufReader::new(forwarding.stdout.take().context("stdout")?).lines();
    let local = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await? {
            // "Forwarding from 127.0.0.1:41234 -> 8080"
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                return Ok(rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .parse::<u16>()?);
            }
        }
        bail!("kubectl port-forward ended without forwarding")
    })
    .await
    .context("kubectl port-forward did not start")??;
    let mut connection = tokio::net::TcpStream::connect(("127.0.0.1", local)).await?;
    connection
        .write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
        .await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(60), connection.read_to_string(&mut response))
        .await
        .context("no answer through the forwarded port")??;
    assert!(
        response.lines().next().is_some_and(|l| l.contains(" 200 ")),
        "{response}"
    );
    assert!(
        response.ends_with(&format!("cloudsim {instance_id} web port 8080\n")),
        "{response}"
    );
    let _ = forwarding.kill().await;

    remove_node(&client, &id.node()).await;
    Ok(())
}
