//! A follower's copy of the leader's state.
//!
//! A scheduler replica that does not lead serves reads from a [`Scheduler`] it keeps equal to
//! what the leader has committed: restored once from the store, then changed record by record
//! as the leader's commits reach it, with the same rules [`Scheduler::restore`] loads by. It
//! never ticks, starts nothing and emits no effect: after the changes of a commit it answers
//! reads as a scheduler restored from the store at that commit would.

use super::{Quarantined, Scheduler};
use crate::{
    RunId, SourceKey,
    model::{Run, SourceRecord},
};

/// One record a leader's commit put or removed.
#[derive(Clone, Debug, PartialEq)]
pub enum Mirrored {
    /// A source record written.
    PutSource(Box<SourceRecord>),
    /// A source record removed.
    RemoveSource(SourceKey),
    /// A run record written.
    PutRun(Box<Run>),
    /// A run record removed.
    RemoveRun(RunId),
    /// The next run number.
    NextRun(u64),
}

impl Scheduler {
    /// Applies the record changes of one commit, sources before runs (a commit may carry a
    /// new source and its first run in any order). Returns what was left out or loaded with a
    /// warning, by the rules of [`Scheduler::restore`], and the keys whose earlier such
    /// report no longer holds, as `(kind, key)`.
    pub fn mirror(&mut self, changes: Vec<Mirrored>) -> Mirror {
        let mut out = Mirror::default();
        // Sources removed or left out: their runs in flight are left out too.
        let mut gone = Vec::new();
        let (sources, runs): (Vec<_>, Vec<_>) = changes
            .into_iter()
            .partition(|c| matches!(c, Mirrored::PutSource(_) | Mirrored::RemoveSource(_)));
        for change in sources.into_iter().chain(runs) {
            match change {
                Mirrored::PutSource(record) => {
                    let key = record.source.key.clone();
                    out.cleared.push(("source", key.to_string()));
                    match self.load_source(*record) {
                        Ok(warning) => out.warnings.extend(warning),
                        Err(q) => {
                            // The entry it replaces is gone: a restore would not have it.
                            self.sources.remove(&key);
                            gone.push(key);
                            out.quarantined.push(q);
                        }
                    }
                }
                Mirrored::RemoveSource(key) => {
                    out.cleared.push(("source", key.to_string()));
                    self.sources.remove(&key);
                    gone.push(key);
                }
                Mirrored::PutRun(run) => {
                    out.cleared.push(("run", run.id.to_string()));
                    if let Err(q) = self.load_run(*run) {
                        out.quarantined.push(q);
                    }
                }
                Mirrored::RemoveRun(id) => {
                    out.cleared.push(("run", id.to_string()));
                    self.active.remove(&id);
                    self.history.remove(&id);
                }
                Mirrored::NextRun(next) => self.next_run = self.next_run.max(next),
            }
        }
        for key in gone {
            if self.sources.contains_key(&key) {
                continue;
            }
            let orphans: Vec<RunId> = self.active.of_source(&key).map(|r| r.id).collect();
            for id in orphans {
                self.active.remove(&id);
                out.quarantined.push(Quarantined::run(
                    &id.to_string(),
                    &format!("in flight, but its source {key} is not loaded"),
                ));
            }
        }
        out
    }
}

/// What [`Scheduler::mirror`] reports of one commit's changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirror {
    /// Records of the commit the follower's copy leaves out, and why.
    pub quarantined: Vec<Quarantined>,
    /// Sources loaded although they break a rule of this version.
    pub warnings: Vec<Quarantined>,
    /// `(kind, key)` of every record the commit wrote or removed: any earlier report on them
    /// is superseded (by this commit's, if it has one).
    pub cleared: Vec<(&'static str, String)>,
}
