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
    allowed_by(store, a, extra).is_some()
}

/// The subject of a binding as the RBAC authorizer names it in a reason.
fn subject_name(subject: &Value, binding_ns: &str) -> String {
    let name = subject["name"].as_str().unwrap_or("");
    match subject["kind"].as_str().unwrap_or("") {
        "ServiceAccount" => {
            let ns = subject["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            format!("ServiceAccount \"{name}/{ns}\"")
        }
        kind => format!("{kind} \"{name}\""),
    }
}

/// Why the request is allowed, as the RBAC authorizer says it (`RBAC: allowed by RoleBinding
/// "name/ns" of Role "role" to User "alice"`), or `None` when no binding allows it.
pub fn allowed_by(store: &Store, a: &Attributes<'_>, extra: &[String]) -> Option<String> {
    let mut groups = groups_of(a.user);
    groups.extend(extra.iter().cloned());
    let crb = resources::find_plural("rbac.authorization.k8s.io", "clusterrolebindings")?;
    let rb = resources::find_plural("rbac.authorization.k8s.io", "rolebindings")?;
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
    bindings.iter().find_map(|(binding, ns)| {
        let binding_ns = ns.as_deref().unwrap_or("");
        let subject = binding["subjects"].as_array().and_then(|s| {
            s.iter()
                .find(|s| subject_matches(s, a.user, &groups, binding_ns))
        })?;
        if !role_rules(store, &binding["roleRef"], ns.as_deref())
            .iter()
            .any(|rule| rule_allows(rule, a))
        {
            return None;
        }
        let name = binding["metadata"]["name"].as_str().unwrap_or("");
        let how = match ns {
            Some(ns) => format!("RoleBinding \"{name}/{ns}\""),
            None => format!("ClusterRoleBinding \"{name}\""),
        };
        let role = format!(
            "{} \"{}\"",
            binding["roleRef"]["kind"].as_str().unwrap_or(""),
            binding["roleRef"]["name"].as_str().unwrap_or("")
        );
        Some(format!(
            "RBAC: allowed by {how} of {role} to {}",
            subject_name(subject, binding_ns)
        ))
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

/// 422 Invalid of a review (the API server names neither its kind nor a name).
fn review_invalid(field: &str, value: &str, why: &str) -> ApiError {
    let message = format!("Invalid value: \"{value}\": {why}");
    ApiError::new(
        422,
        "Invalid",
        format!(".authorization.k8s.io \"\" is invalid: {field}: {message}"),
    )
    .with_group("authorization.k8s.io")
    .with_cause("FieldValueInvalid", &message, field)
}

fn attributes<'a>(spec: &'a Value, user: &'a str, namespace: Option<&'a str>) -> Attributes<'a> {
    let attrs = &spec["resourceAttributes"];
    let field = |k: &str| attrs[k].as_str().filter(|s| !s.is_empty());
    Attributes {
        user,
        verb: field("verb").unwrap_or(""),
        group: field("group").unwrap_or(""),
        resource: field("resource").unwrap_or(""),
        subresource: field("subresource"),
        namespace: namespace.or(field("namespace")),
        name: field("name"),
    }
}

/// The review answered: `status.allowed`, with the RBAC authorizer's reason when allowed by a
/// binding (an admin user, or every user while RBAC is not enforced, is allowed).
fn answer(state: &SimState, mut out: Value, a: &Attributes<'_>, groups: &[String]) -> Value {
    out["status"] = if !state.rbac_enforced() || state.is_admin(a.user) {
        serde_json::json!({"allowed": true})
    } else {
        match allowed_by(&state.store, a, groups) {
            Some(reason) => serde_json::json!({"allowed": true, "reason": reason}),
            None => serde_json::json!({"allowed": false}),
        }
    };
    out
}

/// Answers a `LocalSubjectAccessReview` posted in `namespace`, as the API server does: the
/// review's resource attributes must name that namespace (else 422); the answer is the review
/// with `status.allowed` and, when a binding allows it, the RBAC authorizer's reason.
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
        return Err(review_invalid(
            "spec.resourceAttributes.namespace",
            attr_ns,
            "must match metadata.namespace",
        ));
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
        return Err(review_invalid(
            "spec.user",
            "",
            "at least one of user or group must be specified",
        ));
    }
    let a = attributes(spec, user, Some(namespace));
    let mut out = body.clone();
    out["apiVersion"] = "authorization.k8s.io/v1".into();
    out["kind"] = "LocalSubjectAccessReview".into();
    out["metadata"]["namespace"] = namespace.into();
    Ok(answer(state, out, &a, &groups))
}

/// Answers a `SelfSubjectAccessReview` (what `kubectl auth can-i` asks) for the user who
/// posts it.
pub(crate) fn self_review(state: &SimState, user: &str, body: Value) -> Result<Value, ApiError> {
    let spec = &body["spec"];
    if !spec["resourceAttributes"].is_object() && !spec["nonResourceAttributes"].is_object() {
        return Err(ApiError::bad_request(
            "spec.resourceAttributes: Required value: one of resourceAttributes or nonResourceAttributes",
        ));
    }
    let a = attributes(spec, user, None);
    let mut out = body.clone();
    out["apiVersion"] = "authorization.k8s.io/v1".into();
    out["kind"] = "SelfSubjectAccessReview".into();
    Ok(answer(state, out, &a, &[]))
}
