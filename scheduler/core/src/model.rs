//! The scheduler's domain, in its own types: sources, their admitted specs, runs, and what the
//! core says to agents and applications.
//!
//! Nothing here knows the wire or the store. The gRPC edge turns requests into the plain input
//! types ([`SpecInput`], [`CopyTarget`], [`Report`], ...) and the domain back into messages; the
//! store encodes and decodes [`SourceRecord`] and [`Run`] at its own edge. Admission
//! ([`crate::validate::admit`]) turns a [`SpecInput`] into a [`SourceSpec`]: exactly one mover, a
//! known copy method, a trigger that is one thing, durations in range. Those cannot be wrong in
//! a [`SourceSpec`]; the free-form fields (names, quantities, labels) are checked by admission
//! and kept as strings, so that a rule tightened in a later version never makes a stored source
//! unrepresentable (it loads, with the broken rule shown on it).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};

use crate::{RunId, SourceKey};

/// A free-form Kubernetes object inside a spec (`moverResources`, `moverAffinity`, a mover
/// volume's source), as JSON: the scheduler checks its size and passes it to the agent.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// Who applied a spec, as authentication identified them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Author {
    /// The user name (a ServiceAccount's `system:serviceaccount:<ns>:<name>`).
    pub user: String,
    /// The groups.
    pub groups: Vec<String>,
}

/// How the mover reaches a point-in-time copy of the source PVC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CopyMethod {
    /// The mover reads the source PVC itself.
    Direct,
    /// VolSync's older spelling of `Direct`, kept as applied.
    None,
    /// A clone of the PVC.
    Clone,
    /// A VolumeSnapshot, restored to a PVC.
    Snapshot,
}

impl CopyMethod {
    /// `None` is `Direct`.
    pub fn folded(self) -> Self {
        match self {
            Self::None => Self::Direct,
            m => m,
        }
    }

    /// The value's number in the API (what [`MoverInput::copy_method`] carries).
    pub fn number(self) -> i32 {
        match self {
            Self::Direct => 1,
            Self::None => 2,
            Self::Clone => 3,
            Self::Snapshot => 4,
        }
    }

    /// The name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "Direct",
            Self::None => "None",
            Self::Clone => "Clone",
            Self::Snapshot => "Snapshot",
        }
    }
}

/// What a run does when its wait for a copy trigger times out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TimeoutPolicy {
    /// Report the timeout and go on waiting (VolSync's behaviour).
    #[default]
    KeepWaiting,
    /// End the run as timed out.
    Skip,
}

/// A duration as a request carries it, not yet checked: any seconds, any nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RawDuration {
    /// Whole seconds.
    pub seconds: i64,
    /// Nanoseconds, of the same sign as `seconds` when valid.
    pub nanos: i32,
}

/// A volume a mover mounts beside the source.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MoverVolume {
    /// Where, under the mover's mount root.
    pub mount_path: String,
    /// The Kubernetes volume source.
    pub volume_source: Option<JsonObject>,
}

/// A CA bundle for the mover's TLS connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CustomCa {
    /// A Secret holding it (or).
    pub secret_name: String,
    /// A ConfigMap holding it.
    pub config_map_name: String,
    /// Its key.
    pub key: String,
}

/// restic's `forget` policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetainPolicy {
    /// Hourly snapshots kept.
    pub hourly: Option<i32>,
    /// Daily.
    pub daily: Option<i32>,
    /// Weekly.
    pub weekly: Option<i32>,
    /// Monthly.
    pub monthly: Option<i32>,
    /// Yearly.
    pub yearly: Option<i32>,
    /// Everything within this restic duration.
    pub within: Option<String>,
    /// The last N snapshots (a string, as in VolSync's API).
    pub last: Option<String>,
}

/// What every mover says of the copy it reads and the pod it runs in.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeOptions {
    /// How the copy is made.
    pub copy_method: CopyMethod,
    /// The copy's capacity.
    pub capacity: Option<String>,
    /// The copy's StorageClass.
    pub storage_class_name: Option<String>,
    /// The copy's access modes.
    pub access_modes: Vec<String>,
    /// The VolumeSnapshotClass of a snapshot.
    pub volume_snapshot_class_name: Option<String>,
    /// The mover pod's security context.
    pub mover_security_context: Option<JsonObject>,
    /// The mover's ServiceAccount (else one made per source).
    pub mover_service_account: Option<String>,
    /// The mover's resources.
    pub mover_resources: Option<JsonObject>,
    /// The mover's affinity.
    pub mover_affinity: Option<JsonObject>,
    /// Labels of the mover pod.
    pub mover_pod_labels: BTreeMap<String, String>,
    /// More volumes for the mover.
    pub mover_volumes: Vec<MoverVolume>,
}

impl VolumeOptions {
    /// Options with only a copy method.
    pub fn new(copy_method: CopyMethod) -> Self {
        Self {
            copy_method,
            capacity: None,
            storage_class_name: None,
            access_modes: Vec::new(),
            volume_snapshot_class_name: None,
            mover_security_context: None,
            mover_service_account: None,
            mover_resources: None,
            mover_affinity: None,
            mover_pod_labels: BTreeMap::new(),
            mover_volumes: Vec::new(),
        }
    }
}

/// restic: a backup to a repository.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResticSpec {
    /// The Secret with the repository's location and credentials.
    pub repository: String,
    /// What `forget` keeps.
    pub retain: Option<RetainPolicy>,
    /// Prune every this many days.
    pub prune_interval_days: Option<i32>,
    /// The cache PVC's capacity.
    pub cache_capacity: Option<String>,
    /// Its StorageClass.
    pub cache_storage_class_name: Option<String>,
    /// Its access modes.
    pub cache_access_modes: Vec<String>,
    /// A CA bundle.
    pub custom_ca: Option<CustomCa>,
    /// Unlock the repository when this changes.
    pub unlock: Option<String>,
    /// Keep the cache PVC when the source is deleted.
    pub keep_cache: bool,
}

/// rclone: a copy to a remote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcloneSpec {
    /// The Secret with `rclone.conf`.
    pub rclone_config: String,
    /// Its section.
    pub rclone_config_section: String,
    /// The destination path.
    pub rclone_dest_path: String,
    /// A CA bundle.
    pub custom_ca: Option<CustomCa>,
}

/// rsync over ssh.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RsyncSpec {
    /// The Secret with the ssh keys.
    pub ssh_keys: String,
    /// The destination's address.
    pub address: String,
    /// Its port.
    pub port: Option<i32>,
    /// The ssh user.
    pub ssh_user: Option<String>,
    /// The destination path.
    pub path: Option<String>,
}

/// rsync over TLS with a pre-shared key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RsyncTlsSpec {
    /// The Secret with the key.
    pub key_secret: String,
    /// The destination's address.
    pub address: String,
    /// Its port.
    pub port: Option<i32>,
}

/// Which mover, with what only it has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoverKind {
    /// restic.
    Restic(ResticSpec),
    /// rclone.
    Rclone(RcloneSpec),
    /// rsync over ssh.
    Rsync(RsyncSpec),
    /// rsync over TLS.
    RsyncTls(RsyncTlsSpec),
}

/// The source's one mover.
#[derive(Clone, Debug, PartialEq)]
pub struct MoverSpec {
    /// The copy and the pod.
    pub volume: VolumeOptions,
    /// The mover and its destination.
    pub kind: MoverKind,
}

impl MoverSpec {
    /// Which mover, for metrics and field names.
    pub fn mover(&self) -> crate::validate::Mover {
        use crate::validate::Mover;
        match self.kind {
            MoverKind::Restic(_) => Mover::Restic,
            MoverKind::Rclone(_) => Mover::Rclone,
            MoverKind::Rsync(_) => Mover::Rsync,
            MoverKind::RsyncTls(_) => Mover::RsyncTls,
        }
    }

    /// restic's options, if it is restic.
    pub fn restic(&self) -> Option<&ResticSpec> {
        match &self.kind {
            MoverKind::Restic(r) => Some(r),
            _ => None,
        }
    }
}

/// What starts a source's runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum TriggerSpec {
    /// One run after another (no trigger).
    #[default]
    Continuous,
    /// At the times of a cron expression.
    Schedule(String),
    /// Once per new tag.
    Manual(String),
}

/// `spec.copyTrigger`: how the copy-trigger handshake behaves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyTriggerOptions {
    /// How long a run waits for a trigger (unset: the default).
    pub wait_timeout: Option<Duration>,
    /// What a timeout does.
    pub on_timeout: TimeoutPolicy,
    /// Applications that must all trigger a run.
    pub holders: Vec<String>,
    /// The ServiceAccounts that may act as applications on the source.
    pub allowed_service_accounts: Vec<String>,
}

/// An admitted spec.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceSpec {
    /// The PVC copied.
    pub source_pvc: String,
    /// What starts runs.
    pub trigger: TriggerSpec,
    /// No run starts, no application is asked to quiesce, a running mover is scaled to zero.
    pub paused: bool,
    /// The mover.
    pub mover: MoverSpec,
    /// The schedule's time zone (empty: UTC).
    pub time_zone: String,
    /// Each schedule time is delayed by up to this, the same for a source every time.
    pub jitter: Option<Duration>,
    /// The copy-trigger options.
    pub copy_trigger: Option<CopyTriggerOptions>,
    /// The first run waits for the first schedule time, manual tag change or SyncNow.
    pub skip_initial_run: bool,
}

impl SpecInput {
    /// A spec for `pvc` with one mover, every other field unset.
    pub fn new(pvc: &str, mover: MoverInput) -> Self {
        Self {
            source_pvc: pvc.to_owned(),
            movers: vec![mover],
            ..Self::default()
        }
    }
}

impl SourceSpec {
    /// restic's options, if the mover is restic.
    pub fn restic(&self) -> Option<&ResticSpec> {
        self.mover.restic()
    }
}

/// `spec.trigger` as a request carries it: either, both or neither.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TriggerInput {
    /// A cron expression.
    pub schedule: Option<String>,
    /// A manual tag.
    pub manual: Option<String>,
}

/// `spec.copyTrigger` as a request carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyTriggerInput {
    /// The wait timeout, unchecked.
    pub wait_timeout: Option<RawDuration>,
    /// The timeout policy's number (0 KeepWaiting, 1 Skip).
    pub on_timeout: i32,
    /// Holders.
    pub holders: Vec<String>,
    /// Allowed ServiceAccounts.
    pub allowed_service_accounts: Vec<String>,
}

/// One mover field of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct MoverInput {
    /// The copy method's number (1 Direct, 2 None, 3 Clone, 4 Snapshot; 0 unset).
    pub copy_method: i32,
    /// The rest of the volume options; its own `copy_method` is ignored.
    pub volume: VolumeOptions,
    /// The mover.
    pub kind: MoverKind,
}

impl MoverInput {
    /// A mover with only a copy method and its own options.
    pub fn new(copy_method: CopyMethod, kind: MoverKind) -> Self {
        Self {
            copy_method: copy_method.number(),
            volume: VolumeOptions::new(copy_method),
            kind,
        }
    }

    /// restic to the repository named by the Secret `repository`.
    pub fn restic(copy_method: CopyMethod, repository: &str) -> Self {
        Self::new(
            copy_method,
            MoverKind::Restic(ResticSpec {
                repository: repository.to_owned(),
                ..ResticSpec::default()
            }),
        )
    }
}

/// A spec as a request carries it, before admission.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecInput {
    /// Its size on the wire, in bytes (bounded by admission).
    pub encoded_len: usize,
    /// `sourcePVC`.
    pub source_pvc: String,
    /// `trigger` (unset: continuous).
    pub trigger: Option<TriggerInput>,
    /// `paused`.
    pub paused: bool,
    /// Every mover field set, in the order restic, rclone, rsync, rsyncTLS.
    pub movers: Vec<MoverInput>,
    /// `timeZone`.
    pub time_zone: String,
    /// `jitter`, unchecked.
    pub jitter: Option<RawDuration>,
    /// `copyTrigger`.
    pub copy_trigger: Option<CopyTriggerInput>,
    /// `skipInitialRun`.
    pub skip_initial_run: bool,
}

/// The mover's last result on a source or run, as VolSync's `latestMoverStatus`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MoverStatus {
    /// `Successful` or `Failed`.
    pub result: String,
    /// The end of the mover's log.
    pub logs: String,
}

/// A mover pod that cannot start, as the agent reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MoverStuck {
    /// Kubernetes' reason (`ImagePullBackOff`, `Unschedulable`, ...).
    pub reason: String,
    /// Kubernetes' message.
    pub message: String,
    /// The pod (empty: the Job cannot make one).
    pub pod: String,
    /// The Job.
    pub job: String,
    /// The attempt.
    pub attempt: u32,
    /// Stuck since.
    pub since: Option<DateTime<Utc>>,
    /// When the attempt fails unless it recovers.
    pub deadline: Option<DateTime<Utc>>,
}

/// A condition of a source, Kubernetes-style.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Condition {
    /// `Synchronizing`.
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    /// For humans.
    pub message: String,
    /// When `status` last changed.
    pub last_transition_time: Option<DateTime<Utc>>,
}

/// What a source reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// The end of the last successful run.
    pub last_sync_time: Option<DateTime<Utc>>,
    /// The start of the last run.
    pub last_sync_start_time: Option<DateTime<Utc>>,
    /// How long the last successful run took.
    pub last_sync_duration: Option<Duration>,
    /// When the next run starts (a schedule's time, or now).
    pub next_sync_time: Option<DateTime<Utc>>,
    /// The manual tag last run.
    pub last_manual_sync: String,
    /// The mover's last result.
    pub latest_mover_status: Option<MoverStatus>,
    /// Conditions.
    pub conditions: Vec<Condition>,
    /// The run in flight.
    pub current_run: Option<RunId>,
    /// The note given with the last pause or resume.
    pub pause_note: String,
    /// Schedule times missed (coalesced into one run).
    pub missed_intervals: u64,
    /// A warning (a stored spec that breaks a rule of this version).
    pub message: String,
    /// When restic last pruned.
    pub last_pruned: Option<DateTime<Utc>>,
}

/// A source as the API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// Namespace and name.
    pub key: SourceKey,
    /// The admitted spec.
    pub spec: SourceSpec,
    /// What it reports.
    pub status: SourceStatus,
    /// Bumped by every change of the spec.
    pub version: u64,
    /// When it was created.
    pub create_time: DateTime<Utc>,
    /// Who applied the spec.
    pub author: Option<Author>,
}

/// What the store keeps per source.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceRecord {
    /// The source.
    pub source: Source,
    /// Deleted by a user, kept until its last run has cleaned up and the agent has removed
    /// what it made for the source (a Retire answered by Retired).
    pub deleting: bool,
}

/// Why a run started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunReason {
    /// The first run of a new source.
    Initial,
    /// A schedule time.
    Schedule,
    /// A new manual tag.
    Manual,
    /// A SyncNow request.
    SyncNow,
    /// The next run of a continuous source.
    Continuous,
}

/// Where a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RunPhase {
    /// Waiting for its PVC (another run holds it).
    Queued,
    /// Reading the PVC: gated or not.
    Gating,
    /// Gated: waiting for the application's copy trigger.
    WaitingForTrigger,
    /// The copy is being made.
    Copying,
    /// The mover runs.
    Transferring,
    /// Removing what the run made.
    CleaningUp,
    /// Done.
    Finished,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunResult {
    /// Copied and moved.
    Successful,
    /// The mover failed, or the agent could not act.
    Failed,
    /// The wait for a trigger timed out (policy Skip).
    TimedOut,
    /// Deleted, paused out, or its namespace went.
    Aborted,
}

impl RunResult {
    /// The name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Successful => "Successful",
            Self::Failed => "Failed",
            Self::TimedOut => "TimedOut",
            Self::Aborted => "Aborted",
        }
    }

    /// The API's name of the value, as messages and timelines show it.
    pub fn as_str_name(self) -> &'static str {
        match self {
            Self::Successful => "RUN_RESULT_SUCCESSFUL",
            Self::Failed => "RUN_RESULT_FAILED",
            Self::TimedOut => "RUN_RESULT_TIMED_OUT",
            Self::Aborted => "RUN_RESULT_ABORTED",
        }
    }
}

impl RunReason {
    /// The API's name of the value, as messages and timelines show it.
    pub fn as_str_name(self) -> &'static str {
        match self {
            Self::Initial => "RUN_REASON_INITIAL",
            Self::Schedule => "RUN_REASON_SCHEDULE",
            Self::Manual => "RUN_REASON_MANUAL",
            Self::SyncNow => "RUN_REASON_SYNC_NOW",
            Self::Continuous => "RUN_REASON_CONTINUOUS",
        }
    }
}

impl RunPhase {
    /// The API's name of the value, as messages and timelines show it.
    pub fn as_str_name(self) -> &'static str {
        match self {
            Self::Queued => "RUN_PHASE_QUEUED",
            Self::Gating => "RUN_PHASE_GATING",
            Self::WaitingForTrigger => "RUN_PHASE_WAITING_FOR_TRIGGER",
            Self::Copying => "RUN_PHASE_COPYING",
            Self::Transferring => "RUN_PHASE_TRANSFERRING",
            Self::CleaningUp => "RUN_PHASE_CLEANING_UP",
            Self::Finished => "RUN_PHASE_FINISHED",
        }
    }
}

/// How a run was released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReleasedBy {
    /// A `copy-trigger` value written on the PVC.
    Annotation,
    /// A Trigger call (the agent writes the value on the PVC).
    Rpc,
    /// A `copy-trigger` value already on the PVC when the run read it (set in advance).
    Ahead,
}

impl ReleasedBy {
    /// The name stored and shown (`annotation`, `rpc`, `ahead`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Annotation => "annotation",
            Self::Rpc => "rpc",
            Self::Ahead => "ahead",
        }
    }
}

/// One step of a run's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineEntry {
    /// When.
    pub time: DateTime<Utc>,
    /// What (`Started`, `Released`, ...).
    pub event: String,
    /// Details.
    pub message: String,
}

/// One holder's Trigger of a run that waits for several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// The holder.
    pub holder: String,
    /// Its trigger value.
    pub value: String,
    /// The end of its hold.
    pub deadline: Option<DateTime<Utc>>,
}

/// A run of a source.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// Its id.
    pub id: RunId,
    /// Its source.
    pub source: SourceKey,
    /// The PVC it copies (the source's when it started).
    pub pvc: String,
    /// Why it started.
    pub reason: RunReason,
    /// Where it is.
    pub phase: RunPhase,
    /// How it ended (or is ending); `None` while it goes on.
    pub result: Option<RunResult>,
    /// The copy-trigger value that released it.
    pub trigger: String,
    /// When it started.
    pub start_time: DateTime<Utc>,
    /// Since when it waits for a trigger.
    pub waiting_since: Option<DateTime<Utc>>,
    /// When the wait times out.
    pub wait_deadline: Option<DateTime<Utc>>,
    /// Its copy point.
    pub copy_time: Option<DateTime<Utc>>,
    /// When it ended.
    pub end_time: Option<DateTime<Utc>>,
    /// Its PVC asked for a copy trigger.
    pub gated: bool,
    /// Its wait's timeout was reported.
    pub timeout_reported: bool,
    /// What it says now.
    pub message: String,
    /// What happened, at most a bounded number of entries.
    pub timeline: Vec<TimelineEntry>,
    /// The mover's result.
    pub mover_status: Option<MoverStatus>,
    /// Failed mover attempts.
    pub mover_failures: u32,
    /// The SyncNow request that started it.
    pub request_id: String,
    /// How the trigger that released it came.
    pub released_by: Option<ReleasedBy>,
    /// Bumped on every change an agent must act on.
    pub generation: u64,
    /// The PVC's latest copy trigger when it started.
    pub latest_trigger: String,
    /// restic prunes in this run.
    pub restic_prune: bool,
    /// The spec it started with (`None`: stored by snapgate 0.1, follows the live spec).
    pub spec: Option<SourceSpec>,
    /// The end of the hold lease of the Trigger that released it.
    pub lease_deadline: Option<DateTime<Utc>>,
    /// Trigger values it spent without a copy.
    pub spent_triggers: Vec<String>,
    /// Holders' Triggers so far.
    pub holds: Vec<Hold>,
    /// Who applied the spec it started with.
    pub author: Option<Author>,
    /// Its mover pod cannot start.
    pub mover_stuck: Option<MoverStuck>,
}

impl Run {
    /// A run that has just started.
    pub fn new(
        id: RunId,
        source: SourceKey,
        pvc: String,
        reason: RunReason,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            source,
            pvc,
            reason,
            phase: RunPhase::Queued,
            result: None,
            trigger: String::new(),
            start_time: now,
            waiting_since: None,
            wait_deadline: None,
            copy_time: None,
            end_time: None,
            gated: false,
            timeout_reported: false,
            message: String::new(),
            timeline: Vec::new(),
            mover_status: None,
            mover_failures: 0,
            request_id: String::new(),
            released_by: None,
            generation: 0,
            latest_trigger: String::new(),
            restic_prune: false,
            spec: None,
            lease_deadline: None,
            spent_triggers: Vec::new(),
            holds: Vec::new(),
            author: None,
            mover_stuck: None,
        }
    }
}

/// What an application sees of a PVC's copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CopyState {
    /// No run.
    Idle,
    /// A run started, not yet waiting.
    Pending,
    /// Waiting for the application's trigger.
    WaitingForTrigger,
    /// Released; the copy is being made.
    InProgress,
    /// The copy point is reached.
    Completed,
    /// Failed before its copy point.
    Failed,
    /// The wait timed out.
    TimedOut,
    /// Aborted before its copy point.
    Aborted,
}

impl CopyState {
    /// The API's name of the value, as messages show it.
    pub fn as_str_name(self) -> &'static str {
        match self {
            Self::Idle => "COPY_STATE_IDLE",
            Self::Pending => "COPY_STATE_PENDING",
            Self::WaitingForTrigger => "COPY_STATE_WAITING_FOR_TRIGGER",
            Self::InProgress => "COPY_STATE_IN_PROGRESS",
            Self::Completed => "COPY_STATE_COMPLETED",
            Self::Failed => "COPY_STATE_FAILED",
            Self::TimedOut => "COPY_STATE_TIMED_OUT",
            Self::Aborted => "COPY_STATE_ABORTED",
        }
    }
}

/// The copy status of a PVC (or of a source's runs on it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyStatus {
    /// The namespace.
    pub namespace: String,
    /// The PVC.
    pub pvc: String,
    /// The source of the run shown.
    pub source: String,
    /// The run shown.
    pub run_id: Option<RunId>,
    /// Its state.
    pub state: CopyState,
    /// Why.
    pub reason: String,
    /// Since when it waits.
    pub waiting_since: Option<DateTime<Utc>>,
    /// When the wait times out.
    pub wait_deadline: Option<DateTime<Utc>>,
    /// The value that released it.
    pub trigger: String,
    /// The PVC's latest consumed trigger.
    pub latest_trigger: String,
    /// The PVC is gated.
    pub gated: bool,
    /// When the state last changed.
    pub time: Option<DateTime<Utc>>,
    /// The end of the hold lease, while the copy is being made.
    pub lease_deadline: Option<DateTime<Utc>>,
    /// Holders that have not triggered yet.
    pub holders_pending: Vec<String>,
}

impl CopyStatus {
    /// Nothing runs on the PVC.
    pub fn idle(namespace: &str, pvc: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            pvc: pvc.to_owned(),
            source: String::new(),
            run_id: None,
            state: CopyState::Idle,
            reason: String::new(),
            waiting_since: None,
            wait_deadline: None,
            trigger: String::new(),
            latest_trigger: String::new(),
            gated: false,
            time: None,
            lease_deadline: None,
            holders_pending: Vec::new(),
        }
    }
}

/// A copy target as a request names it: a PVC, or a source (not both).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyTarget {
    /// The namespace.
    pub namespace: String,
    /// The PVC (or).
    pub pvc: String,
    /// The source.
    pub source: String,
}

/// Which step of a run the agent is to carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DirectivePhase {
    /// Read the PVC (clear waiting annotations when asked).
    Gate,
    /// Mark the PVC waiting for a trigger.
    Wait,
    /// Make the copy.
    Copy,
    /// Run the mover.
    Transfer,
    /// Remove what the run made.
    Cleanup,
}

/// What the agent serving a run's namespace is to do for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Directive {
    /// The run.
    pub run_id: RunId,
    /// Its source.
    pub source: SourceKey,
    /// The spec it runs with (`paused` live).
    pub spec: SourceSpec,
    /// The step.
    pub phase: DirectivePhase,
    /// The run's generation: reports for older ones are stale.
    pub generation: u64,
    /// Since when it waits (for the PVC's annotation).
    pub waiting_since: Option<DateTime<Utc>>,
    /// The wait has timed out: say so once.
    pub timeout_reported: bool,
    /// The value that released it.
    pub trigger: String,
    /// Write `trigger` on the PVC (released by a Trigger call).
    pub write_copy_trigger: bool,
    /// The PVC is gated.
    pub gated: bool,
    /// Clear snapgate's waiting annotations.
    pub clear_waiting: bool,
    /// restic prunes.
    pub restic_prune: bool,
    /// Failed mover attempts so far.
    pub mover_failures: u32,
    /// A value to record as the PVC's latest copy trigger.
    pub consumed_trigger: String,
    /// Make the copy only under the run's hold lease.
    pub lease: bool,
    /// Who applied the spec.
    pub author: Option<Author>,
}

/// The copy-trigger annotations of a PVC, as the agent read them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PvcObserved {
    /// The PVC exists.
    pub exists: bool,
    /// It has `use-copy-trigger`.
    pub use_copy_trigger: bool,
    /// `copy-trigger`.
    pub copy_trigger: String,
    /// `latest-copy-trigger`.
    pub latest_copy_trigger: String,
    /// `latest-copy-status`.
    pub latest_copy_status: String,
    /// `latest-copy-trigger-waiting-since`, as written.
    pub waiting_since: String,
}

/// A time an agent sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AgentTime {
    /// None was sent.
    #[default]
    Unset,
    /// This time.
    At(DateTime<Utc>),
    /// Something that is not a time (the edge could not read it).
    Invalid,
}

/// The copy point is reached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyCompleted {
    /// The copy.
    pub copy_name: String,
    /// The copy point, by the agent's clock.
    pub time: AgentTime,
}

/// The mover ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MoverFinished {
    /// It succeeded.
    pub succeeded: bool,
    /// The end of its log.
    pub logs: String,
}

/// A mover attempt failed (it is retried).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MoverFailed {
    /// The attempt.
    pub attempt: u32,
    /// The end of its log.
    pub logs: String,
}

/// The agent cannot act.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentError {
    /// A CamelCase reason.
    pub reason: String,
    /// For humans.
    pub message: String,
    /// It may pass.
    pub retryable: bool,
}

/// What an agent saw, for a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportObservation {
    /// The PVC's annotations.
    Pvc(PvcObserved),
    /// The copy point is reached.
    CopyCompleted(CopyCompleted),
    /// The mover ended.
    MoverFinished(MoverFinished),
    /// A mover attempt failed.
    MoverFailed(MoverFailed),
    /// What the run made is gone.
    CleanedUp,
    /// The agent cannot act.
    Error(AgentError),
    /// The mover pod cannot start (no reason: it no longer is).
    MoverStuck(MoverStuck),
}

/// An agent's report on a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The run, as the agent names it (unchecked).
    pub run_id: String,
    /// The generation of the directive it acted on.
    pub generation: u64,
    /// What it saw (`None`: nothing the scheduler understands).
    pub observation: Option<ReportObservation>,
}

/// An agent asks for a run's hold lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRequest {
    /// The run (unchecked).
    pub run_id: String,
    /// The generation of the directive it acts on.
    pub generation: u64,
    /// Its own id for the request.
    pub request_id: u64,
}
