//! VolSync `ReplicationSource` documents (YAML or JSON, several per file) read into snapgate
//! sources, strictly.
//!
//! ```text
//!  text ─► documents ─► per document: apiVersion/kind checked ─► metadata ─► spec ─► SourceSpec
//!                                                                   every key either mapped,
//!                                                                   refused as unsupported, or
//!                                                                   refused as unknown (never dropped)
//! ```
//!
//! The keys are VolSync's (`sourcePVC`, `trigger.schedule`, `restic.copyMethod`, ...), plus
//! snapgate's own spec additions: `timeZone`, `jitter`, `copyTrigger {waitTimeout, onTimeout,
//! holders, allowedServiceAccounts}`, `skipInitialRun`. What `snapgate get -o yaml` writes besides the spec (`metadata.generation`,
//! `metadata.creationTimestamp`, `status`: the scheduler's own record of the source, which a
//! Kubernetes API server also discards on write) is read silently, so that output applies again
//! as it is. Any other Kubernetes metadata (labels, annotations, uid, resourceVersion, ...) is
//! not stored and is reported as a warning.
//!
//! A key repeated within one mapping is refused with its line (as kubectl does), wherever it is:
//! the text is read by `Strict`, not into a map that would keep the last value silently.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt,
};

use serde::{
    Deserialize as _,
    de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor},
};
use serde_json::{Map, Number, Value};
use snapgate_proto::v1::{
    self, CopyMethod, CopyTriggerOptions, CustomCa, MoverVolume, ReplicationSourceRcloneSpec,
    ReplicationSourceResticSpec, ReplicationSourceRsyncSpec, ReplicationSourceRsyncTlsSpec,
    ReplicationSourceTrigger, ResticRetainPolicy, SourceSpec, TimeoutPolicy,
};

use crate::duration;

/// The `apiVersion` of a VolSync ReplicationSource.
pub const API_VERSION: &str = "volsync.backube/v1alpha1";
/// The `kind` of a VolSync ReplicationSource.
pub const KIND: &str = "ReplicationSource";

/// One ReplicationSource, ready for `ApplySource`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicationSource {
    /// `metadata.namespace`, or the default namespace given to the parser.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The spec, mapped field by field.
    pub spec: SourceSpec,
    /// Keys that were read but are not stored (labels, annotations, status, ...).
    pub warnings: Vec<String>,
}

/// Why a document cannot be applied: which document, which key, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("document {document}: {path}: {message}")]
pub struct ParseError {
    /// 1-based index of the document in the file, empty documents not counted.
    pub document: usize,
    /// The key's path, e.g. `spec.restic.retain.hourly` (`.` for the document itself).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// A key path and what is wrong with it.
type FieldError = (String, String);

/// Reads every document of `text`. Empty documents are skipped; any other error stops the
/// whole file, so nothing is applied from a file with a mistake in it.
pub fn parse_documents(
    text: &str,
    default_namespace: &str,
) -> Result<Vec<ReplicationSource>, ParseError> {
    let mut out = Vec::new();
    // Documents are numbered as a reader counts them: empty ones (`---` twice) do not count.
    let mut number = 0;
    for document in serde_yaml::Deserializer::from_str(text) {
        number += 1;
        let duplicate = RefCell::new(None);
        let strict = Strict {
            path: "",
            duplicate: &duplicate,
        };
        let value = strict
            .deserialize(document)
            .map_err(|e| match duplicate.take() {
                // serde_yaml's lines count from the start of the file, across documents.
                Some(path) => ParseError {
                    document: number,
                    path,
                    message: format!(
                        "line {}: duplicate key (a key may appear only once in a mapping)",
                        e.location().map_or(0, |l| l.line())
                    ),
                },
                None => ParseError {
                    document: number,
                    path: ".".into(),
                    message: format!("not a YAML/JSON object: {e}"),
                },
            })?;
        if value.is_null() {
            number -= 1;
            continue;
        }
        let source =
            parse_value(&value, default_namespace).map_err(|(path, message)| ParseError {
                document: number,
                path,
                message,
            })?;
        out.push(source);
    }
    Ok(out)
}

/// Reads one ReplicationSource document.
pub fn parse_value(
    value: &Value,
    default_namespace: &str,
) -> Result<ReplicationSource, FieldError> {
    let mut warnings = Vec::new();
    let mut doc = Obj::new(String::new(), value)?;
    let api_version = doc.string("apiVersion")?.unwrap_or_default();
    let kind = doc.string("kind")?.unwrap_or_default();
    if kind != KIND {
        return Err((
            "kind".into(),
            format!("{kind:?}: snapgate applies only {API_VERSION} {KIND}"),
        ));
    }
    if api_version != API_VERSION {
        return Err((
            "apiVersion".into(),
            format!("{api_version:?}: expected {API_VERSION}"),
        ));
    }
    let mut metadata = doc
        .object("metadata")?
        .ok_or_else(|| ("metadata".to_owned(), "required (name)".to_owned()))?;
    let name = metadata
        .string("name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ("metadata.name".to_owned(), "required".to_owned()))?;
    let namespace = metadata
        .string("namespace")?
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| default_namespace.to_owned());
    for key in ["labels", "annotations"] {
        if metadata.take(key).is_some() {
            warnings.push(format!(
                "metadata.{key}: not stored (snapgate keeps no Kubernetes metadata)"
            ));
        }
    }
    // What `snapgate get` writes (the scheduler's version and creation time of the source):
    // read, so that its output applies again without a word, and not stored.
    for key in ["generation", "creationTimestamp"] {
        metadata.take(key);
    }
    for key in [
        "uid",
        "resourceVersion",
        "managedFields",
        "selfLink",
        "finalizers",
        "ownerReferences",
    ] {
        if metadata.take(key).is_some() {
            warnings.push(format!(
                "metadata.{key}: ignored (set by a Kubernetes API server)"
            ));
        }
    }
    metadata.finish(&[])?;
    // The scheduler owns a source's status; `snapgate get` prints it, and an API server ignores
    // a status given with a spec too.
    doc.take("status");
    let mut spec_obj = doc
        .object("spec")?
        .ok_or_else(|| ("spec".to_owned(), "required".to_owned()))?;
    let spec = spec(&mut spec_obj)?;
    spec_obj.finish(&[
        (
            "syncthing",
            "the syncthing mover is not supported by snapgate (restic, rclone, rsync and rsyncTLS are)",
        ),
        (
            "external",
            "external replication providers are not supported by snapgate",
        ),
    ])?;
    doc.finish(&[])?;
    Ok(ReplicationSource {
        namespace,
        name,
        spec,
        warnings,
    })
}

fn spec(o: &mut Obj<'_>) -> Result<SourceSpec, FieldError> {
    let source_pvc = o.string("sourcePVC")?.unwrap_or_default();
    let trigger = match o.object("trigger")? {
        None => None,
        Some(mut t) => {
            let trigger = ReplicationSourceTrigger {
                schedule: t.string("schedule")?,
                manual: t.string("manual")?,
            };
            t.finish(&[])?;
            Some(trigger)
        }
    };
    let paused = o.bool("paused")?.unwrap_or(false);
    let restic = o
        .object("restic")?
        .map(|mut r| restic(&mut r))
        .transpose()?;
    let rclone = o
        .object("rclone")?
        .map(|mut r| rclone(&mut r))
        .transpose()?;
    let rsync = o.object("rsync")?.map(|mut r| rsync(&mut r)).transpose()?;
    let rsync_tls = o
        .object("rsyncTLS")?
        .map(|mut r| rsync_tls(&mut r))
        .transpose()?;
    let time_zone = o.string("timeZone")?.unwrap_or_default();
    let jitter = o.duration("jitter")?;
    let copy_trigger = match o.object("copyTrigger")? {
        None => None,
        Some(mut c) => {
            let wait_timeout = c.duration("waitTimeout")?;
            let on_timeout = match c.string("onTimeout")? {
                None => TimeoutPolicy::KeepWaiting,
                Some(p) => TimeoutPolicy::from_str_name(&p).ok_or_else(|| {
                    (
                        c.path_of("onTimeout"),
                        format!("{p:?}: expected KeepWaiting or Skip"),
                    )
                })?,
            };
            let holders = c.strings("holders")?;
            let allowed_service_accounts = c.strings("allowedServiceAccounts")?;
            c.finish(&[])?;
            Some(CopyTriggerOptions {
                wait_timeout,
                on_timeout: on_timeout as i32,
                holders,
                allowed_service_accounts,
            })
        }
    };
    let skip_initial_run = o.bool("skipInitialRun")?.unwrap_or(false);
    Ok(SourceSpec {
        source_pvc,
        trigger,
        paused,
        restic,
        rclone,
        rsync,
        rsync_tls,
        time_zone,
        jitter,
        copy_trigger,
        skip_initial_run,
    })
}

/// VolSync's ReplicationSourceVolumeOptions and MoverConfig, common to every mover.
struct VolumeOptions {
    copy_method: i32,
    capacity: Option<String>,
    storage_class_name: Option<String>,
    access_modes: Vec<String>,
    volume_snapshot_class_name: Option<String>,
    mover_security_context: Option<prost_types::Struct>,
    mover_service_account: Option<String>,
    mover_resources: Option<prost_types::Struct>,
    mover_affinity: Option<prost_types::Struct>,
    mover_pod_labels: HashMap<String, String>,
    mover_volumes: Vec<MoverVolume>,
}

fn volume_options(o: &mut Obj<'_>) -> Result<VolumeOptions, FieldError> {
    let copy_method = match o.string("copyMethod")? {
        None => CopyMethod::Unspecified,
        Some(m) => CopyMethod::from_str_name(&m)
            .filter(|m| *m != CopyMethod::Unspecified)
            .ok_or_else(|| {
                (
                    o.path_of("copyMethod"),
                    format!("{m:?}: expected Direct, None, Clone or Snapshot"),
                )
            })?,
    };
    let mover_volumes = match o.take("moverVolumes") {
        None => Vec::new(),
        Some(v) => {
            let path = o.path_of("moverVolumes");
            let items = v
                .as_array()
                .ok_or_else(|| (path.clone(), "expected a list".to_owned()))?;
            let mut volumes = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let mut m = Obj::new(format!("{path}[{i}]"), item)?;
                let mount_path = m.string("mountPath")?.unwrap_or_default();
                let volume_source = m.structure("volumeSource")?;
                m.finish(&[])?;
                volumes.push(MoverVolume {
                    mount_path,
                    volume_source,
                });
            }
            volumes
        }
    };
    Ok(VolumeOptions {
        copy_method: copy_method as i32,
        capacity: o.quantity("capacity")?,
        storage_class_name: o.string("storageClassName")?,
        access_modes: o.strings("accessModes")?,
        volume_snapshot_class_name: o.string("volumeSnapshotClassName")?,
        mover_security_context: o.structure("moverSecurityContext")?,
        mover_service_account: o.string("moverServiceAccount")?,
        mover_resources: o.structure("moverResources")?,
        mover_affinity: o.structure("moverAffinity")?,
        mover_pod_labels: o.string_map("moverPodLabels")?,
        mover_volumes,
    })
}

macro_rules! with_volume_options {
    ($opts:expr, $spec:ident { $($field:ident: $value:expr),* $(,)? }) => {{
        let o = $opts;
        $spec {
            copy_method: o.copy_method,
            capacity: o.capacity,
            storage_class_name: o.storage_class_name,
            access_modes: o.access_modes,
            volume_snapshot_class_name: o.volume_snapshot_class_name,
            mover_security_context: o.mover_security_context,
            mover_service_account: o.mover_service_account,
            mover_resources: o.mover_resources,
            mover_affinity: o.mover_affinity,
            mover_pod_labels: o.mover_pod_labels,
            mover_volumes: o.mover_volumes,
            $($field: $value),*
        }
    }};
}

fn custom_ca(o: &mut Obj<'_>) -> Result<Option<CustomCa>, FieldError> {
    let Some(mut c) = o.object("customCA")? else {
        return Ok(None);
    };
    let ca = CustomCa {
        secret_name: c.string("secretName")?.unwrap_or_default(),
        config_map_name: c.string("configMapName")?.unwrap_or_default(),
        key: c.string("key")?.unwrap_or_default(),
    };
    c.finish(&[])?;
    Ok(Some(ca))
}

fn restic(o: &mut Obj<'_>) -> Result<ReplicationSourceResticSpec, FieldError> {
    let opts = volume_options(o)?;
    let retain = match o.object("retain")? {
        None => None,
        Some(mut r) => {
            let retain = ResticRetainPolicy {
                hourly: r.i32("hourly")?,
                daily: r.i32("daily")?,
                weekly: r.i32("weekly")?,
                monthly: r.i32("monthly")?,
                yearly: r.i32("yearly")?,
                within: r.string("within")?,
                last: r.count("last")?,
                ..Default::default()
            };
            r.finish(&[])?;
            Some(retain)
        }
    };
    let spec = with_volume_options!(
        opts,
        ReplicationSourceResticSpec {
            repository: o.string("repository")?.unwrap_or_default(),
            retain: retain,
            prune_interval_days: o.i32("pruneIntervalDays")?,
            cache_capacity: o.quantity("cacheCapacity")?,
            cache_storage_class_name: o.string("cacheStorageClassName")?,
            cache_access_modes: o.strings("cacheAccessModes")?,
            custom_ca: custom_ca(o)?,
            unlock: o.string("unlock")?,
            keep_cache: o.bool("keepCache")?.unwrap_or(false),
        }
    );
    o.finish(&[])?;
    Ok(spec)
}

fn rclone(o: &mut Obj<'_>) -> Result<ReplicationSourceRcloneSpec, FieldError> {
    let opts = volume_options(o)?;
    let spec = with_volume_options!(
        opts,
        ReplicationSourceRcloneSpec {
            rclone_config: o.string("rcloneConfig")?.unwrap_or_default(),
            rclone_config_section: o.string("rcloneConfigSection")?.unwrap_or_default(),
            rclone_dest_path: o.string("rcloneDestPath")?.unwrap_or_default(),
            custom_ca: custom_ca(o)?,
        }
    );
    o.finish(&[])?;
    Ok(spec)
}

fn rsync(o: &mut Obj<'_>) -> Result<ReplicationSourceRsyncSpec, FieldError> {
    let opts = volume_options(o)?;
    let spec = with_volume_options!(
        opts,
        ReplicationSourceRsyncSpec {
            ssh_keys: o.string("sshKeys")?.unwrap_or_default(),
            address: o.string("address")?.unwrap_or_default(),
            port: o.i32("port")?,
            ssh_user: o.string("sshUser")?,
            path: o.string("path")?,
        }
    );
    o.finish(&[(
        "serviceType",
        "snapgate's rsync mover only connects out to `address`; an incoming Service (serviceType) is not supported",
    )])?;
    Ok(spec)
}

fn rsync_tls(o: &mut Obj<'_>) -> Result<ReplicationSourceRsyncTlsSpec, FieldError> {
    let opts = volume_options(o)?;
    let spec = with_volume_options!(
        opts,
        ReplicationSourceRsyncTlsSpec {
            key_secret: o.string("keySecret")?.unwrap_or_default(),
            address: o.string("address")?.unwrap_or_default(),
            port: o.i32("port")?,
        }
    );
    o.finish(&[(
        "serviceType",
        "snapgate's rsyncTLS mover only connects out to `address`; an incoming Service (serviceType) is not supported",
    )])?;
    Ok(spec)
}

/// An object being read: every key must be taken before [`Obj::finish`].
struct Obj<'a> {
    path: String,
    map: Option<&'a Map<String, Value>>,
    taken: HashSet<&'a str>,
    known: BTreeSet<String>,
}

impl<'a> Obj<'a> {
    /// `null` reads as an empty object.
    fn new(path: String, value: &'a Value) -> Result<Self, FieldError> {
        let map = match value {
            Value::Object(m) => Some(m),
            Value::Null => None,
            other => {
                let at = if path.is_empty() { "." } else { &path };
                return Err((
                    at.to_owned(),
                    format!("expected an object, found {}", kind_of(other)),
                ));
            }
        };
        Ok(Self {
            path,
            map,
            taken: HashSet::new(),
            known: BTreeSet::new(),
        })
    }

    fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value of a key (absent or `null`: `None`), marked as read.
    fn take(&mut self, key: &str) -> Option<&'a Value> {
        self.known.insert(key.to_owned());
        let (k, v) = self.map?.get_key_value(key)?;
        self.taken.insert(k.as_str());
        (!v.is_null()).then_some(v)
    }

    fn wrong(&self, key: &str, expected: &str, found: &Value) -> FieldError {
        (
            self.path_of(key),
            format!("expected {expected}, found {}", kind_of(found)),
        )
    }

    fn string(&mut self, key: &str) -> Result<Option<String>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.wrong(key, "a string", other)),
        }
    }

    /// A Kubernetes quantity: `10Gi`, or a plain number.
    fn quantity(&mut self, key: &str) -> Result<Option<String>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(self.wrong(key, "a quantity such as 10Gi", other)),
        }
    }

    fn bool(&mut self, key: &str) -> Result<Option<bool>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong(key, "true or false", other)),
        }
    }

    fn i32(&mut self, key: &str) -> Result<Option<i32>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| (self.path_of(key), format!("{n}: expected a 32-bit integer"))),
            Some(other) => Err(self.wrong(key, "an integer", other)),
        }
    }

    /// A count written as a string, as VolSync's `retain.last` (`"10"`); a bare integer (what
    /// snapgate 0.1 required) reads as its decimal string. Whether the string holds a
    /// non-negative integer is the scheduler's rule.
    fn count(&mut self, key: &str) -> Result<Option<String>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
            Some(other) => Err(self.wrong(
                key,
                "a string holding a count such as \"10\" (or an integer)",
                other,
            )),
        }
    }

    fn duration(&mut self, key: &str) -> Result<Option<prost_types::Duration>, FieldError> {
        let Some(text) = self.string(key)? else {
            return Ok(None);
        };
        duration::parse(&text)
            .map(|d| Some(duration::to_proto(d)))
            .map_err(|e| {
                (
                    self.path_of(key),
                    format!(
                        "{e}; expected a duration such as 90s, 5m or 1h30m (units h, m, s, ms)"
                    ),
                )
            })
    }

    fn strings(&mut self, key: &str) -> Result<Vec<String>, FieldError> {
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err((
                        format!("{}[{i}]", self.path_of(key)),
                        format!("expected a string, found {}", kind_of(other)),
                    )),
                })
                .collect(),
            Some(other) => Err(self.wrong(key, "a list of strings", other)),
        }
    }

    fn string_map(&mut self, key: &str) -> Result<HashMap<String, String>, FieldError> {
        match self.take(key) {
            None => Ok(HashMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err((
                        format!("{}.{k}", self.path_of(key)),
                        format!("expected a string, found {}", kind_of(other)),
                    )),
                })
                .collect(),
            Some(other) => Err(self.wrong(key, "a map of strings", other)),
        }
    }

    /// A free-form Kubernetes object (securityContext, resources, affinity, volume source).
    fn structure(&mut self, key: &str) -> Result<Option<prost_types::Struct>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(snapgate_proto::json::json_to_struct(m))),
            Some(other) => Err(self.wrong(key, "an object", other)),
        }
    }

    fn object(&mut self, key: &str) -> Result<Option<Obj<'a>>, FieldError> {
        let path = self.path_of(key);
        match self.take(key) {
            None => Ok(None),
            Some(v) => Obj::new(path, v).map(Some),
        }
    }

    /// Refuses every key not read: VolSync keys snapgate does not support with the reason,
    /// anything else as unknown.
    fn finish(&self, unsupported: &[(&str, &str)]) -> Result<(), FieldError> {
        let Some(map) = self.map else {
            return Ok(());
        };
        let left: BTreeMap<&str, &Value> = map
            .iter()
            .filter(|(k, _)| !self.taken.contains(k.as_str()))
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        let Some((key, _)) = left.into_iter().next() else {
            return Ok(());
        };
        let path = self.path_of(key);
        match unsupported.iter().find(|(k, _)| *k == key) {
            Some((_, why)) => Err((path, format!("not supported: {why}"))),
            None => {
                let known: Vec<&str> = self.known.iter().map(String::as_str).collect();
                Err((
                    path,
                    format!(
                        "unknown key (not a VolSync or snapgate field; known keys here: {})",
                        known.join(", ")
                    ),
                ))
            }
        }
    }
}

/// Reads one YAML/JSON document into a JSON value as `serde_json::Value`'s own `Deserialize`
/// does, except that a key repeated within a mapping is refused (a map keeps the last value
/// silently; kubectl refuses such a file). The refusal is raised while the repeated key itself is
/// read, so serde_yaml's error carries that key's line, and `duplicate` gets its path.
struct Strict<'a> {
    /// Where the value is, e.g. `spec.restic` (empty for the document).
    path: &'a str,
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML/JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Number::deserialize(de::value::I128Deserializer::new(v)).map(Value::Number)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Number::deserialize(de::value::U128Deserializer::new(v)).map(Value::Number)
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let path = format!("{}[{}]", self.path, items.len());
            let item = Strict {
                path: &path,
                duplicate: self.duplicate,
            };
            match seq.next_element_seed(item)? {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        loop {
            let key = NewKey {
                path: self.path,
                seen: &out,
                duplicate: self.duplicate,
            };
            let Some(key) = map.next_key_seed(key)? else {
                return Ok(Value::Object(out));
            };
            let path = join(self.path, &key);
            let value = map.next_value_seed(Strict {
                path: &path,
                duplicate: self.duplicate,
            })?;
            out.insert(key, value);
        }
    }
}

/// A mapping's next key, refused if the mapping already has it.
struct NewKey<'a> {
    path: &'a str,
    seen: &'a Map<String, Value>,
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for NewKey<'_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NewKey<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<String, E> {
        if self.seen.contains_key(key) {
            let path = join(self.path, key);
            let message = format!("duplicate key {path}");
            *self.duplicate.borrow_mut() = Some(path);
            return Err(E::custom(message));
        }
        Ok(key.to_owned())
    }
}

/// `spec` + `restic` → `spec.restic`.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The ApplySource request for a document: create (`expected_version` 0) or replace `version`.
pub fn apply_request(source: &ReplicationSource, expected_version: u64) -> v1::ApplySourceRequest {
    v1::ApplySourceRequest {
        namespace: source.namespace.clone(),
        name: source.name.clone(),
        spec: Some(source.spec.clone()),
        expected_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(yaml: &str) -> Result<ReplicationSource, ParseError> {
        parse_documents(yaml, "default").map(|mut v| {
            assert_eq!(v.len(), 1);
            v.remove(0)
        })
    }

    const HEAD: &str =
        "apiVersion: volsync.backube/v1alpha1\nkind: ReplicationSource\nmetadata:\n  name: db\n";

    #[test]
    fn every_restic_field_is_mapped_onto_the_source_spec() {
        let yaml = format!(
            "{HEAD}  namespace: apps\nspec:
  sourcePVC: data
  trigger: {{manual: once}}
  paused: true
  timeZone: Europe/Paris
  jitter: 5m
  skipInitialRun: true
  copyTrigger: {{waitTimeout: 90s, onTimeout: Skip, holders: [db, search], allowedServiceAccounts: [db]}}
  restic:
    copyMethod: Snapshot
    capacity: 10Gi
    storageClassName: fast
    accessModes: [ReadWriteOnce]
    volumeSnapshotClassName: snap
    moverSecurityContext: {{runAsUser: 1000}}
    moverServiceAccount: mover
    moverResources: {{limits: {{cpu: '1'}}}}
    moverAffinity: {{nodeAffinity: {{}}}}
    moverPodLabels: {{team: db}}
    moverVolumes:
      - mountPath: extra
        volumeSource: {{secret: {{secretName: s}}}}
    repository: restic-config
    retain: {{hourly: 1, daily: 2, weekly: 3, monthly: 4, yearly: 5, within: 3d, last: \"6\"}}
    pruneIntervalDays: 7
    cacheCapacity: 1Gi
    cacheStorageClassName: slow
    cacheAccessModes: [ReadWriteMany]
    customCA: {{secretName: ca, configMapName: cm, key: ca.crt}}
    unlock: now
"
        );
        let s = one(&yaml).unwrap();
        assert_eq!((s.namespace.as_str(), s.name.as_str()), ("apps", "db"));
        assert!(s.warnings.is_empty());
        let spec = &s.spec;
        assert_eq!(spec.source_pvc, "data");
        assert_eq!(
            spec.trigger.as_ref().unwrap().manual.as_deref(),
            Some("once")
        );
        assert!(spec.paused && spec.skip_initial_run);
        assert_eq!(spec.time_zone, "Europe/Paris");
        assert_eq!(spec.jitter.unwrap().seconds, 300);
        let ct = spec.copy_trigger.as_ref().unwrap();
        assert_eq!(ct.wait_timeout.unwrap().seconds, 90);
        assert_eq!(ct.on_timeout, TimeoutPolicy::Skip as i32);
        assert_eq!(ct.holders, ["db", "search"]);
        assert_eq!(ct.allowed_service_accounts, ["db"]);
        let r = spec.restic.as_ref().unwrap();
        assert_eq!(r.copy_method, CopyMethod::Snapshot as i32);
        assert_eq!(r.capacity.as_deref(), Some("10Gi"));
        assert_eq!(r.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(r.access_modes, ["ReadWriteOnce"]);
        assert_eq!(r.volume_snapshot_class_name.as_deref(), Some("snap"));
        assert!(
            r.mover_security_context
                .as_ref()
                .unwrap()
                .fields
                .contains_key("runAsUser")
        );
        assert_eq!(r.mover_service_account.as_deref(), Some("mover"));
        assert!(r.mover_resources.is_some() && r.mover_affinity.is_some());
        assert_eq!(r.mover_pod_labels["team"], "db");
        assert_eq!(r.mover_volumes[0].mount_path, "extra");
        assert_eq!(r.repository, "restic-config");
        let k = r.retain.as_ref().unwrap();
        assert_eq!(
            (k.hourly, k.daily, k.weekly, k.monthly, k.yearly),
            (Some(1), Some(2), Some(3), Some(4), Some(5))
        );
        assert_eq!(k.last.as_deref(), Some("6"));
        assert_eq!(k.within.as_deref(), Some("3d"));
        assert_eq!(r.prune_interval_days, Some(7));
        assert_eq!(r.cache_capacity.as_deref(), Some("1Gi"));
        assert_eq!(r.cache_storage_class_name.as_deref(), Some("slow"));
        assert_eq!(r.cache_access_modes, ["ReadWriteMany"]);
        assert_eq!(r.custom_ca.as_ref().unwrap().config_map_name, "cm");
        assert_eq!(r.unlock.as_deref(), Some("now"));

        // And the JSON shape gives the same spec back.
        let again = crate::json::spec(spec);
        let original: Value = serde_yaml::from_str::<Value>(&yaml).unwrap()["spec"].clone();
        let mut expected = original.clone();
        expected["jitter"] = "5m0s".into();
        expected["copyTrigger"]["waitTimeout"] = "1m30s".into();
        assert_eq!(again, expected);
    }

    #[test]
    fn rclone_rsync_and_rsync_tls_fields_are_mapped() {
        let s = one(&format!(
            "{HEAD}spec:\n  sourcePVC: d\n  rclone: {{copyMethod: Clone, rcloneConfig: c, rcloneConfigSection: s, rcloneDestPath: p}}\n"
        ))
        .unwrap();
        let r = s.spec.rclone.unwrap();
        assert_eq!(
            (
                r.rclone_config.as_str(),
                r.rclone_config_section.as_str(),
                r.rclone_dest_path.as_str()
            ),
            ("c", "s", "p")
        );
        let s = one(&format!(
            "{HEAD}spec:\n  sourcePVC: d\n  rsync: {{copyMethod: Direct, sshKeys: k, address: a, port: 2222, sshUser: u, path: /x}}\n"
        ))
        .unwrap();
        let r = s.spec.rsync.unwrap();
        assert_eq!(
            (r.port, r.ssh_user.as_deref(), r.path.as_deref()),
            (Some(2222), Some("u"), Some("/x"))
        );
        let s = one(&format!(
            "{HEAD}spec:\n  sourcePVC: d\n  rsyncTLS: {{copyMethod: None, keySecret: k, address: a, port: 8000}}\n"
        ))
        .unwrap();
        let r = s.spec.rsync_tls.unwrap();
        assert_eq!(
            (r.key_secret.as_str(), r.copy_method),
            ("k", CopyMethod::None as i32)
        );
    }

    #[test]
    fn mistakes_are_refused_with_the_document_and_the_key_path() {
        let cases = [
            (format!("{HEAD}spec:\n  sourcePVC: d\n  restic: {{retain: {{dayly: 3}}}}\n"), "spec.restic.retain.dayly", "unknown key"),
            (format!("{HEAD}spec:\n  sourcePVC: d\n  rsync: {{serviceType: LoadBalancer}}\n"), "spec.rsync.serviceType", "not supported"),
            (format!("{HEAD}spec:\n  sourcePVC: d\n  external: {{provider: x}}\n"), "spec.external", "not supported"),
            (format!("{HEAD}spec:\n  sourcePVC: [d]\n"), "spec.sourcePVC", "expected a string"),
            (format!("{HEAD}spec:\n  restic: {{pruneIntervalDays: often}}\n"), "spec.restic.pruneIntervalDays", "expected an integer"),
            (format!("{HEAD}spec:\n  restic: {{copyMethod: Copy}}\n"), "spec.restic.copyMethod", "Snapshot"),
            (format!("{HEAD}spec:\n  copyTrigger: {{waitTimeout: soon}}\n"), "spec.copyTrigger.waitTimeout", "unit"),
            (format!("{HEAD}  nickname: x\nspec: {{}}\n"), "metadata.nickname", "unknown key"),
            (format!("{HEAD}spec: {{}}\nextra: 1\n"), "extra", "unknown key"),
            ("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n".to_owned(), "kind", "ReplicationSource"),
            ("apiVersion: scribe.backube/v1alpha1\nkind: ReplicationSource\nmetadata: {name: s}\nspec: {}\n".to_owned(), "apiVersion", "volsync.backube/v1alpha1"),
            ("apiVersion: volsync.backube/v1alpha1\nkind: ReplicationSource\nmetadata: {}\nspec: {}\n".to_owned(), "metadata.name", "required"),
        ];
        for (yaml, path, words) in cases {
            let e = one(&yaml).unwrap_err();
            assert_eq!(e.document, 1, "{yaml}");
            assert_eq!(e.path, path, "{yaml}: {e}");
            assert!(e.message.contains(words), "{yaml}: {e}");
        }
        let two = format!(
            "{HEAD}spec: {{sourcePVC: a}}\n---\n{HEAD}spec: {{sourcePVC: b, paused: maybe}}\n"
        );
        let e = parse_documents(&two, "default").unwrap_err();
        assert_eq!((e.document, e.path.as_str()), (2, "spec.paused"));
    }

    #[test]
    fn kubernetes_metadata_is_reported_not_stored_and_the_namespace_defaults() {
        let yaml = format!(
            "{HEAD}  labels: {{a: b}}\n  uid: 123\n  resourceVersion: '7'\nspec: {{sourcePVC: d}}\n---\n"
        );
        let s = one(&yaml).unwrap();
        assert_eq!(s.namespace, "default");
        assert_eq!(s.warnings.len(), 3, "{:?}", s.warnings);
        assert!(s.warnings.iter().any(|w| w.starts_with("metadata.labels")));
        assert!(s.warnings.iter().any(|w| w.starts_with("metadata.uid")));
        assert!(
            s.warnings
                .iter()
                .any(|w| w.starts_with("metadata.resourceVersion"))
        );
    }

    #[test]
    fn what_get_prints_reads_back_as_the_same_spec_without_a_warning() {
        let yaml = format!(
            "{HEAD}spec:\n  sourcePVC: d\n  trigger: {{schedule: '@daily'}}\n  restic: {{copyMethod: Clone, repository: r, retain: {{last: '3'}}}}\n"
        );
        let spec = one(&yaml).unwrap().spec;
        let source = v1::Source {
            namespace: "apps".into(),
            name: "db".into(),
            spec: Some(spec.clone()),
            status: Some(v1::SourceStatus {
                last_sync_time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                pause_note: "maintenance".into(),
                missed_intervals: 2,
                ..Default::default()
            }),
            author: Some(v1::Author {
                user: "system:serviceaccount:apps:ops".into(),
                groups: vec!["system:authenticated".into()],
            }),
            version: 4,
            create_time: Some(prost_types::Timestamp {
                seconds: 1_600_000_000,
                nanos: 0,
            }),
        };
        let printed = serde_yaml::to_string(&crate::json::source(&source)).unwrap();
        for written in [
            "generation: 4",
            "creationTimestamp:",
            "status:",
            "author: system:serviceaccount:apps:ops",
        ] {
            assert!(printed.contains(written), "{printed}");
        }
        let again = one(&printed).unwrap();
        assert_eq!(again.warnings, Vec::<String>::new(), "{printed}");
        assert_eq!(again.spec, spec);
    }

    #[test]
    fn retain_last_is_a_string_and_a_bare_integer_reads_as_that_string() {
        let last = |v: &str| {
            one(&format!(
                "{HEAD}spec:\n  restic:\n    retain:\n      last: {v}\n"
            ))
            .map(|s| s.spec.restic.unwrap().retain.unwrap().last)
        };
        assert_eq!(last("\"10\"").unwrap().as_deref(), Some("10"));
        assert_eq!(last("'0'").unwrap().as_deref(), Some("0"));
        assert_eq!(last("10").unwrap().as_deref(), Some("10"));
        for wrong in ["[1]", "true", "1.5", "{n: 1}"] {
            let e = last(wrong).unwrap_err();
            assert_eq!(e.path, "spec.restic.retain.last", "{wrong}: {e}");
            assert!(e.message.contains("\"10\""), "{wrong}: {e}");
        }
        // What get prints for it is a string again.
        let spec = SourceSpec {
            restic: Some(ReplicationSourceResticSpec {
                retain: Some(ResticRetainPolicy {
                    last: Some("10".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let printed = serde_yaml::to_string(&crate::json::spec(&spec)).unwrap();
        assert!(printed.contains("last: '10'"), "{printed}");
    }

    #[test]
    fn a_duplicate_key_is_refused_with_its_line_and_path_wherever_it_is() {
        let file = format!(
            "{HEAD}spec:
  sourcePVC: d
  trigger:
    schedule: '@daily'
  restic:
    repository: r
    retain: {{daily: 1}}
    moverResources:
      limits:
        cpu: '1'
    moverPodLabels:
      team: db
    moverVolumes:
      - mountPath: m
        volumeSource: {{secret: {{secretName: s}}}}
"
        );
        let lines: Vec<&str> = file.lines().collect();
        assert_eq!(lines.len(), 19);
        // (line number the repeated key gets, its text, the key path).
        let cases = [
            (20, "kind: ReplicationSource", "kind"),
            (5, "  name: other", "metadata.name"),
            (7, "  sourcePVC: x", "spec.sourcePVC"),
            (9, "    schedule: x", "spec.trigger.schedule"),
            (
                15,
                "        cpu: '2'",
                "spec.restic.moverResources.limits.cpu",
            ),
            (17, "      team: web", "spec.restic.moverPodLabels.team"),
            (
                19,
                "        mountPath: n",
                "spec.restic.moverVolumes[0].mountPath",
            ),
        ];
        for (at, text, path) in cases {
            let mut with = lines.clone();
            with.insert(at - 1, text);
            let yaml = with.join("\n");
            let e = one(&yaml).unwrap_err();
            assert_eq!((e.document, e.path.as_str()), (1, path), "{yaml}\n{e}");
            assert_eq!(
                e.message,
                format!("line {at}: duplicate key (a key may appear only once in a mapping)"),
                "{yaml}"
            );
        }
        let flow = file.replace("{daily: 1}", "{daily: 1, daily: 2}");
        let e = one(&flow).unwrap_err();
        assert_eq!(e.path, "spec.restic.retain.daily");
        assert!(e.message.starts_with("line 11: duplicate key"), "{e}");

        // JSON too; and lines count from the top of the file in a later document.
        let two = format!(
            "{HEAD}spec: {{sourcePVC: a}}\n---\n{{\"apiVersion\": \"volsync.backube/v1alpha1\",\n \"kind\": \"ReplicationSource\",\n \"metadata\": {{\"name\": \"b\"}},\n \"spec\": {{\"sourcePVC\": \"b\",\n  \"sourcePVC\": \"c\"}}}}\n"
        );
        let e = parse_documents(&two, "default").unwrap_err();
        assert_eq!((e.document, e.path.as_str()), (2, "spec.sourcePVC"), "{e}");
        assert!(e.message.starts_with("line 11:"), "{two}\n{e}");
    }
}
