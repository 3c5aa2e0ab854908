//! What every tke-resilience component process shares. Today: [`events`], the recorder that
//! eklet, eks-admission and the scheduler extender publish their Kubernetes events through.

pub mod events;
