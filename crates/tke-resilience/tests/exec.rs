//! `kubectl exec` and `kubectl port-forward` on a burst pod, with real kubectl through the real IDC
//! apiserver: the IDC pod bursts through the `kubernetes` provider into a target cluster whose node
//! is real (kubelet + containerd in a network namespace of the test bed), so the command runs in a
//! real container and the forwarded port is a real server in it. Path: kubectl → IDC apiserver →
//! eklet's kubelet API → target apiserver (`pods/exec`, `pods/portforward`) → real kubelet.
//!
//! The benchmark of this path is an ignored test: `kubectl exec -- true` latency on each streaming
//! path next to the same exec straight into the target cluster, and port-forward throughput next
//! to `kubectl port-forward` straight into the target and a direct TCP connection to the same
//! listener:
//!
//! ```text
//! TKE_TESTBED_BIN=... cargo test --release -p tke-resilience --test exec -- --ignored --nocapture
//! ```

mod support;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::{Api, api::PostParams};
use serde_json::json;
use support::{
    eklet::*,
    kubectl::{PortForward, kubectl, run},
};
use tke_testbed::{ControlPlane, Options, images, realnode, wait};
use tokio::process::Command;

/// What the container serves on its port, and prints first.
const GREETING: &str = "hello from the real container";

/// A burst pod `web` (busybox httpd on 8080 serving `/www`) in a target cluster whose one node
/// is real, bursted there by an eklet with the kubernetes provider.
struct RealBurst {
    idc: std::sync::Arc<ControlPlane>,
    ns: String,
    node: String,
    // Dropped in this order: eklet, the node, then its control plane (which removes the run
    // directory the node's clean-up script lives in).
    _eklet: Eklet,
    _real_node: tke_testbed::RealNode,
    target: ControlPlane,
}

impl RealBurst {
    async fn start(label: &str, eklet_flags: &[&str]) -> anyhow::Result<RealBurst> {
        let idc = ControlPlane::shared().await?;
        let target = ControlPlane::start(Options::default()).await?;
        let real_node = target.add_real_node(&format!("tgt-{label}")).await?;
        let client = idc.client().await?;
        let ns = idc.namespace(&format!("exec-{label}")).await?;
        let id = Identity::unique();
        let provider = [
            "--provider=kubernetes".to_owned(),
            format!("--target-kubeconfig={}", target.kubeconfig().display()),
        ];
        let eklet = Eklet::start_with_provider(&idc, &provider, &id, eklet_flags).await?;

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

        Ok(RealBurst {
            idc,
            ns,
            node: id.node(),
            target,
            _real_node: real_node,
            _eklet: eklet,
        })
    }

    async fn finish(self) -> anyhow::Result<()> {
        remove_node(&self.idc.client().await?, &self.node).await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_and_port_forward_on_a_burst_pod_reach_its_real_container_in_the_target_cluster()
-> anyhow::Result<()> {
    if !realnode::available_or_skip() {
        return Ok(());
    }
    let burst = RealBurst::start("exec", &[]).await?;
    let (idc, ns) = (&burst.idc, &burst.ns);
    // The container's own output, through the IDC's kubectl logs.
    let mut logs = kubectl(idc);
    logs.args(["logs", "-n", ns, "web"]);
    let (code, stdout, stderr) = run(logs, None).await?;
    assert_eq!((code, stdout.trim()), (0, GREETING), "{stderr}");

    // What the IDC gave it, seen from inside: env from a ConfigMap, ConfigMap and Secret volumes,
    // and the IDC's service-account token (its namespace file and a JWT).
    let mut exec = kubectl(idc);
    exec.args(["exec", "-n", ns, "web", "--", "sh", "-c"]).arg(
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
    let mut exec = kubectl(idc);
    exec.args(["exec", "-n", ns, "web", "--", "sh", "-c"])
        .arg("cat /www/index.html; echo to-stderr >&2; exit 3");
    let (code, stdout, stderr) = run(exec, None).await?;
    assert_eq!(code, 3, "the command's exit code; stderr: {stderr}");
    assert_eq!(stdout.trim(), GREETING, "what the real container holds");
    assert!(stderr.contains("to-stderr"), "{stderr}");

    // stdin piped in.
    let mut exec = kubectl(idc);
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

    // A port of the pod, through kubectl port-forward.
    let mut forward = kubectl(idc);
    forward.args(["port-forward", "-n", ns, "pod/web", ":8080"]);
    let forwarding = PortForward::start(forward).await?;
    let (status, body) = forwarding.get("/index.html").await?;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(String::from_utf8_lossy(&body).trim(), GREETING);
    drop(forwarding);

    burst.finish().await
}

/// `kubectl cp` both ways, 20 connections at once through one `kubectl port-forward`, and a
/// 50 MB download through it, with `env` set on kubectl (e.g. SPDY instead of WebSocket).
async fn copy_and_forward(burst: &RealBurst, env: &[(&str, &str)]) -> anyhow::Result<()> {
    let (idc, ns) = (&burst.idc, burst.ns.as_str());
    let with_env = |mut command: Command| {
        command.envs(env.iter().copied());
        command
    };
    let dir = tempfile::tempdir()?;
    let sent = dir.path().join("sent.bin");
    let back = dir.path().join("back.bin");
    let big = dir.path().join("big.bin");
    // Not compressible, not all one byte: a simple generator is enough to catch reordering.
    let bytes = |len: usize, seed: u64| -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect()
    };
    std::fs::write(&sent, bytes(5 << 20, 1))?;
    let mut copy = with_env(kubectl(idc));
    copy.arg("cp").arg(&sent).arg(format!("{ns}/web:/www/sent.bin"));
    let (code, _, stderr) = run(copy, None).await?;
    assert_eq!(code, 0, "kubectl cp in: {stderr}");
    let mut copy = with_env(kubectl(idc));
    copy.arg("cp").arg(format!("{ns}/web:/www/sent.bin")).arg(&back);
    let (code, _, stderr) = run(copy, None).await?;
    assert_eq!(code, 0, "kubectl cp out: {stderr}");
    assert!(
        std::fs::read(&sent)? == std::fs::read(&back)?,
        "5 MB in and out, identical"
    );

    let fifty = bytes(50 << 20, 2);
    std::fs::write(&big, &fifty)?;
    let mut copy = with_env(kubectl(idc));
    copy.arg("cp").arg(&big).arg(format!("{ns}/web:/www/big.bin"));
    let (code, _, stderr) = run(copy, None).await?;
    assert_eq!(code, 0, "kubectl cp 50 MB in: {stderr}");

    let mut forward = with_env(kubectl(idc));
    forward.args(["port-forward", "-n", ns, "pod/web", ":8080"]);
    let forwarding = PortForward::start(forward).await?;
    let many = futures::future::join_all((0..20).map(|_| forwarding.get("/index.html"))).await;
    for answer in many {
        assert_eq!(String::from_utf8_lossy(&answer?.1).trim(), GREETING);
    }
    let (_, download) = forwarding.get("/big.bin").await?;
    assert!(
        download == fifty,
        "50 MB through one forwarded connection, identical ({} bytes)",
        download.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_and_forward_over_websocket_proxied_to_the_virtual_node_unchanged() -> anyhow::Result<()> {
    if !realnode::available_or_skip() {
        return Ok(());
    }
    let burst = RealBurst::start("ws", &[]).await?;
    copy_and_forward(&burst, &[]).await?;
    burst.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_and_forward_over_websocket_translated_to_spdy_by_the_apiserver() -> anyhow::Result<()> {
    if !realnode::available_or_skip() {
        return Ok(());
    }
    let burst = RealBurst::start("wsspdy", &["--declare-websocket-streaming=false"]).await?;
    copy_and_forward(&burst, &[]).await?;
    burst.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_and_forward_over_spdy_from_kubectl() -> anyhow::Result<()> {
    if !realnode::available_or_skip() {
        return Ok(());
    }
    let burst = RealBurst::start("spdy", &[]).await?;
    copy_and_forward(
        &burst,
        &[
            ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
            ("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false"),
        ],
    )
    .await?;
    burst.finish().await
}

/// p50 and p99 of `samples`, in milliseconds.
fn percentiles(mut samples: Vec<std::time::Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    (at(0.5), at(0.99))
}

/// `kubectl exec web -- true` `runs` times; each one's wall time.
async fn exec_latencies(
    cp: &ControlPlane,
    ns: &str,
    pod: &str,
    env: &[(&str, &str)],
    runs: usize,
) -> anyhow::Result<Vec<std::time::Duration>> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut exec = kubectl(cp);
        exec.envs(env.iter().copied())
            .args(["exec", "-n", ns, pod, "--", "true"]);
        let started = std::time::Instant::now();
        let (code, _, stderr) = run(exec, None).await?;
        anyhow::ensure!(code == 0, "kubectl exec failed: {stderr}");
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// A benchmark, not a test (see the module documentation). `EXEC_RUNS` (100) and `FORWARD_MB`
/// (200) size it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn bench_exec_latency_and_port_forward_throughput_against_the_direct_path() -> anyhow::Result<()> {
    if !realnode::available_or_skip() {
        return Ok(());
    }
    let number = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (runs, megabytes) = (number("EXEC_RUNS", 100), number("FORWARD_MB", 200));
    let spdy = [
        ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
        ("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false"),
    ];
    println!("kubectl exec -- true, {runs} runs each (p50 / p99 ms):");
    for (label, flags, env) in [
        ("websocket, proxied to eklet", &[][..], &[][..]),
        (
            "websocket, translated to SPDY by the apiserver",
            &["--declare-websocket-streaming=false"][..],
            &[][..],
        ),
        ("SPDY from kubectl", &[][..], &spdy[..]),
    ] {
        let burst = RealBurst::start("bench", flags).await?;
        let through_eklet = percentiles(exec_latencies(&burst.idc, &burst.ns, "web", env, runs).await?);
        // The same pod, exec'd in the target cluster itself: the path without eklet.
        let target_pod = Api::<Pod>::all(burst.target.client().await?)
            .list(&kube::api::ListParams::default().labels("eklet.tke-resilience.io/pod-uid"))
            .await?
            .items
            .into_iter()
            .next()
            .context("the target pod")?;
        let (target_ns, target_name) = (
            target_pod.metadata.namespace.clone().unwrap_or_default(),
            target_pod.metadata.name.clone().unwrap_or_default(),
        );
        let direct = percentiles(exec_latencies(&burst.target, &target_ns, &target_name, env, runs).await?);
        println!(
            "  {label:48} through eklet {:7.1} / {:7.1}   direct in the target {:7.1} / {:7.1}   p50 added {:+.1}",
            through_eklet.0,
            through_eklet.1,
            direct.0,
            direct.1,
            through_eklet.0 - direct.0
        );

        if env.is_empty() && flags.is_empty() {
            // Port-forward: the same file through eklet and straight from the pod's IP.
            let dir = tempfile::tempdir()?;
            let big = dir.path().join("big.bin");
            std::fs::write(&big, vec![7u8; megabytes << 20])?;
            let mut copy = kubectl(&burst.idc);
            copy.arg("cp")
                .arg(&big)
                .arg(format!("{}/web:/www/big.bin", burst.ns));
            let (code, _, stderr) = run(copy, None).await?;
            anyhow::ensure!(code == 0, "kubectl cp: {stderr}");
            let mut forward = kubectl(&burst.idc);
            forward.args(["port-forward", "-n", &burst.ns, "pod/web", ":8080"]);
            let forwarding = PortForward::start(forward).await?;
            let started = std::time::Instant::now();
            let (_, body) = forwarding.get("/big.bin").await?;
            let forwarded = started.elapsed();
            anyhow::ensure!(body.len() == megabytes << 20, "{} bytes forwarded", body.len());
            let ip = target_pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .context("the target pod's IP")?;
            // kubectl port-forward straight into the target: what kubectl and one apiserver cost
            // without eklet.
            let mut forward = kubectl(&burst.target);
            forward.args([
                "port-forward",
                "-n",
                &target_ns,
                &format!("pod/{target_name}"),
                ":8080",
            ]);
            let forwarding = PortForward::start(forward).await?;
            let started = std::time::Instant::now();
            let (_, body) = forwarding.get("/big.bin").await?;
            let forwarded_in_target = started.elapsed();
            anyhow::ensure!(body.len() == megabytes << 20, "{} bytes forwarded", body.len());
            drop(forwarding);
            let started = std::time::Instant::now();
            let mut connection = tokio::net::TcpStream::connect((ip.as_str(), 8080)).await?;
            tokio::io::AsyncWriteExt::write_all(&mut connection, b"GET /big.bin HTTP/1.0\r\n\r\n").await?;
            let mut response = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut connection, &mut response).await?;
            let direct = started.elapsed();
            let rate = |d: std::time::Duration| megabytes as f64 / d.as_secs_f64();
            println!(
                "port-forward, {megabytes} MB: through eklet {:.1} MB/s, kubectl port-forward in the target {:.1} MB/s, direct TCP to the pod {:.1} MB/s; ratio to direct TCP {:.2}, to the target's own port-forward {:.2}",
                rate(forwarded),
                rate(forwarded_in_target),
                rate(direct),
                rate(forwarded) / rate(direct),
                rate(forwarded) / rate(forwarded_in_target)
            );
        }
        burst.finish().await?;
    }
    Ok(())
}
