//! Runs: starting, queueing on a PVC, moving between phases, aborting, finishing, history.

use super::*;

impl Scheduler {
    /// Starts the runs of sources that are due, at most [`MAX_STARTS_PER_STEP`] of them; the
    /// rest stay due (and [`Scheduler::poll_timeout`] says so).
    pub(super) fn start_due_runs(&mut self, now: DateTime<Utc>) {
        self.starts_checked = Some(self.starts_checked.map_or(now, |t| t.max(now)));
        let due: Vec<(SourceKey, RunReason)> = self
            .sources
            .due(now, MAX_STARTS_PER_STEP)
            .into_iter()
            .filter_map(|k| {
                let reason = due(self.sources.get(&k)?, now)?;
                Some((k, reason))
            })
            .collect();
        for (key, reason) in due {
            self.start_run(&key, reason, "", now);
        }
    }

    pub(super) fn start_run(
        &mut self,
        key: &SourceKey,
        reason: RunReason,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> Option<RunId> {
        let entry = self.sources.get_mut(key)?;
        let id = RunId(self.next_run);
        self.next_run = self.next_run.saturating_add(1);
        let spec = entry.spec().clone();
        let author = entry.source().author.clone();
        let pvc = spec.source_pvc.clone();
        let prune = match entry.admitted.prune_interval {
            // Saturating: an interval past the end of the calendar never comes due.
            Some(every) => entry
                .status()
                .last_pruned
                .is_some_and(|t| t.checked_add_signed(every).is_some_and(|due| due <= now)),
            None => false,
        };
        let status = entry.status_mut();
        status.current_run = Some(id);
        status.last_sync_start_time = Some(now);
        status.message.clear();
        let mut run = Run {
            request_id: request_id.to_owned(),
            restic_prune: prune,
            spec: Some(spec),
            author,
            ..Run::new(id, key.clone(), pvc, reason, now)
        };
        note(&mut run, now, "Queued", reason.as_str_name());
        let pvc = run.pvc.clone();
        self.active.insert(run);
        self.set_condition(key, "True", "SyncInProgress", "", now);
        self.put_source(key);
        self.put_run(id);
        self.advance_pvc(key.namespace.clone(), pvc, now);
        Some(id)
    }

    /// Lets the oldest queued run on a PVC start its copy phase if no run holds the PVC.
    pub(super) fn advance_pvc(&mut self, namespace: String, pvc: String, now: DateTime<Utc>) {
        if self.active.on_pvc(&namespace, &pvc).any(holds_pvc) {
            return;
        }
        let next = self
            .active
            .on_pvc(&namespace, &pvc)
            .find(|r| r.phase == RunPhase::Queued)
            .map(|r| r.id);
        if let Some(id) = next {
            let Some(run) = self.active.get_mut(&id) else {
                return;
            };
            note(run, now, "Gating", "reading the source PVC");
            self.set_phase(id, RunPhase::Gating, now);
        }
    }

    /// Moves a run to a phase: persist, tell the agent, tell watchers, free the PVC if done.
    pub(super) fn set_phase(&mut self, id: RunId, to: RunPhase, now: DateTime<Utc>) {
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        let held = holds_pvc(run);
        run.phase = to;
        let (namespace, pvc) = (run.source.namespace.clone(), run.pvc.clone());
        let freed = held && !holds_pvc(run);
        let key = run_key(run);
        // A stuck mover is over once the mover is (or the run moved on otherwise).
        if to != RunPhase::Transferring
            && let Some(was) = run.mover_stuck.take()
            && run.message == stuck_text(&was)
        {
            run.message.clear();
        }
        if to == RunPhase::CleaningUp {
            self.set_condition(&key, "True", "CleaningUp", "", now);
            self.put_source(&key);
        }
        self.bump(id);
        self.notify_copy(id);
        if freed {
            self.advance_pvc(namespace, pvc, now);
        }
    }

    /// A new directive generation for a run: persist it and send it.
    pub(super) fn bump(&mut self, id: RunId) {
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        run.generation = run.generation.saturating_add(1);
        self.put_run(id);
        self.send_directive(id);
    }

    pub(super) fn abort_run(&mut self, id: RunId, why: &str, now: DateTime<Utc>) {
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        run.result = Some(RunResult::Aborted);
        run.message = why.to_owned();
        note(run, now, "Aborted", why);
        if run.phase == RunPhase::Queued {
            // Nothing was done in the cluster yet.
            self.finish_run(id, now);
        } else if run.phase != RunPhase::CleaningUp {
            self.set_phase(id, RunPhase::CleaningUp, now);
        }
    }

    pub(super) fn finish_run(&mut self, id: RunId, now: DateTime<Utc>) {
        let Some(mut run) = self.active.remove(&id) else {
            return;
        };
        let key = run_key(&run);
        let namespace = key.namespace.clone();
        let freed = holds_pvc(&run);
        run.phase = RunPhase::Finished;
        let result = *run.result.get_or_insert(RunResult::Failed);
        run.end_time = Some(now);
        note(&mut run, now, "Finished", result.as_str_name());
        let started = run.start_time;
        let prune = run.restic_prune;
        let pvc = run.pvc.clone();
        // The manual tag this run was started for (an edit meanwhile asks for another run).
        let run_tag = match run.spec.as_ref().map(|s| &s.trigger) {
            Some(TriggerSpec::Manual(tag)) => Some(tag.clone()),
            _ => None,
        };
        self.effects.push(Effect::PutRun(Box::new(run.clone())));
        self.history.insert(run);
        self.effects.push(Effect::Forget {
            namespace: namespace.clone(),
            run_id: id,
        });
        self.notify_copy(id);

        if self.sources.get(&key).is_some_and(|e| e.record.deleting) {
            if let Some(e) = self.sources.get_mut(&key) {
                e.status_mut().current_run = None;
            }
            self.put_source(&key);
            self.retire(&key);
        } else if let Some(entry) = self.sources.get_mut(&key) {
            let previous = entry.status().last_sync_time;
            let mut missed = false;
            let trigger = entry.admitted.trigger.clone();
            let mover = entry.admitted.mover;
            let has_prune = entry.admitted.prune_interval.is_some();
            let status = entry.status_mut();
            status.current_run = None;
            if result == RunResult::Successful {
                status.last_sync_time = Some(now);
                status.last_sync_duration = Some(now - started);
                if let (SyncTrigger::Schedule(s), Some(prev)) = (&trigger, previous) {
                    let second = s.next_after(prev).and_then(|t| s.next_after(t));
                    if second.is_some_and(|t| now > t) {
                        missed = true;
                        status.missed_intervals += 1;
                    }
                }
                if has_prune && (prune || status.last_pruned.is_none()) {
                    status.last_pruned = Some(now);
                }
            }
            status.next_sync_time = match &trigger {
                SyncTrigger::Schedule(s) => s.next_after(now),
                SyncTrigger::Manual(tag) => {
                    status.last_manual_sync = run_tag.unwrap_or_else(|| tag.clone());
                    None
                }
                SyncTrigger::Continuous if result == RunResult::Successful => None,
                SyncTrigger::Continuous => now.checked_add_signed(CONTINUOUS_RETRY),
            };
            self.effects.push(Effect::Observe(Observation::RunFinished {
                source: key.clone(),
                mover,
                result,
                duration: now - started,
                missed,
            }));
            self.refresh_idle_condition(&key, now);
            self.put_source(&key);
        }
        self.trim_history(&key);
        if freed {
            self.advance_pvc(namespace, pvc, now);
        }
        self.start_due_runs(now);
    }

    pub(super) fn trim_history(&mut self, key: &SourceKey) {
        let ids: Vec<RunId> = self.history.of_source(key).map(|r| r.id).collect();
        for id in ids
            .iter()
            .take(ids.len().saturating_sub(HISTORY_PER_SOURCE))
        {
            self.history.remove(id);
            self.effects.push(Effect::RemoveRun(*id));
        }
    }
}
