//! Fault injection and the request log.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::broadcast;

/// The Kubernetes verb of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// GET of one object (or a subresource such as `pods/log`).
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection with `watch=1`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
}

impl Verb {
    /// The RBAC verb string.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an injected fault does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer with this HTTP code and a matching `Status` body
    /// (500 InternalError, 409 Conflict, 429 TooManyRequests, 503, 403, 404, ...).
    Status(u16),
    /// Hang for [`Faults::timeout_duration`] (tokio time) and then answer `504 Timeout`.
    Timeout,
    /// For watches: answer 200 and close the stream at once, without events.
    CloseWatch,
    /// Delay the request by this long, then serve it normally.
    Delay(Duration),
}

/// How [`Faults::end_watches`] ends the watches open at the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEnd {
    /// The stream just ends, as when the API server restarts or a proxy between drops the
    /// connection: the client watches again from the last resourceVersion it saw.
    Close,
    /// A watch `ERROR` event holding a `410 Gone` Status of reason `Expired`, then the end, as
    /// the API server sends it when the resourceVersion watched from was compacted away: the
    /// client must list again.
    Expire,
}

/// A rule selecting requests to fail. `None` fields match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    /// Verb to match.
    pub verb: Option<Verb>,
    /// Resource plural to match (e.g. `persistentvolumeclaims`).
    pub resource: Option<String>,
    /// Subresource to match (e.g. `status`); `None` matches any.
    pub subresource: Option<String>,
    /// Namespace to match.
    pub namespace: Option<String>,
    /// Object name to match.
    pub name: Option<String>,
    /// Authenticated user name to match.
    pub user: Option<String>,
    /// How many matching requests fail; `None` means every one.
    pub count: Option<u32>,
    /// What happens to a matching request.
    pub kind: FaultKind,
}

impl FaultRule {
    /// A rule matching every request, failing each with `kind`.
    pub fn new(kind: FaultKind) -> Self {
        Self {
            verb: None,
            resource: None,
            subresource: None,
            namespace: None,
            name: None,
            user: None,
            count: None,
            kind,
        }
    }

    /// Only requests with this verb.
    pub fn verb(mut self, verb: Verb) -> Self {
        self.verb = Some(verb);
        self
    }

    /// Only requests for this resource plural.
    pub fn resource(mut self, plural: &str) -> Self {
        self.resource = Some(plural.into());
        self
    }

    /// Only requests for this subresource.
    pub fn subresource(mut self, sub: &str) -> Self {
        self.subresource = Some(sub.into());
        self
    }

    /// Only requests in this namespace.
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// Only requests for this object name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Only requests made by this user (as authenticated, e.g.
    /// `system:serviceaccount:<ns>:<name>`).
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Fail only the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Self {
        self.count = Some(n);
        self
    }

    fn matches(&self, r: &RequestRecord) -> bool {
        self.verb.is_none_or(|v| r.verb == Some(v))
            && self.resource.as_ref().is_none_or(|x| *x == r.resource)
            && self
                .subresource
                .as_ref()
                .is_none_or(|x| r.subresource.as_ref() == Some(x))
            && self
                .namespace
                .as_ref()
                .is_none_or(|x| r.namespace.as_ref() == Some(x))
            && self
                .name
                .as_ref()
                .is_none_or(|x| r.name.as_ref() == Some(x))
            && self.user.as_ref().is_none_or(|x| *x == r.user)
    }
}

/// The set of active fault rules.
#[derive(Debug)]
pub struct Faults {
    rules: Mutex<Vec<FaultRule>>,
    timeout: Mutex<Duration>,
    /// Tells every open watch to end (see [`Faults::end_watches`]).
    ends: broadcast::Sender<WatchEnd>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            rules: Mutex::new(Vec::new()),
            timeout: Mutex::new(Duration::from_secs(60)),
            ends: broadcast::channel(16).0,
        }
    }
}

impl Faults {
    /// Add a rule. Rules are checked in insertion order; the first match applies.
    pub fn fail(&self, rule: FaultRule) {
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(rule);
    }

    /// The rules not yet used up, in order.
    pub fn rules(&self) -> Vec<FaultRule> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Remove every rule.
    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// How long a [`FaultKind::Timeout`] hangs before answering 504 (default 60s).
    pub fn set_timeout_duration(&self, d: Duration) {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner()) = d;
    }

    /// The current timeout duration.
    pub fn timeout_duration(&self) -> Duration {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends every watch open now (its events from the store still being sent, or live), as
    /// `how` says; watches opened later are not affected. Returns how many were ended.
    pub fn end_watches(&self, how: WatchEnd) -> usize {
        self.ends.send(how).unwrap_or(0)
    }

    /// What a watch opening now listens to for [`Faults::end_watches`].
    pub(crate) fn watch_ends(&self) -> broadcast::Receiver<WatchEnd> {
        self.ends.subscribe()
    }

    /// Find and consume a matching rule.
    pub(crate) fn take(&self, r: &RequestRecord) -> Option<FaultKind> {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        // A CloseWatch rule only means something for a watch: other requests leave it alone.
        let pos = rules.iter().position(|rule| {
            rule.matches(r) && (rule.kind != FaultKind::CloseWatch || r.verb == Some(Verb::Watch))
        })?;
        let kind = rules[pos].kind.clone();
        if let Some(c) = rules[pos].count.as_mut() {
            *c = c.saturating_sub(1);
            if *c == 0 {
                rules.remove(pos);
            }
        }
        Some(kind)
    }
}

/// One served request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Request path (without query).
    pub path: String,
    /// Kubernetes verb; `None` for non-resource requests (discovery, `/version`).
    pub verb: Option<Verb>,
    /// API group (`""` for core).
    pub group: String,
    /// Resource plural (empty for non-resource requests).
    pub resource: String,
    /// Subresource (`status`, `log`).
    pub subresource: Option<String>,
    /// Namespace from the URL.
    pub namespace: Option<String>,
    /// Object name from the URL.
    pub name: Option<String>,
    /// Authenticated user name.
    pub user: String,
    /// Response code.
    pub code: u16,
}

/// Log of every request served, for counting API calls in tests.
#[derive(Debug, Default)]
pub struct RequestLog {
    records: Mutex<Vec<RequestRecord>>,
}

impl RequestLog {
    pub(crate) fn push(&self, r: RequestRecord) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r);
    }

    /// A copy of every record so far.
    pub fn records(&self) -> Vec<RequestRecord> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Forget all records.
    pub fn clear(&self) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Records satisfying `pred`.
    pub fn filter(&self, pred: impl Fn(&RequestRecord) -> bool) -> Vec<RequestRecord> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| pred(r))
            .cloned()
            .collect()
    }

    /// Number of records satisfying `pred`.
    pub fn count(&self, pred: impl Fn(&RequestRecord) -> bool) -> usize {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| pred(r))
            .count()
    }

    /// Number of requests with this verb on this resource plural.
    pub fn count_verb(&self, verb: Verb, resource: &str) -> usize {
        self.count(|r| r.verb == Some(verb) && r.resource == resource)
    }

    /// Number of requests made by `user`.
    pub fn count_user(&self, user: &str) -> usize {
        self.count(|r| r.user == user)
    }
}
