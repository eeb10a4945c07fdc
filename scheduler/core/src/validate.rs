//! Admission of a source: every rule a spec must meet before anything is stored.
//!
//! Errors name the field in its JSON spelling (`spec.trigger.schedule`, `spec.restic.repository`)
//! and the rule it breaks; the gRPC edge turns them into `INVALID_ARGUMENT`.

use chrono::Duration;
use prost_types::value::Kind;
use snapgate_proto::v1::{
    CopyMethod, CustomCa, MoverVolume, ReplicationSourceRcloneSpec, ReplicationSourceResticSpec,
    ReplicationSourceRsyncSpec, ReplicationSourceRsyncTlsSpec, SourceSpec, TimeoutPolicy,
};

use crate::{
    SourceKey,
    schedule::{Schedule, SyncTrigger},
};

/// A spec that breaks a rule: which field, and what the rule is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct InvalidField {
    /// The field, in its JSON spelling, e.g. `spec.trigger.schedule`.
    pub field: String,
    /// The rule it breaks.
    pub rule: String,
}

impl InvalidField {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

type Result<T = ()> = std::result::Result<T, InvalidField>;

/// The default copy-trigger wait timeout (VolSync: 10 minutes).
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::minutes(10);
/// The longest value of a free-form string (trigger values, manual tags).
pub const MAX_VALUE_LEN: usize = 253;
const MAX_JITTER: Duration = Duration::days(1);
const MAX_WAIT_TIMEOUT: Duration = Duration::days(7);
const ACCESS_MODES: [&str; 4] = [
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

/// Which mover a source uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mover {
    /// restic backup to a repository.
    Restic,
    /// rclone copy to a remote.
    Rclone,
    /// rsync over ssh.
    Rsync,
    /// rsync over TLS with a pre-shared key.
    RsyncTls,
}

impl Mover {
    /// The name used in metrics (`method` label) and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restic => "restic",
            Self::Rclone => "rclone",
            Self::Rsync => "rsync",
            Self::RsyncTls => "rsync-tls",
        }
    }
}

/// What the scheduler needs from an admitted spec, parsed once.
#[derive(Clone, Debug)]
pub struct Admitted {
    /// What starts runs.
    pub trigger: SyncTrigger,
    /// The mover.
    pub mover: Mover,
    /// How the copy is made (`None` is folded into `Direct`).
    pub copy_method: CopyMethod,
    /// How long a run waits for a copy trigger.
    pub wait_timeout: Duration,
    /// What happens when it times out.
    pub on_timeout: TimeoutPolicy,
    /// restic: prune every this many days.
    pub prune_interval: Option<Duration>,
}

/// Checks a source's identity and spec; on success returns the parsed scheduling facts.
pub fn admit(key: &SourceKey, spec: &SourceSpec) -> Result<Admitted> {
    dns_label("namespace", &key.namespace)?;
    dns_subdomain("name", &key.name)?;
    dns_subdomain("spec.sourcePVC", &spec.source_pvc)?;

    let tz = spec.time_zone.as_str();
    crate::schedule::parse_time_zone(tz)
        .map_err(|e| InvalidField::new("spec.timeZone", e.to_string()))?;
    let jitter = duration(
        "spec.jitter",
        spec.jitter.as_ref(),
        Duration::zero(),
        MAX_JITTER,
    )?
    .unwrap_or_else(Duration::zero);

    let trigger = match spec.trigger.as_ref() {
        None => SyncTrigger::Continuous,
        Some(t) => match (t.schedule.as_deref(), t.manual.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(InvalidField::new(
                    "spec.trigger",
                    "set schedule or manual, not both",
                ));
            }
            (Some(expr), None) => SyncTrigger::Schedule(Box::new(
                Schedule::parse(expr, tz, jitter, key)
                    .map_err(|e| InvalidField::new("spec.trigger.schedule", e.to_string()))?,
            )),
            (None, Some(tag)) => {
                printable("spec.trigger.manual", tag, true)?;
                SyncTrigger::Manual(tag.to_owned())
            }
            (None, None) => SyncTrigger::Continuous,
        },
    };

    let (wait_timeout, on_timeout) = match spec.copy_trigger.as_ref() {
        None => (DEFAULT_WAIT_TIMEOUT, TimeoutPolicy::KeepWaiting),
        Some(ct) => {
            let timeout = duration(
                "spec.copyTrigger.waitTimeout",
                ct.wait_timeout.as_ref(),
                Duration::seconds(1),
                MAX_WAIT_TIMEOUT,
            )?
            .unwrap_or(DEFAULT_WAIT_TIMEOUT);
            let policy = TimeoutPolicy::try_from(ct.on_timeout).map_err(|_| {
                InvalidField::new("spec.copyTrigger.onTimeout", "must be KeepWaiting or Skip")
            })?;
            (timeout, policy)
        }
    };

    let movers = [
        spec.restic.is_some(),
        spec.rclone.is_some(),
        spec.rsync.is_some(),
        spec.rsync_tls.is_some(),
    ];
    let count = movers.iter().filter(|m| **m).count();
    if count != 1 {
        return Err(InvalidField::new(
            "spec",
            format!(
                "exactly one mover of restic, rclone, rsync, rsyncTLS is required, found {count}"
            ),
        ));
    }
    let (mover, copy_method, prune_interval) = if let Some(r) = &spec.restic {
        (Mover::Restic, restic(r)?, prune_interval(r)?)
    } else if let Some(r) = &spec.rclone {
        (Mover::Rclone, rclone(r)?, None)
    } else if let Some(r) = &spec.rsync {
        (Mover::Rsync, rsync(r)?, None)
    } else if let Some(r) = &spec.rsync_tls {
        (Mover::RsyncTls, rsync_tls(r)?, None)
    } else {
        unreachable!("exactly one mover is set")
    };

    Ok(Admitted {
        trigger,
        mover,
        copy_method,
        wait_timeout,
        on_timeout,
        prune_interval,
    })
}

/// The volume options every mover carries, borrowed from one of them.
struct VolumeOptions<'a> {
    prefix: &'a str,
    copy_method: i32,
    capacity: Option<&'a str>,
    storage_class_name: Option<&'a str>,
    access_modes: &'a [String],
    volume_snapshot_class_name: Option<&'a str>,
    mover_service_account: Option<&'a str>,
    mover_pod_labels: &'a std::collections::HashMap<String, String>,
    mover_volumes: &'a [MoverVolume],
}

macro_rules! volume_options {
    ($prefix:expr, $spec:expr) => {
        VolumeOptions {
            prefix: $prefix,
            copy_method: $spec.copy_method,
            capacity: $spec.capacity.as_deref(),
            storage_class_name: $spec.storage_class_name.as_deref(),
            access_modes: &$spec.access_modes,
            volume_snapshot_class_name: $spec.volume_snapshot_class_name.as_deref(),
            mover_service_account: $spec.mover_service_account.as_deref(),
            mover_pod_labels: &$spec.mover_pod_labels,
            mover_volumes: &$spec.mover_volumes,
        }
    };
}

fn volume_options(o: VolumeOptions<'_>) -> Result<CopyMethod> {
    let p = o.prefix;
    let method = match CopyMethod::try_from(o.copy_method) {
        Ok(CopyMethod::Unspecified) | Err(_) => {
            return Err(InvalidField::new(
                format!("{p}.copyMethod"),
                "required, one of Direct, None, Clone, Snapshot",
            ));
        }
        Ok(CopyMethod::None) => CopyMethod::Direct,
        Ok(m) => m,
    };
    if let Some(c) = o.capacity {
        quantity(&format!("{p}.capacity"), c)?;
    }
    if let Some(s) = o.storage_class_name {
        dns_subdomain(&format!("{p}.storageClassName"), s)?;
    }
    access_modes(&format!("{p}.accessModes"), o.access_modes)?;
    if let Some(s) = o.volume_snapshot_class_name {
        dns_subdomain(&format!("{p}.volumeSnapshotClassName"), s)?;
    }
    if let Some(s) = o.mover_service_account {
        dns_subdomain(&format!("{p}.moverServiceAccount"), s)?;
    }
    for (k, v) in o.mover_pod_labels {
        label_key(&format!("{p}.moverPodLabels"), k)?;
        label_value(&format!("{p}.moverPodLabels[{k}]"), v)?;
    }
    for (i, v) in o.mover_volumes.iter().enumerate() {
        let f = format!("{p}.moverVolumes[{i}]");
        dns_label(&format!("{f}.mountPath"), &v.mount_path)?;
        let kinds: Vec<&String> = v
            .volume_source
            .as_ref()
            .map(|s| s.fields.keys().collect())
            .unwrap_or_default();
        let ok = kinds.len() == 1
            && matches!(kinds[0].as_str(), "persistentVolumeClaim" | "secret")
            && v.volume_source.as_ref().is_some_and(|s| {
                matches!(
                    s.fields.get(kinds[0]).and_then(|v| v.kind.as_ref()),
                    Some(Kind::StructValue(_))
                )
            });
        if !ok {
            return Err(InvalidField::new(
                format!("{f}.volumeSource"),
                "must hold exactly one of persistentVolumeClaim or secret",
            ));
        }
    }
    Ok(method)
}

fn restic(r: &ReplicationSourceResticSpec) -> Result<CopyMethod> {
    let method = volume_options(volume_options!("spec.restic", r))?;
    required_name("spec.restic.repository", &r.repository)?;
    if let Some(retain) = &r.retain {
        for (name, v) in [
            ("hourly", retain.hourly),
            ("daily", retain.daily),
            ("weekly", retain.weekly),
            ("monthly", retain.monthly),
            ("yearly", retain.yearly),
            ("last", retain.last),
        ] {
            if v.is_some_and(|v| v < 0) {
                return Err(InvalidField::new(
                    format!("spec.restic.retain.{name}"),
                    "must not be negative",
                ));
            }
        }
        if let Some(w) = &retain.within {
            restic_duration("spec.restic.retain.within", w)?;
        }
    }
    if let Some(c) = &r.cache_capacity {
        quantity("spec.restic.cacheCapacity", c)?;
    }
    if let Some(s) = &r.cache_storage_class_name {
        dns_subdomain("spec.restic.cacheStorageClassName", s)?;
    }
    access_modes("spec.restic.cacheAccessModes", &r.cache_access_modes)?;
    custom_ca("spec.restic.customCA", r.custom_ca.as_ref())?;
    if let Some(u) = &r.unlock {
        printable("spec.restic.unlock", u, false)?;
    }
    Ok(method)
}

fn prune_interval(r: &ReplicationSourceResticSpec) -> Result<Option<Duration>> {
    match r.prune_interval_days {
        None => Ok(Some(Duration::days(7))),
        Some(d) if d >= 1 => Ok(Some(Duration::days(d.into()))),
        Some(_) => Err(InvalidField::new(
            "spec.restic.pruneIntervalDays",
            "must be at least 1",
        )),
    }
}

fn rclone(r: &ReplicationSourceRcloneSpec) -> Result<CopyMethod> {
    let method = volume_options(volume_options!("spec.rclone", r))?;
    required_name("spec.rclone.rcloneConfig", &r.rclone_config)?;
    if r.rclone_config_section.is_empty() {
        return Err(InvalidField::new(
            "spec.rclone.rcloneConfigSection",
            "required",
        ));
    }
    printable(
        "spec.rclone.rcloneConfigSection",
        &r.rclone_config_section,
        true,
    )?;
    if r.rclone_dest_path.is_empty() {
        return Err(InvalidField::new("spec.rclone.rcloneDestPath", "required"));
    }
    printable("spec.rclone.rcloneDestPath", &r.rclone_dest_path, true)?;
    custom_ca("spec.rclone.customCA", r.custom_ca.as_ref())?;
    Ok(method)
}

fn rsync(r: &ReplicationSourceRsyncSpec) -> Result<CopyMethod> {
    let method = volume_options(volume_options!("spec.rsync", r))?;
    required_name("spec.rsync.sshKeys", &r.ssh_keys)?;
    address("spec.rsync.address", &r.address)?;
    port("spec.rsync.port", r.port)?;
    if let Some(u) = &r.ssh_user {
        printable("spec.rsync.sshUser", u, true)?;
    }
    if let Some(p) = &r.path {
        printable("spec.rsync.path", p, true)?;
    }
    Ok(method)
}

fn rsync_tls(r: &ReplicationSourceRsyncTlsSpec) -> Result<CopyMethod> {
    let method = volume_options(volume_options!("spec.rsyncTLS", r))?;
    required_name("spec.rsyncTLS.keySecret", &r.key_secret)?;
    address("spec.rsyncTLS.address", &r.address)?;
    port("spec.rsyncTLS.port", r.port)?;
    Ok(method)
}

fn custom_ca(field: &str, ca: Option<&CustomCa>) -> Result {
    let Some(ca) = ca else { return Ok(()) };
    match (ca.secret_name.is_empty(), ca.config_map_name.is_empty()) {
        // A key alone names no CA: the agent could not mount it.
        (true, true) if ca.key.is_empty() => return Ok(()),
        (true, true) => {
            return Err(InvalidField::new(
                format!("{field}.secretName"),
                "required with key (or set configMapName)",
            ));
        }
        (false, false) => {
            return Err(InvalidField::new(
                field,
                "set secretName or configMapName, not both",
            ));
        }
        (false, true) => dns_subdomain(&format!("{field}.secretName"), &ca.secret_name)?,
        (true, false) => dns_subdomain(&format!("{field}.configMapName"), &ca.config_map_name)?,
    }
    if ca.key.is_empty() {
        return Err(InvalidField::new(format!("{field}.key"), "required"));
    }
    Ok(())
}

fn required_name(field: &str, v: &str) -> Result {
    if v.is_empty() {
        return Err(InvalidField::new(field, "required (the name of a Secret)"));
    }
    dns_subdomain(field, v)
}

fn address(field: &str, v: &str) -> Result {
    if v.is_empty() {
        return Err(InvalidField::new(field, "required"));
    }
    if v.len() > 253
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    {
        return Err(InvalidField::new(
            field,
            "must be a host name or IP address",
        ));
    }
    Ok(())
}

fn port(field: &str, v: Option<i32>) -> Result {
    match v {
        Some(p) if !(1..=65535).contains(&p) => {
            Err(InvalidField::new(field, "must be between 1 and 65535"))
        }
        _ => Ok(()),
    }
}

fn access_modes(field: &str, modes: &[String]) -> Result {
    for m in modes {
        if !ACCESS_MODES.contains(&m.as_str()) {
            return Err(InvalidField::new(
                field,
                format!("{m:?} is not one of {}", ACCESS_MODES.join(", ")),
            ));
        }
    }
    Ok(())
}

fn duration(
    field: &str,
    d: Option<&prost_types::Duration>,
    min: Duration,
    max: Duration,
) -> Result<Option<Duration>> {
    let Some(d) = d else { return Ok(None) };
    if d.nanos.abs() >= 1_000_000_000 || (d.seconds < 0) != (d.nanos < 0) && d.nanos != 0 {
        return Err(InvalidField::new(field, "not a valid duration"));
    }
    let v = Duration::seconds(d.seconds) + Duration::nanoseconds(d.nanos.into());
    if v < min || v > max {
        return Err(InvalidField::new(
            field,
            format!(
                "must be between {}s and {}s",
                min.num_seconds(),
                max.num_seconds()
            ),
        ));
    }
    Ok(Some(v))
}

/// A Kubernetes resource quantity such as `10Gi`, `500M` or `1.5`.
fn quantity(field: &str, v: &str) -> Result {
    let suffixes = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    let num_end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, suffix) = v.split_at(num_end);
    let num_ok = !num.is_empty()
        && num.matches('.').count() <= 1
        && num != "."
        && num.parse::<f64>().is_ok_and(|n| n > 0.0);
    if !num_ok || !suffixes.contains(&suffix) {
        return Err(InvalidField::new(
            field,
            format!("{v:?} is not a positive quantity such as 10Gi"),
        ));
    }
    Ok(())
}

/// restic's `--keep-within` duration: numbers with y, m, d, h units, e.g. `1y6m3d12h`.
fn restic_duration(field: &str, v: &str) -> Result {
    let mut saw_unit = false;
    let mut digits = 0;
    for c in v.chars() {
        if c.is_ascii_digit() {
            digits += 1;
        } else if matches!(c, 'y' | 'm' | 'd' | 'h') && digits > 0 {
            digits = 0;
            saw_unit = true;
        } else {
            digits = usize::MAX;
            break;
        }
    }
    if !saw_unit || digits != 0 {
        return Err(InvalidField::new(
            field,
            format!("{v:?} is not a restic duration such as 3d12h"),
        ));
    }
    Ok(())
}

/// A DNS-1123 label: at most 63 lower-case alphanumerics or '-', alphanumeric at both ends.
pub fn dns_label(field: &str, v: &str) -> Result {
    if v.is_empty() {
        return Err(InvalidField::new(field, "required"));
    }
    if v.len() > 63 || !is_label(v) {
        return Err(InvalidField::new(
            field,
            format!(
                "{v:?} is not a valid DNS-1123 label (at most 63 lower-case letters, digits or '-', starting and ending with a letter or digit)"
            ),
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated labels.
pub fn dns_subdomain(field: &str, v: &str) -> Result {
    if v.is_empty() {
        return Err(InvalidField::new(field, "required"));
    }
    if v.len() > 253 || !v.split('.').all(is_label) {
        return Err(InvalidField::new(
            field,
            format!(
                "{v:?} is not a valid Kubernetes name (DNS-1123 subdomain: at most 253 lower-case letters, digits, '-' or '.', starting and ending with a letter or digit)"
            ),
        ));
    }
    Ok(())
}

fn is_label(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn label_key(field: &str, k: &str) -> Result {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        dns_subdomain(field, p)?;
    }
    if !label_value_ok(name) || name.is_empty() {
        return Err(InvalidField::new(
            field,
            format!("{k:?} is not a valid label key"),
        ));
    }
    Ok(())
}

fn label_value(field: &str, v: &str) -> Result {
    if !label_value_ok(v) {
        return Err(InvalidField::new(
            field,
            format!(
                "{v:?} is not a valid label value (at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric)"
            ),
        ));
    }
    Ok(())
}

fn label_value_ok(v: &str) -> bool {
    let b = v.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

/// A free-form value: at most 253 characters, none of them control characters.
pub fn printable(field: &str, v: &str, required: bool) -> Result {
    if required && v.is_empty() {
        return Err(InvalidField::new(field, "required, must not be empty"));
    }
    if v.chars().count() > MAX_VALUE_LEN {
        return Err(InvalidField::new(
            field,
            format!("at most {MAX_VALUE_LEN} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(InvalidField::new(
            field,
            "must be printable (no control characters)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapgate_proto::v1::{CopyTriggerOptions, ReplicationSourceTrigger, ResticRetainPolicy};

    fn key() -> SourceKey {
        SourceKey::new("apps", "db")
    }

    fn restic_spec() -> SourceSpec {
        SourceSpec {
            source_pvc: "data".into(),
            restic: Some(ReplicationSourceResticSpec {
                copy_method: CopyMethod::Snapshot as i32,
                repository: "restic-config".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn refused(spec: SourceSpec) -> InvalidField {
        admit(&key(), &spec).unwrap_err()
    }

    #[test]
    fn a_minimal_restic_source_is_admitted_with_volsync_defaults() {
        let a = admit(&key(), &restic_spec()).unwrap();
        assert!(matches!(a.trigger, SyncTrigger::Continuous));
        assert_eq!(a.mover, Mover::Restic);
        assert_eq!(a.copy_method, CopyMethod::Snapshot);
        assert_eq!(a.wait_timeout, Duration::minutes(10));
        assert_eq!(a.on_timeout, TimeoutPolicy::KeepWaiting);
        assert_eq!(a.prune_interval, Some(Duration::days(7)));
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        let with = |f: &dyn Fn(&mut SourceSpec)| {
            let mut s = restic_spec();
            f(&mut s);
            refused(s).field
        };
        let trig = |schedule: Option<&str>, manual: Option<&str>| ReplicationSourceTrigger {
            schedule: schedule.map(Into::into),
            manual: manual.map(Into::into),
        };
        type Mutation<'a> = Box<dyn Fn(&mut SourceSpec) + 'a>;
        let cases: Vec<(&str, Mutation<'_>)> = vec![
            (
                "spec.restic.customCA.secretName",
                Box::new(|s| {
                    s.restic.as_mut().unwrap().custom_ca = Some(CustomCa {
                        key: "ca.crt".into(),
                        ..Default::default()
                    })
                }),
            ),
            (
                "spec.trigger.schedule",
                Box::new(|s| s.trigger = Some(trig(Some("not a cron"), None))),
            ),
            (
                "spec.trigger",
                Box::new(|s| s.trigger = Some(trig(Some("@daily"), Some("x")))),
            ),
            (
                "spec.trigger.manual",
                Box::new(|s| s.trigger = Some(trig(None, Some("")))),
            ),
            (
                "spec.timeZone",
                Box::new(|s| s.time_zone = "Nowhere/City".into()),
            ),
            (
                "spec.sourcePVC",
                Box::new(|s| s.source_pvc = "Data_Volume".into()),
            ),
            ("spec.sourcePVC", Box::new(|s| s.source_pvc = String::new())),
            ("spec", Box::new(|s| s.restic = None)),
            ("spec", Box::new(|s| s.rclone = Some(Default::default()))),
            (
                "spec.restic.repository",
                Box::new(|s| s.restic.as_mut().unwrap().repository.clear()),
            ),
            (
                "spec.restic.copyMethod",
                Box::new(|s| s.restic.as_mut().unwrap().copy_method = 0),
            ),
            (
                "spec.restic.copyMethod",
                Box::new(|s| s.restic.as_mut().unwrap().copy_method = 42),
            ),
            (
                "spec.restic.capacity",
                Box::new(|s| s.restic.as_mut().unwrap().capacity = Some("lots".into())),
            ),
            (
                "spec.restic.accessModes",
                Box::new(|s| {
                    s.restic.as_mut().unwrap().access_modes = vec!["ReadWriteSometimes".into()]
                }),
            ),
            (
                "spec.restic.pruneIntervalDays",
                Box::new(|s| s.restic.as_mut().unwrap().prune_interval_days = Some(0)),
            ),
            (
                "spec.restic.retain.daily",
                Box::new(|s| {
                    s.restic.as_mut().unwrap().retain = Some(ResticRetainPolicy {
                        daily: Some(-1),
                        ..Default::default()
                    })
                }),
            ),
            (
                "spec.restic.retain.within",
                Box::new(|s| {
                    s.restic.as_mut().unwrap().retain = Some(ResticRetainPolicy {
                        within: Some("forever".into()),
                        ..Default::default()
                    })
                }),
            ),
            (
                "spec.restic.moverPodLabels[app]",
                Box::new(|s| {
                    s.restic
                        .as_mut()
                        .unwrap()
                        .mover_pod_labels
                        .insert("app".into(), "-bad-".into());
                }),
            ),
            (
                "spec.jitter",
                Box::new(|s| {
                    s.jitter = Some(prost_types::Duration {
                        seconds: -5,
                        nanos: 0,
                    })
                }),
            ),
            (
                "spec.copyTrigger.waitTimeout",
                Box::new(|s| {
                    s.copy_trigger = Some(CopyTriggerOptions {
                        wait_timeout: Some(prost_types::Duration {
                            seconds: 0,
                            nanos: 0,
                        }),
                        on_timeout: 0,
                    })
                }),
            ),
            (
                "spec.copyTrigger.onTimeout",
                Box::new(|s| {
                    s.copy_trigger = Some(CopyTriggerOptions {
                        wait_timeout: None,
                        on_timeout: 9,
                    })
                }),
            ),
        ];
        for (want, mutate) in cases {
            assert_eq!(with(&*mutate), want);
        }
    }

    #[test]
    fn rclone_needs_config_section_and_destination() {
        let mut s = restic_spec();
        s.restic = None;
        s.rclone = Some(ReplicationSourceRcloneSpec {
            copy_method: CopyMethod::Clone as i32,
            rclone_config: "rclone-secret".into(),
            rclone_config_section: "s3".into(),
            ..Default::default()
        });
        assert_eq!(refused(s.clone()).field, "spec.rclone.rcloneDestPath");
        s.rclone.as_mut().unwrap().rclone_dest_path = "bucket/path".into();
        assert_eq!(admit(&key(), &s).unwrap().copy_method, CopyMethod::Clone);
    }

    #[test]
    fn rsync_movers_need_an_address_and_a_valid_port() {
        let mut s = restic_spec();
        s.restic = None;
        s.rsync_tls = Some(ReplicationSourceRsyncTlsSpec {
            copy_method: CopyMethod::None as i32,
            key_secret: "tls-key".into(),
            ..Default::default()
        });
        assert_eq!(refused(s.clone()).field, "spec.rsyncTLS.address");
        s.rsync_tls.as_mut().unwrap().address = "10.0.0.7".into();
        s.rsync_tls.as_mut().unwrap().port = Some(70000);
        assert_eq!(refused(s.clone()).field, "spec.rsyncTLS.port");
        s.rsync_tls.as_mut().unwrap().port = None;
        let a = admit(&key(), &s).unwrap();
        assert_eq!(a.copy_method, CopyMethod::Direct, "None is Direct");
        assert_eq!(a.mover, Mover::RsyncTls);
    }

    #[test]
    fn names_that_are_not_kubernetes_names_are_refused() {
        let bad = SourceKey::new("Apps", "db");
        assert_eq!(admit(&bad, &restic_spec()).unwrap_err().field, "namespace");
        let bad = SourceKey::new("apps", "db_1");
        assert_eq!(admit(&bad, &restic_spec()).unwrap_err().field, "name");
        let long = SourceKey::new(&"a".repeat(64), "db");
        assert_eq!(admit(&long, &restic_spec()).unwrap_err().field, "namespace");
    }

    #[test]
    fn printable_values_refuse_empty_overlong_and_control_characters() {
        assert!(printable("value", "first", true).is_ok());
        assert!(printable("value", "", true).is_err());
        assert!(printable("value", &"x".repeat(254), true).is_err());
        assert!(printable("value", &"é".repeat(253), true).is_ok());
        assert!(printable("value", "a\nb", true).is_err());
    }

    #[test]
    fn quantities_accept_kubernetes_forms_only() {
        for ok in ["1Gi", "10G", "500Mi", "1.5Ti", "100"] {
            assert!(quantity("q", ok).is_ok(), "{ok}");
        }
        for bad in ["", "Gi", "-1Gi", "1GB", "1..5Gi", "0"] {
            assert!(quantity("q", bad).is_err(), "{bad}");
        }
    }
}
