//! metrics-server on a test-bed control plane, registered as the `v1beta1.metrics.k8s.io`
//! APIService the way its upstream manifest registers it, so that `kubectl top` and the HPA
//! controller read what it scrapes from kubelets' `/metrics/resource` (eklet's virtual nodes).
//!
//! It runs as a process next to the control plane, under the upstream manifest's least-privilege
//! RBAC (`system:metrics-server`: `nodes/metrics` and reads of pods and nodes; auth delegation),
//! with a client certificate for the `kube-system/metrics-server` ServiceAccount's user name. The
//! aggregator reaches it through an ExternalName Service pointing at `localhost`: Endpoints and
//! EndpointSlices may not hold loopback addresses, and without kube-proxy a ClusterIP leads
//! nowhere.
//!
//! The APIService is cluster-wide, so a test that uses metrics-server starts a control plane of
//! its own: a stopped metrics-server would leave the shared cluster's discovery degraded.

use std::{path::PathBuf, process::Command, time::Duration};

use base64::Engine as _;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Api;

use crate::{ControlPlane, Error, Proc, Result, free_ports, wait, write_file};

/// The user metrics-server authenticates as (its ServiceAccount's name, as a certificate CN).
pub const USER: &str = "system:serviceaccount:kube-system:metrics-server";

/// How metrics-server scrapes.
#[derive(Clone, Debug)]
pub struct Options {
    /// `--node-selector`: only these nodes' kubelets are scraped (kwok nodes serve no kubelet).
    pub node_selector: Option<String>,
    /// `--kubelet-certificate-authority`; `None` means `--kubelet-insecure-tls`.
    pub kubelet_ca: Option<PathBuf>,
    /// `--metric-resolution` (at least 10 s, metrics-server's own floor). Usage appears after two
    /// scrapes, since metrics-server reports rates between points.
    pub resolution: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            node_selector: None,
            kubelet_ca: None,
            resolution: Duration::from_secs(10),
        }
    }
}

/// A running metrics-server; stopped when dropped.
pub struct MetricsServer {
    pub proc: Proc,
    pub port: u16,
}

impl ControlPlane {
    /// Starts metrics-server and waits until the aggregator reports its APIService Available.
    pub async fn start_metrics_server(&self, options: Options) -> Result<MetricsServer> {
        let run = self.run_dir().join("metrics-server");
        std::fs::create_dir_all(&run).map_err(|source| Error::Io {
            path: run.clone(),
            source,
        })?;
        let [port] = free_ports::<1>()?;
        let pki = self.pki();
        let serving = pki.issue_server(
            "metrics-server",
            "metrics-server",
            &["localhost", "127.0.0.1", "metrics-server.kube-system.svc"],
        )?;
        let client = pki.issue_client("metrics-server-client", USER, None)?;
        let kubeconfig = run.join("kubeconfig");
        self.write_client_kubeconfig(&kubeconfig, &client)?;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let manifest = run.join("manifest.yaml");
        write_file(&manifest, &manifest_yaml(port, &b64(&pki.ca.cert_pem)))?;
        let kubectl = self.bin("kubectl");
        let admin = self.kubeconfig().to_owned();
        let applied = tokio::task::spawn_blocking(move || {
            Command::new(kubectl)
                .arg(format!("--kubeconfig={}", admin.display()))
                .args(["apply", "--server-side", "-f"])
                .arg(&manifest)
                .output()
        })
        .await
        .map_err(|e| Error::Tools(format!("kubectl apply: {e}")))?
        .map_err(|source| Error::Io {
            path: self.bin("kubectl"),
            source,
        })?;
        if !applied.status.success() {
            return Err(Error::Tools(format!(
                "kubectl apply of metrics-server's manifest failed: {}",
                String::from_utf8_lossy(&applied.stderr)
            )));
        }

        let p = |p: &std::path::Path| p.display().to_string();
        let mut args = vec![
            format!("--kubeconfig={}", p(&kubeconfig)),
            format!("--authentication-kubeconfig={}", p(&kubeconfig)),
            format!("--authorization-kubeconfig={}", p(&kubeconfig)),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", p(&serving.cert_file)),
            format!("--tls-private-key-file={}", p(&serving.key_file)),
            format!("--cert-dir={}", p(&run)),
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--kubelet-use-node-status-port".into(),
            "--kubelet-request-timeout=5s".into(),
            format!("--metric-resolution={}s", options.resolution.as_secs().max(10)),
            "--v=2".into(),
        ];
        match &options.kubelet_ca {
            Some(ca) => args.push(format!("--kubelet-certificate-authority={}", p(ca))),
            None => args.push("--kubelet-insecure-tls".into()),
        }
        if let Some(selector) = &options.node_selector {
            args.push(format!("--node-selector={selector}"));
        }
        let proc = self.spawn_process("metrics-server", &self.bin("metrics-server"), &args, &[])?;

        let services: Api<APIService> = Api::all(self.client().await?);
        let available = || async {
            services
                .get_opt("v1beta1.metrics.k8s.io")
                .await
                .ok()
                .flatten()
                .and_then(|s| s.status?.conditions)
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c.type_ == "Available" && c.status == "True")
                })
        };
        if let Err(e) = wait::until(
            Duration::from_secs(60),
            "APIService v1beta1.metrics.k8s.io Available",
            available,
        )
        .await
        {
            let tail = proc.log_tail(30);
            return Err(Error::Tools(format!("{e}; metrics-server's log:\n{tail}")));
        }
        Ok(MetricsServer { proc, port })
    }
}

/// The upstream manifest's RBAC and APIService (components.yaml of metrics-server), with the
/// Service pointing at `localhost` instead of a Deployment.
fn manifest_yaml(port: u16, ca_bundle: &str) -> String {
    format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:aggregated-metrics-reader
  labels:
    rbac.authorization.k8s.io/aggregate-to-admin: "true"
    rbac.authorization.k8s.io/aggregate-to-edit: "true"
    rbac.authorization.k8s.io/aggregate-to-view: "true"
rules:
- apiGroups: [metrics.k8s.io]
  resources: [pods, nodes]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:metrics-server
rules:
- apiGroups: [""]
  resources: [nodes/metrics]
  verbs: [get]
- apiGroups: [""]
  resources: [pods, nodes]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: metrics-server-auth-reader
  namespace: kube-system
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: extension-apiserver-authentication-reader
subjects:
- kind: ServiceAccount
  name: metrics-server
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: metrics-server:system:auth-delegator
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:auth-delegator
subjects:
- kind: ServiceAccount
  name: metrics-server
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:metrics-server
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:metrics-server
subjects:
- kind: ServiceAccount
  name: metrics-server
  namespace: kube-system
---
apiVersion: v1
kind: Service
metadata:
  name: metrics-server
  namespace: kube-system
spec:
  type: ExternalName
  externalName: localhost
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta1.metrics.k8s.io
spec:
  group: metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  caBundle: {ca_bundle}
  service:
    name: metrics-server
    namespace: kube-system
    port: {port}
"#
    )
}
