//! Mover pods that cannot start, and mover Jobs that cannot create one: classified from the
//! pods and Warning Events the agent watches, so that a run never waits on them silently.
//!
//! Kubernetes fails a Job only when its pods fail. A pod whose container waits in
//! `ImagePullBackOff` or `CreateContainerConfigError`, that cannot be scheduled or whose volume
//! cannot be mounted, and a Job that cannot create its pod at all (`FailedCreate`: its
//! `moverServiceAccount` is missing) never fail: the Job stays active for ever. The agent
//! reads what a user would read with `kubectl describe`:
//!
//! ```text
//!   pod of the Job (its controller-uid label, else its job-name label), not terminal:
//!     a container (init first) waiting with a reason of [`StuckReason`] ........ that reason
//!     PodScheduled False, reason Unschedulable ................................. Unschedulable
//!     Pending, no sandbox yet (PodReadyToStartContainers not True), and a
//!     Warning Event FailedMount / FailedAttachVolume about it ................. that reason
//!   the Job, with no pod alive and none made since the Event:
//!     a Warning Event FailedCreate about it ..................................... FailedCreate
//! ```
//!
//! Stuck since: the cluster's own record, which outlives an agent restart (the waiting
//! container's `ContainersReady` or `Ready` condition's `lastTransitionTime`, the `PodScheduled`
//! condition's, an Event's first time), but never later than when this agent first saw the
//! trouble ([`verdict`]): a time in the future (a skewed or hostile clock) cannot put the
//! deadline off. Once stuck longer than the agent's `--mover-stuck-after`, the attempt fails.
//!
//! Every string read here is the cluster's, so hostile: each is cut to a bound named below
//! and its invisible characters are escaped before it goes anywhere.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{ContainerStatus, Event, ObjectReference, Pod, PodCondition},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time},
};

use crate::bounds;

/// The most bytes kept of the message Kubernetes gives for a stuck pod or Job (a waiting
/// container's message, a condition's or an Event's).
pub const MAX_STUCK_MESSAGE_BYTES: usize = 512;
/// The most bytes kept of a pod's name (a DNS-1123 subdomain is at most 253).
pub const MAX_POD_NAME_BYTES: usize = 253;
/// The most bytes kept of a uid (a real one has 36).
const MAX_UID_BYTES: usize = 64;

/// Why a mover pod cannot start, or its Job cannot create one: Kubernetes' own reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StuckReason {
    /// A container waits: a Secret or ConfigMap key its env names is missing, or the like.
    CreateContainerConfigError,
    /// A container waits: the runtime could not create it.
    CreateContainerError,
    /// A container waits: the image cannot be pulled, and the kubelet backs off.
    ImagePullBackOff,
    /// A container waits: the last pull of the image failed.
    ErrImagePull,
    /// A container waits: the image reference cannot be parsed.
    InvalidImageName,
    /// A container waits: it keeps exiting and the kubelet backs off restarting it.
    CrashLoopBackOff,
    /// The pod cannot be scheduled (`PodScheduled` False, reason `Unschedulable`).
    Unschedulable,
    /// A Warning Event on the pending pod: a volume cannot be mounted (a Secret, ConfigMap or
    /// key a volume names is missing, say).
    FailedMount,
    /// A Warning Event on the pending pod: a volume cannot be attached.
    FailedAttachVolume,
    /// A Warning Event on the Job: it cannot create its pod (its ServiceAccount is missing,
    /// a quota or an admission webhook refuses it).
    FailedCreate,
}

impl StuckReason {
    /// Every reason, in the order above.
    pub const ALL: [Self; 10] = [
        Self::CreateContainerConfigError,
        Self::CreateContainerError,
        Self::ImagePullBackOff,
        Self::ErrImagePull,
        Self::InvalidImageName,
        Self::CrashLoopBackOff,
        Self::Unschedulable,
        Self::FailedMount,
        Self::FailedAttachVolume,
        Self::FailedCreate,
    ];

    /// The reason as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateContainerConfigError => "CreateContainerConfigError",
            Self::CreateContainerError => "CreateContainerError",
            Self::ImagePullBackOff => "ImagePullBackOff",
            Self::ErrImagePull => "ErrImagePull",
            Self::InvalidImageName => "InvalidImageName",
            Self::CrashLoopBackOff => "CrashLoopBackOff",
            Self::Unschedulable => "Unschedulable",
            Self::FailedMount => "FailedMount",
            Self::FailedAttachVolume => "FailedAttachVolume",
            Self::FailedCreate => "FailedCreate",
        }
    }

    /// The reason Kubernetes spelled `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The reasons a container's `state.waiting.reason` can carry.
    fn waiting(s: &str) -> Option<Self> {
        Self::parse(s).filter(|r| {
            !matches!(
                r,
                Self::Unschedulable
                    | Self::FailedMount
                    | Self::FailedAttachVolume
                    | Self::FailedCreate
            )
        })
    }

    /// The reasons of a Warning Event about a pod.
    fn pod_event(s: &str) -> Option<Self> {
        Self::parse(s).filter(|r| matches!(r, Self::FailedMount | Self::FailedAttachVolume))
    }
}

/// What keeps a mover Job from running, as read from the cluster (every string bounded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trouble {
    /// Kubernetes' reason.
    pub reason: StuckReason,
    /// Kubernetes' message, at most [`MAX_STUCK_MESSAGE_BYTES`], invisible characters escaped.
    pub message: String,
    /// The stuck pod (`None` for [`StuckReason::FailedCreate`]), at most
    /// [`MAX_POD_NAME_BYTES`].
    pub pod: Option<String>,
    /// What the trouble is about, so that the shell can tell when it first saw it: the pod's
    /// uid (else its name), or `job/` and the Job's uid.
    pub key: String,
    /// Since when, by the cluster's record; `None` when it keeps none.
    pub since: Option<DateTime<Utc>>,
}

impl Trouble {
    /// One line for people: `ImagePullBackOff: pod volsync-src-db-x7k2p: Back-off pulling
    /// image "..."` (or `FailedCreate: Job volsync-src-db: ...`).
    pub fn describe(&self, job: &str) -> String {
        let what = match &self.pod {
            Some(pod) => format!("pod {pod}"),
            None => format!("Job {job}"),
        };
        if self.message.is_empty() {
            format!("{}: {what}", self.reason.as_str())
        } else {
            format!("{}: {what}: {}", self.reason.as_str(), self.message)
        }
    }
}

/// `s` as kept from the cluster: invisible characters escaped, cut to `max` bytes.
fn kept(s: &str, max: usize) -> String {
    // Escaping first can only lengthen it; cut the raw text first so that a huge value costs
    // no more than a bounded copy.
    let raw = bounds::truncate(s, max.saturating_mul(2));
    bounds::truncate(&bounds::escape_invisible(&raw), max)
}

fn time(t: &Time) -> DateTime<Utc> {
    jiff_to_chrono(t.0)
}

fn micro_time(t: &MicroTime) -> DateTime<Utc> {
    jiff_to_chrono(t.0)
}

fn jiff_to_chrono(t: k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0).unsigned_abs())
        .unwrap_or_default()
}

fn condition<'a>(pod: &'a Pod, kind: &str) -> Option<&'a PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

/// When `pod`'s condition `kind` last turned `status`, if it stands so.
fn condition_since(pod: &Pod, kind: &str, status: &str) -> Option<DateTime<Utc>> {
    condition(pod, kind)
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.as_ref())
        .map(time)
}

/// Whether the pod of a Job is still trying: not Succeeded or Failed, not being deleted.
fn alive(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// Whether `pod` is one of `job`'s: by the Job's uid in the pod's controller-uid label (the
/// Job controller sets both spellings), else, for a Job without a uid, by its name in the
/// job-name label (as the agent lists the pods whose log it reads).
pub fn of_job(job: &Job, pod: &Pod) -> bool {
    match job.metadata.uid.as_deref().filter(|u| !u.is_empty()) {
        Some(uid) => ["batch.kubernetes.io/controller-uid", "controller-uid"]
            .iter()
            .any(|k| label(&pod.metadata, k) == Some(uid)),
        None => {
            let name = job.metadata.name.as_deref().unwrap_or_default();
            !name.is_empty()
                && ["batch.kubernetes.io/job-name", "job-name"]
                    .iter()
                    .any(|k| label(&pod.metadata, k) == Some(name))
        }
    }
}

/// Whether `event` is about the object `kind` with `meta`: its uid when both have one, else
/// its name. Both are compared as [`kept_event`] keeps them (cut to their bounds), so that a
/// kept Event is about what the whole one was about.
fn about(event: &Event, kind: &str, meta: &ObjectMeta) -> bool {
    let o: &ObjectReference = &event.involved_object;
    if o.kind.as_deref() != Some(kind) {
        return false;
    }
    let same =
        |a: &str, b: &str, max| a == b || bounds::truncate(a, max) == bounds::truncate(b, max);
    match (o.uid.as_deref(), meta.uid.as_deref()) {
        (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => same(a, b, MAX_UID_BYTES),
        _ => match (o.name.as_deref(), meta.name.as_deref()) {
            (Some(a), Some(b)) => same(a, b, MAX_POD_NAME_BYTES),
            _ => false,
        },
    }
}

/// When an Event was first seen: `firstTimestamp`, else `eventTime` (events.k8s.io), else
/// when it was created.
pub fn event_first(event: &Event) -> Option<DateTime<Utc>> {
    event
        .first_timestamp
        .as_ref()
        .map(time)
        .or_else(|| event.event_time.as_ref().map(micro_time))
        .or_else(|| event.metadata.creation_timestamp.as_ref().map(time))
}

/// When an Event was last seen: its series' last observation, `lastTimestamp`, else its
/// first time.
pub fn event_last(event: &Event) -> Option<DateTime<Utc>> {
    event
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(micro_time)
        .or_else(|| event.last_timestamp.as_ref().map(time))
        .or_else(|| event_first(event))
}

/// Whether the agent keeps `event` at all: a Warning about a Pod or a Job whose reason is one
/// of [`StuckReason`]'s Event reasons. The agent watches Warning Events only and drops the
/// rest at once; see [`kept_event`].
pub fn event_of_interest(event: &Event) -> bool {
    let kind = event.involved_object.kind.as_deref();
    let reason = event.reason.as_deref().unwrap_or_default();
    event.type_.as_deref() == Some("Warning")
        && match kind {
            Some("Pod") => StuckReason::pod_event(reason).is_some(),
            Some("Job") => reason == StuckReason::FailedCreate.as_str(),
            _ => false,
        }
}

/// What the agent keeps of a watched Event: `None` unless [`event_of_interest`]; else only
/// the fields [`trouble`] reads, every string bounded, so that a namespace full of Events
/// costs the agent little.
pub fn kept_event(event: Event) -> Option<Event> {
    if !event_of_interest(&event) {
        return None;
    }
    let o = event.involved_object;
    let short = |s: Option<String>, max: usize| s.map(|s| bounds::cut(s, max));
    Some(Event {
        metadata: ObjectMeta {
            name: event.metadata.name,
            namespace: event.metadata.namespace,
            uid: event.metadata.uid,
            resource_version: event.metadata.resource_version,
            creation_timestamp: event.metadata.creation_timestamp,
            deletion_timestamp: event.metadata.deletion_timestamp,
            ..Default::default()
        },
        involved_object: ObjectReference {
            kind: o.kind,
            name: short(o.name, MAX_POD_NAME_BYTES),
            namespace: o.namespace,
            uid: short(o.uid, MAX_UID_BYTES),
            ..Default::default()
        },
        reason: event.reason,
        message: event.message.map(|m| kept(&m, MAX_STUCK_MESSAGE_BYTES)),
        type_: event.type_,
        first_timestamp: event.first_timestamp,
        last_timestamp: event.last_timestamp,
        event_time: event.event_time,
        series: event.series,
        count: event.count,
        ..Default::default()
    })
}

/// What keeps one live pod of the Job from running, if anything.
fn pod_trouble<'a>(pod: &Pod, events: impl Iterator<Item = &'a Event>) -> Option<Trouble> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let key = pod
        .metadata
        .uid
        .as_deref()
        .filter(|u| !u.is_empty())
        .unwrap_or(name);
    let make = |reason, message: &str, since| Trouble {
        reason,
        message: kept(message, MAX_STUCK_MESSAGE_BYTES),
        pod: Some(kept(name, MAX_POD_NAME_BYTES)),
        key: format!("pod/{}", kept(key, MAX_POD_NAME_BYTES)),
        since,
    };
    let status = pod.status.as_ref();
    let waiting = |statuses: Option<&Vec<ContainerStatus>>| {
        statuses.into_iter().flatten().find_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            let reason = StuckReason::waiting(w.reason.as_deref()?)?;
            Some((reason, w.message.clone().unwrap_or_default()))
        })
    };
    // An init container first: the others wait on it.
    if let Some((reason, message)) =
        waiting(status.and_then(|s| s.init_container_statuses.as_ref()))
    {
        let since = condition_since(pod, "Initialized", "False")
            .or_else(|| condition_since(pod, "Ready", "False"));
        return Some(make(reason, &message, since.or_else(|| started(pod))));
    }
    if let Some((reason, message)) = waiting(status.and_then(|s| s.container_statuses.as_ref())) {
        let since = condition_since(pod, "ContainersReady", "False")
            .or_else(|| condition_since(pod, "Ready", "False"));
        return Some(make(reason, &message, since.or_else(|| started(pod))));
    }
    if let Some(c) = condition(pod, "PodScheduled")
        && c.status == "False"
        && c.reason.as_deref() == Some("Unschedulable")
    {
        let since = c.last_transition_time.as_ref().map(time);
        return Some(make(
            StuckReason::Unschedulable,
            c.message.as_deref().unwrap_or_default(),
            since.or_else(|| started(pod)),
        ));
    }
    // A volume that cannot be attached or mounted: the kubelet says so only in Events, while
    // the pod is Pending and has no sandbox (which it gets once its volumes are mounted); an
    // Event of a mount that has since worked is not taken for one that fails.
    let pending = status.and_then(|s| s.phase.as_deref()) == Some("Pending");
    let sandbox = condition(pod, "PodReadyToStartContainers").is_some_and(|c| c.status == "True");
    if pending && !sandbox {
        return events
            .filter(|e| about(e, "Pod", &pod.metadata))
            .filter_map(|e| {
                let reason = StuckReason::pod_event(e.reason.as_deref().unwrap_or_default())?;
                Some((event_first(e), reason, e))
            })
            // The one failing longest; among equals, by reason and name, deterministically.
            .min_by(|a, b| {
                (a.0.is_none(), a.0, a.1, &a.2.metadata.name).cmp(&(
                    b.0.is_none(),
                    b.0,
                    b.1,
                    &b.2.metadata.name,
                ))
            })
            .map(|(since, reason, e)| {
                make(reason, e.message.as_deref().unwrap_or_default(), since)
            });
    }
    None
}

/// When a pod started, or was created: the fallback for a trouble the pod's conditions do not
/// date.
fn started(pod: &Pod) -> Option<DateTime<Utc>> {
    pod.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(pod.metadata.creation_timestamp.as_ref())
        .map(time)
}

/// What keeps `job` from running, from the pods and Warning Events the agent sees in its
/// namespace (any of them; those of other Jobs and objects are left out here): the trouble of
/// the pod stuck longest, else the Job's `FailedCreate` when it has no live pod and has made
/// none since that Event was last seen. `None` when nothing is stuck (pods running, or being
/// made as usual).
pub fn trouble<'a, 'e>(
    job: &Job,
    pods: impl IntoIterator<Item = &'a Pod>,
    events: impl IntoIterator<Item = &'e Event>,
) -> Option<Trouble> {
    let pods: Vec<&Pod> = pods.into_iter().filter(|p| of_job(job, p)).collect();
    let events: Vec<&Event> = events
        .into_iter()
        .filter(|e| event_of_interest(e))
        .collect();
    let stuck = pods
        .iter()
        .filter(|p| alive(p))
        .filter_map(|p| pod_trouble(p, events.iter().copied()))
        // The pod stuck longest (undated last); among equals, by name.
        .min_by(|a, b| {
            (a.since.is_none(), a.since, &a.pod).cmp(&(b.since.is_none(), b.since, &b.pod))
        });
    if stuck.is_some() {
        return stuck;
    }
    if pods.iter().any(|p| alive(p)) {
        return None;
    }
    let newest_pod = pods
        .iter()
        .filter_map(|p| p.metadata.creation_timestamp.as_ref().map(time))
        .max();
    let job_name = job.metadata.name.as_deref().unwrap_or_default();
    let job_key = job
        .metadata
        .uid
        .as_deref()
        .filter(|u| !u.is_empty())
        .unwrap_or(job_name);
    let job_created = job.metadata.creation_timestamp.as_ref().map(time);
    events
        .iter()
        .filter(|e| about(e, "Job", &job.metadata))
        .filter(|e| e.reason.as_deref() == Some(StuckReason::FailedCreate.as_str()))
        // An Event older than the newest pod is about an earlier failure, since overcome; one
        // last seen before the Job was made is about an earlier Job of its name.
        .filter(|e| {
            [newest_pod, job_created]
                .into_iter()
                .flatten()
                .all(|t| event_last(e).is_some_and(|l| l >= t))
        })
        .min_by(|a, b| {
            let (fa, fb) = (event_first(a), event_first(b));
            (fa.is_none(), fa, &a.metadata.name).cmp(&(fb.is_none(), fb, &b.metadata.name))
        })
        .map(|e| Trouble {
            reason: StuckReason::FailedCreate,
            message: kept(
                e.message.as_deref().unwrap_or_default(),
                MAX_STUCK_MESSAGE_BYTES,
            ),
            pod: None,
            key: format!("job/{}", kept(job_key, MAX_POD_NAME_BYTES)),
            since: event_first(e),
        })
}

/// Whether a stuck attempt has waited long enough to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still within its time: it fails at `deadline` (`None`: never, the sum is past the end
    /// of time) unless it recovers first.
    Waiting {
        /// Stuck since.
        since: DateTime<Utc>,
        /// When the attempt fails.
        deadline: Option<DateTime<Utc>>,
    },
    /// Stuck for `after` or longer: the attempt fails now.
    Over {
        /// Stuck since.
        since: DateTime<Utc>,
        /// When it was due to fail.
        deadline: DateTime<Utc>,
    },
}

/// Whether a trouble the cluster dates `observed` (if at all), which this agent first saw at
/// `first_seen`, has lasted `after` at `now`. It counts from the earlier of the two: the
/// cluster's record survives an agent restart, and the agent's own first sight bounds a time
/// from the future (skew, or a hostile value). Checked arithmetic: a deadline past the end of
/// time never comes.
pub fn verdict(
    observed: Option<DateTime<Utc>>,
    first_seen: DateTime<Utc>,
    after: Duration,
    now: DateTime<Utc>,
) -> Verdict {
    let since = observed.map_or(first_seen, |o| o.min(first_seen));
    let deadline = TimeDelta::from_std(after)
        .ok()
        .and_then(|d| since.checked_add_signed(d));
    match deadline {
        Some(deadline) if now >= deadline => Verdict::Over { since, deadline },
        _ => Verdict::Waiting { since, deadline },
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{
            ContainerState, ContainerStateRunning, ContainerStateWaiting, EventSeries, PodStatus,
        },
        jiff::Timestamp,
    };
    use pretty_assertions::assert_eq;

    use super::*;

    const JOB_UID: &str = "job-uid-1";

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + secs).unwrap())
    }

    fn job() -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("volsync-src-db".into()),
                uid: Some(JOB_UID.into()),
                creation_timestamp: Some(t(0)),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn cond(kind: &str, status: &str, reason: Option<&str>, secs: i64) -> PodCondition {
        PodCondition {
            type_: kind.into(),
            status: status.into(),
            reason: reason.map(Into::into),
            message: reason.map(|_| "0/3 nodes are available: 3 Insufficient cpu.".into()),
            last_transition_time: Some(t(secs)),
            ..Default::default()
        }
    }

    fn container(state: ContainerState) -> ContainerStatus {
        ContainerStatus {
            name: "restic".into(),
            state: Some(state),
            ..Default::default()
        }
    }

    fn waiting(reason: &str, message: &str) -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: Some(message.into()),
            }),
            ..Default::default()
        }
    }

    fn running() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        }
    }

    /// A pod of the Job: Pending, created at 1 s, its containers unready since 2 s.
    fn pod(name: &str, phase: &str, containers: Vec<ContainerStatus>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                creation_timestamp: Some(t(1)),
                labels: Some(
                    [(
                        "batch.kubernetes.io/controller-uid".to_owned(),
                        JOB_UID.to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![
                    cond("PodScheduled", "True", None, 1),
                    cond("ContainersReady", "False", None, 2),
                    cond("Ready", "False", None, 2),
                ]),
                container_statuses: Some(containers),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn event(kind: &str, name: &str, uid: &str, reason: &str, first: i64, last: i64) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{reason}")),
                ..Default::default()
            },
            involved_object: ObjectReference {
                kind: Some(kind.into()),
                name: Some(name.into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(format!("{reason} message")),
            type_: Some("Warning".into()),
            first_timestamp: Some(t(first)),
            last_timestamp: Some(t(last)),
            count: Some(1),
            ..Default::default()
        }
    }

    fn found(t: Option<Trouble>) -> Option<(StuckReason, Option<String>, String, Option<i64>)> {
        t.map(|t| {
            (
                t.reason,
                t.pod,
                t.message,
                t.since.map(|s| s.timestamp() - 1_800_000_000),
            )
        })
    }

    #[test]
    fn each_waiting_reason_is_stuck_since_the_containers_went_unready() {
        for reason in [
            "CreateContainerConfigError",
            "CreateContainerError",
            "ImagePullBackOff",
            "ErrImagePull",
            "InvalidImageName",
            "CrashLoopBackOff",
        ] {
            let p = pod("p1", "Pending", vec![container(waiting(reason, "why"))]);
            assert_eq!(
                found(trouble(&job(), [&p], [])),
                Some((
                    StuckReason::parse(reason).unwrap(),
                    Some("p1".into()),
                    "why".into(),
                    Some(2)
                )),
                "{reason}"
            );
        }
    }

    #[test]
    fn a_pod_starting_running_or_done_is_not_stuck() {
        let cases = [
            pod(
                "p",
                "Pending",
                vec![container(waiting("ContainerCreating", ""))],
            ),
            pod(
                "p",
                "Pending",
                vec![container(waiting("PodInitializing", ""))],
            ),
            pod("p", "Pending", vec![]),
            pod("p", "Running", vec![container(running())]),
            pod(
                "p",
                "Succeeded",
                vec![container(waiting("ImagePullBackOff", ""))],
            ),
            pod("p", "Failed", vec![container(waiting("ErrImagePull", ""))]),
            pod(
                "p",
                "Pending",
                vec![container(waiting("FailedMount", "not a waiting reason"))],
            ),
        ];
        for p in &cases {
            assert_eq!(trouble(&job(), [p], []), None, "{:?}", p.status);
        }
        let mut deleting = pod(
            "p",
            "Pending",
            vec![container(waiting("ImagePullBackOff", ""))],
        );
        deleting.metadata.deletion_timestamp = Some(t(5));
        assert_eq!(trouble(&job(), [&deleting], []), None);
    }

    #[test]
    fn only_the_jobs_own_pods_count_by_controller_uid_else_by_job_name() {
        let stuck = container(waiting("ImagePullBackOff", "x"));
        let mut other = pod("other", "Pending", vec![stuck.clone()]);
        other.metadata.labels = Some([("controller-uid".to_owned(), "another".to_owned())].into());
        assert_eq!(trouble(&job(), [&other], []), None);
        let mut legacy = pod("legacy", "Pending", vec![stuck.clone()]);
        legacy.metadata.labels = Some([("controller-uid".to_owned(), JOB_UID.to_owned())].into());
        assert!(trouble(&job(), [&legacy], []).is_some(), "the legacy label");
        // A Job the cluster gave no uid: its name in the job-name label.
        let mut no_uid = job();
        no_uid.metadata.uid = None;
        let mut named = pod("named", "Pending", vec![stuck]);
        named.metadata.labels = Some(
            [(
                "batch.kubernetes.io/job-name".to_owned(),
                "volsync-src-db".to_owned(),
            )]
            .into(),
        );
        assert!(trouble(&no_uid, [&named], []).is_some());
        assert_eq!(
            trouble(&job(), [&named], []),
            None,
            "with a uid, the uid decides"
        );
    }

    #[test]
    fn an_init_container_waiting_comes_first_dated_by_initialized() {
        let mut p = pod(
            "p",
            "Pending",
            vec![container(waiting("PodInitializing", ""))],
        );
        let status = p.status.as_mut().unwrap();
        status.init_container_statuses = Some(vec![container(waiting("ErrImagePull", "pull"))]);
        status
            .conditions
            .as_mut()
            .unwrap()
            .push(cond("Initialized", "False", None, 3));
        assert_eq!(
            found(trouble(&job(), [&p], [])),
            Some((
                StuckReason::ErrImagePull,
                Some("p".into()),
                "pull".into(),
                Some(3)
            ))
        );
    }

    #[test]
    fn an_unschedulable_pod_is_stuck_since_its_pod_scheduled_condition() {
        let mut p = pod("p", "Pending", vec![]);
        p.status.as_mut().unwrap().conditions = Some(vec![cond(
            "PodScheduled",
            "False",
            Some("Unschedulable"),
            4,
        )]);
        assert_eq!(
            found(trouble(&job(), [&p], [])),
            Some((
                StuckReason::Unschedulable,
                Some("p".into()),
                "0/3 nodes are available: 3 Insufficient cpu.".into(),
                Some(4)
            ))
        );
        // Not scheduled yet for another reason (the scheduler has not looked): not stuck.
        p.status.as_mut().unwrap().conditions = Some(vec![cond(
            "PodScheduled",
            "False",
            Some("SchedulerError"),
            4,
        )]);
        assert_eq!(trouble(&job(), [&p], []), None);
    }

    #[test]
    fn a_mount_event_counts_while_the_pod_is_pending_without_a_sandbox() {
        let creating = pod(
            "p",
            "Pending",
            vec![container(waiting("ContainerCreating", ""))],
        );
        let mount = event("Pod", "p", "uid-p", "FailedMount", 6, 60);
        let attach = event("Pod", "p", "uid-p", "FailedAttachVolume", 5, 50);
        assert_eq!(
            found(trouble(&job(), [&creating], [&mount])),
            Some((
                StuckReason::FailedMount,
                Some("p".into()),
                "FailedMount message".into(),
                Some(6)
            ))
        );
        // Both: the one failing longest.
        assert_eq!(
            found(trouble(&job(), [&creating], [&mount, &attach])).map(|f| f.0),
            Some(StuckReason::FailedAttachVolume)
        );
        // The Event of another pod (by uid), a Normal one, another reason: not this pod's.
        let other = event("Pod", "p", "uid-other", "FailedMount", 6, 60);
        let mut normal = mount.clone();
        normal.type_ = Some("Normal".into());
        let scheduling = event("Pod", "p", "uid-p", "FailedScheduling", 6, 60);
        assert_eq!(
            trouble(&job(), [&creating], [&other, &normal, &scheduling]),
            None
        );
        // An Event without a uid is matched by name.
        let mut by_name = mount.clone();
        by_name.involved_object.uid = None;
        assert!(trouble(&job(), [&creating], [&by_name]).is_some());
        // Mounted since (the sandbox is made), or running: the old Event no longer counts.
        let mut mounted = creating.clone();
        mounted
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()
            .push(cond("PodReadyToStartContainers", "True", None, 70));
        assert_eq!(trouble(&job(), [&mounted], [&mount]), None);
        let run = pod("p", "Running", vec![container(running())]);
        assert_eq!(trouble(&job(), [&run], [&mount]), None);
    }

    #[test]
    fn failed_create_counts_while_the_job_has_no_live_pod_and_made_none_since() {
        let j = job();
        let failed_create = event("Job", "volsync-src-db", JOB_UID, "FailedCreate", 3, 30);
        assert_eq!(
            found(trouble(&j, [], [&failed_create])),
            Some((
                StuckReason::FailedCreate,
                None,
                "FailedCreate message".into(),
                Some(3)
            ))
        );
        // Another Job of the same name (an earlier attempt): not this one's, by its uid, or
        // without one, by its time.
        let earlier = event("Job", "volsync-src-db", "old-uid", "FailedCreate", 3, 30);
        assert_eq!(trouble(&j, [], [&earlier]), None);
        let mut no_uid = event("Job", "volsync-src-db", "", "FailedCreate", -20, -10);
        assert_eq!(trouble(&j, [], [&no_uid]), None);
        no_uid.last_timestamp = Some(t(0));
        assert!(trouble(&j, [], [&no_uid]).is_some());
        // A pod made since (the ServiceAccount was created): the Event is over.
        let live = pod("p", "Running", vec![container(running())]);
        assert_eq!(trouble(&j, [&live], [&failed_create]), None);
        // A pod made before the Event was last seen, now failed: stuck again.
        let mut done = pod("p", "Failed", vec![]);
        done.metadata.creation_timestamp = Some(t(10));
        assert!(trouble(&j, [&done], [&failed_create]).is_some());
        done.metadata.creation_timestamp = Some(t(31));
        assert_eq!(trouble(&j, [&done], [&failed_create]), None);
    }

    #[test]
    fn of_several_stuck_pods_the_one_stuck_longest_is_named() {
        let a = pod(
            "a",
            "Pending",
            vec![container(waiting("ErrImagePull", "a"))],
        );
        let mut b = pod(
            "b",
            "Pending",
            vec![container(waiting("ImagePullBackOff", "b"))],
        );
        b.status.as_mut().unwrap().conditions =
            Some(vec![cond("ContainersReady", "False", None, 1)]);
        assert_eq!(
            found(trouble(&job(), [&a, &b], [])).map(|f| f.1),
            Some(Some("b".into()))
        );
        assert_eq!(
            found(trouble(&job(), [&b, &a], [])).map(|f| f.1),
            Some(Some("b".into())),
            "whatever the order"
        );
    }

    #[test]
    fn event_times_fall_back_from_first_timestamp_to_event_time_to_creation() {
        let mut e = event("Job", "j", JOB_UID, "FailedCreate", 3, 30);
        assert_eq!(event_first(&e), Some(at(3)));
        assert_eq!(event_last(&e), Some(at(30)));
        e.series = Some(EventSeries {
            count: Some(4),
            last_observed_time: Some(MicroTime(Timestamp::from_second(1_800_000_040).unwrap())),
        });
        assert_eq!(event_last(&e), Some(at(40)));
        e.first_timestamp = None;
        e.last_timestamp = None;
        e.series = None;
        e.event_time = Some(MicroTime(Timestamp::from_second(1_800_000_007).unwrap()));
        assert_eq!(
            (event_first(&e), event_last(&e)),
            (Some(at(7)), Some(at(7)))
        );
        e.event_time = None;
        e.metadata.creation_timestamp = Some(t(8));
        assert_eq!(event_first(&e), Some(at(8)));
        e.metadata.creation_timestamp = None;
        assert_eq!((event_first(&e), event_last(&e)), (None, None));
    }

    #[test]
    fn the_agent_keeps_only_warning_events_it_reads_and_only_what_it_reads_of_them() {
        let mount = event("Pod", "p", "uid-p", "FailedMount", 1, 2);
        let create = event("Job", "j", "u", "FailedCreate", 1, 2);
        for e in [&mount, &create] {
            assert!(kept_event(e.clone()).is_some());
        }
        let mut normal = mount.clone();
        normal.type_ = Some("Normal".into());
        let cases = [
            normal,
            event("Pod", "p", "u", "BackOff", 1, 2),
            event("Pod", "p", "u", "FailedCreate", 1, 2),
            event("Job", "j", "u", "FailedMount", 1, 2),
            event("PersistentVolumeClaim", "p", "u", "FailedMount", 1, 2),
        ];
        for e in cases {
            assert_eq!(kept_event(e.clone()), None, "{e:?}");
        }
        let mut huge = mount.clone();
        huge.message = Some("\u{202E}x".repeat(100_000));
        huge.involved_object.name = Some("n".repeat(10_000));
        huge.metadata.annotations = Some([("a".to_owned(), "b".repeat(10_000))].into());
        let k = kept_event(huge).unwrap();
        assert!(k.message.as_ref().unwrap().len() <= MAX_STUCK_MESSAGE_BYTES);
        assert!(k.message.as_ref().unwrap().starts_with("\\u{202e}x"));
        assert!(k.involved_object.name.unwrap().len() <= MAX_POD_NAME_BYTES);
        assert_eq!(k.metadata.annotations, None);
    }

    #[test]
    fn every_string_read_from_the_cluster_is_bounded_and_escaped() {
        let p = pod(
            &"p".repeat(1000),
            "Pending",
            vec![container(waiting(
                "ImagePullBackOff",
                &"\u{202E}é".repeat(10_000),
            ))],
        );
        let t = trouble(&job(), [&p], []).unwrap();
        assert!(
            t.message.len() <= MAX_STUCK_MESSAGE_BYTES,
            "{}",
            t.message.len()
        );
        assert!(t.message.starts_with("\\u{202e}é"));
        assert!(t.pod.as_ref().unwrap().len() <= MAX_POD_NAME_BYTES);
        assert!(t.key.len() <= MAX_POD_NAME_BYTES + 4);
        assert!(
            t.describe("volsync-src-db")
                .starts_with("ImagePullBackOff: pod ppp")
        );
    }

    #[test]
    fn the_attempt_fails_once_stuck_longer_than_the_limit_counted_from_the_earlier_sight() {
        let ten = Duration::from_secs(600);
        // (observed by the cluster, first seen by the agent, now) -> verdict
        let cases = [
            // The cluster's record: 10 min from it.
            (
                Some(0),
                5,
                599,
                Verdict::Waiting {
                    since: at(0),
                    deadline: Some(at(600)),
                },
            ),
            (
                Some(0),
                5,
                600,
                Verdict::Over {
                    since: at(0),
                    deadline: at(600),
                },
            ),
            (
                Some(0),
                550,
                600,
                Verdict::Over {
                    since: at(0),
                    deadline: at(600),
                },
            ),
            // No record: from the agent's first sight (an agent restart starts it again).
            (
                None,
                5,
                604,
                Verdict::Waiting {
                    since: at(5),
                    deadline: Some(at(605)),
                },
            ),
            (
                None,
                5,
                605,
                Verdict::Over {
                    since: at(5),
                    deadline: at(605),
                },
            ),
            // A record from the future cannot put the deadline off.
            (
                Some(100_000),
                5,
                605,
                Verdict::Over {
                    since: at(5),
                    deadline: at(605),
                },
            ),
        ];
        for (observed, first, now, want) in cases {
            assert_eq!(
                verdict(observed.map(at), at(first), ten, at(now)),
                want,
                "{observed:?} {first} {now}"
            );
        }
        // Past the end of time: never over.
        assert_eq!(
            verdict(
                None,
                DateTime::<Utc>::MAX_UTC,
                ten,
                DateTime::<Utc>::MAX_UTC
            ),
            Verdict::Waiting {
                since: DateTime::<Utc>::MAX_UTC,
                deadline: None
            }
        );
        assert_eq!(
            verdict(None, at(0), Duration::MAX, DateTime::<Utc>::MAX_UTC),
            Verdict::Waiting {
                since: at(0),
                deadline: None
            }
        );
        assert_eq!(
            verdict(Some(DateTime::<Utc>::MIN_UTC), at(0), ten, at(0)),
            Verdict::Over {
                since: DateTime::<Utc>::MIN_UTC,
                deadline: DateTime::<Utc>::MIN_UTC + TimeDelta::seconds(600)
            },
            "a record from the beginning of time is long over"
        );
        assert_eq!(
            verdict(None, at(0), Duration::ZERO, at(0)),
            Verdict::Over {
                since: at(0),
                deadline: at(0)
            }
        );
    }
}
