//! Copy targets and the copy-trigger handshake driven by applications: copy status, Trigger, holders and holds, EndHold, hold leases.

use super::*;

impl Scheduler {
    /// Resolves a copy target: a PVC (every run on it), or a source (its runs only, on its PVC).
    pub fn resolve_target(&self, target: &CopyTarget) -> Result<Target, CoreError> {
        validate::dns_label("target.namespace", &target.namespace)?;
        match (target.pvc.is_empty(), target.source.is_empty()) {
            (false, true) => {
                validate::dns_subdomain("target.pvc", &target.pvc)?;
                Ok(Target {
                    namespace: target.namespace.clone(),
                    pvc: target.pvc.clone(),
                    source: None,
                })
            }
            (true, false) => {
                let key = SourceKey::new(&target.namespace, &target.source);
                let live = self.entry(&key)?.spec().source_pvc.clone();
                // A run stays on the PVC it started on, even if the source was edited since.
                let pvc = self
                    .current_run(&key)
                    .and_then(|id| self.active.get(&id))
                    .map_or(live, |r| r.pvc.clone());
                Ok(Target {
                    namespace: target.namespace.clone(),
                    pvc,
                    source: Some(target.source.clone()),
                })
            }
            _ => Err(InvalidField::new("target", "set exactly one of pvc and source").into()),
        }
    }

    /// The copy status of a target: see [`Scheduler::copy_status`]; a source target sees only
    /// that source's runs.
    pub fn target_status(&self, target: &Target) -> CopyStatus {
        self.copy_status_of(&target.namespace, &target.pvc, target.source.as_deref())
    }

    /// The copy status of a PVC: the run holding it, else its newest run, else idle.
    pub fn copy_status(&self, namespace: &str, pvc: &str) -> CopyStatus {
        self.copy_status_of(namespace, pvc, None)
    }

    pub(super) fn copy_status_of(
        &self,
        namespace: &str,
        pvc: &str,
        source: Option<&str>,
    ) -> CopyStatus {
        let ours = |r: &&Run| source.is_none_or(|name| r.source.name == name);
        let active = || self.active.on_pvc(namespace, pvc).filter(ours);
        let history = || self.history.on_pvc(namespace, pvc).filter(ours);
        let run = active()
            .find(|r| holds_pvc(r))
            .or_else(|| active().next_back())
            .or_else(|| history().next_back());
        let latest_trigger = active()
            .next_back()
            .into_iter()
            .chain(history().next_back())
            .max_by_key(|r| r.id)
            .map(|r| r.latest_trigger.clone())
            .unwrap_or_default();
        let mut status = CopyStatus {
            latest_trigger,
            ..CopyStatus::idle(namespace, pvc)
        };
        if let Some(run) = run {
            status.source = run.source.name.clone();
            status.run_id = Some(run.id);
            status.state = copy_state(run);
            status.reason = run.message.clone();
            status.waiting_since = run.waiting_since;
            status.wait_deadline = run.wait_deadline;
            status.trigger = run.trigger.clone();
            status.gated = run.gated;
            status.time = run.timeline.last().map(|t| t.time);
            if run.phase == RunPhase::Copying && run.copy_time.is_none() {
                status.lease_deadline = run.lease_deadline;
            }
            if run.phase == RunPhase::WaitingForTrigger {
                status.holders_pending = pending_holders(run, &self.holders_of(run));
            }
        }
        status
    }

    /// Whether the ServiceAccount `service_account` may act as an application on `target`:
    /// every source of the target (by name, or naming its PVC, or with a run on it) that lists
    /// `copyTrigger.allowedServiceAccounts` lists it.
    pub fn application_allowed(&self, target: &Target, service_account: &str) -> bool {
        let keys: BTreeSet<SourceKey> = match &target.source {
            Some(name) => [SourceKey::new(&target.namespace, name)].into(),
            None => self
                .sources
                .on_pvc(&target.namespace, &target.pvc)
                .into_iter()
                .chain(
                    self.active
                        .on_pvc(&target.namespace, &target.pvc)
                        .map(run_key),
                )
                .collect(),
        };
        keys.iter().filter_map(|k| self.sources.get(k)).all(|e| {
            let allowed = e
                .spec()
                .copy_trigger
                .as_ref()
                .map(|c| c.allowed_service_accounts.as_slice())
                .unwrap_or_default();
            allowed.is_empty() || allowed.iter().any(|a| a == service_account)
        })
    }

    /// Releases the run waiting on a PVC with `value` (the SDK's Trigger).
    /// The caller holds its quiesce for `hold` from now (`None`: the default hold); the run's
    /// copy point must be reached before that, or the run waits for a new trigger.
    ///
    /// `holder` names the caller when the source lists holders (`spec.copyTrigger.holders`):
    /// the run is released once every holder has triggered, and its lease ends with the
    /// earliest hold. A source without holders ignores it.
    pub fn trigger(
        &mut self,
        target: &CopyTarget,
        value: &str,
        expected_run: &str,
        hold: Option<RawDuration>,
        holder: &str,
        now: DateTime<Utc>,
    ) -> Result<TriggerAccepted, CoreError> {
        let resolved = self.resolve_target(target)?;
        let (namespace, pvc) = (resolved.namespace.clone(), resolved.pvc.clone());
        validate::printable("value", value, true)?;
        if !holder.is_empty() {
            validate::dns_label("holder", holder)?;
        }
        // A hold that has ended counts towards no release, even before the timer saw it.
        self.expire_holds(now);
        let hold = match hold {
            None => self.lease_policy.default_hold,
            Some(d) => validate::positive_hold(d, self.lease_policy.max_hold)?,
        };
        let expected: Option<RunId> = if expected_run.is_empty() {
            None
        } else {
            Some(expected_run.parse().map_err(|()| {
                InvalidField::new(
                    "runId",
                    format!(
                        "{} is not a run id such as run-42",
                        validate::quoted(expected_run)
                    ),
                )
            })?)
        };
        let on_pvc = |r: &Run| {
            r.pvc == pvc
                && r.source.namespace == namespace
                && resolved
                    .source
                    .as_deref()
                    .is_none_or(|name| r.source.name == name)
        };
        let active = || self.active.on_pvc(&namespace, &pvc).filter(|r| on_pvc(r));
        let all = || {
            self.active
                .on_pvc(&namespace, &pvc)
                .chain(self.history.on_pvc(&namespace, &pvc))
                .filter(|r| on_pvc(r))
        };
        // An accepted call repeated: same answer, nothing new. With a run id, that run is the
        // one to compare (a newer run queued on the PVC meanwhile does not matter); without,
        // only the newest run on the PVC can be the one it released.
        let candidate = match expected {
            Some(e) => self
                .active
                .get(&e)
                .or_else(|| self.history.get(&e))
                .filter(|r| on_pvc(r)),
            None => all().max_by_key(|r| r.id),
        };
        let ours = |r: &Run| {
            (r.released_by == Some(ReleasedBy::Rpc) && r.trigger == value)
                || r.holds
                    .iter()
                    .any(|h| h.value == value && h.holder == holder)
        };
        if let Some(run) = candidate
            && ours(run)
            && expected.is_none_or(|e| e == run.id)
        {
            let id = run.id;
            // Released: the run's lease; still waiting for other holders: this holder's hold.
            let lease_deadline = run.lease_deadline.or_else(|| {
                run.holds
                    .iter()
                    .find(|h| h.value == value)
                    .and_then(|h| h.deadline)
            });
            return Ok(TriggerAccepted {
                run_id: id,
                status: self.target_status(&resolved),
                repeated: true,
                lease_deadline,
            });
        }
        let paused = active().find(|r| {
            r.phase == RunPhase::Gating
                && self
                    .sources
                    .get(&run_key(r))
                    .is_some_and(|e| e.spec().paused)
        });
        if let Some(run) = paused {
            return Err(CoreError::FailedPrecondition(format!(
                "source {} is paused: its run {} on pvc {namespace}/{pvc} takes no copy trigger until the source is resumed",
                run_key(run),
                run.id
            )));
        }
        let waiting = active()
            .find(|r| r.phase == RunPhase::WaitingForTrigger)
            .map(|r| r.id);
        let Some(id) = waiting else {
            let status = self.target_status(&resolved);
            let state = status.state;
            if !holder.is_empty()
                && state == CopyState::InProgress
                && let Some(run) = status.run_id
            {
                return Err(CoreError::FailedPrecondition(format!(
                    "run {run} on pvc {namespace}/{pvc} was released before holder {holder} triggered: its copy is not inside this hold"
                )));
            }
            return Err(CoreError::FailedPrecondition(format!(
                "no run is waiting for a copy trigger on pvc {namespace}/{pvc} (copy state {})",
                state.as_str_name()
            )));
        };
        if let Some(e) = expected
            && e != id
        {
            return Err(CoreError::FailedPrecondition(format!(
                "run {e} is not the run waiting on pvc {namespace}/{pvc} ({id} is); refusing to release another copy"
            )));
        }
        let Some(run) = self.active.get(&id) else {
            return Err(CoreError::FailedPrecondition(format!(
                "no run is waiting for a copy trigger on pvc {namespace}/{pvc}"
            )));
        };
        if value == run.latest_trigger {
            return Err(InvalidField::new(
                "value",
                format!("{value:?} equals latest-copy-trigger; a new copy needs a new value"),
            )
            .into());
        }
        if run.spent_triggers.iter().any(|v| v == value) {
            return Err(InvalidField::new(
                "value",
                format!(
                    "{value:?} already released {id} and its hold lease ran out before the copy point; a new copy needs a new value"
                ),
            )
            .into());
        }
        // A value bound to an earlier run of the PVC releases no other.
        if let Some(earlier) = all().filter(|r| r.id != id).find(|r| {
            r.trigger == value
                || r.spent_triggers.iter().any(|v| v == value)
                || r.holds.iter().any(|h| h.value == value)
        }) {
            return Err(InvalidField::new(
                "value",
                format!(
                    "{value:?} was already used for {}; a new copy needs a new value",
                    earlier.id
                ),
            )
            .into());
        }
        // Past the end of the calendar: the longest hold there is (the clamp keeps it sane).
        let deadline = now
            .checked_add_signed(hold)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let holders = self.run_holders(id);
        if !holders.is_empty() {
            return self.hold(id, &holders, holder, value, deadline, &resolved, now);
        }
        self.release(id, value.to_owned(), ReleasedBy::Rpc, Some(deadline), now);
        Ok(TriggerAccepted {
            run_id: id,
            status: self.target_status(&resolved),
            repeated: false,
            lease_deadline: Some(deadline),
        })
    }

    /// The holders a run must be released by: those of the spec it started with (a run stored
    /// by 0.1 has none of its own and follows the live spec).
    pub(super) fn run_holders(&self, id: RunId) -> Vec<String> {
        self.active
            .get(&id)
            .map(|r| self.holders_of(r))
            .unwrap_or_default()
    }

    pub(super) fn holders_of(&self, run: &Run) -> Vec<String> {
        match run.spec.as_ref() {
            Some(spec) => spec
                .copy_trigger
                .as_ref()
                .map(|c| c.holders.clone())
                .unwrap_or_default(),
            None => self
                .sources
                .get(&run_key(run))
                .map(|e| e.admitted.holders.clone())
                .unwrap_or_default(),
        }
    }

    /// One holder's Trigger of a waiting run: recorded; the run is released with the earliest
    /// hold as its lease once every holder has a hold that has not ended.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, each argument distinct"
    )]
    pub(super) fn hold(
        &mut self,
        id: RunId,
        holders: &[String],
        holder: &str,
        value: &str,
        deadline: DateTime<Utc>,
        resolved: &Target,
        now: DateTime<Utc>,
    ) -> Result<TriggerAccepted, CoreError> {
        let gone = || CoreError::FailedPrecondition(format!("{id} is no longer waiting"));
        let Some(key) = self.active.get(&id).map(run_key) else {
            return Err(gone());
        };
        let list = holders.join(", ");
        if holder.is_empty() {
            return Err(InvalidField::new(
                "holder",
                format!("required: source {key} lists holders ({list}); name the one calling"),
            )
            .into());
        }
        if !holders.iter().any(|h| h == holder) {
            return Err(InvalidField::new(
                "holder",
                format!("{holder:?} is not one of the holders of source {key} ({list})"),
            )
            .into());
        }
        let Some(run) = self.active.get_mut(&id) else {
            return Err(gone());
        };
        if let Some(other) = run
            .holds
            .iter()
            .find(|h| h.value == value && h.holder != holder)
        {
            return Err(InvalidField::new(
                "value",
                format!(
                    "{value:?} is holder {}'s value for {id}; each holder needs its own",
                    other.holder
                ),
            )
            .into());
        }
        // A holder triggering again replaces its hold; its earlier value is spent.
        if let Some(at) = run.holds.iter().position(|h| h.holder == holder) {
            let old = run.holds.remove(at);
            spend(run, old.value);
            if self.fail_if_spent_out(id, now) {
                return Err(CoreError::FailedPrecondition(format!(
                    "{id} spent {SPENT_PER_RUN} trigger values without a copy and failed"
                )));
            }
        }
        let Some(run) = self.active.get_mut(&id) else {
            return Err(gone());
        };
        run.holds.push(Hold {
            holder: holder.to_owned(),
            value: value.to_owned(),
            deadline: Some(deadline),
        });
        note(
            run,
            now,
            "HolderTriggered",
            format!(
                "holder {holder} triggered with {value:?}, held until {}",
                deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
        );
        let pending = pending_holders(run, holders);
        if pending.is_empty() {
            let lease = run
                .holds
                .iter()
                .filter_map(|h| h.deadline)
                .min()
                .unwrap_or(deadline);
            self.release(id, value.to_owned(), ReleasedBy::Rpc, Some(lease), now);
            return Ok(TriggerAccepted {
                run_id: id,
                status: self.target_status(resolved),
                repeated: false,
                lease_deadline: Some(lease),
            });
        }
        run.message = format!("waiting for holders: {}", pending.join(", "));
        self.put_run(id);
        self.notify_copy(id);
        Ok(TriggerAccepted {
            run_id: id,
            status: self.target_status(resolved),
            repeated: false,
            lease_deadline: Some(deadline),
        })
    }

    /// Holds of waiting runs that ended before every holder triggered: their values are spent.
    pub(super) fn expire_holds(&mut self, now: DateTime<Utc>) {
        let due: Vec<RunId> = self
            .active
            .due(now)
            .into_iter()
            .filter(|id| {
                self.active.get(id).is_some_and(|r| {
                    r.phase == RunPhase::WaitingForTrigger
                        && r.holds.iter().any(|h| h.deadline.is_some_and(|d| d <= now))
                })
            })
            .collect();
        for id in due {
            let holders = self.run_holders(id);
            let Some(run) = self.active.get_mut(&id) else {
                return;
            };
            let (ended, kept): (Vec<Hold>, Vec<Hold>) = std::mem::take(&mut run.holds)
                .into_iter()
                .partition(|h| h.deadline.is_some_and(|d| d <= now));
            run.holds = kept;
            for h in ended {
                note(
                    run,
                    now,
                    "HoldExpired",
                    format!(
                        "holder {}'s hold ended before every holder triggered; its value {:?} is spent",
                        h.holder, h.value
                    ),
                );
                spend(run, h.value);
            }
            run.message = format!(
                "waiting for holders: {}",
                pending_holders(run, &holders).join(", ")
            );
            self.put_run(id);
            self.notify_copy(id);
            self.fail_if_spent_out(id, now);
        }
    }

    /// A run that has spent [`SPENT_PER_RUN`] values without a copy fails (and cleans up)
    /// rather than forget one. True when it did.
    pub(super) fn fail_if_spent_out(&mut self, id: RunId, now: DateTime<Utc>) -> bool {
        let Some(run) = self.active.get_mut(&id) else {
            return false;
        };
        if run.spent_triggers.len() < SPENT_PER_RUN || run.phase == RunPhase::CleaningUp {
            return false;
        }
        let msg = format!(
            "{} trigger values spent without a copy (expired leases, ended holds): the run fails rather than forget one",
            run.spent_triggers.len()
        );
        run.result = Some(RunResult::Failed);
        run.message = msg.clone();
        note(run, now, "Failed", msg);
        self.set_phase(id, RunPhase::CleaningUp, now);
        true
    }

    /// The caller of an accepted Trigger stops holding before its lease ran out: the run it
    /// released goes back to waiting unless its copy point was reached already.
    pub fn end_hold(
        &mut self,
        target: &CopyTarget,
        run: &str,
        value: &str,
        now: DateTime<Utc>,
    ) -> Result<CopyStatus, CoreError> {
        let resolved = self.resolve_target(target)?;
        let id: RunId = run.parse().map_err(|()| {
            InvalidField::new(
                "runId",
                format!("{} is not a run id such as run-42", validate::quoted(run)),
            )
        })?;
        validate::printable("value", value, true)?;
        self.expire_holds(now);
        let found = self
            .active
            .get(&id)
            .or_else(|| self.history.get(&id))
            .filter(|r| {
                r.pvc == resolved.pvc
                    && r.source.namespace == resolved.namespace
                    && resolved
                        .source
                        .as_deref()
                        .is_none_or(|n| r.source.name == n)
            });
        let Some(r) = found else {
            return Err(CoreError::FailedPrecondition(format!(
                "{id} is not a run on pvc {}/{}",
                resolved.namespace, resolved.pvc
            )));
        };
        let mine = r.released_by == Some(ReleasedBy::Rpc) && r.trigger == value
            || r.spent_triggers.iter().any(|v| v == value)
            || r.holds.iter().any(|h| h.value == value);
        if !mine {
            return Err(CoreError::FailedPrecondition(format!(
                "{id} was not released by the value {value:?}: its hold is not the caller's to end"
            )));
        }
        if self.active.contains_key(&id)
            && r.phase != RunPhase::Copying
            && let Some(at) = r.holds.iter().position(|h| h.value == value)
        {
            // A holder gives up before the others triggered: its hold ends, its value is spent.
            let holders = self.run_holders(id);
            let Some(run) = self.active.get_mut(&id) else {
                return Ok(self.target_status(&resolved));
            };
            let h = run.holds.remove(at);
            note(
                run,
                now,
                "HoldEnded",
                format!("holder {} stopped holding before the release", h.holder),
            );
            spend(run, h.value);
            run.message = format!(
                "waiting for holders: {}",
                pending_holders(run, &holders).join(", ")
            );
            self.put_run(id);
            self.notify_copy(id);
            self.fail_if_spent_out(id, now);
        } else if self.active.contains_key(&id)
            && r.phase == RunPhase::Copying
            && r.copy_time.is_none()
            && r.lease_deadline.is_some()
            // Only a hold of this release: an old spent value ends nobody's current hold.
            && (r.trigger == value || r.holds.iter().any(|h| h.value == value))
        {
            let Some(run) = self.active.get_mut(&id) else {
                return Ok(self.target_status(&resolved));
            };
            note(
                run,
                now,
                "HoldEnded",
                "the application stopped holding before the copy point",
            );
            self.on_lease_expired(id, now);
        }
        Ok(self.target_status(&resolved))
    }

    /// Answers an agent's lease request for a run in one of its `namespaces`.
    pub fn lease(
        &self,
        namespaces: &[String],
        request: &LeaseRequest,
        now: DateTime<Utc>,
    ) -> LeaseAnswer {
        let refuse = |why: String| LeaseAnswer::Refused(why);
        let Ok(id) = request.run_id.parse::<RunId>() else {
            return refuse(format!(
                "unknown run id {}",
                validate::quoted(&request.run_id)
            ));
        };
        let Some(run) = self
            .active
            .get(&id)
            .filter(|r| namespaces.contains(&r.source.namespace))
        else {
            return refuse(format!("{id} is not in flight in the agent's namespaces"));
        };
        if request.generation != run.generation || run.phase != RunPhase::Copying {
            return refuse(format!(
                "{id}: generation {} is not current ({} is, {})",
                request.generation,
                run.generation,
                run.phase.as_str_name()
            ));
        }
        let Some(deadline) = run.lease_deadline else {
            return refuse(format!("{id} was not released with a hold lease"));
        };
        match deadline.signed_duration_since(now) {
            left if left > Duration::zero() => LeaseAnswer::Granted(left),
            _ => refuse(format!("{id}: the hold lease ran out")),
        }
    }
}
