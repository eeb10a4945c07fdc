//! Who is calling, resolved once per RPC, and what they may do.
//!
//! ```text
//!  request ─► RpcName (server layer: the RPC's path) ─► Identify (interceptor): bearer token
//!          ─► Caller in the request's extensions ─► handler: Authorizer::check(caller, ns, action)
//! ```
//!
//! Without authentication configured every caller is [`Caller::Anonymous`] and allowed (local
//! use on loopback; anything else needs `--insecure-anonymous`). With it, a request without a
//! valid token is `UNAUTHENTICATED`, and [`Policy`] decides the rest:
//!
//! | who | may |
//! |---|---|
//! | an admin (`--admin SUBJECT`) | everything |
//! | a namespace admin (`--namespace-admin SUBJECT=ns1,ns2`) | manage and read sources, trigger and watch copies, in those namespaces |
//! | the agent ServiceAccount (`--agent-service-account`, default `snapgate-agent`) of a namespace | serve that namespace (and those `--agent-namespaces SUBJECT=ns1,ns2` grants) |
//! | any other ServiceAccount (an application) | Trigger, EndHold, WatchCopy, GetCopyStatus in its own namespace (a source may narrow that with `copyTrigger.allowedServiceAccounts`) |
//!
//! A denial is `PERMISSION_DENIED` and names only the caller, the action and the namespace
//! asked for: a namespace the caller may not see and one that does not exist look the same.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use tonic::{Code, Request, Status, service::Interceptor};

use crate::replica::Gate;
use crate::{
    audit::{Audit, Record, code_name},
    auth::{Authenticator, Subject},
    limits::RateLimits,
};

/// The RPC a request is for (its path without the leading `/`,
/// `snapgate.v1.SourceService/ApplySource`), put in the
/// request's extensions by a server layer so that interceptors and handlers can name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcName(pub String);

impl RpcName {
    /// Records the request's path (a `tower` map function for the server's layer).
    pub fn tag<B>(mut req: http::Request<B>) -> http::Request<B> {
        let path = req.uri().path().trim_start_matches('/').to_owned();
        req.extensions_mut().insert(RpcName(path));
        req
    }
}

/// The RPC of a request ("" when no layer recorded it).
pub(crate) fn rpc_of<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<RpcName>()
        .map(|r| r.0.clone())
        .unwrap_or_default()
}

/// The identity behind a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No credentials are checked (authentication is not configured).
    Anonymous,
    /// A caller with a valid token.
    Subject(Subject),
}

impl Caller {
    /// How audit records and denials name the caller.
    pub fn name(&self) -> &str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::Subject(s) => &s.name,
        }
    }

    /// The caller as a source's author: its user name and the groups the API server gives
    /// that user (a ServiceAccount's token carries no groups; Kubernetes derives them from the
    /// name the same way). `None` without authentication: there is no one to review.
    pub fn author(&self) -> Option<snapgate_scheduler_core::model::Author> {
        let Caller::Subject(subject) = self else {
            return None;
        };
        let mut groups = Vec::new();
        if let Some((namespace, _)) = &subject.service_account {
            groups.push("system:serviceaccounts".to_owned());
            groups.push(format!("system:serviceaccounts:{namespace}"));
        }
        groups.push("system:authenticated".to_owned());
        Some(snapgate_scheduler_core::model::Author {
            user: subject.name.clone(),
            groups,
        })
    }

    /// The ServiceAccount name when the caller is one of `namespace`.
    pub fn service_account_in(&self, namespace: &str) -> Option<&str> {
        match self {
            Caller::Subject(Subject {
                service_account: Some((ns, name)),
                ..
            }) if ns == namespace => Some(name),
            _ => None,
        }
    }
}

/// What a caller wants to do in a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read sources and runs.
    Read,
    /// Watch or read the copy status of a PVC.
    ReadCopy,
    /// Create, change or delete sources; start runs.
    Manage,
    /// Release a copy (Trigger) or end one's hold (EndHold).
    Trigger,
    /// Act as the agent of a namespace.
    Agent,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Read => "read sources",
            Action::ReadCopy => "read copy status",
            Action::Manage => "manage sources",
            Action::Trigger => "trigger copies",
            Action::Agent => "serve as the agent",
        }
    }
}

/// Who may do what, once authentication is on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Subjects that may do everything.
    pub admins: BTreeSet<String>,
    /// Subjects that may manage the sources of some namespaces.
    pub namespace_admins: BTreeMap<String, BTreeSet<String>>,
    /// The agents' ServiceAccount name: that ServiceAccount of a namespace serves it.
    pub agent_service_account: String,
    /// Subjects that may serve further namespaces as agents.
    pub agent_namespaces: BTreeMap<String, BTreeSet<String>>,
}

/// `SUBJECT=ns1,ns2` (as `--namespace-admin` and `--agent-namespaces` take it).
pub fn parse_grant(flag: &str, value: &str) -> Result<(String, Vec<String>), String> {
    let (subject, namespaces) = value
        .rsplit_once('=')
        .ok_or_else(|| format!("--{flag} {value:?}: expected SUBJECT=ns1,ns2"))?;
    let namespaces: Vec<String> = namespaces
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    if subject.is_empty() || namespaces.is_empty() {
        return Err(format!(
            "--{flag} {value:?}: expected SUBJECT=ns1,ns2 with at least one namespace"
        ));
    }
    for ns in &namespaces {
        snapgate_scheduler_core::validate::dns_label(&format!("--{flag}"), ns)
            .map_err(|e| e.to_string())?;
    }
    Ok((subject.to_owned(), namespaces))
}

impl Policy {
    fn allows(&self, caller: &Caller, namespace: &str, action: Action) -> bool {
        let Caller::Subject(subject) = caller else {
            return false;
        };
        if self.admins.contains(&subject.name) {
            return true;
        }
        // Every namespace at once (a listing, the quarantine): admins only.
        if namespace.is_empty() {
            return false;
        }
        let granted = |grants: &BTreeMap<String, BTreeSet<String>>| {
            grants
                .get(&subject.name)
                .is_some_and(|n| n.contains(namespace))
        };
        match action {
            Action::Agent => {
                caller.service_account_in(namespace) == Some(self.agent_service_account.as_str())
                    || granted(&self.agent_namespaces)
            }
            Action::Read | Action::Manage => granted(&self.namespace_admins),
            Action::ReadCopy | Action::Trigger => {
                granted(&self.namespace_admins)
                    || caller.service_account_in(namespace).is_some_and(|sa| {
                        // The agent is no application: it never triggers.
                        sa != self.agent_service_account
                    })
            }
        }
    }

    /// Whether the caller is an application (its rights come from being a ServiceAccount of
    /// the namespace, not from a grant): such a caller is also held to a source's
    /// `copyTrigger.allowedServiceAccounts`.
    fn application<'c>(&self, caller: &'c Caller, namespace: &str) -> Option<&'c str> {
        let Caller::Subject(subject) = caller else {
            return None;
        };
        let granted = self.admins.contains(&subject.name)
            || self
                .namespace_admins
                .get(&subject.name)
                .is_some_and(|n| n.contains(namespace));
        if granted {
            return None;
        }
        caller.service_account_in(namespace)
    }
}

/// Decides whether a caller may act on a namespace, and audits denials.
#[derive(Clone, Debug, Default)]
pub struct Authorizer {
    /// `None`: authentication is off and everything is allowed.
    policy: Option<Arc<Policy>>,
    audit: Audit,
}

impl Authorizer {
    /// Everything allowed (authentication off).
    pub fn open(audit: Audit) -> Self {
        Self {
            policy: None,
            audit,
        }
    }

    /// Decisions by `policy`.
    pub fn with_policy(policy: Policy, audit: Audit) -> Self {
        Self {
            policy: Some(Arc::new(policy)),
            audit,
        }
    }

    /// The audit trail.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Allows, or refuses with `PERMISSION_DENIED` (audited). An empty namespace means every
    /// namespace (a listing).
    pub fn check(
        &self,
        caller: &Caller,
        rpc: &str,
        namespace: &str,
        action: Action,
    ) -> Result<(), Status> {
        let Some(policy) = &self.policy else {
            return Ok(());
        };
        if policy.allows(caller, namespace, action) {
            return Ok(());
        }
        let status = Status::permission_denied(if namespace.is_empty() {
            format!(
                "{} may not {} in every namespace",
                caller.name(),
                action.verb()
            )
        } else {
            format!(
                "{} may not {} in namespace {namespace}",
                caller.name(),
                action.verb()
            )
        });
        self.audit.record(Record {
            identity: caller.name(),
            rpc,
            namespace,
            code: code_name(Code::PermissionDenied),
            ..Default::default()
        });
        Err(status)
    }

    /// The caller's ServiceAccount name when it acts as an application of `namespace` (to be
    /// held to `copyTrigger.allowedServiceAccounts`); `None` for admins, namespace admins and
    /// when authentication is off.
    pub fn application_of<'c>(&self, caller: &'c Caller, namespace: &str) -> Option<&'c str> {
        self.policy.as_ref()?.application(caller, namespace)
    }
}

/// The interceptor of every snapgate service: resolves the caller from the bearer token and,
/// with authentication on, holds each identity to its request rate.
#[derive(Clone)]
pub struct Identify {
    auth: Option<Arc<Authenticator>>,
    audit: Audit,
    limits: Arc<RateLimits>,
    gate: Gate,
}

impl Identify {
    /// Resolves callers with `auth` (`None`: everyone is [`Caller::Anonymous`], unlimited).
    pub fn new(auth: Option<Arc<Authenticator>>, audit: Audit, limits: Arc<RateLimits>) -> Self {
        Self {
            auth,
            audit,
            limits,
            gate: Gate::single(),
        }
    }

    /// Refuses the identified calls `gate` does not let through: a replica that does not lead
    /// serves only reads, and only while it has a copy of the leader's commits.
    pub fn gated(mut self, gate: Gate) -> Self {
        self.gate = gate;
        self
    }

    fn over_rate(&self, key: &str) -> Option<Status> {
        (!self.limits.allow(key, std::time::Instant::now())).then(|| {
            Status::resource_exhausted(format!(
                "more than {} requests per second from this caller; slow down",
                self.limits.rate()
            ))
        })
    }
}

impl Interceptor for Identify {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let caller = match &self.auth {
            None => Caller::Anonymous,
            Some(auth) => {
                let token = req
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim);
                let result = match token {
                    None | Some("") => Err(Status::unauthenticated(
                        "a bearer token is required (authorization: Bearer <ServiceAccount token>)",
                    )),
                    Some(t) => auth
                        .authenticate(t)
                        .map(Caller::Subject)
                        .map_err(|e| Status::unauthenticated(e.to_string())),
                };
                match result {
                    Ok(c) => {
                        if let Some(status) = self.over_rate(c.name()) {
                            return Err(status);
                        }
                        c
                    }
                    Err(status) => {
                        // Failed credentials are counted by address (no name to trust), and a
                        // flood of them is refused unaudited.
                        let peer = req
                            .remote_addr()
                            .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string());
                        if let Some(limited) = self.over_rate(&format!("unauthenticated:{peer}")) {
                            return Err(limited);
                        }
                        self.audit.record(Record {
                            identity: "unauthenticated",
                            rpc: &rpc_of(&req),
                            code: code_name(Code::Unauthenticated),
                            ..Default::default()
                        });
                        return Err(status);
                    }
                }
            }
        };
        // After authentication: an unauthenticated caller learns nothing of the election.
        self.gate.check(&rpc_of(&req))?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// The audit record of a call that was allowed, finished with its outcome.
pub(crate) struct Audited {
    identity: String,
    rpc: String,
    namespace: String,
    source: String,
}

impl Audited {
    /// A record for `caller` calling `rpc` on `namespace` (and `source`, if named).
    pub(crate) fn new(caller: &Caller, rpc: &str, namespace: &str, source: &str) -> Self {
        Self {
            identity: caller.name().to_owned(),
            rpc: rpc.to_owned(),
            namespace: namespace.to_owned(),
            source: source.to_owned(),
        }
    }

    /// Writes the record with the call's result (and the run it named or made).
    pub(crate) fn finish<T>(&self, audit: &Audit, result: &Result<T, Status>, run: &str) {
        audit.record(Record {
            identity: &self.identity,
            rpc: &self.rpc,
            namespace: &self.namespace,
            source: &self.source,
            run,
            code: code_name(result.as_ref().map_or_else(Status::code, |_| Code::Ok)),
            ..Default::default()
        });
    }
}

/// The caller recorded by [`Identify`].
pub(crate) fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("request reached a handler without an identity"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(ns: &str, name: &str) -> Caller {
        Caller::Subject(Subject {
            name: format!("system:serviceaccount:{ns}:{name}"),
            service_account: Some((ns.into(), name.into())),
            cluster: String::new(),
        })
    }

    fn user(name: &str) -> Caller {
        Caller::Subject(Subject {
            name: name.into(),
            service_account: None,
            cluster: String::new(),
        })
    }

    #[test]
    fn the_policy_table() {
        let policy = Policy {
            admins: ["ops".to_owned()].into(),
            namespace_admins: [("team-a".to_owned(), ["apps".to_owned()].into())].into(),
            agent_service_account: "snapgate-agent".into(),
            agent_namespaces: [(
                "system:serviceaccount:snapgate:central".to_owned(),
                ["apps".to_owned(), "web".to_owned()].into(),
            )]
            .into(),
        };
        use Action::*;
        let cases: &[(Caller, &str, Action, bool)] = &[
            (user("ops"), "", Read, true),
            (user("ops"), "apps", Agent, true),
            (user("team-a"), "apps", Manage, true),
            (user("team-a"), "apps", Trigger, true),
            (user("team-a"), "web", Read, false),
            (user("team-a"), "", Read, false),
            (user("team-a"), "apps", Agent, false),
            (sa("apps", "db"), "apps", Trigger, true),
            (sa("apps", "db"), "apps", ReadCopy, true),
            (sa("apps", "db"), "apps", Read, false),
            (sa("apps", "db"), "apps", Manage, false),
            (sa("apps", "db"), "apps", Agent, false),
            (sa("apps", "db"), "web", Trigger, false),
            (sa("apps", "snapgate-agent"), "apps", Agent, true),
            (sa("apps", "snapgate-agent"), "web", Agent, false),
            (sa("apps", "snapgate-agent"), "apps", Trigger, false),
            (sa("snapgate", "central"), "web", Agent, true),
            (sa("snapgate", "central"), "other", Agent, false),
            (Caller::Anonymous, "apps", ReadCopy, false),
        ];
        for (caller, ns, action, want) in cases {
            assert_eq!(
                policy.allows(caller, ns, *action),
                *want,
                "{} {action:?} in {ns:?}",
                caller.name()
            );
        }
        assert_eq!(policy.application(&sa("apps", "db"), "apps"), Some("db"));
        assert_eq!(policy.application(&user("team-a"), "apps"), None);
        assert_eq!(policy.application(&sa("web", "db"), "apps"), None);
    }

    #[test]
    fn grants_are_subject_equals_namespaces() {
        assert_eq!(
            parse_grant("namespace-admin", "system:serviceaccount:ops:x=apps,web").unwrap(),
            (
                "system:serviceaccount:ops:x".to_owned(),
                vec!["apps".to_owned(), "web".to_owned()]
            )
        );
        for bad in ["nobody", "x=", "=apps", "x=Not_A_Namespace"] {
            assert!(parse_grant("namespace-admin", bad).is_err(), "{bad}");
        }
    }
}
