//! What every gated run must show once it is over, whatever hit it on the way (a process
//! killed, a link cut, the API server failing): the promise of `docs/copy-trigger.md`, checked
//! from outside through the CLI, the API server and a recorder of the run's copies. Each
//! failure names the test's case and the invariant it broke.

use std::collections::BTreeSet;

use chrono::{DateTime, SubsecRound, Utc};
use kube::{
    Api,
    api::{DynamicObject, ListParams},
};
use serde_json::Value;
use snapgate_contract::{
    LATEST_COPY_STATUS as STATUS, LATEST_COPY_TRIGGER as LATEST,
    LATEST_COPY_TRIGGER_WAITING_SINCE as SINCE,
};
use snapgate_e2e::recorder::resource;

use super::{Cluster, NS, Recorder};

/// An application's hold: from the moment it was quiesced to the moment it started to
/// unquiesce.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hold {
    pub(crate) from: DateTime<Utc>,
    pub(crate) to: DateTime<Utc>,
}

/// The run a case expects: its source, PVC, the VolumeSnapshot it copies to, the value that
/// released it, and the application's hold when the case has one.
#[derive(Clone, Debug)]
pub(crate) struct Expected<'a> {
    /// The case, as failures name it (e.g. `Agent at Released`).
    pub(crate) case: &'a str,
    pub(crate) source: &'a str,
    pub(crate) pvc: &'a str,
    pub(crate) copy: &'a str,
    pub(crate) trigger: &'a str,
    pub(crate) hold: Option<Hold>,
}

impl Expected<'_> {
    fn fail(&self, invariant: &str, detail: impl std::fmt::Display) -> ! {
        panic!("{}: invariant `{invariant}` broken: {detail}", self.case)
    }
}

/// Waits (bounded) for the source's run to finish, then checks every invariant:
///
/// - **one run**: it ended `Successful` and is the source's only run;
/// - **one copy**: one VolumeSnapshot was ever made for it (one name, one uid, whatever
///   restarts came between; with kube-sim hosted in the test, one create of it answered);
/// - **the trigger released one run**: it was released by `trigger`, and no other run was;
/// - **the PVC agrees with the scheduler**: `Completed`, `latest-copy-trigger` the value that
///   released the run, no waiting mark;
/// - **the copy point inside the hold**, when there is one: the snapshot's `creationTime` (whole
///   seconds) between the start of the hold and its end;
/// - **nothing left**: no VolumeSnapshot, Job, pod or PVC in the namespace but the source PVC
///   and the source's restic cache.
pub(crate) async fn assert_run_invariants(c: &Cluster, copies: &Recorder, e: &Expected<'_>) {
    let run = c
        .wait_run(e.source, &format!("{}: the run finished", e.case), |r| {
            r["phase"] == "Finished"
        })
        .await;
    if run["result"] != "Successful" {
        e.fail("one run, Successful", format!("{run:#}\n{}", c.logs()));
    }
    let runs = c.runs(e.source).await;
    if runs.len() != 1 {
        e.fail(
            "one run, Successful",
            format!("{} runs: {runs:#?}", runs.len()),
        );
    }

    let uids: BTreeSet<String> = copies
        .versions(e.copy)
        .iter()
        .filter_map(|o| o["metadata"]["uid"].as_str().map(str::to_owned))
        .collect();
    if uids.len() != 1 || copies.names() != [e.copy] {
        e.fail(
            "one copy",
            format!("copies {:?}, uids of {}: {uids:?}", copies.names(), e.copy),
        );
    }

    if let super::Sim::Hosted(sim) = &c.sim {
        let made = sim.requests().count(|r| {
            r.verb == Some(snapgate_kube_sim::Verb::Create)
                && r.resource == "volumesnapshots"
                && r.code == 201
        });
        if made != 1 {
            e.fail(
                "one copy",
                format!("{made} VolumeSnapshot creates answered 201"),
            );
        }
    }

    let released: Vec<&Value> = runs.iter().filter(|r| r["trigger"] == e.trigger).collect();
    if run["trigger"] != e.trigger || released.len() != 1 {
        e.fail(
            "the trigger released one run",
            format!(
                "{} released {} runs; the run: {run:#}",
                e.trigger,
                released.len()
            ),
        );
    }

    let a = c.annotations(e.pvc).await;
    let agrees = a.get(STATUS).map(String::as_str) == Some("Completed")
        && a.get(LATEST).map(String::as_str) == run["trigger"].as_str()
        && !a.contains_key(SINCE);
    if !agrees {
        e.fail(
            "the PVC agrees with the scheduler",
            format!("annotations {a:?}; the run released by {}", run["trigger"]),
        );
    }

    if let Some(hold) = e.hold {
        let cut = copies
            .versions(e.copy)
            .iter()
            .find_map(|o| o["status"]["creationTime"].as_str().map(str::to_owned));
        let cut = cut
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc));
        let inside = cut.is_some_and(|t| t >= hold.from.trunc_subsecs(0) && t <= hold.to);
        if !inside {
            e.fail(
                "the copy point inside the hold",
                format!("cut at {cut:?}, hold {} to {}", hold.from, hold.to),
            );
        }
    }

    // The source PVC, and the restic cache, which persists across runs (docs/movers.md).
    let kept = [
        e.pvc.to_owned(),
        snapgate_agent_core::names::cache_name(e.source),
    ];
    let mut left = Vec::new();
    for (group, kind, plural) in [
        (
            "snapshot.storage.k8s.io",
            "VolumeSnapshot",
            "volumesnapshots",
        ),
        ("batch", "Job", "jobs"),
        ("", "Pod", "pods"),
        ("", "PersistentVolumeClaim", "persistentvolumeclaims"),
    ] {
        let api: Api<DynamicObject> =
            Api::namespaced_with(c.client.clone(), NS, &resource(group, kind, plural));
        let names = api
            .list(&ListParams::default())
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .filter_map(|o| o.metadata.name)
                    .collect()
            })
            .unwrap_or_else(|err| vec![format!("(cannot list {plural}: {err})")]);
        left.extend(
            names
                .into_iter()
                .filter(|n| plural != "persistentvolumeclaims" || !kept.contains(n))
                .map(|n| format!("{kind} {n}")),
        );
    }
    if !left.is_empty() {
        e.fail("nothing left", format!("{left:?}"));
    }
}
