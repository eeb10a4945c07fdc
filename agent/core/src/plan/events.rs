//! The Kubernetes Events a plan records about the source PVC, named so that a replanned step
//! never records one twice.

use chrono::{DateTime, Utc};
use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference, PersistentVolumeClaim},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time},
};

use super::{Action, Ctx};
use crate::{bounds, names};

impl Ctx<'_> {
    /// A Kubernetes Event about `pvc`, named deterministically per run, reason and (for mover
    /// Jobs) attempt or (for a lease) directive generation, so that a replanned step never
    /// records it twice.
    pub(super) fn event(
        &self,
        pvc: &PersistentVolumeClaim,
        reason: &str,
        attempt: Option<u64>,
        type_: &str,
        message: String,
    ) -> Action {
        let key = format!(
            "{}.{}.{}{}",
            pvc.metadata.name.as_deref().unwrap_or_default(),
            self.run.run_id,
            reason.to_ascii_lowercase(),
            attempt.map(|a| format!("-{a}")).unwrap_or_default()
        );
        let now = bounds::clamp_to_proto_range(self.seen.now);
        Action::Event(Box::new(Event {
            metadata: ObjectMeta {
                name: Some(event_name(&key)),
                namespace: Some(self.run.namespace.to_owned()),
                labels: Some(names::source_labels(self.run.source)),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                name: pvc.metadata.name.clone(),
                namespace: Some(self.run.namespace.to_owned()),
                uid: pvc.metadata.uid.clone(),
                resource_version: pvc.metadata.resource_version.clone(),
                ..Default::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(bounds::truncate(
                &bounds::escape_invisible(&message),
                bounds::MAX_MESSAGE_BYTES,
            )),
            type_: Some(type_.to_owned()),
            count: Some(1),
            first_timestamp: Some(Time(to_jiff(now))),
            last_timestamp: Some(Time(to_jiff(now))),
            event_time: Some(MicroTime(to_jiff(now))),
            reporting_component: Some("snapgate-agent".into()),
            reporting_instance: Some("snapgate-agent".into()),
            action: Some(reason.to_owned()),
            source: Some(EventSource {
                component: Some("snapgate-agent".into()),
                host: None,
            }),
            ..Default::default()
        }))
    }
}

/// `key` when it is a valid object name (a DNS-1123 subdomain), else a deterministic label.
fn event_name(key: &str) -> String {
    if snapgate_contract::is_dns_subdomain(key) {
        key.to_owned()
    } else {
        names::dns_label(key)
    }
}

pub(super) fn to_jiff(t: DateTime<Utc>) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::new(
        t.timestamp(),
        i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    )
    .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use snapgate_proto::v1::{self, DirectivePhase};

    use super::*;
    use crate::plan::{PlanConfig, plan, test_support::*};

    #[test]
    fn an_event_is_named_by_its_key_whenever_kubernetes_takes_the_key_for_a_name() {
        // A PVC name may be one label of up to 253 characters: the key is still a name.
        let long_pvc = format!("{}.run-7.transferstarted-1", "d".repeat(100));
        let over = format!("{}.run-7.transferstarted-1", "d".repeat(240));
        let cases = [
            ("data.run-7.srcpvcwaitingforcopytrigger", true),
            ("db.example.run-7.transferfailed-2", true),
            (long_pvc.as_str(), true),
            // Not a name: over 253, an upper-case letter, an invisible character.
            (over.as_str(), false),
            ("Data.run-7.transferstarted-1", false),
            ("data.run-\u{202e}7.transferstarted-1", false),
        ];
        for (key, kept) in cases {
            let name = event_name(key);
            assert_eq!(name == key, kept, "{key:?} -> {name:?}");
            assert!(snapgate_contract::is_dns_subdomain(&name), "{name:?}");
            if !kept {
                assert_eq!(name, names::dns_label(key), "a deterministic label");
            }
        }
        // Planned: the Event about a PVC whose name is one 100-character label.
        let d = directive(DirectivePhase::Wait, v1::CopyMethod::Snapshot);
        let long = pvc(&"d".repeat(100), &[USE], None);
        let a = plan(&d, &seen(Some(&long)), &PlanConfig::default()).unwrap();
        let Some(Action::Event(e)) = a.get(1) else {
            panic!("{:?}", kinds(&a))
        };
        assert_eq!(
            e.metadata.name.as_deref(),
            Some(format!("{}.run-7.srcpvcwaitingforcopytrigger", "d".repeat(100)).as_str())
        );
    }

    #[test]
    fn event_messages_escape_invisible_characters_and_stay_under_a_kibibyte() {
        let mut d = directive(DirectivePhase::Wait, v1::CopyMethod::Snapshot);
        d.run_id = format!("run-\u{202E}{}", "7".repeat(5000));
        let fresh = pvc("data", &[USE], None);
        let a = plan(&d, &seen(Some(&fresh)), &PlanConfig::default()).unwrap();
        let Some(Action::Event(e)) = a.get(1) else {
            panic!("{:?}", kinds(&a))
        };
        let message = e.message.as_deref().unwrap_or_default();
        assert!(
            message.len() <= bounds::MAX_MESSAGE_BYTES,
            "{}",
            message.len()
        );
        assert!(message.contains("run-\\u{202e}777"), "{message}");
        assert!(snapgate_contract::is_dns_subdomain(
            e.metadata.name.as_deref().unwrap_or_default()
        ));
    }
}
