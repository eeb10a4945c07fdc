//! Label and field selectors as used in list and watch query strings.

use serde_json::Value;

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed selector. Label selectors look into `metadata.labels`; field
/// selectors look up a dotted JSON path (`metadata.name`, `status.phase`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    reqs: Vec<Requirement>,
    fields: bool,
}

/// Split on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_set(s: &str) -> Result<Vec<String>, ApiError> {
    let s = s.trim();
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| ApiError::bad_request(format!("unable to parse requirement: set {s:?}")))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl Selector {
    /// Parse a label selector (`a=b,c!=d,e in (f,g),h notin (i),j,!k`).
    pub fn labels(s: &str) -> Result<Self, ApiError> {
        Self::parse(s, false)
    }

    /// Parse a field selector (`metadata.name=x,metadata.namespace!=y`).
    pub fn fields(s: &str) -> Result<Self, ApiError> {
        Self::parse(s, true)
    }

    fn parse(s: &str, fields: bool) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if !fields && let Some((k, set)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), parse_set(set)?)
            } else if !fields && let Some((k, set)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), parse_set(set)?)
            } else if !fields && let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else if !fields && !part.contains(char::is_whitespace) {
                Requirement::Exists(part.into())
            } else {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: {part:?}"
                )));
            };
            reqs.push(req);
        }
        Ok(Self { reqs, fields })
    }

    /// The keys the requirements name (the field labels of a field selector).
    pub fn keys(&self) -> Vec<&str> {
        self.reqs
            .iter()
            .map(|r| match r {
                Requirement::Eq(k, _)
                | Requirement::NotEq(k, _)
                | Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k.as_str(),
            })
            .collect()
    }

    fn lookup(&self, obj: &Value, key: &str) -> Option<String> {
        // An Event's field label `source` is its `source.component`.
        let key = if self.fields && key == "source" {
            "source.component"
        } else {
            key
        };
        let v = if self.fields {
            key.split('.').try_fold(obj, |v, k| v.get(k))?
        } else {
            obj.get("metadata")?.get("labels")?.get(key)?
        };
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// Whether `obj` satisfies every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|r| match r {
            Requirement::Eq(k, v) => {
                let got = self.lookup(obj, k);
                // a field selector on a missing field compares against ""
                if self.fields {
                    got.unwrap_or_default() == *v
                } else {
                    got.as_deref() == Some(v.as_str())
                }
            }
            Requirement::NotEq(k, v) => self.lookup(obj, k).as_deref() != Some(v.as_str()),
            Requirement::In(k, set) => self.lookup(obj, k).is_some_and(|g| set.contains(&g)),
            Requirement::NotIn(k, set) => self.lookup(obj, k).is_none_or(|g| !set.contains(&g)),
            Requirement::Exists(k) => self.lookup(obj, k).is_some(),
            Requirement::NotExists(k) => self.lookup(obj, k).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_supports_every_operator() {
        let obj = json!({"metadata": {"name": "a", "labels": {"app": "x", "tier": "db"}}});
        for (sel, want) in [
            ("app=x", true),
            ("app==x", true),
            ("app!=x", false),
            ("app in (x, y)", true),
            ("app notin (x,y)", false),
            ("tier notin (web)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=x,tier in (db)", true),
            ("app=x,tier=web", false),
            ("missing!=v", true),
        ] {
            assert_eq!(Selector::labels(sel).unwrap().matches(&obj), want, "{sel}");
        }
    }

    #[test]
    fn field_selector_looks_up_dotted_paths() {
        let obj =
            json!({"metadata": {"name": "a", "namespace": "ns"}, "status": {"phase": "Bound"}});
        assert!(Selector::fields("metadata.name=a").unwrap().matches(&obj));
        assert!(
            !Selector::fields("metadata.namespace!=ns")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            Selector::fields("status.phase==Bound")
                .unwrap()
                .matches(&obj)
        );
    }
}
