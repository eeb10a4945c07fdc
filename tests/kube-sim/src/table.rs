//! `meta.k8s.io/v1` `Table` responses, as `kubectl get` requests them
//! (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), with the columns the real API
//! server's printers (and, for the VolumeSnapshot CRDs, their `additionalPrinterColumns`)
//! give each kind; a kind without printers of its own gets Name and Age (and a cluster-scoped
//! or RBAC kind "Created At", as the real default printer does for them).

use serde_json::{Value, json};

use crate::resources::ResourceDef;

/// Whether an `Accept` header asks for a Table.
pub(crate) fn wants_table(accept: &str) -> bool {
    accept.contains("as=Table")
}

/// One column: header, type, priority (1: only with `-o wide`).
type Column = (&'static str, &'static str, u8);

fn columns(res: &ResourceDef) -> Vec<Column> {
    let mut c: Vec<Column> = vec![("Name", "string", 0)];
    let rest: &[Column] = match (res.group, res.plural) {
        ("", "persistentvolumeclaims") => &[
            ("Status", "string", 0),
            ("Volume", "string", 0),
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            ("Age", "string", 0),
            ("VolumeMode", "string", 1),
        ],
        ("", "persistentvolumes") => &[
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("Reclaim Policy", "string", 0),
            ("Status", "string", 0),
            ("Claim", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            ("Reason", "string", 0),
            ("Age", "string", 0),
            ("VolumeMode", "string", 1),
        ],
        ("", "pods") => &[
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        ("", "secrets") => &[
            ("Type", "string", 0),
            ("Data", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "configmaps") => &[("Data", "string", 0), ("Age", "string", 0)],
        ("", "serviceaccounts") => &[("Secrets", "string", 0), ("Age", "string", 0)],
        ("", "namespaces") => &[("Status", "string", 0), ("Age", "string", 0)],
        ("", "events") => &[
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ],
        ("batch", "jobs") => &[
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Duration", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        ("storage.k8s.io", "storageclasses") => &[
            ("Provisioner", "string", 0),
            ("ReclaimPolicy", "string", 0),
            ("VolumeBindingMode", "string", 0),
            ("AllowVolumeExpansion", "string", 0),
            ("Age", "string", 0),
        ],
        ("snapshot.storage.k8s.io", "volumesnapshots") => &[
            ("ReadyToUse", "boolean", 0),
            ("SourcePVC", "string", 0),
            ("SourceSnapshotContent", "string", 0),
            ("RestoreSize", "string", 0),
            ("SnapshotClass", "string", 0),
            ("SnapshotContent", "string", 0),
            ("CreationTime", "date", 0),
            ("Age", "date", 0),
        ],
        ("snapshot.storage.k8s.io", "volumesnapshotcontents") => &[
            ("ReadyToUse", "boolean", 0),
            ("RestoreSize", "integer", 0),
            ("DeletionPolicy", "string", 0),
            ("Driver", "string", 0),
            ("VolumeSnapshotClass", "string", 0),
            ("VolumeSnapshot", "string", 0),
            ("VolumeSnapshotNamespace", "string", 0),
            ("Age", "date", 0),
        ],
        ("snapshot.storage.k8s.io", "volumesnapshotclasses") => &[
            ("Driver", "string", 0),
            ("DeletionPolicy", "string", 0),
            ("Age", "date", 0),
        ],
        ("rbac.authorization.k8s.io", "roles" | "clusterroles") => &[("Created At", "string", 0)],
        ("rbac.authorization.k8s.io", "rolebindings") => &[
            ("Role", "string", 0),
            ("Age", "string", 0),
            ("Users", "string", 1),
            ("Groups", "string", 1),
            ("ServiceAccounts", "string", 1),
        ],
        ("rbac.authorization.k8s.io", "clusterrolebindings") => &[
            ("Role", "string", 0),
            ("Age", "string", 0),
            ("Users", "string", 1),
            ("Groups", "string", 1),
            ("ServiceAccounts", "string", 1),
        ],
        _ => &[("Age", "string", 0)],
    };
    c.extend_from_slice(rest);
    c
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Human-readable age of a timestamp (`5s`, `3m2s`, `2h`, `4d`), as kubectl's printers say it.
fn age_of(ts: Option<&str>) -> String {
    let Some(ts) = ts else {
        return "<unknown>".into();
    };
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(ts) else {
        return "<unknown>".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds();
    if secs < 0 {
        return "<invalid>".into();
    }
    human_duration(secs)
}

fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 8 * 86_400 => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn access_modes(modes: &Value) -> String {
    modes
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(Value::as_str)
                .map(|m| match m {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    other => other,
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn or_unset(v: &Value) -> String {
    match v.as_str() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "<unset>".into(),
    }
}

fn pod_status(pod: &Value) -> String {
    if pod["metadata"]["deletionTimestamp"].is_string() {
        return "Terminating".into();
    }
    let waiting_or_ended = pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| {
            cs.iter().find_map(|c| {
                c["state"]["waiting"]["reason"]
                    .as_str()
                    .or(c["state"]["terminated"]["reason"].as_str())
            })
        });
    match waiting_or_ended {
        Some(r) => r.to_string(),
        None => pod["status"]["reason"]
            .as_str()
            .or(pod["status"]["phase"].as_str())
            .unwrap_or("Unknown")
            .to_string(),
    }
}

fn job_status(job: &Value) -> String {
    let conditions = job["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let is = |t: &str| {
        conditions
            .iter()
            .any(|c| c["type"] == t && c["status"] == "True")
    };
    if is("Failed") {
        "Failed".into()
    } else if is("Complete") {
        "Complete".into()
    } else if is("Suspended") {
        "Suspended".into()
    } else if is("FailureTarget") {
        "FailureTarget".into()
    } else if is("SuccessCriteriaMet") {
        "SuccessCriteriaMet".into()
    } else if job["metadata"]["deletionTimestamp"].is_string() {
        "Terminating".into()
    } else {
        "Running".into()
    }
}

fn cells(res: &ResourceDef, obj: &Value) -> Vec<Value> {
    let age = || json!(age_of(obj["metadata"]["creationTimestamp"].as_str()));
    let name = obj["metadata"]["name"].clone();
    let s = &obj["spec"];
    let st = &obj["status"];
    let mut row = vec![name];
    let rest: Vec<Value> = match (res.group, res.plural) {
        ("", "persistentvolumeclaims") => vec![
            json!(text(&st["phase"])),
            json!(text(&s["volumeName"])),
            json!(text(&st["capacity"]["storage"])),
            json!(access_modes(&st["accessModes"])),
            json!(text(&s["storageClassName"])),
            json!(or_unset(&s["volumeAttributesClassName"])),
            age(),
            json!(text(&s["volumeMode"])),
        ],
        ("", "persistentvolumes") => vec![
            json!(text(&s["capacity"]["storage"])),
            json!(access_modes(&s["accessModes"])),
            json!(text(&s["persistentVolumeReclaimPolicy"])),
            json!(text(&st["phase"])),
            json!(match s["claimRef"]["name"].as_str() {
                Some(n) => format!("{}/{n}", s["claimRef"]["namespace"].as_str().unwrap_or("")),
                None => String::new(),
            }),
            json!(text(&s["storageClassName"])),
            json!(or_unset(&s["volumeAttributesClassName"])),
            json!(text(&st["reason"])),
            age(),
            json!(text(&s["volumeMode"])),
        ],
        ("", "pods") => {
            let statuses = st["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let total = s["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = statuses
                .iter()
                .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                .sum();
            vec![
                json!(format!("{ready}/{total}")),
                json!(pod_status(obj)),
                json!(restarts.to_string()),
                age(),
                json!(st["podIP"].as_str().unwrap_or("<none>")),
                json!(s["nodeName"].as_str().unwrap_or("<none>")),
                json!(st["nominatedNodeName"].as_str().unwrap_or("<none>")),
                json!("<none>"),
            ]
        }
        ("", "secrets") => vec![
            json!(text(&obj["type"])),
            json!(obj["data"].as_object().map_or(0, |d| d.len())),
            age(),
        ],
        ("", "configmaps") => vec![
            json!(
                obj["data"].as_object().map_or(0, |d| d.len())
                    + obj["binaryData"].as_object().map_or(0, |d| d.len())
            ),
            age(),
        ],
        ("", "serviceaccounts") => {
            vec![json!(obj["secrets"].as_array().map_or(0, Vec::len)), age()]
        }
        ("", "namespaces") => vec![json!(text(&st["phase"])), age()],
        ("", "events") => {
            let last = obj["lastTimestamp"]
                .as_str()
                .or(obj["eventTime"].as_str())
                .or(obj["metadata"]["creationTimestamp"].as_str());
            let o = &obj["involvedObject"];
            vec![
                json!(age_of(last)),
                json!(text(&obj["type"])),
                json!(text(&obj["reason"])),
                json!(format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or("").to_ascii_lowercase(),
                    o["name"].as_str().unwrap_or("")
                )),
                json!(text(&obj["message"])),
            ]
        }
        ("batch", "jobs") => {
            let succeeded = st["succeeded"].as_i64().unwrap_or(0);
            let completions = match s["completions"].as_i64() {
                Some(c) => format!("{succeeded}/{c}"),
                None => format!(
                    "{succeeded}/1 of {}",
                    s["parallelism"].as_i64().unwrap_or(1)
                ),
            };
            let duration = match st["startTime"].as_str() {
                None => String::new(),
                Some(start) => {
                    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
                    let end = st["completionTime"]
                        .as_str()
                        .and_then(parse)
                        .map(|t| t.with_timezone(&chrono::Utc))
                        .unwrap_or_else(chrono::Utc::now);
                    parse(start)
                        .map(|t| {
                            human_duration(
                                (end - t.with_timezone(&chrono::Utc)).num_seconds().max(0),
                            )
                        })
                        .unwrap_or_default()
                }
            };
            let containers = s["template"]["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let join = |k: &str| {
                containers
                    .iter()
                    .filter_map(|c| c[k].as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let selector = s["selector"]["matchLabels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", text(v)))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                json!(job_status(obj)),
                json!(completions),
                json!(duration),
                age(),
                json!(join("name")),
                json!(join("image")),
                json!(selector),
            ]
        }
        ("storage.k8s.io", "storageclasses") => {
            let default = obj["metadata"]["annotations"]
                [crate::admission::DEFAULT_CLASS_ANNOTATION]
                == "true";
            if default {
                row[0] = json!(format!("{} (default)", text(&obj["metadata"]["name"])));
            }
            vec![
                json!(text(&obj["provisioner"])),
                json!(text(&obj["reclaimPolicy"])),
                json!(text(&obj["volumeBindingMode"])),
                json!(
                    obj["allowVolumeExpansion"]
                        .as_bool()
                        .unwrap_or(false)
                        .to_string()
                ),
                age(),
            ]
        }
        ("snapshot.storage.k8s.io", "volumesnapshots") => vec![
            st["readyToUse"].clone(),
            s["source"]["persistentVolumeClaimName"].clone(),
            s["source"]["volumeSnapshotContentName"].clone(),
            st["restoreSize"].clone(),
            s["volumeSnapshotClassName"].clone(),
            st["boundVolumeSnapshotContentName"].clone(),
            match st["creationTime"].as_str() {
                Some(t) => json!(age_of(Some(t))),
                None => Value::Null,
            },
            age(),
        ],
        ("snapshot.storage.k8s.io", "volumesnapshotcontents") => vec![
            st["readyToUse"].clone(),
            st["restoreSize"].clone(),
            s["deletionPolicy"].clone(),
            s["driver"].clone(),
            s["volumeSnapshotClassName"].clone(),
            s["volumeSnapshotRef"]["name"].clone(),
            s["volumeSnapshotRef"]["namespace"].clone(),
            age(),
        ],
        ("snapshot.storage.k8s.io", "volumesnapshotclasses") => {
            vec![obj["driver"].clone(), obj["deletionPolicy"].clone(), age()]
        }
        ("rbac.authorization.k8s.io", "roles" | "clusterroles") => {
            vec![obj["metadata"]["creationTimestamp"].clone()]
        }
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            let subjects = obj["subjects"].as_array().cloned().unwrap_or_default();
            let of = |kind: &str| {
                subjects
                    .iter()
                    .filter(|s| s["kind"] == kind)
                    .map(|s| match (kind, s["namespace"].as_str()) {
                        ("ServiceAccount", Some(ns)) => format!("{ns}/{}", text(&s["name"])),
                        _ => text(&s["name"]),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                json!(format!(
                    "{}/{}",
                    text(&obj["roleRef"]["kind"]),
                    text(&obj["roleRef"]["name"])
                )),
                age(),
                json!(of("User")),
                json!(of("Group")),
                json!(of("ServiceAccount")),
            ]
        }
        _ => vec![age()],
    };
    row.extend(rest);
    row
}

fn row(res: &ResourceDef, obj: &Value, include_object: &str) -> Value {
    let object = match include_object {
        "None" => Value::Null,
        "Object" => obj.clone(),
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        }),
    };
    json!({"cells": cells(res, obj), "object": object})
}

/// A Table of `objects`.
pub(crate) fn table(
    res: &ResourceDef,
    objects: &[Value],
    list_meta: Value,
    include_object: &str,
) -> Value {
    let columns: Vec<Value> = columns(res)
        .into_iter()
        .map(|(name, type_, priority)| {
            json!({
                "name": name, "type": type_,
                "format": if name == "Name" { "name" } else { "" },
                "description": name, "priority": priority,
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": objects.iter().map(|o| row(res, o, include_object)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_kubectl_prints_them() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (192, "3m12s"),
            (700, "11m"),
            (4 * 3600 + 120, "4h2m"),
            (30 * 3600, "30h"),
            (3 * 86_400 + 3600, "3d1h"),
            (9 * 86_400, "9d"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }
}
