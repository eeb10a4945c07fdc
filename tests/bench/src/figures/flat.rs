//! Figure 4: the cost of one call as the store grows. For each size (100, 10,000, 100,000
//! sources, seeded idle over 100 namespaces), one client times `samples` calls of each of
//! GetSource and GetCopyStatus (random sources), ApplySource (new sources, manual with
//! skipInitialRun: no run) and SyncNow (distinct sources: one run each), one call at a time.
//! The reference of each call is the same call at the smallest size, same run. Plain, and
//! with TLS and authentication at the smallest and largest sizes.

use std::time::{Duration, Instant};

use chrono::Utc;
use snapgate_proto::v1;

use super::Config;
use crate::{
    procs::{self, Security},
    report::{Report, Row},
    seed::{self, Due},
    stats::{Summary, fmt_count, fmt_duration},
};

/// The goal: the largest size's p50 within this many times the smallest's.
const GOAL: f64 = 1.5;
const NAMESPACES: usize = 100;
const OPS: [&str; 4] = ["GetSource", "GetCopyStatus", "ApplySource", "SyncNow"];

/// Runs figure 4.
pub(crate) async fn run(cfg: &Config, report: &mut Report, figure: &str) -> anyhow::Result<()> {
    let smallest = cfg.flat_sizes.first().copied().unwrap_or(100);
    let largest = cfg.flat_sizes.last().copied().unwrap_or(100);
    for mode in [Security::PLAIN, Security::TLS_AUTH] {
        let sizes: Vec<usize> = if mode == Security::PLAIN {
            cfg.flat_sizes.clone()
        } else {
            vec![smallest, largest]
        };
        let mut base: Option<[Summary; 4]> = None;
        for size in sizes {
            let summaries = measure(cfg, mode, size).await?;
            let reference = *base.get_or_insert(summaries);
            for (k, op) in OPS.iter().enumerate() {
                let (s, r) = (summaries[k], reference[k]);
                let ratio = s.p50.as_secs_f64() / r.p50.as_secs_f64();
                let mut row = Row::new(
                    figure,
                    format!("{op} latency ({})", mode.name()),
                    format!("{} sources", fmt_count(size)),
                )
                .value(format!(
                    "p50 {} / p99 {}",
                    fmt_duration(s.p50),
                    fmt_duration(s.p99)
                ))
                .reference(format!(
                    "p50 {} at {}",
                    fmt_duration(r.p50),
                    fmt_count(smallest)
                ))
                .ratio(ratio);
                if size == largest && size != smallest {
                    row = row.goal(format!("p50 ≤ {GOAL}x"), ratio <= GOAL);
                }
                report.push(row);
            }
        }
    }
    Ok(())
}

/// Seeds `size` idle sources, starts the scheduler and times each call.
async fn measure(cfg: &Config, mode: Security, size: usize) -> anyhow::Result<[Summary; 4]> {
    let dir = cfg.tempdir("flat")?;
    let now = Utc::now();
    let name = |i: usize| (format!("ns-{:02}", i % NAMESPACES), format!("s-{i:06}"));
    let records = (0..size)
        .map(|i| {
            let (ns, n) = name(i);
            seed::source(&ns, &n, Due::Idle, 0, now).map(|r| r.0)
        })
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
    let (client, _) = procs::wait_serving(
        &mut scheduler,
        &sec,
        &url,
        ("ns-00", "probe"),
        Duration::from_secs(180),
    )
    .await?;
    let (mut sources, mut triggers) = (client.sources(), client.triggers());
    let n = cfg.samples;
    // A fixed pseudo-random walk over the sources (the same at every size, scaled).
    let pick = |k: usize| (k.wrapping_mul(2_654_435_761)) % size;
    let mut out = [Summary::default(); 4];
    for (op, slot) in out.iter_mut().enumerate() {
        // SyncNow needs a source with no run in flight per call.
        let count = if op == 3 {
            n.min(size.saturating_sub(5))
        } else {
            n
        };
        let mut samples = Vec::with_capacity(count);
        for k in 0..count + 5 {
            let (ns, src) = name(pick(k + op * 7919));
            let started = Instant::now();
            match op {
                0 => {
                    sources
                        .get_source(v1::GetSourceRequest {
                            namespace: ns,
                            name: src,
                        })
                        .await?;
                }
                1 => {
                    triggers
                        .get_copy_status(v1::GetCopyStatusRequest {
                            target: Some(snapgate_sdk::pvc(&ns, &src)),
                        })
                        .await?;
                }
                2 => {
                    sources
                        .apply_source(v1::ApplySourceRequest {
                            namespace: ns,
                            name: format!("new-{k:06}"),
                            spec: Some(v1::SourceSpec {
                                skip_initial_run: true,
                                ..seed::spec(&format!("new-{k:06}"), Due::Idle, 0)
                            }),
                            expected_version: 0,
                        })
                        .await?;
                }
                _ => {
                    // Distinct sources: each call starts a run.
                    let (ns, src) = name(k % size);
                    sources
                        .sync_now(v1::SyncNowRequest {
                            namespace: ns,
                            name: src,
                            request_id: format!("flat-{k}"),
                        })
                        .await?;
                }
            }
            if k >= 5 {
                samples.push(started.elapsed());
            }
        }
        *slot = Summary::of(&mut samples);
    }
    scheduler.check_alive()?;
    Ok(out)
}
