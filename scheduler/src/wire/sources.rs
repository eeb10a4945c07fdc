//! `snapgate.v1.SourceService`'s messages: sources, their status, runs. Domain to wire for the
//! API's answers; wire to domain for [`Source`] and [`Run`] as stored ([`stored_source`],
//! [`stored_run`]).

use chrono::DateTime;
use snapgate_proto::v1;
use snapgate_scheduler_core::{
    RunId,
    model::{
        Condition, Hold, MoverStatus, MoverStuck, ReleasedBy, Run, RunPhase, RunReason, RunResult,
        Source, SourceStatus, TimelineEntry,
    },
};

use super::common::{
    author_from_wire, author_to_wire, bad_enum, duration_from_wire, duration_to_wire,
    opt_time_to_wire, source_key, source_ref, spec_to_wire, stored_spec, time_from_wire,
    time_to_wire,
};

/// A source on the wire.
pub fn source_to_wire(s: &Source) -> v1::Source {
    let Source {
        key,
        spec,
        status,
        version,
        create_time,
        author,
    } = s;
    v1::Source {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        spec: Some(spec_to_wire(spec)),
        status: Some(status_to_wire(status)),
        version: *version,
        create_time: Some(time_to_wire(*create_time)),
        author: author.as_ref().map(author_to_wire),
    }
}

/// A stored source, decoded structurally: its spec as [`stored_spec`] reads it (required), its
/// status as [`status_from_wire`] reads it (unset: empty), and its `createTime` (missing or
/// invalid in a record of an earlier version: the Unix epoch, rather than leaving the source
/// out). The error names the field.
pub fn stored_source(s: &v1::Source) -> Result<Source, String> {
    let v1::Source {
        namespace,
        name,
        spec,
        status,
        version,
        create_time,
        author,
    } = s;
    let spec = spec.as_ref().ok_or("spec: missing")?;
    Ok(Source {
        key: snapgate_scheduler_core::SourceKey::new(namespace, name),
        spec: stored_spec(spec)?,
        status: status
            .as_ref()
            .map(status_from_wire)
            .transpose()?
            .unwrap_or_default(),
        version: *version,
        create_time: time_from_wire(create_time.as_ref()).unwrap_or(DateTime::UNIX_EPOCH),
        author: author.as_ref().map(author_from_wire),
    })
}

/// A source's status on the wire.
pub fn status_to_wire(s: &SourceStatus) -> v1::SourceStatus {
    let SourceStatus {
        last_sync_time,
        last_sync_start_time,
        last_sync_duration,
        next_sync_time,
        last_manual_sync,
        latest_mover_status,
        conditions,
        current_run,
        pause_note,
        missed_intervals,
        message,
        last_pruned,
    } = s;
    v1::SourceStatus {
        last_sync_time: opt_time_to_wire(*last_sync_time),
        last_sync_start_time: opt_time_to_wire(*last_sync_start_time),
        last_sync_duration: last_sync_duration.map(duration_to_wire),
        next_sync_time: opt_time_to_wire(*next_sync_time),
        last_manual_sync: last_manual_sync.clone(),
        latest_mover_status: latest_mover_status.as_ref().map(mover_status_to_wire),
        conditions: conditions.iter().map(condition_to_wire).collect(),
        current_run_id: current_run.map(|r| r.to_string()).unwrap_or_default(),
        pause_note: pause_note.clone(),
        missed_intervals: *missed_intervals,
        message: message.clone(),
        last_pruned: opt_time_to_wire(*last_pruned),
    }
}

/// A stored status: an invalid time is unset; refused: a `currentRunId` that is neither empty
/// nor `run-<n>`, a `lastSyncDuration` chrono cannot hold.
pub fn status_from_wire(s: &v1::SourceStatus) -> Result<SourceStatus, String> {
    let v1::SourceStatus {
        last_sync_time,
        last_sync_start_time,
        last_sync_duration,
        next_sync_time,
        last_manual_sync,
        latest_mover_status,
        conditions,
        current_run_id,
        pause_note,
        missed_intervals,
        message,
        last_pruned,
    } = s;
    let current_run = match current_run_id.as_str() {
        "" => None,
        id => Some(run_id("status.currentRunId", id)?),
    };
    let last_sync_duration = last_sync_duration
        .as_ref()
        .map(|d| {
            duration_from_wire(d).ok_or_else(|| {
                format!(
                    "status.lastSyncDuration: not a duration this version can hold (seconds {}, nanos {})",
                    d.seconds, d.nanos
                )
            })
        })
        .transpose()?;
    Ok(SourceStatus {
        last_sync_time: time_from_wire(last_sync_time.as_ref()),
        last_sync_start_time: time_from_wire(last_sync_start_time.as_ref()),
        last_sync_duration,
        next_sync_time: time_from_wire(next_sync_time.as_ref()),
        last_manual_sync: last_manual_sync.clone(),
        latest_mover_status: latest_mover_status.as_ref().map(mover_status_from_wire),
        conditions: conditions.iter().map(condition_from_wire).collect(),
        current_run,
        pause_note: pause_note.clone(),
        missed_intervals: *missed_intervals,
        message: message.clone(),
        last_pruned: time_from_wire(last_pruned.as_ref()),
    })
}

/// `run-<n>` as snapgate writes it (`run-07` and `run-+7` are not `run-7`: a run id is a key
/// of the store), or an error naming `field`.
fn run_id(field: &str, id: &str) -> Result<RunId, String> {
    id.parse::<RunId>().map_err(|()| {
        format!(
            "{field}: {} is not a run id (run-<n>)",
            snapgate_proto::text::quoted(id)
        )
    })
}

/// A condition on the wire.
pub fn condition_to_wire(c: &Condition) -> v1::Condition {
    v1::Condition {
        r#type: c.type_.clone(),
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        last_transition_time: opt_time_to_wire(c.last_transition_time),
    }
}

/// A condition from the wire (an invalid time is unset).
pub fn condition_from_wire(c: &v1::Condition) -> Condition {
    Condition {
        type_: c.r#type.clone(),
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        last_transition_time: time_from_wire(c.last_transition_time.as_ref()),
    }
}

/// A mover status on the wire.
pub fn mover_status_to_wire(m: &MoverStatus) -> v1::MoverStatus {
    v1::MoverStatus {
        result: m.result.clone(),
        logs: m.logs.clone(),
    }
}

/// A mover status from the wire.
pub fn mover_status_from_wire(m: &v1::MoverStatus) -> MoverStatus {
    MoverStatus {
        result: m.result.clone(),
        logs: m.logs.clone(),
    }
}

/// A stuck mover on the wire.
pub fn mover_stuck_to_wire(m: &MoverStuck) -> v1::MoverStuck {
    v1::MoverStuck {
        reason: m.reason.clone(),
        message: m.message.clone(),
        pod: m.pod.clone(),
        job: m.job.clone(),
        attempt: m.attempt,
        since: opt_time_to_wire(m.since),
        deadline: opt_time_to_wire(m.deadline),
    }
}

/// A stuck mover from the wire (stored, or an agent's report): an invalid time is unset.
pub fn mover_stuck_from_wire(m: &v1::MoverStuck) -> MoverStuck {
    MoverStuck {
        reason: m.reason.clone(),
        message: m.message.clone(),
        pod: m.pod.clone(),
        job: m.job.clone(),
        attempt: m.attempt,
        since: time_from_wire(m.since.as_ref()),
        deadline: time_from_wire(m.deadline.as_ref()),
    }
}

/// A timeline entry on the wire.
pub fn timeline_entry_to_wire(e: &TimelineEntry) -> v1::TimelineEntry {
    v1::TimelineEntry {
        time: Some(time_to_wire(e.time)),
        event: e.event.clone(),
        message: e.message.clone(),
    }
}

/// A stored timeline entry: `None` when its time is missing or invalid.
pub fn timeline_entry_from_wire(e: &v1::TimelineEntry) -> Option<TimelineEntry> {
    Some(TimelineEntry {
        time: time_from_wire(e.time.as_ref())?,
        event: e.event.clone(),
        message: e.message.clone(),
    })
}

/// A holder's Trigger on the wire.
pub fn hold_to_wire(h: &Hold) -> v1::Hold {
    v1::Hold {
        holder: h.holder.clone(),
        value: h.value.clone(),
        deadline: opt_time_to_wire(h.deadline),
    }
}

/// A stored holder's Trigger (an invalid deadline is unset).
pub fn hold_from_wire(h: &v1::Hold) -> Hold {
    Hold {
        holder: h.holder.clone(),
        value: h.value.clone(),
        deadline: time_from_wire(h.deadline.as_ref()),
    }
}

/// A run's reason on the wire.
pub fn run_reason_to_wire(r: RunReason) -> v1::RunReason {
    match r {
        RunReason::Initial => v1::RunReason::Initial,
        RunReason::Schedule => v1::RunReason::Schedule,
        RunReason::Manual => v1::RunReason::Manual,
        RunReason::SyncNow => v1::RunReason::SyncNow,
        RunReason::Continuous => v1::RunReason::Continuous,
    }
}

/// A wire reason's number as the domain's: `None` when unspecified or unknown.
pub fn run_reason_from_wire(n: i32) -> Option<RunReason> {
    match v1::RunReason::try_from(n).ok()? {
        v1::RunReason::Unspecified => None,
        v1::RunReason::Initial => Some(RunReason::Initial),
        v1::RunReason::Schedule => Some(RunReason::Schedule),
        v1::RunReason::Manual => Some(RunReason::Manual),
        v1::RunReason::SyncNow => Some(RunReason::SyncNow),
        v1::RunReason::Continuous => Some(RunReason::Continuous),
    }
}

/// A run's phase on the wire.
pub fn run_phase_to_wire(p: RunPhase) -> v1::RunPhase {
    match p {
        RunPhase::Queued => v1::RunPhase::Queued,
        RunPhase::Gating => v1::RunPhase::Gating,
        RunPhase::WaitingForTrigger => v1::RunPhase::WaitingForTrigger,
        RunPhase::Copying => v1::RunPhase::Copying,
        RunPhase::Transferring => v1::RunPhase::Transferring,
        RunPhase::CleaningUp => v1::RunPhase::CleaningUp,
        RunPhase::Finished => v1::RunPhase::Finished,
    }
}

/// A wire phase's number as the domain's: `None` when unspecified or unknown.
pub fn run_phase_from_wire(n: i32) -> Option<RunPhase> {
    match v1::RunPhase::try_from(n).ok()? {
        v1::RunPhase::Unspecified => None,
        v1::RunPhase::Queued => Some(RunPhase::Queued),
        v1::RunPhase::Gating => Some(RunPhase::Gating),
        v1::RunPhase::WaitingForTrigger => Some(RunPhase::WaitingForTrigger),
        v1::RunPhase::Copying => Some(RunPhase::Copying),
        v1::RunPhase::Transferring => Some(RunPhase::Transferring),
        v1::RunPhase::CleaningUp => Some(RunPhase::CleaningUp),
        v1::RunPhase::Finished => Some(RunPhase::Finished),
    }
}

/// A run's result on the wire (`None`, still going on: unspecified).
pub fn run_result_to_wire(r: Option<RunResult>) -> v1::RunResult {
    match r {
        None => v1::RunResult::Unspecified,
        Some(RunResult::Successful) => v1::RunResult::Successful,
        Some(RunResult::Failed) => v1::RunResult::Failed,
        Some(RunResult::TimedOut) => v1::RunResult::TimedOut,
        Some(RunResult::Aborted) => v1::RunResult::Aborted,
    }
}

/// A wire result's number as the domain's: `Some(None)` when unspecified (the run goes on),
/// `None` when unknown.
pub fn run_result_from_wire(n: i32) -> Option<Option<RunResult>> {
    Some(match v1::RunResult::try_from(n).ok()? {
        v1::RunResult::Unspecified => None,
        v1::RunResult::Successful => Some(RunResult::Successful),
        v1::RunResult::Failed => Some(RunResult::Failed),
        v1::RunResult::TimedOut => Some(RunResult::TimedOut),
        v1::RunResult::Aborted => Some(RunResult::Aborted),
    })
}

/// How a run was released, on the wire: `annotation`, `rpc`, or empty when it was not.
pub fn released_by_to_wire(r: Option<ReleasedBy>) -> String {
    r.map(ReleasedBy::as_str).unwrap_or_default().to_owned()
}

/// A stored `releasedBy`: empty is `None`; `annotation`, `rpc` and `ahead` (the PVC's
/// `copy-trigger` annotation already held a new value before the run waited) are theirs.
/// Anything else is an error.
pub fn released_by_from_wire(s: &str) -> Result<Option<ReleasedBy>, String> {
    match s {
        "" => Ok(None),
        "annotation" => Ok(Some(ReleasedBy::Annotation)),
        "ahead" => Ok(Some(ReleasedBy::Ahead)),
        "rpc" => Ok(Some(ReleasedBy::Rpc)),
        other => Err(format!(
            "releasedBy: {} is not annotation, rpc or ahead",
            snapgate_proto::text::quoted(other)
        )),
    }
}

/// A run on the wire.
pub fn run_to_wire(r: &Run) -> v1::Run {
    let Run {
        id,
        source,
        pvc,
        reason,
        phase,
        result,
        trigger,
        start_time,
        waiting_since,
        wait_deadline,
        copy_time,
        end_time,
        gated,
        timeout_reported,
        message,
        timeline,
        mover_status,
        mover_failures,
        request_id,
        released_by,
        generation,
        latest_trigger,
        restic_prune,
        spec,
        lease_deadline,
        spent_triggers,
        holds,
        author,
        mover_stuck,
    } = r;
    v1::Run {
        id: id.to_string(),
        source: Some(source_ref(source)),
        pvc: pvc.clone(),
        reason: run_reason_to_wire(*reason).into(),
        phase: run_phase_to_wire(*phase).into(),
        result: run_result_to_wire(*result).into(),
        trigger: trigger.clone(),
        start_time: Some(time_to_wire(*start_time)),
        waiting_since: opt_time_to_wire(*waiting_since),
        wait_deadline: opt_time_to_wire(*wait_deadline),
        copy_time: opt_time_to_wire(*copy_time),
        end_time: opt_time_to_wire(*end_time),
        gated: *gated,
        timeout_reported: *timeout_reported,
        message: message.clone(),
        timeline: timeline.iter().map(timeline_entry_to_wire).collect(),
        mover_status: mover_status.as_ref().map(mover_status_to_wire),
        mover_failures: *mover_failures,
        request_id: request_id.clone(),
        released_by: released_by_to_wire(*released_by),
        generation: *generation,
        latest_trigger: latest_trigger.clone(),
        restic_prune: *restic_prune,
        spec: spec.as_ref().map(spec_to_wire),
        lease_deadline: opt_time_to_wire(*lease_deadline),
        spent_triggers: spent_triggers.clone(),
        holds: holds.iter().map(hold_to_wire).collect(),
        author: author.as_ref().map(author_to_wire),
        mover_stuck: mover_stuck.as_ref().map(mover_stuck_to_wire),
    }
}

/// A stored run, decoded structurally. Refused, with the field named: an id that is not
/// `run-<n>`, no source, a reason or phase unspecified or unknown, an unknown result, no valid
/// start time, an unknown `releasedBy`, a spec that [`stored_spec`] refuses. An invalid time in
/// an optional field is unset, and a timeline entry without a valid time is left out (the run
/// is kept).
pub fn stored_run(r: &v1::Run) -> Result<Run, String> {
    let v1::Run {
        id,
        source,
        pvc,
        reason,
        phase,
        result,
        trigger,
        start_time,
        waiting_since,
        wait_deadline,
        copy_time,
        end_time,
        gated,
        timeout_reported,
        message,
        timeline,
        mover_status,
        mover_failures,
        request_id,
        released_by,
        generation,
        latest_trigger,
        restic_prune,
        spec,
        lease_deadline,
        spent_triggers,
        holds,
        author,
        mover_stuck,
    } = r;
    Ok(Run {
        id: run_id("id", id)?,
        source: source_key(source.as_ref().ok_or("source: missing")?),
        pvc: pvc.clone(),
        reason: run_reason_from_wire(*reason).ok_or_else(|| bad_enum("reason", *reason))?,
        phase: run_phase_from_wire(*phase).ok_or_else(|| bad_enum("phase", *phase))?,
        result: run_result_from_wire(*result).ok_or_else(|| bad_enum("result", *result))?,
        trigger: trigger.clone(),
        start_time: time_from_wire(start_time.as_ref())
            .ok_or("startTime: missing or not a valid time")?,
        waiting_since: time_from_wire(waiting_since.as_ref()),
        wait_deadline: time_from_wire(wait_deadline.as_ref()),
        copy_time: time_from_wire(copy_time.as_ref()),
        end_time: time_from_wire(end_time.as_ref()),
        gated: *gated,
        timeout_reported: *timeout_reported,
        message: message.clone(),
        timeline: timeline
            .iter()
            .filter_map(timeline_entry_from_wire)
            .collect(),
        mover_status: mover_status.as_ref().map(mover_status_from_wire),
        mover_failures: *mover_failures,
        request_id: request_id.clone(),
        released_by: released_by_from_wire(released_by)?,
        generation: *generation,
        latest_trigger: latest_trigger.clone(),
        restic_prune: *restic_prune,
        spec: spec.as_ref().map(stored_spec).transpose()?,
        lease_deadline: time_from_wire(lease_deadline.as_ref()),
        spent_triggers: spent_triggers.clone(),
        holds: holds.iter().map(hold_from_wire).collect(),
        author: author.as_ref().map(author_from_wire),
        mover_stuck: mover_stuck.as_ref().map(mover_stuck_from_wire),
    })
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;
    use proptest::{collection::vec, option, prelude::*};
    use snapgate_scheduler_core::SourceKey;

    use super::*;
    use crate::wire::testing::{self, Breaking, at, full_record, full_run};

    #[test]
    fn a_source_with_every_field_set_goes_to_the_wire_and_back_unchanged() {
        let source = full_record().source;
        let wire = source_to_wire(&source);
        assert_eq!(stored_source(&wire), Ok(source.clone()));
        assert_eq!(source_to_wire(&stored_source(&wire).unwrap()), wire);
        assert_eq!(
            (wire.namespace.as_str(), wire.name.as_str()),
            ("apps", "db")
        );
        assert_eq!(wire.version, 7);
        let status = wire.status.as_ref().unwrap();
        assert_eq!(status.current_run_id, "run-2");
        assert_eq!(status.pause_note, "maintenance");
        assert_eq!(status.missed_intervals, 3);
        assert_eq!(status.conditions[0].r#type, "Synchronizing");
        assert_eq!(
            status.last_sync_duration,
            Some(prost_types::Duration {
                seconds: 30,
                nanos: 1_000_000
            })
        );
        assert_eq!(
            wire.author.as_ref().map(|a| a.user.as_str()),
            Some(testing::author().user.as_str())
        );
    }

    #[test]
    fn a_run_with_every_field_set_goes_to_the_wire_and_back_unchanged() {
        let run = full_run();
        let wire = run_to_wire(&run);
        assert_eq!(stored_run(&wire), Ok(run.clone()));
        assert_eq!(run_to_wire(&stored_run(&wire).unwrap()), wire);
        assert_eq!(wire.id, "run-42");
        assert_eq!(wire.released_by, "rpc");
        assert_eq!(wire.result, v1::RunResult::TimedOut as i32);
        assert_eq!(wire.phase, v1::RunPhase::CleaningUp as i32);
        assert_eq!(wire.reason, v1::RunReason::SyncNow as i32);
        assert_eq!(wire.holds[1].deadline, None);
        assert_eq!(wire.spent_triggers, ["v0", "v1"]);
        assert_eq!(wire.mover_stuck.as_ref().map(|m| m.attempt), Some(2));
    }

    #[test]
    fn a_run_just_started_goes_to_the_wire_and_back_unchanged() {
        let run = Run::new(
            RunId(1),
            SourceKey::new("a", "b"),
            "pvc".into(),
            RunReason::Initial,
            at(0, 0),
        );
        let wire = run_to_wire(&run);
        assert_eq!(wire.result, 0, "no result yet: unspecified");
        assert_eq!(wire.released_by, "");
        assert_eq!(wire.spec, None);
        assert_eq!(stored_run(&wire), Ok(run));
    }

    /// What an earlier version may have stored without a valid time loads rather than being
    /// left out: a source with the Unix epoch as its creation time, a run without the entry.
    #[test]
    fn a_stored_record_missing_a_time_it_can_do_without_still_loads() {
        let mut source = source_to_wire(&full_record().source);
        source.create_time = None;
        let loaded = stored_source(&source).unwrap();
        assert_eq!(loaded.create_time, DateTime::UNIX_EPOCH);
        assert_eq!(loaded.spec, full_record().source.spec);

        let mut run = run_to_wire(&full_run());
        let entries = run.timeline.len();
        run.timeline[1].time = None;
        let loaded = stored_run(&run).unwrap();
        assert_eq!(loaded.timeline.len(), entries - 1);
        assert_eq!(loaded.timeline[0], full_run().timeline[0]);
    }

    #[test]
    fn a_stored_run_the_domain_cannot_hold_is_an_error_naming_the_field() {
        let base = run_to_wire(&full_run());
        let cases: Vec<Breaking<v1::Run>> = vec![
            (
                "id: \"\" is not a run id (run-<n>)",
                Box::new(|r| r.id.clear()),
            ),
            (
                "id: \"run-x\" is not a run id (run-<n>)",
                Box::new(|r| r.id = "run-x".into()),
            ),
            (
                "id: \"42\" is not a run id (run-<n>)",
                Box::new(|r| r.id = "42".into()),
            ),
            (
                "id: \"run-007\" is not a run id (run-<n>)",
                Box::new(|r| r.id = "run-007".into()),
            ),
            (
                "id: \"run-+7\" is not a run id (run-<n>)",
                Box::new(|r| r.id = "run-+7".into()),
            ),
            ("source: missing", Box::new(|r| r.source = None)),
            ("phase: unset", Box::new(|r| r.phase = 0)),
            ("phase: unknown value 99", Box::new(|r| r.phase = 99)),
            ("reason: unset", Box::new(|r| r.reason = 0)),
            ("reason: unknown value -1", Box::new(|r| r.reason = -1)),
            ("result: unknown value 42", Box::new(|r| r.result = 42)),
            (
                "startTime: missing or not a valid time",
                Box::new(|r| r.start_time = None),
            ),
            (
                "startTime: missing or not a valid time",
                Box::new(|r| {
                    r.start_time = Some(prost_types::Timestamp {
                        seconds: i64::MAX,
                        nanos: 0,
                    })
                }),
            ),
            (
                "releasedBy: \"carrier pigeon\" is not annotation, rpc or ahead",
                Box::new(|r| r.released_by = "carrier pigeon".into()),
            ),
            (
                "spec.restic.copyMethod: unknown value 9",
                Box::new(|r| {
                    r.spec
                        .as_mut()
                        .unwrap()
                        .restic
                        .as_mut()
                        .unwrap()
                        .copy_method = 9;
                }),
            ),
        ];
        for (want, break_it) in cases {
            let mut wire = base.clone();
            break_it(&mut wire);
            assert_eq!(stored_run(&wire), Err(want.to_owned()));
        }
    }

    #[test]
    fn invalid_times_in_optional_fields_of_a_stored_run_are_unset() {
        let mut wire = run_to_wire(&full_run());
        let bad = Some(prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        });
        wire.waiting_since = bad;
        wire.wait_deadline = bad;
        wire.copy_time = bad;
        wire.end_time = bad;
        wire.lease_deadline = bad;
        wire.holds[0].deadline = bad;
        wire.mover_stuck.as_mut().unwrap().since = bad;
        let run = stored_run(&wire).unwrap();
        assert_eq!(
            (
                run.waiting_since,
                run.wait_deadline,
                run.copy_time,
                run.end_time,
                run.lease_deadline,
                run.holds[0].deadline,
                run.mover_stuck.as_ref().unwrap().since,
            ),
            (None, None, None, None, None, None, None)
        );
    }

    #[test]
    fn a_stored_source_the_domain_cannot_hold_is_an_error_naming_the_field() {
        let base = source_to_wire(&full_record().source);
        let cases: Vec<Breaking<v1::Source>> = vec![
            ("spec: missing", Box::new(|s| s.spec = None)),
            (
                "status.currentRunId: \"2\" is not a run id (run-<n>)",
                Box::new(|s| s.status.as_mut().unwrap().current_run_id = "2".into()),
            ),
            (
                "status.lastSyncDuration: not a duration this version can hold (seconds -9223372036854775808, nanos 0)",
                Box::new(|s| {
                    s.status.as_mut().unwrap().last_sync_duration = Some(prost_types::Duration {
                        seconds: i64::MIN,
                        nanos: 0,
                    })
                }),
            ),
            (
                "spec: exactly one mover of restic, rclone, rsync, rsyncTLS is required, found 0",
                Box::new(|s| s.spec.as_mut().unwrap().restic = None),
            ),
        ];
        for (want, break_it) in cases {
            let mut wire = base.clone();
            break_it(&mut wire);
            assert_eq!(stored_source(&wire), Err(want.to_owned()));
        }
    }

    #[test]
    fn a_stored_source_without_a_status_has_an_empty_one_and_bad_times_are_unset() {
        let mut wire = source_to_wire(&full_record().source);
        wire.status = None;
        assert_eq!(
            stored_source(&wire).unwrap().status,
            SourceStatus::default()
        );
        let mut wire = source_to_wire(&full_record().source);
        let status = wire.status.as_mut().unwrap();
        status.last_sync_time = Some(prost_types::Timestamp {
            seconds: i64::MIN,
            nanos: 0,
        });
        status.conditions[0].last_transition_time = Some(prost_types::Timestamp {
            seconds: 0,
            nanos: 1_000_000_000,
        });
        let source = stored_source(&wire).unwrap();
        assert_eq!(source.status.last_sync_time, None);
        assert_eq!(source.status.conditions[0].last_transition_time, None);
    }

    #[test]
    fn released_by_maps_both_ways() {
        let all = [
            None,
            Some(ReleasedBy::Annotation),
            Some(ReleasedBy::Rpc),
            Some(ReleasedBy::Ahead),
        ];
        for r in all {
            assert_eq!(released_by_from_wire(&released_by_to_wire(r)), Ok(r));
        }
        assert_eq!(released_by_to_wire(None), "");
        assert_eq!(
            released_by_to_wire(Some(ReleasedBy::Annotation)),
            "annotation"
        );
        assert_eq!(released_by_to_wire(Some(ReleasedBy::Rpc)), "rpc");
        assert_eq!(released_by_to_wire(Some(ReleasedBy::Ahead)), "ahead");
        assert!(released_by_from_wire("RPC").is_err());
    }

    #[test]
    fn enum_mappings_are_exhaustive_both_ways() {
        let reasons = [
            RunReason::Initial,
            RunReason::Schedule,
            RunReason::Manual,
            RunReason::SyncNow,
            RunReason::Continuous,
        ];
        for r in reasons {
            assert_eq!(run_reason_from_wire(run_reason_to_wire(r).into()), Some(r));
        }
        for n in -2..=12 {
            match run_reason_from_wire(n) {
                Some(r) => assert_eq!(i32::from(run_reason_to_wire(r)), n),
                None => assert!(v1::RunReason::try_from(n).is_err() || n == 0, "{n}"),
            }
        }
        let phases = [
            RunPhase::Queued,
            RunPhase::Gating,
            RunPhase::WaitingForTrigger,
            RunPhase::Copying,
            RunPhase::Transferring,
            RunPhase::CleaningUp,
            RunPhase::Finished,
        ];
        for p in phases {
            assert_eq!(run_phase_from_wire(run_phase_to_wire(p).into()), Some(p));
        }
        for n in -2..=12 {
            match run_phase_from_wire(n) {
                Some(p) => assert_eq!(i32::from(run_phase_to_wire(p)), n),
                None => assert!(v1::RunPhase::try_from(n).is_err() || n == 0, "{n}"),
            }
        }
        let results = [
            None,
            Some(RunResult::Successful),
            Some(RunResult::Failed),
            Some(RunResult::TimedOut),
            Some(RunResult::Aborted),
        ];
        for r in results {
            assert_eq!(run_result_from_wire(run_result_to_wire(r).into()), Some(r));
        }
        for n in -2..=12 {
            match run_result_from_wire(n) {
                Some(r) => assert_eq!(i32::from(run_result_to_wire(r)), n),
                None => assert!(v1::RunResult::try_from(n).is_err(), "{n}"),
            }
        }
        for r in results.into_iter().flatten() {
            assert_eq!(
                run_result_to_wire(Some(r)).as_str_name(),
                format!("RUN_RESULT_{}", snake(r.as_str())),
            );
        }
    }

    /// `TimedOut` as `TIMED_OUT`.
    fn snake(s: &str) -> String {
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    }

    fn run() -> BoxedStrategy<Run> {
        let t = testing::time;
        let ot = || option::of(testing::time());
        let s = || "[a-z0-9-]{0,6}";
        let reason = prop_oneof![
            Just(RunReason::Initial),
            Just(RunReason::Schedule),
            Just(RunReason::Manual),
            Just(RunReason::SyncNow),
            Just(RunReason::Continuous),
        ];
        let phase = prop_oneof![
            Just(RunPhase::Queued),
            Just(RunPhase::Gating),
            Just(RunPhase::WaitingForTrigger),
            Just(RunPhase::Copying),
            Just(RunPhase::Transferring),
            Just(RunPhase::CleaningUp),
            Just(RunPhase::Finished),
        ];
        let result = option::of(prop_oneof![
            Just(RunResult::Successful),
            Just(RunResult::Failed),
            Just(RunResult::TimedOut),
            Just(RunResult::Aborted),
        ]);
        let released_by = option::of(prop_oneof![
            Just(ReleasedBy::Annotation),
            Just(ReleasedBy::Rpc)
        ]);
        let timeline = vec(
            (t(), s(), s()).prop_map(|(time, event, message)| TimelineEntry {
                time,
                event,
                message,
            }),
            0..3,
        );
        let holds = vec(
            (s(), s(), ot()).prop_map(|(holder, value, deadline)| Hold {
                holder,
                value,
                deadline,
            }),
            0..3,
        );
        let stuck = option::of((s(), s(), any::<u32>(), ot(), ot()).prop_map(
            |(reason, pod, attempt, since, deadline)| MoverStuck {
                reason,
                message: "m".into(),
                pod,
                job: "j".into(),
                attempt,
                since,
                deadline,
            },
        ));
        (
            (any::<u64>(), s(), s(), reason, phase, result, s(), t()),
            (
                ot(),
                ot(),
                ot(),
                ot(),
                any::<(bool, bool, bool)>(),
                timeline,
            ),
            (
                option::of((s(), s())),
                any::<(u32, u64)>(),
                released_by,
                option::of(testing::spec()),
                ot(),
                vec(s(), 0..3),
                holds,
                stuck,
            ),
        )
            .prop_map(
                |(
                    (n, ns, pvc, reason, phase, result, trigger, start_time),
                    (waiting_since, wait_deadline, copy_time, end_time, flags, timeline),
                    (
                        mover_status,
                        (mover_failures, generation),
                        released_by,
                        spec,
                        lease_deadline,
                        spent_triggers,
                        holds,
                        mover_stuck,
                    ),
                )| Run {
                    id: RunId(n),
                    source: SourceKey::new(&ns, "src"),
                    pvc,
                    reason,
                    phase,
                    result,
                    trigger,
                    start_time,
                    waiting_since,
                    wait_deadline,
                    copy_time,
                    end_time,
                    gated: flags.0,
                    timeout_reported: flags.1,
                    message: "msg".into(),
                    timeline,
                    mover_status: mover_status.map(|(result, logs)| MoverStatus { result, logs }),
                    mover_failures,
                    request_id: "r".into(),
                    released_by,
                    generation,
                    latest_trigger: "l".into(),
                    restic_prune: flags.2,
                    spec,
                    lease_deadline,
                    spent_triggers,
                    holds,
                    author: Some(testing::author()),
                    mover_stuck,
                },
            )
            .boxed()
    }

    proptest! {
        #[test]
        fn any_run_goes_to_the_wire_and_back_unchanged(run in run()) {
            prop_assert_eq!(stored_run(&run_to_wire(&run)), Ok(run));
        }

        #[test]
        fn any_source_goes_to_the_wire_and_back_unchanged(
            spec in testing::spec(),
            times in proptest::collection::vec(option::of(testing::time()), 5),
            duration in option::of(testing::duration()),
            current in option::of(any::<u64>()),
            created in testing::time(),
            version: u64,
        ) {
            let mut source = full_record().source;
            source.spec = spec;
            source.status.last_sync_time = times[0];
            source.status.last_sync_start_time = times[1];
            source.status.next_sync_time = times[2];
            source.status.last_pruned = times[3];
            source.status.conditions[0].last_transition_time = times[4];
            source.status.last_sync_duration = duration;
            source.status.current_run = current.map(RunId);
            source.create_time = created;
            source.version = version;
            prop_assert_eq!(stored_source(&source_to_wire(&source)), Ok(source));
        }
    }
}
