//! The store's record format against a real store written before the scheduler core had its
//! own types (`fixtures/store-before-domain-types`, see its README): every record decodes,
//! loses nothing, and reads back the same once rewritten in today's format.

use std::path::Path;

use pretty_assertions::assert_eq;
use prost::Message as _;
use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};
use snapgate_proto::v1;
use snapgate_scheduler::{
    store::format::{
        FORMAT_VERSION, SourceRecordV1, decode_run, decode_source, encode_run, encode_source,
        source_message,
    },
    wire::sources::run_to_wire,
};
use snapgate_scheduler_core::{
    RunId,
    model::{CopyMethod, MoverKind, ReleasedBy, Run, RunPhase, SourceRecord, TriggerSpec},
};

/// The store's tables, as `store/mod.rs` defines them.
const SOURCES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sources");
const RUNS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("runs");

/// A key and its value.
type Row = (String, Vec<u8>);

const FIXTURE: &str = "tests/fixtures/store-before-domain-types/snapgate.redb";

/// Every row of both tables, read from a copy of the fixture (the fixture itself is never
/// opened, so never modified).
fn rows() -> (Vec<Row>, Vec<Row>) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("snapgate.redb");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE), &copy).unwrap();
    let db = redb::ReadOnlyDatabase::open(&copy).unwrap();
    let tx = db.begin_read().unwrap();
    let read = |table: TableDefinition<'_, &str, &[u8]>| {
        tx.open_table(table)
            .unwrap()
            .iter()
            .unwrap()
            .map(|row| {
                let (k, v) = row.unwrap();
                (k.value().to_owned(), v.value().to_vec())
            })
            .collect::<Vec<_>>()
    };
    (read(SOURCES), read(RUNS))
}

/// Every record of the fixture, decoded, after checking that each is lossless.
fn decoded() -> (Vec<SourceRecord>, Vec<Run>) {
    let (sources, runs) = rows();
    let sources = sources
        .iter()
        .map(|(key, bytes)| {
            assert_ne!(bytes.first(), Some(&0x00), "{key}: a legacy record");
            let record = decode_source(key, bytes).unwrap_or_else(|e| panic!("{key}: {e}"));
            let legacy = SourceRecordV1::decode(bytes.as_slice()).unwrap();
            assert_eq!(source_message(&record), legacy, "{key} lost something");
            record
        })
        .collect();
    let runs = runs
        .iter()
        .map(|(key, bytes)| {
            assert_ne!(bytes.first(), Some(&0x00), "{key}: a legacy record");
            let run = decode_run(key, bytes).unwrap_or_else(|e| panic!("{key}: {e}"));
            let legacy = v1::Run::decode(bytes.as_slice()).unwrap();
            assert_eq!(run_to_wire(&run), legacy, "{key} lost something");
            run
        })
        .collect();
    (sources, runs)
}

#[test]
fn every_record_of_the_old_store_decodes_and_loses_nothing() {
    let (sources, runs) = decoded();
    let keys: Vec<String> = sources.iter().map(|r| r.source.key.to_string()).collect();
    assert_eq!(
        keys,
        ["apps/db", "apps/files", "apps/pair", "apps/tls", "apps/web"]
    );
    let ids: Vec<RunId> = runs.iter().map(|r| r.id).collect();
    assert_eq!(ids, [RunId(1), RunId(2), RunId(3), RunId(4)]);
}

#[test]
fn every_record_of_the_old_store_reads_back_the_same_in_todays_format() {
    let (sources, runs) = decoded();
    for record in sources {
        let key = record.source.key.to_string();
        let bytes = encode_source(&record);
        assert_eq!(&bytes[..2], &[0x00, FORMAT_VERSION]);
        assert_eq!(decode_source(&key, &bytes), Ok(record));
    }
    for run in runs {
        let bytes = encode_run(&run);
        assert_eq!(&bytes[..2], &[0x00, FORMAT_VERSION]);
        assert_eq!(decode_run(&run.id.to_string(), &bytes), Ok(run));
    }
}

#[test]
fn the_old_stores_sources_read_as_they_were_applied() {
    let (sources, _) = decoded();
    let source = |name: &str| {
        sources
            .iter()
            .find(|r| r.source.key.name == name)
            .map(|r| &r.source)
            .unwrap()
    };

    let db = source("db");
    assert_eq!(db.spec.mover.volume.copy_method, CopyMethod::Snapshot);
    let restic = db.spec.restic().expect("apps/db is restic");
    let retain = restic.retain.as_ref().unwrap();
    assert_eq!(retain.last.as_deref(), Some("5"));
    assert_eq!(retain.within.as_deref(), Some("3d"));
    assert!(restic.keep_cache);
    assert_eq!(restic.repository, "restic-secret");
    assert_eq!(db.spec.time_zone, "Europe/Berlin");
    assert_eq!(db.spec.trigger, TriggerSpec::Schedule("0 * * * *".into()));
    let volume = &db.spec.mover.volume.mover_volumes[0];
    assert_eq!(volume.mount_path, "extra");
    assert_eq!(
        volume.volume_source.as_ref().unwrap()["persistentVolumeClaim"]["claimName"],
        "extra-pvc"
    );
    assert_eq!(
        db.spec.mover.volume.mover_resources.as_ref().unwrap()["limits"]["memory"],
        "1Gi"
    );
    assert_eq!(db.status.current_run, Some(RunId(2)));
    assert_eq!(db.author.as_ref().map(|a| a.user.as_str()), Some("alice"));

    let files = source("files");
    assert!(files.spec.paused);
    assert_eq!(files.status.pause_note, "maintenance until Friday");
    assert!(matches!(files.spec.mover.kind, MoverKind::Rsync(_)));
    assert_eq!(files.spec.mover.volume.copy_method, CopyMethod::Direct);

    let tls = source("tls");
    assert!(matches!(tls.spec.mover.kind, MoverKind::RsyncTls(_)));
    assert_eq!(tls.spec.trigger, TriggerSpec::Continuous);
    assert_eq!(tls.spec.mover.volume.copy_method, CopyMethod::None);

    let pair = source("pair");
    let holders = &pair.spec.copy_trigger.as_ref().unwrap().holders;
    assert_eq!(holders, &["app-a", "app-b"]);
    assert_eq!(pair.spec.mover.volume.copy_method, CopyMethod::Clone);
}

#[test]
fn the_old_stores_runs_read_where_they_were() {
    let (_, runs) = decoded();
    let db_waiting = runs
        .iter()
        .find(|r| r.source.name == "db" && r.phase == RunPhase::WaitingForTrigger)
        .expect("a run of apps/db waits for its trigger");
    assert_eq!(db_waiting.id, RunId(2));
    assert!(
        db_waiting.spec.is_some(),
        "it runs with the spec it started with"
    );

    let finished = runs.iter().find(|r| r.id == RunId(1)).unwrap();
    assert_eq!(finished.phase, RunPhase::Finished);
    assert_eq!(finished.released_by, Some(ReleasedBy::Annotation));

    let transferring = runs.iter().find(|r| r.id == RunId(3)).unwrap();
    assert_eq!(transferring.phase, RunPhase::Transferring);
    assert_eq!(transferring.source.name, "web");

    let pair = runs.iter().find(|r| r.source.name == "pair").unwrap();
    assert_eq!(pair.holds.len(), 1);
    assert_eq!(pair.holds[0].holder, "app-a");
    assert_eq!(pair.holds[0].value, "h1");
    assert!(pair.holds[0].deadline.is_some());
}

mod support;

/// The real scheduler started on (a copy of) the old store: nothing is quarantined, every
/// source reads as it was applied, every stored run is there, run numbers go on from the
/// stored counter, and what changes is rewritten in today's format.
#[tokio::test]
async fn the_scheduler_starts_on_the_old_store_and_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE),
        dir.path().join("snapgate.redb"),
    )
    .unwrap();
    let legacy: Vec<v1::Source> = rows()
        .0
        .iter()
        .map(|(_, bytes)| {
            SourceRecordV1::decode(bytes.as_slice())
                .unwrap()
                .source
                .unwrap()
        })
        .collect();
    let s = support::Running::open(dir.path()).await;
    let quarantined = s
        .sources()
        .list_quarantined(v1::ListQuarantinedRequest {})
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(quarantined.is_empty(), "{quarantined:?}");
    for old in &legacy {
        let now = s
            .sources()
            .get_source(v1::GetSourceRequest {
                namespace: old.namespace.clone(),
                name: old.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(now.spec, old.spec, "{}", old.name);
        assert_eq!(
            (now.version, now.create_time, &now.author),
            (old.version, old.create_time, &old.author),
            "{}",
            old.name
        );
    }
    let mut ids = Vec::new();
    for old in &legacy {
        let runs = s
            .sources()
            .list_runs(v1::ListRunsRequest {
                namespace: old.namespace.clone(),
                name: old.name.clone(),
                limit: 100,
            })
            .await
            .unwrap()
            .into_inner()
            .runs;
        ids.extend(runs.into_iter().map(|r| r.id));
    }
    ids.sort();
    assert_eq!(ids, ["run-1", "run-2", "run-3", "run-4"]);
    // The continuous source that waits for its first SyncNow starts the next run number.
    let started = s
        .sources()
        .sync_now(v1::SyncNowRequest {
            namespace: "apps".into(),
            name: "tls".into(),
            request_id: "after-upgrade".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((started.run_id.as_str(), started.started), ("run-5", true));
    s.stop().await;

    // What changed since the start was rewritten in today's format; the rest is as it was.
    let db = redb::ReadOnlyDatabase::open(dir.path().join("snapgate.redb")).unwrap();
    let tx = db.begin_read().unwrap();
    let sources = tx.open_table(SOURCES).unwrap();
    let tls = sources.get("apps/tls").unwrap().unwrap();
    assert_eq!(tls.value()[..2], [0x00, FORMAT_VERSION]);
    let runs = tx.open_table(RUNS).unwrap();
    let new = runs.get("run-5").unwrap().unwrap();
    assert_eq!(new.value()[..2], [0x00, FORMAT_VERSION]);
}
