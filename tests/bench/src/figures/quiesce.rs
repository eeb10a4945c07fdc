//! Figure 1: the quiesce window an application pays for a gated copy.
//!
//! A whole deployment ([`Cluster`]): the agent, the scheduler and the hosted API server, with
//! `workers` gated PVCs each copied by its own source, run after run (SyncNow, then the SDK's
//! `quiesced_copy` as an application runs it, then the run to its end). Per run:
//!
//! - leg 1: from the Trigger call (the instant the application's quiesce step returns, right
//!   before the SDK sends Trigger) to the VolumeSnapshot's create request reaching the API
//!   server (the journal's arrival time);
//! - leg 2: from the copy becoming ready (the first store change that shows it cut or
//!   `readyToUse`) to the application seeing Completed (its unquiesce step starting).
//!
//! The reference: one unary round trip to the bare tonic echo server (same TLS) plus one GET of
//! a PVC from the simulated API server, back to back, 1,000 times (or once per run if more).

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use snapgate_sdk::GuardOptions;

use super::Config;
use crate::{
    procs::{self, Security},
    report::{Report, Row},
    sim::Journal,
    stats::{Summary, fmt_count, fmt_duration},
    world::{self, Cluster, NS},
};

/// The goal: each leg's p99 within this many times the reference's p99.
const GOAL: f64 = 3.0;

/// Runs figure 1 for every TLS and authentication setting.
pub(crate) async fn run(cfg: &Config, report: &mut Report, figure: &str) -> anyhow::Result<()> {
    for &mode in &cfg.modes {
        // The plain setting carries the figure; the others measure a quarter as many runs.
        let runs = if mode == Security::PLAIN {
            cfg.runs
        } else {
            (cfg.runs / 4).max(cfg.workers)
        };
        run_mode(cfg, mode, runs, report, figure).await?;
    }
    Ok(())
}

async fn run_mode(
    cfg: &Config,
    mode: Security,
    runs: usize,
    report: &mut Report,
    figure: &str,
) -> anyhow::Result<()> {
    let dir = cfg.tempdir("quiesce")?;
    let workers = cfg.workers.min(runs).max(1);
    let mut cluster = Cluster::start(&cfg.bins, dir.path(), mode, |sim| {
        (0..workers).try_for_each(|i| sim.create_pvc(NS, &format!("data-{i}"), true))
    })
    .await?;
    for i in 0..workers {
        world::apply(
            &cluster.sdk,
            &format!("db-{i}"),
            &format!("data-{i}"),
            Duration::from_secs(3600),
        )
        .await?;
    }

    // The reference, before the runs.
    let (mut echo, port) =
        procs::spawn_echo(&cfg.bins, &cluster.sec, &dir.path().join("echo.log"))?;
    let echo_client = procs::echo_client(&mut echo, &cluster.sec, port).await?;
    let mut reference = reference(&echo_client, &cluster.kube, runs.max(1_000)).await?;
    let reference = Summary::of(&mut reference);
    drop(echo);

    // The runs: one warm-up run per worker (the agent connecting, the first run's cache and
    // ServiceAccount), then `runs` measured.
    let per_worker = runs.div_ceil(workers);
    let mut tasks = Vec::new();
    for i in 0..workers {
        let (sdk, journal) = (cluster.sdk.clone(), cluster.sim.journal.clone());
        tasks.push(tokio::spawn(worker(sdk, journal, i, per_worker)));
    }
    let mut trigger_to_create = Vec::new();
    let mut ready_to_seen = Vec::new();
    for t in tasks {
        let result = t.await.context("a worker panicked")?;
        let samples = match result {
            Ok(s) => s,
            Err(e) => {
                cluster.check_alive()?;
                return Err(e);
            }
        };
        for (a, b) in samples {
            trigger_to_create.push(a);
            ready_to_seen.push(b);
        }
    }
    cluster.check_alive()?;
    let n = trigger_to_create.len();
    let size = format!("{} gated runs, {}", fmt_count(n), mode.name());
    let legs = [
        (
            "Trigger call → copy create at API server",
            Summary::of(&mut trigger_to_create),
        ),
        (
            "copy ready → application sees Completed",
            Summary::of(&mut ready_to_seen),
        ),
    ];
    let ref_text = format!(
        "p99 {} (p50 {})",
        fmt_duration(reference.p99),
        fmt_duration(reference.p50)
    );
    for (name, s) in legs {
        let ratio = s.p99.as_secs_f64() / reference.p99.as_secs_f64();
        report.push(
            Row::new(figure, name, size.clone())
                .value(format!(
                    "p50 {} / p99 {} / max {}",
                    fmt_duration(s.p50),
                    fmt_duration(s.p99),
                    fmt_duration(s.max)
                ))
                .reference(ref_text.clone())
                .ratio(ratio)
                .goal(format!("p99 ≤ {GOAL}x"), ratio <= GOAL),
        );
    }
    Ok(())
}

/// `n` samples of one unary round trip to the echo server plus one GET of a PVC.
async fn reference(
    echo: &snapgate_sdk::Client,
    kube: &kube::Client,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let pvcs: kube::Api<PersistentVolumeClaim> = kube::Api::namespaced(kube.clone(), NS);
    let mut triggers = echo.triggers();
    let request = snapgate_sdk::proto::GetCopyStatusRequest {
        target: Some(snapgate_sdk::pvc(NS, "data-0")),
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let t = Instant::now();
        triggers.get_copy_status(request.clone()).await?;
        pvcs.get("data-0").await?;
        if i >= 20 {
            out.push(t.elapsed());
        }
    }
    Ok(out)
}

/// One PVC's runs, one after another: a warm-up run, then `runs` measured; each measured run's
/// two legs.
async fn worker(
    sdk: snapgate_sdk::Client,
    journal: Arc<Journal>,
    i: usize,
    runs: usize,
) -> anyhow::Result<Vec<(Duration, Duration)>> {
    let (source, pvc) = (format!("db-{i}"), format!("data-{i}"));
    let mut out = Vec::with_capacity(runs);
    for r in 0..=runs {
        let run_id = world::sync_now(&sdk, &source, &format!("quiesce-{i}-{r}")).await?;
        let triggered: Arc<Mutex<Option<Instant>>> = Arc::default();
        let seen: Arc<Mutex<Option<Instant>>> = Arc::default();
        let (t0, t3) = (triggered.clone(), seen.clone());
        let copy = tokio::time::timeout(
            Duration::from_secs(60),
            sdk.quiesced_copy(
                snapgate_sdk::pvc(NS, &pvc),
                move |_request| async move {
                    *t0.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                    Ok::<(), snapgate_sdk::Error>(())
                },
                move || async move {
                    *t3.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                    Ok::<(), snapgate_sdk::Error>(())
                },
                GuardOptions::default().hold_limit(Duration::from_secs(60)),
            ),
        )
        .await
        .with_context(|| format!("{run_id} of {source}: no copy within 60 s"))?
        .with_context(|| format!("{run_id} of {source}: the guarded copy failed"))?;
        anyhow::ensure!(
            copy.run_id == run_id,
            "{source}: copied {} instead of {run_id}",
            copy.run_id
        );
        world::wait_finished(&sdk, &source, &run_id, Duration::from_secs(60)).await?;
        if r == 0 {
            continue;
        }
        let t0 = triggered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .context("quiesce did not run")?;
        let t3 = seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .context("unquiesce did not run")?;
        let t1 = journal
            .snapshot_created(&pvc, t0)
            .with_context(|| format!("{run_id}: no VolumeSnapshot of {pvc} was created"))?;
        let t2 = journal
            .copy_ready(&pvc, t1)
            .with_context(|| format!("{run_id}: the copy of {pvc} never showed ready"))?;
        out.push((t1 - t0, t3.saturating_duration_since(t2)));
    }
    Ok(out)
}
