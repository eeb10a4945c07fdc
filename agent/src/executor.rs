//! The executor: holds the directives of the runs in flight, keeps the cache of what it sees,
//! and after every change plans (pure, in `snapgate-agent-core`) and applies the actions.
//!
//! ```text
//!   link events ──┐                       ┌──► Cluster writes (results back into the cache)
//!   watch events ─┼──► cache ──► plan() ──┼──► Events
//!   retry timer ──┘    (per run)          └──► reports (deduplicated), lease requests
//!   lease grants ────► lease per run ─┘ (held / requested / …, at the plan's time)
//! ```
//!
//! One task, one run at a time: plans see a consistent cache, and an action's result is in
//! the cache before the next plan, so nothing is written twice.
//!
//! A run's hold lease is kept on the monotonic clock (tokio's `Instant`): its deadline is the
//! time noted just before the request was put on the link plus the `remaining` of the answer,
//! so it can only be earlier than the scheduler's however late the answer comes. A lease is
//! for one directive generation; a held one outlives a lost link (it was anchored before the
//! request, so it stays safe), a requested one does not (it is asked again on the next link).
//! The run is planned again at its deadline.
//!
//! Before it acts on a run the executor asks the API server about the run's author (see
//! `snapgate_agent_core::review`), once per run: the answer is kept with the run.
//!
//! The wall clock (plans' `now`, the bounds of reports, when a trouble was first seen) is read
//! only through the injected [`Clock`]; timers and leases run on tokio's clock, so a test on
//! paused tokio time with a `TokioClock` moves both together.
//!
//! The mover Jobs' pods (snapgate's label) and the namespace's Warning Events (only those
//! `snapgate_agent_core::stuck` reads, cut to its bounds, at most [`MAX_EVENTS`] per
//! namespace) are watched too, so that a pod that cannot start is seen at once. They do not
//! hold up planning: until both are listed, a plan just says nothing about stuck pods. The
//! time the executor first saw each trouble is kept with the run (the cluster's own record is
//! used when it has one, and it is never later than this).

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Event, PersistentVolumeClaim, Pod},
};
use kube::runtime::watcher;
use snapgate_agent_core::{
    bounds, classify, names,
    plan::{
        self, Action, MoverOutcome, MoverPods, Observed, PlanConfig, Stuck, Temporary,
        TemporaryKind,
    },
    reconnect::Confirmation,
    resources::VolumeSnapshot,
    review::Review,
    stuck,
};
use snapgate_proto::{
    clock::Clock,
    v1::{self, agent_message, report::Observation},
};
use tokio::{sync::mpsc, time::Instant};
use tracing::{debug, info, warn};

use crate::{
    cache::Cache,
    cluster::{Cluster, ClusterError, Namespaced},
    link::LinkEvent,
    metrics::Metrics,
};

/// How soon a run whose action failed transiently is planned again (default).
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How often every held run is planned again even without events (missing Secrets, …).
const RESYNC_EVERY: Duration = Duration::from_secs(60);
/// The most Warning Events kept per namespace (of those `stuck` reads; each cut to its
/// bounds): past it, new ones are dropped (and logged) until some are deleted.
pub const MAX_EVENTS: usize = 1000;

/// How long a run that asked to wake at a time already past waits to be planned again: the
/// plan that asked could not act at that time (something else held it back, such as a report
/// the link to the scheduler cannot carry while it is down), so planning again at once would
/// only ask again at once, a loop with no time passing.
const PAST_WAKE: Duration = Duration::from_secs(1);

/// When a run that asked to wake at `at` (a plan's time, from cluster data and settings) is
/// planned again, on the monotonic clock: at most [`RESYNC_EVERY`] from `now`, since every
/// run is planned again that often anyway and a far time must not overflow an `Instant`; a
/// time not after `wall` waits [`PAST_WAKE`].
fn wake_at(now: Instant, at: chrono::DateTime<Utc>, wall: chrono::DateTime<Utc>) -> Instant {
    let wait = match at.signed_duration_since(wall).to_std() {
        Ok(wait) if !wait.is_zero() => wait.min(RESYNC_EVERY),
        _ => PAST_WAKE,
    };
    now.checked_add(wait).unwrap_or(now)
}

/// When a run planned at `now` whose action failed (or must be looked at again) after
/// `retry_after` is planned again: at most [`RESYNC_EVERY`] from `now`, since every run is
/// planned again that often anyway and a far time must not overflow an `Instant`.
fn retry_at(now: Instant, retry_after: Duration) -> Instant {
    now.checked_add(retry_after.min(RESYNC_EVERY))
        .unwrap_or(now)
}

/// A change seen by a watch.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "each change is moved once through a channel; boxing would allocate anyway"
)]
pub enum Change {
    /// A PVC changed.
    Pvc(String, watcher::Event<PersistentVolumeClaim>),
    /// A VolumeSnapshot changed.
    Snapshot(String, watcher::Event<VolumeSnapshot>),
    /// A Job changed.
    Job(String, watcher::Event<Job>),
    /// A mover pod changed.
    Pod(String, watcher::Event<Pod>),
    /// A Warning Event changed.
    Event(String, watcher::Event<Event>),
    /// The namespace itself changed (its deletion is what the agent looks for).
    Namespace(
        String,
        watcher::Event<k8s_openapi::api::core::v1::Namespace>,
    ),
}

/// The hold lease of a held run, for one directive generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum LeaseState {
    /// None held, none asked for.
    #[default]
    None,
    /// Asked for with `request_id`, for `generation`; the request was sent at `sent_at` or
    /// later (noted before it was put on the link).
    Requested {
        request_id: u64,
        generation: u64,
        sent_at: Instant,
    },
    /// Held for `generation` until `deadline` (excluded).
    Held { generation: u64, deadline: Instant },
    /// Refused for `generation`: nothing is made or counted under this directive.
    Refused { generation: u64, why: String },
}

impl LeaseState {
    /// What a plan of `directive` at `now` sees of the lease.
    fn at(&self, directive: &v1::Directive, now: Instant) -> plan::Lease {
        if !directive.lease {
            return plan::Lease::NotNeeded;
        }
        let current = directive.generation;
        match self {
            Self::Requested { generation, .. } if *generation == current => plan::Lease::Requested,
            Self::Held {
                generation,
                deadline,
            } if *generation == current => {
                if now < *deadline {
                    plan::Lease::Held
                } else {
                    plan::Lease::Expired
                }
            }
            Self::Refused { generation, .. } if *generation == current => plan::Lease::Expired,
            _ => plan::Lease::None,
        }
    }

    /// Takes the answer to the outstanding request: `false` (and nothing changes) when `grant`
    /// does not answer it (another request id, or none outstanding).
    fn grant(&mut self, grant: &v1::LeaseGrant) -> bool {
        let Self::Requested {
            request_id,
            generation,
            sent_at,
        } = *self
        else {
            return false;
        };
        if grant.request_id != request_id {
            return false;
        }
        *self = if !grant.refused.is_empty() {
            Self::Refused {
                generation,
                why: bounds::cut(grant.refused.clone(), bounds::MAX_MESSAGE_BYTES),
            }
        } else {
            match grant.remaining {
                None => Self::Refused {
                    generation,
                    why: "granted without a remaining time".into(),
                },
                Some(remaining) => Self::Held {
                    generation,
                    deadline: anchored(sent_at, remaining),
                },
            }
        };
        true
    }

    /// When the run must be planned again for its lease: at the deadline of a held lease that
    /// has not run out at `now` (no later than a resync from `now`).
    fn wake(&self, now: Instant) -> Option<Instant> {
        match self {
            Self::Held { deadline, .. } if *deadline > now => {
                Some((*deadline).min(now.checked_add(RESYNC_EVERY).unwrap_or(*deadline)))
            }
            _ => None,
        }
    }
}

/// The deadline of a lease whose request was sent at `sent_at` with `remaining` left: a
/// negative remaining is none; one past what an `Instant` can hold is the latest instant
/// that can be computed (halving it until it fits).
fn anchored(sent_at: Instant, remaining: prost_types::Duration) -> Instant {
    let mut left = Duration::try_from(remaining).unwrap_or(Duration::ZERO);
    loop {
        if let Some(deadline) = sent_at.checked_add(left) {
            return deadline;
        }
        left /= 2;
    }
}

/// Sends a lease request for `run_id` at its directive's `generation` on `outbox`, noting the
/// time before the request is put on the link: the lease's deadline counts from then. `None`
/// when the link is gone.
async fn send_lease_request(
    outbox: &mpsc::Sender<agent_message::Message>,
    run_id: &str,
    generation: u64,
    request_id: u64,
) -> Option<LeaseState> {
    let sent_at = Instant::now();
    let request = agent_message::Message::LeaseRequest(v1::LeaseRequest {
        run_id: run_id.to_owned(),
        generation,
        request_id,
    });
    outbox.send(request).await.ok()?;
    Some(LeaseState::Requested {
        request_id,
        generation,
        sent_at,
    })
}

struct Held {
    directive: v1::Directive,
    /// The last observation reported for this run, to send each one once.
    last_report: Option<Observation>,
    retry_at: Option<Instant>,
    /// The keys of the run's required Secrets, once read (missing ones are left out).
    secrets: Option<BTreeMap<String, BTreeSet<String>>>,
    /// The highest failed mover attempt reported.
    failed_attempts: u32,
    /// The Jobs (uid) whose outcome was reported on this connection.
    reported_jobs: HashSet<String>,
    /// The Events recorded for this run, by their deterministic name.
    events: HashSet<String>,
    /// The namespace allows privileged movers (read when the run's first Job is made).
    privileged: Option<bool>,
    /// The run's hold lease (for directives with `lease`).
    lease: LeaseState,
    /// The API server's answer to the review of the run's author (a run's author never
    /// changes: asked once per run).
    review: Option<Result<(), String>>,
    /// The namespace's pods, read before a mover Job that mounts the source PVC in place is
    /// made (and read again for the next one).
    pods: Option<Vec<k8s_openapi::api::core::v1::Pod>>,
    /// The source's mover ServiceAccount (and SCC grant) was applied for this run.
    mover_account: bool,
    /// The namespace's VolSync ReplicationSources, read before a gated run waits (and read
    /// again after a conflict was reported).
    volsync: Option<Vec<snapgate_agent_core::volsync::ReplicationSourceSeen>>,
    /// What keeps the mover Job from running (its `stuck::Trouble::key`), and when this
    /// process first saw it.
    stuck_seen: Option<(String, DateTime<Utc>)>,
    /// No mover Job before this time: the back-off after a stuck attempt whose Job was deleted.
    next_attempt_at: Option<DateTime<Utc>>,
    /// The failed mover Job (its uid) and when this process first saw it failed.
    failed_seen: Option<(String, DateTime<Utc>)>,
}

impl Held {
    fn new(directive: v1::Directive) -> Self {
        Self {
            directive,
            last_report: None,
            retry_at: None,
            secrets: None,
            failed_attempts: 0,
            reported_jobs: HashSet::new(),
            events: HashSet::new(),
            privileged: None,
            lease: LeaseState::None,
            review: None,
            pods: None,
            mover_account: false,
            volsync: None,
            stuck_seen: None,
            next_attempt_at: None,
            failed_seen: None,
        }
    }

    /// Plan the run again no later than `at`.
    fn wake(&mut self, at: Instant) {
        self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
    }

    /// A request not answered on the link it was sent on is never answered: it is asked again.
    fn forget_lease_request(&mut self) {
        if matches!(self.lease, LeaseState::Requested { .. }) {
            self.lease = LeaseState::None;
        }
    }
}

/// The Kubernetes API call an action makes, as failures are logged, counted and reported.
struct ApiCall {
    verb: &'static str,
    resource: &'static str,
    name: String,
}

impl ApiCall {
    fn new(verb: &'static str, resource: &'static str, name: &str) -> Self {
        Self {
            verb,
            resource,
            name: name.to_owned(),
        }
    }

    fn of(action: &Action) -> Self {
        let named =
            |verb, resource, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
                Self::new(verb, resource, meta.name.as_deref().unwrap_or_default())
            };
        match action {
            Action::PatchPvc { name, .. } => Self::new("patch", "persistentvolumeclaims", name),
            Action::CreateSnapshot(o) => named("create", "volumesnapshots", &o.metadata),
            Action::CreatePvc(o) => named("create", "persistentvolumeclaims", &o.metadata),
            Action::CreateJob(o) => named("create", "jobs", &o.metadata),
            Action::PatchJob { name, .. } => Self::new("patch", "jobs", name),
            Action::DeleteSnapshot(name) => Self::new("delete", "volumesnapshots", name),
            Action::DeletePvc(name) => Self::new("delete", "persistentvolumeclaims", name),
            Action::DeleteJob(name) | Action::FailStuckJob { job: name, .. } => {
                Self::new("delete", "jobs", name)
            }
            Action::ReadSecrets(names) => Self::new("get", "secrets", &names.join(",")),
            Action::Event(e) => named("create", "events", &e.metadata),
            Action::ReportMover { job, .. } => Self::new("list", "pods", job),
            Action::ReviewAuthor(_) => Self::new("create", "localsubjectaccessreviews", ""),
            Action::ListPods => Self::new("list", "pods", ""),
            Action::ListVolSync => Self::new("list", "replicationsources", ""),
            Action::ApplyMoverAccount(a) => {
                named("create", "serviceaccounts", &a.service_account.metadata)
            }
            Action::Report(_) | Action::RequestLease | Action::WakeAt(_) => {
                Self::new("none", "none", "")
            }
        }
    }
}

/// Every temporary object of `source` in `ns` (by its cleanup label), from the caches.
fn temporaries_of(
    pvcs: &Cache<PersistentVolumeClaim>,
    snapshots: &Cache<VolumeSnapshot>,
    jobs: &Cache<Job>,
    ns: &str,
    source: &str,
) -> Vec<Temporary> {
    fn of<'a, K: kube::Resource + 'a>(
        objects: impl Iterator<Item = &'a K>,
        kind: TemporaryKind,
        source: &str,
    ) -> impl Iterator<Item = Temporary> {
        objects
            .filter(move |o| names::is_temporary_of(o.meta().labels.as_ref(), source))
            .map(move |o| Temporary {
                kind,
                name: o.meta().name.clone().unwrap_or_default(),
                terminating: o.meta().deletion_timestamp.is_some(),
            })
    }
    of(snapshots.in_namespace(ns), TemporaryKind::Snapshot, source)
        .chain(of(pvcs.in_namespace(ns), TemporaryKind::Pvc, source))
        .chain(of(jobs.in_namespace(ns), TemporaryKind::Job, source))
        .collect()
}

/// The name of the source a held run belongs to ("" when not held).
fn held_source(held: Option<&Held>) -> String {
    held.and_then(|h| h.directive.source.as_ref())
        .map(|s| s.name.clone())
        .unwrap_or_default()
}

/// The executor's state.
pub struct Executor {
    cluster: Cluster,
    config: PlanConfig,
    pvcs: Cache<PersistentVolumeClaim>,
    snapshots: Cache<VolumeSnapshot>,
    jobs: Cache<Job>,
    /// Mover pods (snapgate's label).
    pods: Cache<Pod>,
    /// Warning Events `stuck` reads, as it keeps them.
    events: Cache<Event>,
    runs: BTreeMap<String, Held>,
    /// Where reports and lease requests go, while connected.
    outbox: Option<mpsc::Sender<agent_message::Message>>,
    /// The id of the next lease request.
    next_request_id: u64,
    /// After a (re)connect: the runs the scheduler has resent so far, until it has resent all
    /// it said it would. Only those are acted on meanwhile.
    confirmation: Confirmation,
    metrics: Metrics,
    retry_after: Duration,
    /// Where the wall time is read.
    clock: Arc<dyn Clock>,
    /// Deleted sources (namespace, name) whose objects are still to be removed, and whether
    /// their restic cache stays; tried on every change and resync until done.
    retiring: BTreeMap<(String, String), bool>,
    /// Namespaces being deleted (or gone), and whether the scheduler was told on this
    /// connection.
    namespaces_gone: BTreeMap<String, bool>,
}

fn apply_event<K: kube::Resource + Clone>(cache: &mut Cache<K>, ns: &str, e: watcher::Event<K>) {
    match e {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) => cache.apply(o),
        watcher::Event::Delete(o) => cache.delete_seen(&o),
        watcher::Event::Init => cache.relist_started(ns),
        watcher::Event::InitDone => cache.relist_done(ns),
    }
}

impl Executor {
    /// An executor acting through `cluster`, reading the wall time from `clock`; a failed
    /// action is retried after `retry_after`.
    pub fn new(
        cluster: Cluster,
        config: PlanConfig,
        metrics: Metrics,
        retry_after: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            cluster,
            config,
            pvcs: Cache::default(),
            snapshots: Cache::default(),
            jobs: Cache::default(),
            pods: Cache::default(),
            events: Cache::default(),
            runs: BTreeMap::new(),
            outbox: None,
            next_request_id: 1,
            confirmation: Confirmation::new(),
            metrics,
            retry_after,
            clock,
            retiring: BTreeMap::new(),
            namespaces_gone: BTreeMap::new(),
        }
    }

    /// Runs until both inputs close.
    pub async fn run(
        mut self,
        mut link: mpsc::Receiver<LinkEvent>,
        mut changes: mpsc::Receiver<Change>,
    ) {
        let mut resync = tokio::time::interval(RESYNC_EVERY);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_retry = self
                .runs
                .values()
                .filter_map(|h| h.retry_at)
                .min()
                .unwrap_or_else(|| retry_at(Instant::now(), RESYNC_EVERY));
            tokio::select! {
                event = link.recv() => match event {
                    Some(e) => self.on_link(e).await,
                    None => return,
                },
                change = changes.recv() => match change {
                    Some(c) => {
                        if let Some(ns) = self.on_change(c) {
                            self.plan_namespace(&ns).await;
                        }
                        self.retire_due().await;
                        self.tell_namespaces_gone().await;
                    }
                    None => return,
                },
                () = tokio::time::sleep_until(next_retry) => {
                    let due: Vec<String> = self
                        .runs
                        .iter()
                        .filter(|(_, h)| h.retry_at.is_some_and(|t| t <= Instant::now()))
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in due {
                        self.plan_run(&id).await;
                    }
                }
                _ = resync.tick() => {
                    let all: Vec<String> = self.runs.keys().cloned().collect();
                    for id in all {
                        self.plan_run(&id).await;
                    }
                    self.retire_due().await;
                }
            }
        }
    }

    async fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected {
                outbox,
                active_runs,
            } => {
                self.outbox = Some(outbox);
                self.metrics.connected.set(1);
                // The scheduler resends every directive in flight, `active_runs` of them, right
                // after its welcome; report afresh for each. A run it does not resend ended
                // while the link was down (its Forget was lost): it is dropped, and no run is
                // acted on until the scheduler has confirmed it.
                for held in self.runs.values_mut() {
                    held.last_report = None;
                    held.reported_jobs.clear();
                    held.forget_lease_request();
                }
                // The scheduler resends the Retire of every source still awaiting one.
                self.retiring.clear();
                // A namespace still being deleted is said again on the new connection.
                for told in self.namespaces_gone.values_mut() {
                    *told = false;
                }
                self.tell_namespaces_gone().await;
                // None in flight: every run held is dropped at once.
                if let Some(done) = self.confirmation.welcome(active_runs) {
                    self.runs.retain(|id, _| done.keeps(id));
                }
            }
            LinkEvent::Directive(d) => {
                let id = d.run_id.clone();
                if let Some(done) = self.confirmation.resent(&id) {
                    let before = self.runs.len();
                    self.runs.retain(|id, _| done.keeps(id));
                    if self.runs.len() < before {
                        info!(
                            dropped = before - self.runs.len(),
                            "runs the scheduler no longer has"
                        );
                    }
                    // Runs held back while confirming are planned now.
                    let held: Vec<String> = self.runs.keys().cloned().collect();
                    for other in held.into_iter().filter(|o| *o != id) {
                        self.plan_run(&other).await;
                    }
                }
                let held = self
                    .runs
                    .entry(id.clone())
                    .or_insert_with(|| Held::new((*d).clone()));
                if held.directive.generation != d.generation || held.directive.phase != d.phase {
                    held.last_report = None;
                    // A lease is for one directive generation (and its COPY phase).
                    held.lease = LeaseState::None;
                }
                held.directive = *d;
                self.plan_run(&id).await;
            }
            LinkEvent::Forget(id) => {
                self.runs.remove(&id);
            }
            LinkEvent::Lease(grant) => {
                let id = grant.run_id.clone();
                let Some(held) = self.runs.get_mut(&id) else {
                    debug!(run = id, "a lease for a run not held: ignored");
                    return;
                };
                if !held.lease.grant(&grant) {
                    debug!(
                        run = id,
                        request = grant.request_id,
                        "a lease answer to no outstanding request: ignored"
                    );
                    return;
                }
                match &held.lease {
                    LeaseState::Refused { why, .. } => {
                        warn!(run = id, why = %why, "lease refused: the copy is not made or counted");
                    }
                    _ => info!(run = id, "lease held"),
                }
                self.plan_run(&id).await;
            }
            LinkEvent::Retire(r) => {
                // Only acted on in a namespace this agent watches (see retire_due).
                let source = r.source.unwrap_or_default();
                self.retiring
                    .insert((source.namespace, source.name), r.keep_cache);
                self.retire_due().await;
            }
            LinkEvent::Disconnected => {
                self.outbox = None;
                self.metrics.connected.set(0);
                for held in self.runs.values_mut() {
                    held.forget_lease_request();
                }
            }
        }
    }

    /// Puts a change into the caches; the namespace to plan again, unless nothing a plan
    /// reads changed (an Event the agent does not keep).
    fn on_change(&mut self, change: Change) -> Option<String> {
        Some(match change {
            Change::Pvc(ns, e) => {
                apply_event(&mut self.pvcs, &ns, e);
                ns
            }
            Change::Snapshot(ns, e) => {
                apply_event(&mut self.snapshots, &ns, e);
                ns
            }
            Change::Job(ns, e) => {
                apply_event(&mut self.jobs, &ns, e);
                ns
            }
            Change::Pod(ns, e) => {
                apply_event(&mut self.pods, &ns, e);
                ns
            }
            Change::Namespace(ns, e) => {
                let gone = match e {
                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                        o.metadata.deletion_timestamp.is_some()
                    }
                    watcher::Event::Delete(_) => true,
                    watcher::Event::Init | watcher::Event::InitDone => return None,
                };
                if !gone {
                    // Made again under the same name.
                    self.namespaces_gone.remove(&ns);
                } else if let std::collections::btree_map::Entry::Vacant(e) =
                    self.namespaces_gone.entry(ns)
                {
                    warn!(namespace = e.key(), "the namespace is being deleted");
                    e.insert(false);
                }
                return None;
            }
            Change::Event(ns, e) => {
                let e = match e {
                    watcher::Event::Apply(o) => watcher::Event::Apply(self.kept_event(&ns, o)?),
                    watcher::Event::InitApply(o) => {
                        watcher::Event::InitApply(self.kept_event(&ns, o)?)
                    }
                    other => other,
                };
                apply_event(&mut self.events, &ns, e);
                ns
            }
        })
    }

    /// What is kept of a watched Event (see `stuck::kept_event`): `None` when it is not one
    /// the agent reads, or when the namespace already holds [`MAX_EVENTS`] others.
    fn kept_event(&self, ns: &str, event: Event) -> Option<Event> {
        let event = stuck::kept_event(event)?;
        let name = event.metadata.name.as_deref().unwrap_or_default();
        if self.events.get(ns, name).is_none() && self.events.in_namespace(ns).count() >= MAX_EVENTS
        {
            warn!(
                namespace = ns,
                event = name,
                max = MAX_EVENTS,
                "too many Warning Events about pods and Jobs kept in the namespace: this one is \
                 not (a stuck mover pod it reports may go unseen)"
            );
            return None;
        }
        Some(event)
    }

    async fn plan_namespace(&mut self, ns: &str) {
        let ids: Vec<String> = self
            .runs
            .iter()
            .filter(|(_, h)| {
                h.directive
                    .source
                    .as_ref()
                    .is_some_and(|s| s.namespace == ns)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.plan_run(&id).await;
        }
    }

    /// Plans one run against the cache and applies the actions; repeats while actions changed
    /// the cache (bounded), so one event converges as far as the cluster allows.
    async fn plan_run(&mut self, id: &str) {
        if self.confirmation.holds_back(id) {
            debug!(run = id, "not acted on until the scheduler resends it");
            if let Some(held) = self.runs.get_mut(id) {
                held.retry_at = None;
            }
            return;
        }
        for _ in 0..8 {
            let Some(held) = self.runs.get_mut(id) else {
                return;
            };
            // A held lease wakes the run at its deadline: past it, the copy point is not counted.
            held.retry_at = held.lease.wake(Instant::now());
            let directive = held.directive.clone();
            let Some(source) = directive.source.clone() else {
                return;
            };
            let ns = source.namespace.clone();
            if !(self.pvcs.is_synced(&ns)
                && self.snapshots.is_synced(&ns)
                && self.jobs.is_synced(&ns))
            {
                // Until every watch has listed the namespace, a missing object may only be
                // unlisted: planning now could report a PVC missing or a cleanup done. The
                // end of the listing plans the namespace.
                debug!(run = id, namespace = ns, "watches not synced yet");
                return;
            }
            let names = plan::object_names(&directive);
            let job_name = names.job.as_deref().unwrap_or_default();
            // The namespace's privileged-movers annotation matters only when a Job is made: it
            // is read then, once per run, so an admin's change applies to the next run.
            let needs_privileged = directive.phase == v1::DirectivePhase::Transfer as i32
                && self.jobs.get(&ns, job_name).is_none()
                && held.privileged.is_none();
            if needs_privileged {
                match self.cluster.privileged_movers(&ns).await {
                    Ok(p) => {
                        if let Some(held) = self.runs.get_mut(id) {
                            held.privileged = Some(p);
                        }
                    }
                    Err(e) => {
                        self.failed(id, &ns, &ApiCall::new("get", "namespaces", &ns), &e)
                            .await;
                        return;
                    }
                }
            }
            let now = self.clock.now();
            // What keeps the mover Job from running, once the pods and Events are listed; and
            // when this process first saw it (kept while it lasts).
            let job = self.jobs.get(&ns, job_name);
            let trouble = match job {
                Some(job)
                    if directive.phase == v1::DirectivePhase::Transfer as i32
                        && self.pods.is_synced(&ns)
                        && self.events.is_synced(&ns) =>
                {
                    Some(stuck::trouble(
                        job,
                        self.pods.in_namespace(&ns),
                        self.events.in_namespace(&ns),
                    ))
                }
                _ => None,
            };
            let Some(held) = self.runs.get_mut(id) else {
                return;
            };
            let first_seen = match trouble.as_ref().and_then(Option::as_ref) {
                Some(t) => match &held.stuck_seen {
                    Some((key, at)) if *key == t.key => *at,
                    _ => {
                        held.stuck_seen = Some((t.key.clone(), now));
                        now
                    }
                },
                None => {
                    if trouble.is_some() {
                        held.stuck_seen = None;
                    }
                    now
                }
            };
            // When this process first saw the Job failed: its back-off counts from then at the
            // latest, whatever the API server's clock says.
            let failed_seen = match job {
                Some(job)
                    if matches!(classify::job_state(job), classify::JobState::Failed { .. }) =>
                {
                    let uid = job.metadata.uid.clone().unwrap_or_default();
                    match &held.failed_seen {
                        Some((seen, at)) if *seen == uid => Some(*at),
                        _ => {
                            held.failed_seen = Some((uid, now));
                            Some(now)
                        }
                    }
                }
                _ => {
                    held.failed_seen = None;
                    None
                }
            };
            let held = &*held;
            let temporaries: Vec<Temporary> =
                temporaries_of(&self.pvcs, &self.snapshots, &self.jobs, &ns, &source.name);
            let mover_volume_pvcs: Vec<PersistentVolumeClaim> = directive
                .spec
                .as_ref()
                .and_then(|spec| snapgate_agent_core::MoverSpec::of(spec).ok())
                .map(|m| {
                    snapgate_agent_core::pinning::mover_volume_claims(
                        m.volume_options().mover_volumes,
                    )
                })
                .unwrap_or_default()
                .iter()
                .filter_map(|c| self.pvcs.get(&ns, c).cloned())
                .collect();
            let observed = Observed {
                pvc: self.pvcs.get(&ns, &names.source_pvc),
                snapshot: self.snapshots.get(&ns, &names.copy),
                copy_pvc: self.pvcs.get(&ns, &names.copy),
                cache_pvc: self.pvcs.get(&ns, &names.cache_pvc),
                job,
                secrets: held.secrets.as_ref(),
                privileged: held.privileged.unwrap_or(false),
                failed_attempts: held.failed_attempts.max(directive.mover_failures),
                job_reported: job
                    .and_then(|j| j.metadata.uid.as_ref())
                    .is_some_and(|uid| held.reported_jobs.contains(uid)),
                temporaries: &temporaries,
                // At the plan's time, after the cache received what the plan sees: a lease held
                // now was held when it was observed.
                lease: held.lease.at(&directive, Instant::now()),
                review: match &held.review {
                    None => Review::Pending,
                    Some(Ok(())) => Review::Allowed,
                    Some(Err(why)) => Review::Denied(why),
                },
                pods: held.pods.as_deref(),
                mover_account: held.mover_account,
                volsync: held.volsync.as_deref(),
                mover_volume_pvcs: &mover_volume_pvcs,
                mover_pods: match &trouble {
                    None => MoverPods::Unknown,
                    Some(t) => MoverPods::Known(t.as_ref().map(|trouble| Stuck {
                        trouble,
                        first_seen,
                    })),
                },
                next_attempt_at: held.next_attempt_at,
                job_failed_seen: failed_seen,
                now,
            };
            let actions = match plan::plan(&directive, &observed, &self.config) {
                Ok(a) => a,
                Err(e) => {
                    self.report(
                        id,
                        Observation::Error(v1::AgentError {
                            reason: "InvalidSpec".into(),
                            message: e.to_string(),
                            retryable: false,
                        }),
                    )
                    .await;
                    return;
                }
            };
            let mut wrote = false;
            for action in actions {
                let call = ApiCall::of(&action);
                match self.apply(id, &ns, action).await {
                    Ok(w) => wrote |= w,
                    Err(e) => {
                        self.failed(id, &ns, &call, &e).await;
                        return;
                    }
                }
            }
            if !wrote {
                return;
            }
        }
    }

    /// A Kubernetes API call failed: counted, logged and tried again after `retry_after`. One
    /// that fails the same way until someone acts (forbidden: the agent's RBAC; invalid: the
    /// request) is also reported on the run, so that the source says why it does not go on.
    async fn failed(&mut self, id: &str, ns: &str, call: &ApiCall, e: &ClusterError) {
        warn!(
            run = id,
            verb = call.verb,
            resource = call.resource,
            name = call.name,
            class = e.class(),
            error = %e,
            "API call failed; retrying"
        );
        self.metrics.api_error(call.verb, call.resource, e.class());
        let reason = match e {
            ClusterError::Forbidden(_) => Some("ApiForbidden"),
            ClusterError::Refused(_) => Some("ApiInvalid"),
            _ => None,
        };
        if let Some(reason) = reason {
            let hint = match e {
                ClusterError::Forbidden(_) => format!(
                    "; grant the agent's Role {} on {} (as deploy/agent's does)",
                    call.verb, call.resource
                ),
                _ => String::new(),
            };
            let message = format!(
                "{} {} {:?} in namespace {ns} failed: {e}{hint}; tried again every {}s",
                call.verb,
                call.resource,
                call.name,
                self.retry_after.as_secs().max(1)
            );
            self.report(
                id,
                Observation::Error(bounds::agent_error(reason, &message, true)),
            )
            .await;
        }
        if let Some(h) = self.runs.get_mut(id) {
            h.wake(retry_at(Instant::now(), self.retry_after));
        }
    }

    /// Tells the scheduler, once per connection, of each namespace being deleted: it deletes
    /// the sources there (as Kubernetes deletes the namespace's ReplicationSources).
    async fn tell_namespaces_gone(&mut self) {
        let Some(outbox) = &self.outbox else { return };
        for (ns, told) in self.namespaces_gone.iter_mut().filter(|(_, t)| !**t) {
            let message = agent_message::Message::NamespaceGone(v1::NamespaceGone {
                namespace: ns.clone(),
            });
            if outbox.send(message).await.is_ok() {
                info!(
                    namespace = ns,
                    "told the scheduler the namespace is being deleted"
                );
                *told = true;
            }
        }
    }

    /// Removes what the agent made for each deleted source awaiting it, and says so to the
    /// scheduler. A source whose namespace's PVCs are not listed yet (or never: a namespace
    /// this agent does not watch), or whose removal failed, is tried again on the next change
    /// or resync.
    async fn retire_due(&mut self) {
        if self.outbox.is_none() || self.retiring.is_empty() {
            return;
        }
        let pending: Vec<((String, String), bool)> =
            self.retiring.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for ((ns, source), keep_cache) in pending {
            if !self.pvcs.is_synced(&ns) {
                continue;
            }
            match self.retire(&ns, &source, keep_cache).await {
                Ok(()) => {
                    let Some(outbox) = &self.outbox else { return };
                    let retired = agent_message::Message::Retired(v1::Retired {
                        source: Some(v1::SourceRef {
                            namespace: ns.clone(),
                            name: source.clone(),
                        }),
                    });
                    if outbox.send(retired).await.is_ok() {
                        info!(namespace = ns, source, keep_cache, "deleted source retired");
                        self.retiring.remove(&(ns, source));
                    }
                }
                Err((call, e)) => {
                    warn!(namespace = ns, source, verb = call.verb, resource = call.resource, name = call.name, error = %e, "removing a deleted source's objects failed; retrying");
                    self.metrics.api_error(call.verb, call.resource, e.class());
                }
            }
        }
    }

    /// Deletes the restic cache PVC (unless kept), the mover ServiceAccount and its SCC Role
    /// and RoleBinding of `source`: each only when it carries the labels of an object snapgate
    /// made for this source (a same-named object someone else made is left alone).
    async fn retire(
        &mut self,
        ns: &str,
        source: &str,
        keep_cache: bool,
    ) -> Result<(), (ApiCall, ClusterError)> {
        use k8s_openapi::api::{
            core::v1::ServiceAccount,
            rbac::v1::{Role, RoleBinding},
        };
        let cache = names::cache_name(source);
        if !keep_cache
            && self
                .pvcs
                .get(ns, &cache)
                .is_some_and(|p| names::made_for_source(p.metadata.labels.as_ref(), source))
        {
            let left = self
                .cluster
                .delete::<PersistentVolumeClaim>(ns, &cache)
                .await
                .map_err(|e| (ApiCall::new("delete", "persistentvolumeclaims", &cache), e))?;
            self.pvcs.deleted(ns, &cache, left);
        }
        let account = names::mover_account_name(source);
        self.delete_made::<ServiceAccount>(ns, source, &account, "serviceaccounts")
            .await?;
        if self.config.mover_scc.is_some() {
            self.delete_made::<RoleBinding>(ns, source, &account, "rolebindings")
                .await?;
            self.delete_made::<Role>(ns, source, &account, "roles")
                .await?;
        }
        Ok(())
    }

    /// Makes `desired` exist as snapgate's for `source`: created when missing, replaced
    /// (deleted, then created) when it is snapgate's but differs from `desired` by `same` (a
    /// RoleBinding's roleRef cannot change in place; the agent needs no `patch`). `Some(what)`
    /// when an object of that name exists that snapgate did not make for this source: it is
    /// left alone.
    async fn ensure_made<K: Namespaced>(
        &self,
        ns: &str,
        source: &str,
        desired: &K,
        same: impl Fn(&K, &K) -> bool,
    ) -> Result<Option<String>, ClusterError> {
        let name = desired.meta().name.clone().unwrap_or_default();
        match self.cluster.get_opt::<K>(ns, &name).await? {
            Some(found) if !names::made_for_source(found.meta().labels.as_ref(), source) => {
                Ok(Some(format!("{} {ns}/{name}", K::kind(&()))))
            }
            Some(found) if same(&found, desired) => Ok(None),
            found => {
                if found.is_some() {
                    info!(namespace = ns, name, kind = %K::kind(&()), "replacing an outdated mover account object");
                    self.cluster.delete::<K>(ns, &name).await?;
                }
                self.cluster.create(ns, desired).await?;
                Ok(None)
            }
        }
    }

    /// Deletes `name` when it exists and was made by snapgate for `source`.
    async fn delete_made<K: Namespaced>(
        &self,
        ns: &str,
        source: &str,
        name: &str,
        resource: &'static str,
    ) -> Result<(), (ApiCall, ClusterError)> {
        let found = self
            .cluster
            .get_opt::<K>(ns, name)
            .await
            .map_err(|e| (ApiCall::new("get", resource, name), e))?;
        if found.is_some_and(|o| names::made_for_source(o.meta().labels.as_ref(), source)) {
            self.cluster
                .delete::<K>(ns, name)
                .await
                .map_err(|e| (ApiCall::new("delete", resource, name), e))?;
        }
        Ok(())
    }

    /// Applies one action; `Ok(true)` when it changed what the next plan sees.
    async fn apply(&mut self, id: &str, ns: &str, action: Action) -> Result<bool, ClusterError> {
        debug!(run = id, ?action, "applying");
        self.metrics.action(&action);
        match action {
            Action::PatchPvc { name, patch } => {
                let pvc = self
                    .cluster
                    .merge_patch::<PersistentVolumeClaim>(ns, &name, &patch)
                    .await?;
                self.pvcs.apply(pvc);
                Ok(true)
            }
            Action::PatchJob { name, patch } => {
                let job = self.cluster.merge_patch::<Job>(ns, &name, &patch).await?;
                self.jobs.apply(job);
                Ok(true)
            }
            Action::CreateSnapshot(s) => {
                let made = self.create(id, ns, s.as_ref()).await?;
                self.snapshots.apply(made);
                Ok(true)
            }
            Action::CreatePvc(p) => {
                let made = self.create(id, ns, p.as_ref()).await?;
                self.pvcs.apply(made);
                Ok(true)
            }
            Action::CreateJob(j) => {
                let made = self.create(id, ns, j.as_ref()).await?;
                self.jobs.apply(made);
                if let Some(held) = self.runs.get_mut(id) {
                    // The next Job of the run follows the application's pod where it is then.
                    held.pods = None;
                    held.next_attempt_at = None;
                }
                Ok(true)
            }
            Action::ApplyMoverAccount(account) => {
                let source = held_source(self.runs.get(id));
                let sa = &account.service_account;
                let mut taken = self
                    .ensure_made(ns, &source, sa, |a, b| {
                        a.image_pull_secrets == b.image_pull_secrets
                            && a.automount_service_account_token
                                == b.automount_service_account_token
                    })
                    .await?;
                if let (None, Some((role, binding))) = (&taken, &account.scc) {
                    taken = self
                        .ensure_made(ns, &source, role, |a, b| a.rules == b.rules)
                        .await?;
                    if taken.is_none() {
                        taken = self
                            .ensure_made(ns, &source, binding, |a, b| {
                                // The API server may spell a ServiceAccount subject's empty
                                // apiGroup out.
                                let subjects = |r: &k8s_openapi::api::rbac::v1::RoleBinding| {
                                    r.subjects
                                        .iter()
                                        .flatten()
                                        .map(|s| {
                                            let mut s = s.clone();
                                            s.api_group = s.api_group.filter(|g| !g.is_empty());
                                            s
                                        })
                                        .collect::<Vec<_>>()
                                };
                                a.role_ref == b.role_ref && subjects(a) == subjects(b)
                            })
                            .await?;
                    }
                }
                if let Some(what) = taken {
                    // VolSync's (during a migration) or someone else's: never taken over. The
                    // run waits, and says why.
                    let message = format!(
                        "{what} exists and was not made by snapgate for source {source} \
                         (VolSync's, or someone else's): the mover runs as its own account \
                         once that is removed, or name a moverServiceAccount"
                    );
                    self.report(
                        id,
                        Observation::Error(bounds::agent_error(
                            "MoverAccountTaken",
                            &message,
                            true,
                        )),
                    )
                    .await;
                    if let Some(held) = self.runs.get_mut(id) {
                        held.wake(retry_at(Instant::now(), self.retry_after));
                    }
                    return Ok(false);
                }
                if let Some(held) = self.runs.get_mut(id) {
                    held.mover_account = true;
                }
                Ok(true)
            }
            Action::ListVolSync => {
                let found = self.cluster.volsync_sources(ns).await?;
                if let Some(held) = self.runs.get_mut(id) {
                    held.volsync = Some(found);
                }
                Ok(true)
            }
            Action::ListPods => {
                let pods = self.cluster.pods(ns).await?;
                if let Some(held) = self.runs.get_mut(id) {
                    held.pods = Some(pods);
                }
                Ok(true)
            }
            Action::DeleteSnapshot(name) => {
                // An object still terminating (finalizers, PVC protection) stays in view until
                // its watch says it is gone: cleanup is not done before that.
                let left = self.cluster.delete::<VolumeSnapshot>(ns, &name).await?;
                self.snapshots.deleted(ns, &name, left);
                Ok(true)
            }
            Action::DeletePvc(name) => {
                let left = self
                    .cluster
                    .delete::<PersistentVolumeClaim>(ns, &name)
                    .await?;
                self.pvcs.deleted(ns, &name, left);
                Ok(true)
            }
            Action::DeleteJob(name) => {
                let left = self.cluster.delete::<Job>(ns, &name).await?;
                self.jobs.deleted(ns, &name, left);
                Ok(true)
            }
            Action::FailStuckJob { job, retry_at } => {
                let left = self.cluster.delete::<Job>(ns, &job).await?;
                self.jobs.deleted(ns, &job, left);
                info!(run = id, job, %retry_at, "stuck mover Job deleted; the next attempt follows the back-off");
                if let Some(held) = self.runs.get_mut(id) {
                    held.next_attempt_at = Some(retry_at);
                    held.stuck_seen = None;
                }
                Ok(true)
            }
            Action::ReadSecrets(names) => {
                let wanted = names.len();
                let mut found = BTreeMap::new();
                for name in names {
                    if let Some(keys) = self.cluster.secret_keys(ns, &name).await? {
                        found.insert(name, keys);
                    }
                }
                if let Some(held) = self.runs.get_mut(id) {
                    if found.len() < wanted {
                        // Secrets cannot be watched with the agent's RBAC: read them again later.
                        held.wake(retry_at(Instant::now(), self.retry_after));
                    }
                    held.secrets = Some(found);
                }
                Ok(true)
            }
            Action::Event(event) => {
                let name = event.metadata.name.clone().unwrap_or_default();
                if self.runs.get(id).is_some_and(|h| !h.events.contains(&name)) {
                    // Events are best effort: a failure to record one never holds up a run.
                    match self.cluster.record_event(ns, event.as_ref()).await {
                        Ok(()) => {
                            if let Some(held) = self.runs.get_mut(id) {
                                held.events.insert(name);
                            }
                        }
                        Err(e) => {
                            warn!(run = id, event = name, error = %e, "cannot record an Event");
                            self.metrics.api_error("create", "events", e.class());
                        }
                    }
                }
                Ok(false)
            }
            Action::ReportMover {
                job,
                uid,
                outcome,
                mover,
                stuck,
            } => {
                let Some(held) = self.runs.get(id) else {
                    return Ok(false);
                };
                if held.reported_jobs.contains(&uid) {
                    return Ok(false);
                }
                let failed = matches!(outcome, MoverOutcome::Failed { .. });
                // A log read error never fails the run: the report says why there is no log.
                let logs = match self.cluster.job_pods(ns, &job).await {
                    Ok(pods) => match classify::log_pod(&pods, failed) {
                        Some(pod) => {
                            let pod = pod.metadata.name.clone().unwrap_or_default();
                            match self
                                .cluster
                                .pod_log_into(ns, &pod, plan::log_tail(mover, outcome))
                                .await
                            {
                                Ok(text) => text,
                                Err(e) => format!("(log unavailable: {e})"),
                            }
                        }
                        None => String::new(),
                    },
                    Err(e) => format!("(log unavailable: {e})"),
                };
                let logs = match &stuck {
                    Some(why) => plan::stuck_logs(why, &logs),
                    None => logs,
                };
                let sent = self.report(id, plan::mover_report(outcome, logs)).await;
                if let Some(held) = self.runs.get_mut(id) {
                    if sent {
                        held.reported_jobs.insert(uid);
                    }
                    if let MoverOutcome::Failed { attempt } = outcome {
                        held.failed_attempts = held.failed_attempts.max(attempt);
                    }
                }
                Ok(false)
            }
            Action::Report(o) => {
                let retry = matches!(&o, Observation::Error(e) if e.retryable);
                self.report(id, o).await;
                if retry && let Some(held) = self.runs.get_mut(id) {
                    // Missing Secrets (and a conflicting VolSync source) are read again on the
                    // next try.
                    held.secrets = None;
                    held.volsync = None;
                    held.wake(retry_at(Instant::now(), self.retry_after));
                }
                Ok(false)
            }
            Action::RequestLease => {
                let Some(outbox) = &self.outbox else {
                    debug!(
                        run = id,
                        "not connected; the lease is asked for after reconnecting"
                    );
                    return Ok(false);
                };
                let Some(held) = self.runs.get_mut(id) else {
                    return Ok(false);
                };
                if matches!(held.lease, LeaseState::Requested { .. }) {
                    return Ok(false);
                }
                let request_id = self.next_request_id;
                self.next_request_id = request_id.wrapping_add(1);
                let generation = held.directive.generation;
                if let Some(requested) =
                    send_lease_request(outbox, id, generation, request_id).await
                {
                    info!(
                        run = id,
                        generation,
                        request = request_id,
                        "lease requested"
                    );
                    held.lease = requested;
                }
                Ok(false)
            }
            Action::ReviewAuthor(r) => {
                let answer = match self.cluster.review_author(ns, &r).await? {
                    None => {
                        info!(run = id, author = r.user, "author allowed");
                        Ok(())
                    }
                    Some(why) => {
                        warn!(run = id, author = r.user, why = %why, "author refused");
                        Err(why)
                    }
                };
                if let Some(held) = self.runs.get_mut(id) {
                    held.review = Some(answer);
                }
                Ok(true)
            }
            Action::WakeAt(at) => {
                if let Some(held) = self.runs.get_mut(id) {
                    held.wake(wake_at(Instant::now(), at, self.clock.now()));
                }
                Ok(false)
            }
        }
    }

    /// Creates an object. One of that name may already exist that the watch has not shown:
    /// a create whose answer was lost (the watch delivers it shortly), or an object snapgate
    /// did not make (its watches only see its own label). The agent never reads or takes over
    /// the latter; the run waits, and the source says why.
    async fn create<K: Namespaced>(
        &mut self,
        id: &str,
        ns: &str,
        obj: &K,
    ) -> Result<K, ClusterError> {
        match self.cluster.create(ns, obj).await {
            Err(ClusterError::AlreadyExists(msg)) => {
                let name = obj.meta().name.clone().unwrap_or_default();
                self.report(
                    id,
                    Observation::Error(v1::AgentError {
                        reason: "AlreadyExists".into(),
                        message: format!(
                            "{} {ns}/{name} exists but snapgate's watch does not show it (it \
                             lacks the label {}?); snapgate will not use or delete it: {msg}",
                            K::kind(&()),
                            names::CREATED_BY_SELECTOR,
                        ),
                        retryable: true,
                    }),
                )
                .await;
                Err(ClusterError::AlreadyExists(msg))
            }
            other => other,
        }
    }

    /// Sends a report unless the same one was already sent for this run; whether it was sent
    /// (or had been). Every report is first put within the agent's bounds (sizes, times).
    async fn report(&mut self, id: &str, observation: Observation) -> bool {
        let observation = bounds::bound(observation, self.clock.now());
        let Some(held) = self.runs.get_mut(id) else {
            return false;
        };
        if held.last_report.as_ref() == Some(&observation) {
            return true;
        }
        let Some(tx) = &self.outbox else {
            debug!(
                run = id,
                "not connected; the report is resent after reconnecting"
            );
            return false;
        };
        let report = v1::Report {
            run_id: id.to_owned(),
            generation: held.directive.generation,
            observation: Some(observation.clone()),
        };
        if tx
            .send(agent_message::Message::Report(report))
            .await
            .is_ok()
        {
            info!(
                run = id,
                report = plan::observation_name(&observation),
                "reported"
            );
            self.metrics.report(&observation);
            held.last_report = Some(observation);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leased(generation: u64) -> v1::Directive {
        v1::Directive {
            run_id: "run-7".into(),
            phase: v1::DirectivePhase::Copy as i32,
            generation,
            lease: true,
            ..Default::default()
        }
    }

    fn grant(request_id: u64, remaining: Option<Duration>, refused: &str) -> v1::LeaseGrant {
        v1::LeaseGrant {
            run_id: "run-7".into(),
            request_id,
            remaining: remaining.map(|d| prost_types::Duration::try_from(d).unwrap()),
            refused: refused.into(),
        }
    }

    /// The request is anchored when it is put on the link, before it waits there; the answer
    /// arrives late; the deadline is still the anchor plus the remaining time, and an answer
    /// to another request changes nothing.
    #[tokio::test(start_paused = true)]
    async fn a_lease_deadline_is_the_request_time_plus_remaining_however_late_the_answer() {
        let (tx, mut rx) = mpsc::channel(1);
        // The link is busy: the request waits 2 s to be taken.
        tx.send(agent_message::Message::Report(v1::Report::default()))
            .await
            .unwrap();
        let anchor = Instant::now();
        let request = tokio::spawn(async move { send_lease_request(&tx, "run-7", 3, 11).await });
        // The request task runs until the full link holds it up.
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(
            rx.recv().await,
            Some(agent_message::Message::Report(_))
        ));
        let Some(agent_message::Message::LeaseRequest(sent)) = rx.recv().await else {
            panic!("no lease request")
        };
        assert_eq!(
            (sent.run_id.as_str(), sent.generation, sent.request_id),
            ("run-7", 3, 11)
        );
        let mut lease = request.await.unwrap().unwrap();
        assert_eq!(
            lease,
            LeaseState::Requested {
                request_id: 11,
                generation: 3,
                sent_at: anchor,
            },
            "noted before the request waited on the link"
        );
        let d = leased(3);
        assert_eq!(lease.at(&d, Instant::now()), plan::Lease::Requested);
        // The answer comes 5 s later.
        tokio::time::advance(Duration::from_secs(5)).await;
        let remaining = Duration::from_secs(30);
        assert!(
            !lease.grant(&grant(12, Some(remaining), "")),
            "another request's answer"
        );
        assert_eq!(lease.at(&d, Instant::now()), plan::Lease::Requested);
        assert!(lease.grant(&grant(11, Some(remaining), "")));
        let deadline = anchor + remaining;
        assert_eq!(
            lease,
            LeaseState::Held {
                generation: 3,
                deadline,
            }
        );
        assert!(
            !lease.grant(&grant(11, Some(Duration::from_secs(3600)), "")),
            "a second answer to the same request"
        );
        let nano = Duration::from_nanos(1);
        assert_eq!(lease.at(&d, deadline - nano), plan::Lease::Held);
        assert_eq!(lease.at(&d, deadline), plan::Lease::Expired);
        assert_eq!(
            lease.at(&leased(4), deadline - nano),
            plan::Lease::None,
            "another generation"
        );
        let mut unleased = leased(3);
        unleased.lease = false;
        assert_eq!(lease.at(&unleased, deadline), plan::Lease::NotNeeded);
        // The run is planned again at the deadline, and no more for the lease after it.
        let now = Instant::now();
        assert_eq!(lease.wake(now), Some(deadline));
        assert_eq!(lease.wake(deadline), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_absent_negative_or_endless_lease_is_never_held_past_what_is_safe() {
        let anchor = Instant::now();
        let requested = LeaseState::Requested {
            request_id: 1,
            generation: 3,
            sent_at: anchor,
        };
        let d = leased(3);
        let cases = [
            (grant(1, None, "the lease ran out"), plan::Lease::Expired),
            (grant(1, None, ""), plan::Lease::Expired),
            (
                v1::LeaseGrant {
                    remaining: Some(prost_types::Duration {
                        seconds: -5,
                        nanos: 0,
                    }),
                    ..grant(1, None, "")
                },
                plan::Lease::Expired,
            ),
            (
                v1::LeaseGrant {
                    remaining: Some(prost_types::Duration {
                        seconds: i64::MAX,
                        nanos: 999_999_999,
                    }),
                    ..grant(1, None, "")
                },
                plan::Lease::Held,
            ),
        ];
        for (g, want) in cases {
            let mut lease = requested.clone();
            assert!(lease.grant(&g), "{g:?}");
            assert_eq!(lease.at(&d, anchor), want, "{g:?}");
        }
    }

    #[test]
    fn a_lease_request_outlives_no_link_and_a_held_lease_outlives_a_lost_one() {
        let anchor = Instant::now();
        let mut held = Held::new(leased(3));
        held.lease = LeaseState::Requested {
            request_id: 1,
            generation: 3,
            sent_at: anchor,
        };
        held.forget_lease_request();
        assert_eq!(held.lease, LeaseState::None);
        let kept = LeaseState::Held {
            generation: 3,
            deadline: anchor + Duration::from_secs(9),
        };
        held.lease = kept.clone();
        held.forget_lease_request();
        assert_eq!(held.lease, kept);
    }

    #[test]
    fn a_retry_waits_its_delay_but_no_longer_than_a_resync() {
        let now = Instant::now();
        assert_eq!(
            retry_at(now, Duration::from_secs(5)) - now,
            Duration::from_secs(5)
        );
        assert_eq!(retry_at(now, Duration::MAX) - now, RESYNC_EVERY);
    }

    #[test]
    fn a_wake_time_at_the_end_of_time_waits_no_longer_than_a_resync() {
        let now = Instant::now();
        let wall = Utc::now();
        let cases = [
            (chrono::DateTime::<Utc>::MAX_UTC, RESYNC_EVERY),
            (chrono::DateTime::<Utc>::MIN_UTC, PAST_WAKE),
            (wall, PAST_WAKE),
            (wall + chrono::Duration::seconds(5), Duration::from_secs(5)),
        ];
        for (at, want) in cases {
            assert_eq!(wake_at(now, at, wall) - now, want, "{at}");
        }
    }
}
