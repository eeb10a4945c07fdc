//! The nine figures, their sizes (full and smoke) and their time budgets.

mod api;
mod flat;
mod ha;
mod herd;
mod memory;
mod quiesce;
mod restart;
mod soak;
mod throughput;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    Figure,
    procs::{Bins, Security},
    report::{Report, Row, Verdict},
    stats::{fmt_count, fmt_duration},
};

/// Sizes, durations and where things go.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Smoke mode (small sizes).
    pub(crate) smoke: bool,
    /// The binaries.
    pub(crate) bins: Bins,
    /// Where temporary directories go.
    pub(crate) tmp: Option<PathBuf>,
    /// Keep them.
    pub(crate) keep_dirs: bool,
    /// The largest number of sources (figures 2, 4, 6, 7).
    pub(crate) sources: usize,
    /// Figure 1: gated runs measured (plain); the TLS settings measure a quarter as many.
    pub(crate) runs: usize,
    /// Figure 1: runs in flight at once (each on its own PVC).
    pub(crate) workers: usize,
    /// Figure 2: the sizes of the herd all due at once (the jitter runs at the largest).
    pub(crate) herd_sizes: Vec<usize>,
    /// Figure 2: how long after the last due time a herd may take.
    pub(crate) herd_budget: Duration,
    /// Figure 2: stub agents (one namespace each).
    pub(crate) agents: usize,
    /// Figure 2: the jitter of the jittered variant.
    pub(crate) jitter_secs: i64,
    /// Figure 3: runs waiting for a trigger (each Trigger releases one).
    pub(crate) waiting_runs: usize,
    /// Figure 3: how long each rate is measured.
    pub(crate) measure: Duration,
    /// Figure 3: concurrent clients, and the connections they share.
    pub(crate) clients: (usize, usize),
    /// Figure 4: the sizes.
    pub(crate) flat_sizes: Vec<usize>,
    /// Figure 4: calls timed per operation.
    pub(crate) samples: usize,
    /// Figure 5: how long the waiting run waits.
    pub(crate) wait: Duration,
    /// Figure 6: runs in flight in the store.
    pub(crate) restart_runs: usize,
    /// Figure 7: PVCs the agent watches.
    pub(crate) pvcs: usize,
    /// Figures 1 and 3: the TLS and authentication settings measured.
    pub(crate) modes: Vec<Security>,
    /// Figure 8: sources scheduled every minute.
    pub(crate) soak_sources: usize,
    /// Figure 8: stub agents (one namespace each).
    pub(crate) soak_agents: usize,
    /// Figure 8: how long the soak runs (after its warm-up).
    pub(crate) soak: Duration,
    /// Figure 8: SyncNow rounds of the warm-up (each adds a finished run to every source's
    /// history).
    pub(crate) soak_warmup_rounds: usize,
    /// Figure 9: the replicas' etcd lease TTL (whole seconds: `--etcd-lease-ttl`).
    pub(crate) ha_ttl: Duration,
    /// Figure 9: leaders killed.
    pub(crate) ha_failovers: usize,
    /// Figure 9: idle sources the leader holds while it is killed.
    pub(crate) ha_sources: usize,
    /// Figure 9: sources applied one by one on the leader, each timed until the follower
    /// shows it.
    pub(crate) ha_lag_samples: usize,
}

impl Config {
    /// The sizes of full or smoke mode, with the command line's overrides.
    pub(crate) fn new(
        smoke: bool,
        sources: Option<usize>,
        runs: Option<usize>,
        wait_secs: Option<u64>,
        soak_secs: Option<u64>,
        bins: Bins,
        tmp: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let big = sources
            .unwrap_or(if smoke { 2_000 } else { 100_000 })
            .max(100);
        let mut flat_sizes = if smoke {
            vec![100, big]
        } else {
            vec![100, 10_000, big]
        };
        flat_sizes.retain(|&s| s <= big);
        flat_sizes.dedup();
        Ok(Self {
            smoke,
            bins,
            tmp,
            keep_dirs: false,
            sources: big,
            runs: runs.unwrap_or(if smoke { 40 } else { 1_000 }),
            workers: 4,
            herd_sizes: if smoke || big <= 10_000 {
                vec![big]
            } else {
                vec![10_000, big]
            },
            herd_budget: Duration::from_secs(if smoke { 20 } else { 90 }),
            agents: if smoke { 20 } else { 100 },
            jitter_secs: if smoke { 3 } else { 30 },
            waiting_runs: if smoke { 300 } else { 6_000 },
            measure: Duration::from_secs(if smoke { 1 } else { 5 }),
            clients: (64, 16),
            flat_sizes,
            samples: if smoke { 30 } else { 200 },
            wait: Duration::from_secs(wait_secs.unwrap_or(if smoke { 10 } else { 600 })),
            restart_runs: (big / 10).max(1),
            pvcs: if smoke { 200 } else { 1_000 },
            modes: vec![Security::PLAIN, Security::TLS, Security::TLS_AUTH],
            soak_sources: if smoke { 200 } else { 10_000 },
            soak_agents: if smoke { 4 } else { 100 },
            soak: Duration::from_secs(soak_secs.unwrap_or(if smoke { 70 } else { 600 })),
            soak_warmup_rounds: if smoke {
                2
            } else {
                snapgate_scheduler_core::HISTORY_PER_SOURCE
            },
            ha_ttl: Duration::from_secs(if smoke { 3 } else { 5 }),
            ha_failovers: if smoke { 3 } else { 10 },
            ha_sources: if smoke { 300 } else { 2_000 },
            ha_lag_samples: if smoke { 50 } else { 500 },
        })
    }

    /// One line per setting, printed first.
    pub(crate) fn describe(&self) -> String {
        format!(
            "snapgate-bench ({} mode): largest size {} sources; figure 1 {} gated runs ({} at once); figure 2 {} stub agents, jitter {} s; figure 3 {} clients on {} connections, {:?} per rate; figure 4 sizes {:?}, {} calls each; figure 5 wait {:?}; figure 6 {} runs in flight; figure 7 {} PVCs; figure 8 {} sources, {} agents, {:?} soak after {} warm-up rounds; figure 9 lease TTL {:?}, {} kills, {} sources, {} follower-lag samples\n{}",
            if self.smoke { "smoke" } else { "full" },
            fmt_count(self.sources),
            self.runs,
            self.workers,
            self.agents,
            self.jitter_secs,
            self.clients.0,
            self.clients.1,
            self.measure,
            self.flat_sizes,
            self.samples,
            self.wait,
            fmt_count(self.restart_runs),
            self.pvcs,
            fmt_count(self.soak_sources),
            self.soak_agents,
            self.soak,
            self.soak_warmup_rounds,
            self.ha_ttl,
            self.ha_failovers,
            fmt_count(self.ha_sources),
            self.ha_lag_samples,
            self.bins.describe(),
        )
    }

    /// A fresh temporary directory (removed when dropped).
    pub(crate) fn tempdir(&self, name: &str) -> anyhow::Result<tempfile::TempDir> {
        let prefix = format!("snapgate-bench-{name}-");
        let mut b = tempfile::Builder::new();
        b.prefix(&prefix).disable_cleanup(self.keep_dirs);
        Ok(match &self.tmp {
            Some(dir) => b.tempdir_in(dir)?,
            None => b.tempdir()?,
        })
    }

    /// The most a figure may take before it is reported as not finished.
    fn budget(&self, figure: Figure) -> Duration {
        let s = |full: u64, smoke: u64| Duration::from_secs(if self.smoke { smoke } else { full });
        match figure {
            Figure::Quiesce => s(900, 60),
            Figure::Herd => s(420, 60),
            Figure::Throughput => s(300, 60),
            Figure::Flat => s(600, 60),
            Figure::Api => s(120, 60),
            Figure::Restart => s(300, 60),
            Figure::Memory => s(240, 60),
            // The soak itself, its warm-up and reading every source back.
            Figure::Soak => self.soak + s(900, 90),
            // Starting etcd, two write rates, and each kill: the TTL, the takeover and the
            // killed replica's restart.
            Figure::Ha => s(300, 60),
        }
    }
}

/// The figure's label in the table.
fn label(figure: Figure) -> &'static str {
    match figure {
        Figure::Quiesce => "1 quiesce",
        Figure::Herd => "2 herd",
        Figure::Throughput => "3 throughput",
        Figure::Flat => "4 flat cost",
        Figure::Api => "5 API cost",
        Figure::Restart => "6 restart",
        Figure::Memory => "7 memory",
        Figure::Soak => "8 soak",
        Figure::Ha => "9 ha",
    }
}

/// Runs the selected figures in order, each within its budget, figure 5 first: its wait runs
/// in the background while the others run (it counts requests, which other figures do not
/// touch), and is reported last. A harness error in one figure is reported and the others still run;
/// the first is returned at the end.
pub(crate) async fn run_all(
    config: &Config,
    selected: &[Figure],
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut first_error: Option<anyhow::Error> = None;
    let mut background = None;
    // Figure 5 first: its wait (10 minutes) then overlaps the other figures.
    let mut order = selected.to_vec();
    order.sort_by_key(|f| *f != Figure::Api);
    for &figure in &order {
        let budget = config.budget(figure);
        println!(
            "== figure {} (budget {})",
            label(figure),
            fmt_duration(budget)
        );
        let started = Instant::now();
        let outcome = match figure {
            Figure::Quiesce => {
                tokio::time::timeout(budget, quiesce::run(config, report, label(figure))).await
            }
            Figure::Herd => {
                tokio::time::timeout(budget, herd::run(config, report, label(figure))).await
            }
            Figure::Throughput => {
                tokio::time::timeout(budget, throughput::run(config, report, label(figure))).await
            }
            Figure::Flat => {
                tokio::time::timeout(budget, flat::run(config, report, label(figure))).await
            }
            Figure::Api => {
                match tokio::time::timeout(budget, api::run(config, report, label(figure))).await {
                    Ok(Ok(wait)) => {
                        background = Some(wait);
                        Ok(Ok(()))
                    }
                    Ok(Err(e)) => Ok(Err(e)),
                    Err(e) => Err(e),
                }
            }
            Figure::Restart => {
                tokio::time::timeout(budget, restart::run(config, report, label(figure))).await
            }
            Figure::Memory => {
                tokio::time::timeout(budget, memory::run(config, report, label(figure))).await
            }
            Figure::Soak => {
                tokio::time::timeout(budget, soak::run(config, report, label(figure))).await
            }
            Figure::Ha => {
                tokio::time::timeout(budget, ha::run(config, report, label(figure))).await
            }
        };
        match outcome {
            Ok(Ok(())) => println!(
                "   figure {} took {}",
                label(figure),
                fmt_duration(started.elapsed())
            ),
            Ok(Err(e)) => {
                eprintln!("   figure {}: harness error: {e:#}", label(figure));
                first_error.get_or_insert(e.context(label(figure)));
            }
            Err(_) => report.push(did_not_finish(label(figure), budget)),
        }
    }
    if let Some(wait) = background {
        println!("== figure 5 API cost: the wait, finishing");
        match wait.await {
            Ok(Ok(rows)) => rows.into_iter().for_each(|r| report.push(r)),
            Ok(Err(e)) => {
                first_error.get_or_insert(e.context("5 API cost (the wait)"));
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::anyhow!("5 API cost (the wait): {e}"));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The row of a figure that ran out of time.
fn did_not_finish(figure: &str, budget: Duration) -> Row {
    let mut row = Row::new(figure, "the whole figure", "-")
        .value(format!("did not finish within {}", fmt_duration(budget)))
        .goal("finish", false);
    row.verdict = Verdict::Miss;
    row
}
