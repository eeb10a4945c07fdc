//! The one task that owns the core.
//!
//! Every request, agent report and timer tick becomes a [`Command`] on one channel. For each,
//! the driver calls the core, commits the persistence effects as one batch, and only then
//! delivers directives to agents, copy-status changes to watchers, metrics, and the reply.
//! If the commit fails the core is rebuilt from the store, so a refused request leaves no trace.
//!
//! Group commit: the writes (Apply, Delete, SyncNow, Pause, Trigger, EndHold, agent reports)
//! waiting on the channel when the driver gets to them are handled one after another and
//! committed together, in one store transaction (one fsync), at most [`MAX_GROUP`] at a time;
//! every reply and delivery of the group waits for that commit. Any other command ends the
//! group first, so a read never sees a change that is not yet durable. If the group's commit
//! fails, every request in it is answered with the store's error and the core is rebuilt.

use std::{collections::HashMap, sync::Arc, time::Duration as StdDuration};

use chrono::{DateTime, Utc};
use snapgate_proto::{
    clock::Clock,
    v1::{self, SchedulerMessage, scheduler_message::Message as ToAgent},
};
use snapgate_scheduler_core::{
    CoreError, Effect, LeaseAnswer, LeasePolicy, Quarantined, ReportOutcome, RunId, Scheduler,
    SourceKey, Target, TriggerAccepted,
    model::{
        Author, CopyStatus, CopyTarget, Directive, LeaseRequest, RawDuration, Report, Source,
        SpecInput,
    },
    presence::{self, Absence},
};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tracing::{debug, info, warn};

use crate::{
    metrics::Metrics,
    reads::{self, Read},
    store::{Batch, Store, StoreError, Write},
    wire,
};

/// Messages queued for one agent connection before it is considered stuck and dropped.
pub(crate) const AGENT_QUEUE: usize = 1024;
/// Statuses queued for one WatchCopy stream before it is dropped (the client re-watches).
pub(crate) const WATCH_QUEUE: usize = 64;
/// The most WatchCopy streams open at once, in all.
pub(crate) const MAX_WATCHERS: usize = 10_000;
/// The most WatchCopy streams open at once on one PVC.
pub(crate) const MAX_WATCHERS_PER_PVC: usize = 64;
/// The most WatchCopy streams one authenticated identity holds open at once.
pub(crate) const MAX_WATCHERS_PER_IDENTITY: usize = 64;
/// The longest the driver sleeps without looking at the clock again.
const MAX_SLEEP: StdDuration = StdDuration::from_secs(30);
/// How long to wait before retrying timer work whose commit failed.
const RETRY_AFTER_STORE_ERROR: StdDuration = StdDuration::from_secs(1);
/// The most writes committed as one group.
pub(crate) const MAX_GROUP: usize = 256;

/// Why the driver refused or failed a request.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DriverError {
    /// The core refused it.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The store failed; nothing was applied (shared by the requests of a group).
    #[error("the request was not applied: {0}")]
    Store(Arc<StoreError>),
    /// The driver has stopped (shutting down).
    #[error("the scheduler is shutting down")]
    Stopped,
    /// A bounded resource is full.
    #[error("{0}")]
    Exhausted(String),
    /// This replica does not lead (and the request is one only the leader serves); the leader
    /// it last saw, if any.
    #[error("this scheduler replica is not the leader")]
    NotLeader(Option<String>),
}

impl From<StoreError> for DriverError {
    fn from(e: StoreError) -> Self {
        Self::Store(Arc::new(e))
    }
}

type Reply<T> = oneshot::Sender<Result<T, DriverError>>;

/// A reply held until its group's commit: given the commit's outcome, it answers.
type Deferred = Box<dyn FnOnce(Result<(), DriverError>) + Send>;

/// The writes handled since the group began, not yet committed.
#[derive(Default)]
struct Group {
    /// How many commands it holds.
    commands: usize,
    writes: Vec<Write>,
    /// Deliveries (directives, copy statuses, metrics), after the commit.
    rest: Vec<Effect>,
    removed: Vec<SourceKey>,
    replies: Vec<Deferred>,
    /// Namespaces whose source counts were taken from uncommitted state.
    namespaces: Vec<String>,
}

/// A request to the driver.
pub(crate) enum Command {
    Apply {
        key: SourceKey,
        spec: Box<SpecInput>,
        expected_version: u64,
        /// The caller, as authentication identified it (`None` without authentication).
        author: Option<Author>,
        reply: Reply<Source>,
    },
    /// A request that changes nothing.
    Read(Read),
    Delete {
        key: SourceKey,
        expected_version: u64,
        reply: Reply<()>,
    },
    SyncNow {
        key: SourceKey,
        request_id: String,
        reply: Reply<(RunId, bool)>,
    },
    SetPaused {
        key: SourceKey,
        paused: bool,
        note: String,
        reply: Reply<Source>,
    },
    Trigger {
        target: CopyTarget,
        value: String,
        run_id: String,
        hold: Option<RawDuration>,
        holder: String,
        /// The caller's ServiceAccount when it acts as an application (held to the sources'
        /// `copyTrigger.allowedServiceAccounts`).
        application: Option<String>,
        reply: Reply<TriggerAccepted>,
    },
    EndHold {
        target: CopyTarget,
        run_id: String,
        value: String,
        application: Option<String>,
        reply: Reply<CopyStatus>,
    },
    WatchCopy {
        target: CopyTarget,
        application: Option<String>,
        /// The authenticated caller (`None`: authentication off), for its stream cap.
        identity: Option<String>,
        tx: mpsc::Sender<Result<v1::CopyStatus, Status>>,
        reply: Reply<()>,
    },
    /// Registers an agent; the driver makes its outbound queue, large enough for the resync
    /// of every run in flight in its namespaces plus [`AGENT_QUEUE`] more.
    AgentConnect {
        hello: v1::AgentHello,
        /// Who connected (the token's subject, or `anonymous`).
        subject: String,
        reply: Reply<(u64, mpsc::Receiver<Result<SchedulerMessage, Status>>)>,
    },
    /// A WatchCopy stream ended: forget watchers whose streams are closed.
    ReapWatchers,
    AgentReport {
        conn: u64,
        report: Report,
    },
    /// An agent asks for a run's hold lease; the answer goes back on its link.
    AgentLease {
        conn: u64,
        request: LeaseRequest,
    },
    /// One of an agent's namespaces is being deleted.
    AgentNamespaceGone {
        conn: u64,
        namespace: String,
    },
    /// An agent removed what it made for a deleted source.
    AgentRetired {
        conn: u64,
        source: SourceKey,
    },
    AgentGone {
        conn: u64,
    },
    /// End every agent link and watch stream (the server is shutting down).
    CloseStreams,
}

/// A cloneable handle that sends commands to the driver.
#[derive(Clone)]
pub struct DriverHandle {
    tx: mpsc::Sender<Command>,
}

/// A driver's command channel: the handles, and what [`Driver::start_on`] serves.
pub(crate) fn channel() -> (DriverHandle, mpsc::Receiver<Command>) {
    let (tx, rx) = mpsc::channel(1024);
    (DriverHandle { tx }, rx)
}

impl DriverHandle {
    /// Sends a command built around a fresh reply channel and waits for the answer.
    pub(crate) async fn ask<T>(
        &self,
        build: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(build(reply))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)?
    }

    /// Sends a command that needs no answer.
    pub(crate) async fn tell(&self, cmd: Command) {
        let _ = self.tx.send(cmd).await;
    }
}

struct AgentConn {
    agent_id: String,
    /// Who connected: only the same identity may take its namespaces over.
    subject: String,
    namespaces: Vec<String>,
    /// It honours hold leases (sent lease-gated COPY directives).
    leases: bool,
    tx: mpsc::Sender<Result<SchedulerMessage, Status>>,
}

struct Watcher {
    /// The PVC watched, or one source's runs on it.
    target: Target,
    tx: mpsc::Sender<Result<v1::CopyStatus, Status>>,
    last: Option<CopyStatus>,
    /// The watching application's ServiceAccount, held to `copyTrigger.allowedServiceAccounts`
    /// on every status (a source may narrow the list while the stream is open).
    application: Option<String>,
    /// Who watches (authenticated callers only).
    identity: Option<String>,
}

/// The driver task's state.
pub(crate) struct Driver {
    core: Scheduler,
    store: Box<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    agents: HashMap<u64, AgentConn>,
    next_conn: u64,
    /// The last agent that served each namespace no agent serves now, and when it left.
    agents_left: HashMap<String, (String, DateTime<Utc>)>,
    /// When this scheduler started: since then, a namespace never served has had no agent.
    started: DateTime<Utc>,
    watchers: Vec<Watcher>,
    quarantined: Vec<Quarantined>,
    lease_policy: LeasePolicy,
    rx: mpsc::Receiver<Command>,
    /// The group being handled, if any (see the module docs).
    group: Option<Group>,
}

impl Driver {
    /// Loads the store and rebuilds the core, to serve the handles of a [`channel`] (made
    /// before it: a replica's services exist before it is elected and loads). Fails if the
    /// store cannot be read.
    pub(crate) fn start_on(
        store: Box<dyn Store>,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
        lease_policy: LeasePolicy,
        rx: mpsc::Receiver<Command>,
    ) -> Result<Self, anyhow::Error> {
        let (core, quarantined) = restore(store.as_ref(), lease_policy)?;
        metrics
            .quarantined_records
            .set(i64::try_from(quarantined.len()).unwrap_or(i64::MAX));
        let started = clock.now();
        Ok(Self {
            core,
            store,
            clock,
            metrics,
            agents: HashMap::new(),
            next_conn: 1,
            agents_left: HashMap::new(),
            started,
            watchers: Vec::new(),
            quarantined,
            lease_policy,
            rx,
            group: None,
        })
    }

    /// Runs until every handle is dropped.
    pub(crate) async fn run(mut self) {
        // No agent is connected yet: every namespace's sources are without one.
        for (namespace, count) in self.core.sources_per_namespace() {
            self.metrics.set_sources_without_agent(&namespace, count);
        }
        // Catch up with whatever came due while we were down.
        let now = self.clock.now();
        self.core.handle_timeout(now);
        if let Err(e) = self.flush() {
            warn!(error = %e, "catch-up after start not committed; will retry");
        }
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let sleep = self.sleep_for(retry_at);
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.handle_group(cmd),
                    None => break,
                },
                () = tokio::time::sleep(sleep) => {
                    // Streams whose clients went away, on quiet PVCs too.
                    self.reap_watchers();
                    let now = self.clock.now();
                    self.core.handle_timeout(now);
                    retry_at = match self.flush() {
                        Ok(()) => None,
                        Err(e) => {
                            warn!(error = %e, "timer work not committed; retrying");
                            Some(tokio::time::Instant::now() + RETRY_AFTER_STORE_ERROR)
                        }
                    };
                }
            }
        }
        info!("driver stopped");
    }

    fn sleep_for(&mut self, retry_at: Option<tokio::time::Instant>) -> StdDuration {
        if let Some(at) = retry_at {
            return at.saturating_duration_since(tokio::time::Instant::now());
        }
        match self.core.poll_timeout() {
            None => MAX_SLEEP,
            Some(t) => (t - self.clock.now())
                .to_std()
                .unwrap_or(StdDuration::ZERO)
                .min(MAX_SLEEP),
        }
    }

    /// Handles `first` and, if it is a write, the writes queued behind it, committed as one
    /// group.
    fn handle_group(&mut self, first: Command) {
        if !first.is_write() {
            self.handle(first);
            return;
        }
        self.group = Some(Group::default());
        self.handle_in_group(first);
        while self.group.as_ref().is_some_and(|g| g.commands < MAX_GROUP) {
            match self.rx.try_recv() {
                Ok(cmd) if cmd.is_write() => self.handle_in_group(cmd),
                Ok(cmd) => {
                    self.commit_group();
                    self.handle(cmd);
                    return;
                }
                Err(_) => break,
            }
        }
        self.commit_group();
    }

    fn handle_in_group(&mut self, cmd: Command) {
        self.handle(cmd);
        if let Some(g) = &mut self.group {
            g.commands += 1;
        }
    }

    /// Commits the group, then delivers and answers; on a store error every request in it is
    /// answered with the error and the core is rebuilt from the store.
    fn commit_group(&mut self) {
        let Some(g) = self.group.take() else {
            return;
        };
        let outcome = self.commit(g.writes, g.rest, g.removed);
        if let Err(e) = &outcome {
            warn!(error = %e, requests = g.commands, "a group of writes was not committed; each is answered with the error");
            for namespace in &g.namespaces {
                self.count_sources_without_agent(namespace);
            }
        }
        let outcome = outcome.map_err(DriverError::from);
        for reply in g.replies {
            reply(outcome.clone());
        }
    }

    /// Persists the effects of one step, then delivers the rest. On a store error the core
    /// is rebuilt from the store and the undelivered effects are dropped. In a group, the
    /// effects join the group's and `Ok` means only that: its commit says the rest.
    fn flush(&mut self) -> Result<(), StoreError> {
        let effects = self.core.drain_effects();
        let mut writes = Vec::new();
        let mut rest = Vec::new();
        let mut removed = Vec::new();
        for e in effects {
            match e {
                Effect::PutSource(r) => writes.push(Write::PutSource(r)),
                Effect::RemoveSource(k) => {
                    writes.push(Write::RemoveSource(k.to_string()));
                    removed.push(k);
                }
                Effect::PutRun(r) => writes.push(Write::PutRun(r)),
                Effect::RemoveRun(id) => writes.push(Write::RemoveRun(id.to_string())),
                other => rest.push(other),
            }
        }
        if let Some(g) = &mut self.group {
            g.writes.append(&mut writes);
            g.rest.append(&mut rest);
            g.removed.append(&mut removed);
            return Ok(());
        }
        self.commit(writes, rest, removed)
    }

    fn commit(
        &mut self,
        writes: Vec<Write>,
        rest: Vec<Effect>,
        removed: Vec<SourceKey>,
    ) -> Result<(), StoreError> {
        let mut batch = Batch {
            writes,
            next_run: self.core.next_run_counter(),
        };
        batch.coalesce();
        if !batch.writes.is_empty()
            && let Err(e) = self.store.commit(batch)
        {
            self.metrics.store_errors.inc();
            match restore(self.store.as_ref(), self.lease_policy) {
                Ok((core, _)) => self.core = core,
                Err(reload) => warn!(error = %reload, "store reload failed; keeping memory state"),
            }
            return Err(e);
        }
        // A source removed and made anew in one step (applied again while its Retire was
        // unanswered) keeps its series.
        for key in removed.iter().filter(|k| self.core.get_source(k).is_err()) {
            self.metrics.forget_source(key);
        }
        for e in rest {
            self.deliver(e);
        }
        Ok(())
    }

    fn deliver(&mut self, effect: Effect) {
        match effect {
            Effect::Send {
                namespace,
                directive,
            } => self.send_to_agents(
                &namespace,
                ToAgent::Directive(wire::agents::directive_to_wire(&directive)),
            ),
            Effect::Forget { namespace, run_id } => self.send_to_agents(
                &namespace,
                ToAgent::Forget(v1::Forget {
                    run_id: run_id.to_string(),
                }),
            ),
            Effect::Retire { source, keep_cache } => {
                let message = retire_message(&source, keep_cache);
                self.send_to_agents(&source.namespace, message);
            }
            Effect::CopyStatus(status) => self.send_to_watchers(&status),
            Effect::Observe(o) => self.metrics.observe(&o),
            Effect::PutSource(_)
            | Effect::RemoveSource(_)
            | Effect::PutRun(_)
            | Effect::RemoveRun(_) => {
                unreachable!("persistence effects are committed, not delivered")
            }
        }
    }

    fn send_to_agents(&mut self, namespace: &str, message: ToAgent) {
        let mut dead = Vec::new();
        let mut delivered = false;
        for (id, conn) in &self.agents {
            if !conn.namespaces.iter().any(|n| n == namespace) {
                continue;
            }
            if let ToAgent::Directive(d) = &message
                && d.lease
                && !conn.leases
            {
                // An agent that does not honour leases would copy without one.
                debug!(agent = %conn.agent_id, run = d.run_id, "lease-gated directive withheld from an agent without leases");
                continue;
            }
            let msg = SchedulerMessage {
                message: Some(message.clone()),
            };
            match conn.tx.try_send(Ok(msg)) {
                Ok(()) => delivered = true,
                Err(e) => {
                    warn!(agent = %conn.agent_id, error = %e, "agent not keeping up; dropping its link (it resyncs on reconnect)");
                    dead.push(*id);
                }
            }
        }
        if !delivered {
            debug!(
                namespace,
                "no agent connected; the directive is sent when one connects"
            );
        }
        for id in dead {
            self.drop_agent(id);
        }
    }

    fn send_to_watchers(&mut self, status: &CopyStatus) {
        let core = &self.core;
        self.watchers.retain_mut(|w| {
            if w.target.namespace != status.namespace || w.target.pvc != status.pvc {
                return !w.tx.is_closed();
            }
            if let Some(sa) = &w.application
                && !core.application_allowed(&w.target, sa)
            {
                // Narrowed since the stream opened: it ends here.
                let _ = w.tx.try_send(Err(Status::permission_denied(format!(
                    "ServiceAccount {sa} may no longer watch pvc {}/{}: a source of it lists other copyTrigger.allowedServiceAccounts",
                    w.target.namespace, w.target.pvc
                ))));
                return false;
            }
            // A source's watcher sees that source's runs only.
            let status = match &w.target.source {
                None => status.clone(),
                Some(_) => core.target_status(&w.target),
            };
            if w.last.as_ref() == Some(&status) {
                return true;
            }
            let sent = w
                .tx
                .try_send(Ok(wire::triggers::copy_status_to_wire(&status)))
                .is_ok();
            w.last = Some(status);
            sent
        });
    }

    fn reap_watchers(&mut self) {
        self.watchers.retain(|w| !w.tx.is_closed());
        self.count_watchers();
    }

    fn count_watchers(&self) {
        self.metrics
            .watch_streams
            .set(i64::try_from(self.watchers.len()).unwrap_or(i64::MAX));
    }

    fn drop_agent(&mut self, id: u64) {
        if let Some(conn) = self.agents.remove(&id) {
            info!(agent = %conn.agent_id, namespaces = ?conn.namespaces, "agent disconnected");
            self.metrics.agents_connected.set(self.agents.len() as i64);
            let now = self.clock.now();
            for namespace in &conn.namespaces {
                if self.absence(namespace).is_some() {
                    self.agents_left
                        .insert(namespace.clone(), (conn.agent_id.clone(), now));
                    self.count_sources_without_agent(namespace);
                }
            }
        }
    }

    /// Since when no agent has served `namespace`, and the last one that did; `None` while
    /// one does.
    fn absence(&self, namespace: &str) -> Option<Absence> {
        if self
            .agents
            .values()
            .any(|a| a.namespaces.iter().any(|n| n == namespace))
        {
            return None;
        }
        let left = self.agents_left.get(namespace).cloned();
        Some(Absence {
            since: left.as_ref().map_or(self.started, |(_, at)| *at),
            last_agent: left,
        })
    }

    /// `source` as a reader sees it: with the `NoAgent` condition when no agent has served its
    /// namespace for `grace` while a run is in flight.
    fn with_presence(
        &self,
        mut source: Source,
        grace: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Source {
        if let Some(absence) = self.absence(&source.key.namespace) {
            presence::mark_source(&mut source, &absence, grace, now);
        }
        source
    }

    /// [`Self::count_sources_without_agent`] after a write's commit (or the rebuild from the
    /// store when it failed); in a group, again after the group's commit if that fails.
    fn count_after_write(&mut self, namespace: String) {
        self.count_sources_without_agent(&namespace);
        if let Some(g) = &mut self.group {
            g.namespaces.push(namespace);
        }
    }

    /// Updates `snapgate_sources_without_agent` for `namespace`.
    fn count_sources_without_agent(&self, namespace: &str) {
        let count = match self.absence(namespace) {
            Some(_) => self.core.source_count(namespace),
            None => 0,
        };
        self.metrics.set_sources_without_agent(namespace, count);
    }

    fn handle(&mut self, cmd: Command) {
        let now = self.clock.now();
        match cmd {
            Command::Apply {
                key,
                spec,
                expected_version,
                author,
                reply,
            } => {
                let namespace = key.namespace.clone();
                // The caller is told at once when no agent serves the namespace.
                let r = self
                    .core
                    .apply_source_by(key, *spec, expected_version, author, now)
                    .map(|s| self.with_presence(s, chrono::Duration::zero(), now));
                self.answer(reply, r);
                self.count_after_write(namespace);
            }
            Command::Read(read) => reads::answer(
                &self.core,
                read,
                &reads::Context {
                    now,
                    absence: &|namespace| self.absence(namespace),
                    quarantined: &self.quarantined,
                },
            ),
            Command::Delete {
                key,
                expected_version,
                reply,
            } => {
                let r = self.core.delete_source(&key, expected_version, now);
                self.answer(reply, r);
                self.count_after_write(key.namespace);
            }
            Command::SyncNow {
                key,
                request_id,
                reply,
            } => {
                let r = self.core.sync_now(&key, &request_id, now);
                self.answer(reply, r);
            }
            Command::SetPaused {
                key,
                paused,
                note,
                reply,
            } => {
                let r = self.core.set_paused(&key, paused, note, now);
                self.answer(reply, r);
            }
            Command::Trigger {
                target,
                value,
                run_id,
                hold,
                holder,
                application,
                reply,
            } => {
                let r = self.admit(&target, application.as_deref()).and_then(|()| {
                    self.core
                        .trigger(&target, &value, &run_id, hold, &holder, now)
                });
                self.answer(reply, r);
            }
            Command::EndHold {
                target,
                run_id,
                value,
                application,
                reply,
            } => {
                let r = self
                    .admit(&target, application.as_deref())
                    .and_then(|()| self.core.end_hold(&target, &run_id, &value, now));
                self.answer(reply, r);
            }
            Command::WatchCopy {
                target,
                application,
                identity,
                tx,
                reply,
            } => match self
                .admit(&target, application.as_deref())
                .and_then(|()| self.core.resolve_target(&target))
            {
                Ok(target) => {
                    self.reap_watchers();
                    let on_pvc = self
                        .watchers
                        .iter()
                        .filter(|w| {
                            w.target.namespace == target.namespace && w.target.pvc == target.pvc
                        })
                        .count();
                    let mine = identity.as_ref().map_or(0, |who| {
                        self.watchers
                            .iter()
                            .filter(|w| w.identity.as_ref() == Some(who))
                            .count()
                    });
                    if mine >= MAX_WATCHERS_PER_IDENTITY {
                        let _ = reply.send(Err(DriverError::Exhausted(format!(
                            "this caller holds {mine} WatchCopy streams open, at most {MAX_WATCHERS_PER_IDENTITY}; close some and retry"
                        ))));
                        return;
                    }
                    if self.watchers.len() >= MAX_WATCHERS || on_pvc >= MAX_WATCHERS_PER_PVC {
                        let _ = reply.send(Err(DriverError::Exhausted(format!(
                            "too many WatchCopy streams open ({on_pvc} on pvc {}/{}, at most {MAX_WATCHERS_PER_PVC}; {} in all, at most {MAX_WATCHERS}); close some and retry",
                            target.namespace, target.pvc, self.watchers.len()
                        ))));
                        return;
                    }
                    let current = self.core.target_status(&target);
                    let _ = tx.try_send(Ok(wire::triggers::copy_status_to_wire(&current)));
                    self.watchers.push(Watcher {
                        target,
                        tx,
                        last: Some(current),
                        application,
                        identity,
                    });
                    self.count_watchers();
                    let _ = reply.send(Ok(()));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Command::ReapWatchers => self.reap_watchers(),
            Command::AgentConnect {
                hello,
                subject,
                reply,
            } => {
                // One agent identity per namespace: a link of another identity serving any of
                // these namespaces keeps them (first come), so that one namespace's agent can
                // never cut off an agent serving others.
                if let Some(ns) = self
                    .agents
                    .values()
                    .filter(|a| a.subject != subject)
                    .flat_map(|a| a.namespaces.iter())
                    .find(|n| hello.namespaces.contains(n))
                {
                    let _ = reply.send(Err(DriverError::Core(CoreError::FailedPrecondition(
                        format!("namespace {ns} is served by another agent identity; one agent identity per namespace"),
                    ))));
                    return;
                }
                let id = self.next_conn;
                self.next_conn += 1;
                // A lease-gated copy is never sent to an agent that does not honour leases
                // (an older agent during an upgrade): the run waits for one that does.
                let directives: Vec<Directive> = self
                    .core
                    .directives_for(&hello.namespaces)
                    .into_iter()
                    .filter(|d| hello.leases || !d.lease)
                    .collect();
                // Deleted sources whose agent has yet to remove what it made for them.
                let retirements = self.core.retirements_for(&hello.namespaces);
                // Room for the whole resync, however many runs are in flight.
                let (tx, rx) = mpsc::channel(
                    directives
                        .len()
                        .saturating_add(retirements.len())
                        .saturating_add(1 + AGENT_QUEUE),
                );
                let welcome = SchedulerMessage {
                    message: Some(ToAgent::Welcome(v1::Welcome {
                        active_runs: directives.len() as u32,
                    })),
                };
                let mut ok = tx.try_send(Ok(welcome)).is_ok();
                for d in directives {
                    ok &= tx
                        .try_send(Ok(SchedulerMessage {
                            message: Some(ToAgent::Directive(wire::agents::directive_to_wire(&d))),
                        }))
                        .is_ok();
                }
                for (source, keep_cache) in retirements {
                    ok &= tx
                        .try_send(Ok(SchedulerMessage {
                            message: Some(retire_message(&source, keep_cache)),
                        }))
                        .is_ok();
                }
                if !ok {
                    // Cannot happen: the queue was made to hold the resync.
                    warn!(agent = %hello.agent_id, "agent link closed during resync");
                    let _ = reply.send(Err(DriverError::Stopped));
                    return;
                }
                // The same identity again: the newer link replaces an older one serving any of
                // the same namespaces (a restarted agent whose old link is not yet known dead).
                let replaced: Vec<u64> = self
                    .agents
                    .iter()
                    .filter(|(_, a)| a.namespaces.iter().any(|n| hello.namespaces.contains(n)))
                    .map(|(id, _)| *id)
                    .collect();
                for old in replaced {
                    if let Some(a) = self.agents.get(&old) {
                        warn!(old = %a.agent_id, new = %hello.agent_id, namespaces = ?a.namespaces, "a newer agent link replaces one serving the same namespaces");
                    }
                    self.drop_agent(old);
                }
                info!(agent = %hello.agent_id, namespaces = ?hello.namespaces, "agent connected");
                self.agents.insert(
                    id,
                    AgentConn {
                        agent_id: hello.agent_id,
                        subject,
                        namespaces: hello.namespaces,
                        leases: hello.leases,
                        tx,
                    },
                );
                self.metrics.agents_connected.set(self.agents.len() as i64);
                if let Some(conn) = self.agents.get(&id) {
                    for namespace in conn.namespaces.clone() {
                        self.agents_left.remove(&namespace);
                        self.count_sources_without_agent(&namespace);
                    }
                }
                let _ = reply.send(Ok((id, rx)));
            }
            Command::AgentNamespaceGone { conn, namespace } => {
                let Some(agent) = self.agents.get(&conn) else {
                    return;
                };
                let namespaces = agent.namespaces.clone();
                let agent_id = agent.agent_id.clone();
                let deleted = self.core.namespace_deleted(&namespaces, &namespace, now);
                if deleted == 0 {
                    debug!(agent = %agent_id, namespace, "namespace gone: no source there");
                    return;
                }
                match self.flush() {
                    Ok(()) => {
                        warn!(agent = %agent_id, namespace, sources = deleted, "namespace is being deleted: its sources are deleted with it");
                        self.count_sources_without_agent(&namespace);
                    }
                    // The agent says so again on its next connect, while the namespace lasts.
                    Err(e) => {
                        warn!(namespace, error = %e, "deleting a deleted namespace's sources not committed")
                    }
                }
            }
            Command::AgentRetired { conn, source } => {
                let Some(agent) = self.agents.get(&conn) else {
                    return;
                };
                let namespaces = agent.namespaces.clone();
                if self.core.handle_retired(&namespaces, &source) {
                    match self.flush() {
                        Ok(()) => info!(source = %source, "deleted source retired by its agent"),
                        // Asked again on the agent's next connect.
                        Err(e) => warn!(source = %source, error = %e, "retirement not committed"),
                    }
                } else {
                    debug!(source = %source, "retirement of a source not awaiting it ignored");
                }
            }
            Command::AgentReport { conn, report } => {
                let Some(agent) = self.agents.get(&conn) else {
                    return;
                };
                let run_id = report.run_id.clone();
                let namespaces = agent.namespaces.clone();
                match self.core.handle_report(&namespaces, report, now) {
                    ReportOutcome::Applied => {
                        if let Err(e) = self.flush() {
                            // The agent re-reports on reconnect or its next observation.
                            warn!(run = %run_id, error = %e, "report not committed");
                        }
                    }
                    ReportOutcome::Stale(why) => debug!(run = %run_id, why, "stale report ignored"),
                }
            }
            Command::AgentLease { conn, request } => {
                let Some(agent) = self.agents.get(&conn) else {
                    return;
                };
                let grant = match self.core.lease(&agent.namespaces, &request, now) {
                    LeaseAnswer::Granted(left) => v1::LeaseGrant {
                        run_id: request.run_id,
                        request_id: request.request_id,
                        remaining: Some(wire::common::duration_to_wire(left)),
                        refused: String::new(),
                    },
                    LeaseAnswer::Refused(why) => {
                        debug!(agent = %agent.agent_id, run = request.run_id, why, "lease refused");
                        v1::LeaseGrant {
                            run_id: request.run_id,
                            request_id: request.request_id,
                            remaining: None,
                            refused: why,
                        }
                    }
                };
                let msg = SchedulerMessage {
                    message: Some(ToAgent::Lease(grant)),
                };
                if agent.tx.try_send(Ok(msg)).is_err() {
                    warn!(agent = %agent.agent_id, "agent not keeping up; dropping its link (it resyncs on reconnect)");
                    self.drop_agent(conn);
                }
            }
            Command::AgentGone { conn } => self.drop_agent(conn),
            Command::CloseStreams => {
                // Dropping the senders ends the response streams, so connections can drain.
                self.agents.clear();
                self.watchers.clear();
                self.count_watchers();
                self.metrics.agents_connected.set(0);
            }
        }
    }

    /// Refuses an application (a ServiceAccount acting in its own namespace) that a source of
    /// the target does not list in `copyTrigger.allowedServiceAccounts`.
    fn admit(&self, target: &CopyTarget, application: Option<&str>) -> Result<(), CoreError> {
        reads::admit(&self.core, target, application)
    }

    /// Commits what a mutating call did, then replies: the reply never precedes durability.
    /// In a group, the reply waits for the group's commit.
    fn answer<T: Send + 'static>(&mut self, reply: Reply<T>, result: Result<T, CoreError>) {
        let result = match result {
            Ok(v) => Ok(v),
            Err(e) => {
                // A refused request must leave nothing behind; if the core disagrees, the
                // store is the truth. What the group accepted before it is committed first, so
                // that the rebuild keeps it.
                if !self.core.drain_effects().is_empty() {
                    warn!(error = %e, "a refused request had effects; reloading from the store");
                    let grouped = self.group.is_some();
                    self.commit_group();
                    match restore(self.store.as_ref(), self.lease_policy) {
                        Ok((core, _)) => self.core = core,
                        Err(reload) => warn!(error = %reload, "store reload failed"),
                    }
                    if grouped {
                        self.group = Some(Group::default());
                    }
                }
                Err(e)
            }
        };
        let flushed = self.flush();
        match &mut self.group {
            Some(g) => {
                // A refusal stands whatever the commit does; an acceptance waits for it.
                g.replies.push(Box::new(move |committed| {
                    let out = result
                        .map_err(DriverError::from)
                        .and_then(|v| committed.map(|()| v));
                    let _ = reply.send(out);
                }));
            }
            None => {
                let out = result
                    .map_err(DriverError::from)
                    .and_then(|v| flushed.map(|()| v).map_err(DriverError::from));
                let _ = reply.send(out);
            }
        }
    }
}

impl Command {
    /// Answers the command with `error`, whatever it asked (a command without an answer is
    /// dropped).
    pub(crate) fn refuse(self, error: DriverError) {
        match self {
            Command::Apply { reply, .. } | Command::SetPaused { reply, .. } => {
                drop(reply.send(Err(error)));
            }
            Command::Read(read) => reads::refuse(read, error),
            Command::Delete { reply, .. } | Command::WatchCopy { reply, .. } => {
                drop(reply.send(Err(error)));
            }
            Command::SyncNow { reply, .. } => drop(reply.send(Err(error))),
            Command::Trigger { reply, .. } => drop(reply.send(Err(error))),
            Command::EndHold { reply, .. } => drop(reply.send(Err(error))),
            Command::AgentConnect { reply, .. } => drop(reply.send(Err(error))),
            Command::ReapWatchers
            | Command::AgentReport { .. }
            | Command::AgentLease { .. }
            | Command::AgentNamespaceGone { .. }
            | Command::AgentRetired { .. }
            | Command::AgentGone { .. }
            | Command::CloseStreams => {}
        }
    }

    /// A command that changes state through the core and is answered after its commit:
    /// these are grouped. Reads, agent links and the rest end a group.
    fn is_write(&self) -> bool {
        matches!(
            self,
            Command::Apply { .. }
                | Command::Delete { .. }
                | Command::SyncNow { .. }
                | Command::SetPaused { .. }
                | Command::Trigger { .. }
                | Command::EndHold { .. }
                | Command::AgentReport { .. }
        )
    }
}

/// Rebuilds the core from the store. Records that cannot be decoded or run are left in the
/// store, logged and returned; they never stop the scheduler from starting.
fn restore(
    store: &dyn Store,
    lease_policy: LeasePolicy,
) -> Result<(Scheduler, Vec<Quarantined>), anyhow::Error> {
    let (mut core, quarantined) = rebuild(store.load()?);
    core.set_lease_policy(lease_policy);
    Ok((core, quarantined))
}

/// The core rebuilt from what a store loaded, and every record left out (those that do not
/// decode, then those the core cannot run), each logged, as are the sources loaded although
/// they break a rule of this version.
pub(crate) fn rebuild(loaded: crate::store::Loaded) -> (Scheduler, Vec<Quarantined>) {
    let restored = Scheduler::restore(loaded.sources, loaded.runs, loaded.next_run);
    let mut quarantined = loaded.corrupt;
    quarantined.extend(restored.quarantined);
    for q in &quarantined {
        warn!(kind = q.kind, key = %q.key, reason = %q.reason, "stored record quarantined: kept in the store, not loaded");
    }
    for w in &restored.warnings {
        warn!(kind = w.kind, key = %w.key, reason = %w.reason, "stored source breaks a rule of this version; loaded as stored");
    }
    (restored.scheduler, quarantined)
}

/// The Retire of a deleted source, for its agent.
fn retire_message(source: &SourceKey, keep_cache: bool) -> ToAgent {
    ToAgent::Retire(v1::Retire {
        source: Some(wire::common::source_ref(source)),
        keep_cache,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, atomic::Ordering};

    use snapgate_scheduler_core::model::{CopyMethod, MoverInput, TriggerInput};

    use snapgate_proto::clock::SystemClock;

    use super::*;
    use crate::store::{FaultyStore, Loaded, RedbStore};

    /// Counts the commits of the store it wraps.
    struct Counting<S> {
        inner: S,
        commits: Arc<Mutex<Vec<usize>>>,
    }

    impl Counting<RedbStore> {
        /// A store in `dir`, and the number of writes of each commit it made.
        fn open(dir: &std::path::Path) -> (Self, Arc<Mutex<Vec<usize>>>) {
            let commits = Arc::new(Mutex::new(Vec::new()));
            let store = Self {
                inner: RedbStore::open(dir).unwrap(),
                commits: commits.clone(),
            };
            (store, commits)
        }
    }

    impl<S: Store> Store for Counting<S> {
        fn load(&self) -> Result<Loaded, StoreError> {
            self.inner.load()
        }
        fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
            let writes = batch.writes.len();
            self.inner.commit(batch)?;
            self.commits
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(writes);
            Ok(())
        }
    }

    fn spec(pvc: &str) -> SpecInput {
        SpecInput {
            trigger: Some(TriggerInput {
                schedule: None,
                manual: Some("first".into()),
            }),
            skip_initial_run: true,
            ..SpecInput::new(
                pvc,
                MoverInput::restic(CopyMethod::Snapshot, "restic-config"),
            )
        }
    }

    fn apply(
        name: &str,
        expected_version: u64,
    ) -> (Command, oneshot::Receiver<Result<Source, DriverError>>) {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Apply {
            key: SourceKey::new("apps", name),
            spec: Box::new(spec(name)),
            expected_version,
            author: None,
            reply,
        };
        (cmd, rx)
    }

    /// A driver on `store` with `commands` queued before it runs, so that it finds them all
    /// waiting; returns their answers once it has handled them.
    async fn run_with(
        store: Box<dyn Store>,
        commands: Vec<(Command, oneshot::Receiver<Result<Source, DriverError>>)>,
    ) -> (
        Vec<Result<Source, DriverError>>,
        DriverHandle,
        tokio::task::JoinHandle<()>,
    ) {
        let (handle, rx) = channel();
        let driver = Driver::start_on(
            store,
            Arc::new(SystemClock),
            Metrics::new(),
            LeasePolicy::default(),
            rx,
        )
        .unwrap();
        let mut answers = Vec::new();
        for (cmd, rx) in commands {
            handle
                .tx
                .try_send(cmd)
                .unwrap_or_else(|_| panic!("queue full"));
            answers.push(rx);
        }
        let task = tokio::spawn(driver.run());
        let mut out = Vec::new();
        for rx in answers {
            out.push(rx.await.unwrap_or(Err(DriverError::Stopped)));
        }
        (out, handle, task)
    }

    async fn get(handle: &DriverHandle, name: &str) -> Result<Source, DriverError> {
        handle
            .ask(|reply| {
                Command::Read(Read::Get {
                    key: SourceKey::new("apps", name),
                    reply,
                })
            })
            .await
    }

    #[tokio::test]
    async fn writes_waiting_together_are_committed_in_one_transaction_and_each_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (store, commits) = Counting::open(dir.path());
        // Ten creates with, in the middle, one refused (its name exists by then).
        let mut commands: Vec<_> = (0..5).map(|i| apply(&format!("db{i}"), 0)).collect();
        commands.push(apply("db0", 0));
        commands.extend((5..10).map(|i| apply(&format!("db{i}"), 0)));
        let (answers, handle, task) = run_with(Box::new(store), commands).await;
        for (i, a) in answers.iter().enumerate() {
            match (i, a) {
                (5, Err(DriverError::Core(CoreError::AlreadyExists { version: 1, .. }))) => {}
                (5, other) => panic!("the repeated create was not refused: {other:?}"),
                (_, Ok(s)) => assert_eq!(s.version, 1),
                (_, Err(e)) => panic!("create {i} failed: {e}"),
            }
        }
        let commits = commits.lock().unwrap().clone();
        assert_eq!(
            commits.len(),
            1,
            "one commit for the whole group: {commits:?}"
        );
        assert_eq!(commits[0], 10, "each created source written once");
        for i in 0..10 {
            assert!(get(&handle, &format!("db{i}")).await.is_ok());
        }
        // And what the group committed is what a restart finds.
        drop(handle);
        task.await.unwrap();
        let reopened = RedbStore::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(reopened.sources.len(), 10);
    }

    #[tokio::test]
    async fn a_group_whose_commit_fails_answers_every_request_with_the_error_and_applies_none() {
        let dir = tempfile::tempdir().unwrap();
        let (store, fail) = FaultyStore::new(RedbStore::open(dir.path()).unwrap());
        fail.store(1, Ordering::SeqCst);
        let commands: Vec<_> = (0..8).map(|i| apply(&format!("db{i}"), 0)).collect();
        let (answers, handle, _) = run_with(Box::new(store), commands).await;
        for a in &answers {
            assert!(
                matches!(a, Err(DriverError::Store(e)) if matches!(**e, StoreError::Injected)),
                "{a:?}"
            );
        }
        for i in 0..8 {
            assert!(
                matches!(
                    get(&handle, &format!("db{i}")).await,
                    Err(DriverError::Core(CoreError::NotFound(_)))
                ),
                "db{i} was applied although its commit failed"
            );
        }
        // The same requests succeed once the store does.
        let again = handle
            .ask(|reply| Command::Apply {
                key: SourceKey::new("apps", "db0"),
                spec: Box::new(spec("db0")),
                expected_version: 0,
                author: None,
                reply,
            })
            .await
            .unwrap();
        assert_eq!(again.version, 1);
        assert_eq!(fail.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_group_is_at_most_max_group_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, commits) = Counting::open(dir.path());
        let n = MAX_GROUP * 2 + 1;
        let commands: Vec<_> = (0..n).map(|i| apply(&format!("db{i}"), 0)).collect();
        let (answers, _handle, _) = run_with(Box::new(store), commands).await;
        assert!(answers.iter().all(Result::is_ok));
        let commits = commits.lock().unwrap().clone();
        assert_eq!(commits, vec![MAX_GROUP, MAX_GROUP, 1]);
    }
}
