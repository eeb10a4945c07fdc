//! Role-based access control over the Roles, ClusterRoles, RoleBindings and
//! ClusterRoleBindings held in the store.

use serde_json::Value;

use crate::SimState;
use crate::error::ApiError;
use crate::resources;
use crate::store::Store;

/// The attributes of one request, as RBAC sees them.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    /// User name (e.g. `system:serviceaccount:ns:sa`).
    pub user: &'a str,
    /// RBAC verb.
    pub verb: &'a str,
    /// API group.
    pub group: &'a str,
    /// Resource plural.
    pub resource: &'a str,
    /// Subresource, if any.
    pub subresource: Option<&'a str>,
    /// Namespace of the request (`None` for cluster-scoped or all-namespace requests).
    pub namespace: Option<&'a str>,
    /// Object name, if any.
    pub name: Option<&'a str>,
}

/// Groups a user is a member of.
fn groups_of(user: &str) -> Vec<String> {
    let mut groups = vec!["system:authenticated".to_string()];
    if user == "system:anonymous" {
        return vec!["system:unauthenticated".to_string()];
    }
    if let Some(rest) = user.strip_prefix("system:serviceaccount:")
        && let Some((ns, _)) = rest.split_once(':')
    {
        groups.push("system:serviceaccounts".into());
        groups.push(format!("system:serviceaccounts:{ns}"));
    }
    groups
}

fn subject_matches(subject: &Value, user: &str, groups: &[String], binding_ns: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or("");
    match subject["kind"].as_str().unwrap_or("") {
        "User" => name == user,
        "Group" => groups.iter().any(|g| g == name),
        "ServiceAccount" => {
            let ns = subject["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            user == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn list_contains(list: &Value, want: &str) -> bool {
    list.as_array()
        .is_some_and(|l| l.iter().any(|v| v == "*" || v == want))
}

fn rule_allows(rule: &Value, a: &Attributes<'_>) -> bool {
    if !list_contains(&rule["verbs"], a.verb) || !list_contains(&rule["apiGroups"], a.group) {
        return false;
    }
    let resource_ok = rule["resources"].as_array().is_some_and(|rs| {
        rs.iter()
            .filter_map(Value::as_str)
            .any(|r| match a.subresource {
                None => r == "*" || r == a.resource,
                Some(sub) => {
                    r == "*" || r == format!("{}/{sub}", a.resource) || r == format!("*/{sub}")
                }
            })
    });
    if !resource_ok {
        return false;
    }
    match rule["resourceNames"].as_array().filter(|n| !n.is_empty()) {
        None => true,
        Some(names) => a.name.is_some_and(|n| names.iter().any(|v| v == n)),
    }
}

fn role_rules(store: &Store, role_ref: &Value, binding_ns: Option<&str>) -> Vec<Value> {
    let name = role_ref["name"].as_str().unwrap_or("");
    let role = match role_ref["kind"].as_str().unwrap_or("") {
        "Role" => resources::find_plural("rbac.authorization.k8s.io", "roles")
            .and_then(|r| store.get(r, binding_ns, name).ok()),
        "ClusterRole" => resources::find_plural("rbac.authorization.k8s.io", "clusterroles")
            .and_then(|r| store.get(r, None, name).ok()),
        _ => None,
    };
    role.and_then(|r| r["rules"].as_array().cloned())
        .unwrap_or_default()
}

/// Whether the request is allowed by some binding.
pub fn allowed(store: &Store, a: &Attributes<'_>) -> bool {
    allowed_in_groups(store, a, &[])
}

/// As [`allowed`], the user also a member of `groups` (as a review's `spec.groups` says).
pub fn allowed_in_groups(store: &Store, a: &Attributes<'_>, extra: &[String]) -> bool {
    let mut groups = groups_of(a.user);
    groups.extend(extra.iter().cloned());
    let Some(crb) = resources::find_plural("rbac.authorization.k8s.io", "clusterrolebindings")
    else {
        return false;
    };
    let Some(rb) = resources::find_plural("rbac.authorization.k8s.io", "rolebindings") else {
        return false;
    };
    let mut bindings: Vec<(Value, Option<String>)> =
        store.all(crb).into_iter().map(|b| (b, None)).collect();
    if let Some(ns) = a.namespace {
        bindings.extend(
            store
                .all(rb)
                .into_iter()
                .filter(|b| b["metadata"]["namespace"] == ns)
                .map(|b| (b, Some(ns.to_string()))),
        );
    }
    bindings.iter().any(|(binding, ns)| {
        let binding_ns = ns.as_deref().unwrap_or("");
        let subject_ok = binding["subjects"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| subject_matches(s, a.user, &groups, binding_ns))
        });
        subject_ok
            && role_rules(store, &binding["roleRef"], ns.as_deref())
                .iter()
                .any(|rule| rule_allows(rule, a))
    })
}

/// The Forbidden message the real apiserver uses.
pub(crate) fn forbidden_message(a: &Attributes<'_>) -> String {
    let resource = match a.subresource {
        Some(sub) => format!("{}/{sub}", a.resource),
        None => a.resource.to_string(),
    };
    let qualified = if a.group.is_empty() {
        format!("resource \"{resource}\" in API group \"\"")
    } else {
        format!("resource \"{resource}\" in API group \"{}\"", a.group)
    };
    let subject = match a.name {
        Some(n) => format!("{} \"{n}\" is forbidden", a.resource),
        None => format!("{} is forbidden", a.resource),
    };
    let scope = match a.namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".to_string(),
    };
    format!(
        "{subject}: User \"{}\" cannot {} {qualified}{scope}",
        a.user, a.verb
    )
}

/// Answers a `LocalSubjectAccessReview` posted in `namespace`, as the API server does: the
/// review's resource attributes must name that namespace; the answer is the review with
/// `status.allowed` (an admin user, or every user while RBAC is not enforced, is allowed).
pub(crate) fn review(state: &SimState, namespace: &str, body: Value) -> Result<Value, ApiError> {
    let spec = &body["spec"];
    let attrs = &spec["resourceAttributes"];
    if !attrs.is_object() {
        return Err(ApiError::bad_request(
            "spec.resourceAttributes: Required value: a LocalSubjectAccessReview names resource attributes",
        ));
    }
    let attr_ns = attrs["namespace"].as_str().unwrap_or("");
    if attr_ns != namespace {
        return Err(ApiError::bad_request(format!(
            "spec.resourceAttributes.namespace must match namespace: {namespace}"
        )));
    }
    let user = spec["user"].as_str().unwrap_or("");
    let groups: Vec<String> = spec["groups"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if user.is_empty() && groups.is_empty() {
        return Err(ApiError::bad_request(
            "spec.user: Invalid value: \"\": at least one of user or group must be specified",
        ));
    }
    let field = |k: &str| attrs[k].as_str().filter(|s| !s.is_empty());
    let a = Attributes {
        user,
        verb: field("verb").unwrap_or(""),
        group: field("group").unwrap_or(""),
        resource: field("resource").unwrap_or(""),
        subresource: field("subresource"),
        namespace: Some(namespace),
        name: field("name"),
    };
    let allowed = !state.rbac_enforced()
        || state.is_admin(user)
        || allowed_in_groups(&state.store, &a, &groups);
    let mut out = body;
    out["apiVersion"] = "authorization.k8s.io/v1".into();
    out["kind"] = "LocalSubjectAccessReview".into();
    out["metadata"]["namespace"] = namespace.into();
    out["status"] = if allowed {
        serde_json::json!({"allowed": true, "reason": "allowed by the simulator's RBAC"})
    } else {
        serde_json::json!({"allowed": false})
    };
    Ok(out)
}
