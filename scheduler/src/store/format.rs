//! The store's record format: how a [`SourceRecord`] and a [`Run`] are kept as bytes, and how
//! records written by earlier versions are read.
//!
//! # Format
//!
//! ```text
//!   0x00  FORMAT_VERSION  payload
//!   ────  ──────────────  ──────────────────────────────────────────────────────────────
//!   1 B   1 B             protobuf: a source as SourceRecordV1 (1: v1::Source, 2: deleting),
//!                         a run as v1::Run
//! ```
//!
//! The first byte, 0x00, can never start a protobuf message (it would be a key with field
//! number 0, which is invalid), so a versioned record is told from a legacy one by it alone.
//! The payload is the API's own message (for a source, with the store's `deleting` flag
//! beside it), so a record reads like what `GetSource` and `ListRuns` answer.
//!
//! A record without the header is **legacy**: what snapgate wrote before record formats (the
//! same protobuf payload, no header). It decodes through the same path as format 1.
//!
//! Decoding is structural ([`crate::wire::sources::stored_source`],
//! [`crate::wire::sources::stored_run`]): a record that the domain types cannot hold (no mover,
//! an unknown enum number, a run id that is not `run-<n>`, ...) is an error naming the field,
//! and the store quarantines it; admission's rules are not applied, so a record breaking a rule
//! tightened since still loads. A record is also refused when its key does not name it (a
//! source's `namespace/name`, a run's id).
//!
//! Migrations ([`migrate_source`], and the same for a run's spec) bring the payload to today's
//! form before it is decoded; they apply to legacy and format-1 records alike:
//!
//! - snapgate 0.1 stored `restic.retain.last` as an integer (field 7, `last_int32`); it is a
//!   string now, as in VolSync's API.
//!
//! A snapgate from before record formats cannot read a versioned record (its protobuf decoder
//! refuses the 0x00 key): it quarantines the record and leaves it untouched, so a downgrade
//! loses nothing but cannot run those sources until upgraded again.
//!
//! # The next version
//!
//! When the payload changes in a way a format-1 reader must not misread (not for a new
//! optional protobuf field: protobuf readers skip those):
//!
//! 1. Add `FORMAT_VERSION = 2` and the format-2 payload; encoders write only the newest.
//! 2. Keep the format-1 decoder as a migration: decode the format-1 payload, then turn it into
//!    format 2 (legacy records go on through format 1's path first). Never reuse a number.
//! 3. A record of a version above [`FORMAT_VERSION`] is refused with "written by a newer
//!    snapgate (record format N, this version reads up to M)": it is quarantined, never
//!    rewritten.
//! 4. Keep a fixture store written by the previous version under `scheduler/tests/fixtures`
//!    and a test that loads every record of it, as `tests/store_format.rs` does.

use prost::Message;
use snapgate_proto::v1;
use snapgate_scheduler_core::model::{Run, SourceRecord};

use crate::wire::sources::{run_to_wire, source_to_wire, stored_run, stored_source};

/// The record format this version writes, and the newest it reads.
pub const FORMAT_VERSION: u8 = 1;

/// The first byte of a versioned record (never the first byte of a protobuf message).
const HEADER: u8 = 0x00;

/// A source record's payload in format 1 (and, without the header, in the legacy format,
/// which has exactly this shape).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SourceRecordV1 {
    /// The source, as the API shows it.
    #[prost(message, optional, tag = "1")]
    pub source: Option<v1::Source>,
    /// Deleted by a user, kept until its last run has cleaned up and the agent has retired it.
    #[prost(bool, tag = "2")]
    pub deleting: bool,
}

/// A source record's format-1 payload.
pub fn source_message(r: &SourceRecord) -> SourceRecordV1 {
    SourceRecordV1 {
        source: Some(source_to_wire(&r.source)),
        deleting: r.deleting,
    }
}

/// A source record, in today's format.
pub fn encode_source(r: &SourceRecord) -> Vec<u8> {
    framed(&source_message(r))
}

/// A run, in today's format.
pub fn encode_run(r: &Run) -> Vec<u8> {
    framed(&run_to_wire(r))
}

/// The source record stored under `key` (`namespace/name`), from its bytes in any format this
/// version reads. The error says what is wrong with the record (its key is the caller's to
/// add).
pub fn decode_source(key: &str, bytes: &[u8]) -> Result<SourceRecord, String> {
    let payload = payload(bytes)?;
    let SourceRecordV1 { source, deleting } = SourceRecordV1::decode(payload)
        .map_err(|e| format!("not a source record (protobuf: {e})"))?;
    let mut source = source.ok_or("a source record without its source")?;
    migrate_source(&mut source);
    let named = format!("{}/{}", source.namespace, source.name);
    if named != key {
        return Err(format!(
            "the record holds source {}, not the one its key names",
            snapgate_proto::text::quoted(&named)
        ));
    }
    Ok(SourceRecord {
        source: stored_source(&source)?,
        deleting,
    })
}

/// The run stored under `key` (its id), from its bytes in any format this version reads. The
/// error says what is wrong with the record (its key is the caller's to add).
pub fn decode_run(key: &str, bytes: &[u8]) -> Result<Run, String> {
    let payload = payload(bytes)?;
    let mut run = v1::Run::decode(payload).map_err(|e| format!("not a run (protobuf: {e})"))?;
    if let Some(spec) = run.spec.as_mut() {
        migrate_spec(spec);
    }
    if run.id != key {
        return Err(format!(
            "the record holds run {}, not the one its key names",
            snapgate_proto::text::quoted(&run.id)
        ));
    }
    stored_run(&run)
}

/// Brings a stored source written by an earlier version to today's form (see the module's
/// list of migrations).
pub fn migrate_source(source: &mut v1::Source) {
    if let Some(spec) = source.spec.as_mut() {
        migrate_spec(spec);
    }
}

/// snapgate 0.1's integer `restic.retain.last` becomes the string `last` (unless that is set).
#[allow(deprecated)]
fn migrate_spec(spec: &mut v1::SourceSpec) {
    let retain = spec.restic.as_mut().and_then(|r| r.retain.as_mut());
    if let Some(retain) = retain
        && let Some(old) = retain.last_int32.take()
    {
        retain.last.get_or_insert_with(|| old.to_string());
    }
}

/// The header and `message`'s encoding.
fn framed(message: &impl Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.encoded_len().saturating_add(2));
    out.push(HEADER);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&message.encode_to_vec());
    out
}

/// The protobuf payload of a record: after the header of a versioned one, the whole of a
/// legacy one.
fn payload(bytes: &[u8]) -> Result<&[u8], String> {
    match bytes {
        [HEADER] => Err("truncated: a record header without its format version".to_owned()),
        [HEADER, FORMAT_VERSION, payload @ ..] => Ok(payload),
        [HEADER, 0, ..] => Err("record format 0 does not exist (a corrupt header)".to_owned()),
        [HEADER, newer, ..] => Err(format!(
            "written by a newer snapgate (record format {newer}, this version reads up to \
             {FORMAT_VERSION})"
        )),
        legacy => Ok(legacy),
    }
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;
    use proptest::prelude::*;

    use super::*;
    use crate::wire::testing::{full_record, full_run};

    /// A source record as snapgate wrote it before record formats, spelt out here so that the
    /// test does not depend on any type of today's code.
    #[derive(Clone, PartialEq, prost::Message)]
    struct LegacySourceRecord {
        #[prost(message, optional, tag = "1")]
        source: Option<v1::Source>,
        #[prost(bool, tag = "2")]
        deleting: bool,
    }

    fn legacy_source_bytes(r: &SourceRecord) -> Vec<u8> {
        LegacySourceRecord {
            source: Some(source_to_wire(&r.source)),
            deleting: r.deleting,
        }
        .encode_to_vec()
    }

    #[test]
    fn a_source_record_round_trips_with_a_version_header() {
        let record = full_record();
        let bytes = encode_source(&record);
        assert_eq!(&bytes[..2], &[0x00, FORMAT_VERSION]);
        assert_eq!(
            SourceRecordV1::decode(&bytes[2..]).unwrap(),
            source_message(&record),
            "the payload is the API's message"
        );
        assert_eq!(decode_source("apps/db", &bytes), Ok(record.clone()));
        let not_deleting = SourceRecord {
            deleting: false,
            ..record
        };
        assert_eq!(
            decode_source("apps/db", &encode_source(&not_deleting)),
            Ok(not_deleting)
        );
    }

    #[test]
    fn a_run_round_trips_with_a_version_header() {
        let run = full_run();
        let bytes = encode_run(&run);
        assert_eq!(&bytes[..2], &[0x00, FORMAT_VERSION]);
        assert_eq!(v1::Run::decode(&bytes[2..]).unwrap(), run_to_wire(&run));
        assert_eq!(decode_run("run-42", &bytes), Ok(run));
    }

    #[test]
    fn legacy_records_without_a_header_decode() {
        let record = full_record();
        let legacy = legacy_source_bytes(&record);
        assert_ne!(legacy.first(), Some(&0x00));
        assert_eq!(decode_source("apps/db", &legacy), Ok(record));
        let run = full_run();
        assert_eq!(
            decode_run("run-42", &run_to_wire(&run).encode_to_vec()),
            Ok(run)
        );
    }

    #[test]
    #[allow(deprecated)]
    fn an_integer_retain_last_from_snapgate_0_1_is_migrated_in_legacy_and_v1_records() {
        let mut message = source_message(&full_record());
        let retain = message
            .source
            .as_mut()
            .and_then(|s| s.spec.as_mut())
            .and_then(|s| s.restic.as_mut())
            .and_then(|r| r.retain.as_mut())
            .unwrap();
        retain.last = None;
        retain.last_int32 = Some(10);
        let legacy = message.encode_to_vec();
        let mut v1_bytes = vec![0x00, FORMAT_VERSION];
        v1_bytes.extend_from_slice(&legacy);
        for bytes in [legacy, v1_bytes] {
            let record = decode_source("apps/db", &bytes).unwrap();
            let last = record
                .source
                .spec
                .restic()
                .and_then(|r| r.retain.as_ref()?.last.clone());
            assert_eq!(last.as_deref(), Some("10"));
        }

        let mut source = message.source.unwrap();
        migrate_source(&mut source);
        let retain = source.spec.unwrap().restic.unwrap().retain.unwrap();
        assert_eq!(
            (retain.last.as_deref(), retain.last_int32),
            (Some("10"), None)
        );

        let mut run = run_to_wire(&full_run());
        let retain = run
            .spec
            .as_mut()
            .and_then(|s| s.restic.as_mut())
            .and_then(|r| r.retain.as_mut())
            .unwrap();
        retain.last = None;
        retain.last_int32 = Some(4);
        let decoded = decode_run("run-42", &run.encode_to_vec()).unwrap();
        let last = decoded
            .spec
            .as_ref()
            .and_then(|s| s.restic()?.retain.as_ref()?.last.clone());
        assert_eq!(last.as_deref(), Some("4"));
    }

    #[test]
    fn a_record_of_a_newer_format_is_refused_saying_so() {
        let payload = source_message(&full_record()).encode_to_vec();
        for version in [2u8, 9, 255] {
            let mut bytes = vec![0x00, version];
            bytes.extend_from_slice(&payload);
            let want = format!(
                "written by a newer snapgate (record format {version}, this version reads up to 1)"
            );
            assert_eq!(decode_source("apps/db", &bytes), Err(want.clone()));
            assert_eq!(decode_run("run-42", &bytes), Err(want));
        }
    }

    #[test]
    fn truncated_and_garbage_records_are_errors_not_panics() {
        assert_eq!(
            decode_source("a/b", &[0x00]),
            Err("truncated: a record header without its format version".into())
        );
        assert_eq!(
            decode_source("a/b", &[0x00, 0x00, 0x0a]),
            Err("record format 0 does not exist (a corrupt header)".into())
        );
        assert_eq!(
            decode_source("a/b", &[0x00, FORMAT_VERSION]),
            Err("a source record without its source".into())
        );
        assert_eq!(
            decode_source("a/b", &[]),
            Err("a source record without its source".into())
        );
        assert_eq!(
            decode_run("run-1", &[0x00, FORMAT_VERSION]),
            Err("the record holds run \"\", not the one its key names".into())
        );
        let garbage = b"\xff\xff not a record";
        assert!(
            decode_source("a/b", garbage)
                .unwrap_err()
                .starts_with("not a source record (protobuf: ")
        );
        assert!(
            decode_run("run-1", garbage)
                .unwrap_err()
                .starts_with("not a run (protobuf: ")
        );
        // A protobuf message is not self-delimiting: a cut at a field boundary decodes, to a
        // record without the fields cut off (never the original: its last field is set).
        let record = full_record();
        let source = encode_source(&record);
        for cut in 0..source.len() {
            assert_ne!(
                decode_source("apps/db", &source[..cut]),
                Ok(record.clone()),
                "{cut}"
            );
        }
        let run = full_run();
        let bytes = encode_run(&run);
        for cut in 0..bytes.len() {
            assert_ne!(
                decode_run("run-42", &bytes[..cut]),
                Ok(run.clone()),
                "{cut}"
            );
        }
    }

    #[test]
    fn a_record_under_a_key_that_does_not_name_it_is_refused() {
        assert_eq!(
            decode_source("apps/other", &encode_source(&full_record())),
            Err("the record holds source \"apps/db\", not the one its key names".into())
        );
        assert_eq!(
            decode_run("run-7", &encode_run(&full_run())),
            Err("the record holds run \"run-42\", not the one its key names".into())
        );
    }

    #[test]
    fn a_record_the_domain_cannot_hold_is_refused_naming_the_field() {
        let mut message = source_message(&full_record());
        if let Some(r) = message
            .source
            .as_mut()
            .and_then(|s| s.spec.as_mut())
            .and_then(|s| s.restic.as_mut())
        {
            r.copy_method = 9;
        }
        assert_eq!(
            decode_source("apps/db", &message.encode_to_vec()),
            Err("spec.restic.copyMethod: unknown value 9".into())
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_source("a/b", &bytes);
            let _ = decode_run("run-1", &bytes);
        }

        #[test]
        fn any_corruption_of_a_record_decodes_or_fails_without_a_panic(at: prop::sample::Index, byte: u8) {
            for mut bytes in [encode_source(&full_record()), encode_run(&full_run())] {
                let i = at.index(bytes.len());
                bytes[i] = byte;
                let _ = decode_source("apps/db", &bytes);
                let _ = decode_run("run-42", &bytes);
            }
        }
    }
}
