//! Figure 3: throughput at 64 concurrent clients (sharing 16 connections: with TLS the
//! scheduler lets one address hold at most 16 handshakes at once).
//!
//! `waiting_runs` gated runs wait for a trigger: their sources are seeded due, the scheduler
//! starts their runs when it loads them, and a stub agent answers each GATE directive with the
//! PVC seen gated. Then the clients Trigger them, one run each (every accepted Trigger is a
//! commit: a durable Trigger), for `measure`; then GetCopyStatus on random PVCs for `measure`.
//! The reference: the same clients against the bare tonic echo server, same TLS.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use chrono::Utc;
use snapgate_proto::v1;

use super::Config;
use crate::{
    procs::{self, Security},
    report::{Report, Row},
    seed::{self, Due},
    stats::{fmt_count, fmt_rate},
    stub,
};

const NS: &str = "bench";

/// Runs figure 3 for every TLS and authentication setting.
pub(crate) async fn run(cfg: &Config, report: &mut Report, figure: &str) -> anyhow::Result<()> {
    for &mode in &cfg.modes {
        run_mode(cfg, mode, report, figure).await?;
    }
    Ok(())
}

async fn run_mode(
    cfg: &Config,
    mode: Security,
    report: &mut Report,
    figure: &str,
) -> anyhow::Result<()> {
    let dir = cfg.tempdir("throughput")?;
    let w = cfg.waiting_runs;
    let now = Utc::now();
    let records = (0..w)
        .map(|i| seed::source(NS, &format!("p-{i:05}"), Due::Now, 0, now).map(|r| r.0))
        .collect::<anyhow::Result<Vec<_>>>()?;
    seed::write(&dir.path().join("data"), records, false, now)?;

    let signer = snapgate_kube_sim::KubeSim::new();
    let sec = procs::SecSetup::new(&dir.path().join("sec"), mode, &signer)?;
    let port = procs::free_port();
    let url = sec.url(port);
    let mut scheduler = procs::spawn_scheduler(
        &cfg.bins,
        &dir.path().join("data"),
        port,
        &sec,
        &dir.path().join("scheduler.log"),
    )?;
    let (_, _) = procs::wait_serving(
        &mut scheduler,
        &sec,
        &url,
        (NS, "probe"),
        Duration::from_secs(120),
    )
    .await?;
    let agent_token = sec.token(&signer, (NS, "snapgate-agent"));
    let inbox = Arc::new(stub::Inbox::default());
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let stub_client = sec.client(&url, agent_token.as_deref()).await?;
    let stub = tokio::spawn(stub::run(
        stub_client,
        "stub".into(),
        vec![NS.into()],
        stub::Answer::Gate,
        inbox.clone(),
        tx,
    ));
    let _stub = AbortOnDrop(stub);
    // Every run waits once its WAIT directive has arrived.
    let deadline = Instant::now() + Duration::from_secs(if cfg.smoke { 30 } else { 120 });
    loop {
        scheduler.check_alive()?;
        let waiting = inbox
            .received()
            .iter()
            .filter(|r| r.phase == v1::DirectivePhase::Wait as i32)
            .count();
        if waiting >= w {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {waiting} of {w} runs were waiting for a trigger after {:?}",
            deadline.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let clients = connect(&sec, &url, cfg.clients.1).await?;
    let triggers = rate(&clients, cfg.clients.0, cfg.measure, w, trigger_call).await;
    scheduler.check_alive()?;
    let Rate {
        per_sec: triggers,
        failed: trigger_errors,
        exhausted,
        ..
    } = triggers?;
    let statuses = rate(
        &clients,
        cfg.clients.0,
        cfg.measure,
        usize::MAX,
        status_call,
    )
    .await;
    scheduler.check_alive()?;
    let Rate {
        per_sec: statuses,
        failed: status_errors,
        ..
    } = statuses?;

    let (mut echo, echo_port) = procs::spawn_echo(&cfg.bins, &sec, &dir.path().join("echo.log"))?;
    procs::echo_client(&mut echo, &sec, echo_port).await?;
    let echo_clients = connect(&sec, &sec.url(echo_port), cfg.clients.1).await?;
    let echo_triggers = rate(
        &echo_clients,
        cfg.clients.0,
        cfg.measure,
        usize::MAX,
        trigger_call,
    )
    .await?
    .per_sec;
    let echo_statuses = rate(
        &echo_clients,
        cfg.clients.0,
        cfg.measure,
        usize::MAX,
        status_call,
    )
    .await?
    .per_sec;
    drop(echo);

    let size = format!(
        "{} clients / {} conns, {}",
        cfg.clients.0,
        cfg.clients.1,
        mode.name()
    );
    for (what, value, reference, goal, errors, note) in [
        (
            "durable Triggers/s",
            triggers,
            echo_triggers,
            0.5,
            trigger_errors,
            exhausted.then(|| {
                format!(
                    "all {} waiting runs were triggered before the {:?} were up",
                    fmt_count(w),
                    cfg.measure
                )
            }),
        ),
        (
            "GetCopyStatus/s",
            statuses,
            echo_statuses,
            0.8,
            status_errors,
            None,
        ),
    ] {
        anyhow::ensure!(errors == 0, "{what}: {errors} calls failed");
        let ratio = value / reference;
        let mut row = Row::new(figure, what, size.clone())
            .value(fmt_rate(value))
            .reference(format!("echo {}", fmt_rate(reference)))
            .ratio(ratio)
            .goal(format!("≥ {goal}x echo"), ratio >= goal);
        if let Some(n) = note {
            row = row.note(n);
        }
        report.push(row);
    }
    Ok(())
}

/// `n` connections to `url`.
pub(crate) async fn connect(
    sec: &procs::SecSetup,
    url: &str,
    n: usize,
) -> anyhow::Result<Vec<snapgate_sdk::Client>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(sec.client(url, None).await.context("connecting a client")?);
    }
    Ok(out)
}

/// One call of a rate measurement: the client and the call's index.
pub(crate) type Call = fn(
    snapgate_sdk::Client,
    usize,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), tonic::Status>> + Send>,
>;

/// Trigger of the waiting run on PVC `p-<i>` (value `v-<i>`).
fn trigger_call(
    c: snapgate_sdk::Client,
    i: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::Status>> + Send>> {
    Box::pin(async move {
        c.triggers()
            .trigger(v1::TriggerRequest {
                target: Some(snapgate_sdk::pvc(NS, &format!("p-{i:05}"))),
                value: format!("v-{i}"),
                ..Default::default()
            })
            .await
            .map(drop)
    })
}

/// GetCopyStatus of PVC `p-<i>`.
fn status_call(
    c: snapgate_sdk::Client,
    i: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::Status>> + Send>> {
    Box::pin(async move {
        c.triggers()
            .get_copy_status(v1::GetCopyStatusRequest {
                target: Some(snapgate_sdk::pvc(NS, &format!("p-{:05}", i % 256))),
            })
            .await
            .map(drop)
    })
}

/// What [`rate`] measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rate {
    /// Calls that succeeded, per second.
    pub(crate) per_sec: f64,
    /// Calls that failed.
    pub(crate) failed: usize,
    /// Whether the indices ran out before the time was up.
    pub(crate) exhausted: bool,
    /// The latency of every call that succeeded.
    pub(crate) latencies: Vec<Duration>,
}

/// `callers` tasks over `clients` calling `call` with indices 0, 1, 2, ... until `limit`
/// indices are used or `measure` is over; the rate of calls that succeeded, the failures,
/// whether the indices ran out first, and each successful call's latency.
pub(crate) async fn rate(
    clients: &[snapgate_sdk::Client],
    callers: usize,
    measure: Duration,
    limit: usize,
    call: Call,
) -> anyhow::Result<Rate> {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let until = started + measure;
    let tasks: Vec<_> = (0..callers)
        .map(|k| {
            let client = clients[k % clients.len()].clone();
            let (next, failed) = (next.clone(), failed.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= limit {
                        break;
                    }
                    let sent = Instant::now();
                    match call(client.clone(), i).await {
                        Ok(()) => latencies.push(sent.elapsed()),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await?);
    }
    let elapsed = started.elapsed();
    Ok(Rate {
        per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        failed: failed.load(Ordering::Relaxed),
        exhausted: next.load(Ordering::Relaxed) >= limit,
        latencies,
    })
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
