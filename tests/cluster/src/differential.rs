//! The differential suite's machinery (`tests/differential.rs` holds its table): the same
//! request sent to kube-sim and to the real API server, each answer turned into one JSON
//! value (`{"code", "body"}` for HTTP, `{"exit", "stdout", "stderr"}` for kubectl), both
//! normalised the same way ([`normalise`]), and compared field by field ([`differences`]).
//!
//! A case either must answer the same on both, or has a known difference: the exact set of
//! JSON pointers where the answers differ (a pointer also covers what lies under it). A known
//! difference that disappears or changes fails the case as surely as a new one, so the list
//! of what kube-sim does not model cannot rot silently.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use anyhow::Context as _;
use futures::future::BoxFuture;
use http_body_util::BodyExt as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Map, Value, json};

/// What the comparison ignores, and why: values each server makes up for itself, which no
/// snapgate code reads for their meaning. Anything else that differs is a difference.
pub const IGNORED: &[(&str, &str)] = &[
    (
        "managedFields",
        "field-manager bookkeeping: the real server names managers after the client's user \
         agent and stamps times; no snapgate code reads it (server-side apply conflicts, which \
         depend on it, have their own cases)",
    ),
    (
        "uids (any string that is a UUID, or contains one)",
        "random per server; where a uid must match another (ownerReferences, selectors, \
         preconditions) the cases check it on each server",
    ),
    (
        "timestamps (any string that is an RFC 3339 time)",
        "wall clock",
    ),
    (
        "resourceVersion values (and list continue tokens)",
        "each store's own counter (etcd's revision, kube-sim's sequence); what clients rely \
         on, resuming a watch from one, has its own case",
    ),
    (
        "random name suffixes (generateName, Job pods: `-` and five of the API server's \
         27 letters and digits)",
        "random per server",
    ),
    (
        "the server's URL in kubectl's output, and kubectl's AGE column",
        "each server's own address; seconds since creation",
    ),
];

/// One API server under test, as a client and as kubectl see it.
pub struct Side {
    /// `kube-sim` or `kube-apiserver`.
    pub name: &'static str,
    /// A client with the side's admin credentials.
    pub client: kube::Client,
    /// A client without credentials.
    pub anonymous: kube::Client,
    /// The kubeconfig of that admin (for kubectl).
    pub kubeconfig: PathBuf,
    /// The kubectl binary the kubectl cases run.
    pub kubectl: PathBuf,
    /// The server's URL (as the kubeconfig has it).
    pub server: String,
    memory: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Side")
            .field("name", &self.name)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Side {
    /// The side of the admin of `kubeconfig`.
    pub async fn new(
        name: &'static str,
        kubeconfig: &Path,
        kubectl: &Path,
    ) -> anyhow::Result<Self> {
        let config = Kubeconfig::read_from(kubeconfig)
            .with_context(|| format!("reading {}", kubeconfig.display()))?;
        let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("the kubeconfig {}", kubeconfig.display()))?;
        let server = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_owned();
        let mut anonymous = config.clone();
        anonymous.auth_info = Default::default();
        Ok(Self {
            name,
            client: kube::Client::try_from(config)?,
            anonymous: kube::Client::try_from(anonymous)?,
            kubeconfig: kubeconfig.to_owned(),
            kubectl: kubectl.to_owned(),
            server,
            memory: Mutex::new(BTreeMap::new()),
        })
    }

    /// Keeps a value of this side (a resourceVersion, a uid) for a later case: `{key}` in a
    /// later request's path, body or kubectl arguments is replaced by it ([`Side::fill`]).
    pub fn remember(&self, key: &str, value: impl Into<String>) {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), value.into());
    }

    /// `text` with every `{key}` remembered on this side replaced by its value.
    pub fn fill(&self, text: &str) -> String {
        let memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = text.to_owned();
        for (k, v) in memory.iter() {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        out
    }

    /// Sends one HTTP request (path relative to the server, `{key}`s filled); the answer as
    /// `{"code": status, "body": JSON, or {"text": ...} when it is not JSON}`.
    pub async fn http(&self, req: &Req) -> anyhow::Result<Value> {
        let mut builder = http::Request::builder()
            .method(req.method.as_str())
            .uri(self.fill(&req.path));
        if let Some(ct) = &req.content_type {
            builder = builder.header(http::header::CONTENT_TYPE, ct.as_str());
        }
        builder = builder.header(
            http::header::ACCEPT,
            req.accept.as_deref().unwrap_or("application/json"),
        );
        let body = match &req.body {
            Some(b) => self.fill(b).into_bytes(),
            None => Vec::new(),
        };
        let request = builder.body(kube::client::Body::from(body))?;
        let client = if req.anonymous {
            &self.anonymous
        } else {
            &self.client
        };
        let response = tokio::time::timeout(REQUEST_TIMEOUT, client.send(request))
            .await
            .with_context(|| {
                format!(
                    "{} {}: no answer within {REQUEST_TIMEOUT:?}",
                    req.method, req.path
                )
            })?
            .with_context(|| format!("{} {}", req.method, req.path))?;
        let code = response.status().as_u16();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = tokio::time::timeout(REQUEST_TIMEOUT, response.into_body().collect())
            .await
            .with_context(|| {
                format!(
                    "{} {}: body not read within {REQUEST_TIMEOUT:?}",
                    req.method, req.path
                )
            })?
            .map_err(|e| anyhow::anyhow!("{} {}: reading the body: {e}", req.method, req.path))?
            .to_bytes();
        Ok(json!({"code": code, "body": body_value(&bytes, &content_type)}))
    }

    /// Runs kubectl with this side's kubeconfig (`{key}`s filled in the arguments), `stdin`
    /// fed; `{"exit", "stdout", "stderr"}`, stdout parsed when it is JSON.
    pub async fn kubectl(&self, args: &[String], stdin: Option<&str>) -> anyhow::Result<Value> {
        use tokio::io::AsyncWriteExt as _;
        let args: Vec<String> = args.iter().map(|a| self.fill(a)).collect();
        let mut child = tokio::process::Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=20s")
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running {}", self.kubectl.display()))?;
        let mut input = child.stdin.take().context("kubectl's stdin")?;
        if let Some(text) = stdin {
            input.write_all(self.fill(text).as_bytes()).await?;
        }
        drop(input);
        let out = tokio::time::timeout(KUBECTL_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("kubectl {args:?}: not done within {KUBECTL_TIMEOUT:?}"))??;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let stdout = match serde_json::from_str::<Value>(&stdout) {
            Ok(v) if v.is_object() => v,
            _ => Value::String(text_of(&stdout, &self.server)),
        };
        Ok(json!({
            "exit": out.status.code(),
            "stdout": stdout,
            "stderr": text_of(&stderr, &self.server),
        }))
    }
}

/// The bound of one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The bound of one kubectl run.
pub const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);

/// The body as JSON, else `{"text": ...}`; a watch stream (JSON lines) as an array.
fn body_value(bytes: &[u8], content_type: &str) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return v;
    }
    let text = String::from_utf8_lossy(bytes);
    let lines: Option<Vec<Value>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).ok())
        .collect();
    match lines {
        Some(lines) if content_type.contains("json") => Value::Array(lines),
        _ => json!({"text": text, "contentType": content_type.split(';').next().unwrap_or("")}),
    }
}

/// kubectl's text with the server's URL replaced and runs of spaces collapsed (column
/// widths follow the widest cell: a name or an age), ages (`5s`, `3m2s`, `<invalid>`) as
/// `<age>`.
fn text_of(text: &str, server: &str) -> String {
    text.replace(server, "<server>")
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|w| if is_age(w) { "<age>" } else { w })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_age(w: &str) -> bool {
    if w == "<invalid>" {
        return true;
    }
    let mut rest = w;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        let unit = rest[digits..].chars().next();
        if !matches!(unit, Some('s' | 'm' | 'h' | 'd' | 'y')) {
            return false;
        }
        rest = &rest[digits + 1..];
        parts += 1;
    }
    parts > 0
}

/// One HTTP request of a case.
#[derive(Clone, Debug)]
pub struct Req {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query, `{key}`s filled per side.
    pub path: String,
    /// `Content-Type`, when there is a body.
    pub content_type: Option<String>,
    /// `Accept` (default `application/json`).
    pub accept: Option<String>,
    /// The body, `{key}`s filled per side.
    pub body: Option<String>,
    /// Sent without credentials.
    pub anonymous: bool,
}

impl Req {
    /// A request without a body.
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            content_type: None,
            accept: None,
            body: None,
            anonymous: false,
        }
    }

    /// Without credentials.
    pub fn anonymous(mut self) -> Self {
        self.anonymous = true;
        self
    }

    /// With a JSON body (`application/json`).
    pub fn json(mut self, body: Value) -> Self {
        self.content_type = Some("application/json".into());
        self.body = Some(body.to_string());
        self
    }

    /// With a body of this content type (a patch, YAML, protobuf...).
    pub fn body(mut self, content_type: &str, body: impl Into<String>) -> Self {
        self.content_type = Some(content_type.to_owned());
        self.body = Some(body.into());
        self
    }

    /// With this `Accept`.
    pub fn accept(mut self, accept: &str) -> Self {
        self.accept = Some(accept.to_owned());
        self
    }
}

/// Normalises one side's answer in place: what [`IGNORED`] lists, nothing else.
pub fn normalise(v: &mut Value) {
    let mut generated = Vec::new();
    collect_generated(v, &mut generated);
    normalise_value(v, &generated);
}

/// Names that are some prefix plus a random suffix: `metadata.name` of an object with a
/// `generateName`, and of a pod a Job made (`<job>-<5>`).
fn collect_generated(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(meta) = m.get("metadata").and_then(Value::as_object) {
                let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
                let prefix = meta
                    .get("generateName")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| {
                        meta.get("labels")
                            .and_then(|l| l.get("batch.kubernetes.io/job-name"))
                            .and_then(Value::as_str)
                            .map(|j| format!("{j}-"))
                    });
                if let Some(p) = prefix
                    && name.len() > p.len()
                    && name.starts_with(&p)
                {
                    out.push(name.to_owned());
                }
            }
            m.values().for_each(|x| collect_generated(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_generated(x, out)),
        _ => {}
    }
}

fn normalise_value(v: &mut Value, generated: &[String]) {
    match v {
        Value::Object(m) => {
            m.remove("managedFields");
            for (k, x) in m.iter_mut() {
                match (k.as_str(), &*x) {
                    ("resourceVersion", Value::String(s)) if !s.is_empty() => {
                        *x = json!("<rv>");
                    }
                    ("continue", Value::String(s)) if !s.is_empty() => *x = json!("<continue>"),
                    _ => normalise_value(x, generated),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| normalise_value(x, generated)),
        Value::String(s) => *s = normalise_string(s, generated),
        _ => {}
    }
}

/// A string with its UUIDs, RFC 3339 time and random name suffixes replaced.
pub fn normalise_string(s: &str, generated: &[String]) -> String {
    if is_time(s) {
        return "<time>".into();
    }
    let mut out = replace_uuids(s);
    for g in generated {
        if let Some(cut) = g.len().checked_sub(5) {
            out = out.replace(g.as_str(), &format!("{}<random>", &g[..cut]));
        }
    }
    replace_suffixes(&out)
}

fn is_time(s: &str) -> bool {
    let b = s.as_bytes();
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let date = (0..4).all(digit)
        && at(4, b'-')
        && digit(5)
        && digit(6)
        && at(7, b'-')
        && digit(8)
        && digit(9)
        && at(10, b'T');
    let time = digit(11) && digit(12) && at(13, b':') && digit(14) && digit(15) && at(16, b':');
    if !(date && time && digit(17) && digit(18)) {
        return false;
    }
    let rest = &s[19..];
    let rest = match rest.strip_prefix('.') {
        Some(r) => r.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => rest,
    };
    rest == "Z" || (rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')))
}

fn replace_uuids(s: &str) -> String {
    const SHAPE: [usize; 5] = [8, 4, 4, 4, 12];
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    'scan: while i < b.len() {
        if i + 36 <= b.len() {
            let mut j = i;
            let mut ok = true;
            for (n, len) in SHAPE.iter().enumerate() {
                if !b[j..j + len].iter().all(u8::is_ascii_hexdigit) {
                    ok = false;
                    break;
                }
                j += len;
                if n < 4 {
                    if b[j] != b'-' {
                        ok = false;
                        break;
                    }
                    j += 1;
                }
            }
            if ok {
                out.push_str("<uid>");
                i += 36;
                continue 'scan;
            }
        }
        let c = s[i..].chars().next().unwrap_or('\0');
        out.push(c);
        i += c.len_utf8().max(1);
    }
    out
}

/// The API server's random suffix alphabet (`k8s.io/apimachinery/pkg/util/rand`).
const SUFFIX_ALPHABET: &str = "bcdfghjklmnpqrstvwxz2456789";

/// `-xxxxx` at the end of a word, five of the suffix alphabet, as `-<random>`: a name
/// generated from a prefix that this answer does not show the object of (an event's
/// message naming a pod).
fn replace_suffixes(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let word_end = |k: usize| {
            chars
                .get(k)
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        };
        if chars[i] == '-'
            && i > 0
            && chars[i - 1].is_ascii_alphanumeric()
            && i + 6 <= chars.len()
            && chars[i + 1..i + 6]
                .iter()
                .all(|c| SUFFIX_ALPHABET.contains(*c))
            && word_end(i + 6)
        {
            out.push_str("-<random>");
            i += 6;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Where two answers differ: a JSON pointer and each side's value there (absent: `None`).
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    /// JSON pointer into the answers.
    pub path: String,
    /// kube-sim's value.
    pub sim: Option<Value>,
    /// The real API server's value.
    pub real: Option<Value>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<Value>| match v {
            None => "(absent)".to_owned(),
            Some(v) => {
                let t = v.to_string();
                if t.len() > 300 {
                    format!(
                        "{}…",
                        &t[..t.char_indices().nth(300).map_or(t.len(), |(i, _)| i)]
                    )
                } else {
                    t
                }
            }
        };
        write!(
            f,
            "{}: kube-sim {} / kube-apiserver {}",
            self.path,
            show(&self.sim),
            show(&self.real)
        )
    }
}

/// Every place the two answers differ, leaf by leaf (arrays index by index).
pub fn differences(sim: &Value, real: &Value) -> Vec<Difference> {
    let mut out = Vec::new();
    diff_into("", Some(sim), Some(real), &mut out);
    out
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn diff_into(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<Difference>) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                diff_into(&format!("{path}/{}", escape(k)), x.get(k), y.get(k), out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for i in 0..x.len().max(y.len()) {
                diff_into(&format!("{path}/{i}"), x.get(i), y.get(i), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(Difference {
            path: path.to_owned(),
            sim: a.cloned(),
            real: b.cloned(),
        }),
    }
}

/// What a case runs on one side: its answer (any JSON), or an error when it could not run.
pub type Run = Box<dyn for<'a> Fn(&'a Side) -> BoxFuture<'a, anyhow::Result<Value>> + Send + Sync>;

/// A projection of both answers before they are compared (for answers of which only some
/// fields are the case's subject).
pub type Projection = fn(Value) -> Value;

/// One named entry of the table.
pub struct Case {
    /// What the case sends, as a failure names it.
    pub name: String,
    /// The requests.
    pub run: Run,
    /// Applied to each normalised answer before comparing.
    pub projection: Option<Projection>,
    /// `None`: the answers must be the same. `Some`: the known difference (see [`Known`]).
    pub known: Option<Known>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("name", &self.name)
            .field("known", &self.known)
            .finish_non_exhaustive()
    }
}

/// A difference kube-sim does not model (listed in its README's "Not modelled"): the JSON
/// pointers where the answers differ. Each must cover at least one difference, and every
/// difference must lie at or under one of them.
#[derive(Clone, Debug)]
pub struct Known {
    /// The pointers.
    pub paths: Vec<&'static str>,
    /// Why it is not modelled (as the README says it).
    pub why: &'static str,
}

impl Case {
    /// A case running `run` on each side.
    pub fn new(
        name: impl Into<String>,
        run: impl for<'a> Fn(&'a Side) -> BoxFuture<'a, anyhow::Result<Value>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            run: Box::new(run),
            projection: None,
            known: None,
        }
    }

    /// A case of one HTTP request.
    pub fn http(name: impl Into<String>, req: Req) -> Self {
        Self::new(name, move |side| {
            let req = req.clone();
            Box::pin(async move { side.http(&req).await })
        })
    }

    /// A case of one kubectl run (`stdin` fed).
    pub fn kubectl(name: impl Into<String>, args: &[&str], stdin: Option<&str>) -> Self {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let stdin = stdin.map(str::to_owned);
        Self::new(name, move |side| {
            let (args, stdin) = (args.clone(), stdin.clone());
            Box::pin(async move { side.kubectl(&args, stdin.as_deref()).await })
        })
    }

    /// Compare only this projection of the answers.
    pub fn project(mut self, projection: Projection) -> Self {
        self.projection = Some(projection);
        self
    }

    /// The answers differ exactly at `paths`, for the reason `why`.
    pub fn known(mut self, paths: &[&'static str], why: &'static str) -> Self {
        self.known = Some(Known {
            paths: paths.to_vec(),
            why,
        });
        self
    }
}

/// How one case came out.
#[derive(Debug)]
pub struct Verdict {
    /// The case's name.
    pub name: String,
    /// `None` when it passed; else why it failed.
    pub failure: Option<String>,
    /// Its known difference, if it has one.
    pub known: bool,
    /// How long it took (both sides, concurrently).
    pub took: Duration,
}

/// Runs every case, in order, on both sides at once; a verdict for each.
pub async fn run_cases(sim: &Side, real: &Side, cases: &[Case]) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    for case in cases {
        let start = std::time::Instant::now();
        let (a, b) = tokio::join!((case.run)(sim), (case.run)(real));
        let failure = match (a, b) {
            (Err(e), _) => Some(format!("could not run on kube-sim: {e:#}")),
            (_, Err(e)) => Some(format!("could not run on kube-apiserver: {e:#}")),
            (Ok(mut a), Ok(mut b)) => {
                normalise(&mut a);
                normalise(&mut b);
                if let Some(p) = case.projection {
                    a = p(a);
                    b = p(b);
                }
                judge(case, &differences(&a, &b))
            }
        };
        verdicts.push(Verdict {
            name: case.name.clone(),
            failure,
            known: case.known.is_some(),
            took: start.elapsed(),
        });
    }
    verdicts
}

/// `None` when `diffs` is what the case expects.
pub fn judge(case: &Case, diffs: &[Difference]) -> Option<String> {
    let covered = |d: &Difference, p: &str| d.path == p || d.path.starts_with(&format!("{p}/"));
    match &case.known {
        None if diffs.is_empty() => None,
        None => Some(format!(
            "differs:\n{}",
            diffs
                .iter()
                .map(|d| format!("    {d}"))
                .collect::<Vec<_>>()
                .join("\n")
        )),
        Some(known) => {
            let unexpected: Vec<String> = diffs
                .iter()
                .filter(|d| !known.paths.iter().any(|p| covered(d, p)))
                .map(|d| format!("    {d}"))
                .collect();
            let gone: Vec<&str> = known
                .paths
                .iter()
                .filter(|p| !diffs.iter().any(|d| covered(d, p)))
                .copied()
                .collect();
            if unexpected.is_empty() && gone.is_empty() {
                return None;
            }
            let mut why = String::new();
            if !unexpected.is_empty() {
                why.push_str(&format!(
                    "differs beyond its known difference ({}):\n{}\n",
                    known.why,
                    unexpected.join("\n")
                ));
            }
            if !gone.is_empty() {
                why.push_str(&format!(
                    "its known difference is gone at {gone:?} (fixed? then drop it from the \
                     case and from kube-sim's README): {}\n",
                    known.why
                ));
            }
            Some(why)
        }
    }
}

/// `value` with only the members named kept (at the top level of an object).
pub fn keep(value: &Value, keys: &[&str]) -> Value {
    let mut out = Map::new();
    for k in keys {
        if let Some(v) = value.get(*k) {
            out.insert((*k).to_owned(), v.clone());
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalising_replaces_only_what_is_ignored() {
        let mut v = json!({
            "metadata": {
                "name": "db-x7k2p", "generateName": "db-",
                "uid": "82b490ba-8be0-4240-9cb5-1ac75c5ac94f",
                "resourceVersion": "294", "creationTimestamp": "2026-12-02T05:55:49Z",
                "managedFields": [{"manager": "curl"}],
                "labels": {"controller-uid": "82b490ba-8be0-4240-9cb5-1ac75c5ac94f", "app": "db"},
            },
            "message": "Created pod: j1-xm49s; also db-x7k2p",
            "eventTime": "2026-12-02T05:55:49.523836Z",
            "spec": {"volumeName": "pvc-82b490ba-8be0-4240-9cb5-1ac75c5ac94f", "size": "1Gi"},
            "list": {"continue": "abc", "remainingItemCount": 3},
        });
        normalise(&mut v);
        assert_eq!(
            v,
            json!({
                "metadata": {
                    "name": "db-<random>", "generateName": "db-", "uid": "<uid>",
                    "resourceVersion": "<rv>", "creationTimestamp": "<time>",
                    "labels": {"controller-uid": "<uid>", "app": "db"},
                },
                "message": "Created pod: j1-<random>; also db-<random>",
                "eventTime": "<time>",
                "spec": {"volumeName": "pvc-<uid>", "size": "1Gi"},
                "list": {"continue": "<continue>", "remainingItemCount": 3},
            })
        );
        // Words that are not random suffixes stay.
        for word in [
            "restic-config",
            "volsync-src-db-cache",
            "snapgate-agent",
            "a-bcdfgh",
        ] {
            assert_eq!(normalise_string(word, &[]), word);
        }
    }

    #[test]
    fn differences_name_each_leaf_and_known_ones_must_stay_as_known() {
        let a = json!({"code": 200, "body": {"a": [1, 2], "b": {"c": null}}});
        let b = json!({"code": 201, "body": {"a": [1], "b": {}}});
        let d = differences(&a, &b);
        let paths: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["/body/a/1", "/body/b/c", "/code"]);
        let case = |known: Option<&[&'static str]>| {
            let c = Case::http("x", Req::new("GET", "/"));
            match known {
                Some(p) => c.known(p, "because"),
                None => c,
            }
        };
        assert!(judge(&case(None), &d).is_some());
        assert!(judge(&case(Some(&["/code", "/body"])), &d).is_none());
        assert!(
            judge(&case(Some(&["/code"])), &d).is_some(),
            "body differs too"
        );
        assert!(
            judge(&case(Some(&["/code", "/body", "/exit"])), &d).is_some(),
            "a known difference that is gone fails"
        );
        assert!(judge(&case(None), &[]).is_none());
    }

    #[test]
    fn kubectl_text_is_compared_without_ages_widths_or_the_server() {
        assert_eq!(
            text_of(
                "NAME   STATUS    AGE\ndata   Pending   3m12s\nx      Bound     <invalid>\nsee https://h:1/x",
                "https://h:1"
            ),
            "NAME STATUS AGE\ndata Pending <age>\nx Bound <age>\nsee <server>/x"
        );
        assert!(!is_age("1Gi") && !is_age("s") && !is_age("RWO"));
    }
}
