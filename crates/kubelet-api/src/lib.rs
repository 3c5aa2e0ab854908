//! The kubelet API of a virtual node, as the kube-apiserver, kubectl and metrics-server expect
//! to find it on a node's `InternalIP` and `daemonEndpoints` port: container logs (followed,
//! tailed, timestamped, cut), the Summary API and the resource metrics endpoint, the node's pod
//! list and health, with the kubelet's authentication (client certificates, TokenReview) and
//! authorisation (SubjectAccessReview on `nodes/*`).
//!
//! The server calls a [`Backend`] for everything it shows and knows nothing of any cloud; eklet
//! implements the backend over its pod caches and its provider. Exec, attach, port-forward and
//! run speak SPDY/3.1 and the WebSocket channel protocols ([`streaming`], [`spdy`]) and hand the
//! backend plain byte streams.

pub mod auth;
pub mod backend;
pub mod logs;
pub mod server;
pub mod spdy;
pub mod stats;
pub mod streaming;
pub mod tls;
mod x509;

pub use auth::{KubeReviews, Reviews, User};
pub use backend::{
    Backend, ContainerUsage, CpuUsage, Duplex, ErrorKind, ExitStatus, LogLine, LogOptions, LogStream,
    PodUsage, PortStream, RunningContainer, RunningPod, StreamIo, TerminalSize,
};
pub use server::{KubeletApi, router, serve};
pub use streaming::Limits as StreamingLimits;
pub use tls::{ServingCertificate, server_config};
