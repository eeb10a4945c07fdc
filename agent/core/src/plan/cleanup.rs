//! CLEANUP: a consumed trigger recorded and the waiting annotations cleared (one patch), then
//! every temporary object of the source deleted; reported once nothing is left.

use snapgate_proto::v1::{self, report::Observation};

use super::{Action, Ctx, TemporaryKind};
use crate::annotations;

impl Ctx<'_> {
    pub(super) fn cleanup(&self) -> Vec<Action> {
        let mut out = Vec::new();
        let observed = annotations::observe(self.seen.pvc);
        // Before anything else, in one patch: a value that released the run but never reached
        // its copy point is recorded as consumed (it can never release a later run on the
        // PVC), and the waiting annotations of a run that ended without a copy are removed.
        if self.seen.pvc.is_some()
            && let Some(patch) = annotations::end_run(
                &observed,
                &self.directive.consumed_trigger,
                self.directive.clear_waiting,
            )
        {
            out.push(self.patch_source(patch));
        }
        // Everything of this source's runs, found by its cleanup label: this run's objects and
        // any an earlier run (or an earlier mover of the source) left behind. Caches are not
        // temporary and carry no cleanup label.
        let pending = !self.seen.temporaries.is_empty();
        for t in self.seen.temporaries.iter().filter(|t| !t.terminating) {
            out.push(match t.kind {
                TemporaryKind::Snapshot => Action::DeleteSnapshot(t.name.clone()),
                TemporaryKind::Pvc => Action::DeletePvc(t.name.clone()),
                TemporaryKind::Job => Action::DeleteJob(t.name.clone()),
            });
        }
        if !pending && out.is_empty() {
            out.push(Action::Report(Observation::CleanedUp(v1::CleanedUp {})));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use pretty_assertions::assert_eq;
    use snapgate_proto::v1::DirectivePhase;

    use super::*;
    use crate::plan::{PlanConfig, Temporary, plan, test_support::*};

    #[test]
    fn cleanup_deletes_what_the_source_made_and_reports_only_when_nothing_is_left() {
        let mut d = directive(DirectivePhase::Cleanup, v1::CopyMethod::Snapshot);
        d.clear_waiting = true;
        let source = pvc(
            "data",
            &[
                USE,
                (annotations::LATEST_COPY_STATUS, "WaitingForTrigger"),
                (annotations::LATEST_COPY_TRIGGER_WAITING_SINCE, "x"),
            ],
            None,
        );
        let temporaries = [
            Temporary {
                kind: TemporaryKind::Pvc,
                name: "volsync-db-src".into(),
                terminating: false,
            },
            Temporary {
                kind: TemporaryKind::Job,
                name: "volsync-rclone-src-db".into(),
                terminating: false,
            },
            Temporary {
                kind: TemporaryKind::Snapshot,
                name: "volsync-db-src".into(),
                terminating: true,
            },
        ];
        let mut s = seen(Some(&source));
        s.temporaries = &temporaries;
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        assert_eq!(
            kinds(&a),
            [
                "PatchPvc data",
                "DeletePvc volsync-db-src",
                "DeleteJob volsync-rclone-src-db"
            ],
            "an earlier mover's Job too; a terminating snapshot is waited for"
        );
        s.temporaries = &temporaries[2..];
        let clean = pvc("data", &[USE], None);
        s.pvc = Some(&clean);
        assert!(plan(&d, &s, &PlanConfig::default()).unwrap().is_empty());
        s.temporaries = &[];
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        assert_eq!(kinds(&a), ["Report CleanedUp"]);
    }

    #[test]
    fn cleanup_records_a_consumed_trigger_in_one_patch_before_anything_else() {
        let mut d = directive(DirectivePhase::Cleanup, v1::CopyMethod::Snapshot);
        d.consumed_trigger = "first".into();
        let stale = pvc(
            "data",
            &[
                USE,
                (annotations::COPY_TRIGGER, "first"),
                (annotations::LATEST_COPY_STATUS, "InProgress"),
            ],
            None,
        );
        let consumed = pvc(
            "data",
            &[
                USE,
                (annotations::COPY_TRIGGER, "first"),
                (annotations::LATEST_COPY_TRIGGER, "first"),
            ],
            None,
        );
        // A later run's InProgress, released by its own value while this cleanup lasts.
        let later = pvc(
            "data",
            &[
                USE,
                (annotations::COPY_TRIGGER, "second"),
                (annotations::LATEST_COPY_TRIGGER, "first"),
                (annotations::LATEST_COPY_STATUS, "InProgress"),
            ],
            None,
        );
        let snapshot = [Temporary {
            kind: TemporaryKind::Snapshot,
            name: "volsync-db-src".into(),
            terminating: false,
        }];
        let cases: [(Option<&PersistentVolumeClaim>, &[Temporary], &[&str]); 6] = [
            (
                Some(&stale),
                &snapshot,
                &["PatchPvc data", "DeleteSnapshot volsync-db-src"],
            ),
            (Some(&stale), &[], &["PatchPvc data"]),
            (
                Some(&consumed),
                &snapshot,
                &["DeleteSnapshot volsync-db-src"],
            ),
            (Some(&consumed), &[], &["Report CleanedUp"]),
            (Some(&later), &[], &["Report CleanedUp"]),
            // The PVC is gone: nothing to record.
            (None, &snapshot, &["DeleteSnapshot volsync-db-src"]),
        ];
        for (source, temporaries, want) in cases {
            let mut s = seen(source);
            s.temporaries = temporaries;
            let a = plan(&d, &s, &PlanConfig::default()).unwrap();
            assert_eq!(kinds(&a), want, "{source:?} {temporaries:?}");
        }
        let mut s = seen(Some(&stale));
        s.temporaries = &snapshot;
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        assert_eq!(
            patch_of(&a[0]),
            &serde_json::json!({"metadata": {"annotations": {
                annotations::LATEST_COPY_TRIGGER: "first",
                annotations::LATEST_COPY_STATUS: null,
            }}}),
            "the value is spent and the stale InProgress is gone, in one patch"
        );
    }
}
