//! The copy-trigger annotations of a source PVC (copy-trigger.md section 2): reading them into
//! a [`v1::PvcObserved`], and JSON merge patches that change only snapgate-owned keys.
//!
//! Every patch builder takes what was observed and returns `None` when the PVC already says
//! what the patch would write: snapgate never writes unchanged annotations. A key is removed by
//! patching it to `null`, which a JSON merge patch (RFC 7386) defines as deletion.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use serde_json::{Map, Value};
use snapgate_proto::v1;

use crate::bounds;

// VolSync's keys and the values of its status, as every snapgate crate spells them.
pub use snapgate_contract::{
    COPY_TRIGGER, CopyStatus, LATEST_COPY_STATUS, LATEST_COPY_TRIGGER,
    LATEST_COPY_TRIGGER_WAITING_SINCE, PRIVILEGED_MOVERS, USE_COPY_TRIGGER,
};
/// On a restic cache PVC: the `unlock` value of the last successful unlock (snapgate's record
/// of VolSync's `status.restic.lastUnlocked`, kept in the cluster so the agent stays stateless).
pub const RESTIC_LAST_UNLOCKED: &str = "snapgate.io/restic-last-unlocked";

/// The copy-trigger annotations of a source PVC; `None` (not found) reads as `exists: false`.
///
/// Each value is reported as read up to [`bounds::MAX_VALUE_BYTES`]; a longer one (anyone may
/// write a PVC's annotations) is cut and ends with [`bounds::TRUNCATED`], so it is still longer
/// than any value the scheduler accepts and the scheduler refuses it as too long.
pub fn observe(pvc: Option<&PersistentVolumeClaim>) -> v1::PvcObserved {
    let Some(pvc) = pvc else {
        return v1::PvcObserved::default();
    };
    let empty = BTreeMap::new();
    let a = pvc.metadata.annotations.as_ref().unwrap_or(&empty);
    let get = |k: &str| {
        a.get(k)
            .map(|v| bounds::truncate(v, bounds::MAX_VALUE_BYTES))
            .unwrap_or_default()
    };
    v1::PvcObserved {
        exists: true,
        use_copy_trigger: a.contains_key(USE_COPY_TRIGGER),
        copy_trigger: get(COPY_TRIGGER),
        latest_copy_trigger: get(LATEST_COPY_TRIGGER),
        latest_copy_status: get(LATEST_COPY_STATUS),
        waiting_since: get(LATEST_COPY_TRIGGER_WAITING_SINCE),
    }
}

/// `t` as written in [`LATEST_COPY_TRIGGER_WAITING_SINCE`]: `2026-01-02T03:04:05Z`. RFC 3339
/// has four-digit years: a time outside 0001..=9999 is first moved into that range, so what is
/// written always reads back.
pub fn format_waiting_since(t: DateTime<Utc>) -> String {
    bounds::clamp_to_proto_range(t).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The time in a [`LATEST_COPY_TRIGGER_WAITING_SINCE`] value; `None` when absent or not RFC
/// 3339 (an unparseable value counts as absent, so it can never cause a timeout by itself).
pub fn parse_waiting_since(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Whether a Namespace allows privileged movers (its [`PRIVILEGED_MOVERS`] annotation is
/// `"true"`, case-insensitively, as in VolSync).
pub fn privileged_movers_allowed(ns: &Namespace) -> bool {
    ns.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PRIVILEGED_MOVERS))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Collects annotation changes; `finish` wraps them as a merge patch, or `None` if empty.
#[derive(Default)]
struct Changes(Map<String, Value>);

impl Changes {
    fn set(&mut self, key: &str, current: &str, want: &str, present: bool) {
        if !present || current != want {
            self.0
                .insert(key.to_owned(), Value::String(want.to_owned()));
        }
    }

    fn remove(&mut self, key: &str, present: bool) {
        if present {
            self.0.insert(key.to_owned(), Value::Null);
        }
    }

    fn finish(self) -> Option<Value> {
        (!self.0.is_empty())
            .then(|| serde_json::json!({ "metadata": { "annotations": Value::Object(self.0) } }))
    }
}

fn status_is(observed: &v1::PvcObserved, status: CopyStatus) -> bool {
    observed.latest_copy_status == status.as_str()
}

/// Mark the PVC WaitingForTrigger since `since`, unless it already is: an existing parseable
/// waiting-since is kept (the wait began then); a missing or unparseable one is (re)written.
/// Any other status (InProgress of a run sent back to wait, Completed) is replaced.
pub fn mark_waiting(observed: &v1::PvcObserved, since: DateTime<Utc>) -> Option<Value> {
    mark_waiting_spent(observed, since, "")
}

/// [`mark_waiting`], and in the same patch `latest-copy-trigger = spent`: the value that
/// released the run before its hold lease ran out, so that it never releases it (or another
/// run) again. `spent` is written only when it is not empty, can be written (see
/// [`bounds::unwritable`]) and is not already the latest value.
pub fn mark_waiting_spent(
    observed: &v1::PvcObserved,
    since: DateTime<Utc>,
    spent: &str,
) -> Option<Value> {
    let mut c = Changes::default();
    if !spent.is_empty() && bounds::unwritable(spent).is_none() {
        c.set(
            LATEST_COPY_TRIGGER,
            &observed.latest_copy_trigger,
            spent,
            !observed.latest_copy_trigger.is_empty(),
        );
    }
    let waiting = status_is(observed, CopyStatus::WaitingForTrigger);
    if !waiting {
        c.set(
            LATEST_COPY_STATUS,
            "",
            CopyStatus::WaitingForTrigger.as_str(),
            false,
        );
    }
    if !waiting || parse_waiting_since(&observed.waiting_since).is_none() {
        c.set(
            LATEST_COPY_TRIGGER_WAITING_SINCE,
            &observed.waiting_since,
            &format_waiting_since(since),
            !observed.waiting_since.is_empty(),
        );
    }
    c.finish()
}

/// Mark the copy InProgress and remove waiting-since; with `write_copy_trigger` (a Trigger RPC
/// released the run) also write `copy-trigger = trigger`.
pub fn mark_in_progress(
    observed: &v1::PvcObserved,
    trigger: &str,
    write_copy_trigger: bool,
) -> Option<Value> {
    let mut c = Changes::default();
    c.set(
        LATEST_COPY_STATUS,
        &observed.latest_copy_status,
        CopyStatus::InProgress.as_str(),
        true,
    );
    c.remove(
        LATEST_COPY_TRIGGER_WAITING_SINCE,
        !observed.waiting_since.is_empty(),
    );
    if write_copy_trigger {
        c.set(
            COPY_TRIGGER,
            &observed.copy_trigger,
            trigger,
            !observed.copy_trigger.is_empty(),
        );
    }
    c.finish()
}

/// Mark the copy Completed with `latest-copy-trigger = trigger`, in one patch (and remove a
/// leftover waiting-since).
pub fn mark_completed(observed: &v1::PvcObserved, trigger: &str) -> Option<Value> {
    let mut c = Changes::default();
    c.set(
        LATEST_COPY_STATUS,
        &observed.latest_copy_status,
        CopyStatus::Completed.as_str(),
        true,
    );
    c.set(
        LATEST_COPY_TRIGGER,
        &observed.latest_copy_trigger,
        trigger,
        !observed.latest_copy_trigger.is_empty(),
    );
    c.remove(
        LATEST_COPY_TRIGGER_WAITING_SINCE,
        !observed.waiting_since.is_empty(),
    );
    c.finish()
}

/// Remove the waiting state (status WaitingForTrigger and waiting-since) when a run ends
/// without a copy or gating was removed. Any other status (InProgress, Completed) and
/// `latest-copy-trigger` are left alone: they describe a copy that did happen.
pub fn clear_waiting(observed: &v1::PvcObserved) -> Option<Value> {
    end_run(observed, "", true)
}

/// The patch that ends a run on its source PVC, in one merge patch (`None` when the PVC
/// already says all of it):
///
/// - `consumed`: the value that released the run, which never reached its copy point (its
///   source was deleted, or it failed). It is written as `latest-copy-trigger`, and a stale
///   `InProgress` is removed, so that the value can never release a later run on the PVC. Only
///   while the value still stands as `copy-trigger` and is not yet recorded: once a different
///   `copy-trigger` was written (a value written ahead for the next run, or a later run's),
///   the PVC belongs to that value and is left alone, so a cleanup that lasts (a finalizer)
///   never undoes a later run's marks. A value that cannot be written (empty, over 253
///   characters, unprintable) never released a run and is not written.
/// - `clear_waiting`: the waiting state is removed (status `WaitingForTrigger` and
///   waiting-since), as [`clear_waiting`].
pub fn end_run(observed: &v1::PvcObserved, consumed: &str, clear_waiting: bool) -> Option<Value> {
    let mut c = Changes::default();
    let stale_in_progress = status_is(observed, CopyStatus::InProgress);
    let consume = !consumed.is_empty()
        && bounds::unwritable(consumed).is_none()
        && observed.copy_trigger == consumed
        && (observed.latest_copy_trigger != consumed || stale_in_progress);
    if consume {
        c.set(
            LATEST_COPY_TRIGGER,
            &observed.latest_copy_trigger,
            consumed,
            !observed.latest_copy_trigger.is_empty(),
        );
        c.remove(LATEST_COPY_STATUS, stale_in_progress);
    }
    if clear_waiting {
        c.remove(
            LATEST_COPY_STATUS,
            status_is(observed, CopyStatus::WaitingForTrigger),
        );
        c.remove(
            LATEST_COPY_TRIGGER_WAITING_SINCE,
            !observed.waiting_since.is_empty(),
        );
    }
    c.finish()
}

/// The `unlock` value of the last successful restic unlock, recorded on the cache PVC.
pub fn restic_last_unlocked(cache_pvc: Option<&PersistentVolumeClaim>) -> Option<&str> {
    cache_pvc?
        .metadata
        .annotations
        .as_ref()?
        .get(RESTIC_LAST_UNLOCKED)
        .map(String::as_str)
}

/// Whether this run must run `restic unlock` before the backup (VolSync's rule): the source's
/// `unlock` is set and differs from the value of the last successful unlock.
pub fn restic_unlock_due(unlock: Option<&str>, last_unlocked: Option<&str>) -> bool {
    match unlock {
        Some(u) if !u.is_empty() => last_unlocked != Some(u),
        _ => false,
    }
}

/// The merge patch for the cache PVC after a successful Job: record `unlock` as done, or
/// remove the record when the source no longer sets `unlock` (VolSync clears lastUnlocked).
/// `None` when the record already says so.
pub fn mark_unlocked(unlock: Option<&str>, last_unlocked: Option<&str>) -> Option<Value> {
    let mut c = Changes::default();
    match unlock {
        Some(u) if !u.is_empty() => c.set(
            RESTIC_LAST_UNLOCKED,
            last_unlocked.unwrap_or_default(),
            u,
            last_unlocked.is_some(),
        ),
        _ => c.remove(RESTIC_LAST_UNLOCKED, last_unlocked.is_some()),
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    fn pvc(annotations: &[(&str, &str)]) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn obs(status: &str, since: &str, trigger: &str, latest: &str) -> v1::PvcObserved {
        v1::PvcObserved {
            exists: true,
            use_copy_trigger: true,
            copy_trigger: trigger.into(),
            latest_copy_trigger: latest.into(),
            latest_copy_status: status.into(),
            waiting_since: since.into(),
        }
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    #[test]
    fn observing_reads_every_copy_trigger_annotation() {
        let cases = [
            (None, v1::PvcObserved::default()),
            (
                Some(pvc(&[])),
                v1::PvcObserved {
                    exists: true,
                    ..Default::default()
                },
            ),
            (
                Some(pvc(&[(USE_COPY_TRIGGER, "")])),
                v1::PvcObserved {
                    exists: true,
                    use_copy_trigger: true,
                    ..Default::default()
                },
            ),
            (
                Some(pvc(&[
                    (USE_COPY_TRIGGER, "yes"),
                    (COPY_TRIGGER, "second"),
                    (LATEST_COPY_TRIGGER, "first"),
                    (LATEST_COPY_STATUS, "Completed"),
                    (LATEST_COPY_TRIGGER_WAITING_SINCE, "garbage"),
                    ("other", "x"),
                ])),
                v1::PvcObserved {
                    exists: true,
                    use_copy_trigger: true,
                    copy_trigger: "second".into(),
                    latest_copy_trigger: "first".into(),
                    latest_copy_status: "Completed".into(),
                    waiting_since: "garbage".into(),
                },
            ),
        ];
        for (pvc, want) in cases {
            assert_eq!(observe(pvc.as_ref()), want);
        }
    }

    #[test]
    fn waiting_since_is_rfc3339_utc_seconds_and_garbage_reads_as_absent() {
        assert_eq!(format_waiting_since(t0()), "2026-01-02T03:04:05Z");
        assert_eq!(parse_waiting_since("2026-01-02T03:04:05Z"), Some(t0()));
        assert_eq!(parse_waiting_since("2026-01-02T04:04:05+01:00"), Some(t0()));
        for bad in ["", "yesterday", "2026-01-02", "2026-13-02T03:04:05Z"] {
            assert_eq!(parse_waiting_since(bad), None, "{bad}");
        }
        let sub = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
            + chrono::Duration::milliseconds(900);
        assert_eq!(format_waiting_since(sub), "2026-01-02T03:04:05Z");
    }

    #[test]
    fn a_copy_trigger_over_a_kibibyte_is_reported_cut_yet_still_too_long_for_the_scheduler() {
        for unit in ["x", "é", "😀"] {
            let huge = unit.repeat(300_000);
            let o = observe(Some(&pvc(&[
                (COPY_TRIGGER, &huge),
                (LATEST_COPY_TRIGGER, &huge),
                (LATEST_COPY_STATUS, &huge),
                (LATEST_COPY_TRIGGER_WAITING_SINCE, &huge),
            ])));
            for v in [
                &o.copy_trigger,
                &o.latest_copy_trigger,
                &o.latest_copy_status,
                &o.waiting_since,
            ] {
                assert!(
                    v.len() <= bounds::MAX_VALUE_BYTES,
                    "{unit}: {} bytes",
                    v.len()
                );
                assert!(v.ends_with(bounds::TRUNCATED));
                assert!(v.chars().count() > bounds::MAX_VALUE_CHARS, "{unit}");
            }
        }
        let exactly = "x".repeat(bounds::MAX_VALUE_BYTES);
        assert_eq!(
            observe(Some(&pvc(&[(COPY_TRIGGER, &exactly)]))).copy_trigger,
            exactly
        );
    }

    #[test]
    fn a_waiting_since_outside_years_1_to_9999_is_written_clamped_so_it_reads_back() {
        let cases = [
            (DateTime::<Utc>::MAX_UTC, "9999-12-31T23:59:59Z"),
            (DateTime::<Utc>::MIN_UTC, "0001-01-01T00:00:00Z"),
        ];
        for (t, want) in cases {
            assert_eq!(format_waiting_since(t), want);
            assert!(parse_waiting_since(want).is_some());
            let patch = mark_waiting(&obs("", "", "", ""), t).unwrap();
            assert_eq!(
                patch["metadata"]["annotations"][LATEST_COPY_TRIGGER_WAITING_SINCE],
                want
            );
        }
    }

    #[test]
    fn marking_waiting_with_a_spent_value_records_it_with_the_waiting_state_in_one_patch() {
        let since = "2026-01-02T03:04:05Z";
        let cases = [
            // A run whose lease ran out: InProgress, released by `v`.
            (
                obs("InProgress", "", "v", "old"),
                "v",
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_TRIGGER: "v",
                    LATEST_COPY_STATUS: "WaitingForTrigger",
                    LATEST_COPY_TRIGGER_WAITING_SINCE: since,
                }}})),
            ),
            (
                obs("InProgress", "", "v", ""),
                "v",
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_TRIGGER: "v",
                    LATEST_COPY_STATUS: "WaitingForTrigger",
                    LATEST_COPY_TRIGGER_WAITING_SINCE: since,
                }}})),
            ),
            // Already waiting, the value not yet recorded: only the value.
            (
                obs("WaitingForTrigger", since, "v", "old"),
                "v",
                Some(json!({"metadata": {"annotations": {LATEST_COPY_TRIGGER: "v"}}})),
            ),
            // Already recorded and waiting: nothing.
            (obs("WaitingForTrigger", since, "v", "v"), "v", None),
            // No spent value, or one that cannot be written: the waiting state only.
            (
                obs("InProgress", "", "v", "old"),
                "",
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_STATUS: "WaitingForTrigger",
                    LATEST_COPY_TRIGGER_WAITING_SINCE: since,
                }}})),
            ),
            (
                obs("InProgress", "", "v", "old"),
                "bad\u{202E}",
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_STATUS: "WaitingForTrigger",
                    LATEST_COPY_TRIGGER_WAITING_SINCE: since,
                }}})),
            ),
        ];
        for (observed, spent, want) in cases {
            assert_eq!(
                mark_waiting_spent(&observed, t0(), spent),
                want,
                "{observed:?} {spent:?}"
            );
        }
    }

    #[test]
    fn marking_waiting_writes_status_and_since_only_when_not_already_waiting() {
        let since = "2026-01-02T03:04:05Z";
        let cases = [
            (
                obs("", "", "", ""),
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_STATUS: "WaitingForTrigger",
                    LATEST_COPY_TRIGGER_WAITING_SINCE: since,
                }}})),
            ),
            (
                obs("Completed", "", "first", "first"),
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_STATUS: "WaitingForTrigger",
                    LATEST_COPY_TRIGGER_WAITING_SINCE: since,
                }}})),
            ),
            (
                obs("InProgress", "", "second", "first"),
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_STATUS: "WaitingForTrigger",
                    LATEST_COPY_TRIGGER_WAITING_SINCE: since,
                }}})),
            ),
            (
                obs("WaitingForTrigger", "2026-01-01T00:00:00Z", "", ""),
                None,
            ),
            (
                obs("WaitingForTrigger", "garbage", "", ""),
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_TRIGGER_WAITING_SINCE: since,
                }}})),
            ),
            (
                obs("WaitingForTrigger", "", "", ""),
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_TRIGGER_WAITING_SINCE: since,
                }}})),
            ),
        ];
        for (observed, want) in cases {
            assert_eq!(mark_waiting(&observed, t0()), want, "{observed:?}");
        }
    }

    #[test]
    fn marking_in_progress_removes_waiting_since_and_writes_the_trigger_only_when_told() {
        let cases = [
            (
                obs("WaitingForTrigger", "2026-01-01T00:00:00Z", "first", ""),
                false,
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_STATUS: "InProgress",
                    LATEST_COPY_TRIGGER_WAITING_SINCE: null,
                }}})),
            ),
            (
                obs("WaitingForTrigger", "2026-01-01T00:00:00Z", "", ""),
                true,
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_STATUS: "InProgress",
                    LATEST_COPY_TRIGGER_WAITING_SINCE: null,
                    COPY_TRIGGER: "first",
                }}})),
            ),
            (obs("InProgress", "", "first", ""), true, None),
            (obs("InProgress", "", "first", ""), false, None),
            (
                obs("", "", "", ""),
                false,
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_STATUS: "InProgress",
                }}})),
            ),
        ];
        for (observed, write, want) in cases {
            assert_eq!(
                mark_in_progress(&observed, "first", write),
                want,
                "{observed:?}"
            );
        }
    }

    #[test]
    fn marking_completed_sets_status_and_latest_trigger_in_one_patch() {
        let cases = [
            (
                obs("InProgress", "", "second", "first"),
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_STATUS: "Completed",
                    LATEST_COPY_TRIGGER: "second",
                }}})),
            ),
            (
                obs("InProgress", "2026-01-01T00:00:00Z", "second", ""),
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_STATUS: "Completed",
                    LATEST_COPY_TRIGGER: "second",
                    LATEST_COPY_TRIGGER_WAITING_SINCE: null,
                }}})),
            ),
            (obs("Completed", "", "second", "second"), None),
        ];
        for (observed, want) in cases {
            assert_eq!(mark_completed(&observed, "second"), want, "{observed:?}");
        }
    }

    #[test]
    fn clearing_waiting_removes_only_the_waiting_state() {
        let cases = [
            (
                obs("WaitingForTrigger", "2026-01-01T00:00:00Z", "", "first"),
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_STATUS: null,
                    LATEST_COPY_TRIGGER_WAITING_SINCE: null,
                }}})),
            ),
            (
                obs("WaitingForTrigger", "", "", ""),
                Some(json!({"metadata": {"annotations": {LATEST_COPY_STATUS: null}}})),
            ),
            (obs("Completed", "", "first", "first"), None),
            (obs("", "", "", ""), None),
        ];
        for (observed, want) in cases {
            assert_eq!(clear_waiting(&observed), want, "{observed:?}");
        }
    }

    #[test]
    fn a_consumed_value_is_recorded_and_a_stale_in_progress_removed_in_one_patch_once() {
        let consumed = |latest: &str| {
            Some(json!({"metadata": {"annotations": {LATEST_COPY_TRIGGER: latest}}}))
        };
        let cases = [
            // Released by `v`, never cut: today's leftovers.
            (
                obs("InProgress", "", "v", ""),
                "v",
                false,
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_TRIGGER: "v",
                    LATEST_COPY_STATUS: null,
                }}})),
            ),
            (
                obs("InProgress", "", "v", "old"),
                "v",
                false,
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_TRIGGER: "v",
                    LATEST_COPY_STATUS: null,
                }}})),
            ),
            // Released but not yet marked InProgress: the value alone.
            (
                obs("WaitingForTrigger", "", "v", "old"),
                "v",
                false,
                consumed("v"),
            ),
            (obs("Completed", "", "v", "old"), "v", false, consumed("v")),
            // Already so: nothing.
            (obs("", "", "v", "v"), "v", false, None),
            (obs("Completed", "", "v", "v"), "v", false, None),
            (
                obs("InProgress", "", "v", "v"),
                "v",
                false,
                Some(json!({"metadata": {"annotations": {LATEST_COPY_STATUS: null}}})),
            ),
            // The PVC has moved on to another value: a later run's marks are never undone.
            (obs("InProgress", "", "w", "old"), "v", false, None),
            (obs("Completed", "", "w", "w"), "v", false, None),
            (obs("", "", "", ""), "v", false, None),
            // Nothing consumed.
            (obs("InProgress", "", "v", ""), "", false, None),
            // A value that cannot be written never released a run.
            (
                obs("InProgress", "", "a\u{202E}b", ""),
                "a\u{202E}b",
                false,
                None,
            ),
            // With clear_waiting too, still one patch.
            (
                obs("WaitingForTrigger", "2026-01-01T00:00:00Z", "v", "old"),
                "v",
                true,
                Some(json!({"metadata": {"annotations": {
                    LATEST_COPY_TRIGGER: "v",
                    LATEST_COPY_STATUS: null,
                    LATEST_COPY_TRIGGER_WAITING_SINCE: null,
                }}})),
            ),
        ];
        for (observed, value, clear, want) in cases {
            assert_eq!(
                end_run(&observed, value, clear),
                want,
                "{observed:?} {value:?} {clear}"
            );
        }
    }

    #[test]
    fn patches_never_touch_user_keys_unless_told() {
        let o = obs("WaitingForTrigger", "2026-01-01T00:00:00Z", "a", "b");
        let patches = [
            mark_waiting(&obs("", "", "a", "b"), t0()),
            mark_in_progress(&o, "a", false),
            mark_completed(&o, "a"),
            clear_waiting(&o),
            end_run(&obs("InProgress", "x", "a", "b"), "a", true),
        ];
        for p in patches.into_iter().flatten() {
            let keys = p["metadata"]["annotations"].as_object().unwrap();
            assert!(!keys.contains_key(USE_COPY_TRIGGER));
            assert!(!keys.contains_key(COPY_TRIGGER));
            assert_eq!(p.as_object().unwrap().len(), 1, "only metadata");
        }
    }

    #[test]
    fn privileged_movers_need_the_namespace_annotation_true_in_any_case() {
        let ns = |v: Option<&str>| Namespace {
            metadata: ObjectMeta {
                annotations: v.map(|v| BTreeMap::from([(PRIVILEGED_MOVERS.to_owned(), v.into())])),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(privileged_movers_allowed(&ns(Some("true"))));
        assert!(privileged_movers_allowed(&ns(Some("TRUE"))));
        assert!(!privileged_movers_allowed(&ns(Some("yes"))));
        assert!(!privileged_movers_allowed(&ns(Some(""))));
        assert!(!privileged_movers_allowed(&ns(None)));
    }

    #[test]
    fn restic_unlock_runs_once_per_new_unlock_value() {
        let cases = [
            (None, None, false),
            (Some(""), None, false),
            (Some("u1"), None, true),
            (Some("u1"), Some("u1"), false),
            (Some("u2"), Some("u1"), true),
        ];
        for (unlock, last, want) in cases {
            assert_eq!(restic_unlock_due(unlock, last), want, "{unlock:?} {last:?}");
        }
        let cache = pvc(&[(RESTIC_LAST_UNLOCKED, "u1")]);
        assert_eq!(restic_last_unlocked(Some(&cache)), Some("u1"));
        assert_eq!(restic_last_unlocked(None), None);
        assert_eq!(
            mark_unlocked(Some("u2"), Some("u1")),
            Some(json!({"metadata": {"annotations": {RESTIC_LAST_UNLOCKED: "u2"}}}))
        );
        assert_eq!(mark_unlocked(Some("u1"), Some("u1")), None);
        assert_eq!(
            mark_unlocked(None, Some("u1")),
            Some(json!({"metadata": {"annotations": {RESTIC_LAST_UNLOCKED: null}}}))
        );
        assert_eq!(mark_unlocked(None, None), None);
    }
}
