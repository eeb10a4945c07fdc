//! The HTTP/REST front end: routing, authentication, authorization, fault
//! injection, request logging and the JSON handlers for every verb.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use serde_json::{Value, json};

use crate::SimState;
use crate::discovery;
use crate::error::ApiError;
use crate::faults::{FaultKind, RequestRecord, Verb};
use crate::protobuf;
use crate::rbac;
use crate::resources::{self, ResourceDef};
use crate::selector::Selector;
use crate::store::{DeleteOptions, PatchType, WriteOptions};
use crate::table;
use crate::tokens;
use crate::watch::{self, WatchRequest};

/// Response body type of the simulator (buffered JSON or a watch stream).
pub type SimBody = UnsyncBoxBody<Bytes, Infallible>;

/// Parsed query string.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(())
                {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Query {
    pub(crate) fn parse(q: Option<&str>) -> Self {
        Self(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "true" | "True"))
    }
}

pub(crate) fn json_response(code: u16, body: &Value) -> Response<SimBody> {
    typed_json_response(code, "application/json", body)
}

fn typed_json_response(code: u16, content_type: &str, body: &Value) -> Response<SimBody> {
    let bytes = serde_json::to_vec(body).expect("serializable");
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(bytes)).boxed_unsync())
        .expect("valid response")
}

fn error_response(e: &ApiError) -> Response<SimBody> {
    json_response(e.code, &e.to_status())
}

fn text_response(text: String) -> Response<SimBody> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(text)).boxed_unsync())
        .expect("valid response")
}

/// A resource request's target, parsed from the path.
#[derive(Debug, Clone)]
struct Target {
    res: &'static ResourceDef,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

/// Parse `/api/v1/...` or `/apis/{g}/{v}/...` into a resource target.
fn parse_target(path: &str) -> Result<Target, ApiError> {
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found()),
    };
    let find = |plural: &str| resources::find(group, version, plural);
    let t = |res, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
        res,
        ns: ns.map(str::to_string),
        name: name.map(str::to_string),
        sub: sub.map(str::to_string),
    };
    let target = match rest {
        ["namespaces", ns, plural, tail @ ..] if find(plural).is_some_and(|r| r.namespaced) => {
            let res = find(plural).ok_or_else(not_found)?;
            match tail {
                [] => t(res, Some(ns), None, None),
                [name] => t(res, Some(ns), Some(name), None),
                [name, sub] => t(res, Some(ns), Some(name), Some(sub)),
                _ => return Err(not_found()),
            }
        }
        [plural, tail @ ..] => {
            let res = find(plural).ok_or_else(not_found)?;
            match tail {
                [] => t(res, None, None, None),
                [name] => t(res, None, Some(name), None),
                [name, sub] => t(res, None, Some(name), Some(sub)),
                _ => return Err(not_found()),
            }
        }
        [] => return Err(not_found()),
    };
    if let Some(sub) = &target.sub
        && !target.res.has_subresource(sub)
    {
        return Err(not_found());
    }
    if target.res.namespaced && target.name.is_some() && target.ns.is_none() {
        return Err(not_found());
    }
    Ok(target)
}

fn method_not_allowed(method: &Method) -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        format!("the server does not allow this method on the requested resource ({method})"),
    )
}

fn verb_of(method: &Method, target: &Target, query: &Query) -> Result<Verb, ApiError> {
    let has_name = target.name.is_some();
    // subresources with their own verbs: `token` is create-only, `log` is get-only
    match (target.sub.as_deref(), method.as_str()) {
        (Some("token"), "POST") => return Ok(Verb::Create),
        (Some("log"), "GET") => return Ok(Verb::Get),
        (Some("token" | "log"), _) => return Err(method_not_allowed(method)),
        _ => {}
    }
    Ok(match (method.as_str(), has_name) {
        ("GET", true) if query.flag("watch") => Verb::Watch,
        ("GET", true) => Verb::Get,
        ("GET", false) if query.flag("watch") => Verb::Watch,
        ("GET", false) => Verb::List,
        ("POST", false) => Verb::Create,
        ("PUT", true) => Verb::Update,
        ("PATCH", true) => Verb::Patch,
        ("DELETE", true) => Verb::Delete,
        ("DELETE", false) => Verb::DeleteCollection,
        _ => return Err(method_not_allowed(method)),
    })
}

/// Authenticate from the `Authorization` header: no header is `system:anonymous`; a
/// static token is its user; a ServiceAccount token this simulator signed is its
/// ServiceAccount (see [`crate::tokens`]); anything else is 401.
fn authenticate(state: &SimState, headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(auth) = headers.get(header::AUTHORIZATION) else {
        return Ok("system:anonymous".into());
    };
    let token = auth
        .to_str()
        .ok()
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    state
        .tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(token)
        .cloned()
        .or_else(|| tokens::authenticate(state, token))
        .ok_or_else(|| ApiError::new(401, "Unauthorized", "Unauthorized"))
}

/// Serve one request.
pub(crate) async fn handle(state: Arc<SimState>, req: Request<Bytes>) -> Response<SimBody> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = Query::parse(parts.uri.query());
    let mut record = RequestRecord {
        method: parts.method.to_string(),
        path: path.clone(),
        verb: None,
        group: String::new(),
        resource: String::new(),
        subresource: None,
        namespace: None,
        name: None,
        user: String::new(),
        code: 200,
    };
    let response = match authenticate(&state, &parts.headers) {
        Err(e) => error_response(&e),
        Ok(user) => {
            record.user = user.clone();
            match non_resource(&state, &path) {
                Some(Ok(_)) if path == tokens::JWKS_PATH && !accepts_jwk_set(&parts.headers) => {
                    // As kube-apiserver: the key set is served as application/jwk-set+json
                    // only (not application/json, not application/*).
                    error_response(
                        &ApiError::new(
                            406,
                            "NotAcceptable",
                            "406: Not Acceptable\n\nAvailable representations: application/jwk-set+json",
                        )
                        .with_empty_details(),
                    )
                }
                Some(Ok(v)) if path == tokens::JWKS_PATH => {
                    typed_json_response(200, "application/jwk-set+json", &v)
                }
                Some(Ok(v)) => json_response(200, &v),
                Some(Err(e)) => error_response(&e),
                None => {
                    resource_request(
                        &state,
                        &parts.method,
                        &parts.headers,
                        &path,
                        &query,
                        body,
                        &mut record,
                    )
                    .await
                }
            }
        }
    };
    record.code = response.status().as_u16();
    tracing::debug!(method = %record.method, path = %record.path, user = %record.user, code = record.code, "kube-sim request");
    state.log.push(record);
    response
}

/// Whether the `Accept` header lets the key set be answered: none, `*/*`, or
/// `application/jwk-set+json`.
fn accepts_jwk_set(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()) else {
        return true;
    };
    accept.trim().is_empty()
        || accept.split(',').any(|t| {
            matches!(
                t.split(';').next().unwrap_or("").trim(),
                "*/*" | "application/jwk-set+json"
            )
        })
}

fn non_resource(state: &SimState, path: &str) -> Option<Result<Value, ApiError>> {
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    Some(match segs.as_slice() {
        ["version"] => Ok(discovery::version()),
        ["api"] => Ok(discovery::core_versions()),
        ["apis"] => Ok(discovery::group_list()),
        ["api", v] => discovery::resource_list("", v).ok_or_else(not_found),
        ["apis", g] => discovery::group(g).ok_or_else(not_found),
        ["apis", g, v] => discovery::resource_list(g, v).ok_or_else(not_found),
        ["healthz" | "livez" | "readyz"] => Ok(json!("ok")),
        ["openapi", "v3"] => Ok(discovery::openapi_v3_index()),
        ["openapi", "v3", "api", v] => discovery::openapi_v3_document("", v).ok_or_else(not_found),
        ["openapi", "v3", "apis", g, v] => {
            discovery::openapi_v3_document(g, v).ok_or_else(not_found)
        }
        [".well-known", "openid-configuration"] => Ok(tokens::openid_configuration(state)),
        ["openid", "v1", "jwks"] => Ok(state.signer.jwks()),
        ["api", ..] | ["apis", ..] => return None,
        _ => Err(not_found()),
    })
}

/// A create or update body: JSON, or protobuf as kubectl's typed clients send it.
fn decode_body(res: &ResourceDef, content_type: &str, body: &Bytes) -> Result<Value, ApiError> {
    if protobuf::is_protobuf(content_type) {
        protobuf::decode(res, body)
    } else {
        parse_body(body)
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn write_options(query: &Query) -> WriteOptions {
    WriteOptions {
        keep_status: false,
        field_manager: query
            .get("fieldManager")
            .filter(|m| !m.is_empty())
            .map(str::to_string),
        dry_run: query.get("dryRun").is_some_and(|d| d == "All"),
        admit: true,
        strict: query.get("fieldValidation") == Some("Strict"),
        force: query.flag("force"),
    }
}

/// A list item as the API server sends it: without `apiVersion` and `kind` (they are the
/// list's), except for custom resources (served as unstructured objects, they keep them).
fn list_item(res: &ResourceDef, mut obj: Value) -> Value {
    if !res.crd
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("apiVersion");
        m.remove("kind");
    }
    obj
}

/// The list's metadata: a custom resource list says `continue: ""` when there is no more.
fn list_meta(res: &ResourceDef, rv: u64) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if res.crd {
        meta["continue"] = json!("");
    }
    meta
}

/// A `Status` of a deletion done at once: `{status: Success, details: {name, group, kind
/// (the plural), uid}}`.
fn deleted_status(res: &ResourceDef, obj: &Value) -> Value {
    let mut details = json!({
        "name": obj["metadata"]["name"],
        "kind": res.plural,
        "uid": obj["metadata"]["uid"],
    });
    if !res.group.is_empty() {
        details["group"] = json!(res.group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

fn list_kind(res: &ResourceDef) -> String {
    format!("{}List", res.kind)
}

#[allow(clippy::too_many_arguments)]
async fn resource_request(
    state: &Arc<SimState>,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    query: &Query,
    body: Bytes,
    record: &mut RequestRecord,
) -> Response<SimBody> {
    let target = match parse_target(path) {
        Ok(t) => t,
        Err(e) => return error_response(&e),
    };
    let verb = match verb_of(method, &target, query) {
        Ok(v) => v,
        Err(e) => return error_response(&e),
    };
    record.verb = Some(verb);
    record.group = target.res.group.to_string();
    record.resource = target.res.plural.to_string();
    record.subresource = target.sub.clone();
    record.namespace = target.ns.clone();
    // As the real API server does, a list or watch selecting one name by field
    // (`metadata.name=<name>`) is a request for that name (to RBAC: a rule's resourceNames
    // grant it).
    let selected = matches!(verb, Verb::List | Verb::Watch)
        .then(|| query.get("fieldSelector"))
        .flatten()
        .and_then(|f| {
            let f = f.trim();
            f.strip_prefix("metadata.name==")
                .or_else(|| f.strip_prefix("metadata.name="))
                .filter(|n| !n.contains(','))
        });
    record.name = target.name.clone().or(selected.map(str::to_owned));

    if state.rbac_enforced() && !state.is_admin(&record.user) {
        let attrs = rbac::Attributes {
            user: &record.user,
            verb: verb.as_str(),
            group: target.res.group,
            resource: target.res.plural,
            subresource: target.sub.as_deref(),
            namespace: target.ns.as_deref(),
            name: record.name.as_deref(),
        };
        if !rbac::allowed(&state.store, &attrs) {
            let e = ApiError::forbidden(rbac::forbidden_message(&attrs)).with_details(
                target.res.group,
                target.res.plural,
                target.name.as_deref().unwrap_or(""),
            );
            return error_response(&e);
        }
    }

    let mut close_watch = false;
    match state.faults.take(record) {
        None => {}
        Some(FaultKind::Status(code)) => return error_response(&fault_status(code)),
        Some(FaultKind::Timeout) => {
            tokio::time::sleep(state.faults.timeout_duration()).await;
            return error_response(&ApiError::new(
                504,
                "Timeout",
                "Timeout: request did not complete within the allowed duration",
            ));
        }
        Some(FaultKind::Delay(d)) => tokio::time::sleep(d).await,
        Some(FaultKind::CloseWatch) => close_watch = true,
    }

    let accept = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .unwrap_or("");
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|a| a.to_str().ok())
        .unwrap_or("application/json");
    let include_object = query.get("includeObject").unwrap_or("Metadata");
    let res = target.res;
    let ns = target.ns.as_deref();
    let name = target.name.as_deref().unwrap_or("");
    let status_only = target.sub.as_deref() == Some("status");
    let existed = verb != Verb::Patch || state.store.get(res, ns, name).is_ok();

    if target.res.review {
        let user = record.user.clone();
        return match (verb, ns) {
            (Verb::Create, Some(ns)) if target.name.is_none() && target.sub.is_none() => {
                match decode_body(target.res, content_type, &body)
                    .and_then(|b| rbac::review(state, ns, b))
                {
                    Ok(v) => json_response(201, &v),
                    Err(e) => error_response(&e),
                }
            }
            (Verb::Create, None) if target.name.is_none() && target.sub.is_none() => {
                match decode_body(target.res, content_type, &body)
                    .and_then(|b| rbac::self_review(state, &user, b))
                {
                    Ok(v) => json_response(201, &v),
                    Err(e) => error_response(&e),
                }
            }
            _ => error_response(&method_not_allowed(method)),
        };
    }
    let result: Result<Value, ApiError> = match verb {
        Verb::Create if target.sub.as_deref() == Some("token") => {
            return match tokens::token_request(state, ns.unwrap_or(""), name, &body) {
                Ok(v) => json_response(201, &v),
                Err(e) => error_response(&e),
            };
        }
        Verb::Get if target.sub.as_deref() == Some("log") => {
            // A pod not placed on a node has no log to read yet: 204, as the API server says.
            if let Ok(pod) = state.store.get(res, ns, name)
                && pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
            {
                return Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(Full::new(Bytes::new()).boxed_unsync())
                    .expect("valid response");
            }
            return match state.pod_log(ns.unwrap_or(""), name, query) {
                Ok(text) => text_response(text),
                Err(e) => error_response(&e),
            };
        }
        Verb::Get => state.store.get(res, ns, name).map(|obj| {
            if table::wants_table(accept) {
                let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
                table::table(res, std::slice::from_ref(&obj), meta, include_object)
            } else {
                obj
            }
        }),
        Verb::List => list(state, &target, query, accept),
        Verb::Watch => {
            let (labels, mut fields) = match selectors(res, query) {
                Ok(s) => s,
                Err(e) => return error_response(&e),
            };
            if let Some(n) = &target.name {
                fields = match Selector::fields(&format!("metadata.name={n}")) {
                    Ok(f) => f,
                    Err(e) => return error_response(&e),
                };
            }
            let rv = query
                .get("resourceVersion")
                .filter(|r| !r.is_empty())
                .map(|r| {
                    r.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(format!("invalid resourceVersion {r:?}"))
                    })
                });
            let rv = match rv.transpose() {
                Ok(rv) => rv,
                Err(e) => return error_response(&e),
            };
            let req = WatchRequest {
                res,
                namespace: target.ns.clone(),
                labels,
                fields,
                resource_version: rv,
                bookmarks: query.flag("allowWatchBookmarks"),
                send_initial_events: query.flag("sendInitialEvents"),
                timeout: query
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(Duration::from_secs),
                table: table::wants_table(accept).then(|| include_object.to_string()),
                close_immediately: close_watch,
            };
            return watch::respond(state.clone(), req);
        }
        Verb::Create => decode_body(res, content_type, &body)
            .and_then(|obj| state.store.create(res, ns, obj, &write_options(query))),
        Verb::Update => decode_body(res, content_type, &body).and_then(|obj| {
            state
                .store
                .update(res, ns, name, obj, status_only, &write_options(query))
        }),
        Verb::Patch => {
            let Some(pt) = PatchType::from_content_type(content_type) else {
                return error_response(&ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type})"
                    ),
                ));
            };
            let patch = if pt == PatchType::Apply {
                serde_json::from_slice::<Value>(&body).or_else(|_| {
                    serde_yaml::from_slice::<Value>(&body)
                        .map_err(|e| ApiError::bad_request(format!("invalid apply body: {e}")))
                })
            } else {
                parse_body(&body)
            };
            let opts = write_options(query);
            patch.and_then(|p| state.store.patch(res, ns, name, pt, &p, status_only, &opts))
        }
        Verb::Delete => {
            // A pod and a namespace are answered with their last state; anything else
            // removed at once with a Status; anything left terminating with itself.
            let opts = delete_options(&body, query);
            opts.and_then(|o| state.store.delete_ext(res, ns, name, &o))
                .map(|d| {
                    let keeps_object =
                        res.group.is_empty() && matches!(res.plural, "pods" | "namespaces");
                    if d.removed && !keeps_object {
                        deleted_status(res, &d.object)
                    } else {
                        d.object
                    }
                })
        }
        Verb::DeleteCollection => delete_collection(state, &target, query, &body),
    };
    match result {
        Ok(v) => {
            let code = if verb == Verb::Create || (verb == Verb::Patch && !existed) {
                201
            } else {
                200
            };
            json_response(code, &v)
        }
        Err(e) => error_response(&e),
    }
}

fn fault_status(code: u16) -> ApiError {
    let (reason, message) = match code {
        400 => ("BadRequest", "injected bad request"),
        401 => ("Unauthorized", "Unauthorized"),
        403 => ("Forbidden", "injected forbidden"),
        404 => ("NotFound", "injected not found"),
        409 => (
            "Conflict",
            "injected conflict: the object has been modified; please apply your changes to the latest version and try again",
        ),
        410 => ("Expired", "injected: too old resource version"),
        422 => ("Invalid", "injected invalid"),
        429 => (
            "TooManyRequests",
            "injected: too many requests, please try again later",
        ),
        503 => ("ServiceUnavailable", "injected: service unavailable"),
        504 => ("Timeout", "injected timeout"),
        _ => ("InternalError", "Internal error occurred: injected fault"),
    };
    ApiError::new(code, reason, message)
}

fn selectors(res: &ResourceDef, query: &Query) -> Result<(Selector, Selector), ApiError> {
    let fields = Selector::fields(query.get("fieldSelector").unwrap_or(""))?;
    let known = |f: &str| {
        matches!(f, "metadata.name" | "metadata.namespace") || res.field_labels.contains(&f)
    };
    if let Some(unknown) = fields.keys().into_iter().find(|f| !known(f)) {
        let mut supported = vec![
            "\"metadata.name\"".to_string(),
            "\"metadata.namespace\"".to_string(),
        ];
        supported.extend(res.field_labels.iter().map(|f| format!("\"{f}\"")));
        return Err(ApiError::bad_request(format!(
            "\"{unknown}\" is not a known field selector: only {}",
            supported.join(", ")
        )));
    }
    Ok((
        Selector::labels(query.get("labelSelector").unwrap_or(""))?,
        fields,
    ))
}

fn list(state: &SimState, target: &Target, query: &Query, accept: &str) -> Result<Value, ApiError> {
    let (labels, fields) = selectors(target.res, query)?;
    let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok());
    let page = state.store.list(
        target.res,
        target.ns.as_deref(),
        &labels,
        &fields,
        limit,
        query.get("continue"),
    )?;
    let mut meta = list_meta(target.res, page.resource_version);
    if let Some(c) = &page.continue_token {
        meta["continue"] = json!(c);
        meta["remainingItemCount"] = json!(page.remaining);
    }
    if table::wants_table(accept) {
        let include = query.get("includeObject").unwrap_or("Metadata");
        return Ok(table::table(target.res, &page.items, meta, include));
    }
    let items: Vec<Value> = page
        .items
        .into_iter()
        .map(|i| list_item(target.res, i))
        .collect();
    Ok(json!({
        "kind": list_kind(target.res),
        "apiVersion": target.res.api_version(),
        "metadata": meta,
        "items": items,
    }))
}

fn delete_options(body: &Bytes, query: &Query) -> Result<DeleteOptions, ApiError> {
    let v: Value = if body.is_empty() {
        json!({})
    } else {
        parse_body(body)?
    };
    let pre = &v["preconditions"];
    let body_dry_run = v["dryRun"]
        .as_array()
        .is_some_and(|d| d.iter().any(|x| x == "All"));
    Ok(DeleteOptions {
        uid: pre["uid"].as_str().map(str::to_string),
        resource_version: pre["resourceVersion"].as_str().map(str::to_string),
        propagation: v["propagationPolicy"]
            .as_str()
            .or(query.get("propagationPolicy"))
            .map(str::to_string),
        dry_run: body_dry_run || query.get("dryRun") == Some("All"),
    })
}

fn delete_collection(
    state: &SimState,
    target: &Target,
    query: &Query,
    body: &Bytes,
) -> Result<Value, ApiError> {
    let (labels, fields) = selectors(target.res, query)?;
    let opts = delete_options(body, query)?;
    let page = state.store.list(
        target.res,
        target.ns.as_deref(),
        &labels,
        &fields,
        None,
        None,
    )?;
    // The answer is the list as it was listed (what a dry run would delete, too).
    let mut deleted = Vec::new();
    for item in page.items {
        let ns = item["metadata"]["namespace"].as_str().map(str::to_string);
        let name = item["metadata"]["name"].as_str().unwrap_or("").to_string();
        match state
            .store
            .delete_ext(target.res, ns.as_deref(), &name, &opts)
        {
            Ok(_) => deleted.push(list_item(target.res, item)),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json!({
        "kind": list_kind(target.res),
        "apiVersion": target.res.api_version(),
        "metadata": list_meta(target.res, page.resource_version),
        "items": deleted,
    }))
}

/// Collect a request body of any kind into bytes.
pub(crate) async fn collect_body<B>(req: Request<B>) -> Result<Request<Bytes>, B::Error>
where
    B: hyper::body::Body,
{
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok(Request::from_parts(parts, bytes))
}
