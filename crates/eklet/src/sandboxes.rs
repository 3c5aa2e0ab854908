//! The cloud side of the [`Registry`](crate::registry::Registry): adoption and the orphan sweep
//! ([`sweep`]) fill and prune it, and it is kept current one of two ways: a provider that
//! watches its cloud pushes changes ([`apply_pushed`]); any other is described by one loop
//! ([`sync_statuses`]) in batches of [`DESCRIBE_BATCH`](crate::provider::DESCRIBE_BATCH), which
//! wakes only the pods whose sandbox changed — never one cloud call per pod per poll.
//!
//! Deletion safety: a sandbox is deleted without its pod's reconcile only when a fresh,
//! consistent list of the cluster's pods — taken after the sandbox was found unmatched — does
//! not contain the pod's UID.

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt, api::ListParams, runtime::reflector::ObjectRef};

use crate::{
    context::Context,
    provider::{DESCRIBE_BATCH, Provider, SandboxChange, SandboxName},
    registry::Record,
};

/// Describe calls in flight at once during one sync.
const DESCRIBE_CONCURRENCY: usize = 4;

/// Describes every live sandbox every `--status-sync-interval` and wakes the pods whose sandbox
/// changed, unless the provider pushes changes. Also refreshes the pods-by-phase gauge. Never
/// returns.
///
/// The describes share the cloud's per-action budget (the client's limiter, 20/s for the real API)
/// with everything else that describes: the orphan sweep's list and the one describe after a
/// sandbox is tracked. Creates and deletes have budgets of their own, so no sweep delays them. When
/// a sweep takes longer than half the interval (10,000 sandboxes are 100 batches, 5 s at 20/s),
/// the next one waits as long as this one took ([`next_sweep_in`]): the loop never takes more
/// than half the describe budget, and a sandbox's change reaches its pod within two sweeps.
pub async fn sync_statuses<P: Provider>(ctx: Arc<Context<P>>) {
    let interval = ctx.config.status_sync_interval;
    loop {
        let begun = tokio::time::Instant::now();
        if !ctx.pushed {
            sync_once(&ctx).await;
        }
        ctx.count_pods_by_phase();
        let took = begun.elapsed();
        let wait = next_sweep_in(interval, took);
        if took * 2 > interval {
            tracing::debug!(
                ?took,
                ?wait,
                "a status sweep took over half the interval; the next waits longer"
            );
        }
        tokio::time::sleep(wait).await;
    }
}

/// How long after a sweep that took `took` the next begins: the interval from this one's start, or
/// as long again as it took when that is later.
pub fn next_sweep_in(interval: Duration, took: Duration) -> Duration {
    interval.saturating_sub(took).max(took)
}

/// Applies the changes a watching provider pushes, as they come. Returns when the provider drops
/// its end.
pub async fn apply_pushed<P: Provider>(
    ctx: Arc<Context<P>>,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<SandboxChange>,
) {
    while let Some(change) = changes.recv().await {
        let (wake, latencies) = ctx.registry.pushed(change);
        ctx.observed(wake, latencies);
    }
}

async fn sync_once<P: Provider>(ctx: &Context<P>) {
    let ids = ctx.registry.pollable();
    if ids.is_empty() {
        return;
    }
    let batches: Vec<Vec<String>> = ids.chunks(DESCRIBE_BATCH).map(<[String]>::to_vec).collect();
    let mut answers = futures::stream::iter(batches)
        .map(|batch| async move {
            let answer = ctx.provider.describe(&batch).await;
            (batch, answer)
        })
        .buffer_unordered(DESCRIBE_CONCURRENCY);
    while let Some((batch, answer)) = answers.next().await {
        match answer {
            Ok(sandboxes) => {
                let (wake, latencies) = ctx.registry.observe(&batch, sandboxes);
                ctx.observed(wake, latencies);
            }
            // The next tick asks again; a failed describe says nothing about the sandboxes.
            Err(error) => tracing::warn!(%error, batch = batch.len(), "describing sandboxes failed"),
        }
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub listed: usize,
    pub adopted: usize,
    pub orphans_deleted: usize,
    pub duplicates_deleted: usize,
}

impl SweepReport {
    pub fn changed_anything(&self) -> bool {
        self.adopted + self.orphans_deleted + self.duplicates_deleted > 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("listing sandboxes: {0}")]
    List(#[from] crate::provider::Error),
    #[error("listing pods to confirm orphans: {0}")]
    Pods(#[from] kube::Error),
}

/// Lists this cluster's sandboxes: adopts those whose pod is in the caches, deletes duplicates,
/// and deletes sandboxes (listed or registered) whose pod a fresh list proves gone. The caches
/// must have synced first.
pub async fn sweep<P: Provider>(ctx: &Context<P>) -> Result<SweepReport, SweepError> {
    let listed = ctx.provider.list(&ctx.config.cluster_id).await?;
    let mut report = SweepReport {
        listed: listed.len(),
        ..SweepReport::default()
    };
    let cached = ctx.cached_pods();
    let mut candidates: Vec<(String, String)> = Vec::new();
    let mut tracked = Vec::new();
    for sandbox in listed {
        let Some((name, uid)) = SandboxName::parse(&ctx.config.cluster_id, &sandbox.name) else {
            continue;
        };
        match ctx.registry.sandbox_of(&uid) {
            Some(id) if id == sandbox.id => {}
            Some(id) => {
                // A second sandbox for one pod: the one eklet tracks keeps running.
                tracing::error!(pod_uid = %uid, kept = %id, extra = %sandbox.id, "deleting a duplicate sandbox");
                ctx.metrics.duplicates_found.inc();
                if ctx.provider.delete(&sandbox.id, Duration::ZERO).await.is_ok() {
                    report.duplicates_deleted += 1;
                }
            }
            None => match cached.get(&uid) {
                Some(pod) => {
                    let node = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default();
                    let started = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.start_time.as_ref())
                        .map(|t| t.0);
                    let reference = ObjectRef::from_obj(pod.as_ref());
                    tracing::info!(pod = %reference, sandbox = %sandbox.id, "adopting sandbox");
                    tracked.push(sandbox.id.clone());
                    ctx.registry
                        .insert(&uid, Record::adopted(sandbox, name, node.clone(), pod, started));
                    ctx.metrics.sandboxes_adopted.inc();
                    report.adopted += 1;
                    ctx.wake(&node, reference);
                }
                None => candidates.push((uid, sandbox.id)),
            },
        }
    }
    // What a pushing provider reported before these were tracked was ignored: look once.
    if ctx.pushed && !tracked.is_empty() {
        ctx.catch_up(tracked).await;
    }
    for (uid, record) in ctx.registry.snapshot() {
        if !cached.contains_key(&uid) {
            candidates.push((uid, record.sandbox_id));
        }
    }
    if candidates.is_empty() {
        return Ok(report);
    }
    // Only now, after the candidates were fixed, ask the apiserver: a pod that exists is in this
    // list, and a sandbox created after the candidates were chosen is not among them.
    let live = live_pod_uids(ctx).await?;
    for (uid, sandbox_id) in candidates {
        if live.contains(&uid) {
            continue;
        }
        match ctx.provider.delete(&sandbox_id, Duration::ZERO).await {
            Ok(()) => {
                tracing::info!(pod_uid = %uid, sandbox = %sandbox_id, "deleted the sandbox of a pod that is gone");
                ctx.registry.forget(&uid);
                ctx.metrics.orphans_deleted.inc();
                report.orphans_deleted += 1;
            }
            Err(error) => {
                tracing::warn!(pod_uid = %uid, sandbox = %sandbox_id, %error, "cannot delete orphan sandbox")
            }
        }
    }
    Ok(report)
}

/// UIDs of every pod in the cluster, from a consistent (quorum) paged list of metadata.
async fn live_pod_uids<P: Provider>(ctx: &Context<P>) -> Result<HashSet<String>, kube::Error> {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let mut uids = HashSet::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list_metadata(&params).await?;
        uids.extend(page.items.iter().filter_map(|p| p.uid()));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(uids),
        }
    }
}

/// Runs [`sweep`] every `--orphan-sweep-interval`, and when asked to through `sweep_now`.
/// Never returns.
pub async fn sweep_periodically<P: Provider>(ctx: Arc<Context<P>>) {
    let mut ticker = tokio::time::interval(ctx.config.orphan_sweep_interval.max(Duration::from_secs(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = ctx.sweep_now.notified() => {}
        }
        match sweep(&ctx).await {
            Ok(report) if report.changed_anything() => tracing::info!(?report, "sandbox sweep"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "sandbox sweep failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_loop_keeps_its_interval_and_never_sweeps_more_than_half_the_time() {
        let s = Duration::from_secs;
        // Quick sweeps: one per interval, from start to start.
        assert_eq!(next_sweep_in(s(10), s(1)), s(9));
        assert_eq!(next_sweep_in(s(10), s(5)), s(5));
        // Long ones (10,000 sandboxes at 20 describes/s take 5 s of a 5 s interval): as long again,
        // so half the describe budget stays for the orphan sweep and new sandboxes.
        assert_eq!(next_sweep_in(s(5), s(5)), s(5));
        assert_eq!(next_sweep_in(s(10), s(8)), s(8));
        assert_eq!(next_sweep_in(s(10), s(30)), s(30));
        assert_eq!(next_sweep_in(s(10), Duration::ZERO), s(10));
    }
}
