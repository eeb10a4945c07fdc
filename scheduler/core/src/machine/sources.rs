//! Sources: apply, read, list, delete, retire, pause, SyncNow, runs of a source, previews.

use super::*;

impl Scheduler {
    /// Creates a source (`expected_version == 0`) or replaces its spec, with no author (as a
    /// scheduler without authentication does).
    pub fn apply_source(
        &mut self,
        key: SourceKey,
        spec: SpecInput,
        expected_version: u64,
        now: DateTime<Utc>,
    ) -> Result<Source, CoreError> {
        self.apply_source_by(key, spec, expected_version, None, now)
    }

    /// Creates a source (`expected_version == 0`) or replaces its spec; `author` (the caller,
    /// as authentication identified it) becomes the source's author, whose rights in
    /// Kubernetes the agent reviews before it acts on the source's runs.
    pub fn apply_source_by(
        &mut self,
        key: SourceKey,
        spec: SpecInput,
        expected_version: u64,
        author: Option<Author>,
        now: DateTime<Utc>,
    ) -> Result<Source, CoreError> {
        let (spec, mut admitted) = validate::admit(&key, spec)?;
        self.share_schedule(&mut admitted);
        let mut pause_changed = false;
        // A deleted source whose agent has not answered its Retire (perhaps none serves the
        // namespace any more) gives way to a new one of the same name, which takes over what
        // the old one left (its cache, its mover ServiceAccount).
        if self
            .sources
            .get(&key)
            .is_some_and(|e| e.record.deleting && e.status().current_run.is_none())
        {
            self.remove_source(&key);
        }
        match self.sources.get_mut(&key) {
            Some(entry) if entry.record.deleting => {
                return Err(CoreError::FailedPrecondition(format!(
                    "source {key} is being deleted; apply it again once its last run has cleaned up"
                )));
            }
            Some(entry) => {
                let version = entry.source().version;
                if expected_version == 0 {
                    return Err(CoreError::AlreadyExists { key, version });
                }
                if expected_version != version {
                    return Err(CoreError::VersionConflict {
                        key,
                        expected: expected_version,
                        actual: version,
                    });
                }
                let schedule_changed = entry.spec().trigger != spec.trigger
                    || entry.spec().time_zone != spec.time_zone
                    || entry.spec().jitter != spec.jitter;
                pause_changed = entry.spec().paused != spec.paused;
                let src = entry.source_mut();
                src.spec = spec;
                src.author = author;
                src.version += 1;
                entry.admitted = admitted;
                if schedule_changed && entry.status().current_run.is_none() {
                    let next = match &entry.admitted.trigger {
                        SyncTrigger::Schedule(s) => {
                            let from = entry.status().last_sync_time.unwrap_or(now);
                            if entry.status().last_sync_start_time.is_none()
                                && entry.status().next_sync_time.is_some()
                            {
                                entry.status().next_sync_time
                            } else {
                                s.next_after(from)
                            }
                        }
                        SyncTrigger::Manual(_) | SyncTrigger::Continuous => None,
                    };
                    entry.status_mut().next_sync_time = next;
                }
            }
            None => {
                if expected_version != 0 {
                    return Err(CoreError::NotFound(key));
                }
                let next_sync_time = match (&admitted.trigger, spec.skip_initial_run) {
                    (SyncTrigger::Schedule(_) | SyncTrigger::Continuous, false) => Some(now),
                    (SyncTrigger::Schedule(s), true) => s.next_after(now),
                    (SyncTrigger::Continuous, true) => None,
                    (SyncTrigger::Manual(_), _) => None,
                };
                let mut status = SourceStatus {
                    next_sync_time,
                    ..Default::default()
                };
                if let (SyncTrigger::Manual(tag), true) = (&admitted.trigger, spec.skip_initial_run)
                {
                    status.last_manual_sync = tag.clone();
                }
                let source = Source {
                    key: key.clone(),
                    spec,
                    status,
                    version: 1,
                    create_time: now,
                    author,
                };
                self.sources.insert(
                    key.clone(),
                    SourceEntry {
                        record: SourceRecord {
                            source,
                            deleting: false,
                        },
                        admitted,
                        indexed: Default::default(),
                    },
                );
            }
        }
        self.refresh_idle_condition(&key, now);
        self.put_source(&key);
        if pause_changed {
            // Paused or resumed by an apply: the same as PauseSource / ResumeSource.
            let paused = self.entry(&key).is_ok_and(|e| e.spec().paused);
            self.on_pause_changed(&key, paused, now);
        } else if let Some(id) = self.current_run(&key) {
            self.send_directive(id);
        }
        self.start_due_runs(now);
        self.get_source(&key)
    }

    /// How many sources (not being deleted) each namespace has.
    pub fn sources_per_namespace(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (k, e) in self.sources.iter() {
            if !e.record.deleting {
                *out.entry(k.namespace.clone()).or_default() += 1;
            }
        }
        out
    }

    /// How many sources (not being deleted) `namespace` has: a count kept by the source
    /// table, not a scan (it is asked after every write to a namespace without an agent).
    pub fn source_count(&self, namespace: &str) -> usize {
        self.sources.live_count(namespace)
    }

    /// The source with its status.
    pub fn get_source(&self, key: &SourceKey) -> Result<Source, CoreError> {
        match self.sources.get(key) {
            Some(e) if !e.record.deleting => Ok(e.source().clone()),
            _ => Err(CoreError::NotFound(key.clone())),
        }
    }

    /// Sources in key order, optionally in one namespace, starting after `after`: at most
    /// `limit`, and the key the next page starts after when there may be more. (The edge
    /// bounds a page's encoded size, ending it early where it must.)
    pub fn list_sources(
        &self,
        namespace: Option<&str>,
        after: Option<&SourceKey>,
        limit: usize,
    ) -> (Vec<Source>, Option<SourceKey>) {
        let start = match after {
            Some(k) => std::ops::Bound::Excluded(k.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let mut out = Vec::new();
        let mut last = None;
        for (k, e) in self.sources.range((start, std::ops::Bound::Unbounded)) {
            if e.record.deleting || namespace.is_some_and(|ns| ns != k.namespace) {
                continue;
            }
            if out.len() == limit {
                return (out, last);
            }
            out.push(e.source().clone());
            last = Some(k.clone());
        }
        (out, None)
    }

    /// Deletes a source. A run in flight is aborted and cleaned up first.
    pub fn delete_source(
        &mut self,
        key: &SourceKey,
        expected_version: u64,
        now: DateTime<Utc>,
    ) -> Result<(), CoreError> {
        let entry = self.entry(key)?;
        let version = entry.source().version;
        if expected_version != 0 && expected_version != version {
            return Err(CoreError::VersionConflict {
                key: key.clone(),
                expected: expected_version,
                actual: version,
            });
        }
        if let Some(e) = self.sources.get_mut(key) {
            e.record.deleting = true;
        }
        self.put_source(key);
        match self.current_run(key) {
            // Retired once the run has cleaned up.
            Some(id) => self.abort_run(id, "source deleted", now),
            None => self.retire(key),
        }
        Ok(())
    }

    /// Asks the agent to remove what it made for `key`, a deleted source with no run in
    /// flight.
    pub(super) fn retire(&mut self, key: &SourceKey) {
        if let Some(e) = self.sources.get(key)
            && e.record.deleting
            && e.status().current_run.is_none()
        {
            self.effects.push(Effect::Retire {
                source: key.clone(),
                keep_cache: keep_cache(e.spec()),
            });
        }
    }

    /// The deleted sources in `namespaces` whose agent has not yet answered their Retire, for
    /// a (re)connect: `(source, keep_cache)`.
    pub fn retirements_for(&self, namespaces: &[String]) -> Vec<(SourceKey, bool)> {
        self.sources
            .iter()
            .filter(|(k, e)| {
                e.record.deleting
                    && e.status().current_run.is_none()
                    && namespaces.contains(&k.namespace)
            })
            .map(|(k, e)| (k.clone(), keep_cache(e.spec())))
            .collect()
    }

    /// An agent serving `namespaces` removed what it made for the deleted source `key`: the
    /// source is gone for good. `false` (nothing done) for a source not awaiting it, or in a
    /// namespace the agent does not serve.
    pub fn handle_retired(&mut self, namespaces: &[String], key: &SourceKey) -> bool {
        let awaiting = namespaces.contains(&key.namespace)
            && self
                .sources
                .get(key)
                .is_some_and(|e| e.record.deleting && e.status().current_run.is_none());
        if awaiting {
            self.remove_source(key);
        }
        awaiting
    }

    /// The namespace `namespace`, one of those the reporting agent serves (`namespaces`), is
    /// being deleted: as Kubernetes deletes a deleted namespace's ReplicationSources, its
    /// sources are deleted. Their runs end at once, aborted (there is nothing to clean up: the
    /// namespace's objects go with it), and the sources are removed. How many were.
    pub fn namespace_deleted(
        &mut self,
        namespaces: &[String],
        namespace: &str,
        now: DateTime<Utc>,
    ) -> usize {
        if !namespaces.iter().any(|n| n == namespace) {
            return 0;
        }
        let from = SourceKey::new(namespace, "");
        let keys: Vec<SourceKey> = self
            .sources
            .range(from..)
            .take_while(|(k, _)| k.namespace == namespace)
            .map(|(k, _)| k.clone())
            .collect();
        // All marked first, so that no run of one starts as another's ends.
        for key in &keys {
            if let Some(e) = self.sources.get_mut(key) {
                e.record.deleting = true;
            }
        }
        for key in &keys {
            if let Some(id) = self.current_run(key) {
                if let Some(run) = self.active.get_mut(&id) {
                    run.result = Some(RunResult::Aborted);
                    run.message = NAMESPACE_DELETED_TEXT.to_owned();
                    note(run, now, "Aborted", NAMESPACE_DELETED_TEXT);
                }
                self.finish_run(id, now);
            }
            self.remove_source(key);
        }
        // A Retire the run's end asked for has nothing left to do.
        self.effects.retain(
            |e| !matches!(e, Effect::Retire { source, .. } if source.namespace == namespace),
        );
        keys.len()
    }

    pub(super) fn remove_source(&mut self, key: &SourceKey) {
        self.sources.remove(key);
        self.effects.push(Effect::RemoveSource(key.clone()));
        let old: Vec<RunId> = self.history.of_source(key).map(|r| r.id).collect();
        for id in old {
            self.history.remove(&id);
            self.effects.push(Effect::RemoveRun(id));
        }
    }

    /// Pauses or resumes a source, with a note for the status.
    pub fn set_paused(
        &mut self,
        key: &SourceKey,
        paused: bool,
        pause_note: String,
        now: DateTime<Utc>,
    ) -> Result<Source, CoreError> {
        validate::printable("note", &pause_note, false)?;
        let entry = self.entry_mut(key)?;
        let src = entry.source_mut();
        let spec = &mut src.spec;
        let changed = spec.paused != paused;
        if changed {
            spec.paused = paused;
            src.version += 1;
        }
        entry.status_mut().pause_note = pause_note;
        if changed {
            self.on_pause_changed(key, paused, now);
        }
        self.refresh_idle_condition(key, now);
        // After the condition is set: the record committed is the one readers see.
        self.put_source(key);
        self.start_due_runs(now);
        self.get_source(key)
    }

    /// What pausing or resuming does to the run in flight.
    pub(super) fn on_pause_changed(&mut self, key: &SourceKey, paused: bool, now: DateTime<Utc>) {
        if let Some(id) = self.current_run(key) {
            match (paused, self.active.get(&id).map(|r| r.phase)) {
                // No application is asked to quiesce while paused: back to reading the PVC,
                // with snapgate's waiting annotations removed; the wait starts anew on resume.
                (true, Some(RunPhase::WaitingForTrigger)) => {
                    if let Some(run) = self.active.get_mut(&id) {
                        run.message = PAUSED_TEXT.to_owned();
                        note(run, now, "Paused", PAUSED_TEXT);
                        // Nobody holds for a paused source: the holders' values are spent.
                        for h in std::mem::take(&mut run.holds) {
                            spend(run, h.value);
                        }
                    }
                    self.set_phase(id, RunPhase::Gating, now);
                    self.fail_if_spent_out(id, now);
                }
                // Read the PVC again: a trigger written meanwhile releases it then.
                (false, Some(RunPhase::Gating)) => {
                    if let Some(run) = self.active.get_mut(&id) {
                        run.message.clear();
                        note(run, now, "Resumed", "reading the source PVC again");
                    }
                    self.bump(id);
                    self.notify_copy(id);
                }
                // The agent scales the mover Job to zero (or back) from the directive's spec.
                _ => self.send_directive(id),
            }
        }
    }

    /// Starts a run now. The same `request_id` again answers the same run.
    pub fn sync_now(
        &mut self,
        key: &SourceKey,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(RunId, bool), CoreError> {
        if request_id.is_empty() {
            return Err(InvalidField::new(
                "requestId",
                "required, so that a retried request starts no second run",
            )
            .into());
        }
        validate::printable("requestId", request_id, true)?;
        self.entry(key)?;
        if let Some(run) = self
            .active
            .of_source(key)
            .chain(self.history.of_source(key))
            .find(|r| r.request_id == request_id)
        {
            return Ok((run.id, false));
        }
        if let Some(id) = self.current_run(key) {
            return Ok((id, false));
        }
        if self.entry(key)?.spec().paused {
            return Err(CoreError::FailedPrecondition(format!(
                "source {key} is paused; resume it first"
            )));
        }
        let id = self
            .start_run(key, RunReason::SyncNow, request_id, now)
            .ok_or_else(|| CoreError::NotFound(key.clone()))?;
        Ok((id, true))
    }

    /// Recent runs of a source, newest first.
    pub fn list_runs(&self, key: &SourceKey, limit: usize) -> Result<Vec<Run>, CoreError> {
        self.entry(key)?;
        let mut runs: Vec<Run> = self
            .active
            .of_source(key)
            .chain(self.history.of_source(key))
            .cloned()
            .collect();
        runs.sort_by_key(|r| std::cmp::Reverse(r.id));
        runs.truncate(limit);
        Ok(runs)
    }

    /// The next `count` schedule times after `after`, with the source's time zone.
    pub fn preview(
        &self,
        key: &SourceKey,
        after: DateTime<Utc>,
        count: usize,
    ) -> Result<(Vec<DateTime<Utc>>, chrono_tz::Tz), CoreError> {
        match &self.entry(key)?.admitted.trigger {
            SyncTrigger::Schedule(s) => Ok((s.preview(after, count), s.time_zone())),
            other => Err(CoreError::FailedPrecondition(format!(
                "source {key} has no schedule (it syncs {other})"
            ))),
        }
    }
}
