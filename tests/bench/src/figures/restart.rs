//! Figure 6: restart. A store seeded with `sources` sources of which `restart_runs` have a run
//! in flight (started by the core, as the scheduler would have, and stored); the time from
//! spawning the scheduler process to its first answered SourceService call (the driver has
//! loaded the store and serves), the median of three starts. The reference: the same with an
//! empty store, same run.

use std::time::{Duration, Instant};

use chrono::Utc;

use super::Config;
use crate::{
    procs::{self, SecSetup, Security},
    report::{Report, Row},
    seed::{self, Due},
    stats::{fmt_count, fmt_duration},
};

/// The goal: serving within this of the process starting.
const GOAL: Duration = Duration::from_secs(2);
const TRIALS: usize = 3;

/// Runs figure 6.
pub(crate) async fn run(cfg: &Config, report: &mut Report, figure: &str) -> anyhow::Result<()> {
    let dir = cfg.tempdir("restart")?;
    let now = Utc::now();
    let (n, in_flight) = (cfg.sources, cfg.restart_runs.min(cfg.sources));
    let records = (0..n)
        .map(|i| {
            let due = if i < in_flight { Due::Now } else { Due::Idle };
            seed::source(
                &format!("ns-{:02}", i % 100),
                &format!("s-{i:06}"),
                due,
                0,
                now,
            )
            .map(|r| r.0)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let seeded = seed::write(&dir.path().join("full"), records, true, now)?;
    seed::write(&dir.path().join("empty"), Vec::new(), false, now)?;
    let signer = snapgate_kube_sim::KubeSim::new();
    let sec = SecSetup::new(&dir.path().join("sec"), Security::PLAIN, &signer)?;
    let empty = median_start(cfg, &sec, &dir.path().join("empty"), dir.path()).await?;
    let full = median_start(cfg, &sec, &dir.path().join("full"), dir.path()).await?;
    let ratio = full.as_secs_f64() / empty.as_secs_f64();
    report.push(
        Row::new(
            figure,
            "process start → serving (median of 3)",
            format!(
                "{} sources, {} runs in flight",
                fmt_count(seeded.sources),
                fmt_count(seeded.runs)
            ),
        )
        .value(fmt_duration(full))
        .reference(format!("{} with an empty store", fmt_duration(empty)))
        .ratio(ratio)
        .goal(format!("< {}", fmt_duration(GOAL)), full < GOAL),
    );
    Ok(())
}

async fn median_start(
    cfg: &Config,
    sec: &SecSetup,
    data: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(TRIALS);
    for trial in 0..TRIALS {
        let port = procs::free_port();
        let url = sec.url(port);
        let started = Instant::now();
        let mut scheduler = procs::spawn_scheduler(
            &cfg.bins,
            data,
            port,
            sec,
            &dir.join(format!("scheduler-{trial}.log")),
        )?;
        let (_, serving) = procs::wait_serving(
            &mut scheduler,
            sec,
            &url,
            ("ns-00", "s-000000"),
            Duration::from_secs(120),
        )
        .await?;
        times.push(serving - started);
        scheduler.kill();
    }
    times.sort();
    Ok(times[TRIALS / 2])
}
