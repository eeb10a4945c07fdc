//! Domain values for the edge's tests: one with every field set per mover, and proptest
//! strategies covering every mover and option.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use proptest::{collection::vec, option, prelude::*};
use snapgate_proto::time::{MAX_PROTO_SECONDS, MIN_PROTO_SECONDS};
use snapgate_scheduler_core::{
    RunId, SourceKey,
    model::{
        Author, Condition, CopyMethod, CopyTriggerOptions, CustomCa, Hold, JsonObject, MoverKind,
        MoverSpec, MoverStatus, MoverStuck, MoverVolume, RcloneSpec, ReleasedBy, ResticSpec,
        RetainPolicy, RsyncSpec, RsyncTlsSpec, Run, RunPhase, RunReason, RunResult, Source,
        SourceRecord, SourceSpec, SourceStatus, TimelineEntry, TimeoutPolicy, TriggerSpec,
        VolumeOptions,
    },
};

/// The error a stored message gets, and how to break a good one so that it gets it.
pub(crate) type Breaking<M> = (&'static str, Box<dyn Fn(&mut M)>);

/// `2026-03-02T10:00:00Z` plus `secs` seconds and `nanos`.
pub(crate) fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(1_772_445_600 + secs, nanos).unwrap()
}

/// A JSON object from a `json!` literal.
pub(crate) fn object(v: serde_json::Value) -> JsonObject {
    match v {
        serde_json::Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// Volume options with every field set.
pub(crate) fn full_volume(copy_method: CopyMethod) -> VolumeOptions {
    VolumeOptions {
        copy_method,
        capacity: Some("10Gi".into()),
        storage_class_name: Some("fast".into()),
        access_modes: vec!["ReadWriteOnce".into(), "ReadOnlyMany".into()],
        volume_snapshot_class_name: Some("csi-snap".into()),
        mover_security_context: Some(object(serde_json::json!({
            "runAsUser": 1000, "fsGroup": -3, "runAsNonRoot": true,
            "seLinuxOptions": {"level": null, "ratio": 1.5, "huge": 1e300},
        }))),
        mover_service_account: Some("mover".into()),
        mover_resources: Some(object(serde_json::json!({
            "limits": {"memory": "1Gi", "cpu": 0.25},
            "claims": [{"name": "gpu"}, [1, "a", false, null, []]],
        }))),
        mover_affinity: Some(object(serde_json::json!({"nodeAffinity": {}}))),
        mover_pod_labels: BTreeMap::from([
            ("team".into(), "db".into()),
            ("tier".into(), String::new()),
        ]),
        mover_volumes: vec![
            MoverVolume {
                mount_path: "extra".into(),
                volume_source: Some(object(serde_json::json!({
                    "persistentVolumeClaim": {"claimName": "extra-pvc", "readOnly": true}
                }))),
            },
            MoverVolume {
                mount_path: "none".into(),
                volume_source: None,
            },
        ],
    }
}

/// A custom CA with every field set.
pub(crate) fn full_ca() -> CustomCa {
    CustomCa {
        secret_name: "ca".into(),
        config_map_name: "ca-map".into(),
        key: "ca.crt".into(),
    }
}

/// restic with every field set.
pub(crate) fn full_restic() -> MoverKind {
    MoverKind::Restic(ResticSpec {
        repository: "restic-secret".into(),
        retain: Some(RetainPolicy {
            hourly: Some(6),
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(12),
            yearly: Some(2),
            within: Some("3d".into()),
            last: Some("5".into()),
        }),
        prune_interval_days: Some(7),
        cache_capacity: Some("2Gi".into()),
        cache_storage_class_name: Some("cache".into()),
        cache_access_modes: vec!["ReadWriteOnce".into()],
        custom_ca: Some(full_ca()),
        unlock: Some("u1".into()),
        keep_cache: true,
    })
}

/// Each mover with every field set, with a copy method each.
pub(crate) fn full_movers() -> Vec<MoverSpec> {
    vec![
        MoverSpec {
            volume: full_volume(CopyMethod::Snapshot),
            kind: full_restic(),
        },
        MoverSpec {
            volume: full_volume(CopyMethod::Clone),
            kind: MoverKind::Rclone(RcloneSpec {
                rclone_config: "rclone-secret".into(),
                rclone_config_section: "remote".into(),
                rclone_dest_path: "bucket/path".into(),
                custom_ca: Some(full_ca()),
            }),
        },
        MoverSpec {
            volume: full_volume(CopyMethod::None),
            kind: MoverKind::Rsync(RsyncSpec {
                ssh_keys: "ssh-secret".into(),
                address: "backup.example".into(),
                port: Some(2222),
                ssh_user: Some("root".into()),
                path: Some("/data".into()),
            }),
        },
        MoverSpec {
            volume: full_volume(CopyMethod::Direct),
            kind: MoverKind::RsyncTls(RsyncTlsSpec {
                key_secret: "psk".into(),
                address: "10.0.0.1".into(),
                port: Some(8000),
            }),
        },
    ]
}

/// A spec with every field set, around `mover`.
pub(crate) fn full_spec(mover: MoverSpec) -> SourceSpec {
    SourceSpec {
        source_pvc: "data".into(),
        trigger: TriggerSpec::Schedule("0 * * * *".into()),
        paused: true,
        mover,
        time_zone: "Europe/Berlin".into(),
        jitter: Some(Duration::seconds(90) + Duration::nanoseconds(5)),
        copy_trigger: Some(CopyTriggerOptions {
            wait_timeout: Some(Duration::minutes(10)),
            on_timeout: TimeoutPolicy::Skip,
            holders: vec!["app-a".into(), "app-b".into()],
            allowed_service_accounts: vec!["db-app".into()],
        }),
        skip_initial_run: true,
    }
}

/// An author.
pub(crate) fn author() -> Author {
    Author {
        user: "system:serviceaccount:apps:ci".into(),
        groups: vec!["system:authenticated".into(), "ops".into()],
    }
}

/// A stuck mover with every field set.
pub(crate) fn stuck() -> MoverStuck {
    MoverStuck {
        reason: "ImagePullBackOff".into(),
        message: "back-off pulling image".into(),
        pod: "volsync-src-db-abcde".into(),
        job: "volsync-src-db".into(),
        attempt: 2,
        since: Some(at(60, 1)),
        deadline: Some(at(660, 0)),
    }
}

/// A source record with every field set.
pub(crate) fn full_record() -> SourceRecord {
    SourceRecord {
        source: Source {
            key: SourceKey::new("apps", "db"),
            spec: full_spec(full_movers().remove(0)),
            status: SourceStatus {
                last_sync_time: Some(at(0, 0)),
                last_sync_start_time: Some(at(-30, 999_999_999)),
                last_sync_duration: Some(Duration::seconds(30) + Duration::milliseconds(1)),
                next_sync_time: Some(at(3600, 0)),
                last_manual_sync: "tag-1".into(),
                latest_mover_status: Some(MoverStatus {
                    result: "Successful".into(),
                    logs: "processed 10 files".into(),
                }),
                conditions: vec![Condition {
                    type_: "Synchronizing".into(),
                    status: "True".into(),
                    reason: "SyncInProgress".into(),
                    message: "a run".into(),
                    last_transition_time: Some(at(5, 0)),
                }],
                current_run: Some(RunId(2)),
                pause_note: "maintenance".into(),
                missed_intervals: 3,
                message: "a warning".into(),
                last_pruned: Some(at(-86_400, 0)),
            },
            version: 7,
            create_time: at(-1_000_000, 123),
            author: Some(author()),
        },
        deleting: true,
    }
}

/// A run with every field set.
pub(crate) fn full_run() -> Run {
    Run {
        id: RunId(42),
        source: SourceKey::new("apps", "db"),
        pvc: "data".into(),
        reason: RunReason::SyncNow,
        phase: RunPhase::CleaningUp,
        result: Some(RunResult::TimedOut),
        trigger: "v2".into(),
        start_time: at(0, 1),
        waiting_since: Some(at(1, 0)),
        wait_deadline: Some(at(601, 0)),
        copy_time: Some(at(2, 0)),
        end_time: Some(at(3, 0)),
        gated: true,
        timeout_reported: true,
        message: "timed out".into(),
        timeline: vec![
            TimelineEntry {
                time: at(1, 0),
                event: "WaitingForTrigger".into(),
                message: "waiting".into(),
            },
            TimelineEntry {
                time: at(2, 5),
                event: "Released".into(),
                message: String::new(),
            },
        ],
        mover_status: Some(MoverStatus {
            result: "Failed".into(),
            logs: "boom".into(),
        }),
        mover_failures: 2,
        request_id: "req-1".into(),
        released_by: Some(ReleasedBy::Rpc),
        generation: 9,
        latest_trigger: "v1".into(),
        restic_prune: true,
        spec: Some(full_spec(full_movers().remove(0))),
        lease_deadline: Some(at(100, 0)),
        spent_triggers: vec!["v0".into(), "v1".into()],
        holds: vec![
            Hold {
                holder: "app-a".into(),
                value: "v2".into(),
                deadline: Some(at(100, 0)),
            },
            Hold {
                holder: "app-b".into(),
                value: "v3".into(),
                deadline: None,
            },
        ],
        author: Some(author()),
        mover_stuck: Some(stuck()),
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies

/// A JSON value that survives protobuf's doubles: integers within ±2^53, non-integral doubles.
fn json_value() -> BoxedStrategy<serde_json::Value> {
    use serde_json::Value as J;
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        "[a-z0-9 ]{0,8}".prop_map(J::String),
        (-(1i64 << 53)..=(1i64 << 53)).prop_map(J::from),
        (-1_000_000i32..1_000_000).prop_map(|k| J::from(f64::from(k) + 0.5)),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(J::Array),
            proptest::collection::btree_map("[a-zA-Z]{1,6}", inner, 0..4)
                .prop_map(|m| J::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A JSON object.
pub(crate) fn json_object() -> BoxedStrategy<JsonObject> {
    proptest::collection::btree_map("[a-zA-Z]{1,6}", json_value(), 0..4)
        .prop_map(|m| m.into_iter().collect())
        .boxed()
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9./:-]{0,10}"
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    vec(text(), 0..3)
}

/// Any time a protobuf timestamp carries.
pub(crate) fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (MIN_PROTO_SECONDS..=MAX_PROTO_SECONDS, 0u32..1_000_000_000)
        .prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap())
}

/// Any chrono duration: nanosecond ones, and whole seconds up to chrono's bounds.
pub(crate) fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        any::<i64>().prop_map(Duration::nanoseconds),
        (-(i64::MAX / 1000)..=(i64::MAX / 1000)).prop_map(|s| Duration::try_seconds(s).unwrap()),
    ]
}

fn copy_method() -> impl Strategy<Value = CopyMethod> {
    prop_oneof![
        Just(CopyMethod::Direct),
        Just(CopyMethod::None),
        Just(CopyMethod::Clone),
        Just(CopyMethod::Snapshot),
    ]
}

fn custom_ca() -> impl Strategy<Value = Option<CustomCa>> {
    option::of(
        (text(), text(), text()).prop_map(|(secret_name, config_map_name, key)| CustomCa {
            secret_name,
            config_map_name,
            key,
        }),
    )
}

fn volume() -> BoxedStrategy<VolumeOptions> {
    let mover_volume =
        (text(), option::of(json_object())).prop_map(|(mount_path, source)| MoverVolume {
            mount_path,
            volume_source: source,
        });
    (
        (
            copy_method(),
            option::of(text()),
            option::of(text()),
            texts(),
            option::of(text()),
            option::of(json_object()),
        ),
        (
            option::of(text()),
            option::of(json_object()),
            option::of(json_object()),
            proptest::collection::btree_map(text(), text(), 0..3),
            vec(mover_volume, 0..3),
        ),
    )
        .prop_map(
            |(
                (copy_method, capacity, storage_class_name, access_modes, snapshot_class, context),
                (account, resources, affinity, labels, volumes),
            )| VolumeOptions {
                copy_method,
                capacity,
                storage_class_name,
                access_modes,
                volume_snapshot_class_name: snapshot_class,
                mover_security_context: context,
                mover_service_account: account,
                mover_resources: resources,
                mover_affinity: affinity,
                mover_pod_labels: labels,
                mover_volumes: volumes,
            },
        )
        .boxed()
}

fn mover_kind() -> BoxedStrategy<MoverKind> {
    let retain = option::of(
        (
            option::of(any::<i32>()),
            option::of(any::<i32>()),
            option::of(any::<i32>()),
            option::of(any::<i32>()),
            option::of(any::<i32>()),
            option::of(text()),
            option::of(text()),
        )
            .prop_map(|(hourly, daily, weekly, monthly, yearly, within, last)| {
                RetainPolicy {
                    hourly,
                    daily,
                    weekly,
                    monthly,
                    yearly,
                    within,
                    last,
                }
            }),
    );
    let restic = (
        (text(), retain, option::of(any::<i32>()), option::of(text())),
        (
            option::of(text()),
            texts(),
            custom_ca(),
            option::of(text()),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (repository, retain, prune_interval_days, cache_capacity),
                (cache_class, cache_modes, custom_ca, unlock, keep_cache),
            )| {
                MoverKind::Restic(ResticSpec {
                    repository,
                    retain,
                    prune_interval_days,
                    cache_capacity,
                    cache_storage_class_name: cache_class,
                    cache_access_modes: cache_modes,
                    custom_ca,
                    unlock,
                    keep_cache,
                })
            },
        );
    let rclone = (text(), text(), text(), custom_ca()).prop_map(|(c, s, d, ca)| {
        MoverKind::Rclone(RcloneSpec {
            rclone_config: c,
            rclone_config_section: s,
            rclone_dest_path: d,
            custom_ca: ca,
        })
    });
    let rsync = (
        text(),
        text(),
        option::of(any::<i32>()),
        option::of(text()),
        option::of(text()),
    )
        .prop_map(|(ssh_keys, address, port, ssh_user, path)| {
            MoverKind::Rsync(RsyncSpec {
                ssh_keys,
                address,
                port,
                ssh_user,
                path,
            })
        });
    let rsync_tls = (text(), text(), option::of(any::<i32>())).prop_map(|(k, a, p)| {
        MoverKind::RsyncTls(RsyncTlsSpec {
            key_secret: k,
            address: a,
            port: p,
        })
    });
    prop_oneof![
        restic.boxed(),
        rclone.boxed(),
        rsync.boxed(),
        rsync_tls.boxed()
    ]
    .boxed()
}

/// Any spec the domain can hold: every mover, every option.
pub(crate) fn spec() -> BoxedStrategy<SourceSpec> {
    let trigger = prop_oneof![
        Just(TriggerSpec::Continuous),
        text().prop_map(TriggerSpec::Schedule),
        text().prop_map(TriggerSpec::Manual),
    ];
    let copy_trigger = option::of(
        (
            option::of(duration()),
            prop_oneof![Just(TimeoutPolicy::KeepWaiting), Just(TimeoutPolicy::Skip)],
            texts(),
            texts(),
        )
            .prop_map(
                |(wait_timeout, on_timeout, holders, allowed)| CopyTriggerOptions {
                    wait_timeout,
                    on_timeout,
                    holders,
                    allowed_service_accounts: allowed,
                },
            ),
    );
    (
        (text(), trigger, any::<bool>(), volume(), mover_kind()),
        (text(), option::of(duration()), copy_trigger, any::<bool>()),
    )
        .prop_map(
            |(
                (source_pvc, trigger, paused, volume, kind),
                (time_zone, jitter, copy_trigger, skip_initial_run),
            )| SourceSpec {
                source_pvc,
                trigger,
                paused,
                mover: MoverSpec { volume, kind },
                time_zone,
                jitter,
                copy_trigger,
                skip_initial_run,
            },
        )
        .boxed()
}
