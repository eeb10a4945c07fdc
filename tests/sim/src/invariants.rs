//! The invariants every seed is held to, each with a name that a violation reports.
//!
//! | name | what must hold |
//! |---|---|
//! | `one_copy_per_release` | a run cuts at most one copy (VolumeSnapshot or clone) per release value |
//! | `trigger_releases_one_run` | a trigger value is bound to (or spent by) at most one run, and copies made for it belong to one run |
//! | `copy_inside_hold` | every copy point the scheduler counted for a run released by an application lies inside that application's hold: the cluster's cut and the scheduler's copy time, on the one virtual clock |
//! | `guard_unquiesced` | every hold ends (the SDK guard runs the unquiesce), and within the guard's hold limit plus its disconnect grace |
//! | `acknowledged_kept` | every source the scheduler acknowledged is still there (at least that version) after crashes, unless its deletion was acknowledged; a deleted one stays deleted; an acknowledged SyncNow's run exists |
//! | `runs_settle` | after the faults stop, every run ends or is legitimately waiting for a trigger (an application answers; a `Skip` source's wait ends by its timeout) |
//! | `annotations_agree` | at the end, a PVC whose latest run is over shows no waiting or in-progress copy, and a gated copy that completed shows `Completed` with its value as `latest-copy-trigger` |

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use snapgate_contract::{
    LATEST_COPY_STATUS, LATEST_COPY_TRIGGER, LATEST_COPY_TRIGGER_WAITING_SINCE,
};
use snapgate_proto::v1;

use crate::world::{PvcPlan, World};

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name (see the module's table).
    pub invariant: &'static str,
    /// What was seen.
    pub details: String,
    /// When it was found, virtual time since the seed began.
    pub at: Duration,
}

fn violation(world: &World, invariant: &'static str, details: String) -> Violation {
    world
        .record
        .event(format!("VIOLATION {invariant}: {details}"));
    Violation {
        invariant,
        details,
        at: world.record.now(),
    }
}

/// The virtual time of a scheduler timestamp (the scheduler's clock starts at the seed's epoch
/// when the seed begins).
fn virtual_time(ts: &prost_types::Timestamp) -> Option<Duration> {
    let secs = u64::try_from(ts.seconds.checked_sub(crate::world::EPOCH_SECS)?).ok()?;
    Some(Duration::from_secs(secs) + Duration::from_nanos(u64::try_from(ts.nanos).unwrap_or(0)))
}

/// Checks made every virtual minute (and after every restart).
pub(crate) async fn during(world: &World) -> Vec<Violation> {
    let mut out = Vec::new();
    out.extend(copies(world));
    out.extend(holds_bounded(world));
    out.extend(acknowledged(world).await);
    dedupe(out)
}

/// The checks at the end of a seed.
pub(crate) async fn at_end(world: &World, pvcs: &BTreeMap<String, PvcPlan>) -> Vec<Violation> {
    let mut out = during(world).await;
    out.extend(holds_ended(world));
    out.extend(settled(world, pvcs));
    out.extend(annotations(world));
    dedupe(out)
}

/// Adds the violations of `found` not already in `all` (a violation found again at a later
/// check is reported once).
pub(crate) fn add_new(
    record: &crate::record::Record,
    all: &mut Vec<Violation>,
    found: Vec<Violation>,
) {
    for v in found {
        if !all
            .iter()
            .any(|a| a.invariant == v.invariant && a.details == v.details)
        {
            record.event(format!("VIOLATION {}: {}", v.invariant, v.details));
            all.push(v);
        }
    }
}

/// A violation found again within one check is reported once.
fn dedupe(out: Vec<Violation>) -> Vec<Violation> {
    let mut seen = BTreeSet::new();
    out.into_iter()
        .filter(|v| seen.insert((v.invariant, v.details.clone())))
        .collect()
}

fn copies(world: &World) -> Vec<Violation> {
    let observed = world.record.lock();
    let mut found = Vec::new();
    // one_copy_per_release
    for (run, cuts) in &observed.cuts {
        let mut per_value: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for cut in cuts {
            per_value.entry(&cut.value).or_default().push(&cut.object);
        }
        for (value, objects) in per_value {
            if objects.len() > 1 {
                found.push((
                    "one_copy_per_release",
                    format!(
                        "{run} cut {} copies for {value:?}: {objects:?}",
                        objects.len()
                    ),
                ));
            }
        }
    }
    // trigger_releases_one_run
    let mut runs_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (id, run) in &observed.runs {
        for value in std::iter::once(&run.trigger)
            .chain(&run.spent_triggers)
            .filter(|v| !v.is_empty())
        {
            runs_of.entry(value).or_default().insert(id);
        }
    }
    for (run, cuts) in &observed.cuts {
        for cut in cuts.iter().filter(|c| !c.value.is_empty()) {
            runs_of.entry(&cut.value).or_default().insert(run);
        }
    }
    for (value, runs) in runs_of {
        if runs.len() > 1 {
            found.push((
                "trigger_releases_one_run",
                format!("value {value:?} bound to runs {runs:?}"),
            ));
        }
    }
    // copy_inside_hold: every counted copy point of a run released by an application's value.
    for (id, run) in &observed.runs {
        let Some(copy_time) = run.copy_time.as_ref() else {
            continue;
        };
        if run.trigger.is_empty() || !run.gated {
            continue;
        }
        let Some(hold) = observed.holds.get(&run.trigger) else {
            found.push((
                "copy_inside_hold",
                format!(
                    "{id} counted a copy released by {:?}, which no application's hold sent",
                    run.trigger
                ),
            ));
            continue;
        };
        let inside = |t: Duration| {
            hold.quiesced.is_some_and(|q| q <= t) && hold.released.is_none_or(|r| t <= r)
        };
        // The API server's times are whole seconds (as Kubernetes' are): a copy time read from
        // a snapshot's creationTime may be up to a second before the cut.
        // So the stored time `t` says the cut was in `t..t + 1 s`: that must meet the hold.
        let inside_truncated = |t: Duration| {
            hold.quiesced
                .is_some_and(|q| q < t + Duration::from_secs(1))
                && hold.released.is_none_or(|r| t <= r)
        };
        match virtual_time(copy_time) {
            Some(t) if inside_truncated(t) => {}
            t => found.push(("copy_inside_hold", format!(
                "{id}: the scheduler's copy time {t:?} is outside {}'s hold {:?}..{:?} (value {:?})",
                hold.app, hold.quiesced, hold.released, run.trigger
            ))),
        }
        for cut in observed
            .cuts
            .get(id)
            .into_iter()
            .flatten()
            .filter(|c| c.value == run.trigger)
        {
            if !inside(cut.at) {
                found.push((
                    "copy_inside_hold",
                    format!(
                        "{id}: {} was cut at {:?}, outside {}'s hold {:?}..{:?} (value {:?})",
                        cut.object, cut.at, hold.app, hold.quiesced, hold.released, run.trigger
                    ),
                ));
            }
        }
    }
    drop(observed);
    found
        .into_iter()
        .map(|(name, details)| violation(world, name, details))
        .collect()
}

fn holds_bounded(world: &World) -> Vec<Violation> {
    let now = world.record.now();
    let observed = world.record.lock();
    let found: Vec<String> = observed
        .holds
        .iter()
        .filter_map(|(value, h)| {
            let q = h.quiesced?;
            let end = h.released.unwrap_or(now);
            (end.saturating_sub(q) > h.bound).then(|| {
                format!(
                    "{} held {} ({value}) for {:?} (bound {:?}, ended: {})",
                    h.app,
                    h.pvc,
                    end - q,
                    h.bound,
                    h.released.is_some()
                )
            })
        })
        .collect();
    drop(observed);
    found
        .into_iter()
        .map(|d| violation(world, "guard_unquiesced", d))
        .collect()
}

fn holds_ended(world: &World) -> Vec<Violation> {
    let observed = world.record.lock();
    let found: Vec<String> = observed
        .holds
        .iter()
        .filter(|(_, h)| h.quiesced.is_some() && h.released.is_none())
        .map(|(value, h)| format!("{} never unquiesced {} ({value})", h.app, h.pvc))
        .collect();
    drop(observed);
    found
        .into_iter()
        .map(|d| violation(world, "guard_unquiesced", d))
        .collect()
}

async fn acknowledged(world: &World) -> Vec<Violation> {
    let acked = world.record.lock().acked.clone();
    let mut found = Vec::new();
    let mut sources = world.ops.sources();
    for (key, ack) in &acked {
        let (ns, name) = key.split_once('/').unwrap_or_default();
        let call = sources.get_source(v1::GetSourceRequest {
            namespace: ns.into(),
            name: name.into(),
        });
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(s)) => {
                let s = s.into_inner();
                if ack.deleted {
                    found.push(format!(
                        "{key}: deletion acknowledged, but the source is there (version {})",
                        s.version
                    ));
                } else if s.version < ack.version {
                    found.push(format!(
                        "{key}: version {} acknowledged, {} stored",
                        ack.version, s.version
                    ));
                }
            }
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                if !ack.deleted {
                    found.push(format!(
                        "{key}: acknowledged (version {}), now not found",
                        ack.version
                    ));
                }
            }
            // The scheduler is down or restarting: checked again later.
            _ => return Vec::new(),
        }
    }
    let observed = world.record.lock();
    for (key, request, run) in &observed.acked_syncs {
        let deleted_since = acked.get(key).is_none_or(|a| a.deleted);
        let seen = observed.runs.get(run);
        if !deleted_since && seen.is_none() {
            // Runs are read every minute; one acknowledged less than a minute ago may be unread.
            continue;
        }
        if let Some(r) = seen
            && r.request_id != *request
        {
            found.push(format!(
                "{key}: SyncNow {request} acknowledged as {run}, stored with request {:?}",
                r.request_id
            ));
        }
    }
    drop(observed);
    found
        .into_iter()
        .map(|d| violation(world, "acknowledged_kept", d))
        .collect()
}

fn is_over(run: &v1::Run) -> bool {
    run.phase() == v1::RunPhase::Finished
}

fn settled(world: &World, pvcs: &BTreeMap<String, PvcPlan>) -> Vec<Violation> {
    let now = world.record.now();
    let observed = world.record.lock();
    let live: BTreeSet<&String> = observed
        .acked
        .iter()
        .filter(|(_, a)| !a.deleted)
        .map(|(k, _)| k)
        .collect();
    let mut found = Vec::new();
    for (id, run) in &observed.runs {
        let source = run
            .source
            .as_ref()
            .map(|s| format!("{}/{}", s.namespace, s.name))
            .unwrap_or_default();
        // Only runs the last read still listed: a deleted source's runs are gone.
        let current = observed
            .run_seen
            .get(id)
            .is_some_and(|t| *t >= observed.last_poll);
        if is_over(run) || !live.contains(&source) || !current {
            continue;
        }
        let started = run
            .start_time
            .as_ref()
            .and_then(virtual_time)
            .unwrap_or_default();
        // A run that started in the last quarter hour may be on its way.
        if now.saturating_sub(started) < Duration::from_secs(15 * 60) {
            continue;
        }
        let pvc = format!(
            "{}/{}",
            run.source
                .as_ref()
                .map(|s| s.namespace.as_str())
                .unwrap_or(""),
            run.pvc
        );
        let plan = pvcs.get(&pvc);
        if run.phase() == v1::RunPhase::WaitingForTrigger {
            let name = run.source.as_ref().map(|s| s.name.as_str()).unwrap_or("");
            let skip = plan
                .and_then(|p| p.skip_after.iter().find(|(n, _, _)| n == name))
                .filter(|(_, _, skip)| *skip);
            let waited = run
                .waiting_since
                .as_ref()
                .and_then(virtual_time)
                .map(|w| now.saturating_sub(w));
            match skip {
                Some((_, timeout, _))
                    if waited.is_some_and(|w| w > Duration::from_secs(timeout + 300)) =>
                {
                    found.push(format!(
                        "{id} on {pvc} has waited {waited:?}, past its Skip timeout of {timeout}s"
                    ));
                }
                // Nobody answers on this PVC, or the timeout keeps it waiting: legitimate.
                _ if !plan.is_some_and(|p| p.answered) => {}
                _ => {
                    if waited.is_some_and(|w| w > Duration::from_secs(20 * 60)) {
                        found.push(format!("{id} on {pvc} has waited {waited:?} although an application answers there"));
                    }
                }
            }
            continue;
        }
        if run.phase() == v1::RunPhase::Queued {
            // Queued behind an earlier run on the PVC that has not ended (copy phases never
            // overlap): legitimate while that one is.
            let behind = observed.runs.values().any(|other| {
                other.pvc == run.pvc
                    && other.source.as_ref().map(|s| &s.namespace)
                        == run.source.as_ref().map(|s| &s.namespace)
                    && run_number(&other.id) < run_number(id)
                    && !is_over(other)
            });
            if behind {
                continue;
            }
        }
        let last: Vec<String> = run
            .timeline
            .iter()
            .rev()
            .take(3)
            .map(|t| format!("{}: {}", t.event, t.message))
            .collect();
        let ns = run
            .source
            .as_ref()
            .map(|s| s.namespace.as_str())
            .unwrap_or("");
        let jobs: Vec<String> = world
            .kube
            .list::<k8s_openapi::api::batch::v1::Job>(Some(ns))
            .unwrap_or_default()
            .into_iter()
            .map(|j| {
                let status = j.status.unwrap_or_default();
                format!(
                    "{} (active {:?}, failed {:?}, succeeded {:?}, deleting {})",
                    j.metadata.name.unwrap_or_default(),
                    status.active,
                    status.failed,
                    status.succeeded,
                    j.metadata.deletion_timestamp.is_some()
                )
            })
            .collect();
        found.push(format!(
            "{id} on {pvc} is still {:?} {:?} after it started ({:?}; {} mover failures; timeline, newest first: {last:?}; Jobs in {ns}: {jobs:?})",
            run.phase(), now.saturating_sub(started), run.message, run.mover_failures
        ));
    }
    drop(observed);
    found
        .into_iter()
        .map(|d| violation(world, "runs_settle", d))
        .collect()
}

fn run_number(id: &str) -> u64 {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn annotations(world: &World) -> Vec<Violation> {
    let observed = world.record.lock();
    let mut latest: BTreeMap<String, &v1::Run> = BTreeMap::new();
    for run in observed.runs.values() {
        if observed
            .run_seen
            .get(&run.id)
            .is_none_or(|t| *t < observed.last_poll)
        {
            continue;
        }
        let ns = run
            .source
            .as_ref()
            .map(|s| s.namespace.clone())
            .unwrap_or_default();
        let key = format!("{ns}/{}", run.pvc);
        let newer = latest
            .get(&key)
            .is_none_or(|r| run_number(&r.id) < run_number(&run.id));
        if newer {
            latest.insert(key, run);
        }
    }
    let mut found = Vec::new();
    for (key, run) in latest {
        if !is_over(run) {
            continue;
        }
        let (ns, name) = key.split_once('/').unwrap_or_default();
        let Ok(pvc) = world.kube.get::<PersistentVolumeClaim>(Some(ns), name) else {
            continue;
        };
        let annotations = pvc.metadata.annotations.unwrap_or_default();
        let status = annotations.get(LATEST_COPY_STATUS).map(String::as_str);
        if matches!(status, Some("WaitingForTrigger" | "InProgress"))
            || annotations.contains_key(LATEST_COPY_TRIGGER_WAITING_SINCE)
        {
            found.push(format!(
                "{key}: its latest run {} is over ({:?}) but the PVC says {status:?}",
                run.id,
                run.result()
            ));
        }
        if run.gated && run.result() == v1::RunResult::Successful && !run.trigger.is_empty() {
            let latest_value = annotations.get(LATEST_COPY_TRIGGER).map(String::as_str);
            if status != Some("Completed") || latest_value != Some(run.trigger.as_str()) {
                found.push(format!(
                    "{key}: {} completed with {:?}, the PVC says {status:?} / latest {latest_value:?}",
                    run.id, run.trigger
                ));
            }
        }
    }
    drop(observed);
    found
        .into_iter()
        .map(|d| violation(world, "annotations_agree", d))
        .collect()
}
