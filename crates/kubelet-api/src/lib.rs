//! The kubelet API of a virtual node, as the kube-apiserver, kubectl and metrics-server expect
//! to find it on a node's `InternalIP` and `daemonEndpoints` port: container logs (followed,
//! tailed, timestamped, cut), the Summary API and the resource metrics endpoint, the node's pod
//! list and health, with the kubelet's authentication (client certificates, TokenReview) and
//! authorisation (SubjectAccessReview on `nodes/*`).
//!
//! The server calls a [`Backend`] for everything it shows and knows nothing of any cloud; eklet
//! implements the backend over its pod caches and its provider. Exec, attach, port-forward and
//! run answer 501 until the streaming protocols exist.

pub mod auth;
pub mod backend;
pub mod logs;
pub mod server;
pub mod stats;
pub mod tls;
mod x509;

pub use auth::{KubeReviews, Reviews, User};
pub use backend::{
    Backend, ContainerUsage, CpuUsage, ErrorKind, LogLine, LogOptions, LogStream, PodUsage, RunningContainer,
    RunningPod,
};
pub use server::{KubeletApi, router, serve};
pub use tls::{ServingCertificate, server_config};
