//! What every tke-resilience component process shares, so that each does it one way:
//! [`events`] (the recorder eklet, eks-admission and the scheduler extender publish through),
//! [`duration`] (the one syntax of every duration flag), [`metrics`] (the plain-HTTP `/metrics`
//! and `/healthz` every component serves), [`quantity`] (resource quantities as the apiserver
//! writes them), and [`process`] (the Kubernetes client from `--kubeconfig` or in-cluster, the
//! identity in Leases and events, the shutdown signal).

pub mod duration;
pub mod events;
pub mod metrics;
pub mod process;
pub mod quantity;
