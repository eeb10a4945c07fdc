//! `snapgate.v1.TriggerService`'s messages: copy targets from requests, copy status in answers,
//! a Trigger's hold.

use snapgate_proto::v1;
use snapgate_scheduler_core::model::{CopyState, CopyStatus, CopyTarget, RawDuration};

use super::common::{opt_time_to_wire, raw_duration};

/// A request's copy target, as sent (which of `pvc` and `source` is set is the core's check).
pub fn copy_target(t: &v1::CopyTarget) -> CopyTarget {
    CopyTarget {
        namespace: t.namespace.clone(),
        pvc: t.pvc.clone(),
        source: t.source.clone(),
    }
}

/// A copy status on the wire (no run: an empty `run_id`).
pub fn copy_status_to_wire(s: &CopyStatus) -> v1::CopyStatus {
    let CopyStatus {
        namespace,
        pvc,
        source,
        run_id,
        state,
        reason,
        waiting_since,
        wait_deadline,
        trigger,
        latest_trigger,
        gated,
        time,
        lease_deadline,
        holders_pending,
    } = s;
    v1::CopyStatus {
        namespace: namespace.clone(),
        pvc: pvc.clone(),
        source: source.clone(),
        run_id: run_id.map(|r| r.to_string()).unwrap_or_default(),
        state: copy_state_to_wire(*state).into(),
        reason: reason.clone(),
        waiting_since: opt_time_to_wire(*waiting_since),
        wait_deadline: opt_time_to_wire(*wait_deadline),
        trigger: trigger.clone(),
        latest_trigger: latest_trigger.clone(),
        gated: *gated,
        time: opt_time_to_wire(*time),
        lease_deadline: opt_time_to_wire(*lease_deadline),
        holders_pending: holders_pending.clone(),
    }
}

/// A copy state on the wire.
pub fn copy_state_to_wire(s: CopyState) -> v1::CopyState {
    match s {
        CopyState::Idle => v1::CopyState::Idle,
        CopyState::Pending => v1::CopyState::Pending,
        CopyState::WaitingForTrigger => v1::CopyState::WaitingForTrigger,
        CopyState::InProgress => v1::CopyState::InProgress,
        CopyState::Completed => v1::CopyState::Completed,
        CopyState::Failed => v1::CopyState::Failed,
        CopyState::TimedOut => v1::CopyState::TimedOut,
        CopyState::Aborted => v1::CopyState::Aborted,
    }
}

/// A wire copy state's number as the domain's (what a client reads): `None` when unspecified
/// or unknown.
pub fn copy_state_from_wire(n: i32) -> Option<CopyState> {
    match v1::CopyState::try_from(n).ok()? {
        v1::CopyState::Unspecified => None,
        v1::CopyState::Idle => Some(CopyState::Idle),
        v1::CopyState::Pending => Some(CopyState::Pending),
        v1::CopyState::WaitingForTrigger => Some(CopyState::WaitingForTrigger),
        v1::CopyState::InProgress => Some(CopyState::InProgress),
        v1::CopyState::Completed => Some(CopyState::Completed),
        v1::CopyState::Failed => Some(CopyState::Failed),
        v1::CopyState::TimedOut => Some(CopyState::TimedOut),
        v1::CopyState::Aborted => Some(CopyState::Aborted),
    }
}

/// A Trigger's `hold`, unchecked (absent: the scheduler's default hold).
pub fn hold(d: Option<&prost_types::Duration>) -> Option<RawDuration> {
    d.map(raw_duration)
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;
    use snapgate_scheduler_core::RunId;

    use super::*;
    use crate::wire::{common::time_from_wire, testing::at};

    /// A copy status read back from the wire (what a client sees), for round trips.
    fn from_wire(s: &v1::CopyStatus) -> CopyStatus {
        CopyStatus {
            namespace: s.namespace.clone(),
            pvc: s.pvc.clone(),
            source: s.source.clone(),
            run_id: s.run_id.parse().ok(),
            state: copy_state_from_wire(s.state).unwrap(),
            reason: s.reason.clone(),
            waiting_since: time_from_wire(s.waiting_since.as_ref()),
            wait_deadline: time_from_wire(s.wait_deadline.as_ref()),
            trigger: s.trigger.clone(),
            latest_trigger: s.latest_trigger.clone(),
            gated: s.gated,
            time: time_from_wire(s.time.as_ref()),
            lease_deadline: time_from_wire(s.lease_deadline.as_ref()),
            holders_pending: s.holders_pending.clone(),
        }
    }

    #[test]
    fn a_copy_status_with_every_field_set_goes_to_the_wire_and_back_unchanged() {
        let status = CopyStatus {
            namespace: "apps".into(),
            pvc: "data".into(),
            source: "db".into(),
            run_id: Some(RunId(7)),
            state: CopyState::InProgress,
            reason: "released".into(),
            waiting_since: Some(at(0, 1)),
            wait_deadline: Some(at(600, 0)),
            trigger: "v2".into(),
            latest_trigger: "v1".into(),
            gated: true,
            time: Some(at(5, 0)),
            lease_deadline: Some(at(65, 0)),
            holders_pending: vec!["app-b".into()],
        };
        let wire = copy_status_to_wire(&status);
        assert_eq!(wire.run_id, "run-7");
        assert_eq!(wire.state, v1::CopyState::InProgress as i32);
        assert_eq!(from_wire(&wire), status);
    }

    #[test]
    fn an_idle_copy_status_has_no_run_id_on_the_wire() {
        let idle = CopyStatus::idle("apps", "data");
        let wire = copy_status_to_wire(&idle);
        assert_eq!(wire.run_id, "");
        assert_eq!(wire.state, v1::CopyState::Idle as i32);
        assert_eq!(wire.time, None);
        assert_eq!(from_wire(&wire), idle);
    }

    #[test]
    fn copy_states_map_exhaustively_both_ways() {
        let states = [
            CopyState::Idle,
            CopyState::Pending,
            CopyState::WaitingForTrigger,
            CopyState::InProgress,
            CopyState::Completed,
            CopyState::Failed,
            CopyState::TimedOut,
            CopyState::Aborted,
        ];
        for s in states {
            assert_eq!(copy_state_from_wire(copy_state_to_wire(s).into()), Some(s));
        }
        for n in -2..=15 {
            match copy_state_from_wire(n) {
                Some(s) => assert_eq!(i32::from(copy_state_to_wire(s)), n),
                None => assert!(v1::CopyState::try_from(n).is_err() || n == 0, "{n}"),
            }
        }
    }

    #[test]
    fn a_copy_target_is_carried_as_sent() {
        let wire = v1::CopyTarget {
            namespace: "apps".into(),
            pvc: "data".into(),
            source: "db".into(),
        };
        assert_eq!(
            copy_target(&wire),
            CopyTarget {
                namespace: "apps".into(),
                pvc: "data".into(),
                source: "db".into(),
            }
        );
    }

    #[test]
    fn a_hold_is_carried_unchecked_and_absent_stays_absent() {
        assert_eq!(hold(None), None);
        for (seconds, nanos) in [(30, 0), (-1, 5), (i64::MAX, i32::MIN)] {
            assert_eq!(
                hold(Some(&prost_types::Duration { seconds, nanos })),
                Some(RawDuration { seconds, nanos })
            );
        }
    }
}
