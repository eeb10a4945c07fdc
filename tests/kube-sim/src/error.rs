//! Kubernetes `Status` failures returned by the simulator.

use serde_json::{Value, json};

/// One cause inside a `Status`'s `details.causes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCause {
    /// Machine-readable reason, e.g. `FieldValueInvalid`.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// JSON path of the offending field, e.g. `metadata.name`.
    pub field: String,
}

/// An API failure, rendered as a Kubernetes `Status` object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `Conflict`, ...).
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// `details`, if any.
    pub details: Option<Box<ErrorDetails>>,
}

/// The `details` of a `Status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorDetails {
    /// `details.name`.
    pub name: Option<String>,
    /// `details.group`.
    pub group: Option<String>,
    /// `details.kind`: the resource plural for most errors (as the real server says it), the
    /// Kind for a 422 Invalid.
    pub kind: Option<String>,
    /// `details.causes`.
    pub causes: Vec<StatusCause>,
    /// A `details` that is there and empty (`{}`), as some errors have it.
    pub empty: bool,
}

impl ApiError {
    /// A failure with the given code, reason and message.
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
        }
    }

    /// Attach `details` (resource group, plural, object name).
    pub fn with_details(mut self, group: &str, kind: &str, name: &str) -> Self {
        let d = self.details.get_or_insert_with(Default::default);
        d.group = Some(group.to_string());
        d.kind = Some(kind.to_string());
        d.name = Some(name.to_string());
        self
    }

    /// Attach a `details` with nothing in it (`"details": {}`).
    pub fn with_empty_details(mut self) -> Self {
        self.details.get_or_insert_with(Default::default).empty = true;
        self
    }

    /// Attach `details` with only a group (`details.group`; a review's 422 names no kind).
    pub fn with_group(mut self, group: &str) -> Self {
        self.details.get_or_insert_with(Default::default).group = Some(group.to_string());
        self
    }

    /// Attach a cause.
    pub fn with_cause(mut self, reason: &str, message: &str, field: &str) -> Self {
        let d = self.details.get_or_insert_with(Default::default);
        d.causes.push(StatusCause {
            reason: reason.into(),
            message: message.into(),
            field: field.into(),
        });
        self
    }

    /// 404 NotFound for `plural "name"`.
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, plural)),
        )
        .with_details(group, plural, name)
    }

    /// 409 AlreadyExists.
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, plural)),
        )
        .with_details(group, plural, name)
    }

    /// 409 Conflict (stale resourceVersion or failed precondition).
    pub fn conflict(group: &str, plural: &str, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(group, plural)
            ),
        )
        .with_details(group, plural, name)
    }

    /// 422 Invalid with one cause.
    pub fn invalid(kind: &str, group: &str, name: &str, field: &str, message: &str) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {field}: Invalid value: \"{name}\": {message}"),
        )
        .with_details(group, kind, name)
        .with_cause(
            "FieldValueInvalid",
            &format!("Invalid value: \"{name}\": {message}"),
            field,
        )
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 410 Gone with reason `Expired`.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// The failure as a Kubernetes `Status` JSON object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            let mut details = serde_json::Map::new();
            if let Some(name) = d.name.as_ref().filter(|n| !n.is_empty()) {
                details.insert("name".into(), json!(name));
            }
            if let Some(group) = d.group.as_ref().filter(|g| !g.is_empty()) {
                details.insert("group".into(), json!(group));
            }
            if let Some(kind) = d.kind.as_ref().filter(|k| !k.is_empty()) {
                details.insert("kind".into(), json!(kind));
            }
            if !d.causes.is_empty() {
                let causes: Vec<Value> = d
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                details.insert("causes".into(), Value::Array(causes));
            }
            status["details"] = Value::Object(details);
        }
        status
    }
}

fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}
