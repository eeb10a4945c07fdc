//! snapgate messages as JSON values, in VolSync's shape (prost types have no serde).
//!
//! A source prints as a `ReplicationSource` (`apiVersion`, `kind`, `metadata`, `spec`,
//! `status`) whose `spec` reads back with [`crate::volsync`] unchanged: only fields that are
//! set are written, with VolSync's camelCase keys and enum spellings (`copyMethod: Snapshot`).
//! Times are RFC 3339 UTC, durations Go-style (`1m30s`).

use std::collections::BTreeMap;

use chrono::SecondsFormat;
use serde_json::{Map, Value, json};
use snapgate_proto::json::struct_to_json;
use snapgate_proto::v1::{
    self, CopyMethod, CopyState, CustomCa, MoverVolume, RunPhase, RunReason, RunResult, SourceSpec,
    TimeoutPolicy,
};

use crate::{duration, volsync};

/// A JSON object under construction that leaves out unset fields.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn put(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        self.0.insert(key.to_owned(), value.into());
        self
    }
    fn text(&mut self, key: &str, value: &str) -> &mut Self {
        if !value.is_empty() {
            self.put(key, value);
        }
        self
    }
    fn opt_text(&mut self, key: &str, value: Option<&String>) -> &mut Self {
        if let Some(v) = value {
            self.put(key, v.as_str());
        }
        self
    }
    fn opt_int(&mut self, key: &str, value: Option<i32>) -> &mut Self {
        if let Some(v) = value {
            self.put(key, v);
        }
        self
    }
    fn flag(&mut self, key: &str, value: bool) -> &mut Self {
        if value {
            self.put(key, true);
        }
        self
    }
    fn list(&mut self, key: &str, value: &[String]) -> &mut Self {
        if !value.is_empty() {
            self.put(key, value.to_vec());
        }
        self
    }
    fn time(&mut self, key: &str, value: Option<&prost_types::Timestamp>) -> &mut Self {
        if let Some(t) = value {
            self.put(key, timestamp(t));
        }
        self
    }
    fn duration(&mut self, key: &str, value: Option<&prost_types::Duration>) -> &mut Self {
        if let Some(d) = value {
            self.put(key, duration::format(duration::from_proto(d)));
        }
        self
    }
    fn object(&mut self, key: &str, value: Option<Obj>) -> &mut Self {
        if let Some(v) = value {
            self.put(key, Value::Object(v.0));
        }
        self
    }
    fn structure(&mut self, key: &str, value: Option<&prost_types::Struct>) -> &mut Self {
        if let Some(s) = value {
            self.put(key, struct_to_json(s));
        }
        self
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

/// A protobuf timestamp as RFC 3339 UTC to the second (`2026-01-02T03:04:05Z`), as Kubernetes
/// writes times.
pub fn timestamp(t: &prost_types::Timestamp) -> String {
    to_datetime(t).to_rfc3339_opts(SecondsFormat::Secs, true)
}

use snapgate_proto::time::to_datetime;

/// `COPY_STATE_WAITING_FOR_TRIGGER` → `WaitingForTrigger`.
pub fn enum_word(proto_name: &str, prefix: &str) -> String {
    proto_name
        .strip_prefix(prefix)
        .unwrap_or(proto_name)
        .split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let lower = w.to_ascii_lowercase();
            let mut chars = lower.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// A copy state's word: `WaitingForTrigger`, `Completed`, ...
pub fn copy_state(state: i32) -> String {
    let state = CopyState::try_from(state).unwrap_or(CopyState::Unspecified);
    enum_word(state.as_str_name(), "COPY_STATE_")
}

/// A run phase's word: `WaitingForTrigger`, `Transferring`, ...
pub fn run_phase(phase: i32) -> String {
    let phase = RunPhase::try_from(phase).unwrap_or(RunPhase::Unspecified);
    enum_word(phase.as_str_name(), "RUN_PHASE_")
}

/// A run result's word: `Successful`, `Failed`, ... (empty while running).
pub fn run_result(result: i32) -> String {
    match RunResult::try_from(result).unwrap_or(RunResult::Unspecified) {
        RunResult::Unspecified => String::new(),
        r => enum_word(r.as_str_name(), "RUN_RESULT_"),
    }
}

/// A run reason's word: `Schedule`, `SyncNow`, ...
pub fn run_reason(reason: i32) -> String {
    let reason = RunReason::try_from(reason).unwrap_or(RunReason::Unspecified);
    enum_word(reason.as_str_name(), "RUN_REASON_")
}

fn copy_method(m: i32) -> Option<&'static str> {
    match CopyMethod::try_from(m).ok()? {
        CopyMethod::Unspecified => None,
        m => Some(m.as_str_name()),
    }
}

fn custom_ca(ca: Option<&CustomCa>) -> Option<Obj> {
    let ca = ca?;
    let mut o = Obj::default();
    o.text("secretName", &ca.secret_name)
        .text("configMapName", &ca.config_map_name)
        .text("key", &ca.key);
    Some(o)
}

fn mover_volumes(volumes: &[MoverVolume]) -> Value {
    Value::Array(
        volumes
            .iter()
            .map(|v| {
                let mut o = Obj::default();
                o.text("mountPath", &v.mount_path)
                    .structure("volumeSource", v.volume_source.as_ref());
                o.done()
            })
            .collect(),
    )
}

macro_rules! volume_options {
    ($o:expr, $m:expr) => {{
        let m = $m;
        if let Some(method) = copy_method(m.copy_method) {
            $o.put("copyMethod", method);
        }
        $o.opt_text("capacity", m.capacity.as_ref())
            .opt_text("storageClassName", m.storage_class_name.as_ref())
            .list("accessModes", &m.access_modes)
            .opt_text(
                "volumeSnapshotClassName",
                m.volume_snapshot_class_name.as_ref(),
            )
            .structure("moverSecurityContext", m.mover_security_context.as_ref())
            .opt_text("moverServiceAccount", m.mover_service_account.as_ref())
            .structure("moverResources", m.mover_resources.as_ref())
            .structure("moverAffinity", m.mover_affinity.as_ref());
        if !m.mover_pod_labels.is_empty() {
            let labels: BTreeMap<&String, &String> = m.mover_pod_labels.iter().collect();
            $o.put("moverPodLabels", json!(labels));
        }
        if !m.mover_volumes.is_empty() {
            $o.put("moverVolumes", mover_volumes(&m.mover_volumes));
        }
    }};
}

/// A source spec in VolSync's `spec` shape (what [`crate::volsync`] reads).
pub fn spec(s: &SourceSpec) -> Value {
    let mut o = Obj::default();
    o.text("sourcePVC", &s.source_pvc);
    if let Some(t) = &s.trigger {
        let mut trigger = Obj::default();
        trigger
            .opt_text("schedule", t.schedule.as_ref())
            .opt_text("manual", t.manual.as_ref());
        o.object("trigger", Some(trigger));
    }
    if let Some(r) = &s.restic {
        let mut m = Obj::default();
        volume_options!(m, r);
        m.text("repository", &r.repository);
        if let Some(retain) = &r.retain {
            let mut k = Obj::default();
            k.opt_int("hourly", retain.hourly)
                .opt_int("daily", retain.daily)
                .opt_int("weekly", retain.weekly)
                .opt_int("monthly", retain.monthly)
                .opt_int("yearly", retain.yearly)
                .opt_text("within", retain.within.as_ref())
                .opt_text("last", retain.last.as_ref());
            m.object("retain", Some(k));
        }
        m.opt_int("pruneIntervalDays", r.prune_interval_days)
            .opt_text("cacheCapacity", r.cache_capacity.as_ref())
            .opt_text("cacheStorageClassName", r.cache_storage_class_name.as_ref())
            .list("cacheAccessModes", &r.cache_access_modes)
            .object("customCA", custom_ca(r.custom_ca.as_ref()))
            .opt_text("unlock", r.unlock.as_ref())
            .flag("keepCache", r.keep_cache);
        o.object("restic", Some(m));
    }
    if let Some(r) = &s.rclone {
        let mut m = Obj::default();
        volume_options!(m, r);
        m.text("rcloneConfig", &r.rclone_config)
            .text("rcloneConfigSection", &r.rclone_config_section)
            .text("rcloneDestPath", &r.rclone_dest_path)
            .object("customCA", custom_ca(r.custom_ca.as_ref()));
        o.object("rclone", Some(m));
    }
    if let Some(r) = &s.rsync {
        let mut m = Obj::default();
        volume_options!(m, r);
        m.text("sshKeys", &r.ssh_keys)
            .text("address", &r.address)
            .opt_int("port", r.port)
            .opt_text("sshUser", r.ssh_user.as_ref())
            .opt_text("path", r.path.as_ref());
        o.object("rsync", Some(m));
    }
    if let Some(r) = &s.rsync_tls {
        let mut m = Obj::default();
        volume_options!(m, r);
        m.text("keySecret", &r.key_secret)
            .text("address", &r.address)
            .opt_int("port", r.port);
        o.object("rsyncTLS", Some(m));
    }
    o.flag("paused", s.paused)
        .text("timeZone", &s.time_zone)
        .duration("jitter", s.jitter.as_ref());
    if let Some(c) = &s.copy_trigger {
        let policy = TimeoutPolicy::try_from(c.on_timeout).unwrap_or(TimeoutPolicy::KeepWaiting);
        let mut ct = Obj::default();
        ct.duration("waitTimeout", c.wait_timeout.as_ref())
            .put("onTimeout", policy.as_str_name())
            .list("holders", &c.holders)
            .list("allowedServiceAccounts", &c.allowed_service_accounts);
        o.object("copyTrigger", Some(ct));
    }
    o.flag("skipInitialRun", s.skip_initial_run);
    o.done()
}

fn mover_status(m: Option<&v1::MoverStatus>) -> Option<Obj> {
    let m = m?;
    let mut o = Obj::default();
    o.text("result", &m.result).text("logs", &m.logs);
    Some(o)
}

fn mover_stuck(m: Option<&v1::MoverStuck>) -> Option<Obj> {
    let m = m?;
    let mut o = Obj::default();
    o.text("reason", &m.reason)
        .text("message", &m.message)
        .text("pod", &m.pod)
        .text("job", &m.job)
        .put("attempt", m.attempt)
        .time("since", m.since.as_ref())
        .time("deadline", m.deadline.as_ref());
    Some(o)
}

/// A source's status in VolSync's `status` shape, plus snapgate's fields.
pub fn status(s: &v1::SourceStatus) -> Value {
    let mut o = Obj::default();
    o.time("lastSyncTime", s.last_sync_time.as_ref())
        .time("lastSyncStartTime", s.last_sync_start_time.as_ref())
        .duration("lastSyncDuration", s.last_sync_duration.as_ref())
        .time("nextSyncTime", s.next_sync_time.as_ref())
        .text("lastManualSync", &s.last_manual_sync)
        .object(
            "latestMoverStatus",
            mover_status(s.latest_mover_status.as_ref()),
        );
    if !s.conditions.is_empty() {
        let conditions: Vec<Value> = s
            .conditions
            .iter()
            .map(|c| {
                let mut k = Obj::default();
                k.text("type", &c.r#type)
                    .text("status", &c.status)
                    .text("reason", &c.reason)
                    .text("message", &c.message)
                    .time("lastTransitionTime", c.last_transition_time.as_ref());
                k.done()
            })
            .collect();
        o.put("conditions", conditions);
    }
    if let Some(t) = &s.last_pruned {
        o.put("restic", json!({ "lastPruned": timestamp(t) }));
    }
    o.text("currentRunId", &s.current_run_id)
        .text("pauseNote", &s.pause_note);
    if s.missed_intervals > 0 {
        o.put("missedIntervals", s.missed_intervals);
    }
    o.text("message", &s.message);
    o.done()
}

/// A source as a VolSync `ReplicationSource` object.
pub fn source(s: &v1::Source) -> Value {
    let mut metadata = Obj::default();
    metadata.put("name", s.name.as_str());
    metadata.put("namespace", s.namespace.as_str());
    metadata.time("creationTimestamp", s.create_time.as_ref());
    metadata.put("generation", s.version);
    let mut o = Obj::default();
    o.put("apiVersion", volsync::API_VERSION)
        .put("kind", volsync::KIND)
        .object("metadata", Some(metadata))
        .put(
            "spec",
            s.spec
                .as_ref()
                .map(spec)
                .unwrap_or_else(|| Value::Object(Map::new())),
        );
    if let Some(st) = &s.status {
        let mut st = status(st);
        // Who last applied the spec (with authentication on): the scheduler's record, read
        // back and not stored, as the rest of the status.
        if let (Some(a), Some(map)) = (&s.author, st.as_object_mut())
            && !a.user.is_empty()
        {
            map.insert("author".into(), a.user.as_str().into());
        }
        o.put("status", st);
    }
    o.done()
}

/// A run with its timeline.
pub fn run(r: &v1::Run) -> Value {
    let mut o = Obj::default();
    o.put("id", r.id.as_str());
    if let Some(s) = &r.source {
        o.put(
            "source",
            json!({ "namespace": s.namespace, "name": s.name }),
        );
    }
    o.text("pvc", &r.pvc)
        .put("reason", run_reason(r.reason))
        .put("phase", run_phase(r.phase))
        .text("result", &run_result(r.result))
        .text("trigger", &r.trigger)
        .text("releasedBy", &r.released_by)
        .text(
            "author",
            r.author
                .as_ref()
                .map(|a| a.user.as_str())
                .unwrap_or_default(),
        )
        .text("requestId", &r.request_id)
        .put("gated", r.gated)
        .flag("timeoutReported", r.timeout_reported)
        .time("startTime", r.start_time.as_ref())
        .time("waitingSince", r.waiting_since.as_ref())
        .time("waitDeadline", r.wait_deadline.as_ref())
        .time("copyTime", r.copy_time.as_ref())
        .time("endTime", r.end_time.as_ref())
        .text("message", &r.message)
        .object("moverStatus", mover_status(r.mover_status.as_ref()))
        .object("moverStuck", mover_stuck(r.mover_stuck.as_ref()))
        .text("latestTrigger", &r.latest_trigger)
        .flag("resticPrune", r.restic_prune)
        .time("leaseDeadline", r.lease_deadline.as_ref());
    if r.mover_failures > 0 {
        o.put("moverFailures", r.mover_failures);
    }
    if !r.spent_triggers.is_empty() {
        o.put("spentTriggers", r.spent_triggers.clone());
    }
    let timeline: Vec<Value> = r
        .timeline
        .iter()
        .map(|t| {
            let mut e = Obj::default();
            e.time("time", t.time.as_ref())
                .put("event", t.event.as_str())
                .text("message", &t.message);
            e.done()
        })
        .collect();
    o.put("timeline", timeline);
    o.done()
}

/// A copy status, as `watch -o json` prints it.
pub fn copy_status(s: &v1::CopyStatus) -> Value {
    let mut o = Obj::default();
    o.put("namespace", s.namespace.as_str())
        .put("pvc", s.pvc.as_str())
        .text("source", &s.source)
        .text("runId", &s.run_id)
        .put("state", copy_state(s.state))
        .text("reason", &s.reason)
        .put("gated", s.gated)
        .time("waitingSince", s.waiting_since.as_ref())
        .time("waitDeadline", s.wait_deadline.as_ref())
        .text("trigger", &s.trigger)
        .text("latestTrigger", &s.latest_trigger)
        .time("leaseDeadline", s.lease_deadline.as_ref())
        .list("holdersPending", &s.holders_pending)
        .time("time", s.time.as_ref());
    o.done()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_enum_names_become_volsync_words() {
        assert_eq!(
            enum_word("COPY_STATE_WAITING_FOR_TRIGGER", "COPY_STATE_"),
            "WaitingForTrigger"
        );
        assert_eq!(copy_state(CopyState::TimedOut as i32), "TimedOut");
        assert_eq!(run_phase(RunPhase::CleaningUp as i32), "CleaningUp");
        assert_eq!(run_result(RunResult::Successful as i32), "Successful");
        assert_eq!(run_result(RunResult::Unspecified as i32), "");
        assert_eq!(run_reason(RunReason::SyncNow as i32), "SyncNow");
    }

    #[test]
    fn a_free_form_object_survives_the_trip_through_a_protobuf_struct() {
        let value = json!({
            "runAsUser": 1000,
            "fsGroup": 2000,
            "ratio": 0.5,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "nothing": null
        });
        let back = struct_to_json(&snapgate_proto::json::json_to_struct(
            value.as_object().unwrap(),
        ));
        assert_eq!(back, value);
    }
}
