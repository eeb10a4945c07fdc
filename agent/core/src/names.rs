//! Deterministic names and labels for everything the agent creates.
//!
//! Names follow VolSync's (movers.md) so that users find the objects they know:
//!
//! | object | name |
//! |---|---|
//! | restic Job | `volsync-src-<source>` |
//! | rclone Job | `volsync-rclone-src-<source>` |
//! | rsync Job | `volsync-rsync-src-<source>` |
//! | rsync-tls Job | `volsync-rsync-tls-src-<source>` |
//! | VolumeSnapshot, clone PVC, PVC from snapshot | `volsync-<source>-src` |
//! | restic cache PVC | `volsync-src-<source>-cache` |
//!
//! A name over 63 characters (or not a DNS-1123 label) is shortened deterministically:
//! a cleaned prefix, `-`, and the first 10 hex digits of the SHA-256 of the full name.
//!
//! No owner references are possible (a source is not a Kubernetes object), so labels carry
//! identity: every object gets [`CREATED_BY`]`=snapgate` and [`SOURCE`]`=<source>`; temporary
//! objects (copies, restored PVCs, Jobs) also get [`CLEANUP`]`=<source>` and [`RUN`]`=<run>`,
//! so cleanup selects exactly what one source made.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::spec::Mover;

// The Kubernetes rules, as every snapgate crate checks them.
pub use snapgate_contract::{is_dns_label, is_label_value};

/// The longest DNS-1123 label (and label value).
pub const MAX_LABEL: usize = snapgate_contract::DNS_LABEL_MAX_LEN;
/// Hex digits of SHA-256 appended to a shortened name.
const HASH_LEN: usize = 10;

/// `app.kubernetes.io/created-by`, always `snapgate`.
pub const CREATED_BY: &str = "app.kubernetes.io/created-by";
/// The value of [`CREATED_BY`].
pub const CREATED_BY_VALUE: &str = "snapgate";
/// The source an object belongs to.
pub const SOURCE: &str = "snapgate.io/source";
/// Present (valued with the source) on temporary objects that cleanup deletes.
pub const CLEANUP: &str = "snapgate.io/cleanup";
/// The run that made a temporary object.
pub const RUN: &str = "snapgate.io/run";
/// The annotation on a gated run's copy (VolumeSnapshot or clone PVC): the copy-trigger value
/// of the release it was made for. A run released again (its lease ran out) never counts a
/// copy made for an earlier release.
pub const RELEASE: &str = "snapgate.io/copy-trigger";

/// The mover Job of a source.
pub fn job_name(mover: Mover, source: &str) -> String {
    let prefix = match mover {
        Mover::Restic => "volsync-src-",
        Mover::Rclone => "volsync-rclone-src-",
        Mover::Rsync => "volsync-rsync-src-",
        Mover::RsyncTls => "volsync-rsync-tls-src-",
    };
    dns_label(&format!("{prefix}{source}"))
}

/// The copy of a source's PVC: the VolumeSnapshot, the clone PVC, and the PVC restored from the
/// snapshot all share it (they are different kinds; a source uses either clone or snapshot).
pub fn copy_name(source: &str) -> String {
    dns_label(&format!("volsync-{source}-src"))
}

/// The ServiceAccount a source's mover pods run as when the source names none (as VolSync:
/// `volsync-src-<source>`, for every mover); the Role and RoleBinding that let it use the
/// privileged-mover SecurityContextConstraints share the name. Kept across runs.
pub fn mover_account_name(source: &str) -> String {
    dns_label(&format!("volsync-src-{source}"))
}

/// The restic cache PVC of a source (persists across runs).
pub fn cache_name(source: &str) -> String {
    dns_label(&format!("volsync-src-{source}-cache"))
}

/// `name` itself when it is a valid DNS-1123 label, otherwise a deterministic valid label:
/// the name lower-cased with invalid characters replaced by `-`, cut so that `-` and a
/// 10-digit SHA-256 prefix of the original fit in 63 characters.
pub fn dns_label(name: &str) -> String {
    if is_dns_label(name) {
        return name.to_owned();
    }
    let cleaned: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let room = MAX_LABEL - 1 - HASH_LEN;
    // `cleaned` is ASCII: any byte offset is a char boundary.
    let prefix = cleaned.get(..room).unwrap_or(&cleaned).trim_matches('-');
    let hash = short_hash(name);
    if prefix.is_empty() {
        hash
    } else {
        format!("{prefix}-{hash}")
    }
}

/// `value` itself when it is a valid label value, otherwise a deterministic valid one (the
/// same shortening as [`dns_label`], keeping case, `.` and `_`).
pub fn label_value(value: &str) -> String {
    if is_label_value(value) {
        return value.to_owned();
    }
    let cleaned: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let room = MAX_LABEL - 1 - HASH_LEN;
    // `cleaned` is ASCII: any byte offset is a char boundary.
    let prefix = cleaned
        .get(..room)
        .unwrap_or(&cleaned)
        .trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let hash = short_hash(value);
    if prefix.is_empty() {
        hash
    } else {
        format!("{prefix}-{hash}")
    }
}

fn short_hash(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let mut hex = hex::encode(digest);
    hex.truncate(HASH_LEN);
    hex
}

/// Labels of every object made for `source` (the restic cache too).
pub fn source_labels(source: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CREATED_BY.to_owned(), CREATED_BY_VALUE.to_owned()),
        (SOURCE.to_owned(), label_value(source)),
    ])
}

/// Labels of a temporary object made for one run of `source`: the source labels plus
/// [`CLEANUP`] and [`RUN`].
pub fn temporary_labels(source: &str, run_id: &str) -> BTreeMap<String, String> {
    let mut labels = source_labels(source);
    labels.insert(CLEANUP.to_owned(), label_value(source));
    labels.insert(RUN.to_owned(), label_value(run_id));
    labels
}

/// The label selector of everything snapgate creates (the agent watches snapshots and Jobs
/// with it): `CREATED_BY=CREATED_BY_VALUE`.
pub const CREATED_BY_SELECTOR: &str = "app.kubernetes.io/created-by=snapgate";

/// Whether an object carrying `labels` was made by snapgate for `source` (the restic cache
/// too).
pub fn made_for_source(labels: Option<&BTreeMap<String, String>>, source: &str) -> bool {
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    label(CREATED_BY) == Some(CREATED_BY_VALUE) && label(SOURCE) == Some(&label_value(source))
}

/// Whether an object carrying `labels` is a temporary object of `source` (what cleanup
/// deletes: the copies and Jobs of its runs, not its cache).
pub fn is_temporary_of(labels: Option<&BTreeMap<String, String>>, source: &str) -> bool {
    made_for_source(labels, source)
        && labels.and_then(|l| l.get(CLEANUP)) == Some(&label_value(source))
}

/// Whether an object carrying `labels` was made by `run_id` (a copy left behind by an earlier
/// run of the same source is stale and must not stand for this run's copy point).
pub fn made_by_run(labels: Option<&BTreeMap<String, String>>, run_id: &str) -> bool {
    labels
        .and_then(|l| l.get(RUN))
        .is_some_and(|v| *v == label_value(run_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn each_mover_job_is_named_as_in_volsync() {
        let cases = [
            (Mover::Restic, "volsync-src-db"),
            (Mover::Rclone, "volsync-rclone-src-db"),
            (Mover::Rsync, "volsync-rsync-src-db"),
            (Mover::RsyncTls, "volsync-rsync-tls-src-db"),
        ];
        for (mover, want) in cases {
            assert_eq!(job_name(mover, "db"), want);
        }
        assert_eq!(copy_name("db"), "volsync-db-src");
        assert_eq!(cache_name("db"), "volsync-src-db-cache");
    }

    #[test]
    fn a_name_over_63_characters_is_shortened_deterministically_to_a_valid_label() {
        let long = "a".repeat(60);
        let name = job_name(Mover::RsyncTls, &long);
        assert_eq!(name.len(), 63);
        assert!(is_dns_label(&name), "{name}");
        assert!(name.starts_with("volsync-rsync-tls-src-aaaa"));
        assert_eq!(name, job_name(Mover::RsyncTls, &long), "deterministic");
        assert_ne!(
            name,
            job_name(Mover::RsyncTls, &format!("{long}b")),
            "distinct sources stay distinct"
        );
        let hash = &name[name.len() - HASH_LEN..];
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn a_name_of_exactly_63_characters_is_kept() {
        let source = "b".repeat(63 - "volsync-src-".len());
        assert_eq!(job_name(Mover::Restic, &source).len(), 63);
        assert_eq!(
            job_name(Mover::Restic, &source),
            format!("volsync-src-{source}")
        );
    }

    #[test]
    fn names_that_are_not_labels_become_labels() {
        for raw in ["Volsync-DB", "volsync-a.b", "x_y", "-", "ü"] {
            let l = dns_label(raw);
            assert!(is_dns_label(&l), "{raw} -> {l}");
        }
    }

    #[test]
    fn label_values_are_kept_when_valid_and_hashed_when_not() {
        assert_eq!(label_value("db"), "db");
        assert_eq!(label_value("run-12"), "run-12");
        assert_eq!(label_value(""), "");
        let long = "s".repeat(80);
        let v = label_value(&long);
        assert!(v.len() <= 63 && is_label_value(&v), "{v}");
        assert_eq!(v, label_value(&long));
        assert!(is_label_value(&label_value("a/b")));
    }

    #[test]
    fn temporary_objects_carry_source_cleanup_and_run_labels() {
        let labels = temporary_labels("db", "run-7");
        assert_eq!(
            labels,
            BTreeMap::from([
                (
                    "app.kubernetes.io/created-by".to_owned(),
                    "snapgate".to_owned()
                ),
                ("snapgate.io/cleanup".to_owned(), "db".to_owned()),
                ("snapgate.io/run".to_owned(), "run-7".to_owned()),
                ("snapgate.io/source".to_owned(), "db".to_owned()),
            ])
        );
        assert_eq!(
            CREATED_BY_SELECTOR,
            format!("{CREATED_BY}={CREATED_BY_VALUE}")
        );
        assert!(made_by_run(Some(&labels), "run-7"));
        assert!(made_for_source(Some(&labels), "db"));
        assert!(!made_for_source(Some(&labels), "other"));
        assert!(is_temporary_of(Some(&labels), "db"));
        assert!(
            !is_temporary_of(Some(&source_labels("db")), "db"),
            "a cache is not temporary"
        );
        assert!(!made_by_run(Some(&labels), "run-8"));
        assert!(!made_by_run(None, "run-7"));
        assert!(!source_labels("db").contains_key(CLEANUP));
    }
}
