//! Admission of a source: every rule a spec must meet before anything is stored.
//!
//! Errors name the field in its JSON spelling (`spec.trigger.schedule`, `spec.restic.repository`)
//! and the rule it breaks; the gRPC edge turns them into `INVALID_ARGUMENT`.

use chrono::Duration;
use snapgate_contract::{ACCESS_MODES, DNS_LABEL_MAX_LEN, NameError, is_label_value};

use crate::{
    SourceKey,
    model::{
        CopyMethod, CopyTriggerInput, CopyTriggerOptions, CustomCa, JsonObject, MoverInput,
        MoverKind, MoverSpec, RawDuration, RcloneSpec, ResticSpec, RsyncSpec, RsyncTlsSpec,
        SourceSpec, SpecInput, TimeoutPolicy, TriggerInput, TriggerSpec, VolumeOptions,
    },
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
/// The largest spec, encoded as a request carries it: a page of `ListSources` holds dozens of
/// the largest.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// The largest free-form Kubernetes object in a spec (moverResources, moverSecurityContext,
/// moverAffinity, a mover volume's source), JSON-encoded.
pub const MAX_OBJECT_BYTES: usize = 16 * 1024;
/// The most entries of `moverPodLabels` and of `moverVolumes`.
const MAX_LABELS: usize = 64;
const MAX_MOVER_VOLUMES: usize = 16;
const MAX_JITTER: Duration = Duration::days(1);
const MAX_WAIT_TIMEOUT: Duration = Duration::days(7);

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

    /// The mover's field in a spec, in its JSON spelling.
    pub fn spec_field(self) -> &'static str {
        match self {
            Self::Restic => "restic",
            Self::Rclone => "rclone",
            Self::Rsync => "rsync",
            Self::RsyncTls => "rsyncTLS",
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
    /// The applications that must all trigger a run (`spec.copyTrigger.holders`).
    pub holders: Vec<String>,
}

/// Admission: checks a source's identity and a requested spec against every rule; on success
/// returns the admitted spec and the scheduling facts parsed from it.
pub fn admit(key: &SourceKey, input: SpecInput) -> Result<(SourceSpec, Admitted)> {
    if input.encoded_len > MAX_SPEC_BYTES {
        return Err(InvalidField::new(
            "spec",
            format!(
                "at most {MAX_SPEC_BYTES} bytes encoded, got {}",
                input.encoded_len
            ),
        ));
    }
    dns_label("namespace", &key.namespace)?;
    dns_subdomain("name", &key.name)?;
    let spec = shape(input)?;
    check(key, &spec)?;
    let admitted = derive(key, &spec, Strictness::Strict)?;
    Ok((spec, admitted))
}

/// The structure of a requested spec: exactly one mover with a known copy method, a trigger
/// that is one thing, valid durations. The domain type cannot hold anything else.
fn shape(input: SpecInput) -> Result<SourceSpec> {
    let SpecInput {
        encoded_len: _,
        source_pvc,
        trigger,
        paused,
        movers,
        time_zone,
        jitter,
        copy_trigger,
        skip_initial_run,
    } = input;
    let trigger = match trigger {
        None => TriggerSpec::Continuous,
        Some(TriggerInput { schedule, manual }) => match (schedule, manual) {
            (Some(_), Some(_)) => {
                return Err(InvalidField::new(
                    "spec.trigger",
                    "set schedule or manual, not both",
                ));
            }
            (Some(expr), None) => TriggerSpec::Schedule(expr),
            (None, Some(tag)) => TriggerSpec::Manual(tag),
            (None, None) => TriggerSpec::Continuous,
        },
    };
    let jitter = jitter
        .map(|d| valid_duration("spec.jitter", d, Duration::zero(), MAX_JITTER))
        .transpose()?;
    let copy_trigger = copy_trigger.map(copy_trigger_options).transpose()?;
    let count = movers.len();
    let mut movers = movers.into_iter();
    let (Some(mover), None) = (movers.next(), movers.next()) else {
        return Err(InvalidField::new(
            "spec",
            format!(
                "exactly one mover of restic, rclone, rsync, rsyncTLS is required, found {count}"
            ),
        ));
    };
    let MoverInput {
        copy_method,
        mut volume,
        kind,
    } = mover;
    let field = format!("spec.{}.copyMethod", mover_of(&kind).spec_field());
    volume.copy_method = copy_method_of(&field, copy_method)?;
    Ok(SourceSpec {
        source_pvc,
        trigger,
        paused,
        mover: MoverSpec { volume, kind },
        time_zone,
        jitter,
        copy_trigger,
        skip_initial_run,
    })
}

fn mover_of(kind: &MoverKind) -> Mover {
    match kind {
        MoverKind::Restic(_) => Mover::Restic,
        MoverKind::Rclone(_) => Mover::Rclone,
        MoverKind::Rsync(_) => Mover::Rsync,
        MoverKind::RsyncTls(_) => Mover::RsyncTls,
    }
}

fn copy_trigger_options(ct: CopyTriggerInput) -> Result<CopyTriggerOptions> {
    let on_timeout = match ct.on_timeout {
        0 => TimeoutPolicy::KeepWaiting,
        1 => TimeoutPolicy::Skip,
        _ => {
            return Err(InvalidField::new(
                "spec.copyTrigger.onTimeout",
                "must be KeepWaiting or Skip",
            ));
        }
    };
    Ok(CopyTriggerOptions {
        wait_timeout: ct
            .wait_timeout
            .map(|d| {
                valid_duration(
                    "spec.copyTrigger.waitTimeout",
                    d,
                    Duration::seconds(1),
                    MAX_WAIT_TIMEOUT,
                )
            })
            .transpose()?,
        on_timeout,
        holders: ct.holders,
        allowed_service_accounts: ct.allowed_service_accounts,
    })
}

/// A copy method's number as a request carries it (`None` kept as applied).
fn copy_method_of(field: &str, raw: i32) -> Result<CopyMethod> {
    match raw {
        1 => Ok(CopyMethod::Direct),
        2 => Ok(CopyMethod::None),
        3 => Ok(CopyMethod::Clone),
        4 => Ok(CopyMethod::Snapshot),
        _ => Err(InvalidField::new(
            field,
            "required, one of Direct, None, Clone, Snapshot",
        )),
    }
}

/// Every field rule of a spec, in the order a reader meets the fields: the first broken one.
pub fn check(key: &SourceKey, spec: &SourceSpec) -> Result {
    dns_subdomain("spec.sourcePVC", &spec.source_pvc)?;
    crate::schedule::parse_time_zone(&spec.time_zone)
        .map_err(|e| InvalidField::new("spec.timeZone", e.to_string()))?;
    in_range("spec.jitter", spec.jitter, Duration::zero(), MAX_JITTER)?;
    match &spec.trigger {
        TriggerSpec::Schedule(expr) => {
            Schedule::parse(
                expr,
                &spec.time_zone,
                spec.jitter.unwrap_or_else(Duration::zero),
                key,
            )
            .map_err(|e| InvalidField::new("spec.trigger.schedule", e.to_string()))?;
        }
        TriggerSpec::Manual(tag) => printable("spec.trigger.manual", tag, true)?,
        TriggerSpec::Continuous => {}
    }
    if let Some(ct) = &spec.copy_trigger {
        in_range(
            "spec.copyTrigger.waitTimeout",
            ct.wait_timeout,
            Duration::seconds(1),
            MAX_WAIT_TIMEOUT,
        )?;
        holders(&ct.holders)?;
        allowed_service_accounts(&ct.allowed_service_accounts)?;
    }
    let prefix = format!("spec.{}", spec.mover.mover().spec_field());
    volume_options(&prefix, &spec.mover.volume)?;
    match &spec.mover.kind {
        MoverKind::Restic(r) => restic(r),
        MoverKind::Rclone(r) => rclone(r),
        MoverKind::Rsync(r) => rsync(r),
        MoverKind::RsyncTls(r) => rsync_tls(r),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// Every rule holds (checked first).
    Strict,
    /// A stored spec that breaks a rule tightened since: out-of-range durations clamped, a
    /// schedule parsed as leniently as it was stored.
    Lenient,
}

/// The scheduling facts of a spec.
fn derive(key: &SourceKey, spec: &SourceSpec, how: Strictness) -> Result<Admitted> {
    let lenient = how == Strictness::Lenient;
    let tz = if lenient && crate::schedule::parse_time_zone(&spec.time_zone).is_err() {
        ""
    } else {
        spec.time_zone.as_str()
    };
    let jitter = spec
        .jitter
        .map_or_else(Duration::zero, |j| j.clamp(Duration::zero(), MAX_JITTER));
    let trigger = match &spec.trigger {
        TriggerSpec::Continuous => SyncTrigger::Continuous,
        TriggerSpec::Manual(tag) => SyncTrigger::Manual(tag.clone()),
        TriggerSpec::Schedule(expr) => {
            let parsed = if lenient {
                Schedule::parse_pattern(expr, tz, jitter, key)
            } else {
                Schedule::parse(expr, tz, jitter, key)
            };
            SyncTrigger::Schedule(Box::new(
                parsed.map_err(|e| InvalidField::new("spec.trigger.schedule", e.to_string()))?,
            ))
        }
    };
    let (wait_timeout, on_timeout, holders) = match &spec.copy_trigger {
        None => (DEFAULT_WAIT_TIMEOUT, TimeoutPolicy::KeepWaiting, Vec::new()),
        Some(ct) => (
            ct.wait_timeout.map_or(DEFAULT_WAIT_TIMEOUT, |t| {
                t.clamp(Duration::seconds(1), MAX_WAIT_TIMEOUT)
            }),
            ct.on_timeout,
            ct.holders.clone(),
        ),
    };
    let prune_interval = spec.restic().map(|r| match r.prune_interval_days {
        // VolSync admits the whole int32 range; i32::MAX days is within chrono's range for a
        // duration (not for a date: the prune decision adds it with checked arithmetic).
        Some(d) if d >= 1 => Duration::try_days(d.into()).unwrap_or(Duration::days(7)),
        _ => Duration::days(7),
    });
    Ok(Admitted {
        trigger,
        mover: spec.mover.mover(),
        copy_method: spec.mover.volume.copy_method.folded(),
        wait_timeout,
        on_timeout,
        prune_interval,
        holders,
    })
}

/// The most holders a source may list.
pub const MAX_HOLDERS: usize = 16;

/// `spec.copyTrigger.allowedServiceAccounts`: at most [`MAX_HOLDERS`] ServiceAccount names
/// (DNS-1123 subdomains).
fn allowed_service_accounts(list: &[String]) -> Result {
    if list.len() > MAX_HOLDERS {
        return Err(InvalidField::new(
            "spec.copyTrigger.allowedServiceAccounts",
            format!("at most {MAX_HOLDERS} names, got {}", list.len()),
        ));
    }
    for (i, name) in list.iter().enumerate() {
        dns_subdomain(
            &format!("spec.copyTrigger.allowedServiceAccounts[{i}]"),
            name,
        )?;
    }
    Ok(())
}

/// `spec.copyTrigger.holders`: at most [`MAX_HOLDERS`] DNS-1123 labels, each once.
fn holders(list: &[String]) -> Result {
    if list.len() > MAX_HOLDERS {
        return Err(InvalidField::new(
            "spec.copyTrigger.holders",
            format!("at most {MAX_HOLDERS} holders, got {}", list.len()),
        ));
    }
    for (i, h) in list.iter().enumerate() {
        let field = format!("spec.copyTrigger.holders[{i}]");
        dns_label(&field, h)?;
        if list[..i].contains(h) {
            return Err(InvalidField::new(
                &field,
                format!("{} is listed twice", quoted(h)),
            ));
        }
    }
    Ok(())
}

/// Admission of a spec read back from the store: never refused. A spec that meets today's
/// rules is admitted as usual; one stored by a version with looser rules (a rule tightened
/// since) loads as stored, with the first broken rule returned beside it to be shown on the
/// source, and out-of-range durations clamped. Only a schedule that does not parse at all is
/// refused: the scheduler cannot run it.
pub fn admit_stored(
    key: &SourceKey,
    spec: &SourceSpec,
) -> std::result::Result<(Admitted, Option<InvalidField>), InvalidField> {
    let broken = dns_label("namespace", &key.namespace)
        .and_then(|()| dns_subdomain("name", &key.name))
        .and_then(|()| check(key, spec))
        .err();
    let how = if broken.is_some() {
        Strictness::Lenient
    } else {
        Strictness::Strict
    };
    derive(key, spec, how).map(|a| (a, broken))
}

/// A duration as a request carries it, as chrono's: nanos within a second and of the sign of
/// the seconds, and within chrono's range (about ±2^63 milliseconds); beyond that range, the
/// error names the field's own bounds (`min`, `max`), which [`check`] holds it to.
fn valid_duration(field: &str, d: RawDuration, min: Duration, max: Duration) -> Result<Duration> {
    if d.nanos.abs() >= 1_000_000_000 || (d.seconds < 0) != (d.nanos < 0) && d.nanos != 0 {
        return Err(InvalidField::new(
            field,
            "not a valid duration (nanos must be within ±999999999 and have the sign of seconds)",
        ));
    }
    Duration::try_seconds(d.seconds)
        .and_then(|s| s.checked_add(&Duration::nanoseconds(d.nanos.into())))
        .ok_or_else(|| out_of_range(field, min, max))
}

fn in_range(field: &str, d: Option<Duration>, min: Duration, max: Duration) -> Result {
    match d {
        Some(v) if v < min || v > max => Err(out_of_range(field, min, max)),
        _ => Ok(()),
    }
}

fn out_of_range(field: &str, min: Duration, max: Duration) -> InvalidField {
    InvalidField::new(
        field,
        format!(
            "must be between {}s and {}s",
            min.num_seconds(),
            max.num_seconds()
        ),
    )
}

fn volume_options(p: &str, o: &VolumeOptions) -> Result {
    if let Some(c) = &o.capacity {
        quantity(&format!("{p}.capacity"), c)?;
    }
    if let Some(s) = &o.storage_class_name {
        dns_subdomain(&format!("{p}.storageClassName"), s)?;
    }
    access_modes(&format!("{p}.accessModes"), &o.access_modes)?;
    if let Some(s) = &o.volume_snapshot_class_name {
        dns_subdomain(&format!("{p}.volumeSnapshotClassName"), s)?;
    }
    if let Some(s) = &o.mover_service_account {
        dns_subdomain(&format!("{p}.moverServiceAccount"), s)?;
    }
    for (name, object) in [
        ("moverSecurityContext", &o.mover_security_context),
        ("moverResources", &o.mover_resources),
        ("moverAffinity", &o.mover_affinity),
    ] {
        object_size(&format!("{p}.{name}"), object.as_ref())?;
    }
    if o.mover_pod_labels.len() > MAX_LABELS {
        return Err(InvalidField::new(
            format!("{p}.moverPodLabels"),
            format!(
                "at most {MAX_LABELS} labels, got {}",
                o.mover_pod_labels.len()
            ),
        ));
    }
    if o.mover_volumes.len() > MAX_MOVER_VOLUMES {
        return Err(InvalidField::new(
            format!("{p}.moverVolumes"),
            format!(
                "at most {MAX_MOVER_VOLUMES} volumes, got {}",
                o.mover_volumes.len()
            ),
        ));
    }
    for (k, v) in &o.mover_pod_labels {
        label_key(&format!("{p}.moverPodLabels"), k)?;
        label_value(&format!("{p}.moverPodLabels[{k}]"), v)?;
    }
    for (i, v) in o.mover_volumes.iter().enumerate() {
        let f = format!("{p}.moverVolumes[{i}]");
        dns_label(&format!("{f}.mountPath"), &v.mount_path)?;
        object_size(&format!("{f}.volumeSource"), v.volume_source.as_ref())?;
        let ok = v.volume_source.as_ref().is_some_and(|s| {
            s.len() == 1
                && s.iter().all(|(k, v)| {
                    matches!(k.as_str(), "persistentVolumeClaim" | "secret") && v.is_object()
                })
        });
        if !ok {
            return Err(InvalidField::new(
                format!("{f}.volumeSource"),
                "must hold exactly one of persistentVolumeClaim or secret",
            ));
        }
    }
    Ok(())
}

fn restic(r: &ResticSpec) -> Result {
    required_name("spec.restic.repository", &r.repository)?;
    if let Some(retain) = &r.retain {
        for (name, v) in [
            ("hourly", retain.hourly),
            ("daily", retain.daily),
            ("weekly", retain.weekly),
            ("monthly", retain.monthly),
            ("yearly", retain.yearly),
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
        if let Some(last) = &retain.last {
            retain_last("spec.restic.retain.last", last)?;
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
    if r.prune_interval_days.is_some_and(|d| d < 1) {
        return Err(InvalidField::new(
            "spec.restic.pruneIntervalDays",
            "must be at least 1",
        ));
    }
    Ok(())
}

fn rclone(r: &RcloneSpec) -> Result {
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
    custom_ca("spec.rclone.customCA", r.custom_ca.as_ref())
}

fn rsync(r: &RsyncSpec) -> Result {
    required_name("spec.rsync.sshKeys", &r.ssh_keys)?;
    address("spec.rsync.address", &r.address)?;
    port("spec.rsync.port", r.port)?;
    if let Some(u) = &r.ssh_user {
        printable("spec.rsync.sshUser", u, true)?;
    }
    if let Some(p) = &r.path {
        printable("spec.rsync.path", p, true)?;
    }
    Ok(())
}

fn rsync_tls(r: &RsyncTlsSpec) -> Result {
    required_name("spec.rsyncTLS.keySecret", &r.key_secret)?;
    address("spec.rsyncTLS.address", &r.address)?;
    port("spec.rsyncTLS.port", r.port)
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
    if modes.len() > ACCESS_MODES.len() {
        return Err(InvalidField::new(
            field,
            format!(
                "at most {} access modes, got {}",
                ACCESS_MODES.len(),
                modes.len()
            ),
        ));
    }
    for m in modes {
        if !ACCESS_MODES.contains(&m.as_str()) {
            return Err(InvalidField::new(
                field,
                format!("{} is not one of {}", quoted(m), ACCESS_MODES.join(", ")),
            ));
        }
    }
    Ok(())
}

fn object_size(field: &str, object: Option<&JsonObject>) -> Result {
    let size = object.map_or(0, json_size);
    if size > MAX_OBJECT_BYTES {
        return Err(InvalidField::new(
            field,
            format!("at most {MAX_OBJECT_BYTES} bytes encoded, got {size}"),
        ));
    }
    Ok(())
}

/// The length of an object's compact JSON encoding.
fn json_size(object: &JsonObject) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail; an error would only under-count, never panic.
    let _ = serde_json::to_writer(&mut count, object);
    count.0
}

/// A Trigger's `hold`: a valid, positive duration; one longer than `max` is cut to `max` (an
/// earlier lease deadline is always safe).
pub fn positive_hold(d: RawDuration, max: Duration) -> Result<Duration> {
    if d.nanos.abs() >= 1_000_000_000 || (d.seconds < 0) != (d.nanos < 0) && d.nanos != 0 {
        return Err(InvalidField::new(
            "hold",
            "not a valid duration (nanos must be within ±999999999 and have the sign of seconds)",
        ));
    }
    if d.seconds < 0 || d.seconds == 0 && d.nanos <= 0 {
        return Err(InvalidField::new(
            "hold",
            "must be positive: how long the caller holds its quiesce from now",
        ));
    }
    let v = Duration::try_seconds(d.seconds)
        .and_then(|s| s.checked_add(&Duration::nanoseconds(d.nanos.into())));
    Ok(v.map_or(max, |v| v.min(max)))
}

/// restic's `--keep-last`: a string holding a non-negative integer (VolSync's API type).
fn retain_last(field: &str, v: &str) -> Result {
    if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidField::new(
            field,
            format!("{} is not a non-negative integer such as \"10\"", quoted(v)),
        ));
    }
    if v.parse::<i32>().is_err() {
        return Err(InvalidField::new(
            field,
            format!("{} is above {}", quoted(v), i32::MAX),
        ));
    }
    Ok(())
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
            format!("{} is not a positive quantity such as 10Gi", quoted(v)),
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
            format!("{} is not a restic duration such as 3d12h", quoted(v)),
        ));
    }
    Ok(())
}

/// A DNS-1123 label as apimachinery defines it ([`snapgate_contract::check_dns_label`]): at
/// most 63 lower-case alphanumerics or '-', alphanumeric at both ends.
pub fn dns_label(field: &str, v: &str) -> Result {
    match snapgate_contract::check_dns_label(v) {
        Ok(()) => Ok(()),
        Err(NameError::Empty) => Err(InvalidField::new(field, "required")),
        Err(_) => Err(InvalidField::new(
            field,
            format!(
                "{} is not a valid DNS-1123 label (at most {DNS_LABEL_MAX_LEN} lower-case letters, digits or '-', starting and ending with a letter or digit)",
                quoted(v)
            ),
        )),
    }
}

/// A DNS-1123 subdomain as apimachinery defines it (`IsDNS1123Subdomain`,
/// [`snapgate_contract::check_dns_subdomain`]): at most 253 characters, dot-separated parts of
/// lower-case alphanumerics or '-', each alphanumeric at both ends. Unlike a label, a part may
/// be longer than 63.
pub fn dns_subdomain(field: &str, v: &str) -> Result {
    match snapgate_contract::check_dns_subdomain(v) {
        Ok(()) => Ok(()),
        Err(NameError::Empty) => Err(InvalidField::new(field, "required")),
        Err(NameError::TooLong { len, max }) => Err(InvalidField::new(
            field,
            format!(
                "{} is not a valid Kubernetes name: at most {max} characters, got {len}",
                quoted(v)
            ),
        )),
        Err(_) => Err(InvalidField::new(
            field,
            format!(
                "{} is not a valid Kubernetes name (DNS-1123 subdomain: lower-case letters, digits, '-' or '.', each dot-separated part starting and ending with a letter or digit)",
                quoted(v)
            ),
        )),
    }
}

fn label_key(field: &str, k: &str) -> Result {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        dns_subdomain(field, p)?;
    }
    if !is_label_value(name) || name.is_empty() {
        return Err(InvalidField::new(
            field,
            format!("{} is not a valid label key", quoted(k)),
        ));
    }
    Ok(())
}

fn label_value(field: &str, v: &str) -> Result {
    if !is_label_value(v) {
        return Err(InvalidField::new(
            field,
            format!(
                "{} is not a valid label value (at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric)",
                quoted(v)
            ),
        ));
    }
    Ok(())
}

/// A free-form value that may reach a PVC annotation, a label, an Event or a log line: at
/// most [`MAX_VALUE_LEN`] characters, and no control, format, line- or paragraph-separator
/// characters (Unicode categories Cc, Cf, Zl, Zp: newlines, bidi overrides such as U+202E,
/// zero-width characters such as U+200B).
pub fn printable(field: &str, v: &str, required: bool) -> Result {
    if required && v.is_empty() {
        return Err(InvalidField::new(field, "required, must not be empty"));
    }
    let count = v.chars().count();
    if count > MAX_VALUE_LEN {
        return Err(InvalidField::new(
            field,
            format!("at most {MAX_VALUE_LEN} characters, got {count}"),
        ));
    }
    if let Some((at, c)) = v.char_indices().find(|(_, c)| is_invisible(*c)) {
        return Err(InvalidField::new(
            field,
            format!(
                "must be printable: U+{:04X} at byte {at} is a control, format or separator character",
                u32::from(c)
            ),
        ));
    }
    Ok(())
}

pub use crate::text::{is_invisible, quoted};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RetainPolicy;

    fn key() -> SourceKey {
        SourceKey::new("apps", "db")
    }

    fn restic_spec() -> SpecInput {
        SpecInput::new(
            "data",
            MoverInput::restic(CopyMethod::Snapshot, "restic-config"),
        )
    }

    /// The one mover's input (every spec here has one, unless a case removes it).
    fn mover(s: &mut SpecInput) -> &mut MoverInput {
        &mut s.movers[0]
    }

    fn restic_of(s: &mut SpecInput) -> &mut ResticSpec {
        match &mut mover(s).kind {
            MoverKind::Restic(r) => r,
            other => panic!("not restic: {other:?}"),
        }
    }

    fn refused(spec: SpecInput) -> InvalidField {
        admit(&key(), spec).unwrap_err()
    }

    fn admitted(spec: SpecInput) -> Admitted {
        admit(&key(), spec).unwrap().1
    }

    #[test]
    fn a_minimal_restic_source_is_admitted_with_volsync_defaults() {
        let a = admitted(restic_spec());
        assert!(matches!(a.trigger, SyncTrigger::Continuous));
        assert_eq!(a.mover, Mover::Restic);
        assert_eq!(a.copy_method, CopyMethod::Snapshot);
        assert_eq!(a.wait_timeout, Duration::minutes(10));
        assert_eq!(a.on_timeout, TimeoutPolicy::KeepWaiting);
        assert_eq!(a.prune_interval, Some(Duration::days(7)));
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        let with = |f: &dyn Fn(&mut SpecInput)| {
            let mut s = restic_spec();
            f(&mut s);
            refused(s).field
        };
        let trig = |schedule: Option<&str>, manual: Option<&str>| TriggerInput {
            schedule: schedule.map(Into::into),
            manual: manual.map(Into::into),
        };
        type Mutation<'a> = Box<dyn Fn(&mut SpecInput) + 'a>;
        let cases: Vec<(&str, Mutation<'_>)> = vec![
            (
                "spec.restic.customCA.secretName",
                Box::new(|s| {
                    restic_of(s).custom_ca = Some(CustomCa {
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
            ("spec", Box::new(|s| s.movers.clear())),
            (
                "spec",
                Box::new(|s| {
                    s.movers.push(MoverInput {
                        copy_method: 0,
                        ..MoverInput::new(
                            CopyMethod::Direct,
                            MoverKind::Rclone(RcloneSpec::default()),
                        )
                    })
                }),
            ),
            (
                "spec.restic.repository",
                Box::new(|s| restic_of(s).repository.clear()),
            ),
            (
                "spec.restic.copyMethod",
                Box::new(|s| mover(s).copy_method = 0),
            ),
            (
                "spec.restic.copyMethod",
                Box::new(|s| mover(s).copy_method = 42),
            ),
            (
                "spec.restic.capacity",
                Box::new(|s| mover(s).volume.capacity = Some("lots".into())),
            ),
            (
                "spec.restic.accessModes",
                Box::new(|s| mover(s).volume.access_modes = vec!["ReadWriteSometimes".into()]),
            ),
            (
                "spec.restic.pruneIntervalDays",
                Box::new(|s| restic_of(s).prune_interval_days = Some(0)),
            ),
            (
                "spec.restic.retain.daily",
                Box::new(|s| {
                    restic_of(s).retain = Some(RetainPolicy {
                        daily: Some(-1),
                        ..Default::default()
                    })
                }),
            ),
            (
                "spec.restic.retain.within",
                Box::new(|s| {
                    restic_of(s).retain = Some(RetainPolicy {
                        within: Some("forever".into()),
                        ..Default::default()
                    })
                }),
            ),
            (
                "spec.restic.moverPodLabels[app]",
                Box::new(|s| {
                    mover(s)
                        .volume
                        .mover_pod_labels
                        .insert("app".into(), "-bad-".into());
                }),
            ),
            (
                "spec.jitter",
                Box::new(|s| {
                    s.jitter = Some(RawDuration {
                        seconds: -5,
                        nanos: 0,
                    })
                }),
            ),
            (
                "spec.copyTrigger.waitTimeout",
                Box::new(|s| {
                    s.copy_trigger = Some(CopyTriggerInput {
                        wait_timeout: Some(RawDuration {
                            seconds: 0,
                            nanos: 0,
                        }),
                        on_timeout: 0,
                        holders: Vec::new(),
                        allowed_service_accounts: Vec::new(),
                    })
                }),
            ),
            (
                "spec.copyTrigger.onTimeout",
                Box::new(|s| {
                    s.copy_trigger = Some(CopyTriggerInput {
                        wait_timeout: None,
                        on_timeout: 9,
                        holders: Vec::new(),
                        allowed_service_accounts: Vec::new(),
                    })
                }),
            ),
            (
                "spec.copyTrigger.holders[1]",
                Box::new(|s| {
                    s.copy_trigger = Some(CopyTriggerInput {
                        holders: vec!["app".into(), "App".into()],
                        ..Default::default()
                    })
                }),
            ),
            (
                "spec.copyTrigger.holders[2]",
                Box::new(|s| {
                    s.copy_trigger = Some(CopyTriggerInput {
                        holders: vec!["app".into(), "db".into(), "app".into()],
                        ..Default::default()
                    })
                }),
            ),
            (
                "spec.copyTrigger.holders",
                Box::new(|s| {
                    s.copy_trigger = Some(CopyTriggerInput {
                        holders: (0..17).map(|i| format!("app-{i}")).collect(),
                        ..Default::default()
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
        s.movers = vec![MoverInput::new(
            CopyMethod::Clone,
            MoverKind::Rclone(RcloneSpec {
                rclone_config: "rclone-secret".into(),
                rclone_config_section: "s3".into(),
                ..Default::default()
            }),
        )];
        assert_eq!(refused(s.clone()).field, "spec.rclone.rcloneDestPath");
        let MoverKind::Rclone(r) = &mut mover(&mut s).kind else {
            unreachable!("set above")
        };
        r.rclone_dest_path = "bucket/path".into();
        assert_eq!(admitted(s).copy_method, CopyMethod::Clone);
    }

    #[test]
    fn rsync_movers_need_an_address_and_a_valid_port() {
        fn rsync_tls(s: &mut SpecInput) -> &mut RsyncTlsSpec {
            match &mut mover(s).kind {
                MoverKind::RsyncTls(r) => r,
                other => panic!("not rsyncTLS: {other:?}"),
            }
        }
        let mut s = restic_spec();
        s.movers = vec![MoverInput::new(
            CopyMethod::None,
            MoverKind::RsyncTls(RsyncTlsSpec {
                key_secret: "tls-key".into(),
                ..Default::default()
            }),
        )];
        assert_eq!(refused(s.clone()).field, "spec.rsyncTLS.address");
        rsync_tls(&mut s).address = "10.0.0.7".into();
        rsync_tls(&mut s).port = Some(70000);
        assert_eq!(refused(s.clone()).field, "spec.rsyncTLS.port");
        rsync_tls(&mut s).port = None;
        let a = admitted(s);
        assert_eq!(a.copy_method, CopyMethod::Direct, "None is Direct");
        assert_eq!(a.mover, Mover::RsyncTls);
    }

    #[test]
    fn names_that_are_not_kubernetes_names_are_refused() {
        let bad = SourceKey::new("Apps", "db");
        assert_eq!(admit(&bad, restic_spec()).unwrap_err().field, "namespace");
        let bad = SourceKey::new("apps", "db_1");
        assert_eq!(admit(&bad, restic_spec()).unwrap_err().field, "name");
        let long = SourceKey::new(&"a".repeat(64), "db");
        assert_eq!(admit(&long, restic_spec()).unwrap_err().field, "namespace");
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
