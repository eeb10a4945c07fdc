//! Agents: directives on (re)connect, and the reports that move runs on.

use super::*;

impl Scheduler {
    /// The directives an agent serving `namespaces` must hold, for a (re)connect.
    pub fn directives_for(&self, namespaces: &[String]) -> Vec<Directive> {
        self.active
            .values()
            .filter(|r| namespaces.contains(&r.source.namespace))
            .filter_map(|r| self.directive(r))
            .collect()
    }

    /// Applies an agent's report about a run in one of the agent's `namespaces`.
    pub fn handle_report(
        &mut self,
        namespaces: &[String],
        report: Report,
        now: DateTime<Utc>,
    ) -> ReportOutcome {
        let Ok(id) = report.run_id.parse::<RunId>() else {
            return ReportOutcome::Stale(format!(
                "unknown run id {}",
                validate::quoted(&report.run_id)
            ));
        };
        let Some(run) = self.active.get(&id) else {
            return ReportOutcome::Stale(format!("{id} is not in flight"));
        };
        if !namespaces.contains(&run.source.namespace) {
            return ReportOutcome::Stale(format!("{id} is not in the agent's namespaces"));
        }
        if lease_over(run, now) {
            // The deadline passed by the scheduler's clock: no report can count a copy point
            // now, whenever the agent saw it. The run goes back to waiting (that change is
            // what this report applied), and the report itself is dropped.
            self.on_lease_expired(id, now);
            return ReportOutcome::Applied;
        }
        let Some(run) = self.active.get(&id) else {
            return ReportOutcome::Stale(format!("{id} is not in flight"));
        };
        let (current, generation) = (run.phase, run.generation);
        let Some(observation) = report.observation else {
            return ReportOutcome::Stale("empty report".into());
        };
        if matches!(observation, ReportObservation::Error(_)) && report.generation < run.generation
        {
            // An error about a directive that has since changed (the agent re-reports against
            // the current one): it must not fail a run that has moved on.
            return ReportOutcome::Stale(format!(
                "{id}: error report for generation {} < {}",
                report.generation, run.generation
            ));
        }
        match (current, observation) {
            (RunPhase::Gating | RunPhase::WaitingForTrigger, ReportObservation::Pvc(pvc)) => {
                self.on_pvc_observed(id, pvc, now)
            }
            // Only for the current release: a copy point seen under an earlier one (whose lease
            // ran out, the run since released again) is not this release's.
            (RunPhase::Copying, ReportObservation::CopyCompleted(_))
                if report.generation != generation =>
            {
                return ReportOutcome::Stale(format!(
                    "{id}: copy completed for generation {} < {generation}",
                    report.generation
                ));
            }
            (RunPhase::Copying, ReportObservation::CopyCompleted(c)) => {
                self.on_copy_completed(id, c, now)
            }
            (RunPhase::Transferring, ReportObservation::MoverFailed(f)) => {
                self.on_mover_failed(id, f, now)
            }
            (RunPhase::Transferring, ReportObservation::MoverFinished(f)) => {
                self.on_mover_finished(id, f, now)
            }
            (RunPhase::Transferring, ReportObservation::MoverStuck(s)) => {
                self.on_mover_stuck(id, s, now)
            }
            (RunPhase::CleaningUp, ReportObservation::CleanedUp) => self.finish_run(id, now),
            (_, ReportObservation::Error(e)) => self.on_agent_error(id, e, now),
            (p, o) => {
                return ReportOutcome::Stale(format!(
                    "{id} is {}, report {} does not apply",
                    p.as_str_name(),
                    observation_name(&o)
                ));
            }
        }
        ReportOutcome::Applied
    }

    /// Whether `value` released, was spent by, or is held for a run other than `id` on the
    /// same PVC (any source, in flight or in history): such a value releases no other run.
    fn used_by_another_run_of_the_pvc(&self, id: RunId, value: &str) -> bool {
        let Some(run) = self.active.get(&id) else {
            return false;
        };
        let (namespace, pvc) = (run.source.namespace.as_str(), run.pvc.as_str());
        self.active
            .on_pvc(namespace, pvc)
            .chain(self.history.on_pvc(namespace, pvc))
            .filter(|r| r.id != id)
            .any(|r| {
                r.trigger == value
                    || r.spent_triggers.iter().any(|v| v == value)
                    || r.holds.iter().any(|h| h.value == value)
            })
    }

    pub(super) fn on_pvc_observed(&mut self, id: RunId, pvc: PvcObserved, now: DateTime<Utc>) {
        let Some(key) = self.active.get(&id).map(run_key) else {
            return;
        };
        // The copy method the run started with, as its directive carries it to the agent.
        let Some(admitted) = self.admitted(&key) else {
            return;
        };
        let (live_method, timeout) = (admitted.copy_method, admitted.wait_timeout);
        let Some(run) = self.active.get(&id) else {
            return;
        };
        let copy_method = run
            .spec
            .as_ref()
            .map_or(live_method, |s| s.mover.volume.copy_method.folded());
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        let was_waiting = run.phase == RunPhase::WaitingForTrigger;
        if !pvc.exists {
            let msg = format!("source PVC {} not found; waiting for it", run.pvc);
            self.keep_waiting_with_error(id, &key, msg, now);
            return;
        }
        // A value written to the PVC by anyone: the same rule as a Trigger's value, so that
        // nothing unprintable or overlong releases a run or is written back.
        if let Some(broken) = [
            ("copy-trigger", &pvc.copy_trigger),
            ("latest-copy-trigger", &pvc.latest_copy_trigger),
        ]
        .into_iter()
        .find_map(|(which, v)| validate::printable(which, v, false).err())
        {
            let msg = format!(
                "the {} annotation of PVC {}: {}; the run waits for a valid value",
                broken.field, run.pvc, broken.rule
            );
            self.keep_waiting_with_error(id, &key, msg, now);
            return;
        }
        let latest_changed = run.latest_trigger != pvc.latest_copy_trigger;
        run.latest_trigger = pvc.latest_copy_trigger.clone();
        if self.sources.get(&key).is_some_and(|e| e.spec().paused) {
            // Pause means no new copy: the run holds here (in Gating, so nobody is asked to
            // quiesce) and reads the PVC again when the source is resumed.
            let changed =
                latest_changed || run.gated != pvc.use_copy_trigger || run.message != PAUSED_TEXT;
            run.gated = pvc.use_copy_trigger;
            if run.message != PAUSED_TEXT {
                run.message = PAUSED_TEXT.to_owned();
                note(run, now, "Paused", PAUSED_TEXT);
            }
            if changed {
                self.put_run(id);
            }
            return;
        }
        run.message.clear();
        if copy_method == CopyMethod::Direct {
            if pvc.use_copy_trigger
                && let Some(e) = self.sources.get_mut(&key)
            {
                e.status_mut().message =
                    "use-copy-trigger needs copyMethod Snapshot or Clone; syncing without gating"
                        .into();
            }
            let Some(run) = self.active.get_mut(&id) else {
                return;
            };
            run.gated = false;
            note(
                run,
                now,
                "Transferring",
                "copyMethod Direct: the mover reads the source PVC",
            );
            self.set_phase(id, RunPhase::Transferring, now);
            return;
        }
        if !pvc.use_copy_trigger {
            let Some(run) = self.active.get_mut(&id) else {
                return;
            };
            run.gated = false;
            let msg = if was_waiting {
                "use-copy-trigger removed while waiting: released without gating"
            } else {
                "the PVC is not gated: copying now"
            };
            note(run, now, "InProgress", msg);
            self.set_phase(id, RunPhase::Copying, now);
            return;
        }
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        run.gated = true;
        // A value spent by this run's expired lease is not fresh, even before the agent has
        // recorded it as latest-copy-trigger.
        let fresh = !pvc.copy_trigger.is_empty()
            && pvc.copy_trigger != pvc.latest_copy_trigger
            && !run.spent_triggers.contains(&pvc.copy_trigger);
        // Nor is a value bound to another run of the PVC: the annotation can still hold the
        // value an earlier run was released by (the agent writes a Trigger's value there) when
        // latest-copy-trigger was not updated after it (a failed patch, a crash).
        let fresh = fresh && !self.used_by_another_run_of_the_pvc(id, &pvc.copy_trigger);
        let holders = self.run_holders(id);
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        if fresh && !holders.is_empty() {
            // Only the listed holders' Triggers release this run.
            let msg = format!(
                "copy-trigger {:?} on the PVC is ignored: the source lists holders ({}), whose Triggers release its runs",
                pvc.copy_trigger,
                holders.join(", ")
            );
            if run.message != msg {
                run.message = msg.clone();
                note(run, now, "AnnotationIgnored", msg);
            }
        }
        let fresh = fresh && holders.is_empty();
        if fresh {
            let by = if was_waiting {
                ReleasedBy::Annotation
            } else {
                ReleasedBy::Ahead
            };
            self.release(id, pvc.copy_trigger, by, None, now);
        } else if !was_waiting {
            // Resume an earlier wait on this PVC if its timestamp is valid; else it starts now.
            let since = (snapgate_contract::CopyStatus::parse(&pvc.latest_copy_status)
                == Some(snapgate_contract::CopyStatus::WaitingForTrigger))
            .then(|| DateTime::parse_from_rfc3339(&pvc.waiting_since).ok())
            .flatten()
            .map(|t| t.with_timezone(&Utc))
            .filter(|t| *t <= now)
            .unwrap_or(now);
            let Some(run) = self.active.get_mut(&id) else {
                return;
            };
            run.waiting_since = Some(since);
            // No deadline past the end of the calendar: the run keeps waiting.
            run.wait_deadline = since.checked_add_signed(timeout);
            note(
                run,
                now,
                "WaitingForTrigger",
                "waiting for a new copy-trigger value",
            );
            self.set_phase(id, RunPhase::WaitingForTrigger, now);
        } else {
            // Still waiting; keep what we know of latest-copy-trigger.
            self.put_run(id);
        }
    }

    /// A run that cannot go on until the cluster changes: the error on the run and the source,
    /// recorded once however often it is reported.
    pub(super) fn keep_waiting_with_error(
        &mut self,
        id: RunId,
        key: &SourceKey,
        msg: String,
        now: DateTime<Utc>,
    ) {
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        if run.message == msg {
            return;
        }
        run.message = msg.clone();
        note(run, now, "Error", msg.clone());
        self.put_run(id);
        self.set_condition(key, "True", "Error", &msg, now);
        self.put_source(key);
    }

    /// Releases a waiting run with `value`; with a `lease` deadline (a Trigger's hold), the
    /// directive asks the agent to copy only under that lease.
    pub(super) fn release(
        &mut self,
        id: RunId,
        value: String,
        by: ReleasedBy,
        lease: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) {
        let Some(key) = self.active.get(&id).map(run_key) else {
            return;
        };
        let Some(mover) = self.admitted(&key).map(|a| a.mover) else {
            return;
        };
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        if let Some(since) = run.waiting_since {
            self.effects.push(Effect::Observe(Observation::TriggerWait {
                source: key.clone(),
                mover,
                waited: now - since,
            }));
        }
        run.trigger = value;
        run.released_by = Some(by);
        run.lease_deadline = lease;
        run.message.clear();
        let msg = match lease {
            None => format!(
                "released by {} with copy-trigger {:?}",
                by.as_str(),
                run.trigger
            ),
            Some(deadline) => format!(
                "released by {} with copy-trigger {:?}, held until {}: no copy point after that counts",
                by.as_str(),
                run.trigger,
                deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
        };
        note(run, now, "InProgress", msg);
        self.set_phase(id, RunPhase::Copying, now);
    }

    pub(super) fn on_copy_completed(
        &mut self,
        id: RunId,
        c: crate::model::CopyCompleted,
        now: DateTime<Utc>,
    ) {
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        let time = match c.time {
            AgentTime::At(t) => valid_agent_time(Some(t), now),
            AgentTime::Unset | AgentTime::Invalid => None,
        };
        if c.time != AgentTime::Unset && time.is_none() {
            note(
                run,
                now,
                "AgentTimeRefused",
                "the agent's copy time is not a valid time before now (clock skew up to 1 minute allowed); using the time of the report",
            );
        }
        run.copy_time = Some(time.unwrap_or(now));
        if run.gated {
            run.latest_trigger = run.trigger.clone();
        }
        let msg = if c.copy_name.is_empty() {
            "copy point reached".to_owned()
        } else {
            format!("copy point reached: {}", validate::quoted(&c.copy_name))
        };
        note(run, now, "Completed", msg);
        self.set_phase(id, RunPhase::Transferring, now);
    }

    pub(super) fn on_mover_failed(
        &mut self,
        id: RunId,
        f: crate::model::MoverFailed,
        now: DateTime<Utc>,
    ) {
        let Some(key) = self.active.get(&id).map(run_key) else {
            return;
        };
        let Some(mover) = self.admitted(&key).map(|a| a.mover) else {
            return;
        };
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        if f.attempt != 0 && f.attempt <= run.mover_failures {
            // Re-reported after a reconnect: this attempt is already counted.
            return;
        }
        run.mover_failures = run.mover_failures.saturating_add(1);
        let status = MoverStatus {
            result: "Failed".into(),
            logs: log_tail(&f.logs, MAX_LOG_BYTES),
        };
        run.mover_status = Some(status.clone());
        // The attempt the agent failed because it was stuck says so.
        let stuck = run
            .mover_stuck
            .as_ref()
            .filter(|s| s.attempt == f.attempt)
            .map(|s| format!(" (stuck: {})", s.reason))
            .unwrap_or_default();
        note(
            run,
            now,
            "MoverFailed",
            format!("mover attempt {} failed{stuck}; retrying", f.attempt),
        );
        self.put_run(id);
        self.effects
            .push(Effect::Observe(Observation::MoverFailure {
                source: key.clone(),
                mover,
            }));
        if let Some(e) = self.sources.get_mut(&key) {
            e.status_mut().latest_mover_status = Some(status);
        }
        self.put_source(&key);
    }

    pub(super) fn on_mover_finished(
        &mut self,
        id: RunId,
        f: crate::model::MoverFinished,
        now: DateTime<Utc>,
    ) {
        let Some(key) = self.active.get(&id).map(run_key) else {
            return;
        };
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        let (result, text) = if f.succeeded {
            (RunResult::Successful, "Successful")
        } else {
            (RunResult::Failed, "Failed")
        };
        run.result = Some(result);
        let status = MoverStatus {
            result: text.into(),
            logs: log_tail(&f.logs, MAX_LOG_BYTES),
        };
        run.mover_status = Some(status.clone());
        note(run, now, "MoverFinished", text);
        if let Some(e) = self.sources.get_mut(&key) {
            e.status_mut().latest_mover_status = Some(status);
        }
        self.put_source(&key);
        self.set_phase(id, RunPhase::CleaningUp, now);
    }

    /// The agent says the mover's pod is stuck (or, with no reason, that it no longer is):
    /// shown on the run and the source's condition at once, recorded once per pod; cleared
    /// when the attempt (or a later one) runs. Only the agent fails the attempt.
    pub(super) fn on_mover_stuck(&mut self, id: RunId, s: MoverStuck, now: DateTime<Utc>) {
        let Some(key) = self.active.get(&id).map(run_key) else {
            return;
        };
        let s = bounded_stuck(s);
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        if s.reason.is_empty() {
            // Nothing stuck: an earlier report of this attempt or an earlier one is over.
            let Some(was) = run.mover_stuck.take_if(|was| was.attempt <= s.attempt) else {
                return;
            };
            if run.message == stuck_text(&was) {
                run.message.clear();
            }
            note(
                run,
                now,
                "MoverRunning",
                format!(
                    "mover attempt {} is no longer stuck ({} of {} is over)",
                    s.attempt,
                    was.reason,
                    if was.pod.is_empty() {
                        &was.job
                    } else {
                        &was.pod
                    }
                ),
            );
            self.put_run(id);
            let stuck_shown = self.sources.get(&key).is_some_and(|e| {
                e.status()
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Synchronizing" && c.reason == MOVER_STUCK_REASON)
            });
            if stuck_shown {
                self.set_condition(&key, "True", "SyncInProgress", "", now);
                self.put_source(&key);
            }
            return;
        }
        if run.mover_stuck.as_ref() == Some(&s) {
            return;
        }
        // The timeline records each stuck pod (or Job) once; a pod whose reason alternates
        // (ErrImagePull and ImagePullBackOff) only updates the message.
        let new = run
            .mover_stuck
            .as_ref()
            .is_none_or(|was| (was.attempt, &was.pod) != (s.attempt, &s.pod));
        let msg = stuck_text(&s);
        run.message = msg.clone();
        if new {
            note(run, now, MOVER_STUCK_REASON, msg.clone());
        }
        run.mover_stuck = Some(s);
        self.put_run(id);
        self.set_condition(&key, "True", MOVER_STUCK_REASON, &msg, now);
        self.put_source(&key);
    }

    pub(super) fn on_agent_error(
        &mut self,
        id: RunId,
        e: crate::model::AgentError,
        now: DateTime<Utc>,
    ) {
        let Some(key) = self.active.get(&id).map(run_key) else {
            return;
        };
        let msg = truncate(
            &format!("{}: {}", truncate(&e.reason, 128), e.message),
            MAX_MESSAGE_BYTES,
        );
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        if run.message == msg && e.retryable {
            return;
        }
        run.message = msg.clone();
        note(run, now, "Error", msg.clone());
        let cleaning = run.phase == RunPhase::CleaningUp;
        self.set_condition(&key, "True", "Error", &msg, now);
        self.put_source(&key);
        if e.retryable || cleaning {
            self.put_run(id);
            return;
        }
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        run.result = Some(RunResult::Failed);
        self.set_phase(id, RunPhase::CleaningUp, now);
    }
}
