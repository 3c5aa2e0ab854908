//! `kubectl exec` and `kubectl port-forward` on a burst pod, with real kubectl through the real IDC
//! apiserver: the IDC pod bursts through the `kubernetes` provider into a target cluster whose node
//! is real (kubelet + containerd in a network namespace of the test bed), so the command runs in a
//! real container and the forwarded port is a real server in it. Path: kubectl → IDC apiserver →
//! eklet's kubelet API → target apiserver (`pods/exec`, `pods/portforward`) → real kubelet.

mod support;

use std::{process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::{Api, api::PostParams};
use serde_json::json;
use support::eklet::*;
use tke_testbed::{ControlPlane, Options, images, realnode, wait};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::Command,
};

/// What the container serves on its port, and prints first.
const GREETING: &str = "hello from the real container";

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
async fn kubectl_exec_and_port_forward_on_a_burst_pod_reach_its_real_container_in_the_target_cluster()
-> anyhow::Result<()> {
    if !realnode::available_or_skip() {
        return Ok(());
    }
    let idc = ControlPlane::shared().await?;
    let target = ControlPlane::start(Options::default()).await?;
    let _node = target.add_real_node("tgt-exec").await?;
    let client = idc.client().await?;
    let ns = idc.namespace("exec-real").await?;
    let id = Identity::unique();
    let provider = [
        "--provider=kubernetes".to_owned(),
        format!("--target-kubeconfig={}", target.kubeconfig().display()),
    ];
    let _eklet = Eklet::start_with_provider(&idc, &provider, &id, &[]).await?;

    // What the IDC gives the pod, to be found inside the real container.
    let config_map: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "settings"}, "data": {"colour": "teal", "app.conf": "threads=4"}
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &config_map)
        .await?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "db"}, "stringData": {"password": "hunter2"}
    }))?;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await?;
    let mut spec = cloud_pod_spec(
        &id,
        json!([{
            "name": "web",
            "image": images::BUSYBOX,
            "imagePullPolicy": "Never",
            "command": ["sh", "-c", format!(
                "mkdir -p /www && echo '{GREETING}' > /www/index.html && echo '{GREETING}' && exec httpd -f -p 8080 -h /www"
            )],
            "ports": [{"containerPort": 8080}],
            "env": [{"name": "COLOUR", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "colour"}}}],
            "volumeMounts": [
                {"name": "conf", "mountPath": "/etc/app"},
                {"name": "creds", "mountPath": "/etc/creds"},
            ],
        }]),
    );
    spec["volumes"] = json!([
        {"name": "conf", "configMap": {"name": "settings", "items": [{"key": "app.conf", "path": "app.conf"}]}},
        {"name": "creds", "secret": {"secretName": "db"}},
    ]);
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": spec}))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod).await?;
    wait::until(PATIENCE, "the burst pod Running", || async {
        pods.get("web").await.is_ok_and(|p| is_running(&p))
    })
    .await?;

    // The container's own output, through the IDC's kubectl logs.
    let mut logs = kubectl(&idc);
    logs.args(["logs", "-n", &ns, "web"]);
    let (code, stdout, stderr) = run(logs, None).await?;
    assert_eq!((code, stdout.trim()), (0, GREETING), "{stderr}");

    // What the IDC gave it, seen from inside: env from a ConfigMap, ConfigMap and Secret volumes,
    // and the IDC's service-account token (its namespace file and a JWT).
    let mut exec = kubectl(&idc);
    exec.args(["exec", "-n", &ns, "web", "--", "sh", "-c"]).arg(
        r#"echo "$COLOUR"; cat /etc/app/app.conf; echo; cat /etc/creds/password; echo
           cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo
           t=$(cat /var/run/secrets/kubernetes.io/serviceaccount/token); n=0
           while [ "$t" != "${t#*.}" ]; do t=${t#*.}; n=$((n+1)); done; echo $n"#,
    );
    let (code, stdout, stderr) = run(exec, None).await?;
    assert_eq!(code, 0, "{stderr}");
    let seen: Vec<&str> = stdout.lines().map(str::trim).collect();
    assert_eq!(
        seen,
        ["teal", "threads=4", "hunter2", ns.as_str(), "2"],
        "{stdout}"
    );

    // Output on both streams and the exit code, as from a local pod.
    let mut exec = kubectl(&idc);
    exec.args(["exec", "-n", &ns, "web", "--", "sh", "-c"])
        .arg("cat /www/index.html; echo to-stderr >&2; exit 3");
    let (code, stdout, stderr) = run(exec, None).await?;
    assert_eq!(code, 3, "the command's exit code; stderr: {stderr}");
    assert_eq!(stdout.trim(), GREETING, "what the real container holds");
    assert!(stderr.contains("to-stderr"), "{stderr}");

    // stdin piped in.
    let mut exec = kubectl(&idc);
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

    // A port of the pod, through kubectl port-forward.
    let mut forward = kubectl(&idc);
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
        .write_all(b"GET /index.html HTTP/1.0\r\nHost: web\r\n\r\n")
        .await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(60), connection.read_to_string(&mut response))
        .await
        .context("no answer through the forwarded port")??;
    assert!(
        response.lines().next().is_some_and(|l| l.contains(" 200 ")),
        "{response}"
    );
    assert!(response.contains(GREETING), "{response}");
    let _ = forwarding.kill().await;

    remove_node(&client, &id.node()).await;
    Ok(())
}
