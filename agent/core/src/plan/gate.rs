//! GATE: a paused source's waiting annotations are cleared, then the PVC is reported.

use snapgate_proto::v1::report::Observation;

use super::{Action, Ctx};
use crate::annotations;

impl Ctx<'_> {
    pub(super) fn gate(&self) -> Vec<Action> {
        let observed = annotations::observe(self.seen.pvc);
        // The source was paused while its run waited: no application may be asked to quiesce,
        // so snapgate's waiting annotations go first; the cleared PVC is reported next.
        if self.directive.clear_waiting
            && self.seen.pvc.is_some()
            && let Some(patch) = annotations::clear_waiting(&observed)
        {
            return vec![self.patch_source(patch)];
        }
        vec![Action::Report(Observation::Pvc(observed))]
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use pretty_assertions::assert_eq;
    use snapgate_proto::v1::{self, DirectivePhase};

    use super::*;
    use crate::plan::{PlanConfig, plan, test_support::*};

    #[test]
    fn a_paused_sources_gate_removes_the_waiting_annotations_before_it_reports_the_pvc() {
        let waiting = pvc(
            "data",
            &[
                USE,
                (annotations::COPY_TRIGGER, "old"),
                (annotations::LATEST_COPY_TRIGGER, "old"),
                (annotations::LATEST_COPY_STATUS, "WaitingForTrigger"),
                (
                    annotations::LATEST_COPY_TRIGGER_WAITING_SINCE,
                    "2026-03-04T05:00:00Z",
                ),
            ],
            None,
        );
        let cleared = pvc(
            "data",
            &[
                USE,
                (annotations::COPY_TRIGGER, "old"),
                (annotations::LATEST_COPY_TRIGGER, "old"),
            ],
            None,
        );
        let completed = pvc(
            "data",
            &[USE, (annotations::LATEST_COPY_STATUS, "Completed")],
            None,
        );
        let cases: [(bool, Option<&PersistentVolumeClaim>, &[&str]); 6] = [
            // Paused while waiting: the annotations go first, in one patch.
            (true, Some(&waiting), &["PatchPvc data"]),
            // Then the cleared PVC is reported, as on any GATE.
            (true, Some(&cleared), &["Report PvcObserved"]),
            // Nothing snapgate-owned to clear: a Completed copy is left alone.
            (true, Some(&completed), &["Report PvcObserved"]),
            (true, None, &["Report PvcObserved"]),
            // Resumed (or never paused): the PVC is reported as it is.
            (false, Some(&waiting), &["Report PvcObserved"]),
            (false, Some(&cleared), &["Report PvcObserved"]),
        ];
        for (clear, source, want) in cases {
            let mut d = directive(DirectivePhase::Gate, v1::CopyMethod::Snapshot);
            d.clear_waiting = clear;
            let a = plan(&d, &seen(source), &PlanConfig::default()).unwrap();
            assert_eq!(kinds(&a), want, "clear_waiting {clear}, {source:?}");
        }
        let mut d = directive(DirectivePhase::Gate, v1::CopyMethod::Snapshot);
        d.clear_waiting = true;
        let a = plan(&d, &seen(Some(&waiting)), &PlanConfig::default()).unwrap();
        assert_eq!(
            patch_of(&a[0]),
            &serde_json::json!({"metadata": {"annotations": {
                annotations::LATEST_COPY_STATUS: null,
                annotations::LATEST_COPY_TRIGGER_WAITING_SINCE: null,
            }}})
        );
        let a = plan(&d, &seen(Some(&cleared)), &PlanConfig::default()).unwrap();
        assert_eq!(
            a,
            [Action::Report(Observation::Pvc(v1::PvcObserved {
                exists: true,
                use_copy_trigger: true,
                copy_trigger: "old".into(),
                latest_copy_trigger: "old".into(),
                ..Default::default()
            }))]
        );
    }
}
