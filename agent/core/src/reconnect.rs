//! After a (re)connect, the scheduler's confirmation of the runs the agent holds.
//!
//! The scheduler welcomes the agent with the number of directives in flight for its
//! namespaces (`Welcome.active_runs`) and resends each of them right after. A run the agent
//! holds that is not resent ended while the link was down (its Forget was lost): it must be
//! dropped, never acted on. So, until the last resent directive has come, a run is acted on
//! only once resent ([`Confirmation::holds_back`]); then the runs not resent are dropped and
//! those held back meanwhile are planned ([`Confirmed`]).
//!
//! ```text
//!   welcome(n) ──► resent(run) × n ──► Confirmed: keep the runs resent, drop the others
//!       │ n = 0: Confirmed at once (keep none)
//!       └ a new welcome before the n-th: start over (the old connection's resend is over)
//! ```
//!
//! The count is of directive messages, as the scheduler sends them: a run resent twice counts
//! twice. The welcome says how many directives follow, not how many runs; counting distinct
//! runs would, on such a resend, take the first directive sent after the resync for part of it
//! and hold every other run back until one came.
//!
//! `active_runs` comes from the wire: it is only counted down, never used to size anything.
//! What is kept grows by one entry per directive received, as the agent's runs do.

use std::{collections::BTreeSet, num::NonZeroU32};

/// Where the confirmation of the runs in flight stands (none before the first welcome).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Confirmation {
    pending: Option<Pending>,
}

/// A confirmation under way.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pending {
    /// Resent directives still to come.
    remaining: NonZeroU32,
    /// The runs resent so far.
    resent: BTreeSet<String>,
}

/// A finished confirmation: the runs the scheduler resent, the only ones to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Confirmed {
    resent: BTreeSet<String>,
}

impl Confirmed {
    /// Whether `run_id` is kept (it was resent); every other run held is dropped.
    pub fn keeps(&self, run_id: &str) -> bool {
        self.resent.contains(run_id)
    }

    /// The runs kept, in order.
    pub fn runs(&self) -> impl Iterator<Item = &str> {
        self.resent.iter().map(String::as_str)
    }
}

impl Confirmation {
    /// No confirmation under way: nothing is held back.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new connection, whose welcome says `active_runs` directives follow. A confirmation
    /// still under way is forgotten (its connection is gone). With none to follow, the
    /// confirmation is over at once and keeps no run.
    pub fn welcome(&mut self, active_runs: u32) -> Option<Confirmed> {
        self.pending = NonZeroU32::new(active_runs).map(|remaining| Pending {
            remaining,
            resent: BTreeSet::new(),
        });
        self.pending.is_none().then(Confirmed::default)
    }

    /// A directive for `run_id` has come. `Some` when it was the last resent one: the
    /// confirmation is over. A directive that comes when none is under way confirms nothing.
    pub fn resent(&mut self, run_id: &str) -> Option<Confirmed> {
        let pending = self.pending.as_mut()?;
        pending.resent.insert(run_id.to_owned());
        // `remaining` is at least 1: one less never underflows.
        match NonZeroU32::new(pending.remaining.get() - 1) {
            Some(remaining) => {
                pending.remaining = remaining;
                None
            }
            None => self.pending.take().map(|p| Confirmed { resent: p.resent }),
        }
    }

    /// Whether `run_id` must not be acted on yet: a confirmation is under way and the run has
    /// not been resent.
    pub fn holds_back(&self, run_id: &str) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|p| !p.resent.contains(run_id))
    }

    /// Whether resent directives are still to come.
    pub fn is_confirming(&self) -> bool {
        self.pending.is_some()
    }
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use super::*;

    #[derive(Clone, Copy, Debug)]
    enum Step {
        Welcome(u32),
        Resent(&'static str),
    }
    use Step::{Resent, Welcome};

    /// Runs `steps`; what the last one returned.
    fn run(c: &mut Confirmation, steps: &[Step]) -> Option<Confirmed> {
        let mut last = None;
        for step in steps {
            last = match *step {
                Welcome(n) => c.welcome(n),
                Resent(id) => c.resent(id),
            };
        }
        last
    }

    #[test]
    fn the_last_resent_directive_ends_the_confirmation_and_keeps_only_the_runs_resent() {
        type Case = (
            &'static str,
            &'static [Step],
            Option<&'static [&'static str]>,
            &'static [&'static str],
        );
        // (what, steps, the runs kept when the last step ends the confirmation, the runs of
        // "a", "b", "c" held back after it)
        let cases: [Case; 10] = [
            ("no welcome yet: nothing is held back", &[], None, &[]),
            (
                "a directive before any welcome confirms nothing",
                &[Resent("a")],
                None,
                &[],
            ),
            (
                "no runs in flight: over at once, every run dropped",
                &[Welcome(0)],
                Some(&[]),
                &[],
            ),
            (
                "while confirming, only the runs resent are acted on",
                &[Welcome(2), Resent("a")],
                None,
                &["b", "c"],
            ),
            (
                "all resent: they are kept",
                &[Welcome(2), Resent("a"), Resent("b")],
                Some(&["a", "b"]),
                &[],
            ),
            (
                "runs not resent are dropped",
                &[Welcome(1), Resent("b")],
                Some(&["b"]),
                &[],
            ),
            (
                "a run resent twice counts twice (directives are counted, not runs)",
                &[Welcome(2), Resent("a"), Resent("a")],
                Some(&["a"]),
                &[],
            ),
            (
                "a reconnect while confirming starts over: what the old link resent is forgotten",
                &[Welcome(3), Resent("a"), Welcome(2), Resent("b")],
                None,
                &["a", "c"],
            ),
            (
                "a reconnect with none in flight ends a confirmation under way",
                &[Welcome(2), Resent("a"), Welcome(0)],
                Some(&[]),
                &[],
            ),
            (
                "a directive after the confirmation confirms nothing more",
                &[Welcome(1), Resent("a"), Resent("b")],
                None,
                &[],
            ),
        ];
        for (what, steps, kept, held_back) in cases {
            let mut c = Confirmation::new();
            let done = run(&mut c, steps);
            assert_eq!(
                done.as_ref().map(|d| d.runs().collect::<Vec<_>>()),
                kept.map(<[&str]>::to_vec),
                "{what}"
            );
            if let Some(d) = &done {
                for id in ["a", "b", "c"] {
                    assert_eq!(
                        d.keeps(id),
                        kept.unwrap_or(&[]).contains(&id),
                        "{what}: {id}"
                    );
                }
                assert!(!c.is_confirming(), "{what}");
            }
            let held: Vec<&str> = ["a", "b", "c"]
                .into_iter()
                .filter(|id| c.holds_back(id))
                .collect();
            assert_eq!(held, held_back, "{what}");
            assert_eq!(c.is_confirming(), !held_back.is_empty(), "{what}");
        }
    }

    #[test]
    fn a_huge_count_from_the_wire_holds_only_the_runs_that_came_until_a_new_connection() {
        let mut c = Confirmation::new();
        assert_eq!(c.welcome(u32::MAX), None);
        assert_eq!(
            c,
            Confirmation {
                pending: Some(Pending {
                    remaining: NonZeroU32::MAX,
                    resent: BTreeSet::new(),
                }),
            }
        );
        for i in 0..1000 {
            assert_eq!(c.resent(&format!("run-{i}")), None);
        }
        // What is kept is what came, one entry a directive.
        let Some(p) = &c.pending else {
            panic!("still confirming")
        };
        assert_eq!(p.resent.len(), 1000);
        assert_eq!(p.remaining.get(), u32::MAX - 1000);
        assert!(c.holds_back("run-1000") && !c.holds_back("run-999"));
        // Only a new connection ends it.
        assert_eq!(c.welcome(0), Some(Confirmed::default()));
        assert!(!c.holds_back("run-1000"));
    }
}
