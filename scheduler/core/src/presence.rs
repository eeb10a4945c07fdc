//! No agent, no word: what a source and its run in flight say when no agent serves their
//! namespace. The shell knows which namespaces its agent links serve; this decides what a
//! reader is told, from that and the time.
//!
//! A namespace no agent serves is described by its [`Absence`]: since when (the last agent's
//! leaving, or the scheduler's start) and the last agent seen. Reads of a source with a run in
//! flight then show the `Synchronizing` condition `NoAgent` and the run's message says why it
//! does not move, once the absence has lasted [`NO_AGENT_GRACE`] (an agent reconnecting after
//! a scheduler restart is not reported). Nothing is stored: when an agent connects, the next
//! read shows the run as it is.

use chrono::{DateTime, Duration, SecondsFormat, Utc};

use crate::model::{Condition, Run, RunPhase, Source};

/// How long a namespace may be without an agent before reads say so.
pub const NO_AGENT_GRACE: Duration = Duration::seconds(30);

/// The `Synchronizing` condition's reason while no agent serves the namespace.
pub const NO_AGENT: &str = "NoAgent";

/// Since when no agent has served a namespace, and the last one that did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Absence {
    /// When the last agent left, or when the scheduler started if none came since.
    pub since: DateTime<Utc>,
    /// The last agent that served the namespace (its id) and when it left.
    pub last_agent: Option<(String, DateTime<Utc>)>,
}

fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Absence {
    /// What a reader is told, naming the namespace.
    pub fn describe(&self, namespace: &str) -> String {
        let last = match &self.last_agent {
            Some((id, at)) => format!("the last one, {id:?}, left at {}", time(at)),
            None => "none has connected since the scheduler started".to_owned(),
        };
        format!(
            "no agent serves namespace {namespace} since {} ({last}); runs there wait for one",
            time(&self.since)
        )
    }

    /// Whether the absence has lasted `grace` at `now`.
    fn lasted(&self, grace: Duration, now: DateTime<Utc>) -> bool {
        self.since
            .checked_add_signed(grace)
            .is_some_and(|due| due <= now)
    }
}

/// Shows on `source` that no agent serves its namespace, if a run is in flight and the absence
/// has lasted `grace` at `now`; whether it did.
pub fn mark_source(
    source: &mut Source,
    absence: &Absence,
    grace: Duration,
    now: DateTime<Utc>,
) -> bool {
    let message = absence.describe(&source.key.namespace);
    let status = &mut source.status;
    if status.current_run.is_none() || !absence.lasted(grace, now) {
        return false;
    }
    let condition = Condition {
        type_: "Synchronizing".into(),
        status: "True".into(),
        reason: NO_AGENT.into(),
        message,
        last_transition_time: Some(absence.since),
    };
    match status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == "Synchronizing")
    {
        Some(c) => *c = condition,
        None => status.conditions.push(condition),
    }
    true
}

/// Shows on a run in flight that no agent serves its namespace (before what it said), if the
/// absence has lasted `grace` at `now`; whether it did.
pub fn mark_run(run: &mut Run, absence: &Absence, grace: Duration, now: DateTime<Utc>) -> bool {
    if run.phase == RunPhase::Finished || !absence.lasted(grace, now) {
        return false;
    }
    let said = absence.describe(&run.source.namespace);
    run.message = if run.message.is_empty() {
        said
    } else {
        format!("{said}; before: {}", run.message)
    };
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        RunId, SourceKey,
        model::{CopyMethod, MoverInput, RunReason, SourceStatus, SpecInput},
    };

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn source(run: Option<RunId>) -> Source {
        let key = SourceKey::new("app", "db");
        let spec = SpecInput::new("data", MoverInput::restic(CopyMethod::Snapshot, "restic"));
        let (spec, _) = crate::validate::admit(&key, spec).unwrap();
        Source {
            key,
            spec,
            status: SourceStatus {
                current_run: run,
                conditions: vec![Condition {
                    type_: "Synchronizing".into(),
                    status: "True".into(),
                    reason: "SyncInProgress".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            version: 1,
            create_time: t(0),
            author: None,
        }
    }

    #[test]
    fn a_source_with_a_run_in_flight_says_no_agent_once_the_absence_lasted_the_grace() {
        let left = Absence {
            since: t(0),
            last_agent: Some(("agent-7".into(), t(0))),
        };
        let never = Absence {
            since: t(0),
            last_agent: None,
        };
        let cases = [
            // (run in flight, absence, now, marked)
            (Some(RunId(1)), &left, t(29), false),
            (Some(RunId(1)), &left, t(30), true),
            (Some(RunId(1)), &never, t(3600), true),
            (None, &left, t(3600), false),
        ];
        for (run, absence, now, marked) in cases {
            let mut s = source(run);
            assert_eq!(mark_source(&mut s, absence, NO_AGENT_GRACE, now), marked);
            let c = &s.status.conditions[0];
            if marked {
                assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", NO_AGENT));
                assert_eq!(c.last_transition_time, Some(t(0)));
                assert!(
                    c.message
                        .starts_with("no agent serves namespace app since 2027-01-15T08:00:00Z ("),
                    "{}",
                    c.message
                );
            } else {
                assert_eq!(c.reason, "SyncInProgress");
            }
        }
        assert!(
            left.describe("app")
                .contains("the last one, \"agent-7\", left at")
        );
        assert!(
            never
                .describe("app")
                .contains("none has connected since the scheduler started")
        );
        // A grace past the end of time never comes due.
        let mut s = source(Some(RunId(1)));
        assert!(!mark_source(&mut s, &left, Duration::MAX, t(0)));
    }

    #[test]
    fn a_run_in_flight_says_no_agent_before_what_it_said_and_a_finished_one_is_left_alone() {
        let absence = Absence {
            since: t(0),
            last_agent: None,
        };
        let mut run = Run::new(
            RunId(1),
            SourceKey::new("app", "db"),
            "data".into(),
            RunReason::Schedule,
            t(0),
        );
        run.phase = RunPhase::Gating;
        assert!(!mark_run(&mut run.clone(), &absence, NO_AGENT_GRACE, t(10)));
        let mut fresh = run.clone();
        assert!(mark_run(&mut fresh, &absence, NO_AGENT_GRACE, t(30)));
        assert_eq!(fresh.message, absence.describe("app"));
        run.message = "PvcNotFound: source PVC app/data not found".into();
        let mut said = run.clone();
        assert!(mark_run(&mut said, &absence, NO_AGENT_GRACE, t(30)));
        assert!(
            said.message
                .ends_with("; before: PvcNotFound: source PVC app/data not found")
        );
        run.phase = RunPhase::Finished;
        assert!(!mark_run(&mut run, &absence, NO_AGENT_GRACE, t(30)));
    }
}
