//! `helm uninstall` drains the virtual nodes first. The chart is installed into a real control
//! plane, eklet runs here as the chart's ServiceAccount against a cloudsim, and the chart's
//! pre-delete hook is run as it would run in its Job: the hook's own ServiceAccount and roles
//! applied from `helm get hooks`, the Job's command line executed with a token of that account.
//! (kwok, which runs the test bed's pods, would complete the Job without running it.)

mod support;

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{Node, Pod},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use serde_json::{Value, json};
use support::{
    PATIENCE,
    chart::{Installed, LOCAL_NODE, NAMESPACE, RELEASE, SERVICE_ACCOUNT_DIR, str_at},
};

/// A drain that should end within seconds.
const DRAIN_PATIENCE: Duration = Duration::from_secs(60);
const WORKLOAD: &str = "web";
const WORKLOAD_NAMESPACE: &str = "default";

/// The chart installed with eklet's Deployment at one replica, which kwok "runs" without running
/// anything; the real eklet runs here ([`Installed::eklet`]) and stands for that pod: it is stopped
/// (SIGTERM, as the kubelet would) when the Deployment is scaled to zero.
impl Installed {
    /// eklet with the installed Deployment's arguments and environment, as its ServiceAccount.
    async fn eklet(&self) -> anyhow::Result<tke_testbed::Proc> {
        let name = format!("eklet-{RELEASE}");
        let (line, env) = self.command_line(&name, "eklet", &name).await?;
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Ok(self.cp.spawn_process("eklet", &support::binary(), &line, &env)?)
    }

    /// The chart's pre-delete hooks as helm would create them: every one but the Job applied (its
    /// ServiceAccount and roles), and the Job's container returned.
    async fn apply_drain_hook(&self) -> anyhow::Result<Value> {
        let text = self
            .helm(&["get", "hooks", RELEASE, "--namespace", NAMESPACE])
            .await?;
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)?;
        let hooks: Vec<Value> = docs
            .into_iter()
            .filter(|d| d["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete")
            .collect();
        let (jobs, others): (Vec<Value>, Vec<Value>) = hooks.into_iter().partition(|d| d["kind"] == "Job");
        ensure!(jobs.len() == 1, "expected one pre-delete Job, got {}", jobs.len());
        let path = self.dir.join("drain-hook-rbac.json");
        std::fs::write(
            &path,
            serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": others}))?,
        )?;
        let kubectl = self.cp.bin("kubectl");
        let out = tokio::process::Command::new(&kubectl)
            .args([
                "--kubeconfig",
                &self.cp.kubeconfig().display().to_string(),
                "apply",
                "-f",
            ])
            .arg(&path)
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "kubectl apply of the hook's RBAC: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let job = &jobs[0];
        let container = job["spec"]["template"]["spec"]["containers"][0].clone();
        Ok(json!({
            "serviceAccount": job["spec"]["template"]["spec"]["serviceAccountName"],
            "container": container,
        }))
    }

    /// Runs the hook Job's command line as its ServiceAccount, with `extra` flags (`--name=value`)
    /// in place of the chart's; waits for the exit.
    async fn run_drain(&self, hook: &Value, extra: &[String]) -> anyhow::Result<std::process::Output> {
        let account = str_at(hook, "/serviceAccount")?;
        let container = &hook["container"];
        let mut line: Vec<String> = ["command", "args"]
            .iter()
            .flat_map(|k| container[*k].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        ensure!(
            line.first().map(String::as_str) == Some("eklet-drain"),
            "the hook runs {line:?}"
        );
        if let Some(arg) = line.iter().find(|a| a.contains(SERVICE_ACCOUNT_DIR)) {
            bail!("the hook reads {arg}, which this test does not provide");
        }
        // The test's flag replaces the chart's of the same name (a shorter --timeout).
        for flag in extra {
            let name = flag.split('=').next().unwrap_or_default();
            line.retain(|arg| arg.split('=').next() != Some(name));
            line.push(flag.clone());
        }
        line.push(format!(
            "--kubeconfig={}",
            self.service_account_kubeconfig(account).await?.display()
        ));
        let mut command = tokio::process::Command::new(support::binary());
        command.args(&line).env("RUST_BACKTRACE", "0").kill_on_drop(true);
        for var in container["env"].as_array().cloned().unwrap_or_default() {
            let name = var["name"].as_str().unwrap_or_default().to_owned();
            let value = match (
                var["value"].as_str(),
                var["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            ) {
                (Some(value), _) => value.to_owned(),
                (None, Some("metadata.namespace")) => NAMESPACE.to_owned(),
                _ => bail!("the hook's env {name} comes from {var}, which this test does not resolve"),
            };
            command.env(name, value);
        }
        // Files, not pipes, so that a drain that hangs still shows what it did.
        let log = self
            .dir
            .join(format!("eklet-drain-{}.log", tke_testbed::random_suffix()));
        let stdout = std::fs::File::create(&log)?;
        command.stdout(stdout.try_clone()?).stderr(stdout);
        let mut child = command.spawn()?;
        let status = match tokio::time::timeout(DRAIN_PATIENCE, child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                let _ = child.kill().await;
                bail!(
                    "eklet-drain did not exit in {DRAIN_PATIENCE:?}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Ok(std::process::Output {
            status,
            stdout: std::fs::read(&log)?,
            stderr: Vec::new(),
        })
    }
}

/// Three replicas pinned to the virtual node, with the default grace period so that eklet's
/// graceful deletion (sandbox first, then the Pod) is what the drain waits for.
fn workload(virtual_node: &str) -> anyhow::Result<Deployment> {
    let mut deployment = support::admission::deployment(WORKLOAD, 3, &[], json!({}))?;
    let spec = deployment
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .context("no pod spec")?;
    spec.termination_grace_period_seconds = None;
    spec.node_selector = Some([("kubernetes.io/hostname".to_owned(), virtual_node.to_owned())].into());
    spec.tolerations = Some(vec![tke_policy::virtual_node::burst_toleration()]);
    Ok(deployment)
}

fn on_node<'a>(pods: &'a [std::sync::Arc<Pod>], node: &str) -> Vec<&'a std::sync::Arc<Pod>> {
    pods.iter()
        .filter(|p| support::admission::node_of(p) == Some(node))
        .collect()
}

/// SIGTERM, as the kubelet stops a container: eklet releases its leader Lease on the way out.
fn terminate(proc: &tke_testbed::Proc) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &proc.pid().to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM {}", proc.pid());
    Ok(())
}

fn output_text(out: &std::process::Output) -> String {
    format!("{}\n{}", out.status, String::from_utf8_lossy(&out.stdout))
}

fn refused(out: &std::process::Output, account: &str) -> bool {
    let user = format!("system:serviceaccount:{NAMESPACE}:{account}");
    let text = output_text(out);
    text.lines()
        .any(|l| (l.to_lowercase().contains("forbidden") && l.contains(&user)) || l.contains("Unauthorized"))
}

#[tokio::test]
async fn uninstall_drains_the_virtual_node_a_budget_blocks_it_and_once_lifted_no_sandbox_node_or_lease_is_left()
-> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let chart = Installed::install(1).await?;
    let client = chart.client.clone();
    let virtual_node = chart.virtual_node()?;
    let _cloudsim = chart.cloudsim().await?;
    let mut eklet = chart.eklet().await?;

    let nodes: Api<Node> = Api::all(client.clone());
    tke_testbed::wait::until(PATIENCE, "the virtual node Ready", || {
        let (nodes, name) = (nodes.clone(), virtual_node.clone());
        async move {
            nodes.get_opt(&name).await.ok().flatten().is_some_and(|n| {
                n.status
                    .and_then(|s| s.conditions)
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
        }
    })
    .await
    .with_context(|| eklet.log_tail(30))?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), WORKLOAD_NAMESPACE);
    deployments
        .create(&PostParams::default(), &workload(&virtual_node)?)
        .await?;
    let pods = support::admission::wait_for_pods(
        &client,
        WORKLOAD_NAMESPACE,
        WORKLOAD,
        "3 pods Running on the virtual node",
        |pods| {
            on_node(pods, &virtual_node)
                .iter()
                .filter(|p| support::admission::is_running(p))
                .count()
                == 3
        },
    )
    .await
    .with_context(|| eklet.log_tail(30))?;
    let first_pods: Vec<String> = pods.iter().filter_map(|p| p.metadata.name.clone()).collect();
    assert_eq!(chart.cloud_instances().await?, 3, "one sandbox per pod");
    // A bare pod with no grace period: evicted as is, it would be gone before eklet removed its
    // sandbox. The drain gives every eviction at least a second, so eklet does.
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), WORKLOAD_NAMESPACE);
    let quick: Pod = serde_json::from_value(json!({
        "metadata": {"name": "quick-0"},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "nodeSelector": {"kubernetes.io/hostname": virtual_node},
            "tolerations": [tke_policy::virtual_node::burst_toleration()],
            "containers": [{"name": "app", "image": "busybox:1.36"}],
        },
    }))?;
    pods_api.create(&PostParams::default(), &quick).await?;
    tke_testbed::wait::until(PATIENCE, "quick-0 Running", || {
        let api = pods_api.clone();
        async move {
            api.get_opt("quick-0")
                .await
                .ok()
                .flatten()
                .is_some_and(|p| support::admission::is_running(&p))
        }
    })
    .await
    .with_context(|| eklet.log_tail(30))?;
    assert_eq!(chart.cloud_instances().await?, 4, "one sandbox per pod");
    let hook = chart.apply_drain_hook().await?;
    let account = str_at(&hook, "/serviceAccount")?.to_owned();
    println!("setup took {:?}", started.elapsed());

    // A budget that allows no disruption: the drain gives up at its timeout, names the budget,
    // and the node stays with its pods (deleting it would orphan their sandboxes).
    let budget: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "web-no-disruption"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": WORKLOAD}}},
    }))?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), WORKLOAD_NAMESPACE);
    budgets.create(&PostParams::default(), &budget).await?;
    let blocked_at = std::time::Instant::now();
    let out = chart.run_drain(&hook, &["--timeout=5s".to_owned()]).await?;
    let text = output_text(&out);
    println!("blocked drain ({:?}):\n{text}", blocked_at.elapsed());
    ensure!(
        !refused(&out, &account),
        "the hook's account was refused:\n{text}"
    );
    ensure!(
        !out.status.success(),
        "the drain succeeded despite the budget:\n{text}"
    );
    ensure!(
        text.contains("web-no-disruption"),
        "the error does not name the budget:\n{text}"
    );
    for pod in &first_pods {
        ensure!(
            text.contains(pod.as_str()),
            "the error does not name pod {pod}:\n{text}"
        );
    }
    // The bare pod, under no budget, was evicted, and its sandbox went with it.
    tke_testbed::wait::until(PATIENCE, "quick-0 gone", || {
        let api = pods_api.clone();
        async move { api.get_opt("quick-0").await.is_ok_and(|p| p.is_none()) }
    })
    .await?;
    let node = nodes
        .get_opt(&virtual_node)
        .await?
        .context("the node was deleted")?;
    assert_eq!(
        node.spec.and_then(|s| s.unschedulable),
        Some(true),
        "the node is left cordoned"
    );
    let bound = ListParams::default().fields(&format!("spec.nodeName={virtual_node}"));
    assert_eq!(pods_api.list(&bound).await?.items.len(), 3, "the pods stay");
    assert_eq!(chart.cloud_instances().await?, 3, "and so do their sandboxes");

    // The budget lifted, the hook again with the chart's own timeout. When it scales eklet's
    // Deployment to zero, the eklet here is stopped as the kubelet would stop that pod.
    budgets.delete("web-no-disruption", &Default::default()).await?;
    let deployments_system: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let eklet_deployment = format!("eklet-{RELEASE}");
    let stop_eklet = async {
        tke_testbed::wait::until(PATIENCE, "eklet's Deployment scaled to zero", || {
            let (api, name) = (deployments_system.clone(), eklet_deployment.clone());
            async move {
                api.get(&name)
                    .await
                    .is_ok_and(|d| d.spec.and_then(|s| s.replicas) == Some(0))
            }
        })
        .await?;
        terminate(&eklet)?;
        anyhow::Ok(())
    };
    let drained_at = std::time::Instant::now();
    let (out, stopped) = tokio::join!(chart.run_drain(&hook, &[]), stop_eklet);
    let out = out?;
    let text = output_text(&out);
    println!("drain ({:?}):\n{text}", drained_at.elapsed());
    stopped.with_context(|| text.clone())?;
    ensure!(
        !refused(&out, &account),
        "the hook's account was refused:\n{text}"
    );
    ensure!(out.status.success(), "the drain failed:\n{text}");
    ensure!(
        text.contains(&format!("3 pods left on {virtual_node}"))
            && text.contains(&format!("0 pods left on {virtual_node}")),
        "no progress lines:\n{text}"
    );
    tke_testbed::wait::until(PATIENCE, "eklet to exit", || {
        let exited = eklet.exited().is_some();
        async move { exited }
    })
    .await?;

    assert_eq!(chart.cloud_instances().await?, 0, "sandboxes left in the cloud");
    assert!(
        pods_api.list(&bound).await?.items.is_empty(),
        "pods left on {virtual_node}"
    );
    assert!(
        nodes.get_opt(&virtual_node).await?.is_none(),
        "the virtual Node is still there"
    );
    let node_leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    assert!(
        node_leases.get_opt(&virtual_node).await?.is_none(),
        "the node Lease is still there"
    );
    // The Deployment replaced its pods; none landed on the virtual node while it was cordoned.
    let pods = support::admission::wait_for_pods(
        &client,
        WORKLOAD_NAMESPACE,
        WORKLOAD,
        "3 replacement pods",
        |pods| {
            pods.len() == 3
                && pods
                    .iter()
                    .all(|p| !first_pods.contains(&p.metadata.name.clone().unwrap_or_default()))
        },
    )
    .await?;
    for pod in &pods {
        let node = support::admission::node_of(pod);
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        assert!(
            (node.is_none() && phase == Some("Pending")) || node == Some(LOCAL_NODE),
            "replacement {:?} is on {node:?} ({phase:?})",
            pod.metadata.name
        );
    }
    println!("whole test {:?}", started.elapsed());
    Ok(())
}
