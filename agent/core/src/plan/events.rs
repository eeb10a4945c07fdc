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
    let valid = key.len() <= 253 && key.split('.').all(names::is_dns_label) && !key.is_empty();
    if valid {
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
