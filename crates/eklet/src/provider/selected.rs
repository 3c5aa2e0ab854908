//! The provider `--provider` names, behind one type so the rest of eklet stays generic over a
//! single [`Provider`].

use std::time::Duration;

use tokio::sync::mpsc;

use super::{
    Capabilities, ExitStatus, LogOptions, PortStream, Provider, Result, Sandbox, SandboxChange, SandboxEvent,
    SandboxName, SandboxSpec, SandboxStats, Source, SourceObject, StatsTarget, StreamIo, VolumeSpec,
    kubernetes::KubernetesProvider, tencent::TencentProvider,
};
use crate::config::Args;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Tencent(#[from] super::tencent::SetupError),
    #[error(transparent)]
    Kubernetes(#[from] super::kubernetes::SetupError),
    #[error("{0}")]
    Flags(String),
}

/// The values of `--provider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProviderKind {
    /// Tencent Cloud EKS container instances (or cloudsim).
    Tencent,
    /// Pods in another cluster, reached by `--target-kubeconfig`.
    Kubernetes,
}

pub enum SelectedProvider {
    Tencent(TencentProvider),
    Kubernetes(KubernetesProvider),
}

impl SelectedProvider {
    /// The provider of `--provider`.
    pub async fn from_args(args: &Args) -> Result<SelectedProvider, SetupError> {
        match args.provider {
            ProviderKind::Kubernetes => Ok(SelectedProvider::Kubernetes(
                KubernetesProvider::from_flags(&args.kubernetes, &args.cluster_id).await?,
            )),
            ProviderKind::Tencent => {
                if args.kubernetes.target_kubeconfig.is_some() {
                    return Err(SetupError::Flags(
                        "--target-kubeconfig is for --provider kubernetes".into(),
                    ));
                }
                if args.tencent.region.trim().is_empty() || args.tencent.vpc_id.trim().is_empty() {
                    return Err(SetupError::Flags(
                        "--provider tencent needs --region and --vpc-id".into(),
                    ));
                }
                Ok(SelectedProvider::Tencent(TencentProvider::from_flags(
                    &args.tencent,
                )?))
            }
        }
    }
}

impl Provider for SelectedProvider {
    fn name(&self) -> &'static str {
        match self {
            SelectedProvider::Tencent(p) => p.name(),
            SelectedProvider::Kubernetes(p) => p.name(),
        }
    }

    fn capabilities(&self) -> &Capabilities {
        match self {
            SelectedProvider::Tencent(p) => p.capabilities(),
            SelectedProvider::Kubernetes(p) => p.capabilities(),
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Sandbox> {
        match self {
            SelectedProvider::Tencent(p) => p.create(spec).await,
            SelectedProvider::Kubernetes(p) => p.create(spec).await,
        }
    }

    async fn delete(&self, id: &str, grace: Duration) -> Result<()> {
        match self {
            SelectedProvider::Tencent(p) => p.delete(id, grace).await,
            SelectedProvider::Kubernetes(p) => p.delete(id, grace).await,
        }
    }

    async fn describe(&self, ids: &[String]) -> Result<Vec<Sandbox>> {
        match self {
            SelectedProvider::Tencent(p) => p.describe(ids).await,
            SelectedProvider::Kubernetes(p) => p.describe(ids).await,
        }
    }

    async fn find(&self, name: &SandboxName) -> Result<Option<Sandbox>> {
        match self {
            SelectedProvider::Tencent(p) => p.find(name).await,
            SelectedProvider::Kubernetes(p) => p.find(name).await,
        }
    }

    async fn list(&self, cluster_id: &str) -> Result<Vec<Sandbox>> {
        match self {
            SelectedProvider::Tencent(p) => p.list(cluster_id).await,
            SelectedProvider::Kubernetes(p) => p.list(cluster_id).await,
        }
    }

    async fn refresh_files(&self, id: &str, volume: &VolumeSpec) -> Result<()> {
        match self {
            SelectedProvider::Tencent(p) => p.refresh_files(id, volume).await,
            SelectedProvider::Kubernetes(p) => p.refresh_files(id, volume).await,
        }
    }

    async fn logs(&self, id: &str, container: &str, options: &LogOptions) -> Result<String> {
        match self {
            SelectedProvider::Tencent(p) => p.logs(id, container, options).await,
            SelectedProvider::Kubernetes(p) => p.logs(id, container, options).await,
        }
    }

    async fn events(&self, id: &str) -> Result<Vec<SandboxEvent>> {
        match self {
            SelectedProvider::Tencent(p) => p.events(id).await,
            SelectedProvider::Kubernetes(p) => p.events(id).await,
        }
    }

    async fn stats(&self, targets: &[StatsTarget]) -> Result<Vec<SandboxStats>> {
        match self {
            SelectedProvider::Tencent(p) => p.stats(targets).await,
            SelectedProvider::Kubernetes(p) => p.stats(targets).await,
        }
    }
    async fn exec(
        &self,
        id: &str,
        container: &str,
        command: Vec<String>,
        io: StreamIo,
    ) -> Result<ExitStatus> {
        match self {
            SelectedProvider::Tencent(p) => p.exec(id, container, command, io).await,
            SelectedProvider::Kubernetes(p) => p.exec(id, container, command, io).await,
        }
    }

    async fn attach(&self, id: &str, container: &str, io: StreamIo) -> Result<()> {
        match self {
            SelectedProvider::Tencent(p) => p.attach(id, container, io).await,
            SelectedProvider::Kubernetes(p) => p.attach(id, container, io).await,
        }
    }

    async fn port_forward(&self, id: &str, port: u16) -> Result<PortStream> {
        match self {
            SelectedProvider::Tencent(p) => p.port_forward(id, port).await,
            SelectedProvider::Kubernetes(p) => p.port_forward(id, port).await,
        }
    }

    fn notifier(&self) -> Option<mpsc::UnboundedReceiver<SandboxChange>> {
        match self {
            SelectedProvider::Tencent(p) => p.notifier(),
            SelectedProvider::Kubernetes(p) => p.notifier(),
        }
    }

    fn followed_sources(&self) -> Option<mpsc::UnboundedReceiver<Source>> {
        match self {
            SelectedProvider::Tencent(p) => p.followed_sources(),
            SelectedProvider::Kubernetes(p) => p.followed_sources(),
        }
    }

    fn source_version(&self, source: Source, version: String) {
        match self {
            SelectedProvider::Tencent(p) => p.source_version(source, version),
            SelectedProvider::Kubernetes(p) => p.source_version(source, version),
        }
    }

    async fn source_read(&self, source: &Source, object: Option<SourceObject>) {
        match self {
            SelectedProvider::Tencent(p) => p.source_read(source, object).await,
            SelectedProvider::Kubernetes(p) => p.source_read(source, object).await,
        }
    }
}
