//! `/version` and legacy discovery documents (`/api`, `/api/v1`, `/apis`,
//! `/apis/{group}/{version}`). Aggregated discovery is not served: clients
//! asking for it get plain JSON, which client-go and kube treat as "fall back".

use serde_json::{Value, json};

use crate::resources::{self, ResourceDef};

/// Kubernetes version the simulator claims to be.
pub const SERVER_MINOR: &str = "32";

/// `/version`.
pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": SERVER_MINOR,
        "gitVersion": format!("v1.{SERVER_MINOR}.0-kube-sim"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub(crate) fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    })
}

/// `/apis`.
pub(crate) fn group_list() -> Value {
    let groups: Vec<Value> = resources::groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`.
pub(crate) fn group(group: &str) -> Option<Value> {
    let (g, v) = resources::groups().into_iter().find(|(g, _)| *g == group)?;
    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
    Some(json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": g,
        "versions": [gv.clone()], "preferredVersion": gv,
    }))
}

fn resource_entry(r: &ResourceDef) -> Value {
    let verbs: &[&str] = if r.review {
        &["create"]
    } else {
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    };
    json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": verbs,
        "shortNames": r.short_names,
    })
}

/// `/api/v1` or `/apis/{group}/{version}`.
pub(crate) fn resource_list(group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = resources::all()
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if defs.is_empty() {
        return None;
    }
    let mut entries = Vec::new();
    for r in defs {
        entries.push(resource_entry(r));
        if r.status_subresource {
            entries.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        for sub in r.extra_subresources {
            let name = format!("{}/{sub}", r.plural);
            entries.push(match *sub {
                // the TokenRequest API: a create-only subresource of another group's kind
                "token" => json!({
                    "name": name,
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "group": "authentication.k8s.io",
                    "version": "v1",
                    "kind": "TokenRequest",
                    "verbs": ["create"],
                }),
                _ => json!({
                    "name": name,
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": if *sub == "log" { "Pod" } else { r.kind },
                    "verbs": ["get"],
                }),
            });
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": entries,
    }))
}

/// `/openapi/v3`: one document per group version (no schemas; see [`openapi_v3_document`]).
pub(crate) fn openapi_v3_index() -> Value {
    let paths: serde_json::Map<String, Value> = resources::groups()
        .into_iter()
        .map(|(g, v)| {
            let path = if g.is_empty() {
                format!("api/{v}")
            } else {
                format!("apis/{g}/{v}")
            };
            let url = format!("/openapi/v3/{path}?hash={}", SERVER_MINOR);
            (path, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

/// `/openapi/v3/api/v1`, `/openapi/v3/apis/{group}/{version}`: a document with a PATCH
/// operation per resource that takes `fieldValidation`, and no schemas. Enough for kubectl to
/// see that the server validates fields itself (so `kubectl apply` and `create` validate
/// there, with `fieldValidation=Strict`, instead of downloading `/openapi/v2` for client-side
/// validation); not enough for `kubectl explain`.
pub(crate) fn openapi_v3_document(group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = resources::all()
        .iter()
        .filter(|r| r.group == group && r.version == version && !r.review)
        .collect();
    if defs.is_empty() {
        return None;
    }
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = serde_json::Map::new();
    for r in defs {
        let path = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        let patch = json!({
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
            "parameters": [
                {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                {"name": "force", "in": "query", "schema": {"type": "boolean"}},
            ],
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(path, json!({"patch": patch}));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{SERVER_MINOR}.0-kube-sim")},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
