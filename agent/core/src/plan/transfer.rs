//! TRANSFER: the PVC restored from the snapshot (once it is ready to use), the restic cache,
//! the Secrets, the mover ServiceAccount, then the mover Job; its outcome reported, a failed
//! Job replaced after a back-off, and a Job whose pod cannot start reported stuck and failed
//! once stuck too long.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use snapgate_proto::{
    time::timestamp,
    v1::{self, report::Observation},
};

use super::{
    ATTEMPT, Action, Ctx, MoverOutcome, MoverPods, Stuck, error,
    observed::{Owned, created, failed_at, job_attempt},
};
use crate::{
    CopyMethod, Mover, MoverSpec, SpecError, annotations, bounds,
    classify::{self, CopyReadiness, JobState},
    names,
    resources::{self, MoverJobInput, ResticActions},
    stuck::{self, Verdict},
};

/// The keys each of a source's Secrets must hold before its mover Job is made, as VolSync
/// checks them up front: without one the Job's pod would wait in CreateContainerConfigError
/// (a key its env names) or the mover would fail at once (a file it reads). `(secret, key)`
/// pairs, in the order they are checked. A customCA from a ConfigMap is not checked (the
/// agent may not read ConfigMaps).
pub fn required_secret_keys(spec: &v1::SourceSpec) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut need = |secret: &str, keys: &[&str]| {
        if !secret.is_empty() {
            out.extend(keys.iter().map(|k| (secret.to_owned(), (*k).to_owned())));
        }
    };
    let ca = |ca: &Option<v1::CustomCa>| {
        ca.as_ref()
            .filter(|c| !c.secret_name.is_empty() && !c.key.is_empty())
            .map(|c| (c.secret_name.clone(), c.key.clone()))
    };
    match MoverSpec::of(spec) {
        Ok(MoverSpec::Restic(r)) => {
            need(&r.repository, &["RESTIC_REPOSITORY", "RESTIC_PASSWORD"]);
            out.extend(ca(&r.custom_ca));
        }
        Ok(MoverSpec::Rclone(r)) => {
            need(&r.rclone_config, &["rclone.conf"]);
            out.extend(ca(&r.custom_ca));
        }
        Ok(MoverSpec::Rsync(r)) => need(&r.ssh_keys, &["source", "source.pub", "destination.pub"]),
        Ok(MoverSpec::RsyncTls(r)) => need(&r.key_secret, &["psk.txt"]),
        Err(_) => {}
    }
    out
}

/// The Secrets a source's mover needs before its Job can run.
pub fn required_secrets(spec: &v1::SourceSpec) -> Vec<String> {
    let mut out = Vec::new();
    let ca = |ca: &Option<v1::CustomCa>| {
        ca.as_ref()
            .map(|c| c.secret_name.clone())
            .filter(|n| !n.is_empty())
    };
    match MoverSpec::of(spec) {
        Ok(MoverSpec::Restic(r)) => {
            out.push(r.repository.clone());
            out.extend(ca(&r.custom_ca));
        }
        Ok(MoverSpec::Rclone(r)) => {
            out.push(r.rclone_config.clone());
            out.extend(ca(&r.custom_ca));
        }
        Ok(MoverSpec::Rsync(r)) => out.push(r.ssh_keys.clone()),
        Ok(MoverSpec::RsyncTls(r)) => out.push(r.key_secret.clone()),
        Err(_) => {}
    }
    out.retain(|n| !n.is_empty());
    out.dedup();
    out
}

impl Ctx<'_> {
    pub(super) fn transfer(&self) -> Result<Vec<Action>, SpecError> {
        let Some(job_name) = self.names.job.clone() else {
            return Err(SpecError::NoMover);
        };
        // `unlock` is written to the cache PVC's annotations after a successful Job.
        if let MoverSpec::Restic(r) = self.mover
            && let Some(why) = r.unlock.as_deref().and_then(bounds::unwritable)
        {
            return Err(SpecError::invalid("restic.unlock", why));
        }
        let mut out = Vec::new();
        let observed = annotations::observe(self.seen.pvc);
        if self.method == CopyMethod::Direct
            && observed.use_copy_trigger
            && let Some(pvc) = self.seen.pvc
        {
            out.push(
                self.event(
                    pvc,
                    "CopyTriggerNotSupported",
                    None,
                    "Warning",
                    "use-copy-trigger needs copyMethod Snapshot or Clone: syncing without gating"
                        .into(),
                ),
            );
        }
        // An existing Job decides first: its outcome is what this phase is for.
        if let Some(job) = self.seen.job {
            if !names::made_by_run(job.metadata.labels.as_ref(), self.run.run_id) {
                out.push(Action::DeleteJob(job_name));
                return Ok(out);
            }
            if job.metadata.deletion_timestamp.is_some() {
                return Ok(out);
            }
            let attempt = job_attempt(job);
            let uid = job.metadata.uid.clone().unwrap_or_default();
            match classify::job_state(job) {
                JobState::Running { .. } => {
                    if job.spec.as_ref().and_then(|s| s.parallelism) != Some(self.parallelism()) {
                        out.push(Action::PatchJob {
                            name: job_name,
                            patch: serde_json::json!({
                                "spec": { "parallelism": self.parallelism() }
                            }),
                        });
                    } else if !self.spec.paused {
                        // A paused Job runs no pod: nothing of it can be stuck.
                        out.extend(self.stuck(&job_name, attempt, uid));
                    }
                }
                JobState::Succeeded => {
                    if let MoverSpec::Restic(r) = self.mover
                        && let Some(cache) = self.seen.cache_pvc
                        && let Some(patch) = annotations::mark_unlocked(
                            r.unlock.as_deref(),
                            annotations::restic_last_unlocked(Some(cache)),
                        )
                    {
                        out.push(Action::PatchPvc {
                            name: self.names.cache_pvc.clone(),
                            patch,
                        });
                        return Ok(out);
                    }
                    out.push(Action::ReportMover {
                        job: job_name,
                        uid,
                        outcome: MoverOutcome::Succeeded,
                        mover: self.mover.mover(),
                        stuck: None,
                    });
                }
                JobState::Failed { .. } => {
                    if let Some(pvc) = self.seen.pvc {
                        out.push(self.event(
                            pvc,
                            "TransferFailed",
                            Some(attempt.into()),
                            "Warning",
                            format!(
                                "mover Job {job_name} failed (attempt {attempt}); it is replaced \
                                 after a back-off"
                            ),
                        ));
                    }
                    // A failure time from the future (a hostile or skewed clock) counts from
                    // when this agent first saw the failure (or now); a back-off past the end of
                    // time is never over.
                    let failed = failed_at(job)
                        .unwrap_or_else(|| created(&job.metadata))
                        .min(self.seen.job_failed_seen.unwrap_or(self.seen.now))
                        .min(self.seen.now);
                    let retry_at = TimeDelta::from_std(self.backoff(attempt))
                        .ok()
                        .and_then(|b| failed.checked_add_signed(b))
                        .unwrap_or(DateTime::<Utc>::MAX_UTC);
                    if !self.seen.job_reported {
                        // The failure (and its log) reaches the scheduler before the Job that
                        // holds the log is replaced.
                        out.push(Action::ReportMover {
                            job: job_name.clone(),
                            uid,
                            outcome: MoverOutcome::Failed { attempt },
                            mover: self.mover.mover(),
                            stuck: None,
                        });
                        out.push(Action::WakeAt(retry_at.max(self.seen.now)));
                        return Ok(out);
                    }
                    if self.seen.now >= retry_at {
                        out.push(Action::DeleteJob(job_name));
                    } else {
                        out.push(Action::WakeAt(retry_at));
                    }
                }
            }
            return Ok(out);
        }

        // The Job of a stuck attempt was deleted: the next one waits for the back-off.
        if let Some(at) = self.seen.next_attempt_at
            && self.seen.now < at
        {
            out.push(Action::WakeAt(at));
            return Ok(out);
        }
        // No Job yet: the data volume, the cache and the secrets come first.
        let Some(source_pvc) = self.seen.pvc else {
            if self.method == CopyMethod::Direct || self.method == CopyMethod::Snapshot {
                out.push(self.pvc_missing());
                return Ok(out);
            }
            // Clone: the clone is all the mover needs.
            return self.transfer_with(out, None, job_name);
        };
        self.transfer_with(out, Some(source_pvc), job_name)
    }

    fn transfer_with(
        &self,
        mut out: Vec<Action>,
        source_pvc: Option<&PersistentVolumeClaim>,
        job_name: String,
    ) -> Result<Vec<Action>, SpecError> {
        let data: &PersistentVolumeClaim = match self.method {
            CopyMethod::Direct => {
                let Some(source_pvc) = source_pvc else {
                    out.push(self.pvc_missing());
                    return Ok(out);
                };
                source_pvc
            }
            CopyMethod::Clone => match self.owned(self.seen.copy_pvc) {
                Owned::ThisRun(c) => c,
                Owned::Foreign(c) => {
                    out.push(self.foreign(c));
                    return Ok(out);
                }
                Owned::Absent | Owned::Earlier => {
                    out.push(self.copy_gone("the clone PVC"));
                    return Ok(out);
                }
            },
            CopyMethod::Snapshot => match self.owned(self.seen.copy_pvc) {
                Owned::ThisRun(c) => c,
                Owned::Foreign(c) => {
                    out.push(self.foreign(c));
                    return Ok(out);
                }
                Owned::Earlier => {
                    out.push(Action::DeletePvc(self.copy_name()));
                    return Ok(out);
                }
                Owned::Absent => {
                    let Owned::ThisRun(snap) = self.owned(self.seen.snapshot) else {
                        out.push(self.copy_gone("the VolumeSnapshot"));
                        return Ok(out);
                    };
                    // The copy point was the cut; a PVC is restored from the snapshot (and the
                    // mover reads it) only once its upload is done: readyToUse.
                    match classify::copy_readiness(snap) {
                        CopyReadiness::Ready => {}
                        CopyReadiness::Cut | CopyReadiness::Pending => return Ok(out),
                        CopyReadiness::Failed(message) => {
                            out.push(Action::Report(error(
                                "SnapshotFailed",
                                format!("VolumeSnapshot {}: {message}", self.copy_name()),
                                true,
                            )));
                            return Ok(out);
                        }
                    }
                    let Some(source_pvc) = source_pvc else {
                        out.push(self.pvc_missing());
                        return Ok(out);
                    };
                    let restored =
                        resources::pvc_from_snapshot(&self.run, self.mover, source_pvc, snap)?;
                    out.push(Action::CreatePvc(Box::new(restored)));
                    return Ok(out);
                }
            },
        };
        if let MoverSpec::Restic(r) = self.mover
            && self.seen.cache_pvc.is_none()
        {
            let cache = resources::restic_cache_pvc(self.run.namespace, self.run.source, r, data)?;
            out.push(Action::CreatePvc(Box::new(cache)));
            return Ok(out);
        }
        let required = required_secrets(self.spec);
        let Some(secrets) = self.seen.secrets else {
            out.push(Action::ReadSecrets(required));
            return Ok(out);
        };
        if let Some(missing) = required.iter().find(|n| !secrets.contains_key(*n)) {
            out.push(Action::Report(error(
                "SecretNotFound",
                format!(
                    "Secret {}/{missing} (named by the source's {} settings) not found",
                    self.run.namespace,
                    self.mover.mover().as_str()
                ),
                true,
            )));
            return Ok(out);
        }
        // Every key the mover needs: a missing one is said at once, naming the Secret and the
        // key, and the run waits (the Secrets are read again) until it is there.
        if let Some((secret, key)) = required_secret_keys(self.spec)
            .into_iter()
            .find(|(secret, key)| secrets.get(secret).is_none_or(|keys| !keys.contains(key)))
        {
            out.push(Action::Report(error(
                "SecretKeyMissing",
                format!(
                    "Secret {}/{secret} has no key {key:?}, which the {} mover needs",
                    self.run.namespace,
                    self.mover.mover().as_str()
                ),
                true,
            )));
            return Ok(out);
        }
        // A mover that mounts the source PVC in place runs where the application's pod has it
        // attached (Multi-Attach otherwise): the pods are read first.
        // So do the PVCs of its moverVolumes, when the source's own volume pins nothing.
        let claims = crate::pinning::mover_volume_claims(self.mover.volume_options().mover_volumes);
        let pin = match (
            self.method == CopyMethod::Direct || !claims.is_empty(),
            self.seen.pods,
        ) {
            (true, None) => {
                out.push(Action::ListPods);
                return Ok(out);
            }
            (true, Some(pods)) => (self.method == CopyMethod::Direct)
                .then(|| crate::pinning::pin(data, pods))
                .flatten()
                .or_else(|| {
                    crate::pinning::pin_mover_volumes(&claims, self.seen.mover_volume_pvcs, pods)
                }),
            (false, _) => None,
        };
        // The mover runs as the source's own ServiceAccount unless the source names one; it is
        // applied once per run (its pull secrets and SCC grant follow the agent's settings).
        let own_account = self
            .mover
            .volume_options()
            .mover_service_account
            .is_none()
            .then(|| names::mover_account_name(self.run.source));
        if own_account.is_some() && !self.seen.mover_account {
            // rsync over ssh runs as root with sshd's capabilities, privileged movers as root:
            // only those need the SCC.
            let privileged = self.mover.mover() == Mover::Rsync || self.seen.privileged;
            out.push(Action::ApplyMoverAccount(Box::new(
                resources::mover_account(
                    self.run.namespace,
                    self.run.source,
                    &self.config.mover_pull_secrets,
                    self.config.mover_scc.as_deref().filter(|_| privileged),
                ),
            )));
            return Ok(out);
        }
        let main_secret = required.first().and_then(|n| secrets.get(n));
        let empty = BTreeSet::new();
        let restic = match self.mover {
            MoverSpec::Restic(r) => ResticActions {
                unlock: annotations::restic_unlock_due(
                    r.unlock.as_deref(),
                    annotations::restic_last_unlocked(self.seen.cache_pvc),
                ),
                prune: self.directive.restic_prune,
            },
            _ => ResticActions::default(),
        };
        let mut job = resources::mover_job(&MoverJobInput {
            run: self.run,
            spec: self.mover,
            paused: self.spec.paused,
            data_pvc: data,
            privileged_movers: self.seen.privileged,
            images: &self.config.images,
            proxy: &self.config.proxy,
            secret_keys: main_secret.unwrap_or(&empty),
            restic,
            mover_account: own_account.as_deref(),
        })?;
        if let Some(pin) = &pin {
            crate::pinning::apply(&mut job, pin);
        }
        let Some(attempt) = self.seen.failed_attempts.checked_add(1) else {
            out.push(Action::Report(error(
                "TooManyAttempts",
                format!(
                    "the run's mover failed {} times: no further attempt can be counted",
                    self.seen.failed_attempts
                ),
                false,
            )));
            return Ok(out);
        };
        job.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(ATTEMPT.to_owned(), attempt.to_string());
        debug_assert_eq!(job.metadata.name.as_deref(), Some(job_name.as_str()));
        out.push(Action::CreateJob(Box::new(job)));
        if let Some(pvc) = source_pvc.or(self.seen.copy_pvc) {
            out.push(self.event(
                pvc,
                "TransferStarted",
                Some(attempt.into()),
                "Normal",
                format!(
                    "mover Job {job_name} started (attempt {attempt})",
                    job_name = self.names.job.as_deref().unwrap_or_default()
                ),
            ));
        }
        Ok(out)
    }

    /// A running Job's pods, as the watches show them: what keeps it from running is reported
    /// at once (and that nothing does, so that an earlier report no longer stands); once it
    /// has lasted `mover_stuck_after`, the attempt fails: reported with what kept it, then
    /// its Job deleted, the next attempt after the usual back-off.
    fn stuck(&self, job: &str, attempt: u32, uid: String) -> Vec<Action> {
        let MoverPods::Known(seen) = self.seen.mover_pods else {
            return Vec::new();
        };
        let Some(Stuck {
            trouble,
            first_seen,
        }) = seen
        else {
            return vec![Action::Report(Observation::MoverStuck(v1::MoverStuck {
                job: job.to_owned(),
                attempt,
                ..Default::default()
            }))];
        };
        let after = self.config.mover_stuck_after;
        let report = |since: DateTime<Utc>, deadline: Option<DateTime<Utc>>| {
            Action::Report(Observation::MoverStuck(v1::MoverStuck {
                reason: trouble.reason.as_str().to_owned(),
                message: trouble.message.clone(),
                pod: trouble.pod.clone().unwrap_or_default(),
                job: job.to_owned(),
                attempt,
                since: Some(timestamp(bounds::clamp_to_proto_range(since))),
                deadline: deadline.map(|d| timestamp(bounds::clamp_to_proto_range(d))),
            }))
        };
        match stuck::verdict(trouble.since, first_seen, after, self.seen.now) {
            Verdict::Waiting { since, deadline } => {
                let mut out = vec![report(since, deadline)];
                out.extend(deadline.map(Action::WakeAt));
                out
            }
            Verdict::Over { since, deadline } => {
                let why = format!(
                    "{}; stuck since {}, longer than {}: the attempt failed",
                    trouble.describe(job),
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    snapgate_proto::duration::format(after),
                );
                if !self.seen.job_reported {
                    // What kept it, then the failure (with it), before the Job goes.
                    return vec![
                        report(since, Some(deadline)),
                        Action::ReportMover {
                            job: job.to_owned(),
                            uid,
                            outcome: MoverOutcome::Failed { attempt },
                            mover: self.mover.mover(),
                            stuck: Some(why),
                        },
                        Action::WakeAt(self.seen.now),
                    ];
                }
                let mut out = Vec::new();
                if let Some(pvc) = self.seen.pvc {
                    out.push(self.event(
                        pvc,
                        "TransferFailed",
                        Some(attempt.into()),
                        "Warning",
                        format!(
                            "mover Job {job} failed (attempt {attempt}): {why}; it is replaced \
                             after a back-off"
                        ),
                    ));
                }
                // A back-off past the end of time is never over.
                let retry_at = TimeDelta::from_std(self.backoff(attempt))
                    .ok()
                    .and_then(|b| self.seen.now.checked_add_signed(b))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                out.push(Action::FailStuckJob {
                    job: job.to_owned(),
                    retry_at,
                });
                out
            }
        }
    }

    fn parallelism(&self) -> i32 {
        if self.spec.paused { 0 } else { 1 }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.config
            .mover_backoff
            .saturating_mul(factor)
            .min(self.config.mover_backoff_max)
    }
}

/// The report for a mover's outcome, with the log tail the shell read (or why there is none),
/// cut to [`classify::MOVER_LOG_MAX_BYTES`].
pub fn mover_report(outcome: MoverOutcome, logs: String) -> Observation {
    let logs = bounds::cut(logs, classify::MOVER_LOG_MAX_BYTES);
    match outcome {
        MoverOutcome::Succeeded => Observation::MoverFinished(v1::MoverFinished {
            succeeded: true,
            logs,
        }),
        MoverOutcome::Failed { attempt } => {
            Observation::MoverFailed(v1::MoverFailed { attempt, logs })
        }
    }
}

/// The logs of an attempt failed because it was stuck: what kept it, then the tail of the
/// log that could be read (a pod that never started has none), within
/// [`classify::MOVER_LOG_MAX_BYTES`] with `why` first.
pub fn stuck_logs(why: &str, log: &str) -> String {
    let why = bounds::truncate(why, classify::MOVER_LOG_MAX_BYTES);
    let room = classify::MOVER_LOG_MAX_BYTES.saturating_sub(why.len().saturating_add(1));
    let log = bounds::tail(log.trim_end(), room);
    if log.is_empty() {
        why
    } else {
        format!("{why}\n{log}")
    }
}

/// The filtered tail a mover's pod log is read into, as movers.md says for the outcome.
pub fn log_tail(mover: Mover, outcome: MoverOutcome) -> classify::LogTail {
    classify::LogTail::new(mover, matches!(outcome, MoverOutcome::Failed { .. }))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{
            batch::v1::{Job, JobCondition, JobStatus},
            core::v1::Pod,
        },
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
        jiff::Timestamp,
    };
    use pretty_assertions::assert_eq;
    use snapgate_proto::v1::DirectivePhase;

    use super::*;
    use crate::{
        plan::{PlanConfig, events::to_jiff, observed::from_jiff, plan, test_support::*},
        stuck::Trouble,
    };

    fn failed_job(at: DateTime<Utc>) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("volsync-src-db".into()),
                uid: Some("u1".into()),
                labels: Some(names::temporary_labels("db", "run-7")),
                annotations: Some([(ATTEMPT.to_owned(), "2".to_owned())].into()),
                ..Default::default()
            },
            spec: Some(Default::default()),
            status: Some(JobStatus {
                failed: Some(9),
                conditions: Some(vec![JobCondition {
                    type_: "Failed".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(to_jiff(at))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_failed_job_is_reported_and_replaced_only_after_its_doubled_back_off() {
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let config = PlanConfig::default(); // 10 s, doubled per attempt: 20 s for attempt 2
        let job = failed_job(now() - chrono::Duration::seconds(25));
        let mut s = seen(Some(&source));
        s.job = Some(&job);
        // Not reported yet: report it first, even though the back-off is over.
        let a = plan(&d, &s, &config).unwrap();
        assert_eq!(
            kinds(&a),
            [
                "Event TransferFailed",
                "ReportMover Failed { attempt: 2 }",
                "WakeAt 2026-03-04 05:06:07 UTC"
            ]
        );
        // Reported, within the back-off: wait for its end.
        s.job_reported = true;
        let job = failed_job(now() - chrono::Duration::seconds(5));
        s.job = Some(&job);
        let a = plan(&d, &s, &config).unwrap();
        assert_eq!(
            kinds(&a),
            ["Event TransferFailed", "WakeAt 2026-03-04 05:06:22 UTC"]
        );
        // Reported, back-off over: replace it.
        let job = failed_job(now() - chrono::Duration::seconds(20));
        s.job = Some(&job);
        let a = plan(&d, &s, &config).unwrap();
        assert_eq!(a.last(), Some(&Action::DeleteJob("volsync-src-db".into())));
    }

    /// An API server whose clock runs ahead stamps the failure in the agent's future: the
    /// back-off counts from when the agent first saw the failure, so the Job is replaced once
    /// that back-off is over, however far ahead the stamp is (it was put off for ever).
    #[test]
    fn a_failed_job_stamped_in_the_future_is_replaced_after_the_back_off_from_when_it_was_seen() {
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let config = PlanConfig::default(); // 20 s for attempt 2
        let job = failed_job(now() + chrono::Duration::minutes(5));
        let mut s = seen(Some(&source));
        s.job = Some(&job);
        s.job_reported = true;
        let cases = [
            // (first seen failed, expected)
            (None, "WakeAt 2026-03-04 05:06:27 UTC"),
            (Some(now()), "WakeAt 2026-03-04 05:06:27 UTC"),
            (
                Some(now() - chrono::Duration::seconds(5)),
                "WakeAt 2026-03-04 05:06:22 UTC",
            ),
            (
                Some(now() - chrono::Duration::seconds(20)),
                "DeleteJob volsync-src-db",
            ),
            (
                Some(now() - chrono::Duration::hours(1)),
                "DeleteJob volsync-src-db",
            ),
        ];
        for (first_seen, want) in cases {
            s.job_failed_seen = first_seen;
            let a = plan(&d, &s, &config).unwrap();
            assert_eq!(
                kinds(&a).last().map(String::as_str),
                Some(want),
                "first seen {first_seen:?}"
            );
        }
    }

    fn running_job(parallelism: i32) -> Job {
        let mut job = failed_job(now());
        job.spec = Some(k8s_openapi::api::batch::v1::JobSpec {
            parallelism: Some(parallelism),
            ..Default::default()
        });
        job.status = Some(JobStatus {
            active: Some(1),
            ..Default::default()
        });
        job
    }

    fn image_pull(since: Option<DateTime<Utc>>) -> Trouble {
        Trouble {
            reason: stuck::StuckReason::ImagePullBackOff,
            message: "Back-off pulling image \"quay.io/backube/volsync:0.14.0\"".into(),
            pod: Some("volsync-src-db-x7k2p".into()),
            key: "pod/uid-x7k2p".into(),
            since,
        }
    }

    #[test]
    fn a_stuck_pod_is_reported_at_once_and_its_attempt_fails_once_stuck_past_the_limit() {
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let config = PlanConfig::default(); // stuck after 10 min; back-off 20 s for attempt 2
        let job = running_job(1);
        let mut s = seen(Some(&source));
        s.job = Some(&job);
        let secs = chrono::Duration::seconds;
        // Pods or Events not listed yet: nothing is said either way.
        assert_eq!(kinds(&plan(&d, &s, &config).unwrap()), Vec::<String>::new());
        // Nothing stuck: said so (an earlier report of the attempt no longer stands).
        s.mover_pods = MoverPods::Known(None);
        assert_eq!(
            plan(&d, &s, &config).unwrap(),
            [Action::Report(Observation::MoverStuck(v1::MoverStuck {
                job: "volsync-src-db".into(),
                attempt: 2,
                ..Default::default()
            }))]
        );
        // Stuck for a minute by the cluster's record (seen by this agent for 30 s): reported
        // with its deadline, and the run wakes then.
        let pulling = image_pull(Some(now() - secs(60)));
        s.mover_pods = MoverPods::Known(Some(Stuck {
            trouble: &pulling,
            first_seen: now() - secs(30),
        }));
        assert_eq!(
            plan(&d, &s, &config).unwrap(),
            [
                Action::Report(Observation::MoverStuck(v1::MoverStuck {
                    reason: "ImagePullBackOff".into(),
                    message: "Back-off pulling image \"quay.io/backube/volsync:0.14.0\"".into(),
                    pod: "volsync-src-db-x7k2p".into(),
                    job: "volsync-src-db".into(),
                    attempt: 2,
                    since: Some(timestamp(now() - secs(60))),
                    deadline: Some(timestamp(now() + secs(540))),
                })),
                Action::WakeAt(now() + secs(540)),
            ]
        );
        // Ten minutes: the failure is reported with what kept the attempt, then...
        let over = image_pull(Some(now() - secs(600)));
        s.mover_pods = MoverPods::Known(Some(Stuck {
            trouble: &over,
            first_seen: now() - secs(1),
        }));
        let a = plan(&d, &s, &config).unwrap();
        assert_eq!(
            kinds(&a),
            [
                "Report MoverStuck",
                "ReportMover Failed { attempt: 2 }",
                "WakeAt 2026-03-04 05:06:07 UTC"
            ]
        );
        let Action::ReportMover {
            stuck: Some(why), ..
        } = &a[1]
        else {
            panic!("{a:?}")
        };
        assert_eq!(
            why,
            "ImagePullBackOff: pod volsync-src-db-x7k2p: Back-off pulling image \
             \"quay.io/backube/volsync:0.14.0\"; stuck since 2026-03-04T04:56:07Z, longer than \
             10m0s: the attempt failed"
        );
        // ...once reported, the Job goes, and no new one before the back-off (20 s).
        s.job_reported = true;
        let a = plan(&d, &s, &config).unwrap();
        assert_eq!(
            kinds(&a),
            [
                "Event TransferFailed",
                "FailStuckJob volsync-src-db 2026-03-04 05:06:27 UTC"
            ]
        );
        // A paused source's Job runs no pod: scaled to zero, and then nothing is stuck.
        let mut paused = d.clone();
        paused.spec.as_mut().unwrap().paused = true;
        assert_eq!(
            kinds(&plan(&paused, &s, &config).unwrap()),
            ["PatchJob volsync-src-db"]
        );
        let zero = running_job(0);
        s.job = Some(&zero);
        assert_eq!(
            kinds(&plan(&paused, &s, &config).unwrap()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn after_a_stuck_attempt_no_job_is_made_before_its_back_off_is_over() {
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let mut s = seen(Some(&source));
        s.failed_attempts = 2;
        s.next_attempt_at = Some(now() + chrono::Duration::seconds(20));
        assert_eq!(
            kinds(&plan(&d, &s, &PlanConfig::default()).unwrap()),
            ["WakeAt 2026-03-04 05:06:27 UTC"]
        );
        s.next_attempt_at = Some(now());
        assert_eq!(
            kinds(&plan(&d, &s, &PlanConfig::default()).unwrap()),
            ["CreatePvc volsync-src-db-cache"],
            "the next attempt is prepared as any other"
        );
    }

    #[test]
    fn a_stuck_attempts_logs_begin_with_why_and_keep_the_end_of_the_log_within_the_bound() {
        assert_eq!(stuck_logs("why", ""), "why");
        assert_eq!(stuck_logs("why", "a\nb\n"), "why\na\nb");
        let long = stuck_logs(&"w".repeat(300), &"l".repeat(5000));
        assert_eq!(long.len(), classify::MOVER_LOG_MAX_BYTES);
        assert!(long.starts_with(&"w".repeat(300)) && long.ends_with('l'));
        let why = stuck_logs(&"é".repeat(5000), "log");
        assert!(why.len() <= classify::MOVER_LOG_MAX_BYTES && why.ends_with(bounds::TRUNCATED));
    }

    #[test]
    fn a_missing_secret_is_reported_and_no_job_is_made() {
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let cache = pvc("volsync-src-db-cache", &[], None);
        let secrets = BTreeMap::new();
        let mut s = seen(Some(&source));
        s.cache_pvc = Some(&cache);
        assert_eq!(
            kinds(&plan(&d, &s, &PlanConfig::default()).unwrap()),
            ["ReadSecrets repo"]
        );
        s.secrets = Some(&secrets);
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        assert_eq!(kinds(&a), ["Report AgentError"]);
    }

    #[test]
    fn the_sources_own_mover_account_is_applied_once_per_run_before_its_job() {
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let cache = pvc("volsync-src-db-cache", &[], None);
        let secrets = restic_secrets();
        let mut s = seen(Some(&source));
        s.cache_pvc = Some(&cache);
        s.secrets = Some(&secrets);
        s.mover_account = false;
        let openshift = PlanConfig {
            mover_pull_secrets: vec!["regcred".into()],
            mover_scc: Some("snapgate-privileged-mover".into()),
            ..PlanConfig::default()
        };
        // restic, unprivileged: the account, no SCC grant.
        let a = plan(&d, &s, &openshift).unwrap();
        assert_eq!(kinds(&a), ["ApplyMoverAccount volsync-src-db"]);
        let Action::ApplyMoverAccount(account) = &a[0] else {
            unreachable!()
        };
        assert_eq!(
            account.service_account.image_pull_secrets.as_ref().unwrap()[0].name,
            "regcred"
        );
        // In a namespace that allows privileged movers, the grant of the SCC comes with it.
        s.privileged = true;
        assert_eq!(
            kinds(&plan(&d, &s, &openshift).unwrap()),
            ["ApplyMoverAccount volsync-src-db +scc"]
        );
        // Without an SCC configured there is none to grant.
        assert_eq!(
            kinds(&plan(&d, &s, &PlanConfig::default()).unwrap()),
            ["ApplyMoverAccount volsync-src-db"]
        );
        // Once applied, the Job runs as it, without a token.
        s.mover_account = true;
        let a = plan(&d, &s, &openshift).unwrap();
        let Some(Action::CreateJob(job)) = a.first() else {
            panic!("{:?}", kinds(&a))
        };
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("volsync-src-db"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        // A source that names its own account gets none made.
        let mut named = d.clone();
        if let Some(r) = named.spec.as_mut().and_then(|s| s.restic.as_mut()) {
            r.mover_service_account = Some("backup-mover".into());
        }
        s.mover_account = false;
        let a = plan(&named, &s, &openshift).unwrap();
        let Some(Action::CreateJob(job)) = a.first() else {
            panic!("{:?}", kinds(&a))
        };
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("backup-mover"));
    }

    #[test]
    fn rsync_over_ssh_always_gets_the_scc_grant() {
        let mut d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        if let Some(spec) = d.spec.as_mut() {
            spec.restic = None;
            spec.rsync = Some(v1::ReplicationSourceRsyncSpec {
                copy_method: v1::CopyMethod::Direct as i32,
                ssh_keys: "keys".into(),
                address: "backup.example.com".into(),
                ..Default::default()
            });
        }
        let source = pvc("data", &[], None);
        let secrets = BTreeMap::from([(
            "keys".to_owned(),
            BTreeSet::from([
                "source".into(),
                "source.pub".into(),
                "destination.pub".into(),
            ]),
        )]);
        let mut s = seen(Some(&source));
        s.secrets = Some(&secrets);
        s.mover_account = false;
        let openshift = PlanConfig {
            mover_scc: Some("snapgate-privileged-mover".into()),
            ..PlanConfig::default()
        };
        assert_eq!(
            kinds(&plan(&d, &s, &openshift).unwrap()),
            ["ApplyMoverAccount volsync-src-db +scc"]
        );
    }

    #[test]
    fn a_direct_mover_reads_the_pods_first_and_runs_where_the_application_has_the_volume() {
        use k8s_openapi::api::core::v1::{
            PersistentVolumeClaimVolumeSource, PodSpec, PodStatus, Volume,
        };
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let cache = pvc("volsync-src-db-cache", &[], None);
        let secrets = restic_secrets();
        let app = Pod {
            metadata: ObjectMeta {
                name: Some("db-0".into()),
                namespace: Some("app".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-a".into()),
                volumes: Some(vec![Volume {
                    name: "data".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: "data".into(),
                        read_only: None,
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        };
        let mut s = seen(Some(&source));
        s.cache_pvc = Some(&cache);
        s.secrets = Some(&secrets);
        s.pods = None;
        assert_eq!(
            kinds(&plan(&d, &s, &PlanConfig::default()).unwrap()),
            ["ListPods"]
        );
        let pods = [app];
        s.pods = Some(&pods);
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        let Some(Action::CreateJob(job)) = a.first() else {
            panic!("{:?}", kinds(&a))
        };
        let affinity = serde_json::to_value(
            &job.spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .affinity,
        )
        .unwrap();
        assert_eq!(
            affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
                [0]["matchFields"][0],
            serde_json::json!({"key": "metadata.name", "operator": "In", "values": ["node-a"]})
        );
        // A copy (Snapshot, Clone) can be mounted anywhere: no pods read, no pin.
        let snap = directive(DirectivePhase::Transfer, v1::CopyMethod::Clone);
        let mut s = seen(Some(&source));
        s.pods = None;
        assert!(
            !kinds(&plan(&snap, &s, &PlanConfig::default()).unwrap())
                .contains(&"ListPods".to_owned())
        );
    }

    /// The restic repository Secret `repo` with the keys the mover needs.
    fn restic_secrets() -> BTreeMap<String, BTreeSet<String>> {
        BTreeMap::from([(
            "repo".to_owned(),
            BTreeSet::from(["RESTIC_REPOSITORY".to_owned(), "RESTIC_PASSWORD".to_owned()]),
        )])
    }

    #[test]
    fn every_key_a_mover_needs_is_checked_before_its_job_and_a_missing_one_is_named() {
        let ca = |secret: &str| {
            Some(v1::CustomCa {
                secret_name: secret.into(),
                key: "ca.crt".into(),
                ..Default::default()
            })
        };
        let keys = |s: &[&str]| s.iter().map(|k| (*k).to_owned()).collect::<BTreeSet<_>>();
        let mut restic = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        if let Some(r) = restic.spec.as_mut().and_then(|s| s.restic.as_mut()) {
            r.custom_ca = ca("tls");
        }
        let mut rclone = restic.clone();
        rclone.spec = Some(v1::SourceSpec {
            source_pvc: "data".into(),
            rclone: Some(v1::ReplicationSourceRcloneSpec {
                copy_method: v1::CopyMethod::Direct as i32,
                rclone_config: "rc".into(),
                rclone_config_section: "s3".into(),
                rclone_dest_path: "b/p".into(),
                custom_ca: ca("rc"),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut rsync = restic.clone();
        rsync.spec = Some(v1::SourceSpec {
            source_pvc: "data".into(),
            rsync: Some(v1::ReplicationSourceRsyncSpec {
                copy_method: v1::CopyMethod::Direct as i32,
                ssh_keys: "ssh".into(),
                address: "dest.example".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut rsync_tls = restic.clone();
        rsync_tls.spec = Some(v1::SourceSpec {
            source_pvc: "data".into(),
            rsync_tls: Some(v1::ReplicationSourceRsyncTlsSpec {
                copy_method: v1::CopyMethod::Direct as i32,
                key_secret: "psk".into(),
                address: "dest.example".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let cases: [(&v1::Directive, BTreeMap<String, BTreeSet<String>>); 4] = [
            (
                &restic,
                BTreeMap::from([
                    (
                        "repo".into(),
                        keys(&["RESTIC_REPOSITORY", "RESTIC_PASSWORD"]),
                    ),
                    ("tls".into(), keys(&["ca.crt"])),
                ]),
            ),
            (
                &rclone,
                BTreeMap::from([("rc".into(), keys(&["rclone.conf", "ca.crt"]))]),
            ),
            (
                &rsync,
                BTreeMap::from([(
                    "ssh".into(),
                    keys(&["source", "source.pub", "destination.pub"]),
                )]),
            ),
            (
                &rsync_tls,
                BTreeMap::from([("psk".into(), keys(&["psk.txt"]))]),
            ),
        ];
        let source = pvc("data", &[], None);
        let cache = pvc("volsync-src-db-cache", &[], None);
        for (d, complete) in cases {
            let mut s = seen(Some(&source));
            s.cache_pvc = Some(&cache);
            s.secrets = Some(&complete);
            let a = plan(d, &s, &PlanConfig::default()).unwrap();
            assert!(
                matches!(a.first(), Some(Action::CreateJob(_))),
                "{:?}",
                kinds(&a)
            );
            // Each key missing in turn: no Job, the Secret and the key named, the run waits.
            for (secret, key) in complete
                .iter()
                .flat_map(|(s, ks)| ks.iter().map(move |k| (s.clone(), k.clone())))
            {
                let mut less = complete.clone();
                less.get_mut(&secret).unwrap().remove(&key);
                let mut s = s;
                s.secrets = Some(&less);
                let a = plan(d, &s, &PlanConfig::default()).unwrap();
                let e = only_error(&a);
                assert_eq!((e.reason.as_str(), e.retryable), ("SecretKeyMissing", true));
                assert!(
                    e.message
                        .contains(&format!("Secret app/{secret} has no key {key:?}")),
                    "{}",
                    e.message
                );
            }
        }
    }

    #[test]
    fn a_mover_failure_count_of_u32_max_is_refused_not_overflowed() {
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let cache = pvc("volsync-src-db-cache", &[], None);
        let secrets = restic_secrets();
        let mut s = seen(Some(&source));
        s.cache_pvc = Some(&cache);
        s.secrets = Some(&secrets);
        s.failed_attempts = u32::MAX;
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        let e = only_error(&a);
        assert_eq!((e.reason.as_str(), e.retryable), ("TooManyAttempts", false));
        s.failed_attempts = u32::MAX - 1;
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        let Some(Action::CreateJob(job)) = a.first() else {
            panic!("{:?}", kinds(&a))
        };
        assert_eq!(job_attempt(job), u32::MAX);
    }

    #[test]
    fn a_back_off_past_the_end_of_time_waits_for_ever_instead_of_panicking() {
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let config = PlanConfig {
            mover_backoff: Duration::from_secs(1 << 50),
            mover_backoff_max: Duration::from_secs(1 << 52),
            ..PlanConfig::default()
        };
        let job = failed_job(now());
        let mut s = seen(Some(&source));
        s.job = Some(&job);
        s.job_reported = true;
        let a = plan(&d, &s, &config).unwrap();
        assert_eq!(a.last(), Some(&Action::WakeAt(DateTime::<Utc>::MAX_UTC)));
    }

    #[test]
    fn a_job_failure_time_in_the_future_counts_its_back_off_from_now() {
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let job = failed_job(from_jiff(Timestamp::MAX));
        let mut s = seen(Some(&source));
        s.job = Some(&job);
        s.job_reported = true;
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        assert_eq!(
            a.last(),
            Some(&Action::WakeAt(now() + chrono::Duration::seconds(20))),
            "attempt 2: 20 s from now, not from the year 9999"
        );
    }

    #[test]
    fn a_restic_unlock_value_that_cannot_be_written_to_the_cache_pvc_is_refused() {
        let mut d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        if let Some(r) = d.spec.as_mut().and_then(|s| s.restic.as_mut()) {
            r.unlock = Some("u\u{202E}1".into());
        }
        let source = pvc("data", &[], None);
        let err = plan(&d, &seen(Some(&source)), &PlanConfig::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("restic.unlock is invalid: U+202E at byte 1"),
            "{err}"
        );
    }

    #[test]
    fn a_log_unavailable_message_of_any_length_is_reported_cut() {
        let long = format!("(log unavailable: {})", "e".repeat(10_000));
        let Observation::MoverFailed(m) = mover_report(MoverOutcome::Failed { attempt: 1 }, long)
        else {
            unreachable!()
        };
        assert!(m.logs.len() <= classify::MOVER_LOG_MAX_BYTES);
        assert!(m.logs.starts_with("(log unavailable: eee"));
    }
}
