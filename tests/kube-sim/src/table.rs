//! Minimal `meta.k8s.io/v1` `Table` responses, as `kubectl get` requests them
//! (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`).

use serde_json::{Value, json};

use crate::resources::ResourceDef;

/// Whether an `Accept` header asks for a Table.
pub(crate) fn wants_table(accept: &str) -> bool {
    accept.contains("as=Table")
}

/// Extra columns per resource: header and dotted JSON path.
fn extra_columns(res: &ResourceDef) -> &'static [(&'static str, &'static str)] {
    match (res.group, res.plural) {
        ("", "persistentvolumeclaims") => {
            &[("Status", "status.phase"), ("Volume", "spec.volumeName")]
        }
        ("", "persistentvolumes") => &[("Status", "status.phase"), ("Claim", "spec.claimRef.name")],
        ("", "pods") => &[("Status", "status.phase")],
        ("snapshot.storage.k8s.io", "volumesnapshots") => &[
            ("ReadyToUse", "status.readyToUse"),
            ("SnapshotContent", "status.boundVolumeSnapshotContentName"),
        ],
        ("batch", "jobs") => &[
            ("Succeeded", "status.succeeded"),
            ("Failed", "status.failed"),
        ],
        _ => &[],
    }
}

fn lookup(obj: &Value, path: &str) -> String {
    match path.split('.').try_fold(obj, |v, k| v.get(k)) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "<none>".into(),
        Some(v) => v.to_string(),
    }
}

/// Human-readable age of a creation timestamp (`5s`, `3m`, `2h`, `4d`).
fn age(obj: &Value) -> String {
    let Some(ts) = obj["metadata"]["creationTimestamp"].as_str() else {
        return "<unknown>".into();
    };
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(ts) else {
        return "<unknown>".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn row(res: &ResourceDef, obj: &Value, include_object: &str) -> Value {
    let mut cells = vec![obj["metadata"]["name"].clone()];
    for (_, path) in extra_columns(res) {
        cells.push(json!(lookup(obj, path)));
    }
    cells.push(json!(age(obj)));
    let object = match include_object {
        "None" => Value::Null,
        "Object" => obj.clone(),
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        }),
    };
    json!({"cells": cells, "object": object})
}

/// A Table of `objects`.
pub(crate) fn table(
    res: &ResourceDef,
    objects: &[Value],
    list_meta: Value,
    include_object: &str,
) -> Value {
    let mut columns = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    })];
    for (header, _) in extra_columns(res) {
        columns.push(json!({"name": header, "type": "string", "format": "", "priority": 0, "description": header}));
    }
    columns.push(json!({
        "name": "Age", "type": "string", "format": "", "priority": 0,
        "description": "CreationTimestamp is a timestamp representing the server time when this object was created.",
    }));
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": objects.iter().map(|o| row(res, o, include_object)).collect::<Vec<_>>(),
    })
}
