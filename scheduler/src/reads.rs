//! The reads a scheduler answers from its core: the leader's driver from the state it drives,
//! a follower (see `follower`) from its copy of the leader's commits. One answer for both.

use chrono::{DateTime, Utc};
use snapgate_scheduler_core::{
    CoreError, Quarantined, Scheduler, SourceKey,
    model::{CopyStatus, CopyTarget, Run, Source},
    presence::{self, Absence, NO_AGENT_GRACE},
    schedule::Tz,
};
use tokio::sync::oneshot;

use crate::driver::DriverError;

type Reply<T> = oneshot::Sender<Result<T, DriverError>>;

/// A request that changes nothing.
pub(crate) enum Read {
    Get {
        key: SourceKey,
        reply: Reply<Source>,
    },
    List {
        namespace: Option<String>,
        after: Option<SourceKey>,
        limit: usize,
        reply: Reply<(Vec<Source>, Option<SourceKey>)>,
    },
    ListRuns {
        key: SourceKey,
        limit: usize,
        reply: Reply<Vec<Run>>,
    },
    Preview {
        key: SourceKey,
        after: Option<DateTime<Utc>>,
        count: usize,
        reply: Reply<(Vec<DateTime<Utc>>, Tz)>,
    },
    CopyStatus {
        target: CopyTarget,
        application: Option<String>,
        reply: Reply<CopyStatus>,
    },
    /// The stored records left out.
    ListQuarantined { reply: Reply<Vec<Quarantined>> },
}

/// What a reader knows besides the core: whether an agent serves a namespace (the leader holds
/// the agents' links; a follower does not know, and says nothing of it), and the records left
/// out.
pub(crate) struct Context<'a> {
    pub now: DateTime<Utc>,
    pub absence: &'a dyn Fn(&str) -> Option<Absence>,
    pub quarantined: &'a [Quarantined],
}

/// Answers `read` from `core`.
pub(crate) fn answer(core: &Scheduler, read: Read, cx: &Context<'_>) {
    let now = cx.now;
    let with_presence = |mut source: Source| {
        if let Some(absence) = (cx.absence)(&source.key.namespace) {
            presence::mark_source(&mut source, &absence, NO_AGENT_GRACE, now);
        }
        source
    };
    match read {
        Read::Get { key, reply } => {
            let r = core.get_source(&key).map(with_presence);
            let _ = reply.send(r.map_err(Into::into));
        }
        Read::List {
            namespace,
            after,
            limit,
            reply,
        } => {
            let (sources, next) = core.list_sources(namespace.as_deref(), after.as_ref(), limit);
            let sources = sources.into_iter().map(with_presence).collect();
            let _ = reply.send(Ok((sources, next)));
        }
        Read::ListRuns { key, limit, reply } => {
            let absence = (cx.absence)(&key.namespace);
            let r = core.list_runs(&key, limit).map(|mut runs| {
                if let Some(absence) = &absence {
                    for run in &mut runs {
                        presence::mark_run(run, absence, NO_AGENT_GRACE, now);
                    }
                }
                runs
            });
            let _ = reply.send(r.map_err(Into::into));
        }
        Read::Preview {
            key,
            after,
            count,
            reply,
        } => {
            let r = core.preview(&key, after.unwrap_or(now), count);
            let _ = reply.send(r.map_err(Into::into));
        }
        Read::CopyStatus {
            target,
            application,
            reply,
        } => {
            let r = admit(core, &target, application.as_deref())
                .and_then(|()| core.resolve_target(&target).map(|t| core.target_status(&t)));
            let _ = reply.send(r.map_err(Into::into));
        }
        Read::ListQuarantined { reply } => {
            let _ = reply.send(Ok(cx.quarantined.to_vec()));
        }
    }
}

/// Answers `read` with `error`.
pub(crate) fn refuse(read: Read, error: DriverError) {
    match read {
        Read::Get { reply, .. } => drop(reply.send(Err(error))),
        Read::List { reply, .. } => drop(reply.send(Err(error))),
        Read::ListRuns { reply, .. } => drop(reply.send(Err(error))),
        Read::Preview { reply, .. } => drop(reply.send(Err(error))),
        Read::CopyStatus { reply, .. } => drop(reply.send(Err(error))),
        Read::ListQuarantined { reply } => drop(reply.send(Err(error))),
    }
}

/// Refuses an application (a ServiceAccount acting in its own namespace) that a source of
/// the target does not list in `copyTrigger.allowedServiceAccounts`.
pub(crate) fn admit(
    core: &Scheduler,
    target: &CopyTarget,
    application: Option<&str>,
) -> Result<(), CoreError> {
    let Some(sa) = application else {
        return Ok(());
    };
    let resolved = core.resolve_target(target)?;
    if core.application_allowed(&resolved, sa) {
        return Ok(());
    }
    Err(CoreError::PermissionDenied(format!(
        "ServiceAccount {sa} may not act on pvc {}/{}: a source of it lists other copyTrigger.allowedServiceAccounts",
        resolved.namespace, resolved.pvc
    )))
}
