//! Simulated controllers: PVC binding, snapshots and Jobs, under paused and real time.

mod fixtures;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, LogParams, PostParams};
use serde_json::{Value, json};
use snapgate_kube_sim::{JobBehaviour, PodOutcome, SnapshotBehaviour};

fn phase(p: &PersistentVolumeClaim) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn a_pvc_binds_after_the_configured_delay_and_gets_a_provisioned_pv() {
    let sim = fixtures::sim();
    sim.controllers().pvc_bind_delay(Duration::from_secs(5));
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "ns");
    pvcs.create(&PostParams::default(), &fixtures::pvc("ns", "data"))
        .await
        .unwrap();
    fixtures::let_pass(Duration::from_secs(4)).await;
    assert_eq!(phase(&pvcs.get("data").await.unwrap()), "Pending");
    fixtures::let_pass(Duration::from_secs(2)).await;
    let bound = pvcs.get("data").await.unwrap();
    assert_eq!(phase(&bound), "Bound");
    let volume = bound.spec.unwrap().volume_name.unwrap();
    assert_eq!(bound.status.unwrap().capacity.unwrap()["storage"].0, "1Gi");
    let pvs: Api<PersistentVolume> = Api::all(sim.client());
    let pv = pvs.get(&volume).await.unwrap();
    assert_eq!(
        pv.spec.unwrap().claim_ref.unwrap().name.as_deref(),
        Some("data")
    );

    pvcs.delete("data", &DeleteParams::default()).await.unwrap();
    // The Delete reclaim policy removes the PV (the controller does it after the delete).
    fixtures::eventually(Duration::from_secs(5), || {
        let pvs = pvs.clone();
        let volume = volume.clone();
        async move { pvs.get_opt(&volume).await.unwrap().is_none().then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn a_pvc_binds_in_real_time_with_the_default_delay() {
    let sim = fixtures::sim();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "ns");
    pvcs.create(&PostParams::default(), &fixtures::pvc("ns", "data"))
        .await
        .unwrap();
    fixtures::eventually(Duration::from_secs(5), || async {
        (phase(&pvcs.get("data").await.unwrap()) == "Bound").then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_pvc_annotated_never_bind_stays_pending() {
    let sim = fixtures::sim();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "ns");
    let mut p = fixtures::pvc("ns", "data");
    p.metadata.annotations =
        Some([("sim.snapgate.io/pvc".to_string(), "never-bind".to_string())].into());
    pvcs.create(&PostParams::default(), &p).await.unwrap();
    fixtures::let_pass(Duration::from_secs(600)).await;
    assert_eq!(phase(&pvcs.get("data").await.unwrap()), "Pending");
}

fn snap_status(o: &DynamicObject) -> Value {
    o.data["status"].clone()
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_binds_content_and_becomes_ready_after_its_delay_and_a_clone_then_binds() {
    let sim = fixtures::sim();
    sim.snapshot_behaviour(
        "ns",
        "snap",
        SnapshotBehaviour::ReadyAfter(Duration::from_secs(30)),
    );
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "ns");
    pvcs.create(&PostParams::default(), &fixtures::pvc("ns", "data"))
        .await
        .unwrap();
    fixtures::let_pass(Duration::from_secs(1)).await;
    let snaps: Api<DynamicObject> =
        Api::namespaced_with(sim.client(), "ns", &fixtures::snapshot_resource());
    snaps
        .create(
            &PostParams::default(),
            &fixtures::snapshot("ns", "snap", "data"),
        )
        .await
        .unwrap();
    // a clone from the snapshot waits for readiness
    let mut clone = fixtures::pvc("ns", "restore");
    clone.spec.as_mut().unwrap().data_source = Some(
        serde_json::from_value(json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}))
            .unwrap(),
    );
    pvcs.create(&PostParams::default(), &clone).await.unwrap();

    fixtures::let_pass(Duration::from_secs(5)).await;
    let st = snap_status(&snaps.get("snap").await.unwrap());
    assert_eq!(st["readyToUse"], false);
    let content = st["boundVolumeSnapshotContentName"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(phase(&pvcs.get("restore").await.unwrap()), "Pending");

    fixtures::let_pass(Duration::from_secs(30)).await;
    let st = snap_status(&snaps.get("snap").await.unwrap());
    assert_eq!(st["readyToUse"], true);
    assert_eq!(st["restoreSize"], "1Gi");
    let contents: Api<DynamicObject> = Api::all_with(
        sim.client(),
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk(
                "snapshot.storage.k8s.io",
                "v1",
                "VolumeSnapshotContent",
            ),
            "volumesnapshotcontents",
        ),
    );
    let c = contents.get(&content).await.unwrap();
    assert_eq!(c.data["spec"]["volumeSnapshotRef"]["name"], "snap");
    assert_eq!(c.data["status"]["readyToUse"], true);
    fixtures::let_pass(Duration::from_secs(1)).await;
    assert_eq!(phase(&pvcs.get("restore").await.unwrap()), "Bound");

    snaps
        .delete("snap", &DeleteParams::default())
        .await
        .unwrap();
    fixtures::let_pass(Duration::from_millis(100)).await;
    assert!(
        contents.get_opt(&content).await.unwrap().is_none(),
        "content deleted with its snapshot"
    );
}

#[tokio::test(start_paused = true)]
async fn snapshots_can_stay_uncut_or_cut_but_unready_leave_ready_to_use_unset_or_fail() {
    let sim = fixtures::sim();
    sim.snapshot_behaviour("ns", "never", SnapshotBehaviour::NeverReady);
    sim.snapshot_behaviour("ns", "cut", SnapshotBehaviour::CutNeverReady);
    sim.snapshot_behaviour("ns", "unset", SnapshotBehaviour::ReadyToUseUnset);
    sim.snapshot_behaviour(
        "ns",
        "broken",
        SnapshotBehaviour::Fail("disk on fire".into()),
    );
    let snaps: Api<DynamicObject> =
        Api::namespaced_with(sim.client(), "ns", &fixtures::snapshot_resource());
    for n in ["never", "cut", "unset", "broken"] {
        snaps
            .create(&PostParams::default(), &fixtures::snapshot("ns", n, "data"))
            .await
            .unwrap();
    }
    let mut by_annotation = fixtures::snapshot("ns", "annotated", "data");
    by_annotation.metadata.annotations = Some(
        [(
            "sim.snapgate.io/snapshot".to_string(),
            "fail=quota".to_string(),
        )]
        .into(),
    );
    snaps
        .create(&PostParams::default(), &by_annotation)
        .await
        .unwrap();
    fixtures::let_pass(Duration::from_secs(3600)).await;

    let never = snap_status(&snaps.get("never").await.unwrap());
    assert_eq!(never["readyToUse"], false);
    assert!(never["boundVolumeSnapshotContentName"].is_string());
    assert!(never.get("creationTime").is_none(), "never cut: {never}");
    let cut = snap_status(&snaps.get("cut").await.unwrap());
    assert_eq!(cut["readyToUse"], false);
    assert!(cut["creationTime"].is_string(), "cut at once: {cut}");
    assert!(cut["boundVolumeSnapshotContentName"].is_string());
    let unset = snap_status(&snaps.get("unset").await.unwrap());
    assert!(unset.get("readyToUse").is_none(), "{unset}");
    assert!(unset["boundVolumeSnapshotContentName"].is_string());
    let broken = snap_status(&snaps.get("broken").await.unwrap());
    assert_eq!(broken["error"]["message"], "disk on fire");
    assert_eq!(broken["readyToUse"], false);
    let annotated = snap_status(&snaps.get("annotated").await.unwrap());
    assert_eq!(annotated["error"]["message"], "quota");
}

fn condition(job: &Job, kind: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
}

#[tokio::test(start_paused = true)]
async fn a_job_runs_a_pod_that_succeeds_and_its_logs_are_readable() {
    let sim = fixtures::sim();
    sim.job_behaviour(
        "ns",
        "mover",
        JobBehaviour::succeed(["copying", "synced 42 files"]).clone(),
    );
    let jobs: Api<Job> = Api::namespaced(sim.client(), "ns");
    let pods: Api<Pod> = Api::namespaced(sim.client(), "ns");
    jobs.create(&PostParams::default(), &fixtures::job("ns", "mover", 2))
        .await
        .unwrap();
    fixtures::let_pass(Duration::from_secs(10)).await;
    let job = jobs.get("mover").await.unwrap();
    assert!(condition(&job, "Complete"), "{:?}", job.status);
    assert_eq!(job.status.as_ref().unwrap().succeeded, Some(1));
    let list = pods
        .list(&ListParams::default().labels("job-name=mover"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    let pod = &list.items[0];
    assert_eq!(
        pod.metadata.labels.as_ref().unwrap()["batch.kubernetes.io/job-name"],
        "mover"
    );
    assert_eq!(
        pod.metadata.labels.as_ref().unwrap()["app"],
        "mover",
        "template labels are kept"
    );
    assert_eq!(
        pod.status.as_ref().unwrap().phase.as_deref(),
        Some("Succeeded")
    );
    let name = pod.metadata.name.as_deref().unwrap();
    assert_eq!(
        pods.logs(name, &LogParams::default()).await.unwrap(),
        "copying\nsynced 42 files\n"
    );
    let tail = LogParams {
        tail_lines: Some(1),
        ..LogParams::default()
    };
    assert_eq!(pods.logs(name, &tail).await.unwrap(), "synced 42 files\n");
    let limited = LogParams {
        limit_bytes: Some(4),
        container: Some("main".into()),
        ..LogParams::default()
    };
    assert_eq!(pods.logs(name, &limited).await.unwrap(), "copy");

    jobs.delete("mover", &DeleteParams::background())
        .await
        .unwrap();
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "pods are garbage-collected"
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_whose_pods_fail_is_failed_once_failures_exceed_the_backoff_limit() {
    let sim = fixtures::sim();
    sim.job_behaviour("ns", "mover", JobBehaviour::fail(["boom"]));
    let jobs: Api<Job> = Api::namespaced(sim.client(), "ns");
    let pods: Api<Pod> = Api::namespaced(sim.client(), "ns");
    jobs.create(&PostParams::default(), &fixtures::job("ns", "mover", 2))
        .await
        .unwrap();
    fixtures::let_pass(Duration::from_secs(10)).await;
    let job = jobs.get("mover").await.unwrap();
    assert!(condition(&job, "Failed"), "{:?}", job.status);
    assert!(!condition(&job, "Complete"));
    assert_eq!(job.status.as_ref().unwrap().failed, Some(3));
    let list = pods
        .list(&ListParams::default().labels("job-name=mover"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 3);
    for p in &list.items {
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Failed"));
        assert_eq!(
            pods.logs(p.metadata.name.as_deref().unwrap(), &LogParams::default())
                .await
                .unwrap(),
            "boom\n"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_job_retries_failed_pods_until_one_succeeds() {
    let sim = fixtures::sim();
    sim.job_behaviour(
        "ns",
        "mover",
        JobBehaviour::sequence(vec![
            PodOutcome::fail(["try 1"]),
            PodOutcome::succeed(["try 2"]).after(Duration::from_secs(2)),
        ]),
    );
    let jobs: Api<Job> = Api::namespaced(sim.client(), "ns");
    jobs.create(&PostParams::default(), &fixtures::job("ns", "mover", 3))
        .await
        .unwrap();
    fixtures::let_pass(Duration::from_secs(1)).await;
    assert!(!condition(&jobs.get("mover").await.unwrap(), "Complete"));
    fixtures::let_pass(Duration::from_secs(5)).await;
    let job = jobs.get("mover").await.unwrap();
    assert!(condition(&job, "Complete"));
    let st = job.status.unwrap();
    assert_eq!((st.failed, st.succeeded), (Some(1), Some(1)));
}

#[tokio::test(start_paused = true)]
async fn a_job_with_zero_parallelism_creates_no_pods() {
    let sim = fixtures::sim();
    let jobs: Api<Job> = Api::namespaced(sim.client(), "ns");
    let pods: Api<Pod> = Api::namespaced(sim.client(), "ns");
    let mut job = fixtures::job("ns", "idle", 1);
    job.spec.as_mut().unwrap().parallelism = Some(0);
    jobs.create(&PostParams::default(), &job).await.unwrap();
    fixtures::let_pass(Duration::from_secs(60)).await;
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(!condition(&jobs.get("idle").await.unwrap(), "Complete"));
}

#[tokio::test]
async fn a_job_completes_in_real_time_with_the_default_behaviour() {
    let sim = fixtures::sim();
    let jobs: Api<Job> = Api::namespaced(sim.client(), "ns");
    jobs.create(&PostParams::default(), &fixtures::job("ns", "quick", 1))
        .await
        .unwrap();
    fixtures::eventually(Duration::from_secs(5), || async {
        condition(&jobs.get("quick").await.unwrap(), "Complete").then_some(())
    })
    .await;
}

fn events_about(sim: &snapgate_kube_sim::KubeSim, name: &str) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = sim
        .list::<Event>(Some("ns"))
        .unwrap()
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

fn the_pod(sim: &snapgate_kube_sim::KubeSim) -> Pod {
    let pods = sim.list::<Pod>(Some("ns")).unwrap();
    assert_eq!(pods.len(), 1, "{pods:#?}");
    pods.into_iter().next().unwrap()
}

fn waiting(pod: &Pod) -> (String, String) {
    let w = pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .as_ref()
        .unwrap()
        .waiting
        .clone()
        .unwrap();
    (w.reason.unwrap_or_default(), w.message.unwrap_or_default())
}

fn pod_condition(pod: &Pod, kind: &str) -> (String, Option<String>) {
    let c = pod
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == kind)
        .unwrap_or_else(|| panic!("no condition {kind}"));
    (c.status.clone(), c.reason.clone())
}

#[tokio::test(start_paused = true)]
async fn a_stuck_pod_waits_as_a_kubelet_shows_it_until_its_job_is_scripted_otherwise() {
    let sim = fixtures::sim();
    sim.job_behaviour("ns", "mover", JobBehaviour::stuck("ImagePullBackOff"));
    let jobs: Api<Job> = Api::namespaced(sim.client(), "ns");
    jobs.create(&PostParams::default(), &fixtures::job("ns", "mover", 2))
        .await
        .unwrap();
    fixtures::let_pass(Duration::from_secs(3600)).await;
    let pod = the_pod(&sim);
    let name = pod.metadata.name.clone().unwrap();
    assert_eq!(
        pod.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    assert_eq!(
        waiting(&pod),
        (
            "ImagePullBackOff".into(),
            "Back-off pulling image \"busybox\"".into()
        )
    );
    assert_eq!(
        pod_condition(&pod, "ContainersReady"),
        ("False".into(), Some("ContainersNotReady".into()))
    );
    assert_eq!(
        events_about(&sim, &name),
        [
            (
                "Normal".into(),
                "BackOff".into(),
                "Back-off pulling image \"busybox\"".into()
            ),
            (
                "Warning".into(),
                "Failed".into(),
                "Error: ImagePullBackOff".into()
            ),
        ]
    );
    let job = jobs.get("mover").await.unwrap();
    assert_eq!(job.status.as_ref().unwrap().active, Some(1));
    assert!(!condition(&job, "Complete") && !condition(&job, "Failed"));

    // The image appears: the same pod runs and the Job completes.
    sim.job_behaviour("ns", "mover", JobBehaviour::succeed(["pulled at last"]));
    fixtures::let_pass(Duration::from_secs(5)).await;
    let job = jobs.get("mover").await.unwrap();
    assert!(condition(&job, "Complete"), "{:?}", job.status);
    let pod = the_pod(&sim);
    assert_eq!(pod.metadata.name.as_deref(), Some(name.as_str()));
    assert_eq!(
        pod.status.as_ref().unwrap().phase.as_deref(),
        Some("Succeeded")
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_pod_runs_until_its_job_is_scripted_otherwise_then_ends_as_scripted() {
    let sim = fixtures::sim();
    sim.job_behaviour("ns", "mover", JobBehaviour::hang());
    let jobs: Api<Job> = Api::namespaced(sim.client(), "ns");
    jobs.create(&PostParams::default(), &fixtures::job("ns", "mover", 2))
        .await
        .unwrap();
    fixtures::let_pass(Duration::from_secs(3600)).await;
    let pod = the_pod(&sim);
    assert_eq!(
        pod.status.as_ref().unwrap().phase.as_deref(),
        Some("Running")
    );
    let job = jobs.get("mover").await.unwrap();
    assert_eq!(job.status.as_ref().unwrap().active, Some(1));

    // The transfer is let finish: the same pod ends, with the new script's log.
    sim.job_behaviour("ns", "mover", JobBehaviour::succeed(["all sent"]));
    fixtures::let_pass(Duration::from_secs(5)).await;
    let job = jobs.get("mover").await.unwrap();
    assert!(condition(&job, "Complete"), "{:?}", job.status);
    let after = the_pod(&sim);
    assert_eq!(after.metadata.name, pod.metadata.name);
    assert_eq!(
        after.status.as_ref().unwrap().phase.as_deref(),
        Some("Succeeded")
    );
    let pods: Api<Pod> = Api::namespaced(sim.client(), "ns");
    let name = after.metadata.name.as_deref().unwrap();
    assert_eq!(
        pods.logs(name, &LogParams::default()).await.unwrap(),
        "all sent\n"
    );
}

#[tokio::test(start_paused = true)]
async fn each_stuck_reason_shows_the_status_and_events_of_a_real_cluster() {
    for (reason, phase, wait_reason, condition, event) in [
        (
            "CreateContainerConfigError",
            "Pending",
            Some((
                "CreateContainerConfigError",
                "couldn't find key RESTIC_PASSWORD in Secret ns/restic-config",
            )),
            ("ContainersReady", "False", Some("ContainersNotReady")),
            (
                "Warning",
                "Failed",
                "Error: couldn't find key RESTIC_PASSWORD in Secret ns/restic-config",
            ),
        ),
        (
            "ErrImagePull",
            "Pending",
            Some((
                "ErrImagePull",
                "rpc error: code = NotFound desc = failed to pull and unpack image \"busybox\": not found",
            )),
            ("ContainersReady", "False", Some("ContainersNotReady")),
            ("Warning", "Failed", "Error: ErrImagePull"),
        ),
        (
            "CrashLoopBackOff",
            "Running",
            None,
            ("ContainersReady", "False", Some("ContainersNotReady")),
            ("Warning", "BackOff", ""),
        ),
        (
            "FailedMount",
            "Pending",
            Some(("ContainerCreating", "")),
            ("PodReadyToStartContainers", "False", None),
            (
                "Warning",
                "FailedMount",
                "MountVolume.SetUp failed for volume \"ca\" : secret \"ca-secret\" not found",
            ),
        ),
        (
            "Unschedulable",
            "Pending",
            None,
            ("PodScheduled", "False", Some("Unschedulable")),
            ("Warning", "FailedScheduling", ""),
        ),
    ] {
        let sim = fixtures::sim();
        sim.job_behaviour("ns", "mover", JobBehaviour::stuck(reason));
        let mut job = fixtures::job("ns", "mover", 2);
        let spec = job.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        spec.containers[0].env =
            Some(vec![serde_json::from_value(json!({
            "name": "RESTIC_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "restic-config", "key": "RESTIC_PASSWORD"}},
        }))
        .unwrap()]);
        spec.volumes = Some(vec![
            serde_json::from_value(json!({
                "name": "ca", "secret": {"secretName": "ca-secret"},
            }))
            .unwrap(),
        ]);
        let jobs: Api<Job> = Api::namespaced(sim.client(), "ns");
        jobs.create(&PostParams::default(), &job).await.unwrap();
        fixtures::let_pass(Duration::from_secs(60)).await;
        let pod = the_pod(&sim);
        assert_eq!(
            pod.status.as_ref().unwrap().phase.as_deref(),
            Some(phase),
            "{reason}"
        );
        if let Some((w, m)) = wait_reason {
            assert_eq!(waiting(&pod), (w.to_owned(), m.to_owned()), "{reason}");
        }
        let (kind, status, why) = condition;
        assert_eq!(
            pod_condition(&pod, kind),
            (status.to_owned(), why.map(str::to_owned)),
            "{reason}"
        );
        let (type_, event_reason, message) = event;
        let events = events_about(&sim, pod.metadata.name.as_deref().unwrap());
        assert!(
            events.iter().any(|(t, r, m)| t == type_
                && r == event_reason
                && (message.is_empty() || m == message)),
            "{reason}: {events:?}"
        );
        assert_eq!(
            jobs.get("mover").await.unwrap().status.unwrap().active,
            Some(1),
            "{reason}: the Job stays active"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_job_that_cannot_create_its_pod_says_so_in_an_event_and_makes_one_once_it_can() {
    let sim = fixtures::sim();
    sim.job_behaviour("ns", "mover", JobBehaviour::failed_create());
    let jobs: Api<Job> = Api::namespaced(sim.client(), "ns");
    let mut job = fixtures::job("ns", "mover", 2);
    job.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .service_account_name = Some("mover-sa".into());
    jobs.create(&PostParams::default(), &job).await.unwrap();
    fixtures::let_pass(Duration::from_secs(600)).await;
    assert!(sim.list::<Pod>(Some("ns")).unwrap().is_empty());
    assert_eq!(
        events_about(&sim, "mover"),
        [(
            "Warning".into(),
            "FailedCreate".into(),
            "Error creating: pods \"mover-\" is forbidden: error looking up service account \
             ns/mover-sa: serviceaccount \"mover-sa\" not found"
                .into()
        )]
    );
    let event = sim.list::<Event>(Some("ns")).unwrap().remove(0);
    assert_eq!(event.involved_object.kind.as_deref(), Some("Job"));
    assert_eq!(
        event.involved_object.uid,
        jobs.get("mover").await.unwrap().metadata.uid
    );
    // The ServiceAccount is made: the Job makes its pod, which succeeds.
    sim.job_behaviour("ns", "mover", JobBehaviour::succeed(["done"]));
    fixtures::let_pass(Duration::from_secs(5)).await;
    assert!(condition(&jobs.get("mover").await.unwrap(), "Complete"));
}

#[tokio::test(start_paused = true)]
async fn a_pod_stuck_for_a_while_recovers_by_itself_and_a_deleted_jobs_stuck_pod_goes() {
    let sim = fixtures::sim();
    sim.job_behaviour(
        "ns",
        "mover",
        JobBehaviour::sequence(vec![
            PodOutcome::succeed(["ok"])
                .stuck_in("ErrImagePull")
                .stuck_message("registry down")
                .stuck_for(Duration::from_secs(30)),
        ]),
    );
    let jobs: Api<Job> = Api::namespaced(sim.client(), "ns");
    jobs.create(&PostParams::default(), &fixtures::job("ns", "mover", 2))
        .await
        .unwrap();
    fixtures::let_pass(Duration::from_secs(20)).await;
    assert_eq!(
        waiting(&the_pod(&sim)),
        ("ErrImagePull".into(), "registry down".into())
    );
    fixtures::let_pass(Duration::from_secs(20)).await;
    assert!(condition(&jobs.get("mover").await.unwrap(), "Complete"));

    sim.job_behaviour("ns", "stuck", JobBehaviour::stuck("InvalidImageName"));
    jobs.create(&PostParams::default(), &fixtures::job("ns", "stuck", 2))
        .await
        .unwrap();
    fixtures::let_pass(Duration::from_secs(5)).await;
    jobs.delete("stuck", &DeleteParams::background())
        .await
        .unwrap();
    fixtures::let_pass(Duration::from_secs(5)).await;
    let pods: Vec<String> = sim
        .list::<Pod>(Some("ns"))
        .unwrap()
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .filter(|n| n.starts_with("stuck-"))
        .collect();
    assert!(pods.is_empty(), "{pods:?}");
}

#[test]
fn mover_pods_name_a_behaviour_or_a_waiting_reason() {
    assert_eq!(
        JobBehaviour::parse("succeed").unwrap(),
        JobBehaviour::succeed(["done"])
    );
    assert_eq!(
        JobBehaviour::parse("fail").unwrap(),
        JobBehaviour::fail(["failed"])
    );
    assert_eq!(
        JobBehaviour::parse("FailedCreate").unwrap(),
        JobBehaviour::failed_create()
    );
    let stuck = JobBehaviour::parse("CreateContainerConfigError").unwrap();
    assert_eq!(
        stuck.pods[0].stuck.as_ref().map(|s| s.reason.as_str()),
        Some("CreateContainerConfigError")
    );
    for bad in [
        "",
        "imagePullBackOff",
        "Image Pull",
        "ImagePull1",
        "succeeded",
    ] {
        assert!(JobBehaviour::parse(bad).is_err(), "{bad:?}");
    }
}
