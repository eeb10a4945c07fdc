//! Property tests: everything the agent reads from the cluster, and every directive field, is
//! hostile. For arbitrary objects, annotation values, times (chrono's and jiff's extremes,
//! protobuf timestamps with out-of-range seconds or nanos), counts and durations, the agent's
//! pure core never panics, and what it reports or writes stays within its bounds.
//!
//! Each property runs a bounded number of cases ([`CASES`]) without a regressions file, so the
//! suite stays fast; every failure found became a regular test next to the code it fixed.
//! Strategies are boxed: unboxed, their nested value trees overflow a test thread's stack in
//! debug builds.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use chrono::{DateTime, Utc};
use k8s_openapi::{
    api::{
        batch::v1::{Job, JobCondition, JobSpec, JobStatus},
        core::v1::{
            ContainerState, ContainerStateWaiting, ContainerStatus, Event, EventSeries, Namespace,
            ObjectReference, PersistentVolumeClaim, PersistentVolumeClaimSpec,
            PersistentVolumeClaimStatus, Pod, PodCondition, PodStatus, VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{MicroTime, ObjectMeta, Time},
    },
    jiff::Timestamp,
};
use proptest::prelude::*;
use serde_json::Value;
use snapgate_agent_core::{
    Mover, annotations, bounds, classify, names,
    plan::{
        self, Action, Lease, MoverOutcome, MoverPods, Observed, PlanConfig, Stuck, Temporary,
        TemporaryKind,
    },
    resources::{VolumeSnapshot, VolumeSnapshotError, VolumeSnapshotStatus},
    review::{self, Review, SourceAuthors},
    stuck,
};
use snapgate_proto::v1::{self, report::Observation};

/// Cases per property.
const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        rng_seed: seed(),
        ..ProptestConfig::default()
    }
}

/// The same cases on every run, so CI is deterministic; `PROPTEST_RNG_SEED=<n>` explores others.
fn seed() -> proptest::test_runner::RngSeed {
    let env = std::env::var("PROPTEST_RNG_SEED").ok();
    proptest::test_runner::RngSeed::Fixed(env.and_then(|s| s.parse().ok()).unwrap_or(0x5eed))
}

const NS: &str = "app";
const SOURCE: &str = "db";
const RUN: &str = "run-7";
const PVC: &str = "data";

// ------------------------------------------------------------------------------ strategies

/// Characters that break naive code: invisible ones, multi-byte ones, newlines.
fn nasty_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => any::<char>(),
        1 => prop::sample::select(vec![
            '\u{202E}', '\u{200B}', '\u{FEFF}', '\u{0}', '\n', '\r', '\t', 'é', '😀', '\u{10FFFF}',
            '-', '.', '/', ' ', 'a', 'Z', '0',
        ]),
    ]
}

/// Arbitrary text: empty, plausible, arbitrary unicode, nasty, or long (over every bound).
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        2 => Just(String::new()),
        3 => "[a-z0-9][a-z0-9.-]{0,20}",
        3 => any::<String>(),
        3 => prop::collection::vec(nasty_char(), 0..24).prop_map(String::from_iter),
        1 => (prop::collection::vec(nasty_char(), 1..6), 50usize..400)
            .prop_map(|(chars, n)| String::from_iter(chars).repeat(n)),
        1 => (prop::sample::select(vec!["a", "é", "😀", "\u{202E}"]), 200usize..1200)
            .prop_map(|(s, n)| s.repeat(n)),
    ]
    .boxed()
}

/// A chrono time anywhere in chrono's range, with its extremes and the proto range's edges.
fn chrono_time() -> BoxedStrategy<DateTime<Utc>> {
    let min = DateTime::<Utc>::MIN_UTC.timestamp();
    let max = DateTime::<Utc>::MAX_UTC.timestamp();
    prop_oneof![
        1 => Just(DateTime::<Utc>::MIN_UTC),
        1 => Just(DateTime::<Utc>::MAX_UTC),
        1 => Just(DateTime::<Utc>::UNIX_EPOCH),
        1 => prop::sample::select(vec![
            bounds::MIN_PROTO_SECONDS - 1,
            bounds::MIN_PROTO_SECONDS,
            bounds::MAX_PROTO_SECONDS,
            bounds::MAX_PROTO_SECONDS + 1,
        ])
        .prop_map(|s| DateTime::from_timestamp(s, 999_999_999).unwrap()),
        3 => (min..=max, 0u32..2_000_000_000)
            .prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap_or_default()),
        4 => (1_700_000_000i64..1_900_000_000, 0u32..1_000_000_000)
            .prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap()),
    ]
    .boxed()
}

/// A jiff time (what k8s-openapi's `Time` holds) anywhere in jiff's range.
fn jiff_time() -> BoxedStrategy<Timestamp> {
    let min = Timestamp::MIN.as_second();
    let max = Timestamp::MAX.as_second();
    prop_oneof![
        1 => Just(Timestamp::MIN),
        1 => Just(Timestamp::MAX),
        1 => Just(Timestamp::UNIX_EPOCH),
        3 => (min..=max, 0i32..1_000_000_000)
            .prop_map(|(s, n)| Timestamp::new(s, n).unwrap_or(Timestamp::UNIX_EPOCH)),
        4 => (1_700_000_000i64..1_900_000_000, 0i32..1_000_000_000)
            .prop_map(|(s, n)| Timestamp::new(s, n).unwrap()),
    ]
    .boxed()
}

/// A protobuf timestamp from the wire: any seconds, any nanos.
fn proto_timestamp() -> BoxedStrategy<prost_types::Timestamp> {
    prop_oneof![
        2 => (any::<i64>(), any::<i32>()),
        1 => (
            prop::sample::select(vec![
                i64::MIN,
                i64::MAX,
                bounds::MIN_PROTO_SECONDS - 1,
                bounds::MIN_PROTO_SECONDS,
                bounds::MAX_PROTO_SECONDS,
                bounds::MAX_PROTO_SECONDS + 1,
                DateTime::<Utc>::MAX_UTC.timestamp(),
                DateTime::<Utc>::MIN_UTC.timestamp(),
            ]),
            prop::sample::select(vec![i32::MIN, -1, 0, 999_999_999, 1_000_000_000, i32::MAX]),
        ),
        3 => (1_700_000_000i64..1_900_000_000, 0i32..1_000_000_000),
    ]
    .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos })
    .boxed()
}

/// A count from the cluster or the wire, biased to its edges.
fn count_i32() -> impl Strategy<Value = i32> {
    prop_oneof![
        3 => 0i32..12,
        1 => prop::sample::select(vec![i32::MIN, -1, i32::MAX - 1, i32::MAX]),
        1 => any::<i32>(),
    ]
}

fn count_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => 0u32..12,
        2 => (u32::MAX - 3)..=u32::MAX,
        1 => any::<u32>(),
    ]
}

fn annotation_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            annotations::USE_COPY_TRIGGER,
            annotations::COPY_TRIGGER,
            annotations::LATEST_COPY_STATUS,
            annotations::LATEST_COPY_TRIGGER,
            annotations::LATEST_COPY_TRIGGER_WAITING_SINCE,
            annotations::RESTIC_LAST_UNLOCKED,
            annotations::PRIVILEGED_MOVERS,
            plan::ATTEMPT,
        ])
        .prop_map(str::to_owned),
        1 => text(),
    ]
}

/// An annotation value: arbitrary, or one the agent knows how to read.
fn annotation_value() -> BoxedStrategy<String> {
    prop_oneof![
        2 => text(),
        1 => prop::sample::select(vec![
            "WaitingForTrigger", "InProgress", "Completed", "true", "TRUE", "2026-01-02T03:04:05Z",
            "+10000-01-01T00:00:00Z", "-0001-01-01T00:00:00Z", "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:60Z", "2026-01-02T03:04:05+23:59", "1", "0", "4294967295",
            "4294967296", "-1",
        ])
        .prop_map(str::to_owned),
        1 => chrono_time().prop_map(annotations::format_waiting_since),
    ]
    .boxed()
}

fn annotation_map() -> BoxedStrategy<Option<BTreeMap<String, String>>> {
    prop::option::of(prop::collection::btree_map(
        annotation_key(),
        annotation_value(),
        0..8,
    ))
    .boxed()
}

/// Labels: this run's, an earlier run's, the source's (a cache), or arbitrary.
fn labels() -> BoxedStrategy<Option<BTreeMap<String, String>>> {
    prop_oneof![
        3 => Just(Some(names::temporary_labels(SOURCE, RUN))),
        1 => Just(Some(names::temporary_labels(SOURCE, "run-6"))),
        1 => Just(Some(names::source_labels(SOURCE))),
        1 => Just(None),
        1 => prop::option::of(prop::collection::btree_map(text(), text(), 0..4)),
    ]
    .boxed()
}

fn meta(name: impl Strategy<Value = String> + 'static) -> BoxedStrategy<ObjectMeta> {
    (
        prop::option::of(name),
        annotation_map(),
        labels(),
        prop::option::weighted(0.2, jiff_time()),
        prop::option::of(jiff_time()),
        prop::option::of(text()),
    )
        .prop_map(
            |(name, annotations, labels, deletion, creation, uid)| ObjectMeta {
                name,
                namespace: Some(NS.to_owned()),
                annotations,
                labels,
                deletion_timestamp: deletion.map(Time),
                creation_timestamp: creation.map(Time),
                uid,
                ..Default::default()
            },
        )
        .boxed()
}

fn quantity() -> BoxedStrategy<Option<Quantity>> {
    prop::option::of(
        prop_oneof![
            2 => Just("1Gi".to_owned()),
            1 => Just("0".to_owned()),
            1 => text(),
        ]
        .prop_map(Quantity),
    )
    .boxed()
}

fn pvc(name: &'static str) -> BoxedStrategy<PersistentVolumeClaim> {
    let spec = (
        prop::option::of(prop::collection::vec(
            prop_oneof![
                Just("ReadWriteOnce".to_owned()),
                Just("ReadOnlyMany".to_owned()),
                text()
            ],
            0..3,
        )),
        prop::option::of(prop_oneof![
            Just("Filesystem".to_owned()),
            Just("Block".to_owned()),
            text()
        ]),
        prop::option::of(text()),
        quantity(),
    )
        .prop_map(
            |(access_modes, volume_mode, class, request)| PersistentVolumeClaimSpec {
                access_modes,
                volume_mode,
                storage_class_name: class,
                resources: request.map(|q| VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_owned(), q)])),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
    let status = (
        prop::option::of(prop_oneof![
            Just("Bound".to_owned()),
            Just("Lost".to_owned()),
            Just("Pending".to_owned()),
            text()
        ]),
        quantity(),
    )
        .prop_map(|(phase, capacity)| PersistentVolumeClaimStatus {
            phase,
            capacity: capacity.map(|q| BTreeMap::from([("storage".to_owned(), q)])),
            ..Default::default()
        });
    (
        meta(prop_oneof![4 => Just(name.to_owned()), 1 => text()]),
        prop::option::of(spec),
        prop::option::of(status),
    )
        .prop_map(|(metadata, spec, status)| PersistentVolumeClaim {
            metadata,
            spec,
            status,
        })
        .boxed()
}

fn snapshot() -> BoxedStrategy<VolumeSnapshot> {
    let status = (
        prop::option::of(prop_oneof![Just("content".to_owned()), text()]),
        prop::option::of(jiff_time()),
        prop::option::of(any::<bool>()),
        quantity(),
        prop::option::of((prop::option::of(text()), prop::option::of(jiff_time()))),
    )
        .prop_map(
            |(bound, creation_time, ready, restore_size, error)| VolumeSnapshotStatus {
                bound_volume_snapshot_content_name: bound,
                creation_time: creation_time.map(Time),
                ready_to_use: ready,
                restore_size,
                error: error.map(|(message, time)| VolumeSnapshotError {
                    message,
                    time: time.map(Time),
                }),
            },
        );
    (
        meta(prop_oneof![4 => Just("volsync-db-src".to_owned()), 1 => text()]),
        prop::option::of(status),
    )
        .prop_map(|(metadata, status)| VolumeSnapshot {
            metadata,
            spec: Default::default(),
            status,
        })
        .boxed()
}

fn job_condition() -> BoxedStrategy<JobCondition> {
    (
        prop_oneof![
            Just("Failed".to_owned()),
            Just("Complete".to_owned()),
            text()
        ],
        prop_oneof![Just("True".to_owned()), Just("False".to_owned()), text()],
        prop::option::of(jiff_time()),
        prop::option::of(text()),
    )
        .prop_map(|(type_, status, at, message)| JobCondition {
            type_,
            status,
            last_transition_time: at.map(Time),
            message,
            ..Default::default()
        })
        .boxed()
}

fn job() -> BoxedStrategy<Job> {
    let spec = (prop::option::of(count_i32()), prop::option::of(count_i32())).prop_map(
        |(backoff_limit, parallelism)| JobSpec {
            backoff_limit,
            parallelism,
            ..Default::default()
        },
    );
    let status = (
        prop::option::of(count_i32()),
        prop::option::of(count_i32()),
        prop::option::of(prop::collection::vec(job_condition(), 0..4)),
    )
        .prop_map(|(succeeded, failed, conditions)| JobStatus {
            succeeded,
            failed,
            conditions,
            ..Default::default()
        });
    (
        meta(prop_oneof![
            4 => Just("volsync-src-db".to_owned()),
            1 => text()
        ]),
        prop::option::of(spec),
        prop::option::of(status),
    )
        .prop_map(|(metadata, spec, status)| Job {
            metadata,
            spec,
            status,
        })
        .boxed()
}

fn pod() -> BoxedStrategy<Pod> {
    (
        meta(text()),
        prop::option::of(prop_oneof![
            Just("Failed".to_owned()),
            Just("Succeeded".to_owned()),
            Just("Running".to_owned()),
            text()
        ]),
    )
        .prop_map(|(metadata, phase)| Pod {
            metadata,
            status: Some(PodStatus {
                phase,
                ..Default::default()
            }),
            ..Default::default()
        })
        .boxed()
}

/// A reason Kubernetes gives (one the agent knows, or another), or arbitrary text.
fn reason() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(stuck::StuckReason::ALL.to_vec())
            .prop_map(|r| r.as_str().to_owned()),
        1 => prop::sample::select(vec![
            "ContainerCreating", "PodInitializing", "Unschedulable", "BackOff", "Failed", "",
        ])
        .prop_map(str::to_owned),
        1 => text(),
    ]
    .boxed()
}

/// The uid of the Job [`job`] may have, or another.
fn job_uid() -> BoxedStrategy<String> {
    prop_oneof![3 => Just("job-uid".to_owned()), 1 => text()].boxed()
}

fn pod_condition() -> BoxedStrategy<PodCondition> {
    (
        prop::sample::select(vec![
            "PodScheduled",
            "ContainersReady",
            "Ready",
            "Initialized",
            "PodReadyToStartContainers",
            "Other",
        ]),
        prop_oneof![Just("True".to_owned()), Just("False".to_owned()), text()],
        prop::option::of(reason()),
        prop::option::of(text()),
        prop::option::of(jiff_time()),
    )
        .prop_map(|(kind, status, reason, message, at)| PodCondition {
            type_: kind.to_owned(),
            status,
            reason,
            message,
            last_transition_time: at.map(Time),
            ..Default::default()
        })
        .boxed()
}

fn container_status() -> BoxedStrategy<ContainerStatus> {
    (text(), prop::option::of(reason()), prop::option::of(text()))
        .prop_map(|(name, reason, message)| ContainerStatus {
            name,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting { reason, message }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .boxed()
}

/// A pod a mover Job may have: labelled with the Job's uid or name (or not), in any phase,
/// with any conditions and waiting containers.
fn mover_pod() -> BoxedStrategy<Pod> {
    (
        meta(text()),
        job_uid(),
        prop::option::of(prop_oneof![
            Just("Pending".to_owned()),
            Just("Running".to_owned()),
            Just("Failed".to_owned()),
            text()
        ]),
        prop::option::of(prop::collection::vec(pod_condition(), 0..5)),
        prop::option::of(prop::collection::vec(container_status(), 0..3)),
        prop::option::of(prop::collection::vec(container_status(), 0..2)),
        prop::option::of(jiff_time()),
    )
        .prop_map(
            |(mut metadata, uid, phase, conditions, containers, init, start)| {
                metadata
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert("batch.kubernetes.io/controller-uid".into(), uid);
                Pod {
                    metadata,
                    status: Some(PodStatus {
                        phase,
                        conditions,
                        container_statuses: containers,
                        init_container_statuses: init,
                        start_time: start.map(Time),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            },
        )
        .boxed()
}

/// A Warning (or other) Event about a pod or a Job, with any times.
fn stuck_event() -> BoxedStrategy<Event> {
    (
        (
            meta(text()),
            prop::option::of(prop_oneof![
                Just("Pod".to_owned()),
                Just("Job".to_owned()),
                text()
            ]),
            prop::option::of(text()),
            prop::option::of(prop_oneof![job_uid(), text()]),
        ),
        (
            prop::option::of(reason()),
            prop::option::of(text()),
            prop::option::of(prop_oneof![
                3 => Just("Warning".to_owned()),
                1 => text()
            ]),
            prop::option::of(jiff_time()),
            prop::option::of(jiff_time()),
            prop::option::of(jiff_time()),
            prop::option::of(jiff_time()),
        ),
    )
        .prop_map(
            |((metadata, kind, name, uid), (reason, message, type_, first, last, at, series))| {
                Event {
                    metadata,
                    involved_object: ObjectReference {
                        kind,
                        name,
                        uid,
                        ..Default::default()
                    },
                    reason,
                    message,
                    type_,
                    first_timestamp: first.map(Time),
                    last_timestamp: last.map(Time),
                    event_time: at.map(MicroTime),
                    series: series.map(|t| EventSeries {
                        count: Some(2),
                        last_observed_time: Some(MicroTime(t)),
                    }),
                    ..Default::default()
                }
            },
        )
        .boxed()
}

/// What the shell passes a plan of the mover Job's pods: not known, nothing stuck, or a
/// trouble (as [`stuck::trouble`] makes them, or any) first seen at any time.
fn mover_trouble() -> BoxedStrategy<(bool, Option<stuck::Trouble>, DateTime<Utc>)> {
    let trouble = (
        prop::sample::select(stuck::StuckReason::ALL.to_vec()),
        text(),
        prop::option::of(text()),
        text(),
        prop::option::of(chrono_time()),
    )
        .prop_map(|(reason, message, pod, key, since)| stuck::Trouble {
            reason,
            message,
            pod,
            key,
            since,
        });
    (any::<bool>(), prop::option::of(trouble), chrono_time()).boxed()
}

fn copy_method() -> impl Strategy<Value = i32> {
    prop_oneof![12 => 1i32..=4, 1 => Just(0), 1 => any::<i32>()]
}

fn name_or_text(name: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![3 => Just(name.to_owned()), 1 => text()]
}

fn restic_spec() -> BoxedStrategy<v1::ReplicationSourceResticSpec> {
    (
        copy_method(),
        prop::option::of(text()),
        name_or_text("repo"),
        prop::option::of(prop_oneof![3 => "[a-z0-9]{1,8}", 1 => text()]),
        prop::option::of(
            (
                prop::option::of(count_i32()),
                prop::option::of(text()),
                prop::option::of(prop_oneof![Just("10".to_owned()), text()]),
            )
                .prop_map(|(daily, within, last)| v1::ResticRetainPolicy {
                    daily,
                    within,
                    last,
                    ..Default::default()
                }),
        ),
        prop::option::of(text()),
        prop::collection::vec(prop_oneof![Just("ReadWriteOnce".to_owned()), text()], 0..2),
    )
        .prop_map(
            |(copy_method, capacity, repository, unlock, retain, cache_capacity, access_modes)| {
                v1::ReplicationSourceResticSpec {
                    copy_method,
                    capacity,
                    repository,
                    unlock,
                    retain,
                    cache_capacity,
                    access_modes,
                    ..Default::default()
                }
            },
        )
        .boxed()
}

fn rclone_spec() -> BoxedStrategy<v1::ReplicationSourceRcloneSpec> {
    (
        copy_method(),
        name_or_text("rclone-secret"),
        name_or_text("remote"),
        name_or_text("bucket/path"),
    )
        .prop_map(
            |(copy_method, rclone_config, rclone_config_section, rclone_dest_path)| {
                v1::ReplicationSourceRcloneSpec {
                    copy_method,
                    rclone_config,
                    rclone_config_section,
                    rclone_dest_path,
                    ..Default::default()
                }
            },
        )
        .boxed()
}

fn rsync_spec() -> BoxedStrategy<v1::ReplicationSourceRsyncSpec> {
    (
        copy_method(),
        name_or_text("keys"),
        name_or_text("10.0.0.1"),
        prop::option::of(count_i32()),
    )
        .prop_map(
            |(copy_method, ssh_keys, address, port)| v1::ReplicationSourceRsyncSpec {
                copy_method,
                ssh_keys,
                address,
                port,
                ..Default::default()
            },
        )
        .boxed()
}

fn rsync_tls_spec() -> BoxedStrategy<v1::ReplicationSourceRsyncTlsSpec> {
    (
        copy_method(),
        name_or_text("tls-keys"),
        name_or_text("10.0.0.2"),
        prop::option::of(count_i32()),
    )
        .prop_map(
            |(copy_method, key_secret, address, port)| v1::ReplicationSourceRsyncTlsSpec {
                copy_method,
                key_secret,
                address,
                port,
                ..Default::default()
            },
        )
        .boxed()
}

fn source_spec() -> BoxedStrategy<v1::SourceSpec> {
    (
        name_or_text(PVC),
        any::<bool>(),
        prop_oneof![1 => Just(0u8), 16 => 1u8..=4, 1 => Just(5u8)],
        restic_spec(),
        rclone_spec(),
        rsync_spec(),
        rsync_tls_spec(),
    )
        .prop_map(
            |(source_pvc, paused, which, restic, rclone, rsync, rsync_tls)| {
                let mut spec = v1::SourceSpec {
                    source_pvc,
                    paused,
                    ..Default::default()
                };
                match which {
                    0 => {}
                    1 => spec.restic = Some(restic),
                    2 => spec.rclone = Some(rclone),
                    3 => spec.rsync = Some(rsync),
                    4 => spec.rsync_tls = Some(rsync_tls),
                    5 => {
                        spec.restic = Some(restic);
                        spec.rsync = Some(rsync);
                    }
                    _ => spec.restic = Some(restic),
                }
                spec
            },
        )
        .boxed()
}

fn directive() -> BoxedStrategy<v1::Directive> {
    (
        (
            name_or_text(RUN),
            name_or_text(NS),
            name_or_text(SOURCE),
            prop::option::weighted(0.95, source_spec()),
            prop_oneof![20 => 1i32..=5, 1 => Just(0), 1 => any::<i32>()],
            prop_oneof![Just(1u64), Just(u64::MAX), any::<u64>()],
        ),
        (
            prop::option::of(proto_timestamp()),
            any::<bool>(),
            prop_oneof![2 => Just("first".to_owned()), 1 => text()],
            any::<[bool; 5]>(),
            count_u32(),
            author(),
        ),
    )
        .prop_map(
            |(
                (run_id, namespace, name, spec, phase, generation),
                (waiting_since, timeout_reported, trigger, flags, mover_failures, author),
            )| {
                let trigger_copy = trigger.clone();
                v1::Directive {
                    run_id,
                    source: Some(v1::SourceRef { namespace, name }),
                    spec,
                    phase,
                    generation,
                    waiting_since,
                    timeout_reported,
                    trigger,
                    write_copy_trigger: flags[0],
                    gated: flags[1],
                    clear_waiting: flags[2],
                    restic_prune: flags[3],
                    lease: flags[4],
                    mover_failures,
                    consumed_trigger: if flags[0] {
                        trigger_copy
                    } else {
                        String::new()
                    },
                    author,
                }
            },
        )
        .boxed()
}

/// No author, an ordinary one, or one past the bounds the agent keeps.
fn author() -> BoxedStrategy<Option<v1::Author>> {
    let huge = || "u".repeat(review::MAX_NAME_BYTES + 1);
    prop_oneof![
        1 => Just(None),
        3 => (text(), prop::collection::vec(text(), 0..3))
            .prop_map(|(user, groups)| Some(v1::Author { user, groups })),
        1 => Just(Some(v1::Author { user: huge(), groups: vec![] })),
        1 => Just(Some(v1::Author {
            user: "alice".into(),
            groups: vec![String::new(); review::MAX_GROUPS + 1],
        })),
    ]
    .boxed()
}

fn duration() -> BoxedStrategy<Duration> {
    prop_oneof![
        2 => (0u64..1000).prop_map(Duration::from_secs),
        1 => Just(Duration::MAX),
        2 => ((1u64 << 40)..(1u64 << 53)).prop_map(Duration::from_secs),
        1 => Just(Duration::ZERO),
        1 => (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
    .boxed()
}

fn plan_config() -> BoxedStrategy<PlanConfig> {
    prop_oneof![
        1 => Just(PlanConfig::default()),
        1 => Just(PlanConfig {
            source_authors: SourceAuthors::Trust,
            ..PlanConfig::default()
        }),
        2 => (duration(), duration()).prop_map(|(mover_backoff, mover_backoff_max)| PlanConfig {
            mover_backoff,
            mover_backoff_max,
            ..PlanConfig::default()
        }),
    ]
    .boxed()
}

/// Everything a plan may observe, owned.
#[derive(Debug, Clone)]
struct World {
    pvc: Option<PersistentVolumeClaim>,
    snapshot: Option<VolumeSnapshot>,
    copy_pvc: Option<PersistentVolumeClaim>,
    cache_pvc: Option<PersistentVolumeClaim>,
    job: Option<Job>,
    secrets: Option<BTreeMap<String, BTreeSet<String>>>,
    privileged: bool,
    mover_account: bool,
    volsync: Option<Vec<snapgate_agent_core::volsync::ReplicationSourceSeen>>,
    failed_attempts: u32,
    job_reported: bool,
    temporaries: Vec<Temporary>,
    lease: Lease,
    /// The answer to the author's review, as the shell keeps it (`None`: not asked).
    review: Option<Result<(), String>>,
    /// Whether the mover Job's pods are known, what keeps it from running, and when that
    /// was first seen.
    mover: (bool, Option<stuck::Trouble>, DateTime<Utc>),
    next_attempt_at: Option<DateTime<Utc>>,
    job_failed_seen: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

impl World {
    fn observed(&self) -> Observed<'_> {
        Observed {
            pvc: self.pvc.as_ref(),
            snapshot: self.snapshot.as_ref(),
            copy_pvc: self.copy_pvc.as_ref(),
            cache_pvc: self.cache_pvc.as_ref(),
            job: self.job.as_ref(),
            secrets: self.secrets.as_ref(),
            privileged: self.privileged,
            mover_account: self.mover_account,
            volsync: self.volsync.as_deref(),
            mover_volume_pvcs: &[],
            failed_attempts: self.failed_attempts,
            job_reported: self.job_reported,
            temporaries: &self.temporaries,
            lease: self.lease,
            review: match &self.review {
                None => Review::Pending,
                Some(Ok(())) => Review::Allowed,
                Some(Err(why)) => Review::Denied(why),
            },
            pods: Some(&[]),
            mover_pods: match &self.mover {
                (false, _, _) => MoverPods::Unknown,
                (true, trouble, first_seen) => MoverPods::Known(trouble.as_ref().map(|t| Stuck {
                    trouble: t,
                    first_seen: *first_seen,
                })),
            },
            next_attempt_at: self.next_attempt_at,
            job_failed_seen: self.job_failed_seen,
            now: self.now,
        }
    }
}

fn secrets() -> BoxedStrategy<Option<BTreeMap<String, BTreeSet<String>>>> {
    let names = prop_oneof![
        Just("repo".to_owned()),
        Just("rclone-secret".to_owned()),
        Just("keys".to_owned()),
        Just("tls-keys".to_owned()),
        text(),
    ];
    let keys = prop::collection::btree_set(
        prop_oneof![
            Just("RCLONE_X".to_owned()),
            Just("GOOGLE_APPLICATION_CREDENTIALS".to_owned()),
            text()
        ],
        0..3,
    );
    prop::option::of(prop::collection::btree_map(names, keys, 0..4)).boxed()
}

fn temporary() -> BoxedStrategy<Temporary> {
    (
        prop::sample::select(vec![
            TemporaryKind::Snapshot,
            TemporaryKind::Pvc,
            TemporaryKind::Job,
        ]),
        text(),
        any::<bool>(),
    )
        .prop_map(|(kind, name, terminating)| Temporary {
            kind,
            name,
            terminating,
        })
        .boxed()
}

fn world() -> BoxedStrategy<World> {
    (
        (
            prop::option::weighted(0.9, pvc(PVC)),
            prop::option::of(snapshot()),
            prop::option::of(pvc("volsync-db-src")),
            prop::option::of(pvc("volsync-src-db-cache")),
            prop::option::of(job()),
            secrets(),
            any::<bool>(),
            prop::option::of(prop::collection::vec(
                (
                    text(),
                    prop_oneof![Just(PVC.to_owned()), text()],
                    any::<bool>(),
                )
                    .prop_map(|(name, source_pvc, paused)| {
                        snapgate_agent_core::volsync::ReplicationSourceSeen {
                            name,
                            source_pvc,
                            paused,
                        }
                    }),
                0..3,
            )),
        ),
        (
            any::<bool>(),
            count_u32(),
            any::<bool>(),
            prop_oneof![Just(Vec::new()), prop::collection::vec(temporary(), 1..4)],
            lease(),
            chrono_time(),
            prop_oneof![
                Just(None),
                Just(Some(Ok(()))),
                text().prop_map(|t| Some(Err(t))),
            ],
        ),
        (
            mover_trouble(),
            prop::option::of(chrono_time()),
            prop::option::of(chrono_time()),
        ),
    )
        .prop_map(
            |(
                (pvc, snapshot, copy_pvc, cache_pvc, job, secrets, mover_account, volsync),
                (privileged, failed_attempts, job_reported, temporaries, lease, now, review),
                (mover, next_attempt_at, job_failed_seen),
            )| World {
                pvc,
                snapshot,
                copy_pvc,
                cache_pvc,
                job,
                secrets,
                privileged,
                mover_account,
                volsync,
                failed_attempts,
                job_reported,
                temporaries,
                lease,
                review,
                mover,
                next_attempt_at,
                job_failed_seen,
                now,
            },
        )
        .boxed()
}

fn lease() -> impl Strategy<Value = Lease> {
    prop::sample::select(vec![
        Lease::NotNeeded,
        Lease::None,
        Lease::Requested,
        Lease::Held,
        Lease::Expired,
    ])
}

fn mover() -> impl Strategy<Value = Mover> {
    prop::sample::select(vec![
        Mover::Restic,
        Mover::Rclone,
        Mover::Rsync,
        Mover::RsyncTls,
    ])
}

/// A mover log: arbitrary lines, lines the filters keep, huge lines, and lines built to make a
/// backtracking matcher slow.
fn mover_log() -> BoxedStrategy<String> {
    let line = prop_oneof![
        3 => text(),
        2 => prop::sample::select(vec![
            "processed 112 files, 3.4 GiB in 0:05",
            "snapshot 7a8b9c saved",
            "Restic completed in 12s",
            "Transferred: 1.2 MiB / 1.2 MiB, 100%",
            "sent 1,234 bytes  received 56 bytes  2,580.00 bytes/sec",
            "2026/01/02 [12] sent 1 bytes received 2 bytes",
            "total size is 1,000  speedup is 0.78",
            "rsync: connection unexpectedly closed",
            "ERROR: boom",
            "é😀\u{202E}",
        ])
        .prop_map(str::to_owned),
        1 => (prop::sample::select(vec!["sent ", "sent x bytes ", "processed ", "x"]), 100usize..1000)
            .prop_map(|(s, n)| s.repeat(n)),
    ];
    prop::collection::vec(line, 0..24)
        .prop_map(|lines| lines.join("\n"))
        .boxed()
}

// ------------------------------------------------------------------------------ checks

fn check_observation(o: &Observation) -> Result<(), TestCaseError> {
    match o {
        Observation::Pvc(p) => {
            for v in [
                &p.copy_trigger,
                &p.latest_copy_trigger,
                &p.latest_copy_status,
                &p.waiting_since,
            ] {
                prop_assert!(v.len() <= bounds::MAX_VALUE_BYTES, "{} bytes", v.len());
            }
        }
        Observation::CopyCompleted(c) => {
            let t = c.time.as_ref();
            prop_assert!(t.is_some(), "CopyCompleted without a time");
            prop_assert!(
                t.and_then(bounds::proto_time).is_some(),
                "invalid protobuf Timestamp {t:?}"
            );
            prop_assert!(c.copy_name.is_empty() || names::is_dns_label(&c.copy_name));
        }
        Observation::MoverFinished(m) => {
            prop_assert!(m.logs.len() <= classify::MOVER_LOG_MAX_BYTES);
        }
        Observation::MoverFailed(m) => {
            prop_assert!(m.logs.len() <= classify::MOVER_LOG_MAX_BYTES);
        }
        Observation::CleanedUp(_) => {}
        Observation::MoverStuck(m) => {
            prop_assert!(m.reason.len() <= bounds::MAX_REASON_BYTES, "{}", m.reason);
            prop_assert!(m.message.len() <= stuck::MAX_STUCK_MESSAGE_BYTES);
            prop_assert!(m.pod.len() <= stuck::MAX_POD_NAME_BYTES);
            prop_assert!(m.job.len() <= bounds::MAX_VALUE_CHARS);
            for t in [&m.since, &m.deadline].into_iter().flatten() {
                prop_assert!(
                    bounds::proto_time(t).is_some(),
                    "invalid protobuf Timestamp {t:?}"
                );
            }
        }
        Observation::Error(e) => {
            prop_assert!(e.reason.len() <= bounds::MAX_REASON_BYTES, "{}", e.reason);
            prop_assert!(
                e.message.len() <= bounds::MAX_MESSAGE_BYTES,
                "{} bytes",
                e.message.len()
            );
        }
    }
    Ok(())
}

/// The annotation values of a merge patch that are set (not removed).
fn patched_values(patch: &Value) -> Vec<(String, String)> {
    patch["metadata"]["annotations"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn check_labels(labels: Option<&BTreeMap<String, String>>) -> Result<(), TestCaseError> {
    for v in labels.into_iter().flat_map(|l| l.values()) {
        prop_assert!(names::is_label_value(v), "label value {v:?}");
    }
    Ok(())
}

fn check_action(a: &Action) -> Result<(), TestCaseError> {
    match a {
        Action::ReviewAuthor(r) => {
            // Only a named author within the bounds reaches the API server.
            prop_assert!(!r.user.is_empty() && r.user.len() <= review::MAX_NAME_BYTES);
            prop_assert!(r.groups.len() <= review::MAX_GROUPS);
            prop_assert!(r.groups.iter().all(|g| g.len() <= review::MAX_NAME_BYTES));
            prop_assert!(!r.checks.is_empty());
        }
        Action::PatchPvc { patch, .. } => {
            prop_assert_eq!(patch.as_object().map(|m| m.len()), Some(1));
            for (key, value) in patched_values(patch) {
                prop_assert!(
                    bounds::unwritable(&value).is_none(),
                    "{key} = {value:?} is written"
                );
                if key == annotations::LATEST_COPY_TRIGGER_WAITING_SINCE {
                    prop_assert!(
                        annotations::parse_waiting_since(&value).is_some(),
                        "waiting-since {value:?} does not read back"
                    );
                }
            }
        }
        Action::CreateSnapshot(s) => {
            prop_assert!(names::is_dns_label(
                s.metadata.name.as_deref().unwrap_or("")
            ));
            check_labels(s.metadata.labels.as_ref())?;
        }
        Action::CreatePvc(p) => {
            prop_assert!(names::is_dns_label(
                p.metadata.name.as_deref().unwrap_or("")
            ));
            check_labels(p.metadata.labels.as_ref())?;
        }
        Action::CreateJob(j) => {
            prop_assert!(names::is_dns_label(
                j.metadata.name.as_deref().unwrap_or("")
            ));
            check_labels(j.metadata.labels.as_ref())?;
            let attempt = j
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(plan::ATTEMPT))
                .and_then(|v| v.parse::<u32>().ok());
            prop_assert!(attempt.is_some_and(|a| a >= 1), "attempt {attempt:?}");
        }
        Action::Event(e) => {
            let name = e.metadata.name.as_deref().unwrap_or("");
            prop_assert!(
                snapgate_contract::is_dns_subdomain(name),
                "event name {name:?}"
            );
            let message = e.message.as_deref().unwrap_or("");
            prop_assert!(message.len() <= bounds::MAX_MESSAGE_BYTES);
            prop_assert!(
                !message.chars().any(bounds::is_invisible),
                "event message {message:?}"
            );
            check_labels(e.metadata.labels.as_ref())?;
        }
        Action::Report(o) => check_observation(o)?,
        Action::ApplyMoverAccount(a) => {
            let sa = &a.service_account.metadata;
            prop_assert!(names::is_dns_label(sa.name.as_deref().unwrap_or("")));
            check_labels(sa.labels.as_ref())?;
            prop_assert_eq!(
                a.service_account.automount_service_account_token,
                Some(false)
            );
        }
        Action::FailStuckJob { job, .. } => {
            prop_assert!(names::is_dns_label(job), "{job:?}");
        }
        Action::PatchJob { .. }
        | Action::DeleteSnapshot(_)
        | Action::DeletePvc(_)
        | Action::DeleteJob(_)
        | Action::ReadSecrets(_)
        | Action::ListPods
        | Action::ListVolSync
        | Action::ReportMover { .. }
        | Action::RequestLease
        | Action::WakeAt(_) => {}
    }
    Ok(())
}

// ------------------------------------------------------------------------------ properties

proptest! {
    #![proptest_config(config())]

    /// PVC annotations: reading never panics, reports stay bounded, patches touch only
    /// snapgate's keys and write only printable values that read back.
    #[test]
    fn reading_and_patching_arbitrary_pvc_annotations_stays_within_bounds(
        pvc in prop::option::of(pvc(PVC)),
        since in chrono_time(),
        trigger in text(),
        write in any::<bool>(),
        unlock in prop::option::of(text()),
        last in prop::option::of(text()),
    ) {
        let observed = annotations::observe(pvc.as_ref());
        check_observation(&Observation::Pvc(observed.clone()))?;
        let _ = annotations::parse_waiting_since(&observed.waiting_since);
        let _ = annotations::CopyStatus::parse(&observed.latest_copy_status);
        let since = bounds::clamp_to_proto_range(since);
        if let Some(p) = annotations::mark_waiting(&observed, since) {
            check_action(&Action::PatchPvc { name: PVC.into(), patch: p })?;
        }
        let patches = [
            annotations::mark_in_progress(&observed, &trigger, write),
            annotations::mark_completed(&observed, &trigger),
            annotations::clear_waiting(&observed),
            annotations::mark_unlocked(unlock.as_deref(), last.as_deref()),
        ];
        for p in patches.into_iter().flatten() {
            let keys = p["metadata"]["annotations"].as_object().map(|m| m.len());
            prop_assert!(keys.is_some_and(|n| n > 0));
        }
        let _ = annotations::restic_unlock_due(unlock.as_deref(), last.as_deref());
        let _ = annotations::restic_last_unlocked(pvc.as_ref());
        let ns = Namespace {
            metadata: pvc.map(|p| p.metadata).unwrap_or_default(),
            ..Default::default()
        };
        let _ = annotations::privileged_movers_allowed(&ns);
    }

    /// A waiting-since time in the protobuf range is written so that it reads back (to the
    /// second); any string parses or is refused without panicking.
    #[test]
    fn waiting_since_round_trips_and_arbitrary_values_never_panic(
        t in chrono_time(),
        raw in annotation_value(),
    ) {
        let t = bounds::clamp_to_proto_range(t);
        let written = annotations::format_waiting_since(t);
        let read = annotations::parse_waiting_since(&written);
        prop_assert_eq!(read.map(|r| r.timestamp()), Some(t.timestamp()), "{}", written);
        let _ = annotations::parse_waiting_since(&raw);
    }

    /// Observed objects of any shape classify without panicking, into counts that are never
    /// negative.
    #[test]
    fn classifying_arbitrary_snapshots_pvcs_jobs_and_pods_never_panics(
        snap in snapshot(),
        clone in pvc("volsync-db-src"),
        job in job(),
        pods in prop::collection::vec(pod(), 0..5),
        failed in any::<bool>(),
    ) {
        if let classify::CopyReadiness::Failed(m) = classify::copy_readiness(&snap) {
            prop_assert!(!m.is_empty());
        }
        let _ = classify::clone_readiness(&clone);
        let want = job.status.as_ref().and_then(|s| s.failed).unwrap_or(0).max(0);
        match classify::job_state(&job) {
            classify::JobState::Running { failed_pods } | classify::JobState::Failed { failed_pods } => {
                prop_assert_eq!(i64::from(failed_pods), i64::from(want));
            }
            classify::JobState::Succeeded => {}
        }
        let _ = plan::job_attempt(&job);
        if let Some(p) = classify::log_pod(&pods, failed) {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            prop_assert!(matches!(phase, Some("Failed" | "Running" | "Succeeded")));
        }
    }

    /// Pods and Events of any shape, about the Job or not: classifying them never panics, and
    /// what is kept of them is bounded and printable; whether such a trouble has lasted long
    /// enough is decided for any times and limits without overflowing.
    #[test]
    fn classifying_arbitrary_mover_pods_and_events_stays_within_bounds(
        mut job in job(),
        uid in prop::option::of(job_uid()),
        pods in prop::collection::vec(mover_pod(), 0..4),
        events in prop::collection::vec(stuck_event(), 0..5),
        first_seen in chrono_time(),
        now in chrono_time(),
        after in duration(),
    ) {
        job.metadata.uid = uid;
        let kept: Vec<Event> = events.iter().cloned().filter_map(stuck::kept_event).collect();
        for e in &kept {
            prop_assert!(stuck::event_of_interest(e));
            let m = e.message.as_deref().unwrap_or_default();
            prop_assert!(m.len() <= stuck::MAX_STUCK_MESSAGE_BYTES);
            prop_assert!(!m.chars().any(bounds::is_invisible), "{m:?}");
        }
        // What is kept of the Events decides as the Events themselves do.
        let whole = stuck::trouble(&job, &pods, &events);
        prop_assert_eq!(&whole, &stuck::trouble(&job, &pods, &kept));
        if let Some(t) = whole {
            prop_assert!(t.message.len() <= stuck::MAX_STUCK_MESSAGE_BYTES);
            prop_assert!(!t.message.chars().any(bounds::is_invisible), "{:?}", t.message);
            let pod = t.pod.as_deref().unwrap_or_default();
            prop_assert!(pod.len() <= stuck::MAX_POD_NAME_BYTES);
            prop_assert!(!pod.chars().any(bounds::is_invisible), "{pod:?}");
            prop_assert_eq!(t.pod.is_none(), t.reason == stuck::StuckReason::FailedCreate);
            let _ = t.describe("volsync-src-db");
            match stuck::verdict(t.since, first_seen, after, now) {
                stuck::Verdict::Waiting { since, deadline } => {
                    prop_assert!(since <= first_seen);
                    prop_assert!(deadline.is_none_or(|d| now < d && since <= d));
                }
                stuck::Verdict::Over { since, deadline } => {
                    prop_assert!(since <= first_seen && since <= deadline && deadline <= now);
                }
            }
        }
    }

    /// Mover logs of any content: the tail is at most MOVER_LOG_MAX_BYTES, a suffix-cut of the
    /// kept lines, and made of whole lines of the log except possibly its first.
    #[test]
    fn mover_log_tails_of_arbitrary_logs_are_bounded(
        mover in mover(),
        log in mover_log(),
        failed in any::<bool>(),
    ) {
        let tail = if failed {
            classify::mover_failure_log_tail(mover, &log)
        } else {
            classify::mover_log_tail(mover, &log)
        };
        prop_assert!(tail.len() <= classify::MOVER_LOG_MAX_BYTES, "{} bytes", tail.len());
        let lines: Vec<&str> = log.lines().collect();
        // Kept lines are joined with '\n' (a line may end in '\r', which lines() would strip).
        for l in tail.split('\n').skip(1) {
            prop_assert!(lines.contains(&l), "{l:?} is not a line of the log");
        }
        let outcome = if failed {
            MoverOutcome::Failed { attempt: 1 }
        } else {
            MoverOutcome::Succeeded
        };
        // Fed one line at a time, as the shell reads a pod's log: the same tail.
        let mut fed = plan::log_tail(mover, outcome);
        log.lines().for_each(|l| fed.push(l));
        let fed = fed.finish();
        prop_assert_eq!(&fed, &tail);
        check_observation(&plan::mover_report(outcome, fed))?;
    }

    /// Names of any source or run are valid DNS labels and label values, deterministically.
    #[test]
    fn names_of_arbitrary_sources_are_valid_labels(
        source in text(),
        run in text(),
        mover in mover(),
        raw in text(),
    ) {
        for n in [
            names::job_name(mover, &source),
            names::copy_name(&source),
            names::cache_name(&source),
            names::dns_label(&raw),
        ] {
            prop_assert!(names::is_dns_label(&n), "{n:?}");
        }
        prop_assert_eq!(names::dns_label(&raw), names::dns_label(&raw));
        prop_assert!(names::is_label_value(&names::label_value(&raw)));
        let labels = names::temporary_labels(&source, &run);
        check_labels(Some(&labels))?;
        prop_assert!(names::made_for_source(Some(&labels), &source));
        prop_assert!(names::is_temporary_of(Some(&labels), &source));
        prop_assert!(names::made_by_run(Some(&labels), &run));
        let _ = names::made_for_source(Some(&labels), &raw);
    }

    /// The plan, fed an arbitrary directive, arbitrary observed objects, any `now` and any
    /// back-off settings, never panics, and everything it reports or writes is bounded.
    #[test]
    fn planning_against_arbitrary_directives_and_objects_stays_within_bounds(
        d in directive(),
        w in world(),
        config in plan_config(),
    ) {
        let _ = plan::object_names(&d);
        if let Some(spec) = &d.spec {
            let _ = plan::required_secrets(spec);
        }
        if let Ok(actions) = plan::plan(&d, &w.observed(), &config) {
            for a in &actions {
                check_action(a)?;
            }
        }
    }

    /// A COPY directive with a lease, whatever is observed: unless the lease is held at the
    /// plan's time, the plan makes no copy, marks nothing Completed and reports no copy point;
    /// it asks for a lease only when none is held or asked for.
    #[test]
    fn a_leased_copy_is_never_made_or_counted_without_a_held_lease(
        mut d in directive(),
        w in world(),
        config in plan_config(),
    ) {
        d.phase = v1::DirectivePhase::Copy as i32;
        d.lease = true;
        let copy = plan::object_names(&d).copy;
        if let Ok(actions) = plan::plan(&d, &w.observed(), &config) {
            for a in &actions {
                check_action(a)?;
                if w.lease == Lease::Held {
                    continue;
                }
                let made = match a {
                    Action::CreateSnapshot(_) => true,
                    Action::CreatePvc(p) => p.metadata.name.as_deref() == Some(copy.as_str()),
                    Action::PatchPvc { patch, .. } => patched_values(patch).iter().any(|(k, v)| {
                        k == annotations::LATEST_COPY_STATUS && v == "Completed"
                    }),
                    Action::Report(Observation::CopyCompleted(_)) => true,
                    Action::RequestLease => {
                        prop_assert!(
                            matches!(w.lease, Lease::None | Lease::NotNeeded),
                            "asked again while {:?}", w.lease
                        );
                        false
                    }
                    _ => false,
                };
                prop_assert!(!made, "{a:?} while the lease is {:?}", w.lease);
            }
        }
    }

    /// A transfer with any Job (any counts, conditions, attempt annotation and failure time),
    /// any number of failures reported so far (up to u32::MAX) and any back-off settings: the
    /// doubling back-off never overflows, and a new Job's attempt is always counted.
    #[test]
    fn planning_a_transfer_with_any_job_and_failure_count_stays_within_bounds(
        mut d in directive(),
        mut w in world(),
        job in prop::option::weighted(0.8, job()),
        config in plan_config(),
    ) {
        d.phase = v1::DirectivePhase::Transfer as i32;
        w.job = job;
        w.pvc = w.pvc.or_else(|| Some(PersistentVolumeClaim {
            metadata: ObjectMeta { name: Some(PVC.into()), ..Default::default() },
            ..Default::default()
        }));
        if let Some(spec) = &d.spec {
            let keys = BTreeSet::from(["RCLONE_X".to_owned()]);
            w.secrets = Some(
                plan::required_secrets(spec).into_iter().map(|n| (n, keys.clone())).collect(),
            );
        }
        if let Ok(actions) = plan::plan(&d, &w.observed(), &config) {
            for a in &actions {
                check_action(a)?;
            }
        }
    }

    /// Whatever an observation holds, the bound put on it before it is sent holds.
    #[test]
    fn bounding_an_arbitrary_observation_keeps_every_field_in_bounds(
        reason in text(),
        message in text(),
        value in text(),
        time in prop::option::of(proto_timestamp()),
        now in chrono_time(),
        logs in mover_log(),
    ) {
        let observations = [
            Observation::Error(v1::AgentError { reason, message, retryable: true }),
            Observation::Pvc(v1::PvcObserved {
                exists: true,
                use_copy_trigger: true,
                copy_trigger: value.clone(),
                latest_copy_trigger: value.clone(),
                latest_copy_status: value.clone(),
                waiting_since: value,
            }),
            Observation::CopyCompleted(v1::CopyCompleted {
                copy_name: "volsync-db-src".into(),
                time: Some(time.unwrap_or_default()),
            }),
            Observation::MoverFailed(v1::MoverFailed { attempt: 1, logs: logs.clone() }),
            Observation::MoverStuck(v1::MoverStuck {
                reason: logs.clone(),
                message: logs.clone(),
                pod: logs.clone(),
                job: logs,
                attempt: u32::MAX,
                since: time,
                deadline: time,
            }),
        ];
        for o in observations {
            check_observation(&bounds::bound(o, now))?;
        }
        if let Some(t) = time {
            let v = bounds::valid_timestamp(&t, now);
            prop_assert!(bounds::proto_time(&v).is_some());
        }
    }

    /// Truncation keeps at most `max` bytes, cuts on a char boundary and keeps a prefix.
    #[test]
    fn truncating_any_string_keeps_a_bounded_prefix(s in text(), max in 0usize..1500) {
        let t = bounds::truncate(&s, max);
        prop_assert!(t.len() <= max);
        if s.len() <= max {
            prop_assert_eq!(&t, &s);
        } else {
            let kept = t.strip_suffix(bounds::TRUNCATED).unwrap_or(&t);
            prop_assert!(s.starts_with(kept));
        }
        let tail = bounds::tail(&s, max);
        prop_assert!(tail.len() <= max && s.ends_with(tail));
    }
}
