//! Figure 7: memory at rest. The scheduler's RSS with `sources` idle sources loaded (serving,
//! two seconds after its first answer), manual ones and scheduled ones (`@yearly`, due next
//! year), against the same with an empty store; the agent's RSS watching a namespace of `pvcs`
//! PVCs (two seconds after its PVC watch started), against an agent of an empty namespace of
//! the same simulator and scheduler.

use std::time::{Duration, Instant};

use chrono::Utc;

use super::Config;
use crate::{
    procs::{self, SecSetup, Security},
    report::{Report, Row},
    seed::{self, Due},
    sim::AGENT_TOKEN,
    stats::{fmt_count, fmt_mb},
    world::{self, Cluster, NS},
};

const GOAL_SCHEDULER: u64 = 300_000_000;
const GOAL_AGENT: u64 = 64_000_000;

/// Runs figure 7.
pub(crate) async fn run(cfg: &Config, report: &mut Report, figure: &str) -> anyhow::Result<()> {
    scheduler(cfg, report, figure).await?;
    agent(cfg, report, figure).await
}

async fn scheduler(cfg: &Config, report: &mut Report, figure: &str) -> anyhow::Result<()> {
    let dir = cfg.tempdir("memory")?;
    let now = Utc::now();
    let n = cfg.sources;
    // Manual sources, and scheduled ones (each holds its parsed cron schedule).
    let next_year = now + chrono::Duration::days(365);
    for (store, due) in [("manual", Due::Idle), ("scheduled", Due::At(next_year))] {
        let records = (0..n)
            .map(|i| {
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
        seed::write(&dir.path().join(store), records, false, now)?;
    }
    seed::write(&dir.path().join("empty"), Vec::new(), false, now)?;
    let signer = snapgate_kube_sim::KubeSim::new();
    let sec = SecSetup::new(&dir.path().join("sec"), Security::PLAIN, &signer)?;
    let mut at_rest = Vec::new();
    for store in ["empty", "manual", "scheduled"] {
        let port = procs::free_port();
        let mut s = procs::spawn_scheduler(
            &cfg.bins,
            &dir.path().join(store),
            port,
            &sec,
            &dir.path().join(format!("scheduler-{store}.log")),
        )?;
        procs::wait_serving(
            &mut s,
            &sec,
            &sec.url(port),
            ("ns-00", "s-000000"),
            Duration::from_secs(120),
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        s.check_alive()?;
        at_rest.push(s.memory()?);
    }
    let empty = at_rest[0];
    for (what, m) in [("manual", at_rest[1]), ("scheduled (@yearly)", at_rest[2])] {
        report.push(
            Row::new(
                figure,
                format!("scheduler RSS at rest, {what} sources"),
                format!("{} sources", fmt_count(n)),
            )
            .value(format!("{} (peak {})", fmt_mb(m.rss), fmt_mb(m.hwm)))
            .reference(format!("{} with none", fmt_mb(empty.rss)))
            .ratio(m.rss as f64 / empty.rss as f64)
            .goal(
                format!("< {}", fmt_mb(GOAL_SCHEDULER)),
                m.rss < GOAL_SCHEDULER,
            ),
        );
    }
    Ok(())
}

async fn agent(cfg: &Config, report: &mut Report, figure: &str) -> anyhow::Result<()> {
    let dir = cfg.tempdir("memory-agent")?;
    let pvcs = cfg.pvcs;
    let mut cluster = Cluster::start(&cfg.bins, dir.path(), Security::PLAIN, |sim| {
        sim.sim.ensure_namespace("empty");
        (0..pvcs).try_for_each(|i| sim.create_pvc(NS, &format!("pvc-{i:04}"), i % 2 == 0))
    })
    .await?;
    let url = cluster.url.clone();
    let mut reference = world::spawn_agent(
        &cfg.bins,
        dir.path(),
        &cluster.sim,
        &cluster.sec,
        &url,
        "empty",
        "agent-empty",
    )?;
    // Both agents have listed and watch their PVCs.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        cluster.check_alive()?;
        reference.check_alive()?;
        let watching = |ns: &str| {
            cluster.sim.journal.entries().iter().any(|e| {
                e.token == AGENT_TOKEN
                    && e.uri
                        .starts_with(&format!("/api/v1/namespaces/{ns}/persistentvolumeclaims?"))
                    && e.uri.contains("watch=true")
            })
        };
        if watching(NS) && watching("empty") {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agents did not watch their PVCs within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.check_alive()?;
    let (full, empty) = (cluster.agent.memory()?, reference.memory()?);
    report.push(
        Row::new(
            figure,
            "agent RSS watching its PVCs",
            format!("{pvcs} PVCs"),
        )
        .value(format!("{} (peak {})", fmt_mb(full.rss), fmt_mb(full.hwm)))
        .reference(format!("{} watching none", fmt_mb(empty.rss)))
        .ratio(full.rss as f64 / empty.rss as f64)
        .goal(format!("< {}", fmt_mb(GOAL_AGENT)), full.rss < GOAL_AGENT),
    );
    Ok(())
}
