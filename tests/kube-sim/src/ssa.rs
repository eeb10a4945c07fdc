//! Field ownership, as server-side apply keeps it in `metadata.managedFields`: each manager
//! owns the leaves it set (an Apply: those its configuration names; an Update: those it
//! changed, taken from whoever owned them). An apply that sets a leaf another manager owns to
//! another value is a 409 Conflict unless forced (then the leaf changes owner); a leaf a
//! manager applied before and leaves out now is removed, unless someone else owns it too.
//!
//! Simplified against the real structured-merge-diff: lists are atomic (owned whole, not
//! element by element by their merge keys), and field paths are their JSON keys.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::error::ApiError;

type Path = Vec<String>;

/// Members that are nobody's fields.
fn ignored(path: &[String]) -> bool {
    match path {
        [first] => matches!(first.as_str(), "apiVersion" | "kind" | "status"),
        [first, second, ..] if first == "metadata" => matches!(
            second.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "managedFields"
                | "selfLink"
        ),
        [first, ..] => first == "status",
        [] => true,
    }
}

fn collect(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                prefix.push(k.clone());
                collect(x, prefix, out);
                prefix.pop();
            }
        }
        _ => {
            if !ignored(prefix) {
                out.insert(prefix.clone());
            }
        }
    }
}

/// The leaves of an object (scalars, lists, empty objects), as paths.
fn leaves(v: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    collect(v, &mut Vec::new(), &mut out);
    out
}

fn value_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn remove_at(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if let Some(Value::Object(m)) = parents.iter().try_fold(&mut *v, |v, k| v.get_mut(k)) {
        m.remove(last);
    }
    // A map left empty by the removal goes too.
    if !parents.is_empty()
        && value_at(v, parents).is_some_and(|p| p.as_object().is_some_and(Map::is_empty))
    {
        remove_at(v, parents);
    }
}

/// `fieldsV1` of a set of paths: `{"f:data": {"f:k1": {}}}`.
fn fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = json!({});
    for p in paths {
        let mut at = &mut root;
        for k in p {
            at = at
                .as_object_mut()
                .expect("object")
                .entry(format!("f:{k}"))
                .or_insert_with(|| json!({}));
        }
    }
    root
}

fn paths_of(fields: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    let Some(m) = fields.as_object() else {
        return;
    };
    let children: Vec<(&String, &Value)> = m.iter().filter(|(k, _)| k.starts_with("f:")).collect();
    if children.is_empty() && !prefix.is_empty() {
        out.insert(prefix.clone());
        return;
    }
    for (k, v) in children {
        prefix.push(k[2..].to_owned());
        paths_of(v, prefix, out);
        prefix.pop();
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    paths: BTreeSet<Path>,
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| {
                    let mut paths = BTreeSet::new();
                    paths_of(&e["fieldsV1"], &mut Vec::new(), &mut paths);
                    Entry {
                        manager: e["manager"].as_str().unwrap_or("").to_owned(),
                        operation: e["operation"].as_str().unwrap_or("").to_owned(),
                        api_version: e["apiVersion"].as_str().unwrap_or("").to_owned(),
                        time: e["time"].as_str().unwrap_or("").to_owned(),
                        paths,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

fn store_entries(obj: &mut Value, list: Vec<Entry>) {
    let list: Vec<Value> = list
        .into_iter()
        .filter(|e| !e.paths.is_empty())
        .map(|e| {
            json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": fields_v1(&e.paths),
            })
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn put(
    list: &mut Vec<Entry>,
    manager: &str,
    operation: &str,
    api_version: &str,
    paths: BTreeSet<Path>,
) {
    let now = crate::store::now_timestamp();
    match list
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == operation)
    {
        Some(e) => {
            e.paths = paths;
            e.time = now;
            e.api_version = api_version.to_owned();
        }
        None => list.push(Entry {
            manager: manager.to_owned(),
            operation: operation.to_owned(),
            api_version: api_version.to_owned(),
            time: now,
            paths,
        }),
    }
}

/// Records an Update by `manager` from `old` (none: a create) to `new`: it owns the leaves it
/// changed, from now on alone.
pub(crate) fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
) {
    let mut list = match old {
        Some(o) => entries(o),
        None => Vec::new(),
    };
    let before = old.map(leaves).unwrap_or_default();
    let after = leaves(new);
    let changed: BTreeSet<Path> = after
        .iter()
        .filter(|p| !before.contains(*p) || old.and_then(|o| value_at(o, p)) != value_at(new, p))
        .cloned()
        .collect();
    for e in list.iter_mut() {
        e.paths
            .retain(|p| !changed.contains(p) && after.contains(p));
    }
    let mut mine = list
        .iter()
        .find(|e| e.manager == manager && e.operation == "Update")
        .map(|e| e.paths.clone())
        .unwrap_or_default();
    mine.extend(changed);
    put(&mut list, manager, "Update", api_version, mine);
    store_entries(new, list);
}

fn merge_into(target: &mut Value, config: &Value) {
    match (target, config) {
        (Value::Object(t), Value::Object(c)) => {
            for (k, v) in c {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge_into(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, c) => *t = c.clone(),
    }
}

/// Server-side apply of `config` by `manager` to `current`: the object to store (with its
/// `managedFields`), or 409 Conflict naming each field another manager owns with another
/// value (unless `force`).
pub(crate) fn apply(
    current: &Value,
    config: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
) -> Result<Value, ApiError> {
    let mut list = entries(current);
    let applied = leaves(config);
    let mut conflicts: Vec<(String, Path)> = Vec::new();
    for e in list.iter().filter(|e| e.manager != manager) {
        for p in e.paths.intersection(&applied) {
            if value_at(current, p) != value_at(config, p) {
                conflicts.push((e.manager.clone(), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict(&conflicts));
    }
    let before = list
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply")
        .map(|e| e.paths.clone())
        .unwrap_or_default();
    let mut merged = current.clone();
    for p in before.difference(&applied) {
        let shared = list
            .iter()
            .any(|e| !(e.manager == manager && e.operation == "Apply") && e.paths.contains(p));
        if !shared {
            remove_at(&mut merged, p);
        }
    }
    let mut body = config.clone();
    if let Some(m) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    merge_into(&mut merged, &body);
    if force {
        for e in list
            .iter_mut()
            .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        {
            e.paths.retain(|p| !conflicts.iter().any(|(_, c)| c == p));
        }
    }
    put(&mut list, manager, "Apply", api_version, applied);
    store_entries(&mut merged, list);
    Ok(merged)
}

/// The 409 of an apply, worded as the API server words it.
fn conflict(conflicts: &[(String, Path)]) -> ApiError {
    let field = |p: &Path| format!(".{}", p.join("."));
    let n = conflicts.len();
    let managers: BTreeSet<&String> = conflicts.iter().map(|(m, _)| m).collect();
    let detail = if n == 1 {
        format!(
            "conflict with \"{}\": {}",
            conflicts[0].0,
            field(&conflicts[0].1)
        )
    } else if managers.len() == 1 {
        let list: Vec<String> = conflicts
            .iter()
            .map(|(_, p)| format!("- {}", field(p)))
            .collect();
        format!(
            "conflicts with \"{}\":\n{}",
            conflicts[0].0,
            list.join("\n")
        )
    } else {
        let list: Vec<String> = conflicts
            .iter()
            .map(|(m, p)| format!("conflict with \"{m}\": {}", field(p)))
            .collect();
        list.join("\n")
    };
    let plural = if n == 1 { "" } else { "s" };
    let mut e = ApiError::new(
        409,
        "Conflict",
        format!("Apply failed with {n} conflict{plural}: {detail}"),
    );
    for (m, p) in conflicts {
        e = e.with_cause(
            "FieldManagerConflict",
            &format!("conflict with \"{m}\""),
            &field(p),
        );
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data})
    }

    #[test]
    fn apply_removes_what_it_no_longer_names_and_conflicts_with_other_owners() {
        let created = apply(
            &json!({}),
            &cm(json!({"k1": "1", "k2": "2"})),
            "a",
            false,
            "v1",
        )
        .unwrap();
        let dropped = apply(&created, &cm(json!({"k1": "1"})), "a", false, "v1").unwrap();
        assert_eq!(dropped["data"], json!({"k1": "1"}));
        let e = apply(&dropped, &cm(json!({"k1": "other"})), "b", false, "v1").unwrap_err();
        assert_eq!(e.code, 409);
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"a\": .data.k1"
        );
        // The same value is shared ownership, not a conflict.
        let shared = apply(&dropped, &cm(json!({"k1": "1"})), "b", false, "v1").unwrap();
        let forced = apply(&shared, &cm(json!({"k1": "x"})), "b", true, "v1").unwrap();
        assert_eq!(forced["data"]["k1"], "x");
        // An update takes the fields it changes.
        let mut updated = forced.clone();
        updated["data"]["k1"] = json!("y");
        record_update(Some(&forced), &mut updated, "kubectl", "v1");
        let e = apply(&updated, &cm(json!({"k1": "z"})), "b", false, "v1").unwrap_err();
        assert!(
            e.message.contains("conflict with \"kubectl\""),
            "{}",
            e.message
        );
    }
}
