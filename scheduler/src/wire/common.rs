//! What every service shares: times, durations, `google.protobuf.Struct`, authors, source
//! references, and the spec in its three readings (a request's [`spec_input`], the domain's
//! [`spec_to_wire`], a stored record's [`stored_spec`]).

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use prost_types::{Struct, Timestamp, Value, value::Kind};
use snapgate_proto::{
    time::{proto_time, timestamp},
    v1,
};
use snapgate_scheduler_core::{
    SourceKey,
    model::{
        Author, CopyMethod, CopyTriggerInput, CopyTriggerOptions, CustomCa, JsonObject, MoverInput,
        MoverKind, MoverSpec, MoverVolume, RawDuration, RcloneSpec, ResticSpec, RetainPolicy,
        RsyncSpec, RsyncTlsSpec, SourceSpec, SpecInput, TimeoutPolicy, TriggerInput, TriggerSpec,
        VolumeOptions,
    },
    validate::InvalidField,
};

/// How deeply a free-form object may nest (each object or list inside it is one level more;
/// the object itself is level 1). The wire is hostile: past this, conversion stops.
pub const MAX_JSON_DEPTH: usize = 64;

/// 2^53: every integer up to there is exact in a double.
const EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0;

/// Why a `google.protobuf.Struct` has no JSON reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Objects and lists nest deeper than [`MAX_JSON_DEPTH`].
    #[error("nested deeper than {MAX_JSON_DEPTH} levels")]
    TooDeep,
    /// A number is NaN or infinite, which JSON cannot carry.
    #[error("holds a number JSON cannot carry (NaN or infinite)")]
    NotFinite,
}

// ---------------------------------------------------------------------------------------------
// Times and durations

/// A time as a protobuf timestamp (a leap second becomes the last nanosecond before it).
pub fn time_to_wire(t: DateTime<Utc>) -> Timestamp {
    timestamp(t)
}

/// An optional time as an optional protobuf timestamp.
pub fn opt_time_to_wire(t: Option<DateTime<Utc>>) -> Option<Timestamp> {
    t.map(timestamp)
}

/// The time a wire timestamp stands for: `None` when unset, or when it is not a time a protobuf
/// timestamp may carry (seconds outside years 1..=9999, nanos outside `0..1e9`).
pub fn time_from_wire(t: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(proto_time)
}

/// A chrono duration as a protobuf one (nanos of the sign of seconds, as protobuf requires).
pub fn duration_to_wire(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.num_seconds(),
        nanos: d.subsec_nanos(),
    }
}

/// A protobuf duration as chrono's: `None` when it is not a valid protobuf duration (nanos
/// beyond ±999,999,999, or of the other sign than non-zero seconds) or beyond chrono's range
/// (about ±2^63 milliseconds; the wire allows any i64 of seconds).
pub fn duration_from_wire(d: &prost_types::Duration) -> Option<Duration> {
    let nanos_ok = d.nanos.unsigned_abs() < 1_000_000_000
        && !(d.seconds > 0 && d.nanos < 0)
        && !(d.seconds < 0 && d.nanos > 0);
    if !nanos_ok {
        return None;
    }
    Duration::try_seconds(d.seconds)?.checked_add(&Duration::nanoseconds(d.nanos.into()))
}

/// A protobuf duration as a request carries it, unchecked.
pub fn raw_duration(d: &prost_types::Duration) -> RawDuration {
    RawDuration {
        seconds: d.seconds,
        nanos: d.nanos,
    }
}

/// An unchecked duration back on the wire, as it came.
pub fn raw_duration_to_wire(d: RawDuration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.seconds,
        nanos: d.nanos,
    }
}

// ---------------------------------------------------------------------------------------------
// google.protobuf.Struct

/// A `Struct` as the JSON object it carries. Protobuf numbers are doubles, but Kubernetes'
/// integer fields (`runAsUser`, `weight`) only read JSON integers, so an integral number within
/// ±2^53 becomes a JSON integer (exact both ways); other finite numbers stay doubles. A value
/// with no kind is `null`. Refused: nesting deeper than [`MAX_JSON_DEPTH`], a NaN or infinite
/// number.
pub fn struct_to_json(s: &Struct) -> Result<JsonObject, JsonError> {
    object_from_wire(s, 1)
}

/// A JSON object as a `Struct` (numbers as doubles: integers beyond ±2^53 lose precision, as
/// they would in any protobuf `Value`).
pub fn json_to_struct(o: &JsonObject) -> Struct {
    snapgate_proto::json::json_to_struct(o)
}

fn object_from_wire(s: &Struct, depth: usize) -> Result<JsonObject, JsonError> {
    if depth > MAX_JSON_DEPTH {
        return Err(JsonError::TooDeep);
    }
    s.fields
        .iter()
        .map(|(k, v)| Ok((k.clone(), value_from_wire(v, depth)?)))
        .collect()
}

/// `v`, found inside a container at `depth`.
fn value_from_wire(v: &Value, depth: usize) -> Result<serde_json::Value, JsonError> {
    use serde_json::Value as J;
    Ok(match &v.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::BoolValue(b)) => J::Bool(*b),
        Some(Kind::StringValue(s)) => J::String(s.clone()),
        Some(Kind::NumberValue(n)) => number_from_wire(*n)?,
        Some(Kind::StructValue(s)) => J::Object(object_from_wire(s, depth.saturating_add(1))?),
        Some(Kind::ListValue(l)) => {
            let depth = depth.saturating_add(1);
            if depth > MAX_JSON_DEPTH {
                return Err(JsonError::TooDeep);
            }
            J::Array(
                l.values
                    .iter()
                    .map(|v| value_from_wire(v, depth))
                    .collect::<Result<_, _>>()?,
            )
        }
    })
}

fn number_from_wire(n: f64) -> Result<serde_json::Value, JsonError> {
    if !n.is_finite() {
        return Err(JsonError::NotFinite);
    }
    // -0.0 stays a double, so that it comes back as itself.
    if n.fract() == 0.0 && n.abs() <= EXACT_INTEGERS && !(n == 0.0 && n.is_sign_negative()) {
        // Exact: an integral double within ±2^53 is an i64 of the same value (no truncation,
        // no saturation).
        #[allow(clippy::cast_possible_truncation)]
        let i = n as i64;
        return Ok(serde_json::Value::from(i));
    }
    serde_json::Number::from_f64(n)
        .map(serde_json::Value::Number)
        .ok_or(JsonError::NotFinite)
}

// ---------------------------------------------------------------------------------------------
// Authors, references, enums

/// An author on the wire.
pub fn author_to_wire(a: &Author) -> v1::Author {
    v1::Author {
        user: a.user.clone(),
        groups: a.groups.clone(),
    }
}

/// An author from the wire.
pub fn author_from_wire(a: &v1::Author) -> Author {
    Author {
        user: a.user.clone(),
        groups: a.groups.clone(),
    }
}

/// A source key as a wire reference.
pub fn source_ref(key: &SourceKey) -> v1::SourceRef {
    v1::SourceRef {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    }
}

/// A wire reference as a source key (unchecked: names are admission's business).
pub fn source_key(r: &v1::SourceRef) -> SourceKey {
    SourceKey::new(&r.namespace, &r.name)
}

/// A copy method on the wire.
pub fn copy_method_to_wire(m: CopyMethod) -> v1::CopyMethod {
    match m {
        CopyMethod::Direct => v1::CopyMethod::Direct,
        CopyMethod::None => v1::CopyMethod::None,
        CopyMethod::Clone => v1::CopyMethod::Clone,
        CopyMethod::Snapshot => v1::CopyMethod::Snapshot,
    }
}

/// A wire copy method's number as the domain's: `None` when unset (0) or unknown.
pub fn copy_method_from_wire(n: i32) -> Option<CopyMethod> {
    match v1::CopyMethod::try_from(n).ok()? {
        v1::CopyMethod::Unspecified => None,
        v1::CopyMethod::Direct => Some(CopyMethod::Direct),
        v1::CopyMethod::None => Some(CopyMethod::None),
        v1::CopyMethod::Clone => Some(CopyMethod::Clone),
        v1::CopyMethod::Snapshot => Some(CopyMethod::Snapshot),
    }
}

/// A timeout policy on the wire.
pub fn timeout_policy_to_wire(p: TimeoutPolicy) -> v1::TimeoutPolicy {
    match p {
        TimeoutPolicy::KeepWaiting => v1::TimeoutPolicy::KeepWaiting,
        TimeoutPolicy::Skip => v1::TimeoutPolicy::Skip,
    }
}

/// A wire timeout policy's number as the domain's: `None` when unknown.
pub fn timeout_policy_from_wire(n: i32) -> Option<TimeoutPolicy> {
    match v1::TimeoutPolicy::try_from(n).ok()? {
        v1::TimeoutPolicy::KeepWaiting => Some(TimeoutPolicy::KeepWaiting),
        v1::TimeoutPolicy::Skip => Some(TimeoutPolicy::Skip),
    }
}

/// "`field`: unset" for 0, "`field`: unknown value N" otherwise: a stored enum that does not
/// decode.
pub(crate) fn bad_enum(field: &str, n: i32) -> String {
    if n == 0 {
        format!("{field}: unset")
    } else {
        format!("{field}: unknown value {n}")
    }
}

/// A stored duration that chrono cannot hold, or that is no valid protobuf duration.
fn bad_duration(field: &str, d: &prost_types::Duration) -> String {
    format!(
        "{field}: not a duration this version can hold (seconds {}, nanos {})",
        d.seconds, d.nanos
    )
}

// ---------------------------------------------------------------------------------------------
// The spec

/// The volume options every wire mover repeats, borrowed from one of them.
struct WireVolume<'a> {
    /// `spec.restic`, ...
    prefix: &'static str,
    copy_method: i32,
    capacity: Option<&'a String>,
    storage_class_name: Option<&'a String>,
    access_modes: &'a [String],
    volume_snapshot_class_name: Option<&'a String>,
    mover_security_context: Option<&'a Struct>,
    mover_service_account: Option<&'a String>,
    mover_resources: Option<&'a Struct>,
    mover_affinity: Option<&'a Struct>,
    mover_pod_labels: &'a HashMap<String, String>,
    mover_volumes: &'a [v1::MoverVolume],
}

macro_rules! wire_volume {
    ($prefix:literal, $m:expr) => {
        WireVolume {
            prefix: $prefix,
            copy_method: $m.copy_method,
            capacity: $m.capacity.as_ref(),
            storage_class_name: $m.storage_class_name.as_ref(),
            access_modes: &$m.access_modes,
            volume_snapshot_class_name: $m.volume_snapshot_class_name.as_ref(),
            mover_security_context: $m.mover_security_context.as_ref(),
            mover_service_account: $m.mover_service_account.as_ref(),
            mover_resources: $m.mover_resources.as_ref(),
            mover_affinity: $m.mover_affinity.as_ref(),
            mover_pod_labels: &$m.mover_pod_labels,
            mover_volumes: &$m.mover_volumes,
        }
    };
}

/// A wire mover message from the domain's volume options and the mover's own fields.
macro_rules! wire_mover {
    ($ty:ident, $volume:expr, { $($field:ident: $value:expr),* $(,)? }) => {{
        let v: &VolumeOptions = $volume;
        v1::$ty {
            copy_method: copy_method_to_wire(v.copy_method).into(),
            capacity: v.capacity.clone(),
            storage_class_name: v.storage_class_name.clone(),
            access_modes: v.access_modes.clone(),
            volume_snapshot_class_name: v.volume_snapshot_class_name.clone(),
            mover_security_context: v.mover_security_context.as_ref().map(json_to_struct),
            mover_service_account: v.mover_service_account.clone(),
            mover_resources: v.mover_resources.as_ref().map(json_to_struct),
            mover_affinity: v.mover_affinity.as_ref().map(json_to_struct),
            mover_pod_labels: v
                .mover_pod_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            mover_volumes: v
                .mover_volumes
                .iter()
                .map(|m| v1::MoverVolume {
                    mount_path: m.mount_path.clone(),
                    volume_source: m.volume_source.as_ref().map(json_to_struct),
                })
                .collect(),
            $($field: $value,)*
        }
    }};
}

/// A free-form object of a mover, converted, or the encoding error naming its field.
fn object(field: String, s: Option<&Struct>) -> Result<Option<JsonObject>, InvalidField> {
    s.map(|s| struct_to_json(s).map_err(|e| InvalidField::new(field, e.to_string())))
        .transpose()
}

/// The domain's volume options of a wire mover; their `copy_method` is the wire's when known,
/// else `Direct` (callers that care read the raw number).
fn volume_from_wire(w: WireVolume<'_>) -> Result<VolumeOptions, InvalidField> {
    let p = w.prefix;
    Ok(VolumeOptions {
        copy_method: copy_method_from_wire(w.copy_method).unwrap_or(CopyMethod::Direct),
        capacity: w.capacity.cloned(),
        storage_class_name: w.storage_class_name.cloned(),
        access_modes: w.access_modes.to_vec(),
        volume_snapshot_class_name: w.volume_snapshot_class_name.cloned(),
        mover_security_context: object(
            format!("{p}.moverSecurityContext"),
            w.mover_security_context,
        )?,
        mover_service_account: w.mover_service_account.cloned(),
        mover_resources: object(format!("{p}.moverResources"), w.mover_resources)?,
        mover_affinity: object(format!("{p}.moverAffinity"), w.mover_affinity)?,
        mover_pod_labels: w
            .mover_pod_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        mover_volumes: w
            .mover_volumes
            .iter()
            .enumerate()
            .map(|(i, m)| {
                Ok(MoverVolume {
                    mount_path: m.mount_path.clone(),
                    volume_source: object(
                        format!("{p}.moverVolumes[{i}].volumeSource"),
                        m.volume_source.as_ref(),
                    )?,
                })
            })
            .collect::<Result<_, InvalidField>>()?,
    })
}

fn custom_ca_from_wire(c: &v1::CustomCa) -> CustomCa {
    CustomCa {
        secret_name: c.secret_name.clone(),
        config_map_name: c.config_map_name.clone(),
        key: c.key.clone(),
    }
}

fn custom_ca_to_wire(c: &CustomCa) -> v1::CustomCa {
    v1::CustomCa {
        secret_name: c.secret_name.clone(),
        config_map_name: c.config_map_name.clone(),
        key: c.key.clone(),
    }
}

/// `retain` from the wire, without the deprecated `last_int32` (see [`legacy_last`]).
fn retain_from_wire(r: &v1::ResticRetainPolicy) -> RetainPolicy {
    RetainPolicy {
        hourly: r.hourly,
        daily: r.daily,
        weekly: r.weekly,
        monthly: r.monthly,
        yearly: r.yearly,
        within: r.within.clone(),
        last: r.last.clone(),
    }
}

/// snapgate 0.1's integer `retain.last` (field 7), as the string it stands for.
#[allow(deprecated)]
fn legacy_last(r: &v1::ResticRetainPolicy) -> Option<String> {
    r.last_int32.map(|n| n.to_string())
}

#[allow(deprecated)]
fn retain_to_wire(r: &RetainPolicy) -> v1::ResticRetainPolicy {
    v1::ResticRetainPolicy {
        hourly: r.hourly,
        daily: r.daily,
        weekly: r.weekly,
        monthly: r.monthly,
        yearly: r.yearly,
        within: r.within.clone(),
        last_int32: None,
        last: r.last.clone(),
    }
}

/// Every mover field set on the wire, in the order restic, rclone, rsync, rsyncTLS, with its
/// raw copy method.
fn movers_from_wire(spec: &v1::SourceSpec) -> Result<Vec<MoverInput>, InvalidField> {
    let mut movers = Vec::new();
    if let Some(r) = &spec.restic {
        movers.push(MoverInput {
            copy_method: r.copy_method,
            volume: volume_from_wire(wire_volume!("spec.restic", r))?,
            kind: MoverKind::Restic(ResticSpec {
                repository: r.repository.clone(),
                retain: r.retain.as_ref().map(retain_from_wire),
                prune_interval_days: r.prune_interval_days,
                cache_capacity: r.cache_capacity.clone(),
                cache_storage_class_name: r.cache_storage_class_name.clone(),
                cache_access_modes: r.cache_access_modes.clone(),
                custom_ca: r.custom_ca.as_ref().map(custom_ca_from_wire),
                unlock: r.unlock.clone(),
                keep_cache: r.keep_cache,
            }),
        });
    }
    if let Some(r) = &spec.rclone {
        movers.push(MoverInput {
            copy_method: r.copy_method,
            volume: volume_from_wire(wire_volume!("spec.rclone", r))?,
            kind: MoverKind::Rclone(RcloneSpec {
                rclone_config: r.rclone_config.clone(),
                rclone_config_section: r.rclone_config_section.clone(),
                rclone_dest_path: r.rclone_dest_path.clone(),
                custom_ca: r.custom_ca.as_ref().map(custom_ca_from_wire),
            }),
        });
    }
    if let Some(r) = &spec.rsync {
        movers.push(MoverInput {
            copy_method: r.copy_method,
            volume: volume_from_wire(wire_volume!("spec.rsync", r))?,
            kind: MoverKind::Rsync(RsyncSpec {
                ssh_keys: r.ssh_keys.clone(),
                address: r.address.clone(),
                port: r.port,
                ssh_user: r.ssh_user.clone(),
                path: r.path.clone(),
            }),
        });
    }
    if let Some(r) = &spec.rsync_tls {
        movers.push(MoverInput {
            copy_method: r.copy_method,
            volume: volume_from_wire(wire_volume!("spec.rsyncTLS", r))?,
            kind: MoverKind::RsyncTls(RsyncTlsSpec {
                key_secret: r.key_secret.clone(),
                address: r.address.clone(),
                port: r.port,
            }),
        });
    }
    Ok(movers)
}

/// A request's spec, carried faithfully for admission: every mover field set, in the order
/// restic, rclone, rsync, rsyncTLS, with its raw copy method; the trigger as sent (`Some` iff
/// the wire's is set); durations and enum numbers unchecked; `encoded_len` the spec's size on
/// the wire. The deprecated `restic.retain.last_int32` is not read (admission never honoured it
/// in a request).
///
/// The one refusal is about the encoding: a free-form object (`moverResources`, a mover
/// volume's source, ...) that has no JSON reading ([`JsonError`]), named by its field.
pub fn spec_input(spec: &v1::SourceSpec) -> Result<SpecInput, InvalidField> {
    let v1::SourceSpec {
        source_pvc,
        trigger,
        paused,
        restic: _,
        rclone: _,
        rsync: _,
        rsync_tls: _,
        time_zone,
        jitter,
        copy_trigger,
        skip_initial_run,
    } = spec;
    Ok(SpecInput {
        encoded_len: prost::Message::encoded_len(spec),
        source_pvc: source_pvc.clone(),
        trigger: trigger.as_ref().map(|t| TriggerInput {
            schedule: t.schedule.clone(),
            manual: t.manual.clone(),
        }),
        paused: *paused,
        movers: movers_from_wire(spec)?,
        time_zone: time_zone.clone(),
        jitter: jitter.as_ref().map(raw_duration),
        copy_trigger: copy_trigger.as_ref().map(|c| CopyTriggerInput {
            wait_timeout: c.wait_timeout.as_ref().map(raw_duration),
            on_timeout: c.on_timeout,
            holders: c.holders.clone(),
            allowed_service_accounts: c.allowed_service_accounts.clone(),
        }),
        skip_initial_run: *skip_initial_run,
    })
}

/// An admitted spec on the wire, with everything it holds (`CopyMethod::None` stays `None`, a
/// continuous trigger is an unset one).
pub fn spec_to_wire(spec: &SourceSpec) -> v1::SourceSpec {
    let SourceSpec {
        source_pvc,
        trigger,
        paused,
        mover,
        time_zone,
        jitter,
        copy_trigger,
        skip_initial_run,
    } = spec;
    let (mut restic, mut rclone, mut rsync, mut rsync_tls) = (None, None, None, None);
    let v = &mover.volume;
    match &mover.kind {
        MoverKind::Restic(r) => {
            restic = Some(wire_mover!(ReplicationSourceResticSpec, v, {
                repository: r.repository.clone(),
                retain: r.retain.as_ref().map(retain_to_wire),
                prune_interval_days: r.prune_interval_days,
                cache_capacity: r.cache_capacity.clone(),
                cache_storage_class_name: r.cache_storage_class_name.clone(),
                cache_access_modes: r.cache_access_modes.clone(),
                custom_ca: r.custom_ca.as_ref().map(custom_ca_to_wire),
                unlock: r.unlock.clone(),
                keep_cache: r.keep_cache,
            }));
        }
        MoverKind::Rclone(r) => {
            rclone = Some(wire_mover!(ReplicationSourceRcloneSpec, v, {
                rclone_config: r.rclone_config.clone(),
                rclone_config_section: r.rclone_config_section.clone(),
                rclone_dest_path: r.rclone_dest_path.clone(),
                custom_ca: r.custom_ca.as_ref().map(custom_ca_to_wire),
            }));
        }
        MoverKind::Rsync(r) => {
            rsync = Some(wire_mover!(ReplicationSourceRsyncSpec, v, {
                ssh_keys: r.ssh_keys.clone(),
                address: r.address.clone(),
                port: r.port,
                ssh_user: r.ssh_user.clone(),
                path: r.path.clone(),
            }));
        }
        MoverKind::RsyncTls(r) => {
            rsync_tls = Some(wire_mover!(ReplicationSourceRsyncTlsSpec, v, {
                key_secret: r.key_secret.clone(),
                address: r.address.clone(),
                port: r.port,
            }));
        }
    }
    v1::SourceSpec {
        source_pvc: source_pvc.clone(),
        trigger: match trigger {
            TriggerSpec::Continuous => None,
            TriggerSpec::Schedule(s) => Some(v1::ReplicationSourceTrigger {
                schedule: Some(s.clone()),
                manual: None,
            }),
            TriggerSpec::Manual(m) => Some(v1::ReplicationSourceTrigger {
                schedule: None,
                manual: Some(m.clone()),
            }),
        },
        paused: *paused,
        restic,
        rclone,
        rsync,
        rsync_tls,
        time_zone: time_zone.clone(),
        jitter: jitter.map(duration_to_wire),
        copy_trigger: copy_trigger.as_ref().map(|c| v1::CopyTriggerOptions {
            wait_timeout: c.wait_timeout.map(duration_to_wire),
            on_timeout: timeout_policy_to_wire(c.on_timeout).into(),
            holders: c.holders.clone(),
            allowed_service_accounts: c.allowed_service_accounts.clone(),
        }),
        skip_initial_run: *skip_initial_run,
    }
}

/// A stored spec, decoded structurally: what a [`SourceSpec`] cannot hold is an error saying
/// what is wrong (`spec.restic.copyMethod: unknown value 9`): not exactly one mover, a copy
/// method unset or unknown, a trigger with both a schedule and a manual tag, an unknown
/// timeout policy, a duration chrono cannot hold, a free-form object with no JSON reading.
/// Admission's rules (names, quantities, ranges) are not applied here: a stored source breaking
/// a rule tightened since still loads. snapgate 0.1's integer `retain.last` is read as `last`
/// when `last` is unset.
pub fn stored_spec(spec: &v1::SourceSpec) -> Result<SourceSpec, String> {
    let v1::SourceSpec {
        source_pvc,
        trigger,
        paused,
        restic,
        rclone: _,
        rsync: _,
        rsync_tls: _,
        time_zone,
        jitter,
        copy_trigger,
        skip_initial_run,
    } = spec;
    let mut movers = movers_from_wire(spec).map_err(|e| e.to_string())?;
    let found = movers.len();
    let (Some(mover), true) = (movers.pop(), found == 1) else {
        return Err(format!(
            "spec: exactly one mover of restic, rclone, rsync, rsyncTLS is required, found {found}"
        ));
    };
    let MoverInput {
        copy_method,
        volume,
        mut kind,
    } = mover;
    let field = match &kind {
        MoverKind::Restic(_) => "spec.restic.copyMethod",
        MoverKind::Rclone(_) => "spec.rclone.copyMethod",
        MoverKind::Rsync(_) => "spec.rsync.copyMethod",
        MoverKind::RsyncTls(_) => "spec.rsyncTLS.copyMethod",
    };
    let copy_method =
        copy_method_from_wire(copy_method).ok_or_else(|| bad_enum(field, copy_method))?;
    if let (MoverKind::Restic(r), Some(wire)) = (&mut kind, restic.as_ref())
        && let (Some(retain), Some(wire_retain)) = (r.retain.as_mut(), wire.retain.as_ref())
        && retain.last.is_none()
    {
        retain.last = legacy_last(wire_retain);
    }
    let trigger = match trigger {
        None => TriggerSpec::Continuous,
        Some(t) => match (&t.schedule, &t.manual) {
            (Some(_), Some(_)) => {
                return Err("spec.trigger: both schedule and manual are set".to_owned());
            }
            (Some(s), None) => TriggerSpec::Schedule(s.clone()),
            (None, Some(m)) => TriggerSpec::Manual(m.clone()),
            (None, None) => TriggerSpec::Continuous,
        },
    };
    let jitter = jitter
        .as_ref()
        .map(|d| duration_from_wire(d).ok_or_else(|| bad_duration("spec.jitter", d)))
        .transpose()?;
    let copy_trigger = copy_trigger
        .as_ref()
        .map(|c| {
            Ok::<_, String>(CopyTriggerOptions {
                wait_timeout: c
                    .wait_timeout
                    .as_ref()
                    .map(|d| {
                        duration_from_wire(d)
                            .ok_or_else(|| bad_duration("spec.copyTrigger.waitTimeout", d))
                    })
                    .transpose()?,
                on_timeout: timeout_policy_from_wire(c.on_timeout).ok_or_else(|| {
                    format!("spec.copyTrigger.onTimeout: unknown value {}", c.on_timeout)
                })?,
                holders: c.holders.clone(),
                allowed_service_accounts: c.allowed_service_accounts.clone(),
            })
        })
        .transpose()?;
    Ok(SourceSpec {
        source_pvc: source_pvc.clone(),
        trigger,
        paused: *paused,
        mover: MoverSpec {
            volume: VolumeOptions {
                copy_method,
                ..volume
            },
            kind,
        },
        time_zone: time_zone.clone(),
        jitter,
        copy_trigger,
        skip_initial_run: *skip_initial_run,
    })
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;
    use proptest::prelude::*;
    use snapgate_proto::time::{MAX_PROTO_SECONDS, MIN_PROTO_SECONDS};

    use super::*;
    use crate::wire::testing::{self, Breaking, at, full_movers, full_spec, object};

    fn value(kind: Kind) -> Value {
        Value { kind: Some(kind) }
    }

    /// A struct whose one field nests `levels - 1` more objects (or lists): `levels` deep.
    fn nested(levels: usize, lists: bool) -> Struct {
        let mut inner = Value {
            kind: Some(Kind::StringValue("bottom".into())),
        };
        for _ in 1..levels {
            inner = if lists {
                value(Kind::ListValue(prost_types::ListValue {
                    values: vec![inner],
                }))
            } else {
                value(Kind::StructValue(Struct {
                    fields: [("k".to_owned(), inner)].into(),
                }))
            };
        }
        Struct {
            fields: [("k".to_owned(), inner)].into(),
        }
    }

    fn restic_wire() -> v1::SourceSpec {
        spec_to_wire(&full_spec(full_movers().remove(0)))
    }

    #[test]
    fn every_mover_with_every_field_set_goes_to_the_wire_and_back_unchanged() {
        for mover in full_movers() {
            let spec = full_spec(mover);
            let wire = spec_to_wire(&spec);
            assert_eq!(stored_spec(&wire), Ok(spec.clone()));
            assert_eq!(spec_to_wire(&stored_spec(&wire).unwrap()), wire);
        }
    }

    #[test]
    fn the_wire_spec_holds_each_field_as_the_api_spells_it() {
        let wire = restic_wire();
        let trigger = wire.trigger.as_ref().unwrap();
        assert_eq!(trigger.schedule.as_deref(), Some("0 * * * *"));
        assert_eq!(trigger.manual, None);
        assert!(wire.paused && wire.skip_initial_run);
        assert_eq!(wire.source_pvc, "data");
        assert_eq!(wire.time_zone, "Europe/Berlin");
        assert_eq!(
            wire.jitter,
            Some(prost_types::Duration {
                seconds: 90,
                nanos: 5
            })
        );
        let ct = wire.copy_trigger.as_ref().unwrap();
        assert_eq!(ct.on_timeout, v1::TimeoutPolicy::Skip as i32);
        assert_eq!(ct.wait_timeout.as_ref().map(|d| d.seconds), Some(600));
        assert_eq!(ct.holders, ["app-a", "app-b"]);
        assert_eq!(ct.allowed_service_accounts, ["db-app"]);
        assert!(wire.rclone.is_none() && wire.rsync.is_none() && wire.rsync_tls.is_none());
        let r = wire.restic.as_ref().unwrap();
        assert_eq!(r.copy_method, v1::CopyMethod::Snapshot as i32);
        let retain = r.retain.as_ref().unwrap();
        assert_eq!(retain.last.as_deref(), Some("5"));
        #[allow(deprecated)]
        let last_int32 = retain.last_int32;
        assert_eq!(last_int32, None);
        assert!(r.keep_cache);
        assert_eq!(
            r.mover_pod_labels.get("team").map(String::as_str),
            Some("db")
        );
        let resources = r.mover_resources.as_ref().unwrap();
        let Some(Kind::StructValue(limits)) = &resources.fields["limits"].kind else {
            panic!("limits is not an object: {resources:?}")
        };
        assert_eq!(
            limits.fields["cpu"].kind,
            Some(Kind::NumberValue(0.25)),
            "numbers are doubles on the wire"
        );
        assert_eq!(r.mover_volumes.len(), 2);
        assert!(r.mover_volumes[0].volume_source.is_some());
        assert!(r.mover_volumes[1].volume_source.is_none());
    }

    #[test]
    fn copy_method_none_stays_none_on_the_wire() {
        let rsync = full_spec(full_movers().remove(2));
        let wire = spec_to_wire(&rsync);
        assert_eq!(
            wire.rsync.as_ref().map(|r| r.copy_method),
            Some(v1::CopyMethod::None as i32)
        );
        assert_eq!(
            stored_spec(&wire).unwrap().mover.volume.copy_method,
            CopyMethod::None
        );
    }

    #[test]
    fn triggers_map_both_ways_and_an_empty_wire_trigger_is_continuous() {
        for trigger in [
            TriggerSpec::Continuous,
            TriggerSpec::Schedule("@daily".into()),
            TriggerSpec::Manual("tag".into()),
        ] {
            let spec = SourceSpec {
                trigger: trigger.clone(),
                ..full_spec(full_movers().remove(1))
            };
            assert_eq!(stored_spec(&spec_to_wire(&spec)).unwrap().trigger, trigger);
        }
        let mut wire = restic_wire();
        wire.trigger = Some(v1::ReplicationSourceTrigger::default());
        assert_eq!(stored_spec(&wire).unwrap().trigger, TriggerSpec::Continuous);
        assert_eq!(
            spec_input(&wire).unwrap().trigger,
            Some(TriggerInput::default()),
            "a request's empty trigger is carried as set"
        );
    }

    #[test]
    fn a_request_spec_is_carried_as_sent_with_every_mover_in_order() {
        let mut wire = restic_wire();
        for (i, m) in full_movers().into_iter().enumerate().skip(1) {
            let w = spec_to_wire(&full_spec(m));
            match i {
                1 => wire.rclone = w.rclone,
                2 => wire.rsync = w.rsync,
                _ => wire.rsync_tls = w.rsync_tls,
            }
        }
        wire.rclone.as_mut().unwrap().copy_method = 9;
        wire.jitter = Some(prost_types::Duration {
            seconds: -5,
            nanos: 7,
        });
        wire.trigger = Some(v1::ReplicationSourceTrigger {
            schedule: Some("x".into()),
            manual: Some("y".into()),
        });
        wire.copy_trigger.as_mut().unwrap().on_timeout = 7;
        let input = spec_input(&wire).unwrap();
        assert_eq!(input.encoded_len, prost::Message::encoded_len(&wire));
        let methods: Vec<i32> = input.movers.iter().map(|m| m.copy_method).collect();
        assert_eq!(methods, [4, 9, 2, 1], "restic, rclone, rsync, rsyncTLS");
        let kinds: Vec<&str> = input
            .movers
            .iter()
            .map(|m| match m.kind {
                MoverKind::Restic(_) => "restic",
                MoverKind::Rclone(_) => "rclone",
                MoverKind::Rsync(_) => "rsync",
                MoverKind::RsyncTls(_) => "rsyncTLS",
            })
            .collect();
        assert_eq!(kinds, ["restic", "rclone", "rsync", "rsyncTLS"]);
        assert_eq!(
            input.movers[0],
            MoverInput {
                copy_method: 4,
                volume: full_movers().remove(0).volume,
                kind: testing::full_restic(),
            }
        );
        assert_eq!(
            input.jitter,
            Some(RawDuration {
                seconds: -5,
                nanos: 7
            })
        );
        assert_eq!(
            input.trigger,
            Some(TriggerInput {
                schedule: Some("x".into()),
                manual: Some("y".into()),
            })
        );
        let ct = input.copy_trigger.unwrap();
        assert_eq!(ct.on_timeout, 7);
        assert_eq!(
            ct.wait_timeout,
            Some(RawDuration {
                seconds: 600,
                nanos: 0
            })
        );
        assert_eq!(ct.holders, ["app-a", "app-b"]);
        assert_eq!(ct.allowed_service_accounts, ["db-app"]);
        assert_eq!(
            (
                input.source_pvc.as_str(),
                input.paused,
                input.time_zone.as_str(),
                input.skip_initial_run
            ),
            ("data", true, "Europe/Berlin", true)
        );
    }

    #[test]
    fn a_request_spec_with_no_trigger_no_mover_and_no_copy_trigger_is_carried_as_empty() {
        let input = spec_input(&v1::SourceSpec::default()).unwrap();
        assert_eq!(input, SpecInput::default());
    }

    #[test]
    fn objects_nested_up_to_the_limit_convert_and_deeper_ones_are_refused() {
        for lists in [false, true] {
            assert!(struct_to_json(&nested(MAX_JSON_DEPTH, lists)).is_ok());
            assert_eq!(
                struct_to_json(&nested(MAX_JSON_DEPTH + 1, lists)),
                Err(JsonError::TooDeep),
                "lists: {lists}"
            );
            assert_eq!(
                struct_to_json(&nested(1000, lists)),
                Err(JsonError::TooDeep)
            );
        }
    }

    #[test]
    fn a_request_with_a_too_deep_object_names_the_field_and_the_rule() {
        let mut wire = restic_wire();
        wire.restic.as_mut().unwrap().mover_resources = Some(nested(MAX_JSON_DEPTH + 1, false));
        assert_eq!(
            spec_input(&wire),
            Err(InvalidField::new(
                "spec.restic.moverResources",
                "nested deeper than 64 levels"
            ))
        );
        let mut wire = spec_to_wire(&full_spec(full_movers().remove(3)));
        wire.rsync_tls.as_mut().unwrap().mover_volumes[1].volume_source =
            Some(nested(MAX_JSON_DEPTH + 1, true));
        let err = spec_input(&wire).unwrap_err();
        assert_eq!(err.field, "spec.rsyncTLS.moverVolumes[1].volumeSource");
        assert_eq!(
            stored_spec(&wire),
            Err("spec.rsyncTLS.moverVolumes[1].volumeSource: nested deeper than 64 levels".into())
        );
    }

    #[test]
    fn numbers_that_json_cannot_carry_are_refused_not_a_panic() {
        for n in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let s = Struct {
                fields: [("n".to_owned(), value(Kind::NumberValue(n)))].into(),
            };
            assert_eq!(struct_to_json(&s), Err(JsonError::NotFinite));
            let mut wire = restic_wire();
            wire.restic.as_mut().unwrap().mover_affinity = Some(s);
            let err = spec_input(&wire).unwrap_err();
            assert_eq!(err.field, "spec.restic.moverAffinity");
            assert!(stored_spec(&wire).is_err());
        }
    }

    #[test]
    fn numbers_become_integers_when_exact_and_stay_doubles_otherwise() {
        let s = Struct {
            fields: [
                ("int", 1000.0),
                ("neg", -3.0),
                ("max", 9_007_199_254_740_992.0),
                ("beyond", 9_007_199_254_740_994.0),
                ("half", 1.5),
                ("huge", 1e300),
                ("zero", 0.0),
                ("negzero", -0.0),
            ]
            .into_iter()
            .map(|(k, n)| (k.to_owned(), value(Kind::NumberValue(n))))
            .collect(),
        };
        let json = struct_to_json(&s).unwrap();
        assert_eq!(json["int"], serde_json::json!(1000));
        assert!(json["int"].is_i64());
        assert_eq!(json["neg"], serde_json::json!(-3));
        assert_eq!(json["max"], serde_json::json!(9_007_199_254_740_992_i64));
        assert!(json["beyond"].is_f64());
        assert_eq!(json["half"], serde_json::json!(1.5));
        assert_eq!(json["huge"], serde_json::json!(1e300));
        assert!(json["zero"].is_i64());
        assert!(json["negzero"].is_f64());
        assert_eq!(json_to_struct(&json), s, "wire to domain to wire is exact");
    }

    #[test]
    fn null_bool_string_list_and_object_values_map_both_ways() {
        let json = object(serde_json::json!({
            "null": null, "bool": true, "string": "s",
            "list": [1, "a", null, false, [2.5]], "object": {"inner": {"x": "y"}},
        }));
        assert_eq!(struct_to_json(&json_to_struct(&json)), Ok(json));
        let kindless = Struct {
            fields: [("k".to_owned(), Value { kind: None })].into(),
        };
        assert_eq!(
            struct_to_json(&kindless).unwrap()["k"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn durations_convert_when_valid_and_in_range_and_are_none_otherwise() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(
            duration_from_wire(&d(90, 5)),
            Some(Duration::seconds(90) + Duration::nanoseconds(5))
        );
        assert_eq!(
            duration_from_wire(&d(0, -500_000_000)),
            Some(Duration::milliseconds(-500))
        );
        assert_eq!(
            duration_from_wire(&d(-2, -1)),
            Some(Duration::nanoseconds(-2_000_000_001))
        );
        for bad in [
            d(i64::MAX, 0),
            d(i64::MIN, 0),
            d(i64::MAX / 1000 + 1, 0),
            d(1, 1_000_000_000),
            d(0, i32::MIN),
            d(1, -1),
            d(-1, 1),
        ] {
            assert_eq!(duration_from_wire(&bad), None, "{bad:?}");
        }
        for chrono in [Duration::MAX, Duration::MIN, Duration::zero()] {
            assert_eq!(duration_from_wire(&duration_to_wire(chrono)), Some(chrono));
        }
        let raw = raw_duration(&d(i64::MIN, i32::MAX));
        assert_eq!(
            raw,
            RawDuration {
                seconds: i64::MIN,
                nanos: i32::MAX
            }
        );
        assert_eq!(raw_duration_to_wire(raw), d(i64::MIN, i32::MAX));
    }

    #[test]
    fn times_outside_what_a_timestamp_carries_are_none() {
        let t = |seconds, nanos| Timestamp { seconds, nanos };
        assert_eq!(time_from_wire(None), None);
        assert_eq!(
            time_from_wire(Some(&time_to_wire(at(0, 7)))),
            Some(at(0, 7))
        );
        for bad in [
            t(i64::MAX, 0),
            t(i64::MIN, 0),
            t(MAX_PROTO_SECONDS + 1, 0),
            t(MIN_PROTO_SECONDS - 1, 0),
            t(0, -1),
            t(0, 1_000_000_000),
        ] {
            assert_eq!(time_from_wire(Some(&bad)), None, "{bad:?}");
        }
        assert_eq!(opt_time_to_wire(None), None);
    }

    #[test]
    fn a_stored_spec_that_the_domain_cannot_hold_is_an_error_saying_what_is_wrong() {
        let base = restic_wire();
        let cases: Vec<Breaking<v1::SourceSpec>> = vec![
            (
                "spec.restic.copyMethod: unknown value 9",
                Box::new(|s| s.restic.as_mut().unwrap().copy_method = 9),
            ),
            (
                "spec.restic.copyMethod: unset",
                Box::new(|s| s.restic.as_mut().unwrap().copy_method = 0),
            ),
            (
                "spec: exactly one mover of restic, rclone, rsync, rsyncTLS is required, found 0",
                Box::new(|s| s.restic = None),
            ),
            (
                "spec: exactly one mover of restic, rclone, rsync, rsyncTLS is required, found 2",
                Box::new(|s| s.rsync_tls = Some(v1::ReplicationSourceRsyncTlsSpec::default())),
            ),
            (
                "spec.trigger: both schedule and manual are set",
                Box::new(|s| s.trigger.as_mut().unwrap().manual = Some("m".into())),
            ),
            (
                "spec.copyTrigger.onTimeout: unknown value 2",
                Box::new(|s| s.copy_trigger.as_mut().unwrap().on_timeout = 2),
            ),
            (
                "spec.jitter: not a duration this version can hold (seconds 9223372036854775807, nanos 0)",
                Box::new(|s| {
                    s.jitter = Some(prost_types::Duration {
                        seconds: i64::MAX,
                        nanos: 0,
                    })
                }),
            ),
            (
                "spec.copyTrigger.waitTimeout: not a duration this version can hold (seconds 1, nanos -1)",
                Box::new(|s| {
                    s.copy_trigger.as_mut().unwrap().wait_timeout = Some(prost_types::Duration {
                        seconds: 1,
                        nanos: -1,
                    })
                }),
            ),
        ];
        for (want, break_it) in cases {
            let mut wire = base.clone();
            break_it(&mut wire);
            assert_eq!(stored_spec(&wire), Err(want.to_owned()));
        }
    }

    #[test]
    fn admission_rules_are_not_applied_to_a_stored_spec() {
        let mut wire = restic_wire();
        wire.source_pvc = "Not A Name!".into();
        wire.time_zone = "Mars/Olympus".into();
        wire.jitter = Some(prost_types::Duration {
            seconds: 10 * 86_400,
            nanos: 0,
        });
        let r = wire.restic.as_mut().unwrap();
        r.capacity = Some("lots".into());
        r.access_modes = vec!["Sideways".into()];
        r.retain.as_mut().unwrap().last = Some("-1".into());
        let spec = stored_spec(&wire).unwrap();
        assert_eq!(spec.source_pvc, "Not A Name!");
        assert_eq!(spec.time_zone, "Mars/Olympus");
        assert_eq!(spec.jitter, Some(Duration::days(10)));
        assert_eq!(spec.mover.volume.capacity.as_deref(), Some("lots"));
        assert_eq!(
            spec.restic().and_then(|r| r.retain.as_ref()?.last.clone()),
            Some("-1".into())
        );
    }

    #[test]
    #[allow(deprecated)]
    fn snapgate_0_1_integer_retain_last_is_read_when_last_is_unset() {
        let mut wire = restic_wire();
        let retain = wire.restic.as_mut().unwrap().retain.as_mut().unwrap();
        retain.last = None;
        retain.last_int32 = Some(10);
        let last = |w: &v1::SourceSpec| {
            stored_spec(w)
                .unwrap()
                .restic()
                .and_then(|r| r.retain.as_ref()?.last.clone())
        };
        assert_eq!(last(&wire), Some("10".into()));
        wire.restic.as_mut().unwrap().retain.as_mut().unwrap().last = Some("3".into());
        assert_eq!(last(&wire), Some("3".into()), "the string wins");
        let input = spec_input(&wire).unwrap();
        let MoverKind::Restic(r) = &input.movers[0].kind else {
            panic!("not restic")
        };
        assert_eq!(r.retain.as_ref().unwrap().last.as_deref(), Some("3"));
    }

    #[test]
    fn enum_mappings_are_exhaustive_both_ways() {
        for m in [
            CopyMethod::Direct,
            CopyMethod::None,
            CopyMethod::Clone,
            CopyMethod::Snapshot,
        ] {
            assert_eq!(
                copy_method_from_wire(copy_method_to_wire(m).into()),
                Some(m)
            );
            assert_eq!(copy_method_to_wire(m).as_str_name(), m.as_str());
        }
        for n in -1..=10 {
            match copy_method_from_wire(n) {
                Some(m) => assert_eq!(i32::from(copy_method_to_wire(m)), n),
                None => assert!(!(1..=4).contains(&n), "{n}"),
            }
        }
        for p in [TimeoutPolicy::KeepWaiting, TimeoutPolicy::Skip] {
            assert_eq!(
                timeout_policy_from_wire(timeout_policy_to_wire(p).into()),
                Some(p)
            );
        }
        for n in -1..=10 {
            match timeout_policy_from_wire(n) {
                Some(p) => assert_eq!(i32::from(timeout_policy_to_wire(p)), n),
                None => assert!(!(0..=1).contains(&n), "{n}"),
            }
        }
    }

    #[test]
    fn authors_and_references_map_both_ways() {
        let a = testing::author();
        assert_eq!(author_from_wire(&author_to_wire(&a)), a);
        let key = SourceKey::new("apps", "db");
        assert_eq!(source_key(&source_ref(&key)), key);
    }

    proptest! {
        #[test]
        fn any_spec_goes_to_the_wire_and_back_unchanged(spec in testing::spec()) {
            let wire = spec_to_wire(&spec);
            prop_assert_eq!(stored_spec(&wire), Ok(spec.clone()));
            let input = spec_input(&wire).unwrap();
            prop_assert_eq!(input.encoded_len, prost::Message::encoded_len(&wire));
            prop_assert_eq!(
                input.movers,
                vec![MoverInput {
                    copy_method: copy_method_to_wire(spec.mover.volume.copy_method).into(),
                    volume: spec.mover.volume.clone(),
                    kind: spec.mover.kind.clone(),
                }]
            );
            prop_assert_eq!(input.jitter, spec.jitter.map(|d| raw_duration(&duration_to_wire(d))));
        }

        #[test]
        fn any_object_goes_to_the_wire_and_back_unchanged(o in testing::json_object()) {
            prop_assert_eq!(struct_to_json(&json_to_struct(&o)), Ok(o));
        }

        #[test]
        fn any_duration_goes_to_the_wire_and_back_unchanged(d in testing::duration()) {
            let wire = duration_to_wire(d);
            prop_assert!(
                !(wire.seconds > 0 && wire.nanos < 0 || wire.seconds < 0 && wire.nanos > 0),
                "nanos have the sign of seconds"
            );
            prop_assert_eq!(duration_from_wire(&wire), Some(d));
        }

        #[test]
        fn any_wire_duration_converts_or_is_none_without_a_panic(seconds: i64, nanos: i32) {
            let d = prost_types::Duration { seconds, nanos };
            if let Some(c) = duration_from_wire(&d) {
                prop_assert_eq!(duration_to_wire(c), d);
            }
        }

        #[test]
        fn any_time_goes_to_the_wire_and_back_unchanged(t in testing::time()) {
            prop_assert_eq!(time_from_wire(Some(&time_to_wire(t))), Some(t));
        }

        #[test]
        fn any_number_converts_or_is_refused_without_a_panic(n: f64) {
            let s = Struct { fields: [("n".to_owned(), value(Kind::NumberValue(n)))].into() };
            match struct_to_json(&s) {
                Ok(json) => prop_assert_eq!(json_to_struct(&json), s),
                Err(e) => {
                    prop_assert!(!n.is_finite());
                    prop_assert_eq!(e, JsonError::NotFinite);
                }
            }
        }
    }
}
