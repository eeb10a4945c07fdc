//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), which kubectl's
//! typed clients send (`kubectl create configmap|secret|namespace|serviceaccount|role|
//! rolebinding`, `kubectl auth can-i`): the `k8s\0` envelope (`runtime.Unknown`) and the
//! object inside it decoded into the JSON the rest of the simulator works on, for the kinds
//! listed in [`schema`] (field numbers from `k8s.io/api`'s `generated.proto`). Any other kind
//! is 415 Unsupported Media Type. Answers are always JSON (kubectl accepts either).

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::resources::ResourceDef;

/// The media type.
pub(crate) const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// How a field's value is written.
#[derive(Clone, Copy)]
enum F {
    Str,
    Int,
    Bool,
    Msg(&'static [Field]),
    RepStr,
    RepMsg(&'static [Field]),
    MapStr,
    MapBytes,
}

/// Field number, JSON name, encoding.
type Field = (u64, &'static str, F);

const OWNER_REFERENCE: &[Field] = &[
    (1, "kind", F::Str),
    (3, "name", F::Str),
    (4, "uid", F::Str),
    (5, "apiVersion", F::Str),
    (6, "controller", F::Bool),
    (7, "blockOwnerDeletion", F::Bool),
];

const OBJECT_META: &[Field] = &[
    (1, "name", F::Str),
    (2, "generateName", F::Str),
    (3, "namespace", F::Str),
    (5, "uid", F::Str),
    (6, "resourceVersion", F::Str),
    (7, "generation", F::Int),
    (11, "labels", F::MapStr),
    (12, "annotations", F::MapStr),
    (13, "ownerReferences", F::RepMsg(OWNER_REFERENCE)),
    (14, "finalizers", F::RepStr),
];

const CONFIG_MAP: &[Field] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "data", F::MapStr),
    (3, "binaryData", F::MapBytes),
    (4, "immutable", F::Bool),
];

const SECRET: &[Field] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "data", F::MapBytes),
    (3, "type", F::Str),
    (4, "stringData", F::MapStr),
    (5, "immutable", F::Bool),
];

const NAMESPACE_SPEC: &[Field] = &[(1, "finalizers", F::RepStr)];

const NAMESPACE: &[Field] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "spec", F::Msg(NAMESPACE_SPEC)),
];

const LOCAL_OBJECT_REFERENCE: &[Field] = &[(1, "name", F::Str)];

const OBJECT_REFERENCE: &[Field] = &[
    (1, "kind", F::Str),
    (2, "namespace", F::Str),
    (3, "name", F::Str),
    (4, "uid", F::Str),
    (5, "apiVersion", F::Str),
];

const SERVICE_ACCOUNT: &[Field] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "secrets", F::RepMsg(OBJECT_REFERENCE)),
    (3, "imagePullSecrets", F::RepMsg(LOCAL_OBJECT_REFERENCE)),
    (4, "automountServiceAccountToken", F::Bool),
];

const RESOURCE_ATTRIBUTES: &[Field] = &[
    (1, "namespace", F::Str),
    (2, "verb", F::Str),
    (3, "group", F::Str),
    (4, "version", F::Str),
    (5, "resource", F::Str),
    (6, "subresource", F::Str),
    (7, "name", F::Str),
];

const NON_RESOURCE_ATTRIBUTES: &[Field] = &[(1, "path", F::Str), (2, "verb", F::Str)];

const SELF_SUBJECT_ACCESS_REVIEW_SPEC: &[Field] = &[
    (1, "resourceAttributes", F::Msg(RESOURCE_ATTRIBUTES)),
    (2, "nonResourceAttributes", F::Msg(NON_RESOURCE_ATTRIBUTES)),
];

const SELF_SUBJECT_ACCESS_REVIEW: &[Field] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "spec", F::Msg(SELF_SUBJECT_ACCESS_REVIEW_SPEC)),
];

const POLICY_RULE: &[Field] = &[
    (1, "verbs", F::RepStr),
    (2, "apiGroups", F::RepStr),
    (3, "resources", F::RepStr),
    (4, "resourceNames", F::RepStr),
    (5, "nonResourceURLs", F::RepStr),
];

const ROLE: &[Field] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "rules", F::RepMsg(POLICY_RULE)),
];

const SUBJECT: &[Field] = &[
    (1, "kind", F::Str),
    (2, "apiGroup", F::Str),
    (3, "name", F::Str),
    (4, "namespace", F::Str),
];

const ROLE_REF: &[Field] = &[
    (1, "apiGroup", F::Str),
    (2, "kind", F::Str),
    (3, "name", F::Str),
];

const ROLE_BINDING: &[Field] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "subjects", F::RepMsg(SUBJECT)),
    (3, "roleRef", F::Msg(ROLE_REF)),
];

/// The message of a kind decoded from protobuf, if kube-sim decodes that kind.
fn schema(res: &ResourceDef) -> Option<&'static [Field]> {
    Some(match (res.group, res.plural) {
        ("", "configmaps") => CONFIG_MAP,
        ("", "secrets") => SECRET,
        ("", "namespaces") => NAMESPACE,
        ("", "serviceaccounts") => SERVICE_ACCOUNT,
        ("authorization.k8s.io", "selfsubjectaccessreviews") => SELF_SUBJECT_ACCESS_REVIEW,
        ("rbac.authorization.k8s.io", "roles" | "clusterroles") => ROLE,
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => ROLE_BINDING,
        _ => return None,
    })
}

/// Whether a `Content-Type` is protobuf.
pub(crate) fn is_protobuf(content_type: &str) -> bool {
    content_type.split(';').next().unwrap_or("").trim() == CONTENT_TYPE
}

fn malformed(why: &str) -> ApiError {
    ApiError::bad_request(format!("the protobuf body could not be decoded: {why}"))
}

/// One field read off the wire.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| malformed("truncated varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed("varint too long"))
    }

    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>, ApiError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (number, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => Wire::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| malformed("length"))?;
                if len > self.buf.len() {
                    return Err(malformed("truncated field"));
                }
                let (field, rest) = self.buf.split_at(len);
                self.buf = rest;
                Wire::Bytes(field)
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if n > self.buf.len() {
                    return Err(malformed("truncated fixed field"));
                }
                self.buf = &self.buf[n..];
                Wire::Fixed
            }
            other => return Err(malformed(&format!("wire type {other}"))),
        };
        Ok(Some((number, value)))
    }
}

fn text(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| malformed("a string is not UTF-8"))
}

fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), ApiError> {
    let mut r = Reader { buf: b };
    let (mut key, mut value) = (String::new(), json!(""));
    while let Some((n, w)) = r.next()? {
        match (n, w) {
            (1, Wire::Bytes(k)) => key = text(k)?,
            (2, Wire::Bytes(v)) if bytes_value => {
                value = json!(base64::engine::general_purpose::STANDARD.encode(v));
            }
            (2, Wire::Bytes(v)) => value = json!(text(v)?),
            _ => {}
        }
    }
    Ok((key, value))
}

fn message(b: &[u8], fields: &[Field]) -> Result<Value, ApiError> {
    let mut out = Map::new();
    let mut r = Reader { buf: b };
    while let Some((n, w)) = r.next()? {
        let Some((_, name, kind)) = fields.iter().find(|(num, _, _)| *num == n) else {
            continue;
        };
        let name = (*name).to_owned();
        match (*kind, w) {
            (F::Str, Wire::Bytes(v)) => {
                out.insert(name, json!(text(v)?));
            }
            (F::Int, Wire::Varint(v)) => {
                out.insert(name, json!(v as i64));
            }
            (F::Bool, Wire::Varint(v)) => {
                out.insert(name, json!(v != 0));
            }
            (F::Msg(inner), Wire::Bytes(v)) => {
                out.insert(name, message(v, inner)?);
            }
            (F::RepStr, Wire::Bytes(v)) => {
                let list = out.entry(name).or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.push(json!(text(v)?));
                }
            }
            (F::RepMsg(inner), Wire::Bytes(v)) => {
                let item = message(v, inner)?;
                let list = out.entry(name).or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.push(item);
                }
            }
            (F::MapStr | F::MapBytes, Wire::Bytes(v)) => {
                let (k, val) = map_entry(v, matches!(kind, F::MapBytes))?;
                let map = out.entry(name).or_insert_with(|| json!({}));
                if let Some(m) = map.as_object_mut() {
                    m.insert(k, val);
                }
            }
            _ => {
                return Err(malformed(&format!(
                    "field {n} ({name}) has the wrong wire type"
                )));
            }
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a protobuf body of `res`'s kind into JSON (with `apiVersion` and `kind` from its
/// envelope); 415 for a kind kube-sim does not decode.
pub(crate) fn decode(res: &ResourceDef, body: &[u8]) -> Result<Value, ApiError> {
    let Some(fields) = schema(res) else {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "kube-sim decodes protobuf bodies of ConfigMaps, Secrets, Namespaces, ServiceAccounts, RBAC objects and SelfSubjectAccessReviews only, not {}: send JSON",
                res.kind
            ),
        ));
    };
    let inner = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| malformed("no k8s envelope"))?;
    let mut r = Reader { buf: inner };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((n, w)) = r.next()? {
        match (n, w) {
            (1, Wire::Bytes(type_meta)) => {
                let mut t = Reader { buf: type_meta };
                while let Some((tn, tw)) = t.next()? {
                    match (tn, tw) {
                        (1, Wire::Bytes(v)) => api_version = text(v)?,
                        (2, Wire::Bytes(v)) => kind = text(v)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(v)) => raw = v,
            _ => {}
        }
    }
    let mut obj = message(raw, fields)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, wire: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from((n << 3) | wire).unwrap()];
        if wire == 2 {
            out.push(u8::try_from(payload.len()).unwrap());
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn a_configmap_as_kubectl_create_sends_it_decodes() {
        let meta = field(1, 2, b"made-by-kubectl");
        let entry = [field(1, 2, b"a"), field(2, 2, b"b")].concat();
        let raw = [field(1, 2, &meta), field(2, 2, &entry)].concat();
        let type_meta = [field(1, 2, b"v1"), field(2, 2, b"ConfigMap")].concat();
        let envelope = [
            b"k8s\0".to_vec(),
            field(1, 2, &type_meta),
            field(2, 2, &raw),
            field(4, 2, CONTENT_TYPE.as_bytes()),
        ]
        .concat();
        let cms = crate::resources::find_plural("", "configmaps").unwrap();
        assert_eq!(
            decode(cms, &envelope).unwrap(),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "made-by-kubectl"}, "data": {"a": "b"}})
        );
        let jobs = crate::resources::find_plural("batch", "jobs").unwrap();
        assert_eq!(decode(jobs, &envelope).unwrap_err().code, 415);
        assert_eq!(decode(cms, b"{}").unwrap_err().code, 400);
    }
}
