//! No confused deputy: the agent acts on a source only with its author's rights.
//!
//! Whoever may manage a namespace's sources through the scheduler could otherwise make the
//! agent (whose ServiceAccount may create Jobs) run a mover there: a Job that mounts the
//! namespace's Secrets and the PVC's data and sends them where the spec says. So before the
//! agent acts on a run (every phase but CLEANUP, which only removes what the agent made) it
//! asks the API server, with one `LocalSubjectAccessReview` per check, whether the run's
//! author (`Directive.author`, whom the scheduler authenticated) may:
//!
//! - `create` `jobs.batch` in the namespace: a mover is a Job;
//! - `impersonate` the `serviceaccounts` named by the spec's `moverServiceAccount`, when it
//!   names one: the mover runs with that account's rights. The built-in `edit` and `admin`
//!   roles grant this; a role that only lets someone create Jobs does not.
//!
//! ```text
//!   author?  ── none ──► fail the run (NoAuthor): the scheduler authenticated no one
//!     │ yes
//!   review ── pending ─► ReviewAuthor (the shell asks the API server, then plans again)
//!     │  └── denied ───► Warning Event, fail the run (AuthorForbidden)
//!     ▼ allowed
//!   the phase's own steps
//! ```
//!
//! An agent started with `--source-authors=trust` ([`SourceAuthors::Trust`]) acts on the
//! scheduler's word instead: for a scheduler without authentication whose every caller is
//! trusted (a local demo, tests).

use std::fmt;

use snapgate_proto::v1;

/// Whether the agent reviews authors (`--source-authors`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceAuthors {
    /// Review every run's author; a run without one fails.
    #[default]
    Review,
    /// Act on the scheduler's word (a scheduler without authentication, whose every caller
    /// is trusted).
    Trust,
}

/// Where the review of a run's author stands at the plan's time, as the shell keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Review<'a> {
    /// Not asked yet (or the answer was lost): the plan asks for it.
    #[default]
    Pending,
    /// The API server allowed every check of [`checks`].
    Allowed,
    /// The API server refused a check: which one and why, as the shell wrote it with
    /// [`denial`].
    Denied(&'a str),
}

/// One question for the API server: may the author do `verb` on `resource` (in `group`,
/// named `name` when set) in the run's namespace?
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessCheck {
    /// The RBAC verb.
    pub verb: &'static str,
    /// The API group ("" for the core group).
    pub group: &'static str,
    /// The resource (plural).
    pub resource: &'static str,
    /// The object's name, for a check on one object.
    pub name: Option<String>,
}

impl fmt::Display for AccessCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        Ok(())
    }
}

/// What the shell asks the API server about a run's author.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorReview {
    /// The author's user name.
    pub user: String,
    /// The author's groups.
    pub groups: Vec<String>,
    /// Each must be allowed, in this order (the first refused one is the answer).
    pub checks: Vec<AccessCheck>,
}

/// The checks for a run whose mover may use `mover_service_account`.
pub fn checks(mover_service_account: Option<&str>) -> Vec<AccessCheck> {
    let mut out = vec![AccessCheck {
        verb: "create",
        group: "batch",
        resource: "jobs",
        name: None,
    }];
    if let Some(sa) = mover_service_account.filter(|s| !s.is_empty()) {
        out.push(AccessCheck {
            verb: "impersonate",
            group: "",
            resource: "serviceaccounts",
            name: Some(sa.to_owned()),
        });
    }
    out
}

/// The longest author user name (or group name) the agent passes on to the API server.
pub const MAX_NAME_BYTES: usize = 1024;
/// The most groups of an author the agent passes on.
pub const MAX_GROUPS: usize = 64;
/// The most of an API server's reason for a denial that the agent repeats.
pub const MAX_REASON_BYTES: usize = 1024;

/// The review to ask for the author of a run of `namespace/source`, or why the run cannot
/// be acted on: it names no author, or one past the bounds (the scheduler is not trusted to
/// send sane values any more than the cluster is).
pub fn request(
    author: Option<&v1::Author>,
    mover_service_account: Option<&str>,
    namespace: &str,
    source: &str,
) -> Result<AuthorReview, String> {
    let Some(author) = author.filter(|a| !a.user.is_empty()) else {
        return Err(no_author(namespace, source));
    };
    if author.user.len() > MAX_NAME_BYTES
        || author.groups.len() > MAX_GROUPS
        || author.groups.iter().any(|g| g.len() > MAX_NAME_BYTES)
    {
        return Err(format!(
            "the author of source {namespace}/{source} is not reviewed: its name and each of \
             its groups may have at most {MAX_NAME_BYTES} bytes, and it at most {MAX_GROUPS} \
             groups"
        ));
    }
    Ok(AuthorReview {
        user: author.user.clone(),
        groups: author.groups.clone(),
        checks: checks(mover_service_account),
    })
}

/// How a refused check is reported: who, what, where, and the API server's reason if it
/// gave one.
pub fn denial(user: &str, check: &AccessCheck, namespace: &str, reason: &str) -> String {
    let reason = crate::bounds::cut(reason.to_owned(), MAX_REASON_BYTES);
    let mut out = format!(
        "the source's author {user:?} may not {check} in namespace {namespace:?}, and the agent \
         acts on a source only with its author's rights; grant them (the built-in edit role \
         does), then apply the source again or wait for its next run"
    );
    if !reason.is_empty() {
        out.push_str(" (API server: ");
        out.push_str(&reason);
        out.push(')');
    }
    out
}

/// Why a run without an author is refused.
pub fn no_author(namespace: &str, source: &str) -> String {
    format!(
        "source {namespace}/{source} has no author: the scheduler runs without authentication, \
         and this agent acts on a source only with its author's rights \
         (--source-authors=review); turn on authentication in the scheduler, or start the \
         agent with --source-authors=trust if every caller of the scheduler is trusted"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mover_is_a_job_and_a_named_service_account_must_be_the_authors_to_use() {
        let jobs = AccessCheck {
            verb: "create",
            group: "batch",
            resource: "jobs",
            name: None,
        };
        assert_eq!(checks(None), vec![jobs.clone()]);
        assert_eq!(checks(Some("")), vec![jobs.clone()]);
        assert_eq!(
            checks(Some("mover")),
            vec![
                jobs,
                AccessCheck {
                    verb: "impersonate",
                    group: "",
                    resource: "serviceaccounts",
                    name: Some("mover".into()),
                }
            ]
        );
        assert_eq!(checks(Some("mover"))[0].to_string(), "create jobs.batch");
        assert_eq!(
            checks(Some("mover"))[1].to_string(),
            "impersonate serviceaccounts \"mover\""
        );
    }

    #[test]
    fn a_review_is_asked_only_for_a_named_author() {
        let author = v1::Author {
            user: "system:serviceaccount:app:ops".into(),
            groups: vec!["system:serviceaccounts".into()],
        };
        let r = request(Some(&author), Some("mover"), "app", "db").unwrap();
        assert_eq!(r.user, author.user);
        assert_eq!(r.groups, author.groups);
        assert_eq!(r.checks, checks(Some("mover")));
        assert_eq!(
            request(None, None, "app", "db"),
            Err(no_author("app", "db"))
        );
        assert_eq!(
            request(Some(&v1::Author::default()), None, "app", "db"),
            Err(no_author("app", "db"))
        );
    }

    #[test]
    fn an_author_past_the_bounds_is_refused_naming_them() {
        let long = "a".repeat(MAX_NAME_BYTES + 1);
        let at_bound = v1::Author {
            user: "a".repeat(MAX_NAME_BYTES),
            groups: vec!["g".repeat(MAX_NAME_BYTES); MAX_GROUPS],
        };
        assert!(request(Some(&at_bound), None, "app", "db").is_ok());
        for author in [
            v1::Author {
                user: long.clone(),
                groups: vec![],
            },
            v1::Author {
                user: "alice".into(),
                groups: vec![long],
            },
            v1::Author {
                user: "alice".into(),
                groups: vec!["g".into(); MAX_GROUPS + 1],
            },
        ] {
            let why = request(Some(&author), None, "app", "db").unwrap_err();
            assert!(
                why.contains("at most 1024 bytes") && why.contains("at most 64"),
                "{why}"
            );
        }
    }

    #[test]
    fn a_denial_names_the_author_the_right_the_namespace_and_the_servers_reason() {
        let text = denial("alice", &checks(None)[0], "app", "no RBAC policy matched");
        assert!(text.contains("\"alice\" may not create jobs.batch in namespace \"app\""));
        assert!(
            text.ends_with("(API server: no RBAC policy matched)"),
            "{text}"
        );
        assert!(!denial("alice", &checks(None)[0], "app", "").contains("API server"));
        assert!(no_author("app", "db").contains("--source-authors=trust"));
    }
}
