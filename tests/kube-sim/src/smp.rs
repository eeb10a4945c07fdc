//! Strategic merge patch (`application/strategic-merge-patch+json`, what `kubectl apply`,
//! `annotate` and `patch` send for built-in kinds), as the API server applies it: a JSON merge
//! patch, except that lists with a merge key are merged element by element (containers by
//! name, volume mounts by mount path, ...), `finalizers` are merged as a set, and the
//! directives `$patch` (`replace`, `delete`), `$setElementOrder/<list>`,
//! `$deleteFromPrimitiveList/<list>` and `$retainKeys` are honoured.
//!
//! The patch strategy of a list is looked up by its field name (the API's Go struct tags give
//! it per type; the names below mean the same list wherever they appear in the kinds served).

use serde_json::{Map, Value};

/// The merge key of a list field merged element by element, by the field's name.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" => "containerPort",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Lists of scalars merged as a set (`patchStrategy: merge` on a list of strings).
fn merged_primitive_list(field: &str) -> bool {
    matches!(field, "finalizers")
}

/// Applies `patch` to `target` in place.
pub(crate) fn apply(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if p.get("$patch").and_then(Value::as_str) == Some("replace") {
                let mut replaced = p.clone();
                replaced.remove("$patch");
                *target = Value::Object(strip_directives(replaced));
                return;
            }
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            merge_map(t, p);
        }
        other => *target = other.clone(),
    }
}

fn strip_directives(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|k, _| !k.starts_with('$'));
    for v in m.values_mut() {
        if let Value::Object(inner) = v {
            *inner = strip_directives(std::mem::take(inner));
        }
    }
    m
}

fn merge_map(t: &mut Map<String, Value>, p: &Map<String, Value>) {
    let mut orders = Vec::new();
    let mut retain = None;
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field.to_owned(), v.clone()));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(gone)) = (t.get_mut(field), v.as_array()) {
                list.retain(|x| !gone.contains(x));
                if list.is_empty() {
                    t.remove(field);
                }
            }
            continue;
        }
        if k == "$retainKeys" {
            retain = v.as_array().cloned();
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(inner) => {
                if inner.get("$patch").and_then(Value::as_str) == Some("delete") {
                    t.remove(k);
                    continue;
                }
                let entry = t.entry(k.clone()).or_insert(Value::Null);
                apply(entry, v);
            }
            Value::Array(items) => {
                let merged = match t.remove(k) {
                    Some(Value::Array(current)) => merge_list(k, current, items),
                    _ => merge_list(k, Vec::new(), items),
                };
                t.insert(k.clone(), Value::Array(merged));
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
    for (field, order) in orders {
        if let (Some(Value::Array(list)), Some(order)) = (t.get_mut(&field), order.as_array()) {
            reorder(&field, list, order);
        }
    }
    if let Some(keep) = retain {
        t.retain(|k, _| keep.iter().any(|x| x == k));
    }
}

fn merge_list(field: &str, mut current: Vec<Value>, patch: &[Value]) -> Vec<Value> {
    let replace = patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"));
    let elements: Vec<&Value> = patch
        .iter()
        .filter(|e| e.get("$patch").and_then(Value::as_str) != Some("replace"))
        .collect();
    if replace {
        return elements.into_iter().cloned().collect();
    }
    if merged_primitive_list(field) {
        // The patch's values first, then those only the object had.
        let mut merged: Vec<Value> = Vec::new();
        for e in elements.into_iter().chain(current.iter()) {
            if !merged.contains(e) {
                merged.push(e.clone());
            }
        }
        return merged;
    }
    let Some(key) = merge_key(field) else {
        return elements.into_iter().cloned().collect();
    };
    for e in elements {
        let id = &e[key];
        let at = current.iter().position(|c| &c[key] == id);
        let delete = e.get("$patch").and_then(Value::as_str) == Some("delete");
        match (at, delete) {
            (Some(i), true) => {
                current.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => apply(&mut current[i], e),
            (None, false) => {
                let mut fresh = Value::Object(Map::new());
                apply(&mut fresh, e);
                current.push(fresh);
            }
        }
    }
    current
}

/// Puts the elements `order` names first, in its order; the others keep theirs, after.
fn reorder(field: &str, list: &mut Vec<Value>, order: &[Value]) {
    let position = |v: &Value| match merge_key(field) {
        Some(key) => order.iter().position(|o| o[key] == v[key]),
        None => order.iter().position(|o| o == v),
    };
    let mut indexed: Vec<(usize, usize, Value)> = list
        .drain(..)
        .enumerate()
        .map(|(i, v)| (position(&v).unwrap_or(usize::MAX), i, v))
        .collect();
    indexed.sort_by_key(|(p, i, _)| (*p, *i));
    list.extend(indexed.into_iter().map(|(_, _, v)| v));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_with_a_merge_key_merge_by_it_and_directives_apply() {
        let mut pod = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1"}},
            "spec": {"containers": [
                {"name": "app", "image": "v1", "command": ["sleep"], "env": [{"name": "A", "value": "a"}]},
                {"name": "side", "image": "s1"},
            ], "tolerations": [{"key": "t"}]}});
        apply(
            &mut pod,
            &json!({"metadata": {"finalizers": ["b"], "labels": {"x": null}},
                "spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
                         "containers": [{"name": "app", "image": "v2"}],
                         "tolerations": [{"key": "u"}]}}),
        );
        assert_eq!(
            pod,
            json!({"metadata": {"finalizers": ["b", "a"], "labels": {}},
                "spec": {"containers": [
                    {"name": "side", "image": "s1"},
                    {"name": "app", "image": "v2", "command": ["sleep"], "env": [{"name": "A", "value": "a"}]},
                ], "tolerations": [{"key": "u"}]}})
        );
        apply(
            &mut pod,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a", "b"]},
                "spec": {"containers": [{"name": "side", "$patch": "delete"}]}}),
        );
        assert_eq!(pod["metadata"].get("finalizers"), None);
        assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 1);
        apply(
            &mut pod,
            &json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "x"}]}}),
        );
        assert_eq!(
            pod["spec"]["containers"],
            json!([{"name": "only", "image": "x"}])
        );
    }
}
