//! cloudsim in end-to-end tests: most run it in this process (`eklet::start_cloudsim`); the
//! chart's walkthroughs run `tke-resilience cloudsim` as a process (`chart::Installed::cloudsim`,
//! through `tke_testbed::components::Cloudsim`) and read what its admin API counts.

use std::net::SocketAddr;

use anyhow::Context as _;
use serde_json::Value;

/// Live sandboxes in the cloudsim at `addr`, as its admin API counts them.
pub async fn live_instances(addr: SocketAddr) -> anyhow::Result<u64> {
    let stats: Value = serde_json::from_str(&super::eklet::http_get(addr, "/admin/stats").await?)?;
    stats["live_instances"]
        .as_u64()
        .with_context(|| format!("no live_instances in {stats}"))
}
