//! The core against hostile input: every value from the wire, an agent or the store is checked,
//! no arithmetic on it can panic, and everything it keeps is bounded.
//!
//! Table tests for the cases found by hand, then property tests over admission, the schedule
//! preview, the run machine's time handling and restoring from the store.

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use snapgate_proto::v1::{
    self, CopyMethod, CopyTriggerOptions, ReplicationSourceResticSpec, ReplicationSourceTrigger,
    Report, ResticRetainPolicy, RunPhase, RunResult, SourceSpec, report::Observation,
};
use snapgate_scheduler_core::{
    CoreError, Effect, MAX_LOG_BYTES, MAX_MESSAGE_BYTES, MAX_PAGE_BYTES, Scheduler, SourceKey,
    SourceRecord, timestamp, to_datetime, validate,
};

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn apps() -> Vec<String> {
    vec!["apps".to_owned()]
}

fn key(name: &str) -> SourceKey {
    SourceKey::new("apps", name)
}

fn restic_spec() -> SourceSpec {
    SourceSpec {
        source_pvc: "data".into(),
        trigger: Some(ReplicationSourceTrigger {
            schedule: Some("*/5 * * * *".into()),
            manual: None,
        }),
        restic: Some(ReplicationSourceResticSpec {
            copy_method: CopyMethod::Snapshot as i32,
            repository: "restic-config".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn seconds(s: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: s, nanos })
}

/// A free-form object of about `bytes` bytes.
fn big_object(bytes: usize) -> prost_types::Struct {
    prost_types::Struct {
        fields: [(
            "x".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("y".repeat(bytes))),
            },
        )]
        .into(),
    }
}

fn invalid(r: Result<v1::Source, CoreError>) -> validate::InvalidField {
    match r {
        Err(CoreError::Invalid(f)) => f,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// Collects the records a store would hold, as the shell does.
#[derive(Default)]
struct Stored {
    sources: std::collections::BTreeMap<String, SourceRecord>,
    runs: std::collections::BTreeMap<String, v1::Run>,
}

impl Stored {
    fn take(&mut self, core: &mut Scheduler) -> Vec<Effect> {
        let mut rest = Vec::new();
        for e in core.drain_effects() {
            match e {
                Effect::PutSource(r) => {
                    let s = r.source.as_ref().unwrap();
                    self.sources
                        .insert(format!("{}/{}", s.namespace, s.name), *r);
                }
                Effect::RemoveSource(k) => {
                    self.sources.remove(&k.to_string());
                }
                Effect::PutRun(r) => {
                    self.runs.insert(r.id.clone(), *r);
                }
                Effect::RemoveRun(id) => {
                    self.runs.remove(&id.to_string());
                }
                other => rest.push(other),
            }
        }
        rest
    }

    fn restore(&self, next_run: u64) -> Scheduler {
        let r = Scheduler::restore(
            self.sources.values().cloned().collect(),
            self.runs.values().cloned().collect(),
            next_run,
        );
        assert!(r.quarantined.is_empty(), "{:?}", r.quarantined);
        r.scheduler
    }
}

fn report(run: &str, generation: u64, o: Observation) -> Report {
    Report {
        run_id: run.into(),
        generation,
        observation: Some(o),
    }
}

fn current(core: &Scheduler, name: &str) -> v1::Run {
    core.list_runs(&key(name), 1).unwrap().remove(0)
}

/// A source whose first run (ungated) is copying.
fn copying() -> (Scheduler, v1::Run) {
    let mut core = Scheduler::new();
    core.apply_source(key("db"), restic_spec(), 0, t0())
        .unwrap();
    let run = current(&core, "db");
    let pvc = Observation::Pvc(v1::PvcObserved {
        exists: true,
        ..Default::default()
    });
    core.handle_report(&apps(), report(&run.id, run.generation, pvc), t0());
    assert_eq!(current(&core, "db").phase, RunPhase::Copying as i32);
    (core, run)
}

/// Drives the current run of `name` (ungated) through a successful copy and mover.
fn succeed(core: &mut Scheduler, name: &str, now: DateTime<Utc>) {
    let run = current(core, name);
    let steps = [
        Observation::Pvc(v1::PvcObserved {
            exists: true,
            ..Default::default()
        }),
        Observation::CopyCompleted(v1::CopyCompleted {
            copy_name: "snap".into(),
            time: Some(timestamp(now)),
        }),
        Observation::MoverFinished(v1::MoverFinished {
            succeeded: true,
            logs: "ok".into(),
        }),
        Observation::CleanedUp(v1::CleanedUp::default()),
    ];
    for o in steps {
        let generation = current(core, name).generation;
        core.handle_report(&apps(), report(&run.id, generation, o), now);
    }
    let done = core
        .list_runs(&key(name), 100)
        .unwrap()
        .into_iter()
        .find(|r| r.id == run.id)
        .unwrap();
    assert_eq!(done.result, RunResult::Successful as i32, "{done:?}");
}

#[test]
fn durations_beyond_chronos_range_are_refused_naming_the_field_not_a_panic() {
    let mut core = Scheduler::new();
    let mut s = restic_spec();
    s.jitter = seconds(i64::MAX, 0);
    let e = invalid(core.apply_source(key("db"), s, 0, t0()));
    assert_eq!(e.field, "spec.jitter");
    assert!(e.rule.contains("between 0s and 86400s"), "{}", e.rule);

    let mut s = restic_spec();
    s.copy_trigger = Some(CopyTriggerOptions {
        wait_timeout: seconds(i64::MIN, -999_999_999),
        on_timeout: 0,
        holders: Vec::new(),
        allowed_service_accounts: Vec::new(),
    });
    let e = invalid(core.apply_source(key("db"), s, 0, t0()));
    assert_eq!(e.field, "spec.copyTrigger.waitTimeout");
    assert!(
        core.drain_effects().is_empty(),
        "nothing of a refused apply"
    );
}

#[test]
fn preview_near_the_ends_of_the_calendar_answers_with_no_times() {
    let mut core = Scheduler::new();
    let mut s = restic_spec();
    s.jitter = seconds(3600, 0);
    core.apply_source(key("db"), s, 0, t0()).unwrap();
    for after in [DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC] {
        let (times, _) = core.preview(&key("db"), after, 100).unwrap();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
        assert!(times.iter().all(|t| *t > after), "{times:?}");
    }
}

#[test]
fn a_prune_interval_past_the_end_of_the_calendar_never_comes_due_and_survives_a_restart() {
    let mut core = Scheduler::new();
    let mut stored = Stored::default();
    let mut s = restic_spec();
    s.trigger = None; // continuous: the next run starts right after the first
    s.restic.as_mut().unwrap().prune_interval_days = Some(99_999_999);
    core.apply_source(key("db"), s.clone(), 0, t0()).unwrap();
    stored.take(&mut core);
    succeed(&mut core, "db", t0());
    stored.take(&mut core);
    let second = current(&core, "db");
    assert_ne!(
        second.phase,
        RunPhase::Finished as i32,
        "a second run started"
    );
    assert!(!second.restic_prune, "99999999 days from now is never");

    // The whole int32 range of VolSync is admitted, and restarting from the store is fine.
    s.restic.as_mut().unwrap().prune_interval_days = Some(i32::MAX);
    let version = core.get_source(&key("db")).unwrap().version;
    core.apply_source(key("db"), s, version, t0()).unwrap();
    stored.take(&mut core);
    let mut restarted = stored.restore(core.next_run_counter());
    restarted.handle_timeout(t0() + Duration::days(3650));
    succeed(&mut restarted, "db", t0() + Duration::days(3650));
    assert!(!current(&restarted, "db").restic_prune);
}

#[test]
fn a_megabyte_agent_error_reported_eighty_times_keeps_the_run_small() {
    let mut core = Scheduler::new();
    core.apply_source(key("db"), restic_spec(), 0, t0())
        .unwrap();
    let run = current(&core, "db");
    let huge = "x".repeat(1 << 20);
    for i in 0..80 {
        let o = Observation::Error(v1::AgentError {
            reason: format!("R{i}{huge}"),
            message: format!("{i}{huge}"),
            retryable: true,
        });
        core.handle_report(&apps(), report(&run.id, run.generation, o), t0());
    }
    let run = current(&core, "db");
    let size = prost::Message::encoded_len(&run);
    assert!(size < 100 * 1024, "run is {size} bytes");
    assert!(run.message.len() <= MAX_MESSAGE_BYTES);
    assert!(run.message.ends_with("(truncated)"), "marked as cut");
    assert!(
        run.timeline
            .iter()
            .all(|e| e.message.len() <= MAX_MESSAGE_BYTES)
    );
    let source = core.get_source(&key("db")).unwrap();
    assert!(prost::Message::encoded_len(&source) < 16 * 1024);
}

#[test]
fn mover_logs_of_megabytes_are_kept_as_a_tail_of_kilobytes() {
    let mut core = Scheduler::new();
    core.apply_source(key("db"), restic_spec(), 0, t0())
        .unwrap();
    let run = current(&core, "db");
    for o in [
        Observation::Pvc(v1::PvcObserved {
            exists: true,
            ..Default::default()
        }),
        Observation::CopyCompleted(v1::CopyCompleted::default()),
    ] {
        let g = current(&core, "db").generation;
        core.handle_report(&apps(), report(&run.id, g, o), t0());
    }
    let logs = format!("{}the end", "é".repeat(2 << 20));
    let g = current(&core, "db").generation;
    core.handle_report(
        &apps(),
        report(
            &run.id,
            g,
            Observation::MoverFailed(v1::MoverFailed {
                attempt: u32::MAX,
                logs: logs.clone(),
            }),
        ),
        t0(),
    );
    let status = core
        .get_source(&key("db"))
        .unwrap()
        .status
        .unwrap()
        .latest_mover_status
        .unwrap();
    assert!(status.logs.len() <= MAX_LOG_BYTES, "{}", status.logs.len());
    assert!(status.logs.ends_with("the end"), "the tail is kept");
    assert!(status.logs.starts_with('('), "the cut is marked");
}

#[test]
fn an_agents_out_of_range_copy_time_is_replaced_by_the_time_of_the_report() {
    for bad in [
        prost_types::Timestamp {
            seconds: 1 << 62,
            nanos: -7,
        },
        prost_types::Timestamp {
            seconds: 0,
            nanos: 1_000_000_000,
        },
        prost_types::Timestamp {
            seconds: i64::MIN,
            nanos: 0,
        },
        // Far in the future of the scheduler: not a copy point that happened.
        timestamp(t0() + Duration::days(1)),
        timestamp(t0() + Duration::seconds(5 + 61)),
    ] {
        let (mut core, run) = copying();
        let g = current(&core, "db").generation;
        let later = t0() + Duration::seconds(5);
        core.handle_report(
            &apps(),
            report(
                &run.id,
                g,
                Observation::CopyCompleted(v1::CopyCompleted {
                    copy_name: "snap".into(),
                    time: Some(bad),
                }),
            ),
            later,
        );
        let run = current(&core, "db");
        assert_eq!(run.copy_time, Some(timestamp(later)), "{bad:?}");
        assert!(run.timeline.iter().any(|e| e.event == "AgentTimeRefused"));
    }
}

#[test]
fn an_overlong_or_unprintable_copy_trigger_annotation_never_releases_a_run() {
    for bad in [
        "x".repeat(254),
        "v\u{202E}1".to_owned(),
        format!("{}... (truncated)", "y".repeat(1000)),
    ] {
        let mut core = Scheduler::new();
        core.apply_source(key("db"), restic_spec(), 0, t0())
            .unwrap();
        let run = current(&core, "db");
        let pvc = Observation::Pvc(v1::PvcObserved {
            exists: true,
            use_copy_trigger: true,
            copy_trigger: bad.clone(),
            ..Default::default()
        });
        core.handle_report(&apps(), report(&run.id, run.generation, pvc), t0());
        let run = current(&core, "db");
        assert_eq!(
            run.phase,
            RunPhase::Gating as i32,
            "not released by {bad:?}"
        );
        assert!(run.trigger.is_empty());
        assert!(
            run.message.contains("copy-trigger annotation"),
            "{}",
            run.message
        );
        assert!(
            run.message.len() < 512,
            "the value is quoted by a prefix only"
        );
    }
}

#[test]
fn an_agents_clock_a_little_ahead_is_trusted() {
    let (mut core, run) = copying();
    let g = current(&core, "db").generation;
    let ahead = timestamp(t0() + Duration::seconds(30));
    let o = Observation::CopyCompleted(v1::CopyCompleted {
        copy_name: "snap".into(),
        time: Some(ahead),
    });
    core.handle_report(&apps(), report(&run.id, g, o), t0());
    assert_eq!(current(&core, "db").copy_time, Some(ahead));
}

#[test]
fn names_are_checked_as_kubernetes_checks_them() {
    let mut core = Scheduler::new();
    // A DNS-1123 subdomain: up to 253 characters, parts longer than 63 allowed.
    for name in [
        "a".repeat(64),
        format!("{}.{}", "b".repeat(120), "c".repeat(132)),
    ] {
        assert_eq!(name.len().min(253), name.len());
        core.apply_source(key(&name), restic_spec(), 0, t0())
            .unwrap_or_else(|e| panic!("{} chars: {e}", name.len()));
    }
    for bad in ["a".repeat(254), "a..b".into(), "-a".into(), "a.-b".into()] {
        let e = invalid(core.apply_source(key(&bad), restic_spec(), 0, t0()));
        assert_eq!(e.field, "name", "{bad}");
    }
    // A megabyte name is quoted by a prefix only.
    let e = invalid(core.apply_source(key(&"n".repeat(1 << 20)), restic_spec(), 0, t0()));
    assert!(e.to_string().len() < 300, "{} bytes", e.to_string().len());
    assert!(e.rule.contains("1048576"), "{}", e.rule);
}

#[test]
fn invisible_characters_never_reach_an_annotation_or_a_log_line() {
    let mut core = Scheduler::new();
    for bad in [
        "tag\u{202E}",
        "\u{200B}tag",
        "a\u{FEFF}",
        "a\u{2028}b",
        "a\nb",
    ] {
        let mut s = restic_spec();
        s.trigger = Some(ReplicationSourceTrigger {
            schedule: None,
            manual: Some(bad.into()),
        });
        let e = invalid(core.apply_source(key("db"), s, 0, t0()));
        assert_eq!(e.field, "spec.trigger.manual", "{bad:?}");
        assert!(e.rule.contains("U+"), "{}", e.rule);
    }
    core.apply_source(key("db"), restic_spec(), 0, t0())
        .unwrap();
    let e = core.sync_now(&key("db"), "req\u{202E}1", t0()).unwrap_err();
    assert!(matches!(e, CoreError::Invalid(f) if f.field == "requestId"));
    let e = core
        .set_paused(&key("db"), true, "disk\u{200B}".into(), t0())
        .unwrap_err();
    assert!(matches!(e, CoreError::Invalid(f) if f.field == "note"));
    let target = v1::CopyTarget {
        namespace: "apps".into(),
        pvc: "data".into(),
        source: String::new(),
    };
    let e = core
        .trigger(&target, "v\u{202E}", "", None, "", t0())
        .unwrap_err();
    assert!(matches!(e, CoreError::Invalid(f) if f.field == "value"));
}

#[test]
fn a_schedule_that_can_never_fire_is_refused() {
    let mut core = Scheduler::new();
    let mut s = restic_spec();
    s.trigger = Some(ReplicationSourceTrigger {
        schedule: Some("0 0 31 2 *".into()),
        manual: None,
    });
    let e = invalid(core.apply_source(key("db"), s, 0, t0()));
    assert_eq!(e.field, "spec.trigger.schedule");
    assert!(e.rule.contains("never fires"), "{}", e.rule);
}

#[test]
fn retain_last_is_a_string_holding_a_non_negative_integer_as_in_volsync() {
    let mut core = Scheduler::new();
    let with_last = |v: &str| {
        let mut s = restic_spec();
        s.restic.as_mut().unwrap().retain = Some(ResticRetainPolicy {
            last: Some(v.into()),
            ..Default::default()
        });
        s
    };
    core.apply_source(key("db"), with_last("10"), 0, t0())
        .unwrap();
    for bad in ["-1", "ten", "", "99999999999", "1.5"] {
        let e = invalid(core.apply_source(key("other"), with_last(bad), 0, t0()));
        assert_eq!(e.field, "spec.restic.retain.last", "{bad:?}");
    }
}

#[test]
fn free_form_objects_and_the_whole_spec_are_bounded_with_the_bound_in_the_error() {
    let mut core = Scheduler::new();
    let mut s = restic_spec();
    s.restic.as_mut().unwrap().mover_affinity = Some(big_object(20_000));
    let e = invalid(core.apply_source(key("db"), s, 0, t0()));
    assert_eq!(e.field, "spec.restic.moverAffinity");
    assert!(e.rule.contains("16384"), "{}", e.rule);

    let mut s = restic_spec();
    let r = s.restic.as_mut().unwrap();
    r.mover_affinity = Some(big_object(15_000));
    r.mover_resources = Some(big_object(15_000));
    r.mover_security_context = Some(big_object(15_000));
    s.rclone = None;
    for i in 0..16 {
        s.restic
            .as_mut()
            .unwrap()
            .mover_pod_labels
            .insert(format!("k{i}"), "v".repeat(60));
    }
    s.restic.as_mut().unwrap().unlock = Some("u".into());
    // Three objects of 15 KB each fit; the spec as a whole is bounded too.
    core.apply_source(key("db"), s.clone(), 0, t0()).unwrap();
    s.restic.as_mut().unwrap().custom_ca = Some(v1::CustomCa {
        secret_name: "ca".into(),
        key: "x".repeat(30_000),
        ..Default::default()
    });
    let e = invalid(core.apply_source(key("db2"), s, 0, t0()));
    assert_eq!(e.field, "spec");
    assert!(e.rule.contains("65536"), "{}", e.rule);
}

#[test]
fn a_page_of_sources_always_fits_a_clients_default_message_limit() {
    let mut core = Scheduler::new();
    let mut s = restic_spec();
    s.trigger = Some(ReplicationSourceTrigger {
        schedule: None,
        manual: Some("never".into()),
    });
    s.skip_initial_run = true;
    let r = s.restic.as_mut().unwrap();
    for field in [
        &mut r.mover_affinity,
        &mut r.mover_resources,
        &mut r.mover_security_context,
    ] {
        *field = Some(big_object(16_000));
    }
    for i in 0..300 {
        core.apply_source(key(&format!("s{i:03}")), s.clone(), 0, t0())
            .unwrap();
    }
    let mut after = None;
    let mut seen = 0;
    loop {
        let (page, next) = core.list_sources(None, after.as_ref(), 1000);
        let bytes = prost::Message::encoded_len(&v1::ListSourcesResponse {
            sources: page.clone(),
            next_page_token: "apps/s299".into(),
        });
        assert!(bytes <= MAX_PAGE_BYTES + 64, "{bytes} bytes");
        assert!(bytes < 4 * 1024 * 1024);
        seen += page.len();
        match next {
            Some(k) => after = Some(k),
            None => break,
        }
    }
    assert_eq!(seen, 300, "every source is listed once over the pages");
}

#[test]
fn restoring_quarantines_records_it_cannot_run_and_loads_the_rest() {
    let mut core = Scheduler::new();
    let mut stored = Stored::default();
    core.apply_source(key("good"), restic_spec(), 0, t0())
        .unwrap();
    stored.take(&mut core);
    let good_run = current(&core, "good");

    // A source whose spec a later version would refuse (a cron that never fires) still loads.
    let mut old = stored.sources["apps/good"].clone();
    let src = old.source.as_mut().unwrap();
    src.name = "old".into();
    src.spec.as_mut().unwrap().trigger = Some(ReplicationSourceTrigger {
        schedule: Some("0 0 31 2 *".into()),
        manual: None,
    });
    // A source the scheduler cannot run at all.
    let mut broken = stored.sources["apps/good"].clone();
    broken.source.as_mut().unwrap().name = "broken".into();
    broken
        .source
        .as_mut()
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .restic = None;
    let mut runs: Vec<v1::Run> = stored.runs.values().cloned().collect();
    runs.push(v1::Run {
        id: "not-a-run".into(),
        ..Default::default()
    });
    runs.push(v1::Run {
        id: "run-900".into(),
        phase: RunPhase::Copying as i32,
        source: Some(v1::SourceRef {
            namespace: "apps".into(),
            name: "broken".into(),
        }),
        ..Default::default()
    });
    runs.push(v1::Run {
        id: "run-901".into(),
        phase: 99,
        ..Default::default()
    });
    let records = vec![
        stored.sources["apps/good"].clone(),
        old,
        broken,
        SourceRecord {
            source: None,
            deleting: false,
        },
    ];
    let r = Scheduler::restore(records, runs, 2);
    let mut quarantined: Vec<(&str, String)> = r
        .quarantined
        .iter()
        .map(|q| (q.kind, q.key.clone()))
        .collect();
    quarantined.sort();
    assert_eq!(
        quarantined,
        vec![
            ("run", "\"not-a-run\"".to_owned()),
            ("run", "run-900".to_owned()),
            ("run", "run-901".to_owned()),
            ("source", "?".to_owned()),
            ("source", "apps/broken".to_owned()),
        ]
    );
    assert_eq!(r.warnings.len(), 1);
    assert_eq!(r.warnings[0].key, "apps/old");
    let core = r.scheduler;
    assert!(core.get_source(&key("good")).is_ok());
    assert_eq!(current(&core, "good").id, good_run.id);
    let old = core.get_source(&key("old")).unwrap();
    assert!(
        old.status.unwrap().message.contains("never fires"),
        "the broken rule is shown on the source"
    );
    assert_eq!(
        core.next_run_counter(),
        902,
        "a quarantined run's number is never reused"
    );
}

// ------------------------------------------------------------------------ property tests

/// The same cases on every run, so CI is deterministic; `PROPTEST_RNG_SEED=<n>` explores others.
fn seed() -> proptest::test_runner::RngSeed {
    let env = std::env::var("PROPTEST_RNG_SEED").ok();
    proptest::test_runner::RngSeed::Fixed(env.and_then(|s| s.parse().ok()).unwrap_or(0x5eed))
}

fn any_duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
    prop_oneof![
        Just(None),
        (any::<i64>(), any::<i32>()).prop_map(|(s, n)| seconds(s, n)),
        (-100_000i64..1_000_000, -1_000_000_000i32..1_000_000_000).prop_map(|(s, n)| seconds(s, n)),
    ]
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.-]{0,70}",
        any::<String>(),
        "[a-z0-9*/, @-]{0,30}",
        Just("0 0 29 2 *".to_owned()),
    ]
}

fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
    prop_oneof![
        (DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MAX_UTC.timestamp())
            .prop_map(|s| DateTime::from_timestamp(s, 0).unwrap()),
        (0i64..4_000_000_000).prop_map(|s| DateTime::from_timestamp(s, 0).unwrap()),
        Just(DateTime::<Utc>::MIN_UTC),
        Just(DateTime::<Utc>::MAX_UTC),
    ]
}

fn any_spec() -> impl Strategy<Value = SourceSpec> {
    (
        any_text(),
        proptest::option::of(any_text()),
        proptest::option::of(any_text()),
        any_duration(),
        any_duration(),
        proptest::option::of(any::<i32>()),
        any_text(),
        0i32..6,
        proptest::option::of(any_text()),
        any::<bool>(),
    )
        .prop_map(
            |(pvc, schedule, manual, jitter, wait, prune, tz, method, last, skip)| SourceSpec {
                source_pvc: pvc,
                trigger: Some(ReplicationSourceTrigger { schedule, manual }),
                time_zone: if tz.len() % 3 == 0 {
                    "Europe/Paris".into()
                } else {
                    tz
                },
                jitter,
                copy_trigger: Some(CopyTriggerOptions {
                    wait_timeout: wait,
                    on_timeout: method % 3,
                    holders: Vec::new(),
                    allowed_service_accounts: Vec::new(),
                }),
                skip_initial_run: skip,
                restic: Some(ReplicationSourceResticSpec {
                    copy_method: method,
                    repository: "restic-config".into(),
                    prune_interval_days: prune,
                    retain: Some(ResticRetainPolicy {
                        last,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        rng_seed: seed(),
        ..ProptestConfig::default()
    })]

    /// Admission of any spec at any time either refuses with a field or admits; an admitted
    /// source previews, comes due and restarts without a panic.
    #[test]
    fn any_spec_at_any_time_is_admitted_or_refused_never_a_panic(
        name in any_text(),
        spec in any_spec(),
        now in any_time(),
        after in any_time(),
    ) {
        let mut core = Scheduler::new();
        match core.apply_source(SourceKey::new("apps", &name), spec, 0, now) {
            Err(CoreError::Invalid(f)) => {
                prop_assert!(!f.field.is_empty());
                prop_assert!(f.to_string().len() < 1024, "{}", f);
            }
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
            Ok(_) => {
                let k = SourceKey::new("apps", &name);
                if let Ok((times, _)) = core.preview(&k, after, 5) {
                    prop_assert!(times.iter().all(|t| *t > after));
                    prop_assert!(times.windows(2).all(|w| w[0] < w[1]));
                }
                core.handle_timeout(after);
                let _ = core.poll_timeout();
                let mut stored = Stored::default();
                stored.take(&mut core);
                let mut again = stored.restore(core.next_run_counter());
                again.handle_timeout(now);
            }
        }
    }

    /// Reports, Triggers with any hold, lease requests and EndHold calls with any timestamps,
    /// strings and counts, at any time, leave every stored timestamp valid and every kept text
    /// bounded.
    #[test]
    fn any_report_at_any_time_keeps_the_run_valid_and_bounded(
        steps in proptest::collection::vec(
            (0u8..11, any::<String>(), any::<i64>(), any::<i32>(), any::<u32>(), any::<bool>()),
            1..12,
        ),
        start in any_time(),
        later in proptest::collection::vec(0i64..10_000_000_000, 12),
    ) {
        let mut core = Scheduler::new();
        let mut s = restic_spec();
        s.trigger = None;
        if core.apply_source(key("db"), s, 0, start).is_err() {
            return Ok(());
        }
        let mut now = start;
        for ((kind, text, secs, nanos, count, flag), dt) in steps.into_iter().zip(later) {
            now = now.checked_add_signed(Duration::seconds(dt)).unwrap_or(now);
            let Some(run) = core.list_runs(&key("db"), 1).unwrap().into_iter().next() else {
                break;
            };
            let time = Some(prost_types::Timestamp { seconds: secs, nanos });
            let o = match kind {
                0 => Observation::Pvc(v1::PvcObserved {
                    exists: flag,
                    use_copy_trigger: count % 2 == 0,
                    copy_trigger: text.clone(),
                    latest_copy_trigger: String::new(),
                    latest_copy_status: "WaitingForTrigger".into(),
                    waiting_since: text,
                }),
                1 => Observation::CopyCompleted(v1::CopyCompleted { copy_name: text, time }),
                2 => Observation::MoverFinished(v1::MoverFinished { succeeded: flag, logs: text }),
                3 => Observation::MoverFailed(v1::MoverFailed { attempt: count, logs: text }),
                4 => Observation::CleanedUp(v1::CleanedUp::default()),
                5 => Observation::Error(v1::AgentError {
                    reason: text.clone(),
                    message: text,
                    retryable: flag,
                }),
                6 => {
                    let target = v1::CopyTarget {
                        namespace: "apps".into(),
                        pvc: "data".into(),
                        source: String::new(),
                    };
                    let hold = seconds(secs, nanos);
                    let holder = if flag { text.as_str() } else { "" };
                    let _ = core.trigger(&target, &text, &run.id, hold.as_ref(), holder, now);
                    continue;
                }
                7 => {
                    let request = v1::LeaseRequest {
                        run_id: run.id.clone(),
                        generation: if flag { run.generation } else { u64::from(count) },
                        request_id: u64::from(count),
                    };
                    if let snapgate_scheduler_core::LeaseAnswer::Granted(left) =
                        core.lease(&apps(), &request, now)
                    {
                        prop_assert!(left > Duration::zero());
                    }
                    continue;
                }
                9 => Observation::MoverStuck(v1::MoverStuck {
                    reason: if flag { text.clone() } else { String::new() },
                    message: text.repeat(3),
                    pod: text.clone(),
                    job: text,
                    attempt: count,
                    since: time,
                    deadline: time,
                }),
                8 => {
                    let target = v1::CopyTarget {
                        namespace: "apps".into(),
                        pvc: "data".into(),
                        source: String::new(),
                    };
                    let _ = core.end_hold(&target, &run.id, &text, now);
                    continue;
                }
                _ => {
                    core.handle_timeout(now);
                    continue;
                }
            };
            core.handle_report(&apps(), report(&run.id, run.generation, o), now);
            core.handle_timeout(now);
            let _ = core.poll_timeout();
        }
        for run in core.list_runs(&key("db"), 100).unwrap() {
            for t in [
                run.copy_time,
                run.waiting_since,
                run.wait_deadline,
                run.start_time,
                run.lease_deadline,
            ]
            .into_iter()
            .chain(run.holds.iter().map(|h| h.deadline))
            .chain(run.mover_stuck.iter().flat_map(|s| [s.since, s.deadline]))
            .flatten()
            {
                prop_assert!((0..1_000_000_000).contains(&t.nanos));
                prop_assert_eq!(timestamp(to_datetime(&t)), t);
            }
            prop_assert!(run.message.len() <= MAX_MESSAGE_BYTES);
            prop_assert!(run.mover_status.as_ref().is_none_or(|m| m.logs.len() <= MAX_LOG_BYTES));
            prop_assert!(prost::Message::encoded_len(&run) < 128 * 1024);
        }
    }

    /// A store holding any timestamps restores, and time moves on, without a panic.
    #[test]
    fn any_stored_times_restore_and_run_on(
        next_sync in any_time(),
        last_pruned in any_time(),
        waiting in any_time(),
        now in any_time(),
        next_run in any::<u64>(),
        generation in any::<u64>(),
    ) {
        let mut core = Scheduler::new();
        let mut stored = Stored::default();
        let mut s = restic_spec();
        s.restic.as_mut().unwrap().prune_interval_days = Some(i32::MAX);
        core.apply_source(key("db"), s, 0, t0()).unwrap();
        stored.take(&mut core);
        for r in stored.sources.values_mut() {
            let st = r.source.as_mut().unwrap().status.as_mut().unwrap();
            st.next_sync_time = Some(timestamp(next_sync));
            st.last_pruned = Some(timestamp(last_pruned));
            st.current_run_id.clear();
        }
        for r in stored.runs.values_mut() {
            r.phase = RunPhase::WaitingForTrigger as i32;
            r.waiting_since = Some(timestamp(waiting));
            r.wait_deadline = Some(timestamp(waiting));
            r.generation = generation;
            if generation % 2 == 0 {
                // Released by a Trigger, with a lease of any time.
                r.phase = RunPhase::Copying as i32;
                r.released_by = "rpc".into();
                r.trigger = "v".into();
                r.lease_deadline = Some(timestamp(waiting));
            }
        }
        let r = Scheduler::restore(
            stored.sources.values().cloned().collect(),
            stored.runs.values().cloned().collect(),
            next_run,
        );
        let mut core = r.scheduler;
        core.handle_timeout(now);
        let _ = core.poll_timeout();
        core.handle_timeout(DateTime::<Utc>::MAX_UTC);
        let _ = core.sync_now(&key("db"), "again", now);
    }
}
