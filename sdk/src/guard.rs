//! The guarded copy: quiesce, trigger, wait, and unquiesce whatever happens.
//!
//! ```text
//!  wait for WaitingForTrigger ─► quiesce ─► Trigger ─► wait for the outcome ─► unquiesce ─► Ok(GuardedCopy)
//!                                  │           │               │
//!                                  │           │               └─ Failed / TimedOut / Aborted ─► unquiesce ─► Err(CopyFailed)
//!                                  │           └─ refused: another value released the run ────► unquiesce ─► Err(ReleasedByAnother)
//!                                  └─ (at any step) error / hold limit / lost connection ─────► unquiesce ─► Err(..)
//!  the future dropped while quiesced ─► the hold ended, then unquiesce, spawned on the runtime
//! ```
//!
//! A consistent copy (`Ok`) is one whose run was released by this guard's own Trigger: the
//! scheduler accepted this guard's value for this run (a retried Trigger answered as a repeat
//! of it counts), and that happened after quiesce returned, so the copy point lies inside the
//! hold. A run released by any other value (another application's Trigger, the `copy-trigger`
//! annotation) is [`Error::ReleasedByAnother`], even when it was released after this
//! application had quiesced: nothing ties that release to this hold.
//!
//! The hold limit counts from the start of quiesce; the lost-connection grace counts from the
//! moment the scheduler stopped answering.
//!
//! Every Trigger carries what is left of the hold limit, less a transit allowance (a tenth of
//! it, at most 500 ms), as the run's hold lease: the scheduler measures the lease from when
//! the Trigger arrives, so the allowance keeps the lease's end before this hold's end as long
//! as the Trigger takes less than that to arrive. No copy point after the lease counts: a run
//! still copying when it ends goes back to waiting ([`Error::LeaseExpired`]). A guard that
//! gives up for any other reason once it has sent a Trigger (answered or not: an answer can
//! be lost after the scheduler accepted it) ends its hold first (EndHold, bounded by
//! [`END_HOLD_TIMEOUT`]). Unless the scheduler answers it (the hold ended, or this value never
//! released the run), a lease of this hold may still be running, and a copy cut under it would
//! count: the guard then stays quiesced until its hold limit, where every lease it asked for
//! has ended, and only then unquiesces. A lost connection ends a hold early only while the
//! guard has sent no Trigger.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{FutureExt, future::BoxFuture};
use snapgate_proto::v1::CopyTarget;
use tokio::time::Instant;
use tonic::Code;
use tracing::{debug, info, warn};

use crate::{
    client::Client,
    error::{BoxError, Error},
    handshake::{CopyRequest, Outcome, find_run, next_outcome, next_request},
    watch::{Backoff, describe},
};

/// `Run.released_by` for a run released through the Trigger RPC.
const RELEASED_BY_RPC: &str = "rpc";
/// The longest a guard that gives up after its Trigger waits for the scheduler to take note
/// (EndHold) before it unquiesces.
pub const END_HOLD_TIMEOUT: Duration = Duration::from_secs(1);
/// The most of a hold set aside for the Trigger's way to the scheduler.
pub const MAX_TRANSIT_ALLOWANCE: Duration = Duration::from_millis(500);

/// The hold lease a Trigger sent now asks for: what is left of `limit` since `started`, less
/// the transit allowance (a tenth of what is left, at most [`MAX_TRANSIT_ALLOWANCE`]).
/// `None` when nothing is left.
pub fn lease_for(limit: Duration, held: Duration) -> Option<Duration> {
    let left = limit.checked_sub(held)?;
    let lease = left.saturating_sub((left / 10).min(MAX_TRANSIT_ALLOWANCE));
    (!lease.is_zero()).then_some(lease)
}

/// A guard's hold, as its Trigger attempts see it.
struct Hold {
    /// When quiesce started: the hold limit counts from here.
    started: Instant,
    /// Set before the first Trigger attempt goes out: from then on a lease may be running.
    attempted: Arc<AtomicBool>,
}

/// Makes the trigger value for a request.
pub type TriggerValue = Arc<dyn Fn(&CopyRequest) -> String + Send + Sync>;

/// How a guarded copy behaves.
#[derive(Clone)]
pub struct GuardOptions {
    /// The longest the application stays quiesced (default 5 minutes), from the start of
    /// quiesce to the outcome.
    pub hold_limit: Duration,
    /// How long a lost connection to the scheduler is retried before giving up (default 30 s).
    /// Once a Trigger was sent, giving up does not unquiesce before the hold limit unless the
    /// scheduler confirms the hold ended.
    pub disconnect_grace: Duration,
    /// The trigger value for a request (default [`default_trigger_value`]: unique per call).
    pub trigger_value: TriggerValue,
    /// This application's name among the source's `spec.copyTrigger.holders` (required when
    /// the source lists holders; then the run is released once every holder has triggered).
    pub holder: Option<String>,
}

impl Default for GuardOptions {
    fn default() -> Self {
        Self {
            hold_limit: Duration::from_secs(5 * 60),
            disconnect_grace: Duration::from_secs(30),
            trigger_value: Arc::new(default_trigger_value),
            holder: None,
        }
    }
}

impl fmt::Debug for GuardOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardOptions")
            .field("hold_limit", &self.hold_limit)
            .field("disconnect_grace", &self.disconnect_grace)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl GuardOptions {
    /// Sets [`GuardOptions::hold_limit`].
    pub fn hold_limit(mut self, limit: Duration) -> Self {
        self.hold_limit = limit;
        self
    }

    /// Sets [`GuardOptions::disconnect_grace`].
    pub fn disconnect_grace(mut self, grace: Duration) -> Self {
        self.disconnect_grace = grace;
        self
    }

    /// Sets [`GuardOptions::holder`].
    pub fn holder(mut self, name: impl Into<String>) -> Self {
        self.holder = Some(name.into());
        self
    }

    /// Sets [`GuardOptions::trigger_value`].
    pub fn trigger_value(
        mut self,
        value: impl Fn(&CopyRequest) -> String + Send + Sync + 'static,
    ) -> Self {
        self.trigger_value = Arc::new(value);
        self
    }
}

/// `sdk-<run id>-<unix millis>-<16 random hex digits>`: see [`prefixed_trigger_value`].
pub fn default_trigger_value(request: &CopyRequest) -> String {
    prefixed_trigger_value("sdk", request)
}

/// `<prefix>-<run id>-<unix millis>-<16 random hex digits>`: never equal to an earlier value on
/// the same PVC, nor to the value another guard (in this process or another) makes for the same
/// run in the same millisecond. That matters: the scheduler answers a Trigger whose value is
/// already bound to the run as a repeat of the caller's own, so two applications sharing a
/// value could both take the copy for theirs.
pub fn prefixed_trigger_value(prefix: &str, request: &CopyRequest) -> String {
    format!(
        "{prefix}-{}-{}-{:016x}",
        request.run_id,
        chrono::Utc::now().timestamp_millis(),
        nonce()
    )
}

/// A random 64-bit number, different on every call: a counter hashed with the standard
/// library's randomly keyed hasher (keys from the OS, fresh per process).
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};

    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// A copy made while the application was quiesced: its run was released by this guard's own
/// trigger value, after quiesce returned and before unquiesce ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardedCopy {
    /// The run.
    pub run_id: String,
    /// Its source.
    pub source: String,
    /// The trigger value that released it (this guard's own).
    pub trigger: String,
    /// How long the application was quiesced (until the copy point).
    pub held: Duration,
}

/// The application's unquiesce step, type-erased.
type UnquiesceStep = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), BoxError>> + Send>;

/// The unquiesce step, run exactly once: explicitly, or spawned if the guard is dropped
/// (after ending the hold, as [`HoldEnd::end`] does).
struct Unquiesce {
    step: Option<UnquiesceStep>,
    run_id: String,
    /// What ends the hold before a dropped guard unquiesces (taken when it ran, or is not
    /// needed: the copy point reached, the run over).
    hold_end: Option<HoldEnd>,
}

/// Ending a hold that may have a lease running, before the application unquiesces.
struct HoldEnd {
    client: Client,
    target: CopyTarget,
    run_id: String,
    value: String,
    /// The hold limit's end: every lease this hold asked for ends before it.
    until: Instant,
    /// Whether a Trigger attempt went out.
    attempted: Arc<AtomicBool>,
}

impl HoldEnd {
    /// Once a Trigger went out (answered or not), a lease of this hold may be running: tells
    /// the scheduler (EndHold, at most [`END_HOLD_TIMEOUT`]), and unless it answers (the hold
    /// ended, or this value never released the run) waits for the hold limit, where every
    /// lease this hold asked for has ended.
    async fn end(self) {
        let run_id = self.run_id.as_str();
        if !self.attempted.load(Ordering::SeqCst) {
            return;
        }
        let ended = tokio::time::timeout(
            END_HOLD_TIMEOUT,
            self.client.end_hold(&self.target, run_id, &self.value),
        )
        .await;
        let confirmed = match ended {
            Ok(Ok(status)) => {
                debug!(run_id, state = status.state, "hold ended");
                true
            }
            // The scheduler says this value did not release the run: no lease is ours.
            Ok(Err(e)) if e.code() == Some(Code::FailedPrecondition) => {
                debug!(run_id, error = %e, "no hold of this value to end");
                true
            }
            Ok(Err(e)) => {
                debug!(run_id, error = %e, "ending the hold failed");
                false
            }
            Err(_) => {
                debug!(run_id, "ending the hold timed out");
                false
            }
        };
        if !confirmed {
            warn!(
                run_id,
                left = ?self.until.saturating_duration_since(Instant::now()),
                "the scheduler did not confirm the hold ended; staying quiesced until the hold limit, when any lease of this hold has ended"
            );
            tokio::time::sleep_until(self.until).await;
        }
    }
}

impl Unquiesce {
    async fn run(&mut self) -> Result<(), BoxError> {
        let Some(step) = self.step.take() else {
            return Ok(());
        };
        // Spawned, then awaited: if the caller drops this future (a timeout, a select!) while
        // the application unquiesces, the unquiesce still runs to its end.
        match tokio::spawn(step()).await {
            Ok(result) => result,
            Err(e) => Err(format!("the unquiesce step panicked or was cancelled: {e}").into()),
        }
    }
}

impl Drop for Unquiesce {
    fn drop(&mut self) {
        let Some(step) = self.step.take() else {
            return;
        };
        let run_id = std::mem::take(&mut self.run_id);
        let hold_end = self.hold_end.take();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                warn!(run_id, "guarded copy dropped while quiesced; unquiescing");
                runtime.spawn(async move {
                    if let Some(hold_end) = hold_end {
                        hold_end.end().await;
                    }
                    if let Err(e) = step().await {
                        warn!(run_id, error = %e, "unquiesce after a dropped guard failed");
                    }
                });
            }
            Err(_) => warn!(
                run_id,
                "guarded copy dropped outside a runtime; cannot unquiesce"
            ),
        }
    }
}

impl Client {
    /// Waits for a copy request on `target`, runs `quiesce`, triggers, waits for the copy
    /// point, and runs `unquiesce` in every case once `quiesce` has started: on Completed, on
    /// Failed / TimedOut / Aborted, on an error or a connection lost for longer than
    /// [`GuardOptions::disconnect_grace`], when [`GuardOptions::hold_limit`] expires, when
    /// quiesce itself fails, when the run was released by someone else, and (spawned) when
    /// this future is dropped. Giving up once a Trigger was sent, it unquiesces only after the
    /// scheduler answered its EndHold, or else at the hold limit (see the module doc).
    ///
    /// `Ok` means a consistent copy: the run was released by this call's own Trigger (the
    /// scheduler accepted [`GuardOptions::trigger_value`]'s value for this run, possibly as a
    /// repeat of an attempt whose answer was lost) and reached its copy point. If anything
    /// else released the run — another application's Trigger, the PVC's `copy-trigger`
    /// annotation — before or after this application quiesced, the result is
    /// [`Error::ReleasedByAnother`]: the copy is not inside this application's hold.
    ///
    /// Errors before the request arrives ([`Error::Unavailable`], [`Error::Refused`]) leave the
    /// application untouched.
    pub async fn quiesced_copy<Q, QF, QE, U, UF, UE>(
        &self,
        target: CopyTarget,
        quiesce: Q,
        unquiesce: U,
        options: GuardOptions,
    ) -> Result<GuardedCopy, Error>
    where
        Q: FnOnce(CopyRequest) -> QF,
        QF: Future<Output = Result<(), QE>>,
        QE: Into<BoxError>,
        U: FnOnce() -> UF + Send + 'static,
        UF: Future<Output = Result<(), UE>> + Send + 'static,
        UE: Into<BoxError>,
    {
        let backoff = Backoff {
            give_up_after: Some(options.disconnect_grace),
            ..Backoff::default()
        };
        let mut watch = self.watch_copy_with(target.clone(), backoff);
        let request = next_request(&mut watch).await?;
        let run_id = request.run_id.clone();
        let source = request.source.clone();
        let value = (options.trigger_value)(&request);
        info!(run_id, target = %describe(&target), "copy requested; quiescing");

        let hold = Hold {
            started: Instant::now(),
            attempted: Arc::new(AtomicBool::new(false)),
        };
        let started = hold.started;
        let mut unquiesce = Unquiesce {
            step: Some(Box::new(move || {
                async move { unquiesce().await.map_err(Into::into) }.boxed()
            })),
            run_id: run_id.clone(),
            hold_end: Some(HoldEnd {
                client: self.clone(),
                target: target.clone(),
                run_id: run_id.clone(),
                value: value.clone(),
                until: started + options.hold_limit,
                attempted: hold.attempted.clone(),
            }),
        };
        let triggered = AtomicBool::new(false);
        let held = async {
            quiesce(request.clone())
                .await
                .map_err(|e| Error::QuiesceFailed {
                    run_id: run_id.clone(),
                    source: e.into(),
                })?;
            debug!(run_id, value, "quiesced; triggering");
            self.trigger_within(&target, &run_id, &source, &value, &options, &hold)
                .await?;
            triggered.store(true, Ordering::SeqCst);
            next_outcome(
                self,
                &mut watch,
                &target,
                &run_id,
                Some(&source),
                Some(&value),
            )
            .await?
            .into_result()
        };
        let result = match tokio::time::timeout(options.hold_limit, held).await {
            Ok(result) => result,
            Err(_) => Err(Error::HoldLimitExceeded {
                limit: options.hold_limit,
                run_id: run_id.clone(),
                triggered: triggered.load(Ordering::SeqCst),
            }),
        };
        let result = result.map(|outcome| GuardedCopy {
            run_id: run_id.clone(),
            source: source.clone(),
            trigger: outcome.trigger,
            held: started.elapsed(),
        });
        let gave_up = matches!(
            &result,
            Err(e) if !matches!(
                e,
                Error::LeaseExpired { .. } | Error::CopyFailed { .. } | Error::ReleasedByAnother { .. }
            )
        );
        // Tell the scheduler before unquiescing, so that a copy not cut yet is not cut now.
        let hold_end = unquiesce.hold_end.take();
        if gave_up && let Some(hold_end) = hold_end {
            hold_end.end().await;
        }
        match &result {
            Ok(copy) => info!(run_id, held = ?copy.held, "copy point reached; unquiescing"),
            Err(Error::ReleasedByAnother {
                value, released_by, ..
            }) => warn!(
                run_id,
                value,
                released_by,
                "the run was released by another trigger value, not inside this hold; unquiescing"
            ),
            Err(e) => warn!(run_id, error = %e, "guarded copy did not complete; unquiescing"),
        }
        match unquiesce.run().await {
            Ok(()) => result,
            Err(source) => Err(Error::UnquiesceFailed {
                run_id,
                copy: Box::new(result),
                source,
            }),
        }
    }

    /// Trigger, retried while the scheduler is unreachable (an accepted trigger repeated is
    /// idempotent: the scheduler accepts it again). `Ok` only when the run was released by
    /// `value` through the RPC; a run released by another value is
    /// [`Error::ReleasedByAnother`], one that ended without a copy [`Error::CopyFailed`].
    /// Each attempt asks for what is left of the hold (the hold limit since it started) as its
    /// lease, as `options.holder`; attempts stop after the disconnect grace. The hold notes
    /// that an attempt went out before the first one does.
    async fn trigger_within(
        &self,
        target: &CopyTarget,
        run_id: &str,
        source: &str,
        value: &str,
        options: &GuardOptions,
        hold: &Hold,
    ) -> Result<(), Error> {
        let (limit, holder) = (options.hold_limit, options.holder.as_deref());
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            give_up_after: Some(options.disconnect_grace),
        };
        let attempt = || async {
            // Nothing left of the hold: no Trigger (the hold limit ends the guard).
            let Some(lease) = lease_for(limit, hold.started.elapsed()) else {
                return Err(Error::HoldLimitExceeded {
                    limit,
                    run_id: run_id.to_owned(),
                    triggered: false,
                });
            };
            hold.attempted.store(true, Ordering::SeqCst);
            self.trigger_held(target, Some(run_id), value, Some(lease), holder)
                .await
        };
        match backoff.retry(attempt).await {
            Ok(_) => Ok(()),
            // Nothing of ours is waiting any more: see what became of the run.
            Err(e) if e.code() == Some(Code::FailedPrecondition) => {
                let Ok(Some(run)) = find_run(self, target, Some(source), run_id).await else {
                    return Err(e);
                };
                match Outcome::of_run(&run) {
                    Some(outcome) if outcome != Outcome::Completed => Err(Error::CopyFailed {
                        run_id: run_id.to_owned(),
                        outcome,
                        reason: run.message,
                    }),
                    _ if run.trigger.is_empty() => Err(e),
                    // Bound to this very value through the RPC: an earlier attempt was accepted
                    // and its answer lost. (The scheduler normally accepts such a retry again
                    // as a repeat; a refusal for a run bound to our value is still ours.)
                    _ if run.trigger == value && run.released_by == RELEASED_BY_RPC => Ok(()),
                    // One of several holders' values, recorded for this run: ours.
                    _ if run.holds.iter().any(|h| h.value == value) => Ok(()),
                    // Released by someone else (another application, an annotation), before or
                    // after this application quiesced: the copy is not inside this hold.
                    _ => Err(Error::ReleasedByAnother {
                        run_id: run_id.to_owned(),
                        value: run.trigger,
                        released_by: run.released_by,
                    }),
                }
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_asks_for_what_is_left_of_the_hold_less_the_transit_allowance() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        for (limit, held, want) in [
            // A tenth of what is left, at most 500 ms, is set aside for the way there.
            (s(20), s(0), Some(ms(19_500))),
            (s(20), s(5), Some(ms(14_500))),
            (s(2), s(1), Some(ms(900))),
            (s(1), ms(0), Some(ms(900))),
            // Nothing left: no Trigger.
            (s(1), s(1), None),
            (s(1), s(2), None),
            (Duration::ZERO, Duration::ZERO, None),
        ] {
            assert_eq!(
                lease_for(limit, held),
                want,
                "limit {limit:?}, held {held:?}"
            );
        }
        // Never longer than what is left, whatever the numbers.
        for limit in [ms(1), ms(9), s(3), Duration::MAX] {
            let left = lease_for(limit, ms(0));
            assert!(left.is_none_or(|l| l < limit), "{limit:?}: {left:?}");
        }
    }
}
