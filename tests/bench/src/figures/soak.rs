//! Figure 8: a soak. `soak_sources` sources scheduled every minute (`* * * * *` with a 50 s
//! jitter, so their times spread over each minute), spread over `soak_agents` namespaces each
//! served by a stub agent that carries every run to its end (the PVC not gated, the copy, the
//! mover and the cleanup each reported done as soon as asked, or after a delay). The release
//! scheduler runs them for `soak` with faults injected, then every source's runs are read back.
//!
//! Before the timed part, a warm-up of SyncNow rounds fills every source's history of finished
//! runs (the scheduler keeps the newest 20 per source), so that memory is measured at the
//! steady state, where each new run ends one old one's record, and not while the history
//! grows.
//!
//! The faults, at fractions of the soak: at 20% every agent link is dropped (the stubs make new
//! connections and are sent every run in flight again); at 30% the scheduler is killed with
//! SIGKILL, left down 5 s and started again on its store; from 40% to 50% the stubs answer 3 s
//! late; at 60% every link is dropped again.
//!
//! What it checks, from `ListRuns` of every source at the end:
//! - every schedule time in the soak (but the last minute) is either met by a scheduled run
//!   starting within 30 s of it, or coalesced as the spec says (a run of the source was in
//!   flight at that time), or fell while the scheduler was down and is met by the catch-up run
//!   within 30 s of its restart: anything else is a missed time, reported against the goal 0;
//! - no schedule time starts two runs, no run failed, and no run has been in flight for more
//!   than 60 s at the end: any of these is a harness error (a broken invariant, not a figure);
//! - the scheduler's RSS over the second half (after its restart has loaded everything)
//!   grows by at most 5%.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use futures::{StreamExt as _, stream};
use snapgate_proto::v1;
use snapgate_scheduler_core::{SourceKey, schedule::Schedule};

use super::Config;
use crate::{
    procs::{self, Proc, SecSetup, Security},
    report::{Report, Row},
    seed::{self, Due},
    stats::{fmt_count, fmt_duration, fmt_mb},
    stub,
};

/// Every source's schedule.
const PATTERN: &str = "* * * * *";
/// Its jitter: each source's times are offset by a stable 0–50 s.
const JITTER_SECS: i64 = 50;
/// How late a scheduled run may start after its time (or after a restart) and still count.
const GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(30);
/// A run in flight longer than this at the end is stuck (a run takes well under a second
/// here, or 12 s while the stubs are slow).
const STUCK_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// Goal: RSS growth over the second half.
const GOAL_GROWTH: f64 = 1.05;
/// How long the scheduler stays down when killed.
const DOWN: Duration = Duration::from_secs(5);
/// The stubs' answers while they are slow.
const SLOW_MS: u64 = 3_000;
/// Calls in flight at once when reading or syncing every source.
const CONCURRENCY: usize = 64;

/// The stub agents, one per namespace, replaced as a whole to drop every link.
struct Stubs {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Stubs {
    async fn start(
        sec: &SecSetup,
        url: &str,
        namespaces: &[String],
        delay: &Arc<AtomicU64>,
        inbox: &Arc<stub::Inbox>,
    ) -> anyhow::Result<Self> {
        let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel(namespaces.len());
        let mut tasks = Vec::with_capacity(namespaces.len());
        for (a, ns) in namespaces.iter().enumerate() {
            let client = sec.client(url, None).await?;
            tasks.push(tokio::spawn(stub::run(
                client,
                format!("stub-{a}"),
                vec![ns.clone()],
                stub::Answer::Complete(delay.clone()),
                inbox.clone(),
                connected_tx.clone(),
            )));
        }
        for _ in namespaces {
            tokio::time::timeout(Duration::from_secs(60), connected_rx.recv())
                .await
                .context("a stub agent did not connect within 60 s")?
                .context("a stub agent stopped before it connected")?;
        }
        Ok(Self { tasks })
    }
}

impl Drop for Stubs {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

/// The scheduler process and how to reach it.
struct Scheduler {
    proc: Proc,
    sec: SecSetup,
    url: String,
    port: u16,
    data: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Scheduler {
    async fn start(&mut self, cfg: &Config) -> anyhow::Result<snapgate_sdk::Client> {
        self.proc = procs::spawn_scheduler(&cfg.bins, &self.data, self.port, &self.sec, &self.log)?;
        let (client, _) = procs::wait_serving(
            &mut self.proc,
            &self.sec,
            &self.url,
            ("ns-000", "probe"),
            Duration::from_secs(120),
        )
        .await?;
        Ok(client)
    }
}

/// Runs figure 8.
pub(crate) async fn run(cfg: &Config, report: &mut Report, figure: &str) -> anyhow::Result<()> {
    let n = cfg.soak_sources;
    let agents = cfg.soak_agents.clamp(1, n.max(1));
    let dir = cfg.tempdir("soak")?;
    let namespaces: Vec<String> = (0..agents).map(|a| format!("ns-{a:03}")).collect();
    let now = Utc::now();
    let mut records = Vec::with_capacity(n);
    let mut schedules: BTreeMap<(String, String), Schedule> = BTreeMap::new();
    for i in 0..n {
        let ns = &namespaces[i % agents];
        let name = format!("s-{i:06}");
        let (record, _) = seed::source(ns, &name, Due::Cron(PATTERN), JITTER_SECS, now)?;
        let key = SourceKey::new(ns, &name);
        let schedule = Schedule::parse(PATTERN, "", chrono::Duration::seconds(JITTER_SECS), &key)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        schedules.insert((ns.clone(), name), schedule);
        records.push(record);
    }
    let data = dir.path().join("data");
    seed::write(&data, records, false, now)?;

    let signer = snapgate_kube_sim::KubeSim::new();
    let sec = SecSetup::new(&dir.path().join("sec"), Security::PLAIN, &signer)?;
    let port = procs::free_port();
    let url = sec.url(port);
    let log = dir.path().join("scheduler.log");
    let proc = procs::spawn_scheduler(&cfg.bins, &data, port, &sec, &log)?;
    let mut scheduler = Scheduler {
        proc,
        sec,
        url,
        port,
        data,
        log,
    };
    let (mut client, _) = procs::wait_serving(
        &mut scheduler.proc,
        &scheduler.sec,
        &scheduler.url,
        ("ns-000", "probe"),
        Duration::from_secs(120),
    )
    .await?;
    let delay = Arc::new(AtomicU64::new(0));
    let inbox = Arc::new(stub::Inbox::default());
    let mut stubs =
        Stubs::start(&scheduler.sec, &scheduler.url, &namespaces, &delay, &inbox).await?;

    // Warm-up: SyncNow rounds until every source's history is full.
    let warm_started = Instant::now();
    let sources: Vec<(String, String)> = schedules.keys().cloned().collect();
    for round in 0..cfg.soak_warmup_rounds {
        let started = sync_all(&client, &sources, &format!("warm-{round}")).await?;
        wait_ended(
            &inbox,
            &started,
            Duration::from_secs(120),
            &mut scheduler.proc,
        )
        .await?;
    }
    let warm_up = warm_started.elapsed();
    println!(
        "   warm-up: {} SyncNow rounds of {} sources in {}",
        cfg.soak_warmup_rounds,
        fmt_count(n),
        fmt_duration(warm_up)
    );

    // The soak, with its faults.
    let start = Utc::now();
    let started = Instant::now();
    let at = |fraction: f64| started + cfg.soak.mul_f64(fraction);
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let mut down: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    let mut steps = [
        (0.2, Step::DropLinks),
        (0.3, Step::KillScheduler),
        (0.4, Step::Slow(true)),
        (0.5, Step::Slow(false)),
        (0.6, Step::DropLinks),
    ]
    .into_iter()
    .peekable();
    while started.elapsed() < cfg.soak {
        scheduler.proc.check_alive()?;
        let rss = scheduler.proc.memory()?.rss;
        samples.push((Instant::now(), rss));
        // The trajectory, every tenth of the soak, so that growth can be placed in time.
        if samples
            .len()
            .is_multiple_of((cfg.soak.as_secs() / 10).max(1) as usize)
        {
            println!(
                "   {:>5.1} s: scheduler RSS {}",
                started.elapsed().as_secs_f64(),
                fmt_mb(rss)
            );
        }
        if let Some(&(fraction, step)) = steps.peek()
            && Instant::now() >= at(fraction)
        {
            steps.next();
            println!("   {:>5.1} s: {step:?}", started.elapsed().as_secs_f64());
            match step {
                Step::DropLinks => {
                    drop(stubs);
                    stubs =
                        Stubs::start(&scheduler.sec, &scheduler.url, &namespaces, &delay, &inbox)
                            .await?;
                }
                Step::KillScheduler => {
                    let killed = Utc::now();
                    scheduler.proc.kill();
                    tokio::time::sleep(DOWN).await;
                    client = scheduler.start(cfg).await?;
                    down = Some((killed, Utc::now()));
                }
                Step::Slow(on) => delay.store(
                    if on { SLOW_MS } else { 0 },
                    std::sync::atomic::Ordering::Relaxed,
                ),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let end = Utc::now();
    delay.store(0, std::sync::atomic::Ordering::Relaxed);

    // Every source's runs, read back.
    let runs = list_all(&client, &sources).await?;
    drop(stubs);
    scheduler.proc.check_alive()?;

    let mut verdict = Verdicts::default();
    for (key, schedule) in &schedules {
        let Some(runs) = runs.get(key) else {
            bail!("no runs were read for {}/{}", key.0, key.1);
        };
        verdict.check(key, schedule, runs, start, end, down);
    }
    let halfway = started + cfg.soak / 2;
    let second_half: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= halfway)
        .map(|(_, rss)| *rss)
        .collect();
    let (first_rss, last_rss, max_rss) = match (second_half.first(), second_half.last()) {
        (Some(&a), Some(&b)) => (a, b, second_half.iter().copied().max().unwrap_or(b)),
        _ => bail!("no memory samples in the soak's second half"),
    };

    let size = format!(
        "{} sources, {agents} agents, {} soak",
        fmt_count(n),
        fmt_duration(cfg.soak)
    );
    report.push(
        Row::new(figure, "scheduled runs (faults injected)", size.clone())
            .value(format!(
                "{} runs in the soak ({} scheduled); {} of {} schedule times missed, {} coalesced, {} met by the catch-up after the restart",
                fmt_count(verdict.runs),
                fmt_count(verdict.scheduled),
                fmt_count(verdict.missed),
                fmt_count(verdict.times),
                fmt_count(verdict.coalesced),
                fmt_count(verdict.caught_up),
            ))
            .goal("no time missed", verdict.missed == 0)
            .note(verdict.first_missed.clone().unwrap_or_default()),
    );
    report.push(
        Row::new(figure, "scheduler RSS over the second half", size)
            .value(format!(
                "{} → {} (max {})",
                fmt_mb(first_rss),
                fmt_mb(last_rss),
                fmt_mb(max_rss)
            ))
            .reference(format!("{} at its start", fmt_mb(first_rss)))
            .ratio(max_rss as f64 / first_rss as f64)
            .goal(
                format!("max ≤ {GOAL_GROWTH}× the start"),
                max_rss as f64 <= first_rss as f64 * GOAL_GROWTH,
            )
            .note(format!(
                "warm-up {} ({} SyncNow rounds); {} samples",
                fmt_duration(warm_up),
                cfg.soak_warmup_rounds,
                second_half.len()
            )),
    );
    // Broken invariants are errors, not figures.
    let mut broken = Vec::new();
    if verdict.doubled > 0 {
        broken.push(format!(
            "{} schedule times started two runs (first: {})",
            verdict.doubled,
            verdict.first_doubled.clone().unwrap_or_default()
        ));
    }
    if verdict.failed > 0 {
        broken.push(format!(
            "{} runs failed (first: {})",
            verdict.failed,
            verdict.first_failed.clone().unwrap_or_default()
        ));
    }
    if verdict.stuck > 0 {
        broken.push(format!(
            "{} runs in flight for over {} s at the end (first: {})",
            verdict.stuck,
            STUCK_AFTER.num_seconds(),
            verdict.first_stuck.clone().unwrap_or_default()
        ));
    }
    if !broken.is_empty() {
        bail!("the soak broke an invariant: {}", broken.join("; "));
    }
    Ok(())
}

/// A fault (or its end) at a point of the soak.
#[derive(Debug, Clone, Copy)]
enum Step {
    DropLinks,
    KillScheduler,
    Slow(bool),
}

/// SyncNow on every source with `request_id`; the ids of the runs it started.
async fn sync_all(
    client: &snapgate_sdk::Client,
    sources: &[(String, String)],
    request_id: &str,
) -> anyhow::Result<Vec<String>> {
    let answers: Vec<anyhow::Result<v1::SyncNowResponse>> = stream::iter(sources)
        .map(|(ns, name)| {
            let mut sources = client.sources();
            let request = v1::SyncNowRequest {
                namespace: ns.clone(),
                name: name.clone(),
                request_id: request_id.into(),
            };
            async move {
                Ok(sources
                    .sync_now(request)
                    .await
                    .context("SyncNow")?
                    .into_inner())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut started = Vec::new();
    for answer in answers {
        let answer = answer?;
        if answer.started {
            started.push(answer.run_id);
        }
    }
    Ok(started)
}

/// Waits until a CLEANUP directive has reached the stubs for every run of `runs` (each was
/// then answered), or fails after `within`.
async fn wait_ended(
    inbox: &stub::Inbox,
    runs: &[String],
    within: Duration,
    scheduler: &mut Proc,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        scheduler.check_alive()?;
        let cleaned: std::collections::HashSet<String> = inbox
            .received()
            .into_iter()
            .filter(|r| r.phase == v1::DirectivePhase::Cleanup as i32)
            .map(|r| r.run_id)
            .collect();
        let left = runs.iter().filter(|r| !cleaned.contains(*r)).count();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{left} of {} warm-up runs did not reach cleanup within {within:?}",
                runs.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A source: its namespace and name.
type Key = (String, String);

/// Every source's runs (newest first, as many as the scheduler keeps).
async fn list_all(
    client: &snapgate_sdk::Client,
    sources: &[Key],
) -> anyhow::Result<BTreeMap<Key, Vec<v1::Run>>> {
    let answers: Vec<anyhow::Result<(Key, Vec<v1::Run>)>> = stream::iter(sources)
        .map(|(ns, name)| {
            let mut sources = client.sources();
            let key = (ns.clone(), name.clone());
            async move {
                let runs = sources
                    .list_runs(v1::ListRunsRequest {
                        namespace: key.0.clone(),
                        name: key.1.clone(),
                        limit: 100,
                    })
                    .await
                    .with_context(|| format!("ListRuns {}/{}", key.0, key.1))?
                    .into_inner()
                    .runs;
                Ok((key, runs))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    answers.into_iter().collect()
}

/// What the runs read back show.
#[derive(Debug, Default)]
struct Verdicts {
    /// Runs started in the soak.
    runs: usize,
    /// Of them, started by the schedule.
    scheduled: usize,
    /// Schedule times checked.
    times: usize,
    missed: usize,
    coalesced: usize,
    caught_up: usize,
    doubled: usize,
    failed: usize,
    stuck: usize,
    first_missed: Option<String>,
    first_doubled: Option<String>,
    first_failed: Option<String>,
    first_stuck: Option<String>,
}

fn time(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let t = t?;
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

impl Verdicts {
    /// Checks one source's runs against its schedule times in `start..end`, given the
    /// scheduler's downtime.
    fn check(
        &mut self,
        key: &(String, String),
        schedule: &Schedule,
        runs: &[v1::Run],
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        down: Option<(DateTime<Utc>, DateTime<Utc>)>,
    ) {
        let name = format!("{}/{}", key.0, key.1);
        let spans: Vec<(DateTime<Utc>, Option<DateTime<Utc>>, bool)> = runs
            .iter()
            .filter_map(|r| {
                let started = time(r.start_time.as_ref())?;
                let scheduled = r.reason == v1::RunReason::Schedule as i32;
                Some((started, time(r.end_time.as_ref()), scheduled))
            })
            .collect();
        for run in runs {
            let Some(started) = time(run.start_time.as_ref()) else {
                continue;
            };
            if started < start {
                continue;
            }
            self.runs += 1;
            if run.reason == v1::RunReason::Schedule as i32 {
                self.scheduled += 1;
            }
            match time(run.end_time.as_ref()) {
                Some(_) if run.result != v1::RunResult::Successful as i32 => {
                    self.failed += 1;
                    self.first_failed
                        .get_or_insert_with(|| format!("{name} {}: {}", run.id, run.message));
                }
                Some(_) => {}
                None if end - started > STUCK_AFTER => {
                    self.stuck += 1;
                    self.first_stuck
                        .get_or_insert_with(|| format!("{name} {} since {started}", run.id));
                }
                None => {}
            }
        }
        // The schedule times of the soak, but those too close to its end to have been met.
        let times = std::iter::successors(schedule.next_after(start), |t| schedule.next_after(*t))
            .take_while(|t| *t + GRACE < end);
        for t in times {
            self.times += 1;
            let met = spans
                .iter()
                .filter(|(s, _, scheduled)| *scheduled && *s >= t && *s <= t + GRACE)
                .count();
            if met > 1 {
                self.doubled += 1;
                self.first_doubled
                    .get_or_insert_with(|| format!("{name} at {t}: {met} runs"));
            }
            if met > 0 {
                continue;
            }
            let in_flight = spans
                .iter()
                .any(|(s, e, _)| *s < t && e.is_none_or(|e| e > t));
            if in_flight {
                self.coalesced += 1;
                continue;
            }
            if let Some((killed, up)) = down
                && t >= killed
                && t <= up
                && spans.iter().any(|(s, _, _)| *s >= up && *s <= up + GRACE)
            {
                self.caught_up += 1;
                continue;
            }
            self.missed += 1;
            self.first_missed
                .get_or_insert_with(|| format!("first missed: {name} at {t}"));
        }
    }
}
