//! Moving and keeping a store's data: `snapgate-scheduler export` writes every source, run
//! and the run counter of a store to a file; `import` loads such a file into an empty store,
//! of either kind (so a scheduler on the embedded store moves to etcd, and operators keep a
//! copy of either).
//!
//! # File format
//!
//! ```text
//!   "snapgate-dump 1\n"   then length-delimited protobuf DumpEntry frames:
//!   kind 1 (source) key namespace/name  value: the store's record bytes (store::format)
//!   kind 2 (run)    key run-<n>         value: the store's record bytes
//!   kind 3 (end)    counter: the next run number; sources, runs: how many came before it
//! ```
//!
//! Records are kept in the store's own versioned format, so a dump is read by every later
//! version the way its store would be. The end frame makes a truncated file an error rather
//! than a smaller store. Import checks every record decodes before it writes anything, then
//! commits everything as one batch: all of it lands, or none.
//!
//! A record the store itself quarantines (it does not decode) is not exported: export refuses
//! and names it, unless told to leave such records out.

use std::io::{BufRead, Read, Write as _};

use prost::Message;

use super::{Batch, Store, StoreError, Write, format};

/// The first line of a dump.
const MAGIC: &[u8] = b"snapgate-dump 1\n";
/// The largest frame a dump may hold: far above any record (a run keeps at most a few tens
/// of KiB), so a damaged length cannot make import allocate without bound.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// One frame of a dump.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DumpEntry {
    /// 1 source, 2 run, 3 end.
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    /// The record's key in the store.
    #[prost(string, tag = "2")]
    pub key: String,
    /// The record, in the store's format.
    #[prost(bytes = "vec", tag = "3")]
    pub value: Vec<u8>,
    /// In the end frame: the next run number.
    #[prost(uint64, tag = "4")]
    pub next_run: u64,
    /// In the end frame: the sources before it.
    #[prost(uint64, tag = "5")]
    pub sources: u64,
    /// In the end frame: the runs before it.
    #[prost(uint64, tag = "6")]
    pub runs: u64,
}

const SOURCE: u32 = 1;
const RUN: u32 = 2;
const END: u32 = 3;

/// What an export or import moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Sources moved.
    pub sources: u64,
    /// Runs moved.
    pub runs: u64,
    /// The next run number.
    pub next_run: u64,
    /// Quarantined records left out (export with `skip_quarantined` only).
    pub skipped: u64,
}

/// Why an export or import failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading or writing the file failed.
    #[error("dump file: {0}")]
    Io(#[from] std::io::Error),
    /// The store holds records that do not decode.
    #[error(
        "the store holds {count} record(s) that do not decode (first: {kind} {key}: {reason}); \
         export refuses to leave them out unless told to (--skip-quarantined)"
    )]
    Quarantined {
        /// How many.
        count: usize,
        /// The first one's kind.
        kind: &'static str,
        /// Its key.
        key: String,
        /// Why it does not decode.
        reason: String,
    },
    /// The file is not a dump, is damaged or truncated, or holds a record that does not decode.
    #[error("not a valid snapgate dump: {0}")]
    Invalid(String),
    /// The target store is not empty.
    #[error(
        "the target store is not empty ({sources} source(s), {runs} run(s)): import loads into an \
         empty store only, so that nothing in it is overwritten"
    )]
    NotEmpty {
        /// Sources already there.
        sources: usize,
        /// Runs already there.
        runs: usize,
    },
}

/// Writes every record of `store` to `out`. With `skip_quarantined`, records that do not
/// decode are left out (and counted); without it they stop the export.
pub fn export(
    store: &dyn Store,
    out: &mut dyn std::io::Write,
    skip_quarantined: bool,
) -> Result<Summary, DumpError> {
    let loaded = store.load()?;
    if let Some(first) = loaded.corrupt.first()
        && !skip_quarantined
    {
        return Err(DumpError::Quarantined {
            count: loaded.corrupt.len(),
            kind: first.kind,
            key: first.key.clone(),
            reason: first.reason.clone(),
        });
    }
    let mut out = std::io::BufWriter::new(out);
    out.write_all(MAGIC)?;
    let mut frame = |entry: DumpEntry| -> std::io::Result<()> {
        out.write_all(&entry.encode_length_delimited_to_vec())
    };
    for record in &loaded.sources {
        frame(DumpEntry {
            kind: SOURCE,
            key: record.source.key.to_string(),
            value: format::encode_source(record),
            ..Default::default()
        })?;
    }
    for run in &loaded.runs {
        frame(DumpEntry {
            kind: RUN,
            key: run.id.to_string(),
            value: format::encode_run(run),
            ..Default::default()
        })?;
    }
    let summary = Summary {
        sources: count(loaded.sources.len()),
        runs: count(loaded.runs.len()),
        next_run: loaded.next_run,
        skipped: count(loaded.corrupt.len()),
    };
    frame(DumpEntry {
        kind: END,
        next_run: summary.next_run,
        sources: summary.sources,
        runs: summary.runs,
        ..Default::default()
    })?;
    out.flush()?;
    Ok(summary)
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Loads a dump into `store`, which must be empty: every record is checked first, then all
/// are committed as one batch.
pub fn import(store: &mut dyn Store, input: &mut dyn Read) -> Result<Summary, DumpError> {
    let present = store.load()?;
    if !present.sources.is_empty() || !present.runs.is_empty() || !present.corrupt.is_empty() {
        return Err(DumpError::NotEmpty {
            sources: present.sources.len(),
            runs: present.runs.len() + present.corrupt.len(),
        });
    }
    let mut input = std::io::BufReader::new(input);
    let mut magic = vec![0; MAGIC.len()];
    input
        .read_exact(&mut magic)
        .map_err(|_| DumpError::Invalid("shorter than its first line".into()))?;
    if magic != MAGIC {
        return Err(DumpError::Invalid(format!(
            "it does not start with {:?}",
            String::from_utf8_lossy(MAGIC)
        )));
    }
    let mut writes = Vec::new();
    let (mut sources, mut runs) = (0_u64, 0_u64);
    let end = loop {
        let Some(entry) = next_frame(&mut input)? else {
            return Err(DumpError::Invalid(format!(
                "truncated: it ends after {sources} source(s) and {runs} run(s) without its end \
                 frame"
            )));
        };
        match entry.kind {
            SOURCE => {
                let record = format::decode_source(&entry.key, &entry.value)
                    .map_err(|e| DumpError::Invalid(format!("source {}: {e}", entry.key)))?;
                writes.push(Write::PutSource(Box::new(record)));
                sources += 1;
            }
            RUN => {
                let run = format::decode_run(&entry.key, &entry.value)
                    .map_err(|e| DumpError::Invalid(format!("run {}: {e}", entry.key)))?;
                writes.push(Write::PutRun(Box::new(run)));
                runs += 1;
            }
            END => break entry,
            other => {
                return Err(DumpError::Invalid(format!(
                    "a frame of unknown kind {other} (key {:?})",
                    entry.key
                )));
            }
        }
    };
    if (end.sources, end.runs) != (sources, runs) {
        return Err(DumpError::Invalid(format!(
            "its end frame counts {} source(s) and {} run(s), but {sources} and {runs} came \
             before it",
            end.sources, end.runs
        )));
    }
    if next_frame(&mut input)?.is_some() {
        return Err(DumpError::Invalid("frames after its end frame".into()));
    }
    store.commit(Batch {
        writes,
        next_run: end.next_run,
    })?;
    Ok(Summary {
        sources,
        runs,
        next_run: end.next_run,
        skipped: 0,
    })
}

/// The next frame, `None` at a clean end of the file.
fn next_frame(input: &mut dyn BufRead) -> Result<Option<DumpEntry>, DumpError> {
    if input.fill_buf()?.is_empty() {
        return Ok(None);
    }
    let len = read_varint(input)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_FRAME_BYTES)
        .ok_or_else(|| {
            DumpError::Invalid(format!(
                "a frame of {len} bytes (the most is {MAX_FRAME_BYTES})"
            ))
        })?;
    let mut buf = vec![0; len];
    input
        .read_exact(&mut buf)
        .map_err(|_| DumpError::Invalid("truncated inside a frame".into()))?;
    DumpEntry::decode(buf.as_slice())
        .map(Some)
        .map_err(|e| DumpError::Invalid(format!("a frame does not decode: {e}")))
}

/// A protobuf varint, read a byte at a time (a frame's length prefix).
fn read_varint(input: &mut dyn BufRead) -> Result<u64, DumpError> {
    let mut value = 0_u64;
    for i in 0..10 {
        let mut byte = [0_u8];
        input
            .read_exact(&mut byte)
            .map_err(|_| DumpError::Invalid("truncated inside a frame's length".into()))?;
        value |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DumpError::Invalid(
        "a frame's length is not a varint".into(),
    ))
}

#[cfg(test)]
mod tests {
    use snapgate_scheduler_core::SourceKey;

    use super::*;
    use crate::store::RedbStore;
    use crate::wire::testing::{full_record, full_run};

    fn filled(dir: &std::path::Path) -> RedbStore {
        let mut s = RedbStore::open(dir).unwrap();
        let mut other = full_record();
        other.source.key = SourceKey::new("apps", "other");
        s.commit(Batch {
            writes: vec![
                Write::PutSource(Box::new(full_record())),
                Write::PutSource(Box::new(other)),
                Write::PutRun(Box::new(full_run())),
            ],
            next_run: 77,
        })
        .unwrap();
        s
    }

    #[test]
    fn an_exported_store_imports_into_an_empty_one_unchanged() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = filled(from.path());
        let mut file = Vec::new();
        let exported = export(&source, &mut file, false).unwrap();
        assert_eq!(
            (exported.sources, exported.runs, exported.next_run),
            (2, 1, 77)
        );

        let mut target = RedbStore::open(to.path()).unwrap();
        let imported = import(&mut target, &mut file.as_slice()).unwrap();
        assert_eq!(
            imported,
            Summary {
                skipped: 0,
                ..exported
            }
        );
        let (a, b) = (source.load().unwrap(), target.load().unwrap());
        assert_eq!(a.sources, b.sources);
        assert_eq!(a.runs, b.runs);
        assert_eq!(b.next_run, 77);
    }

    #[test]
    fn import_refuses_a_store_that_is_not_empty_and_changes_nothing() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut file = Vec::new();
        export(&filled(from.path()), &mut file, false).unwrap();
        let mut target = RedbStore::open(to.path()).unwrap();
        let mut lone = full_record();
        lone.source.key = SourceKey::new("apps", "lone");
        target
            .commit(Batch {
                writes: vec![Write::PutSource(Box::new(lone.clone()))],
                next_run: 5,
            })
            .unwrap();
        let err = import(&mut target, &mut file.as_slice()).unwrap_err();
        assert!(
            err.to_string()
                .contains("not empty (1 source(s), 0 run(s))"),
            "{err}"
        );
        let after = target.load().unwrap();
        assert_eq!(after.sources, vec![lone]);
        assert_eq!(after.next_run, 5);
    }

    #[test]
    fn a_damaged_or_truncated_dump_is_refused_and_nothing_is_written() {
        let from = tempfile::tempdir().unwrap();
        let mut file = Vec::new();
        export(&filled(from.path()), &mut file, false).unwrap();
        let undecodable = [
            MAGIC,
            &DumpEntry {
                kind: SOURCE,
                key: "apps/x".into(),
                value: b"\xff\xff not a source".to_vec(),
                ..Default::default()
            }
            .encode_length_delimited_to_vec(),
        ]
        .concat();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", Vec::new(), "shorter than its first line"),
            (
                "not a dump",
                b"{\"sources\": []}\n and more".to_vec(),
                "does not start with",
            ),
            (
                "truncated at a frame",
                file[..file.len() - 12].to_vec(),
                "truncated",
            ),
            (
                "cut after the records",
                {
                    // Everything but the end frame.
                    let mut input = std::io::Cursor::new(&file[MAGIC.len()..]);
                    let mut kept = MAGIC.to_vec();
                    loop {
                        let at = usize::try_from(input.position()).unwrap();
                        let entry = next_frame(&mut input).unwrap().unwrap();
                        if entry.kind == END {
                            kept.extend_from_slice(&file[MAGIC.len()..MAGIC.len() + at]);
                            break kept;
                        }
                    }
                },
                "without its end frame",
            ),
            (
                "a record that does not decode",
                undecodable,
                "source apps/x",
            ),
            (
                "a huge frame length",
                [MAGIC, &[0xff, 0xff, 0xff, 0xff, 0x7f]].concat(),
                "the most is",
            ),
        ];
        for (name, bytes, says) in cases {
            let to = tempfile::tempdir().unwrap();
            let mut target = RedbStore::open(to.path()).unwrap();
            let err = import(&mut target, &mut bytes.as_slice())
                .map(|s| format!("imported {s:?}"))
                .expect_err(name);
            assert!(matches!(err, DumpError::Invalid(_)), "{name}: {err}");
            assert!(err.to_string().contains(says), "{name}: {err}");
            let after = target.load().unwrap();
            assert!(
                after.sources.is_empty() && after.runs.is_empty(),
                "{name} wrote"
            );
        }
    }

    #[test]
    fn export_refuses_a_store_with_records_that_do_not_decode_unless_told_to_skip_them() {
        let from = tempfile::tempdir().unwrap();
        let source = filled(from.path());
        source.put_raw_run("run-900", b"\xff\xff not a run");
        let err = export(&source, &mut Vec::new(), false).unwrap_err();
        assert!(err.to_string().contains("run run-900"), "{err}");
        let mut file = Vec::new();
        let summary = export(&source, &mut file, true).unwrap();
        assert_eq!((summary.runs, summary.skipped), (1, 1));
        assert!(
            summary.next_run >= 901,
            "the skipped run's number stays taken"
        );
    }
}
