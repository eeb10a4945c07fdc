//! Time: the next deadline, and what passing it does (wait timeouts, expired holds and leases, due runs).

use super::*;

impl Scheduler {
    /// The earliest time at which [`Scheduler::handle_timeout`] has something to do: from the
    /// deadline indexes, not a scan of the state. Sources left due when a step had started
    /// [`MAX_STARTS_PER_STEP`] runs make it the time of that step (already passed).
    pub fn poll_timeout(&mut self) -> Option<DateTime<Utc>> {
        let runs = self.active.next_deadline();
        let starts = self.sources.next_due();
        let left = match self.starts_checked {
            Some(t) if self.sources.any_due_now() => Some(t),
            _ => None,
        };
        runs.into_iter().chain(starts).chain(left).min()
    }

    /// Acts on every deadline that has passed: wait timeouts, ended holds, expired leases,
    /// then due runs. Only the runs whose deadline has passed are looked at.
    pub fn handle_timeout(&mut self, now: DateTime<Utc>) {
        let expired: Vec<RunId> = self
            .active
            .due(now)
            .into_iter()
            .filter(|id| {
                self.active.get(id).is_some_and(|r| {
                    r.phase == RunPhase::WaitingForTrigger
                        && !r.timeout_reported
                        && r.wait_deadline.is_some_and(|d| d <= now)
                })
            })
            .collect();
        for id in expired {
            self.on_wait_timeout(id, now);
        }
        self.expire_holds(now);
        let leases: Vec<RunId> = self
            .active
            .due(now)
            .into_iter()
            .filter(|id| self.active.get(id).is_some_and(|r| lease_over(r, now)))
            .collect();
        for id in leases {
            self.on_lease_expired(id, now);
        }
        self.start_due_runs(now);
    }

    /// A released run's hold lease ran out before its copy point: the value is spent and the
    /// run waits for a new trigger. The agent deletes any copy it made and records the value
    /// as latest-copy-trigger before the PVC says WaitingForTrigger again.
    pub(super) fn on_lease_expired(&mut self, id: RunId, now: DateTime<Utc>) {
        let Some(key) = self.active.get(&id).map(run_key) else {
            return;
        };
        let Some((mover, timeout)) = self.admitted(&key).map(|a| (a.mover, a.wait_timeout)) else {
            return;
        };
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        let spent = std::mem::take(&mut run.trigger);
        // Every holder's value took part in the release: all are spent, the releasing one
        // last (it is the one written as latest-copy-trigger).
        for h in std::mem::take(&mut run.holds) {
            if h.value != spent {
                spend(run, h.value);
            }
        }
        spend(run, spent.clone());
        run.latest_trigger = spent.clone();
        run.released_by = None;
        run.lease_deadline = None;
        run.timeout_reported = false;
        run.waiting_since = Some(now);
        run.wait_deadline = now.checked_add_signed(timeout);
        run.message = LEASE_EXPIRED_TEXT.to_owned();
        note(
            run,
            now,
            "LeaseExpired",
            format!("copy-trigger {spent:?}: {LEASE_EXPIRED_TEXT}"),
        );
        self.effects
            .push(Effect::Observe(Observation::LeaseExpired {
                source: key,
                mover,
            }));
        self.set_phase(id, RunPhase::WaitingForTrigger, now);
        self.fail_if_spent_out(id, now);
    }

    pub(super) fn on_wait_timeout(&mut self, id: RunId, now: DateTime<Utc>) {
        let Some(key) = self.active.get(&id).map(run_key) else {
            return;
        };
        let Some((mover, policy)) = self.admitted(&key).map(|a| (a.mover, a.on_timeout)) else {
            return;
        };
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        let logs = snapgate_contract::timeout_message(&run.pvc);
        run.timeout_reported = true;
        run.message = logs.clone();
        self.effects
            .push(Effect::Observe(Observation::TriggerTimeout {
                source: key.clone(),
                mover,
            }));
        let status = MoverStatus {
            result: "Failed".into(),
            logs: logs.clone(),
        };
        run.mover_status = Some(status.clone());
        if let Some(e) = self.sources.get_mut(&key) {
            e.status_mut().latest_mover_status = Some(status);
        }
        self.put_source(&key);
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        match policy {
            TimeoutPolicy::KeepWaiting => {
                note(
                    run,
                    now,
                    "TimeoutReported",
                    format!("{logs}; still waiting"),
                );
                self.bump(id);
                self.notify_copy(id);
            }
            TimeoutPolicy::Skip => {
                run.result = Some(RunResult::TimedOut);
                note(run, now, "TimedOut", format!("{logs}; run skipped"));
                self.set_phase(id, RunPhase::CleaningUp, now);
            }
        }
    }
}
