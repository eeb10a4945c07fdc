//! What a real API server does to a written object between decoding it and storing it, for
//! writes through the REST front end (the store's own callers, the simulated controllers and
//! test setup, skip it): unknown fields dropped (or, with `fieldValidation=Strict`, refused),
//! defaults filled in, the object validated (422 Invalid with causes), immutable fields kept,
//! and the admission plugins of a default cluster (namespace existence, the default
//! StorageClass, `kubernetes.io/pvc-protection`).
//!
//! Per kind, as held against the real API server by `tests/cluster/tests/differential.rs`:
//!
//! | kind | on create | on update |
//! |---|---|---|
//! | every built-in kind | unknown fields dropped (Strict: 400); the namespace must exist (404) | unknown fields dropped |
//! | Namespace | label `kubernetes.io/metadata.name`, `spec.finalizers: [kubernetes]` | |
//! | PersistentVolumeClaim | `accessModes` and `resources.requests.storage` required; `volumeMode: Filesystem`; `dataSourceRef` from `dataSource`; the default StorageClass; finalizer `kubernetes.io/pvc-protection` | spec immutable but `resources.requests` (bound), `volumeAttributesClassName`, and `volumeName` once |
//! | Secret | `stringData` into `data` (base64), `type: Opaque` | the same |
//! | StorageClass | `reclaimPolicy: Delete`, `volumeBindingMode: Immediate` | |
//! | Job | a pod template with containers and `restartPolicy` Never/OnFailure; selector and labels of its uid, `completions`/`parallelism`, `backoffLimit: 6`, `completionMode`, `suspend`, `podReplacementPolicy`, `manualSelector`; the pod template's defaults; `status: {}` | template, selector and completions immutable |
//! | Pod | the pod defaults below, service account `default`, the two `NoExecute` tolerations, priority 0, `qosClass` | |
//!
//! Pod (and pod template) defaults: `terminationGracePeriodSeconds: 30`, `dnsPolicy:
//! ClusterFirst`, `securityContext: {}`, `schedulerName: default-scheduler`; each container's
//! `terminationMessagePath`, `terminationMessagePolicy`, `imagePullPolicy` (Always for
//! `:latest` or no tag), `resources: {}`, ports' `protocol: TCP`; volumes' `defaultMode: 420`.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::resources::{self, ResourceDef};

/// The store's objects, by resource index, as admission reads them (other objects: the
/// namespace, StorageClasses).
pub(crate) type Objects = [BTreeMap<(String, String), Value>];

/// `kubernetes.io/pvc-protection`.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";

/// The annotation marking the default StorageClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

fn round_trip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(t).map_err(|e| e.to_string())
}

type RoundTrip = fn(&Value) -> Result<Value, String>;

/// The k8s-openapi type a built-in resource decodes into (CRDs: none, kept as sent).
fn typed(res: &ResourceDef) -> Option<RoundTrip> {
    use k8s_openapi::api::{batch, core, events, rbac, storage};
    Some(match (res.group, res.plural) {
        ("", "namespaces") => round_trip::<core::v1::Namespace>,
        ("", "persistentvolumeclaims") => round_trip::<core::v1::PersistentVolumeClaim>,
        ("", "persistentvolumes") => round_trip::<core::v1::PersistentVolume>,
        ("", "secrets") => round_trip::<core::v1::Secret>,
        ("", "serviceaccounts") => round_trip::<core::v1::ServiceAccount>,
        ("", "configmaps") => round_trip::<core::v1::ConfigMap>,
        ("", "pods") => round_trip::<core::v1::Pod>,
        ("", "events") => round_trip::<core::v1::Event>,
        ("batch", "jobs") => round_trip::<batch::v1::Job>,
        ("events.k8s.io", "events") => round_trip::<events::v1::Event>,
        ("storage.k8s.io", "storageclasses") => round_trip::<storage::v1::StorageClass>,
        ("rbac.authorization.k8s.io", "roles") => round_trip::<rbac::v1::Role>,
        ("rbac.authorization.k8s.io", "rolebindings") => round_trip::<rbac::v1::RoleBinding>,
        ("rbac.authorization.k8s.io", "clusterroles") => round_trip::<rbac::v1::ClusterRole>,
        ("rbac.authorization.k8s.io", "clusterrolebindings") => {
            round_trip::<rbac::v1::ClusterRoleBinding>
        }
        _ => return None,
    })
}

/// `Kind.group` as the API server names a kind in messages (`Job.batch`), or `Kind`.
pub(crate) fn qualified_kind(res: &ResourceDef) -> String {
    if res.group.is_empty() {
        res.kind.to_string()
    } else {
        format!("{}.{}", res.kind, res.group)
    }
}

/// The paths of members of `sent` that `kept` does not have (dropped as unknown).
fn dropped(sent: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(w) => dropped(v, w, &p, out),
                    None => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                dropped(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes `obj` as the API server does: into its kind's type, dropping unknown fields
/// (`strict`: refusing them, 400) and nulls; a body that does not decode is 400.
pub(crate) fn decode(res: &ResourceDef, obj: &mut Value, strict: bool) -> Result<(), ApiError> {
    let Some(round_trip) = typed(res) else {
        return Ok(());
    };
    let cannot = |why: String| {
        ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {why}",
            kind = res.kind,
            v = res.version
        ))
    };
    let kept = round_trip(obj).map_err(cannot)?;
    if strict {
        let mut unknown = Vec::new();
        dropped(obj, &kept, "", &mut unknown);
        if !unknown.is_empty() {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            return Err(cannot(format!(
                "strict decoding error: {}",
                list.join(", ")
            )));
        }
    }
    *obj = kept;
    drop_empty_metadata(obj);
    Ok(())
}

/// Empty lists and maps of `metadata` are omitted on the wire (Go's `omitempty`).
fn drop_empty_metadata(obj: &mut Value) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.retain(|_, v| match v {
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => true,
        });
    }
}

/// One cause of a 422 Invalid.
#[derive(Debug, Clone)]
pub(crate) struct Cause {
    reason: &'static str,
    field: String,
    message: String,
}

fn required(field: &str, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired",
        field: field.to_owned(),
        message: if detail.is_empty() {
            "Required value".to_owned()
        } else {
            format!("Required value: {detail}")
        },
    }
}

fn forbidden(field: &str, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueForbidden",
        field: field.to_owned(),
        message: format!("Forbidden: {detail}"),
    }
}

fn invalid_value(field: &str, value: &Value, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        field: field.to_owned(),
        message: format!("Invalid value: {}: {detail}", go_value(value)),
    }
}

fn not_supported(field: &str, value: &str, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
    Cause {
        reason: "FieldValueNotSupported",
        field: field.to_owned(),
        message: format!(
            "Unsupported value: \"{value}\": supported values: {}",
            list.join(", ")
        ),
    }
}

/// A value as the API server quotes it in a message (strings quoted, objects as JSON).
fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// 422 Invalid of `kind "name"` with these causes, worded as the API server words it.
pub(crate) fn invalid(res: &ResourceDef, name: &str, causes: Vec<Cause>) -> ApiError {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    let what = if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    };
    let mut e = ApiError::new(
        422,
        "Invalid",
        format!("{} \"{name}\" is invalid: {what}", qualified_kind(res)),
    )
    .with_details(res.group, res.kind, name);
    for c in causes {
        e = e.with_cause(c.reason, &c.message, &c.field);
    }
    e
}

fn lookup(objects: &Objects, res: &ResourceDef, ns: &str, name: &str) -> Option<Value> {
    objects[resources::index_of(res)]
        .get(&(ns.to_owned(), name.to_owned()))
        .cloned()
}

/// 404 for an object in a namespace that does not exist (the NamespaceLifecycle plugin).
pub(crate) fn namespace_exists(objects: &Objects, ns: &str) -> Result<(), ApiError> {
    let namespaces = resources::find_plural("", "namespaces").expect("namespaces");
    match lookup(objects, namespaces, "", ns) {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found("", "namespaces", ns)),
    }
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    let m = v.as_object_mut().expect("object");
    let e = m.entry(key).or_insert_with(|| json!({}));
    if !e.is_object() {
        *e = json!({});
    }
    e.as_object_mut().expect("object")
}

fn set_default(m: &mut Map<String, Value>, key: &str, value: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_owned(), value);
    }
}

/// The defaults and validation of a created object (`uid` is the one it gets).
pub(crate) fn on_create(
    objects: &Objects,
    res: &ResourceDef,
    obj: &mut Value,
    uid: &str,
) -> Result<(), ApiError> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
    match (res.group, res.plural) {
        ("", "namespaces") => {
            obj_mut(&mut obj["metadata"], "labels")
                .insert("kubernetes.io/metadata.name".into(), json!(name));
            set_default(obj_mut(obj, "spec"), "finalizers", json!(["kubernetes"]));
        }
        ("", "persistentvolumeclaims") => {
            validate_pvc(res, &name, obj)?;
            default_pvc(obj);
            if obj["spec"]
                .get("storageClassName")
                .is_none_or(Value::is_null)
                && let Some(class) = default_storage_class(objects)
            {
                obj["spec"]["storageClassName"] = json!(class);
            }
            add_finalizer(obj, PVC_PROTECTION);
        }
        ("", "secrets") => default_secret(obj),
        ("storage.k8s.io", "storageclasses") => {
            let m = obj.as_object_mut().expect("object");
            set_default(m, "reclaimPolicy", json!("Delete"));
            set_default(m, "volumeBindingMode", json!("Immediate"));
        }
        ("batch", "jobs") => {
            validate_job(res, &name, obj)?;
            default_job(obj, &name, uid);
        }
        ("", "pods") => default_pod(obj),
        _ => {}
    }
    Ok(())
}

/// The defaults and validation of an updated object (`old` is the stored one).
pub(crate) fn on_update(res: &ResourceDef, old: &Value, obj: &mut Value) -> Result<(), ApiError> {
    let name = old["metadata"]["name"].as_str().unwrap_or("").to_owned();
    match (res.group, res.plural) {
        // An object stored without defaults (by a controller or test setup) is compared as
        // it would have been defaulted.
        ("", "persistentvolumeclaims") => {
            default_pvc(obj);
            let mut before = old.clone();
            default_pvc(&mut before);
            pvc_immutable(res, &name, &before, obj)?;
        }
        ("", "secrets") => default_secret(obj),
        ("batch", "jobs") => {
            // The selector and the template labels stay as they were made.
            let uid = old["metadata"]["uid"].as_str().unwrap_or("").to_owned();
            if obj["spec"]["template"].is_object() {
                default_job(obj, &name, &uid);
            }
            let mut before = old.clone();
            if before["spec"]["template"].is_object() {
                default_job(&mut before, &name, &uid);
            }
            job_immutable(res, &name, &before, obj)?;
        }
        ("", "pods") => default_pod(obj),
        _ => {}
    }
    Ok(())
}

fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let meta = obj_mut(obj, "metadata");
    let list = meta.entry("finalizers").or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    let arr = list.as_array_mut().expect("array");
    if !arr.iter().any(|f| f == finalizer) {
        arr.push(json!(finalizer));
    }
}

fn validate_pvc(res: &ResourceDef, name: &str, obj: &Value) -> Result<(), ApiError> {
    let spec = &obj["spec"];
    let mut causes = Vec::new();
    if spec["accessModes"].as_array().is_none_or(Vec::is_empty) {
        causes.push(required(
            "spec.accessModes",
            "at least 1 access mode is required",
        ));
    }
    if spec["resources"]["requests"]["storage"].is_null() {
        causes.push(required("spec.resources[storage]", ""));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(res, name, causes))
    }
}

fn default_pvc(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    set_default(spec, "volumeMode", json!("Filesystem"));
    if let Some(ds) = spec.get("dataSource").filter(|d| d.is_object()).cloned() {
        set_default(spec, "dataSourceRef", ds);
    }
}

/// The newest StorageClass annotated as the default, if any.
fn default_storage_class(objects: &Objects) -> Option<String> {
    let classes = resources::find_plural("storage.k8s.io", "storageclasses")?;
    objects[resources::index_of(classes)]
        .values()
        .filter(|c| {
            let a = &c["metadata"]["annotations"];
            a[DEFAULT_CLASS_ANNOTATION] == "true"
                || a["storageclass.beta.kubernetes.io/is-default-class"] == "true"
        })
        .max_by(|a, b| {
            let t = |c: &Value| {
                c["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            };
            let n = |c: &Value| c["metadata"]["name"].as_str().unwrap_or("").to_owned();
            (t(a), std::cmp::Reverse(n(a))).cmp(&(t(b), std::cmp::Reverse(n(b))))
        })
        .and_then(|c| c["metadata"]["name"].as_str().map(str::to_owned))
}

fn pvc_immutable(res: &ResourceDef, name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    let (mut a, mut b) = (old["spec"].clone(), new["spec"].clone());
    let bound = old["status"]["phase"] == "Bound";
    for spec in [&mut a, &mut b] {
        if let Some(m) = spec.as_object_mut() {
            m.remove("volumeAttributesClassName");
            if bound && let Some(r) = m.get_mut("resources").and_then(Value::as_object_mut) {
                r.remove("requests");
            }
        }
    }
    if old["spec"]["volumeName"].as_str().is_none_or(str::is_empty) {
        for spec in [&mut a, &mut b] {
            spec.as_object_mut().map(|m| m.remove("volumeName"));
        }
    }
    if a == b {
        return Ok(());
    }
    Err(invalid(
        res,
        name,
        vec![forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        )],
    ))
}

fn default_secret(obj: &mut Value) {
    let Some(m) = obj.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(string_data)) = m.remove("stringData") {
        let data = m.entry("data").or_insert_with(|| json!({}));
        if !data.is_object() {
            *data = json!({});
        }
        let data = data.as_object_mut().expect("object");
        for (k, v) in string_data {
            let text = v.as_str().unwrap_or("").to_owned();
            data.insert(
                k,
                json!(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
    }
    set_default(m, "type", json!("Opaque"));
}

fn validate_job(res: &ResourceDef, name: &str, obj: &Value) -> Result<(), ApiError> {
    let pod = &obj["spec"]["template"]["spec"];
    let mut causes = Vec::new();
    if pod["containers"].as_array().is_none_or(Vec::is_empty) {
        causes.push(required("spec.template.spec.containers", ""));
    }
    match pod["restartPolicy"].as_str() {
        None | Some("") => causes.push(required(
            "spec.template.spec.restartPolicy",
            "valid values: \"OnFailure\", \"Never\"",
        )),
        Some("OnFailure" | "Never") => {}
        Some(other) => causes.push(not_supported(
            "spec.template.spec.restartPolicy",
            other,
            &["OnFailure", "Never"],
        )),
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(res, name, causes))
    }
}

fn default_job(obj: &mut Value, name: &str, uid: &str) {
    let spec = obj_mut(obj, "spec");
    let has_completions = spec.get("completions").is_some_and(|c| !c.is_null());
    let has_parallelism = spec.get("parallelism").is_some_and(|c| !c.is_null());
    if !has_completions && !has_parallelism {
        spec.insert("completions".into(), json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    let replacement = if spec.get("podFailurePolicy").is_some_and(|p| !p.is_null()) {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    set_default(spec, "podReplacementPolicy", json!(replacement));
    let manual = spec.get("manualSelector") == Some(&json!(true));
    if !manual {
        spec.insert("manualSelector".into(), json!(false));
        set_default(
            spec,
            "selector",
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
        let template = spec.entry("template").or_insert_with(|| json!({}));
        let labels = obj_mut(obj_mut_value(template, "metadata"), "labels");
        for (k, v) in [
            ("batch.kubernetes.io/controller-uid", uid),
            ("batch.kubernetes.io/job-name", name),
            ("controller-uid", uid),
            ("job-name", name),
        ] {
            labels.entry(k).or_insert_with(|| json!(v));
        }
    }
    if let Some(pod) = obj["spec"]["template"].get_mut("spec") {
        default_pod_spec(pod);
    }
    set_default(obj.as_object_mut().expect("object"), "status", json!({}));
}

fn obj_mut_value<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    obj_mut(v, key);
    v.get_mut(key).expect("inserted")
}

fn job_immutable(res: &ResourceDef, name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    for field in ["template", "selector", "completions"] {
        let (a, b) = (&old["spec"][field], &new["spec"][field]);
        if a != b {
            causes.push(invalid_value(
                &format!("spec.{field}"),
                b,
                "field is immutable",
            ));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(res, name, causes))
    }
}

/// `Always` for `:latest` or an image without a tag or digest, else `IfNotPresent`.
fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_containers(list: Option<&mut Value>) {
    let Some(list) = list.and_then(Value::as_array_mut) else {
        return;
    };
    for c in list.iter_mut().filter_map(Value::as_object_mut) {
        set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
        set_default(c, "terminationMessagePolicy", json!("File"));
        let image = c
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        set_default(c, "imagePullPolicy", json!(pull_policy(&image)));
        set_default(c, "resources", json!({}));
        if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                set_default(p, "protocol", json!("TCP"));
            }
        }
        if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
            for e in env.iter_mut() {
                if let Some(f) = e
                    .get_mut("valueFrom")
                    .and_then(|v| v.get_mut("fieldRef"))
                    .and_then(Value::as_object_mut)
                {
                    set_default(f, "apiVersion", json!("v1"));
                }
            }
        }
    }
}

/// The defaults of a pod spec (in a pod or a pod template).
fn default_pod_spec(spec: &mut Value) {
    let Some(m) = spec.as_object_mut() else {
        return;
    };
    set_default(m, "restartPolicy", json!("Always"));
    set_default(m, "terminationGracePeriodSeconds", json!(30));
    set_default(m, "dnsPolicy", json!("ClusterFirst"));
    set_default(m, "securityContext", json!({}));
    set_default(m, "schedulerName", json!("default-scheduler"));
    default_containers(m.get_mut("containers"));
    default_containers(m.get_mut("initContainers"));
    if let Some(volumes) = m.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in volumes.iter_mut().filter_map(Value::as_object_mut) {
            for source in ["secret", "configMap", "projected", "downwardAPI"] {
                if let Some(s) = v.get_mut(source).and_then(Value::as_object_mut) {
                    set_default(s, "defaultMode", json!(420));
                }
            }
        }
    }
}

/// The defaults of a pod (also of the pods the simulated Job controller makes).
pub(crate) fn default_pod(obj: &mut Value) {
    let spec = obj_mut_value(obj, "spec");
    default_pod_spec(spec);
    let m = spec.as_object_mut().expect("object");
    set_default(m, "serviceAccountName", json!("default"));
    let sa = m["serviceAccountName"].clone();
    set_default(m, "serviceAccount", sa);
    set_default(m, "enableServiceLinks", json!(true));
    set_default(m, "priority", json!(0));
    set_default(m, "preemptionPolicy", json!("PreemptLowerPriority"));
    let tolerations = m.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(t) = tolerations.as_array_mut() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            if !t.iter().any(|x| x["key"] == key) {
                t.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
    let qos = qos_class(&obj["spec"]);
    let status = obj_mut(obj, "status");
    set_default(status, "phase", json!("Pending"));
    set_default(status, "qosClass", json!(qos));
}

/// `BestEffort` without requests or limits, `Guaranteed` when every container's cpu and
/// memory limits equal its requests, else `Burstable`.
fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = spec["containers"]
        .as_array()
        .map(|c| c.iter().collect())
        .unwrap_or_default();
    let empty = |v: &Value| v.as_object().is_none_or(Map::is_empty);
    if containers
        .iter()
        .all(|c| empty(&c["resources"]["requests"]) && empty(&c["resources"]["limits"]))
    {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        let (req, lim) = (&c["resources"]["requests"], &c["resources"]["limits"]);
        ["cpu", "memory"]
            .iter()
            .all(|r| !lim[r].is_null() && (req[r].is_null() || req[r] == lim[r]))
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_pull_policy_follows_the_tag() {
        for (image, want) in [
            ("busybox", "Always"),
            ("busybox:latest", "Always"),
            ("busybox:1.36", "IfNotPresent"),
            ("registry:5000/x", "Always"),
            ("registry:5000/x:1", "IfNotPresent"),
            ("x@sha256:00", "IfNotPresent"),
        ] {
            assert_eq!(pull_policy(image), want, "{image}");
        }
    }

    #[test]
    fn strict_decoding_names_every_unknown_field() {
        let pvcs = resources::find_plural("", "persistentvolumeclaims").unwrap();
        let mut pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "x", "bogus": 1},
            "spec": {"accessModes": ["ReadWriteOnce"], "moon": "large"}});
        let e = decode(pvcs, &mut pvc.clone(), true).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(
            e.message.ends_with(
                "strict decoding error: unknown field \"metadata.bogus\", unknown field \"spec.moon\""
            ),
            "{}",
            e.message
        );
        decode(pvcs, &mut pvc, false).unwrap();
        assert!(pvc["spec"].get("moon").is_none() && pvc["metadata"].get("bogus").is_none());
    }
}
