//! The executor: holds the directives of the runs in flight, keeps the cache of what it sees,
//! and after every change plans (pure, in `snapgate-agent-core`) and applies the actions.
//!
//! ```text
//!   link events ──┐                       ┌──► Cluster writes (results back into the cache)
//!   watch events ─┼──► cache ──► plan() ──┼──► Events
//!   retry timer ──┘    (per run)          └──► reports to the scheduler (deduplicated)
//! ```
//!
//! One task, one run at a time: plans see a consistent cache, and an action's result is in
//! the cache before the next plan, so nothing is written twice.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    time::Duration,
};

use chrono::Utc;
use k8s_openapi::api::{batch::v1::Job, core::v1::PersistentVolumeClaim};
use kube::runtime::watcher;
use snapgate_agent_core::{
    bounds, classify, names,
    plan::{self, Action, MoverOutcome, Observed, PlanConfig, Temporary, TemporaryKind},
    resources::VolumeSnapshot,
};
use snapgate_proto::v1::{self, report::Observation};
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

/// When a run that asked to wake at `at` (a plan's time, from cluster data and settings) is
/// planned again, on the monotonic clock: at most [`RESYNC_EVERY`] from `now`, since every
/// run is planned again that often anyway and a far time must not overflow an `Instant`.
fn wake_at(now: Instant, at: chrono::DateTime<Utc>, wall: chrono::DateTime<Utc>) -> Instant {
    let wait = at
        .signed_duration_since(wall)
        .to_std()
        .unwrap_or_default()
        .min(RESYNC_EVERY);
    now.checked_add(wait).unwrap_or(now)
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

/// The executor's state.
pub struct Executor {
    cluster: Cluster,
    config: PlanConfig,
    pvcs: Cache<PersistentVolumeClaim>,
    snapshots: Cache<VolumeSnapshot>,
    jobs: Cache<Job>,
    runs: BTreeMap<String, Held>,
    reports: Option<mpsc::Sender<v1::Report>>,
    /// After a (re)connect: how many resent directives are still to come, and the runs resent
    /// so far. Only those are acted on meanwhile.
    confirming: Option<(u32, HashSet<String>)>,
    metrics: Metrics,
    retry_after: Duration,
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
    /// An executor acting through `cluster`; a failed action is retried after `retry_after`.
    pub fn new(
        cluster: Cluster,
        config: PlanConfig,
        metrics: Metrics,
        retry_after: Duration,
    ) -> Self {
        Self {
            cluster,
            config,
            pvcs: Cache::default(),
            snapshots: Cache::default(),
            jobs: Cache::default(),
            runs: BTreeMap::new(),
            reports: None,
            confirming: None,
            metrics,
            retry_after,
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
                .unwrap_or_else(|| Instant::now() + RESYNC_EVERY);
            tokio::select! {
                event = link.recv() => match event {
                    Some(e) => self.on_link(e).await,
                    None => return,
                },
                change = changes.recv() => match change {
                    Some(c) => {
                        let ns = self.on_change(c);
                        self.plan_namespace(&ns).await;
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
                }
            }
        }
    }

    async fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected {
                reports,
                active_runs,
            } => {
                self.reports = Some(reports);
                self.metrics.connected.set(1);
                // The scheduler resends every directive in flight, `active_runs` of them, right
                // after its welcome; report afresh for each. A run it does not resend ended
                // while the link was down (its Forget was lost): it is dropped, and no run is
                // acted on until the scheduler has confirmed it.
                for held in self.runs.values_mut() {
                    held.last_report = None;
                    held.reported_jobs.clear();
                }
                self.confirming = None;
                if active_runs == 0 {
                    self.runs.clear();
                } else {
                    self.confirming = Some((active_runs, HashSet::new()));
                }
            }
            LinkEvent::Directive(d) => {
                let id = d.run_id.clone();
                if let Some((remaining, resent)) = &mut self.confirming {
                    resent.insert(id.clone());
                    *remaining -= 1;
                    if *remaining == 0 {
                        let resent = std::mem::take(resent);
                        self.confirming = None;
                        let before = self.runs.len();
                        self.runs.retain(|id, _| resent.contains(id));
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
                }
                let held = self
                    .runs
                    .entry(id.clone())
                    .or_insert_with(|| Held::new((*d).clone()));
                if held.directive.generation != d.generation || held.directive.phase != d.phase {
                    held.last_report = None;
                }
                held.directive = *d;
                self.plan_run(&id).await;
            }
            LinkEvent::Forget(id) => {
                self.runs.remove(&id);
            }
            LinkEvent::Disconnected => {
                self.reports = None;
                self.metrics.connected.set(0);
            }
        }
    }

    fn on_change(&mut self, change: Change) -> String {
        match change {
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
        }
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
        if self
            .confirming
            .as_ref()
            .is_some_and(|(_, resent)| !resent.contains(id))
        {
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
            held.retry_at = None;
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
                        self.retry(id, &e);
                        return;
                    }
                }
            }
            let Some(held) = self.runs.get(id) else {
                return;
            };
            let temporaries: Vec<Temporary> =
                temporaries_of(&self.pvcs, &self.snapshots, &self.jobs, &ns, &source.name);
            let job = self.jobs.get(&ns, job_name);
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
                lease: plan::Lease::NotNeeded,
                now: Utc::now(),
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
                match self.apply(id, &ns, action).await {
                    Ok(w) => wrote |= w,
                    Err(e) => {
                        self.retry(id, &e);
                        return;
                    }
                }
            }
            if !wrote {
                return;
            }
        }
    }

    fn retry(&mut self, id: &str, e: &ClusterError) {
        warn!(run = id, error = %e, "action failed; retrying");
        self.metrics.api_errors.inc();
        if let Some(h) = self.runs.get_mut(id) {
            h.retry_at = Some(Instant::now() + self.retry_after);
        }
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
                        held.retry_at = Some(Instant::now() + self.retry_after);
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
                            self.metrics.api_errors.inc();
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
                            match self.cluster.pod_log_tail(ns, &pod).await {
                                Ok(text) => plan::log_tail(mover, outcome, &text),
                                Err(e) => format!("(log unavailable: {e})"),
                            }
                        }
                        None => String::new(),
                    },
                    Err(e) => format!("(log unavailable: {e})"),
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
                    // Missing Secrets are read again on the next try.
                    held.secrets = None;
                    held.retry_at = Some(Instant::now() + self.retry_after);
                }
                Ok(false)
            }
            // Not yet: this agent's hello says it honours no leases, so no directive needs one
            // (a plan for a leased directive asks for it and waits).
            Action::RequestLease => Ok(false),
            Action::WakeAt(at) => {
                if let Some(held) = self.runs.get_mut(id) {
                    held.retry_at = Some(wake_at(Instant::now(), at, Utc::now()));
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
        let observation = bounds::bound(observation, Utc::now());
        let Some(held) = self.runs.get_mut(id) else {
            return false;
        };
        if held.last_report.as_ref() == Some(&observation) {
            return true;
        }
        let Some(tx) = &self.reports else {
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
        if tx.send(report).await.is_ok() {
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

    #[test]
    fn a_wake_time_at_the_end_of_time_waits_no_longer_than_a_resync() {
        let now = Instant::now();
        let wall = Utc::now();
        let cases = [
            (chrono::DateTime::<Utc>::MAX_UTC, RESYNC_EVERY),
            (chrono::DateTime::<Utc>::MIN_UTC, Duration::ZERO),
            (wall, Duration::ZERO),
            (wall + chrono::Duration::seconds(5), Duration::from_secs(5)),
        ];
        for (at, want) in cases {
            assert_eq!(wake_at(now, at, wall) - now, want, "{at}");
        }
    }
}
