//! `snapgate.v1.AgentService`'s messages: directives to agents, their reports and lease
//! requests.

use snapgate_proto::v1::{self, report::Observation};
use snapgate_scheduler_core::model::{
    AgentError, AgentTime, CopyCompleted, Directive, DirectivePhase, LeaseRequest, MoverFailed,
    MoverFinished, PvcObserved, Report, ReportObservation,
};

use super::{
    common::{author_to_wire, opt_time_to_wire, source_ref, spec_to_wire, time_from_wire},
    sources::mover_stuck_from_wire,
};

/// A directive on the wire.
pub fn directive_to_wire(d: &Directive) -> v1::Directive {
    let Directive {
        run_id,
        source,
        spec,
        phase,
        generation,
        waiting_since,
        timeout_reported,
        trigger,
        write_copy_trigger,
        gated,
        clear_waiting,
        restic_prune,
        mover_failures,
        consumed_trigger,
        lease,
        author,
    } = d;
    v1::Directive {
        run_id: run_id.to_string(),
        source: Some(source_ref(source)),
        spec: Some(spec_to_wire(spec)),
        phase: directive_phase_to_wire(*phase).into(),
        generation: *generation,
        waiting_since: opt_time_to_wire(*waiting_since),
        timeout_reported: *timeout_reported,
        trigger: trigger.clone(),
        write_copy_trigger: *write_copy_trigger,
        gated: *gated,
        clear_waiting: *clear_waiting,
        restic_prune: *restic_prune,
        mover_failures: *mover_failures,
        consumed_trigger: consumed_trigger.clone(),
        lease: *lease,
        author: author.as_ref().map(author_to_wire),
    }
}

/// A directive's phase on the wire.
pub fn directive_phase_to_wire(p: DirectivePhase) -> v1::DirectivePhase {
    match p {
        DirectivePhase::Gate => v1::DirectivePhase::Gate,
        DirectivePhase::Wait => v1::DirectivePhase::Wait,
        DirectivePhase::Copy => v1::DirectivePhase::Copy,
        DirectivePhase::Transfer => v1::DirectivePhase::Transfer,
        DirectivePhase::Cleanup => v1::DirectivePhase::Cleanup,
    }
}

/// A wire phase's number as the domain's (what an agent reads): `None` when unspecified or
/// unknown.
pub fn directive_phase_from_wire(n: i32) -> Option<DirectivePhase> {
    match v1::DirectivePhase::try_from(n).ok()? {
        v1::DirectivePhase::Unspecified => None,
        v1::DirectivePhase::Gate => Some(DirectivePhase::Gate),
        v1::DirectivePhase::Wait => Some(DirectivePhase::Wait),
        v1::DirectivePhase::Copy => Some(DirectivePhase::Copy),
        v1::DirectivePhase::Transfer => Some(DirectivePhase::Transfer),
        v1::DirectivePhase::Cleanup => Some(DirectivePhase::Cleanup),
    }
}

/// An agent's report, as sent (the run id unchecked): no observation is `None`; an invalid
/// time (a copy point, a stuck mover's since and deadline) is unset.
pub fn report(r: &v1::Report) -> Report {
    let v1::Report {
        run_id,
        generation,
        observation,
    } = r;
    Report {
        run_id: run_id.clone(),
        generation: *generation,
        observation: observation.as_ref().map(observation_from_wire),
    }
}

fn observation_from_wire(o: &Observation) -> ReportObservation {
    match o {
        Observation::Pvc(p) => ReportObservation::Pvc(pvc_observed(p)),
        Observation::CopyCompleted(c) => ReportObservation::CopyCompleted(CopyCompleted {
            copy_name: c.copy_name.clone(),
            time: match &c.time {
                None => AgentTime::Unset,
                Some(t) => time_from_wire(Some(t)).map_or(AgentTime::Invalid, AgentTime::At),
            },
        }),
        Observation::MoverFinished(m) => ReportObservation::MoverFinished(MoverFinished {
            succeeded: m.succeeded,
            logs: m.logs.clone(),
        }),
        Observation::MoverFailed(m) => ReportObservation::MoverFailed(MoverFailed {
            attempt: m.attempt,
            logs: m.logs.clone(),
        }),
        Observation::CleanedUp(v1::CleanedUp {}) => ReportObservation::CleanedUp,
        Observation::Error(e) => ReportObservation::Error(AgentError {
            reason: e.reason.clone(),
            message: e.message.clone(),
            retryable: e.retryable,
        }),
        Observation::MoverStuck(m) => ReportObservation::MoverStuck(mover_stuck_from_wire(m)),
    }
}

/// A PVC's copy-trigger annotations, as the agent read them.
pub fn pvc_observed(p: &v1::PvcObserved) -> PvcObserved {
    let v1::PvcObserved {
        exists,
        use_copy_trigger,
        copy_trigger,
        latest_copy_trigger,
        latest_copy_status,
        waiting_since,
    } = p;
    PvcObserved {
        exists: *exists,
        use_copy_trigger: *use_copy_trigger,
        copy_trigger: copy_trigger.clone(),
        latest_copy_trigger: latest_copy_trigger.clone(),
        latest_copy_status: latest_copy_status.clone(),
        waiting_since: waiting_since.clone(),
    }
}

/// An agent's lease request, as sent (the run id unchecked).
pub fn lease_request(r: &v1::LeaseRequest) -> LeaseRequest {
    LeaseRequest {
        run_id: r.run_id.clone(),
        generation: r.generation,
        request_id: r.request_id,
    }
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;
    use snapgate_scheduler_core::{RunId, SourceKey, model::MoverStuck};

    use super::*;
    use crate::wire::{
        common::{author_from_wire, source_key, stored_spec, time_to_wire},
        sources::mover_stuck_to_wire,
        testing::{self, at, full_movers, full_spec},
    };

    fn directive() -> Directive {
        Directive {
            run_id: RunId(3),
            source: SourceKey::new("apps", "db"),
            spec: full_spec(full_movers().remove(1)),
            phase: DirectivePhase::Copy,
            generation: 4,
            waiting_since: Some(at(1, 2)),
            timeout_reported: true,
            trigger: "v1".into(),
            write_copy_trigger: true,
            gated: true,
            clear_waiting: true,
            restic_prune: true,
            mover_failures: 2,
            consumed_trigger: "v0".into(),
            lease: true,
            author: Some(testing::author()),
        }
    }

    /// A directive read back from the wire (what an agent sees), for round trips.
    fn from_wire(d: &v1::Directive) -> Directive {
        Directive {
            run_id: d.run_id.parse().unwrap(),
            source: source_key(d.source.as_ref().unwrap()),
            spec: stored_spec(d.spec.as_ref().unwrap()).unwrap(),
            phase: directive_phase_from_wire(d.phase).unwrap(),
            generation: d.generation,
            waiting_since: time_from_wire(d.waiting_since.as_ref()),
            timeout_reported: d.timeout_reported,
            trigger: d.trigger.clone(),
            write_copy_trigger: d.write_copy_trigger,
            gated: d.gated,
            clear_waiting: d.clear_waiting,
            restic_prune: d.restic_prune,
            mover_failures: d.mover_failures,
            consumed_trigger: d.consumed_trigger.clone(),
            lease: d.lease,
            author: d.author.as_ref().map(author_from_wire),
        }
    }

    #[test]
    fn a_directive_with_every_field_set_goes_to_the_wire_and_back_unchanged() {
        let d = directive();
        let wire = directive_to_wire(&d);
        assert_eq!(wire.run_id, "run-3");
        assert_eq!(wire.phase, v1::DirectivePhase::Copy as i32);
        assert!(wire.spec.as_ref().unwrap().rclone.is_some());
        assert_eq!(from_wire(&wire), d);
        let bare = Directive {
            waiting_since: None,
            author: None,
            ..directive()
        };
        let wire = directive_to_wire(&bare);
        assert_eq!((wire.waiting_since, wire.author.as_ref()), (None, None));
        assert_eq!(from_wire(&wire), bare);
    }

    #[test]
    fn directive_phases_map_exhaustively_both_ways() {
        let phases = [
            DirectivePhase::Gate,
            DirectivePhase::Wait,
            DirectivePhase::Copy,
            DirectivePhase::Transfer,
            DirectivePhase::Cleanup,
        ];
        for p in phases {
            assert_eq!(
                directive_phase_from_wire(directive_phase_to_wire(p).into()),
                Some(p)
            );
        }
        for n in -2..=10 {
            match directive_phase_from_wire(n) {
                Some(p) => assert_eq!(i32::from(directive_phase_to_wire(p)), n),
                None => assert!(v1::DirectivePhase::try_from(n).is_err() || n == 0, "{n}"),
            }
        }
    }

    fn report_of(o: Option<Observation>) -> Report {
        report(&v1::Report {
            run_id: "run-9".into(),
            generation: 5,
            observation: o,
        })
    }

    #[test]
    fn every_observation_of_a_report_is_carried() {
        let pvc = v1::PvcObserved {
            exists: true,
            use_copy_trigger: true,
            copy_trigger: "v2".into(),
            latest_copy_trigger: "v1".into(),
            latest_copy_status: "WaitingForTrigger".into(),
            waiting_since: "not a time".into(),
        };
        let cases = [
            (
                Observation::Pvc(pvc),
                ReportObservation::Pvc(PvcObserved {
                    exists: true,
                    use_copy_trigger: true,
                    copy_trigger: "v2".into(),
                    latest_copy_trigger: "v1".into(),
                    latest_copy_status: "WaitingForTrigger".into(),
                    waiting_since: "not a time".into(),
                }),
            ),
            (
                Observation::CopyCompleted(v1::CopyCompleted {
                    copy_name: "snap".into(),
                    time: Some(time_to_wire(at(3, 0))),
                }),
                ReportObservation::CopyCompleted(CopyCompleted {
                    copy_name: "snap".into(),
                    time: AgentTime::At(at(3, 0)),
                }),
            ),
            (
                Observation::MoverFinished(v1::MoverFinished {
                    succeeded: true,
                    logs: "ok".into(),
                }),
                ReportObservation::MoverFinished(MoverFinished {
                    succeeded: true,
                    logs: "ok".into(),
                }),
            ),
            (
                Observation::MoverFailed(v1::MoverFailed {
                    attempt: 3,
                    logs: "boom".into(),
                }),
                ReportObservation::MoverFailed(MoverFailed {
                    attempt: 3,
                    logs: "boom".into(),
                }),
            ),
            (
                Observation::CleanedUp(v1::CleanedUp {}),
                ReportObservation::CleanedUp,
            ),
            (
                Observation::Error(v1::AgentError {
                    reason: "PvcNotFound".into(),
                    message: "gone".into(),
                    retryable: true,
                }),
                ReportObservation::Error(AgentError {
                    reason: "PvcNotFound".into(),
                    message: "gone".into(),
                    retryable: true,
                }),
            ),
            (
                Observation::MoverStuck(mover_stuck_to_wire(&testing::stuck())),
                ReportObservation::MoverStuck(testing::stuck()),
            ),
        ];
        for (wire, want) in cases {
            assert_eq!(
                report_of(Some(wire)),
                Report {
                    run_id: "run-9".into(),
                    generation: 5,
                    observation: Some(want),
                }
            );
        }
    }

    #[test]
    fn a_report_without_an_observation_has_none_and_an_unchecked_run_id() {
        let r = report(&v1::Report {
            run_id: "not a run".into(),
            generation: 0,
            observation: None,
        });
        assert_eq!(r.observation, None);
        assert_eq!(r.run_id, "not a run");
    }

    #[test]
    fn invalid_times_in_a_report_are_marked_invalid_not_a_panic() {
        let bad = Some(prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: -7,
        });
        let r = report_of(Some(Observation::CopyCompleted(v1::CopyCompleted {
            copy_name: "snap".into(),
            time: bad,
        })));
        assert_eq!(
            r.observation,
            Some(ReportObservation::CopyCompleted(CopyCompleted {
                copy_name: "snap".into(),
                time: AgentTime::Invalid
            }))
        );
        let r = report_of(Some(Observation::MoverStuck(v1::MoverStuck {
            since: bad,
            deadline: bad,
            ..Default::default()
        })));
        assert_eq!(
            r.observation,
            Some(ReportObservation::MoverStuck(MoverStuck::default()))
        );
    }

    #[test]
    fn a_lease_request_is_carried_as_sent() {
        let r = lease_request(&v1::LeaseRequest {
            run_id: "run-4".into(),
            generation: u64::MAX,
            request_id: 17,
        });
        assert_eq!(
            r,
            LeaseRequest {
                run_id: "run-4".into(),
                generation: u64::MAX,
                request_id: 17,
            }
        );
    }
}
