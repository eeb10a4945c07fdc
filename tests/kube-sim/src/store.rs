//! The object store: JSON objects keyed by resource, namespace and name, one
//! global resourceVersion sequence, a bounded change history for watch
//! resumption, and change subscriptions for watches and controllers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::resources::{self, ResourceDef};
use crate::selector::Selector;

/// Default number of changes kept for watch resumption.
pub const DEFAULT_HISTORY_LIMIT: usize = 4096;

/// The kind of a stored change, as sent in watch events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    /// The object was created.
    Added,
    /// The object was changed.
    Modified,
    /// The object was removed.
    Deleted,
}

impl ChangeType {
    /// The watch event `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion the change was committed at.
    pub rv: u64,
    /// Which resource changed.
    pub resource: &'static ResourceDef,
    /// What happened.
    pub change_type: ChangeType,
    /// The object after the change (for deletions, the last state with the deletion's resourceVersion).
    pub object: Value,
    /// The object before the change, if any.
    pub previous: Option<Value>,
}

impl Change {
    /// `metadata.namespace` of the changed object.
    pub fn namespace(&self) -> &str {
        self.object["metadata"]["namespace"].as_str().unwrap_or("")
    }

    /// `metadata.name` of the changed object.
    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// Options for create, update and patch.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Keep `.status` from the given object on create/update even when the
    /// resource has a status subresource (used by controllers and test setup).
    pub keep_status: bool,
    /// `fieldManager` recorded in `managedFields`.
    pub field_manager: Option<String>,
    /// `dryRun=All`: validate and compute, but do not persist.
    pub dry_run: bool,
    /// Decode, default, validate and admit the object as a real API server would
    /// ([`crate::admission`]): writes through the REST front end do; the simulated
    /// controllers and test setup writing straight into the store do not.
    pub admit: bool,
    /// `fieldValidation=Strict`: an unknown field is refused (400) instead of dropped.
    pub strict: bool,
    /// `force=true` on a server-side apply: take the fields other managers own.
    pub force: bool,
}

/// Options for delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `propagationPolicy`: `Orphan` keeps dependents; anything else (`Background`, the
    /// default, and `Foreground`, which is served like it) deletes them.
    pub propagation: Option<String>,
    /// `dryRun=All`: answer as the deletion would, delete nothing.
    pub dry_run: bool,
}

/// What a deletion did.
#[derive(Debug, Clone)]
pub struct Deleted {
    /// The object: as it was removed, or as it stays (terminating: a `deletionTimestamp`).
    pub object: Value,
    /// Whether it is gone (else it waits for its finalizers).
    pub removed: bool,
}

/// The kinds of PATCH bodies understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json` (lists merged by their merge keys; 415 for
    /// custom resources).
    StrategicMerge,
    /// `application/json-patch+json`.
    Json,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// Parse a request `Content-Type`.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            "application/json-patch+json" => Some(Self::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// Matching objects on this page.
    pub items: Vec<Value>,
    /// resourceVersion of the list (for continued lists, of the first page).
    pub resource_version: u64,
    /// Continue token, when more items remain.
    pub continue_token: Option<String>,
    /// Number of matching items after this page.
    pub remaining: usize,
}

/// What a new watch starts with.
pub(crate) struct WatchStart {
    /// Current objects (when starting without a resourceVersion).
    pub(crate) initial: Vec<Value>,
    /// Changes after the requested resourceVersion.
    pub(crate) replay: Vec<Arc<Change>>,
    /// The store's resourceVersion at subscription time.
    pub(crate) current_rv: u64,
    /// Live changes after `current_rv`.
    pub(crate) live: mpsc::UnboundedReceiver<Arc<Change>>,
}

pub(crate) type Key = (String, String);

struct Inner {
    rv: u64,
    objects: Vec<BTreeMap<Key, Value>>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    compacted_rv: u64,
    subscribers: Vec<mpsc::UnboundedSender<Arc<Change>>>,
}

/// The simulated etcd: every object of every resource, as JSON.
pub struct Store {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("resource_version", &self.resource_version())
            .finish()
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

/// A wall clock for the timestamps the simulator writes (see [`set_thread_clock`]).
pub type WallClock = std::sync::Arc<dyn Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync>;

thread_local! {
    /// This thread's wall clock for timestamps, when set; else the system's.
    static THREAD_CLOCK: std::cell::RefCell<Option<WallClock>> = const { std::cell::RefCell::new(None) };
}

/// Stamps the objects this thread writes (`creationTimestamp`, a snapshot's `creationTime`,
/// a Job's conditions, Events, ...) with `clock` instead of the system's time, until
/// `None` is set: for a simulation on a current-thread runtime whose processes read a virtual
/// wall clock (the deterministic simulation, `tests/sim`), so that the API server's times and
/// theirs agree. Other threads are unaffected.
pub fn set_thread_clock(clock: Option<WallClock>) {
    THREAD_CLOCK.with(|c| *c.borrow_mut() = clock);
}

/// Current time as a Kubernetes timestamp.
pub(crate) fn now_timestamp() -> String {
    let now = THREAD_CLOCK
        .with(|c| c.borrow().as_ref().map(|clock| clock()))
        .unwrap_or_else(chrono::Utc::now);
    now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A random v4-style UID.
pub(crate) fn new_uid() -> String {
    let a: u32 = rand::random();
    let b: u16 = rand::random();
    let c: u16 = rand::random::<u16>() & 0x0fff;
    let d: u16 = (rand::random::<u16>() & 0x3fff) | 0x8000;
    let e: u64 = rand::random::<u64>() & 0xffff_ffff_ffff;
    format!("{a:08x}-{b:04x}-4{c:03x}-{d:04x}-{e:012x}")
}

/// Random suffix like the apiserver's generateName (5 chars).
pub(crate) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Validate a DNS-1123 subdomain name; `Err(message)` when invalid.
pub(crate) fn validate_dns1123_subdomain(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ends_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.len() > 253 {
        return Err("must be no more than 253 characters".into());
    }
    if !ok_chars || !ends_ok {
        return Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into());
    }
    Ok(())
}

fn meta(obj: &Value) -> &Value {
    &obj["metadata"]
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or("")
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let map = obj.as_object_mut().expect("object");
    let m = map.entry("metadata").or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    m.as_object_mut().expect("metadata object")
}

/// Everything except `metadata` and `status` (what bumps `metadata.generation`).
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

fn status_defaults(res: &ResourceDef) -> Option<Value> {
    match (res.group, res.plural) {
        ("", "persistentvolumeclaims") => Some(json!({"phase": "Pending"})),
        ("", "persistentvolumes") => Some(json!({"phase": "Pending"})),
        ("", "pods") => Some(json!({"phase": "Pending"})),
        ("", "namespaces") => Some(json!({"phase": "Active"})),
        _ => None,
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                rv: 0,
                objects: resources::all().iter().map(|_| BTreeMap::new()).collect(),
                history: VecDeque::new(),
                history_limit: DEFAULT_HISTORY_LIMIT,
                compacted_rv: 0,
                subscribers: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest committed resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Limit the change history kept for watch resumption (older changes are compacted away).
    pub fn set_history_limit(&self, limit: usize) {
        let mut inner = self.lock();
        inner.history_limit = limit;
        inner.trim_history();
    }

    /// Drop the whole change history: any watch resuming from an older
    /// resourceVersion gets `410 Gone`.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.compacted_rv = inner.rv;
    }

    /// Subscribe to every committed change from now on.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Arc<Change>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().subscribers.push(tx);
        rx
    }

    fn key(res: &ResourceDef, ns: Option<&str>, name: &str) -> Key {
        let ns = if res.namespaced { ns.unwrap_or("") } else { "" };
        (ns.to_string(), name.to_string())
    }

    /// Get one object.
    pub fn get(&self, res: &ResourceDef, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let inner = self.lock();
        inner.objects[resources::index_of(res)]
            .get(&Self::key(res, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(res.group, res.plural, name))
    }

    /// List objects (all namespaces when `ns` is `None`), filtered and paginated.
    pub fn list(
        &self,
        res: &ResourceDef,
        ns: Option<&str>,
        labels: &Selector,
        fields: &Selector,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let inner = self.lock();
        let (list_rv, after) = match continue_token.filter(|t| !t.is_empty()) {
            Some(token) => {
                let mut parts = token.splitn(3, '/');
                let rv = parts.next().and_then(|r| r.parse::<u64>().ok());
                let (Some(rv), Some(kns), Some(kname)) = (rv, parts.next(), parts.next()) else {
                    return Err(ApiError::bad_request(format!(
                        "invalid continue token {token:?}"
                    )));
                };
                (rv, Some((kns.to_string(), kname.to_string())))
            }
            None => (inner.rv, None),
        };
        let matching: Vec<&Value> = inner.objects[resources::index_of(res)]
            .iter()
            .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
            .filter(|(k, _)| !res.namespaced || ns.is_none_or(|n| k.0 == n))
            .map(|(_, v)| v)
            .filter(|v| labels.matches(v) && fields.matches(v))
            .collect();
        let take = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let items: Vec<Value> = matching.iter().take(take).map(|v| (*v).clone()).collect();
        let remaining = matching.len() - items.len();
        let continue_token = (remaining > 0).then(|| {
            let last = items.last().expect("non-empty page");
            format!(
                "{list_rv}/{}/{}",
                meta_str(last, "namespace"),
                meta_str(last, "name")
            )
        });
        Ok(ListPage {
            items,
            resource_version: list_rv,
            continue_token,
            remaining,
        })
    }

    /// Start a watch: objects or history to send first, and a live subscription.
    /// `from` is the client's resourceVersion; `None` (or 0) means "current state first".
    pub(crate) fn watch(
        &self,
        res: &ResourceDef,
        from: Option<u64>,
    ) -> Result<WatchStart, ApiError> {
        let mut inner = self.lock();
        let (tx, live) = mpsc::unbounded_channel();
        let mut initial = Vec::new();
        let mut replay = Vec::new();
        match from.filter(|rv| *rv > 0) {
            None => {
                initial = inner.objects[resources::index_of(res)]
                    .values()
                    .cloned()
                    .collect();
            }
            Some(rv) => {
                if rv < inner.compacted_rv {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {rv} ({})",
                        inner.compacted_rv + 1
                    )));
                }
                replay = inner
                    .history
                    .iter()
                    .filter(|c| c.rv > rv && c.resource == res)
                    .cloned()
                    .collect();
            }
        }
        inner.subscribers.push(tx);
        Ok(WatchStart {
            initial,
            replay,
            current_rv: inner.rv,
            live,
        })
    }

    /// Create an object. `ns` is the namespace from the URL (ignored for cluster-scoped resources).
    pub fn create(
        &self,
        res: &'static ResourceDef,
        ns: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("body must be a JSON object"));
        }
        let mut inner = self.lock();
        let idx = resources::index_of(res);
        {
            let body_ns = meta_str(&obj, "namespace").to_string();
            let m = meta_mut(&mut obj);
            if res.namespaced {
                let ns = match (ns, body_ns.as_str()) {
                    (Some(u), b) if !b.is_empty() && b != u => {
                        return Err(ApiError::bad_request(format!(
                            "the namespace of the provided object ({b}) does not match the namespace sent on the request ({u})"
                        )));
                    }
                    (Some(u), _) => u.to_string(),
                    (None, b) if !b.is_empty() => b.to_string(),
                    (None, _) => "default".to_string(),
                };
                m.insert("namespace".into(), json!(ns));
            } else {
                m.remove("namespace");
            }
        }
        if opts.admit {
            if res.namespaced {
                crate::admission::namespace_exists(&inner.objects, meta_str(&obj, "namespace"))?;
            }
            let map = obj.as_object_mut().expect("object");
            map.insert("apiVersion".into(), json!(res.api_version()));
            map.insert("kind".into(), json!(res.kind));
            crate::admission::decode(res, &mut obj, opts.strict)?;
        }
        let mut name = meta_str(&obj, "name").to_string();
        if name.is_empty() {
            let prefix = meta_str(&obj, "generateName").to_string();
            if prefix.is_empty() {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!("{} \"\" is invalid: metadata.name: Required value: name or generateName is required", res.kind),
                )
                .with_details(res.group, res.kind, "")
                .with_cause(
                    "FieldValueRequired",
                    "Required value: name or generateName is required",
                    "metadata.name",
                ));
            }
            loop {
                name = format!("{prefix}{}", random_suffix());
                let key = Self::key(res, Some(meta_str(&obj, "namespace")), &name);
                if !inner.objects[idx].contains_key(&key) {
                    break;
                }
            }
            meta_mut(&mut obj).insert("name".into(), json!(name));
        }
        if let Err(msg) = validate_dns1123_subdomain(&name) {
            return Err(ApiError::invalid(
                res.kind,
                res.group,
                &name,
                "metadata.name",
                &msg,
            ));
        }
        let key = Self::key(res, Some(meta_str(&obj, "namespace")), &name);
        if inner.objects[idx].contains_key(&key) {
            return Err(ApiError::already_exists(res.group, res.plural, &name));
        }
        let map = obj.as_object_mut().expect("object");
        map.insert("apiVersion".into(), json!(res.api_version()));
        map.insert("kind".into(), json!(res.kind));
        if res.status_subresource && !opts.keep_status {
            map.remove("status");
        }
        if !map.contains_key("status")
            && let Some(s) = status_defaults(res)
        {
            map.insert("status".into(), s);
        }
        let uid = new_uid();
        if opts.admit {
            crate::admission::on_create(&inner.objects, res, &mut obj, &uid)?;
        }
        let m = meta_mut(&mut obj);
        m.insert("uid".into(), json!(uid));
        m.insert("creationTimestamp".into(), json!(now_timestamp()));
        if res.generation {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
        m.remove("deletionTimestamp");
        m.remove("resourceVersion");
        m.remove("managedFields");
        if let Some(manager) = &opts.field_manager {
            crate::ssa::record_update(None, &mut obj, manager, &res.api_version());
        }
        if opts.dry_run {
            return Ok(obj);
        }
        Ok(inner.commit(res, key, Some(obj), ChangeType::Added))
    }

    /// Replace an object (PUT). With `status_only`, only `.status` is taken from `obj`.
    pub fn update(
        &self,
        res: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        status_only: bool,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        inner.update(res, ns, name, obj, status_only, opts)
    }

    /// Patch an object. Server-side apply creates the object if missing.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        res: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        patch_type: PatchType,
        patch: &Value,
        status_only: bool,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = Self::key(res, ns, name);
        let existing = inner.objects[resources::index_of(res)].get(&key).cloned();
        if patch_type == PatchType::Apply {
            let Some(manager) = opts.field_manager.clone().filter(|m| !m.is_empty()) else {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                )
                .with_cause("FieldValueRequired", "Required value: is required for apply patch", "fieldManager"));
            };
            if !patch.is_object() {
                return Err(ApiError::bad_request("apply body must be an object"));
            }
            let body_name = meta_str(patch, "name");
            if !body_name.is_empty() && body_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            match existing {
                None => {
                    if status_only {
                        return Err(ApiError::not_found(res.group, res.plural, name));
                    }
                    let mut obj = patch.clone();
                    meta_mut(&mut obj).insert("name".into(), json!(name));
                    drop(inner);
                    let mut created = self.create(
                        res,
                        ns,
                        obj,
                        &WriteOptions {
                            field_manager: None,
                            ..opts.clone()
                        },
                    )?;
                    // record the apply manager on the stored object
                    let owned = crate::ssa::apply(
                        &json!({}),
                        patch,
                        &manager,
                        opts.force,
                        &res.api_version(),
                    )?;
                    created["metadata"]["managedFields"] =
                        owned["metadata"]["managedFields"].clone();
                    let mut inner = self.lock();
                    if opts.dry_run {
                        return Ok(created);
                    }
                    let key = Self::key(res, ns, name);
                    if let Some(stored) = inner.objects[resources::index_of(res)].get_mut(&key) {
                        stored["metadata"]["managedFields"] =
                            created["metadata"]["managedFields"].clone();
                    }
                    return Ok(created);
                }
                Some(current) => {
                    let merged = crate::ssa::apply(
                        &current,
                        patch,
                        &manager,
                        opts.force,
                        &res.api_version(),
                    )?;
                    let opts = WriteOptions {
                        field_manager: None,
                        ..opts.clone()
                    };
                    return inner.update(res, ns, name, merged, status_only, &opts);
                }
            }
        }
        let Some(current) = existing else {
            return Err(ApiError::not_found(res.group, res.plural, name));
        };
        let mut patched = current.clone();
        match patch_type {
            PatchType::Merge => json_patch::merge(&mut patched, patch),
            PatchType::StrategicMerge if res.crd => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                ));
            }
            PatchType::StrategicMerge => crate::smp::apply(&mut patched, patch),
            PatchType::Json => {
                // Whatever a JSON patch fails on (a failed `test`, a missing path), the API
                // server says the same.
                let rejected = || {
                    ApiError::new(
                        422,
                        "Invalid",
                        "the server rejected our request due to an error in our request",
                    )
                    .with_empty_details()
                };
                let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                json_patch::patch(&mut patched, &ops).map_err(|_| rejected())?;
            }
            PatchType::Apply => unreachable!("handled above"),
        }
        inner.update(res, ns, name, patched, status_only, opts)
    }

    /// Delete an object, garbage-collecting dependents (ownerReferences) unless
    /// `propagationPolicy=Orphan`. Objects with finalizers only get a deletionTimestamp.
    /// The object as removed, or as it stays terminating; see [`Store::delete_ext`].
    pub fn delete(
        &self,
        res: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        self.delete_ext(res, ns, name, opts).map(|d| d.object)
    }

    /// Delete an object as the API server does:
    ///
    /// * with finalizers, it gets a `deletionTimestamp` (and `deletionGracePeriodSeconds: 0`)
    ///   and stays until they are removed;
    /// * a Namespace goes `Terminating` (a `deletionTimestamp`), then what it holds is
    ///   deleted, then itself (the namespace controller's work, done at once here);
    /// * a pod is removed at once (no kubelet to wait for), its last state with a
    ///   `deletionTimestamp`, `deletionGracePeriodSeconds: 0` and its generation bumped;
    /// * anything else is removed, its dependents garbage-collected unless orphaned.
    ///
    /// With `dry_run` nothing changes: the answer is what the deletion would have done.
    pub fn delete_ext(
        &self,
        res: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        let mut inner = self.lock();
        let key = Self::key(res, ns, name);
        let idx = resources::index_of(res);
        let Some(current) = inner.objects[idx].get(&key).cloned() else {
            return Err(ApiError::not_found(res.group, res.plural, name));
        };
        let precondition = |what: &str, wanted: &str, got: &str, why: &str| {
            ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the {what} in the precondition ({wanted}) does not match the {what} in record ({got}). {why}",
                    res.kind
                ),
            )
            .with_details(res.group, res.kind, name)
        };
        if let Some(uid) = &opts.uid
            && uid != meta_str(&current, "uid")
        {
            return Err(precondition(
                "UID",
                uid,
                meta_str(&current, "uid"),
                "The object might have been deleted and then recreated",
            ));
        }
        if let Some(rv) = &opts.resource_version
            && rv != meta_str(&current, "resourceVersion")
        {
            return Err(precondition(
                "ResourceVersion",
                rv,
                meta_str(&current, "resourceVersion"),
                "The object might have been modified",
            ));
        }
        let namespace = res.group.is_empty() && res.plural == "namespaces";
        let has_finalizers = meta(&current)["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers || namespace {
            if meta(&current).get("deletionTimestamp").is_some() {
                return Ok(Deleted {
                    object: current,
                    removed: false,
                });
            }
            let mut marked = current;
            let m = meta_mut(&mut marked);
            m.insert("deletionTimestamp".into(), json!(now_timestamp()));
            if namespace {
                marked["status"]["phase"] = json!("Terminating");
            } else {
                meta_mut(&mut marked).insert("deletionGracePeriodSeconds".into(), json!(0));
            }
            if opts.dry_run {
                return Ok(Deleted {
                    object: marked,
                    removed: false,
                });
            }
            let object = inner.commit(res, key.clone(), Some(marked), ChangeType::Modified);
            if namespace && !has_finalizers {
                inner.remove(res, key, false);
            }
            return Ok(Deleted {
                object,
                removed: false,
            });
        }
        let mut last = current;
        if res.group.is_empty() && res.plural == "pods" {
            let generation = last["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            let m = meta_mut(&mut last);
            m.insert("deletionTimestamp".into(), json!(now_timestamp()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            m.insert("generation".into(), json!(generation));
        }
        if opts.dry_run {
            return Ok(Deleted {
                object: last,
                removed: true,
            });
        }
        inner.objects[idx].insert(key.clone(), last);
        let orphan = opts.propagation.as_deref() == Some("Orphan");
        Ok(Deleted {
            object: inner.remove(res, key, orphan),
            removed: true,
        })
    }

    /// All objects of a resource, across namespaces.
    pub fn all(&self, res: &ResourceDef) -> Vec<Value> {
        self.lock().objects[resources::index_of(res)]
            .values()
            .cloned()
            .collect()
    }
}

impl Inner {
    fn trim_history(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(c) = self.history.pop_front() {
                self.compacted_rv = c.rv;
            }
        }
    }

    /// Stores `obj` under `key` at the next resourceVersion (with `obj` `None`: removes the
    /// stored object), records the change for watch resumption, and notifies watchers.
    fn commit(
        &mut self,
        res: &'static ResourceDef,
        key: Key,
        obj: Option<Value>,
        change_type: ChangeType,
    ) -> Value {
        self.rv += 1;
        let rv = self.rv;
        let idx = resources::index_of(res);
        let previous = self.objects[idx].get(&key).cloned();
        let mut obj = match obj {
            Some(o) => o,
            None => self.objects[idx].remove(&key).expect("exists"),
        };
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        if change_type != ChangeType::Deleted {
            self.objects[idx].insert(key, obj.clone());
        }
        let change = Arc::new(Change {
            rv,
            resource: res,
            change_type,
            object: obj.clone(),
            previous,
        });
        self.history.push_back(change.clone());
        self.trim_history();
        self.subscribers.retain(|s| s.send(change.clone()).is_ok());
        obj
    }

    /// Remove an object and garbage-collect its dependents.
    fn remove(&mut self, res: &'static ResourceDef, key: Key, orphan: bool) -> Value {
        let removed = self.commit(res, key.clone(), None, ChangeType::Deleted);
        let uid = meta_str(&removed, "uid").to_string();
        // namespace deletion removes everything inside it
        if res.group.is_empty() && res.plural == "namespaces" {
            for r in resources::all().iter().filter(|r| r.namespaced) {
                let keys: Vec<Key> = self.objects[resources::index_of(r)]
                    .keys()
                    .filter(|k| k.0 == key.1)
                    .cloned()
                    .collect();
                for k in keys {
                    self.remove(r, k, false);
                }
            }
        }
        for r in resources::all() {
            let dependents: Vec<(Key, Value)> = self.objects[resources::index_of(r)]
                .iter()
                .filter(|(_, v)| {
                    v["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|o| o["uid"] == uid.as_str()))
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, mut dep) in dependents {
                if orphan {
                    if let Some(refs) = dep["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|o| o["uid"] != uid.as_str());
                    }
                    self.commit(r, k, Some(dep), ChangeType::Modified);
                } else {
                    let has_finalizers = dep["metadata"]["finalizers"]
                        .as_array()
                        .is_some_and(|f| !f.is_empty());
                    if has_finalizers {
                        if dep["metadata"].get("deletionTimestamp").is_none() {
                            meta_mut(&mut dep)
                                .insert("deletionTimestamp".into(), json!(now_timestamp()));
                            self.commit(r, k, Some(dep), ChangeType::Modified);
                        }
                    } else {
                        self.remove(r, k, false);
                    }
                }
            }
        }
        removed
    }

    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        res: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        status_only: bool,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("body must be a JSON object"));
        }
        let key = Store::key(res, ns, name);
        let idx = resources::index_of(res);
        let Some(current) = self.objects[idx].get(&key).cloned() else {
            return Err(ApiError::not_found(res.group, res.plural, name));
        };
        let body_name = meta_str(&obj, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_rv = meta_str(&obj, "resourceVersion");
        if !body_rv.is_empty() && body_rv != meta_str(&current, "resourceVersion") {
            return Err(ApiError::conflict(
                res.group,
                res.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let mut new = if status_only {
            let mut n = current.clone();
            match obj.get("status") {
                Some(s) => n["status"] = s.clone(),
                None => {
                    if let Some(m) = n.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            n
        } else {
            if res.status_subresource && !opts.keep_status {
                let map = obj.as_object_mut().expect("object");
                match current.get("status") {
                    Some(s) => {
                        map.insert("status".into(), s.clone());
                    }
                    None => {
                        map.remove("status");
                    }
                }
            }
            let cm = meta(&current).clone();
            let m = meta_mut(&mut obj);
            for f in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "namespace",
                "name",
            ] {
                match cm.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
            if !m.contains_key("managedFields")
                && let Some(mf) = cm.get("managedFields")
            {
                m.insert("managedFields".into(), mf.clone());
            }
            let map = obj.as_object_mut().expect("object");
            map.insert("apiVersion".into(), json!(res.api_version()));
            map.insert("kind".into(), json!(res.kind));
            obj
        };
        meta_mut(&mut new).insert(
            "resourceVersion".into(),
            current["metadata"]["resourceVersion"].clone(),
        );
        if opts.admit && !status_only {
            crate::admission::decode(res, &mut new, opts.strict)?;
            crate::admission::on_update(res, &current, &mut new)?;
        }
        if res.generation && spec_part(&new) != spec_part(&current) {
            let gen_ = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            meta_mut(&mut new).insert("generation".into(), json!(gen_));
        }
        if let Some(manager) = &opts.field_manager {
            crate::ssa::record_update(Some(&current), &mut new, manager, &res.api_version());
        }
        if new == current {
            return Ok(current);
        }
        if opts.dry_run {
            return Ok(new);
        }
        let finalizers_done = meta(&new).get("deletionTimestamp").is_some()
            && meta(&new)["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty());
        if finalizers_done {
            self.commit(res, key.clone(), Some(new), ChangeType::Modified);
            return Ok(self.remove(res, key, false));
        }
        Ok(self.commit(res, key, Some(new), ChangeType::Modified))
    }
}
