//! Figure 5: what one run costs the API server. A whole deployment (plain); a restic
//! Snapshot source on a gated PVC and one on an ungated PVC, each run once first (the first
//! run also makes the restic cache PVC and the mover's ServiceAccount), then once more with
//! the simulator's request log cleared: the agent's requests of that run, by verb and
//! resource, as the simulator counted them; the writes that changed nothing (a PATCH or PUT
//! answered with the object unchanged, or a write refused). Then a gated run waits for its
//! trigger for `wait` (10 minutes): every request the agent sends meanwhile, watch renewals
//! aside, is one the wait itself caused.
//!
//! The reference is VolSync's count for the same run, derived from its controller code
//! (backube/volsync; see [`VOLSYNC_GATED`] and BENCHMARKS.md): a lower bound, since every
//! reconcile it counts is one that must happen whatever the timing.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use snapgate_kube_sim::{RequestRecord, Verb};
use snapgate_sdk::GuardOptions;
use tokio::task::JoinHandle;

use super::Config;
use crate::{
    procs::Security,
    report::{Report, Row},
    sim::{AGENT_TOKEN, AGENT_USER},
    stats::fmt_duration,
    world::{self, Cluster, NS},
};

/// VolSync's writes for one steady-state run of a restic source with copyMethod Snapshot on a
/// PVC using the copy trigger, at the least (see BENCHMARKS.md for the derivation from
/// `internal/controller/replicationsource_controller.go`, `statemachine/machine.go`,
/// `volumehandler/volumehandler.go`, `mover/restic/mover.go`, `utils/cleanup.go`): 13 object
/// writes (3 PVC annotation updates; VolumeSnapshot, PVC and Job creates; a snapshot delete;
/// 6 deletecollections), 5 Events and 8 ReplicationSource status updates (one per reconcile).
pub(crate) const VOLSYNC_GATED: usize = 26;
/// The same for an ungated PVC: 10 object writes, 2 Events, 6 status updates.
pub(crate) const VOLSYNC_UNGATED: usize = 18;

/// Runs the two runs now and returns the wait, running in the background.
pub(crate) async fn run(
    cfg: &Config,
    report: &mut Report,
    figure: &str,
) -> anyhow::Result<JoinHandle<anyhow::Result<Vec<Row>>>> {
    let dir = cfg.tempdir("api")?;
    let mut cluster = Cluster::start(&cfg.bins, dir.path(), Security::PLAIN, |sim| {
        sim.create_pvc(NS, "gated", true)?;
        sim.create_pvc(NS, "plain", false)
    })
    .await?;
    let hour = Duration::from_secs(3600);
    world::apply(&cluster.sdk, "g", "gated", hour).await?;
    world::apply(&cluster.sdk, "u", "plain", hour).await?;
    for (what, source, pvc, gated, volsync) in [
        ("gated run", "g", "gated", true, VOLSYNC_GATED),
        ("ungated run", "u", "plain", false, VOLSYNC_UNGATED),
    ] {
        let first = one_run(&mut cluster, source, pvc, gated, "first").await?;
        let steady = one_run(&mut cluster, source, pvc, gated, "second").await?;
        let writes = steady.writes();
        report.push(
            Row::new(figure, format!("{what}: agent requests"), "second run")
                .value(format!(
                    "{} requests, {writes} writes",
                    steady.records.len()
                ))
                .note(format!(
                    "by verb: {}; the first run (restic cache PVC and mover ServiceAccount made): {} requests, {} writes",
                    steady.by_verb(),
                    first.records.len(),
                    first.writes()
                )),
        );
        report.push(
            Row::new(figure, format!("{what}: writes"), "second run")
                .value(writes.to_string())
                .reference(format!("VolSync ≥ {volsync}"))
                .ratio(writes as f64 / volsync as f64)
                .goal("fewer than VolSync", writes < volsync),
        );
        report.push(
            Row::new(
                figure,
                format!("{what}: writes that changed nothing"),
                "second run",
            )
            .value(steady.noops.to_string())
            .goal("0", steady.noops == 0)
            .note(steady.noop_list.join(", ")),
        );
    }

    // The wait: a gated run waiting for its trigger, the log cleared once it waits.
    let run_id = world::sync_now(&cluster.sdk, "g", "wait").await?;
    let mut statuses = cluster.sdk.triggers();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = statuses
            .get_copy_status(snapgate_sdk::proto::GetCopyStatusRequest {
                target: Some(snapgate_sdk::pvc(NS, "gated")),
            })
            .await?
            .into_inner();
        if s.run_id == run_id && s.state() == snapgate_sdk::CopyState::WaitingForTrigger {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{run_id} did not wait for a trigger within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the agent finish marking the PVC, then count from a clean log.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.sim.sim.requests().clear();
    let wait = cfg.wait;
    let figure = figure.to_owned();
    println!(
        "   the {} wait runs in the background while the other figures run",
        fmt_duration(wait)
    );
    Ok(tokio::spawn(async move {
        let _dir = dir;
        tokio::time::sleep(wait).await;
        cluster.check_alive()?;
        let records: Vec<RequestRecord> =
            cluster.sim.sim.requests().filter(|r| r.user == AGENT_USER);
        let renewals = records
            .iter()
            .filter(|r| r.verb == Some(Verb::Watch))
            .count();
        let caused: Vec<&RequestRecord> = records
            .iter()
            .filter(|r| r.verb != Some(Verb::Watch))
            .collect();
        let counted = Counted::of(caused.iter().map(|r| (*r).clone()).collect(), &[]);
        Ok(vec![
            Row::new(
                &figure,
                "waiting run: agent requests, watch renewals aside",
                format!("{} wait", fmt_duration(wait)),
            )
            .value(if caused.is_empty() {
                "0".to_owned()
            } else {
                format!("{} ({})", caused.len(), counted.by_verb())
            })
            .goal("0", caused.is_empty())
            .note(format!("{renewals} watch renewals")),
        ])
    }))
}

/// The agent's requests of one run.
struct Counted {
    records: Vec<RequestRecord>,
    noops: usize,
    noop_list: Vec<String>,
}

impl Counted {
    fn of(records: Vec<RequestRecord>, noop_writes: &[String]) -> Self {
        let refused: Vec<String> = records
            .iter()
            .filter(|r| is_write(r) && r.code >= 400)
            .map(|r| format!("{} {} refused {}", verb(r), what(r), r.code))
            .collect();
        let noop_list: Vec<String> = noop_writes.iter().cloned().chain(refused).collect();
        Self {
            noops: noop_list.len(),
            records,
            noop_list,
        }
    }

    fn writes(&self) -> usize {
        self.records.iter().filter(|r| is_write(r)).count()
    }

    /// `create volumesnapshots 1, patch persistentvolumeclaims 3, ...`.
    fn by_verb(&self) -> String {
        let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
        for r in &self.records {
            *counts.entry((verb(r), what(r))).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|((v, w), n)| format!("{v} {w} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn is_write(r: &RequestRecord) -> bool {
    matches!(
        r.verb,
        Some(Verb::Create | Verb::Update | Verb::Patch | Verb::Delete | Verb::DeleteCollection)
    )
}

fn verb(r: &RequestRecord) -> String {
    r.verb
        .map_or_else(|| r.method.to_lowercase(), |v| v.to_string())
}

fn what(r: &RequestRecord) -> String {
    match &r.subresource {
        Some(sub) => format!("{}/{sub}", r.resource),
        None if r.resource.is_empty() => r.path.clone(),
        None => r.resource.clone(),
    }
}

/// One run of `source` (gated: released through the SDK as an application does), its
/// requests counted from a cleared log until it has finished and the agent has settled.
async fn one_run(
    cluster: &mut Cluster,
    source: &str,
    pvc: &str,
    gated: bool,
    id: &str,
) -> anyhow::Result<Counted> {
    // Whatever the previous run left in flight settles first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.sim.sim.requests().clear();
    cluster.sim.journal.clear();
    let run_id = world::sync_now(&cluster.sdk, source, &format!("api-{source}-{id}")).await?;
    if gated {
        cluster
            .sdk
            .quiesced_copy(
                snapgate_sdk::pvc(NS, pvc),
                |_| async { Ok::<(), snapgate_sdk::Error>(()) },
                || async { Ok::<(), snapgate_sdk::Error>(()) },
                GuardOptions::default().hold_limit(Duration::from_secs(60)),
            )
            .await
            .with_context(|| format!("the guarded copy of {pvc}"))?;
    }
    if let Err(e) =
        world::wait_finished(&cluster.sdk, source, &run_id, Duration::from_secs(60)).await
    {
        cluster.check_alive()?;
        return Err(e);
    }
    // Requests the agent makes after reporting the run's end (none expected) are the run's.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let records = cluster.sim.sim.requests().filter(|r| r.user == AGENT_USER);
    let noop_writes: Vec<String> = cluster
        .sim
        .journal
        .entries()
        .into_iter()
        .filter(|e| e.token == AGENT_TOKEN && e.noop_write)
        .map(|e| format!("{} {} (unchanged)", e.method, e.uri))
        .collect();
    Ok(Counted::of(records, &noop_writes))
}
