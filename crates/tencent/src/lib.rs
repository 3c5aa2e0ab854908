//! A client for the Tencent Cloud EKS container-instance API (TC3-HMAC-SHA256 signed API 3.0). It knows
//! nothing of Kubernetes: callers hand it totals, annotation maps and wire types.
//!
//! - [`sign`]: the signature, both the signing and the verifying side (cloudsim uses the latter);
//! - [`model`]: the request and response types of the EKSCI actions;
//! - [`client`]: the HTTP client with per-action rate limits ([`rate_limit`]) and retries ([`retry`]);
//! - [`error`]: the error and its classification (transient, sold out, not found, permanent);
//! - [`spec`] and [`annotations`]: sizing a pod to a standard specification, and the EKS pod
//!   annotations the API has fields for;
//! - [`agent`]: scraping a sandbox agent's usage metrics (the API has no metrics action);
//! - [`agent_stream`]: our protocol for exec, attach and port-forward through the sandbox agent;
//! - [`credentials`] and [`time`].

pub mod agent;
pub mod agent_stream;
pub mod annotations;
pub mod client;
pub mod credentials;
pub mod error;
pub mod model;
pub mod rate_limit;
pub mod retry;
pub mod sign;
pub mod spec;
pub mod time;

pub use client::{Client, ClientConfig};
pub use credentials::Credentials;
pub use error::{Error, ErrorKind, Result};
