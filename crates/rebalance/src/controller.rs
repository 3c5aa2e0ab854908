//! The rebalancer's loop: one watch of nodes and one of pods; every `--interval`, while both are
//! synced and healthy, every workload with pods on virtual nodes is judged ([`crate::plan`]), and
//! at most one pod per workload is evicted through the Eviction API (PodDisruptionBudgets hold; a
//! 429 is a skip, not an error), within a global budget of moves per minute.
//!
//! What it must remember across restarts — when each workload last had a pod moved — is kept
//! where users see it: the `MovedToLocal` event on the moved pod names the workload as its
//! related object, and a restarted leader reads those events back before it moves anything, so a
//! workload mid-move is never moved twice at once.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, ObjectReference, Pod};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{EvictParams, ListParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use tke_policy::{
    WorkloadRef, controlling_owner, is_virtual_node,
    workload::{bound_node, is_finished},
};
use tke_runtime::events::{Event, EventType, Recorder, Reporter};

use crate::{
    fit::NodeRoom,
    metrics::Metrics,
    plan::{self, History, Skip, Verdict, Workload},
};

/// The reporting controller in events and the default Lease name.
pub const REPORTER: &str = "tke-rebalance";
/// An eviction that has not answered in this long counts as failed (the next round looks again).
const EVICTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How much earlier than its `MovedToLocal` event a move read back is taken to have happened.
const PUBLISH_SLACK: SignedDuration = SignedDuration::from_secs(5);
/// Event reasons.
pub const MOVED_TO_LOCAL: &str = "MovedToLocal";
pub const WOULD_MOVE_TO_LOCAL: &str = "WouldMoveToLocal";
pub const REBALANCE_SKIPPED: &str = "RebalanceSkipped";
pub const REBALANCE_COOL_DOWN: &str = "RebalanceCoolDown";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub plan: plan::Settings,
    pub interval: Duration,
    pub max_moves_per_minute: u32,
    pub dry_run: bool,
    pub instance: String,
}

/// A watched kind: its cache, and whether its watch is healthy now.
struct Watched<K: Resource + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store: reflector::Store<K>,
    healthy: Arc<AtomicBool>,
}

fn watch<K>(api: Api<K>, what: &'static str) -> (Watched<K>, impl Future<Output = Error> + Send)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let run = async move {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => flag.store(true, Ordering::Relaxed),
                Err(error) => {
                    if flag.swap(false, Ordering::Relaxed) {
                        tracing::warn!(%error, "the {what} watch failed; nothing moves until it is back");
                    }
                }
            }
        }
        Error::WatchEnded(what)
    };
    (Watched { store, healthy }, run)
}

impl<K: Resource + Clone + 'static> Watched<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    fn fresh(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// Runs until a watch ends, which they do not do on their own. `evictions` is a client that does
/// not retry a 429 by itself.
pub async fn run(
    client: Client,
    evictions: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
) -> Result<(), Error> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: REPORTER.to_owned(),
            instance: Some(settings.instance.clone()),
        },
    );
    let (nodes, nodes_watch) = watch(Api::<Node>::all(client.clone()), "node");
    let (pods, pods_watch) = watch(Api::<Pod>::all(client.clone()), "pod");
    let mut state = State {
        client,
        evictions,
        recorder,
        settings,
        metrics,
        history: HashMap::new(),
        recent_moves: VecDeque::new(),
        first_eligible: HashMap::new(),
        last_skip: HashMap::new(),
    };
    let work = async {
        let _ = nodes.store.wait_until_ready().await;
        let _ = pods.store.wait_until_ready().await;
        state.restore().await;
        let mut ticker = tokio::time::interval(state.settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if !(nodes.fresh() && pods.fresh()) {
                tracing::debug!("a watch is not healthy; nothing moves this round");
                continue;
            }
            state.round(&nodes.store.state(), &pods.store.state()).await;
        }
    };
    tokio::select! {
        error = nodes_watch => Err(error),
        error = pods_watch => Err(error),
        () = work => unreachable!("the loop does not end"),
    }
}

struct State {
    client: Client,
    evictions: Client,
    recorder: Recorder,
    settings: Settings,
    metrics: Arc<Metrics>,
    /// By controlling-owner UID.
    history: HashMap<String, History>,
    /// When the moves of the last minute were made, for the budget.
    recent_moves: VecDeque<Timestamp>,
    /// When a local node first fitted each cloud pod, by pod UID.
    first_eligible: HashMap<String, Timestamp>,
    /// The last skip reported per workload, so an event is published when it changes.
    last_skip: HashMap<String, String>,
}

impl State {
    /// Reads back when each workload last had a pod moved, from this controller's
    /// `MovedToLocal` events of the last cool-down period.
    async fn restore(&mut self) {
        let since = Timestamp::now() - self.settings.plan.cool_down;
        match past_moves(&self.client, None, since, self.settings.plan.hold_down).await {
            Ok(moves) => {
                for (owner, at) in moves {
                    self.history.entry(owner).or_default().last_move = Some(at);
                }
                tracing::info!(workloads = self.history.len(), "past moves read back");
            }
            Err(error) => tracing::warn!(%error, "cannot read past moves back; assuming none"),
        }
    }

    async fn round(&mut self, nodes: &[Arc<Node>], pods: &[Arc<Pod>]) {
        let now = Timestamp::now();
        let virtual_nodes: HashSet<String> = nodes
            .iter()
            .filter(|n| is_virtual_node(n))
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let is_virtual = |name: &str| virtual_nodes.contains(name);
        let mut rooms: BTreeMap<String, NodeRoom> = nodes
            .iter()
            .filter(|n| !is_virtual_node(n))
            .filter_map(|n| NodeRoom::of(n))
            .map(|room| (room.name.clone(), room))
            .collect();
        let mut workloads: BTreeMap<String, Workload<'_>> = BTreeMap::new();
        for pod in pods {
            if let Some(room) = bound_node(pod).and_then(|n| rooms.get_mut(n))
                && !is_finished(pod)
            {
                room.bind(pod);
            }
            if let Some(owner) = controlling_owner(pod) {
                workloads
                    .entry(owner.uid.clone())
                    .or_insert_with(|| Workload {
                        owner,
                        pods: Vec::new(),
                    })
                    .pods
                    .push(pod.as_ref());
            }
        }
        let pressure = plan::pressure(pods.iter().map(AsRef::as_ref), is_virtual, now);
        tracing::debug!(
            ?pressure,
            workloads = workloads.len(),
            local_nodes = rooms.len(),
            "round"
        );
        while self
            .recent_moves
            .front()
            .is_some_and(|t| *t + SignedDuration::from_mins(1) <= now)
        {
            self.recent_moves.pop_front();
        }
        let mut candidates = 0;
        let mut seen_pods = HashSet::new();
        for (uid, workload) in &workloads {
            let history = self.history.get(uid).copied().unwrap_or_default();
            let room_list: Vec<NodeRoom> = rooms.values().cloned().collect();
            let verdict = plan::judge(
                workload,
                &history,
                pressure,
                &room_list,
                is_virtual,
                now,
                &self.settings.plan,
            );
            match verdict {
                Verdict::NoCloudPods => {}
                Verdict::Skip(skip) => {
                    candidates += 1;
                    tracing::debug!(workload = %workload.owner, reason = skip.reason(), "skip");
                    let cool_down = matches!(skip, Skip::CoolDown { .. });
                    self.skipped(&workload.owner, skip.reason(), &skip.to_string(), cool_down)
                        .await;
                }
                Verdict::Move { pod, node } => {
                    candidates += 1;
                    tracing::debug!(pod = %pod.name_any(), %node, "a local node fits a cloud pod");
                    let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
                    seen_pods.insert(pod_uid.clone());
                    let eligible = *self.first_eligible.entry(pod_uid).or_insert(now);
                    if self.recent_moves.len() >= self.settings.max_moves_per_minute as usize {
                        let note = format!(
                            "{} moves in the last minute reach --max-moves-per-minute",
                            self.recent_moves.len()
                        );
                        self.skipped(&workload.owner, "Budget", &note, false).await;
                        continue;
                    }
                    if self.move_home(&workload.owner, pod, &node, eligible, now).await {
                        // Booked, so the next workload of this round does not count on the room.
                        if let Some(room) = rooms.get_mut(&node) {
                            room.bind(pod);
                        }
                        self.history.entry(uid.clone()).or_default().last_move = Some(now);
                        self.recent_moves.push_back(now);
                    }
                }
            }
        }
        self.first_eligible.retain(|uid, _| seen_pods.contains(uid));
        self.metrics.candidates.set(candidates);
    }

    /// Reports a skip in metrics every round, and as an event on the workload when its reason
    /// changes; a cool-down is a Warning (`RebalanceCoolDown`), anything else Normal.
    async fn skipped(&mut self, owner: &WorkloadRef, reason: &str, note: &str, cool_down: bool) {
        self.metrics.skip(reason);
        if self.last_skip.get(&owner.uid).map(String::as_str) == Some(reason) {
            return;
        }
        self.last_skip.insert(owner.uid.clone(), reason.to_owned());
        tracing::info!(workload = %owner, reason, note, "not moving");
        let (event_reason, type_) = if cool_down {
            (REBALANCE_COOL_DOWN, EventType::Warning)
        } else {
            (REBALANCE_SKIPPED, EventType::Normal)
        };
        let event = Event {
            type_,
            reason: event_reason.into(),
            note: Some(format!("{reason}: {note}")),
            action: "Rebalance".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &reference(owner)).await {
            tracing::warn!(%error, workload = %owner, "cannot publish an event");
        }
    }

    /// Evicts `pod` (or, in a dry run, says it would). True when it was evicted.
    async fn move_home(
        &mut self,
        owner: &WorkloadRef,
        pod: &Pod,
        node: &str,
        eligible: Timestamp,
        now: Timestamp,
    ) -> bool {
        let name = pod.name_any();
        let namespace = pod.namespace().unwrap_or_default();
        let regarding = pod.object_ref(&());
        if self.settings.dry_run {
            self.metrics.moved("dry_run");
            tracing::info!(pod = %format!("{namespace}/{name}"), workload = %owner, node, "dry run: would move this pod home");
            let event = Event {
                type_: EventType::Normal,
                reason: WOULD_MOVE_TO_LOCAL.into(),
                note: Some(format!(
                    "dry run: local node {node} fits it; it would be evicted to come home"
                )),
                action: "Rebalance".into(),
                secondary: Some(reference(owner)),
            };
            let _ = self.recorder.publish(&event, &regarding).await;
            self.last_skip.insert(owner.uid.clone(), "DryRun".into());
            return false;
        }
        let api: Api<Pod> = Api::namespaced(self.evictions.clone(), &namespace);
        let evicted = tokio::time::timeout(EVICTION_TIMEOUT, api.evict(&name, &EvictParams::default()))
            .await
            .unwrap_or_else(|_| Err(kube::Error::Service("the eviction did not answer in time".into())));
        match evicted {
            Ok(_) => {
                self.metrics.moved("moved");
                let waited = now.duration_since(eligible).as_secs_f64().max(0.0);
                self.metrics.eligible_to_moved.observe(waited);
                self.last_skip.remove(&owner.uid);
                tracing::info!(pod = %format!("{namespace}/{name}"), workload = %owner, node, "evicted a cloud pod to bring it home");
                let event = Event {
                    type_: EventType::Normal,
                    reason: MOVED_TO_LOCAL.into(),
                    note: Some(format!(
                        "evicted from the virtual node to come home: local node {node} fits it now ({owner})"
                    )),
                    action: "Rebalance".into(),
                    secondary: Some(reference(owner)),
                };
                if let Err(error) = self.recorder.publish(&event, &regarding).await {
                    tracing::warn!(%error, "cannot publish the MovedToLocal event");
                }
                true
            }
            Err(kube::Error::Api(status)) if status.code == 429 => {
                self.metrics.moved("disruption_budget");
                let note = format!(
                    "a PodDisruptionBudget does not allow evicting {name} now: {}",
                    status.message
                );
                self.skipped(owner, "DisruptionBudget", &note, false).await;
                false
            }
            Err(error) => {
                self.metrics.moved("failed");
                tracing::warn!(%error, pod = %format!("{namespace}/{name}"), "evicting a cloud pod failed");
                false
            }
        }
    }
}

/// When each workload (by controlling-owner UID) last had a pod moved since `since`, from the
/// `MovedToLocal` events in `namespace` (or all). The event was published after the eviction
/// answered, and the replacement may be older than the event, so a move is dated back a little —
/// never past `hold_down`: a pod of the workload that went to the cloud that recently would have
/// held the move anyway.
pub async fn past_moves(
    client: &Client,
    namespace: Option<&str>,
    since: Timestamp,
    hold_down: SignedDuration,
) -> kube::Result<HashMap<String, Timestamp>> {
    let events: Api<CoreEvent> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let params = ListParams::default().fields(&format!("reason={MOVED_TO_LOCAL}"));
    let slack = hold_down.min(PUBLISH_SLACK);
    let mut moves: HashMap<String, Timestamp> = HashMap::new();
    for event in events.list(&params).await?.items {
        let (Some(owner), Some(at)) = (event.related.as_ref().and_then(|r| r.uid.clone()), when(&event))
        else {
            continue;
        };
        if at < since {
            continue;
        }
        let at = at - slack;
        let last = moves.entry(owner).or_insert(at);
        *last = (*last).max(at);
    }
    Ok(moves)
}

/// The time an event last happened.
fn when(event: &CoreEvent) -> Option<Timestamp> {
    let series = event
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| t.0);
    let last = event.last_timestamp.as_ref().map(|t| t.0);
    let first = event.event_time.as_ref().map(|t| t.0);
    [series, last, first].into_iter().flatten().max()
}

/// The workload as an object reference, for events.
pub fn reference(owner: &WorkloadRef) -> ObjectReference {
    ObjectReference {
        api_version: Some(owner.api_version.clone()),
        kind: Some(owner.kind.clone()),
        name: Some(owner.name.clone()),
        namespace: Some(owner.namespace.clone()),
        uid: Some(owner.uid.clone()),
        ..ObjectReference::default()
    }
}
