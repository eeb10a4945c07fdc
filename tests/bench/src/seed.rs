//! Seeding a scheduler's store offline, through the scheduler crate's own store API
//! (`RedbStore`, `Batch`, `Write`), with the records the scheduler itself would write.
//!
//! Kept in this one small module on purpose: the store's record types are changing, and this
//! is the only place that builds them.
//!
//! - A source is stored as `ApplySource` stores a new one (the core's `apply_source`: version
//!   1, `createTime`, `nextSyncTime`, the idle `Synchronizing` condition), except that its
//!   `nextSyncTime` is the one asked for (a schedule time with the source's jitter added).
//! - Runs in flight are not built here: the sources are loaded into the core
//!   (`Scheduler::restore`, as the scheduler loads its store) and the core starts whatever is
//!   due (`handle_timeout`, step after step while `poll_timeout` says more are due: a step
//!   starts at most `MAX_STARTS_PER_STEP`); its persistence effects become the batch, as the
//!   driver's `flush` turns them into one (`Effect::PutSource`/`PutRun` →
//!   `Write::PutSource`/`PutRun`).

use std::path::Path;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use snapgate_proto::v1;
use snapgate_scheduler::{
    store::{Batch, RedbStore, Store as _, Write},
    wire::{common::time_to_wire, sources::stored_source},
};
use snapgate_scheduler_core::{Effect, Scheduler, SourceKey, SourceRecord, schedule};

/// When a seeded source is due.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Due {
    /// A manual source already synced for its tag: no run until SyncNow.
    Idle,
    /// A manual source whose tag was never synced: its run starts when loaded.
    Now,
    /// A scheduled source (`@yearly`) whose next time is this instant, plus the source's
    /// jitter offset when its spec has a jitter.
    At(DateTime<Utc>),
    /// A scheduled source on this 5-field cron pattern, due at its first time (its jitter
    /// offset included) after it was created.
    Cron(&'static str),
}

/// The spec of a seeded source: restic, copy method Snapshot, repository `restic-config`, on
/// the PVC named after the source; `jitter_secs` > 0 adds a jitter.
pub(crate) fn spec(pvc: &str, due: Due, jitter_secs: i64) -> v1::SourceSpec {
    let trigger = match due {
        Due::At(_) => v1::ReplicationSourceTrigger {
            schedule: Some("@yearly".into()),
            manual: None,
        },
        Due::Cron(pattern) => v1::ReplicationSourceTrigger {
            schedule: Some(pattern.into()),
            manual: None,
        },
        Due::Idle | Due::Now => v1::ReplicationSourceTrigger {
            schedule: None,
            manual: Some("once".into()),
        },
    };
    v1::SourceSpec {
        source_pvc: pvc.into(),
        trigger: Some(trigger),
        restic: Some(v1::ReplicationSourceResticSpec {
            copy_method: v1::CopyMethod::Snapshot as i32,
            repository: "restic-config".into(),
            ..Default::default()
        }),
        jitter: (jitter_secs > 0).then_some(prost_types::Duration {
            seconds: jitter_secs,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// The record of source `ns/name` on PVC `name`, as created at `now`. Returns it with the
/// instant it is due (`None`: not by the clock).
pub(crate) fn source(
    ns: &str,
    name: &str,
    due: Due,
    jitter_secs: i64,
    now: DateTime<Utc>,
) -> anyhow::Result<(SourceRecord, Option<DateTime<Utc>>)> {
    let spec = spec(name, due, jitter_secs);
    let key = SourceKey::new(ns, name);
    let (next, last_manual, reason) = match due {
        Due::Idle => (None, "once", "WaitingForManual"),
        Due::Now => (None, "", "WaitingForManual"),
        Due::At(t) => {
            let s = schedule::Schedule::parse(
                "@yearly",
                "",
                chrono::Duration::seconds(jitter_secs),
                &key,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            (Some(t + s.offset()), "", "WaitingForSchedule")
        }
        Due::Cron(pattern) => {
            let s = schedule::Schedule::parse(
                pattern,
                "",
                chrono::Duration::seconds(jitter_secs),
                &key,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let next = s
                .next_after(now)
                .with_context(|| format!("{pattern:?} never fires after {now}"))?;
            (Some(next), "", "WaitingForSchedule")
        }
    };
    let status = v1::SourceStatus {
        next_sync_time: next.map(time_to_wire),
        last_manual_sync: last_manual.into(),
        conditions: vec![v1::Condition {
            r#type: "Synchronizing".into(),
            status: "False".into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: Some(time_to_wire(now)),
        }],
        ..Default::default()
    };
    // Built as the API shows a source, then read as the store reads one.
    let wire = v1::Source {
        namespace: ns.into(),
        name: name.into(),
        spec: Some(spec),
        status: Some(status),
        version: 1,
        create_time: Some(time_to_wire(now)),
        author: None,
    };
    let record = SourceRecord {
        source: stored_source(&wire).map_err(|e| anyhow::anyhow!("{e}"))?,
        deleting: false,
    };
    Ok((record, next))
}

/// What was written.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Seeded {
    /// Sources stored.
    pub(crate) sources: usize,
    /// Runs in flight stored.
    pub(crate) runs: usize,
}

/// Writes `records` into a new store in `dir`; with `start_runs`, also the runs the core
/// starts for those due at `now` (and the sources as those runs changed them).
pub(crate) fn write(
    dir: &Path,
    records: Vec<SourceRecord>,
    start_runs: bool,
    now: DateTime<Utc>,
) -> anyhow::Result<Seeded> {
    let mut store = RedbStore::open(dir).context("opening the store to seed")?;
    let sources = records.len();
    let mut writes: Vec<Write> = Vec::with_capacity(sources);
    let mut next_run = 1;
    let mut runs = 0;
    if start_runs {
        let restored = Scheduler::restore(records.clone(), Vec::new(), 1);
        if let Some(q) = restored.quarantined.first() {
            bail!(
                "a seeded record would be quarantined: {} {}",
                q.key,
                q.reason
            );
        }
        let mut core = restored.scheduler;
        core.handle_timeout(now);
        while core.poll_timeout().is_some_and(|t| t <= now) {
            core.handle_timeout(now);
        }
        writes.extend(records.into_iter().map(|r| Write::PutSource(Box::new(r))));
        for effect in core.drain_effects() {
            match effect {
                Effect::PutSource(r) => writes.push(Write::PutSource(r)),
                Effect::PutRun(r) => {
                    runs += 1;
                    writes.push(Write::PutRun(r));
                }
                _ => {}
            }
        }
        next_run = core.next_run_counter();
    } else {
        writes.extend(records.into_iter().map(|r| Write::PutSource(Box::new(r))));
    }
    // PutRun repeats for a run changed twice in one step: count runs, not writes.
    let runs = if start_runs {
        usize::try_from(next_run.saturating_sub(1)).unwrap_or(runs)
    } else {
        0
    };
    store
        .commit(Batch { writes, next_run })
        .context("committing the seeded records")?;
    Ok(Seeded { sources, runs })
}
