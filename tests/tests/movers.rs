//! The mover Job of each mover, as it reaches the API server, against movers.md; and the
//! agent's requests for one gated run, counted by the simulator.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Container, EnvVar, PodSpec, Volume},
};
use snapgate_e2e::*;
use snapgate_kube_sim::{JobBehaviour, RequestRecord, Verb};
use snapgate_proto::v1::{self, CopyMethod};

const IMAGE: &str = "quay.io/backube/volsync:0.14.0";

fn direct(spec: impl FnOnce(&mut v1::SourceSpec)) -> v1::SourceSpec {
    let mut s = v1::SourceSpec {
        source_pvc: PVC.into(),
        trigger: Some(v1::ReplicationSourceTrigger {
            schedule: None,
            manual: Some("m1".into()),
        }),
        ..Default::default()
    };
    spec(&mut s);
    s
}

async fn job_for(spec: v1::SourceSpec, job: &str, secrets: &[(&str, &[&str])]) -> (World, Job) {
    let mut w = World::start().await;
    for (name, keys) in secrets {
        w.sim.create(&secret(name, keys)).unwrap();
    }
    w.sim.job_behaviour(NS, job, JobBehaviour::hang());
    w.create_pvc(false);
    w.apply(SOURCE, spec).await;
    let found = eventually("the mover Job", || {
        w.jobs()
            .into_iter()
            .find(|j| j.metadata.name.as_deref() == Some(job))
    })
    .await;
    (w, found)
}

fn pod(job: &Job) -> &PodSpec {
    job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn container(job: &Job) -> &Container {
    &pod(job).containers[0]
}

fn env(c: &Container) -> BTreeMap<String, EnvVar> {
    c.env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name.clone(), e))
        .collect()
}

fn value(env: &BTreeMap<String, EnvVar>, name: &str) -> String {
    env.get(name)
        .unwrap_or_else(|| panic!("env {name} missing: {:?}", env.keys()))
        .value
        .clone()
        .unwrap_or_default()
}

fn secret_ref(env: &BTreeMap<String, EnvVar>, name: &str) -> (String, String, bool) {
    let r = env[name]
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .unwrap_or_else(|| panic!("{name} is not a secretKeyRef"));
    (r.name.clone(), r.key.clone(), r.optional.unwrap_or(false))
}

fn mounts(c: &Container) -> BTreeMap<String, (String, bool)> {
    c.volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.mount_path, (m.name, m.read_only.unwrap_or(false))))
        .collect()
}

fn assert_bash(c: &Container, script: &str) {
    assert_eq!(
        c.command.clone().unwrap_or_default(),
        ["/bin/bash", "-c", script],
        "the mover's entry script"
    );
}

/// The volume mounted at `path` in the mover container.
fn volume_at<'a>(job: &'a Job, path: &str) -> &'a Volume {
    let (name, _) = mounts(container(job))
        .remove(path)
        .unwrap_or_else(|| panic!("nothing mounted at {path}"));
    pod(job)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// `path` holds the Secret `secret`, readable by its owner only.
fn assert_secret_mount(job: &Job, path: &str, secret: &str) {
    let s = volume_at(job, path).secret.as_ref().unwrap();
    assert_eq!(s.secret_name.as_deref(), Some(secret));
    assert_eq!(s.default_mode, Some(0o600), "{path} is 0600");
}

/// What every mover Job shares (movers.md, "Common to every mover Job").
fn assert_common(job: &Job, name: &str, backoff: i32, runs_as_root: bool) {
    assert_eq!(job.metadata.name.as_deref(), Some(name));
    let labels = job.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["app.kubernetes.io/created-by"], "snapgate");
    assert_eq!(labels["snapgate.io/source"], SOURCE);
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.backoff_limit, Some(backoff));
    assert_eq!(spec.parallelism, Some(1));
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert_eq!(template_labels["app.kubernetes.io/created-by"], "snapgate");
    assert_eq!(template_labels["snapgate.io/source"], SOURCE);
    let p = pod(job);
    assert_eq!(p.restart_policy.as_deref(), Some("Never"));
    // The source names no moverServiceAccount: its own, with no token mounted.
    assert_eq!(p.service_account_name.as_deref(), Some("volsync-src-db"));
    assert_eq!(p.automount_service_account_token, Some(false));
    let c = container(job);
    assert_eq!(c.image.as_deref(), Some(IMAGE));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    assert_eq!(sc.run_as_user, runs_as_root.then_some(0));
    let m = mounts(c);
    assert!(!m["/data"].1, "the RWO data volume is writable");
    assert_eq!(
        volume_at(job, "/tmp")
            .empty_dir
            .as_ref()
            .unwrap()
            .medium
            .as_deref(),
        Some("Memory"),
        "/tmp is an in-memory emptyDir"
    );
    assert_eq!(
        volume_at(job, "/data")
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name,
        PVC,
        "Direct: the mover reads the source PVC"
    );
}

#[tokio::test]
async fn the_restic_job_reaching_the_api_server_is_as_movers_md_says() {
    let spec = direct(|s| {
        s.restic = Some(v1::ReplicationSourceResticSpec {
            copy_method: CopyMethod::Direct as i32,
            repository: "restic-config".into(),
            retain: Some(v1::ResticRetainPolicy {
                daily: Some(7),
                last: Some("3".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
    });
    let (w, job) = job_for(spec, "volsync-src-db", &[]).await;
    assert_common(&job, "volsync-src-db", 8, false);
    let c = container(&job);
    assert_eq!(
        c.command.as_deref(),
        Some(&["/mover-restic/entry.sh".to_owned()][..])
    );
    // A new source's first run prunes (none recorded yet).
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args[0], "backup", "{args:?}");
    let e = env(c);
    assert_eq!(value(&e, "DATA_DIR"), "/data");
    assert_eq!(value(&e, "RESTIC_CACHE_DIR"), "/cache");
    assert_eq!(value(&e, "FORGET_OPTIONS"), "--keep-daily 7 --keep-last 3");
    assert_eq!(value(&e, "PRIVILEGED_MOVER"), "0");
    assert_eq!(
        secret_ref(&e, "RESTIC_REPOSITORY"),
        ("restic-config".into(), "RESTIC_REPOSITORY".into(), false)
    );
    assert_eq!(
        secret_ref(&e, "RESTIC_PASSWORD"),
        ("restic-config".into(), "RESTIC_PASSWORD".into(), false)
    );
    assert!(
        secret_ref(&e, "AWS_ACCESS_KEY_ID").2,
        "backend keys are optional refs"
    );
    let m = mounts(c);
    assert!(m.contains_key("/cache"), "{m:?}");
    assert!(
        w.pvc_names().contains(&"volsync-src-db-cache".to_owned()),
        "the restic cache PVC persists across runs"
    );
}

#[tokio::test]
async fn the_rclone_job_reaching_the_api_server_is_as_movers_md_says() {
    let spec = direct(|s| {
        s.rclone = Some(v1::ReplicationSourceRcloneSpec {
            copy_method: CopyMethod::Direct as i32,
            rclone_config: "rclone-secret".into(),
            rclone_config_section: "s3".into(),
            rclone_dest_path: "bucket/db".into(),
            ..Default::default()
        })
    });
    let (_w, job) = job_for(
        spec,
        "volsync-rclone-src-db",
        &[("rclone-secret", &["rclone.conf", "RCLONE_S3_REGION"])],
    )
    .await;
    assert_common(&job, "volsync-rclone-src-db", 2, false);
    let c = container(&job);
    assert_bash(c, "/mover-rclone/active.sh");
    let e = env(c);
    assert_eq!(value(&e, "RCLONE_CONFIG"), "/rclone-config/rclone.conf");
    assert_eq!(value(&e, "RCLONE_DEST_PATH"), "bucket/db");
    assert_eq!(value(&e, "RCLONE_CONFIG_SECTION"), "s3");
    assert_eq!(value(&e, "DIRECTION"), "source");
    assert_eq!(value(&e, "MOUNT_PATH"), "/data");
    assert_eq!(value(&e, "PRIVILEGED_MOVER"), "0");
    assert_eq!(
        secret_ref(&e, "RCLONE_S3_REGION").0,
        "rclone-secret",
        "RCLONE_* keys of the secret become env"
    );
    assert_secret_mount(&job, "/rclone-config/", "rclone-secret");
}

#[tokio::test]
async fn the_rsync_job_reaching_the_api_server_is_as_movers_md_says() {
    let spec = direct(|s| {
        s.rsync = Some(v1::ReplicationSourceRsyncSpec {
            copy_method: CopyMethod::Direct as i32,
            ssh_keys: "rsync-keys".into(),
            address: "backup.example.com".into(),
            ..Default::default()
        })
    });
    let (_w, job) = job_for(
        spec,
        "volsync-rsync-src-db",
        &[("rsync-keys", &["source", "source.pub", "destination.pub"])],
    )
    .await;
    assert_common(&job, "volsync-rsync-src-db", 2, true);
    let c = container(&job);
    assert_bash(c, "/mover-rsync/source.sh");
    let e = env(c);
    assert_eq!(value(&e, "DESTINATION_ADDRESS"), "backup.example.com");
    assert_eq!(value(&e, "DESTINATION_PORT"), "22");
    let caps = c
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap()
        .add
        .clone()
        .unwrap_or_default();
    assert!(
        caps.contains(&"SYS_CHROOT".to_owned()) && caps.contains(&"SETUID".to_owned()),
        "rsync (ssh) always runs with sshd's capabilities: {caps:?}"
    );
    assert_secret_mount(&job, "/keys", "rsync-keys");
}

#[tokio::test]
async fn a_sources_mover_account_pulls_with_the_agents_secrets_and_may_use_the_scc_when_needed() {
    use k8s_openapi::api::{
        core::v1::ServiceAccount,
        rbac::v1::{Role, RoleBinding},
    };
    let mut w = World::start().await;
    w.stop_agent().await;
    w.start_agent_with(|plan| {
        plan.mover_pull_secrets = vec!["regcred".into()];
        plan.mover_scc = Some("snapgate-privileged-mover".into());
    });
    w.sim
        .create(&secret(
            "rsync-keys",
            &["source", "source.pub", "destination.pub"],
        ))
        .unwrap();
    w.sim
        .job_behaviour(NS, "volsync-rsync-src-db", JobBehaviour::hang());
    w.create_pvc(false);
    // rsync over ssh runs as root with sshd's capabilities: it needs the SCC.
    w.apply(
        SOURCE,
        direct(|s| {
            s.rsync = Some(v1::ReplicationSourceRsyncSpec {
                copy_method: CopyMethod::Direct as i32,
                ssh_keys: "rsync-keys".into(),
                address: "backup.example.com".into(),
                ..Default::default()
            })
        }),
    )
    .await;
    let job = eventually("the mover Job", || w.jobs().into_iter().next()).await;
    assert_eq!(
        pod(&job).service_account_name.as_deref(),
        Some("volsync-src-db")
    );
    let sa: ServiceAccount = w.sim.get(Some(NS), "volsync-src-db").unwrap();
    assert_eq!(sa.automount_service_account_token, Some(false));
    let pull: Vec<&str> = sa
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(pull, ["regcred"]);
    let labels = sa.metadata.labels.unwrap_or_default();
    assert_eq!(labels["snapgate.io/source"], SOURCE);
    let role: Role = w.sim.get(Some(NS), "volsync-src-db").unwrap();
    let rule = &role.rules.unwrap()[0];
    assert_eq!(
        (
            rule.resources.as_deref(),
            rule.resource_names.as_deref(),
            rule.verbs.as_slice()
        ),
        (
            Some(&["securitycontextconstraints".to_owned()][..]),
            Some(&["snapgate-privileged-mover".to_owned()][..]),
            &["use".to_owned()][..]
        )
    );
    let binding: RoleBinding = w.sim.get(Some(NS), "volsync-src-db").unwrap();
    assert_eq!(binding.role_ref.name, "volsync-src-db");
    assert_eq!(binding.subjects.unwrap()[0].name, "volsync-src-db");
}

#[tokio::test]
async fn the_rsync_tls_job_reaching_the_api_server_is_as_movers_md_says() {
    let spec = direct(|s| {
        s.rsync_tls = Some(v1::ReplicationSourceRsyncTlsSpec {
            copy_method: CopyMethod::Direct as i32,
            key_secret: "tls-key".into(),
            address: "10.0.0.9".into(),
            ..Default::default()
        })
    });
    let (_w, job) = job_for(
        spec,
        "volsync-rsync-tls-src-db",
        &[("tls-key", &["psk.txt"])],
    )
    .await;
    assert_common(&job, "volsync-rsync-tls-src-db", 2, false);
    let c = container(&job);
    assert_bash(c, "/mover-rsync-tls/client.sh");
    let e = env(c);
    assert_eq!(value(&e, "DESTINATION_ADDRESS"), "10.0.0.9");
    assert_eq!(value(&e, "DESTINATION_PORT"), "8000");
    assert_eq!(value(&e, "PRIVILEGED_MOVER"), "0");
    let m = mounts(c);
    assert!(m.contains_key("/keys"), "{m:?}");
}

fn agent_requests(w: &World) -> Vec<RequestRecord> {
    w.sim.requests().filter(|r| r.user == AGENT_USER)
}

#[tokio::test(start_paused = true)]
async fn one_gated_run_costs_a_fixed_count_of_requests_with_no_polling_and_no_repeated_writes() {
    let token = "agent-token";
    let mut w = World::start_with(Some(token)).await;
    w.create_pvc(true);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Snapshot, Duration::from_secs(600)),
    )
    .await;
    w.wait_copy_status("WaitingForTrigger").await;
    // Idle while waiting: two and a half quiet minutes (the agent's resync comes every minute;
    // the wait times out, with a Warning Event, only after ten) cost no request but watches.
    let before = agent_requests(&w).len();
    let_pass(Duration::from_secs(150)).await;
    let idle: Vec<_> = agent_requests(&w).into_iter().skip(before).collect();
    assert!(
        idle.iter().all(|r| r.verb == Some(Verb::Watch)),
        "no request while waiting but watches: {idle:?}"
    );
    w.annotate_trigger("first").await;
    w.wait_successful_runs(SOURCE, 1).await;
    eventually("cleanup", || w.snapshots().is_empty().then_some(())).await;
    // Every request the run makes is counted: two and a half more minutes make none.
    let_pass(Duration::from_secs(150)).await;

    let reqs = agent_requests(&w);
    let count = |verb: Verb, resource: &str| {
        reqs.iter()
            .filter(|r| r.verb == Some(verb) && r.resource == resource)
            .count()
    };
    let mut table = BTreeMap::new();
    for r in &reqs {
        let key = format!(
            "{:?} {}{}",
            r.verb,
            r.resource,
            r.subresource
                .as_ref()
                .map(|s| format!("/{s}"))
                .unwrap_or_default()
        );
        *table.entry(key).or_insert(0usize) += 1;
    }
    println!("requests of one gated Snapshot run: {table:#?}");
    let source_patches = reqs
        .iter()
        .filter(|r| {
            r.verb == Some(Verb::Patch)
                && r.resource == "persistentvolumeclaims"
                && r.name.as_deref() == Some(PVC)
        })
        .count();
    assert_eq!(
        source_patches, 3,
        "exactly WaitingForTrigger, InProgress, Completed: {table:#?}"
    );
    assert_eq!(
        count(Verb::List, "persistentvolumeclaims"),
        1,
        "one list per watch"
    );
    assert_eq!(count(Verb::List, "volumesnapshots"), 1);
    assert_eq!(count(Verb::List, "jobs"), 1);
    assert_eq!(
        count(Verb::List, "pods"),
        2,
        "mover pods are listed once by their watch, and once for the log"
    );
    assert_eq!(
        count(Verb::List, "events"),
        1,
        "Warning Events are listed once, by their watch"
    );
    assert_eq!(count(Verb::Get, "pods"), 1, "one log read");
    assert_eq!(
        count(Verb::Get, "secrets"),
        1,
        "the repository secret, once"
    );
    assert_eq!(count(Verb::Get, "namespaces"), 1, "privileged-movers, once");
    assert_eq!(count(Verb::Create, "volumesnapshots"), 1);
    assert_eq!(
        count(Verb::Create, "persistentvolumeclaims"),
        2,
        "restored PVC + restic cache"
    );
    assert_eq!(count(Verb::Create, "jobs"), 1);
    assert_eq!(count(Verb::Delete, "volumesnapshots"), 1);
    assert_eq!(count(Verb::Delete, "persistentvolumeclaims"), 1);
    assert_eq!(count(Verb::Delete, "jobs"), 1);
    // The mover ServiceAccount is looked for (404), then made, once per run.
    assert_eq!(count(Verb::Get, "serviceaccounts"), 1);
    assert_eq!(count(Verb::Create, "serviceaccounts"), 1);
    let failed: Vec<_> = reqs
        .iter()
        .filter(|r| r.code >= 400 && !(r.resource == "serviceaccounts" && r.code == 404))
        .collect();
    assert!(failed.is_empty(), "no failed request: {failed:?}");
    assert_eq!(
        count(Verb::Get, "persistentvolumeclaims"),
        0,
        "PVCs are read from the watch, never polled"
    );
}

/// restic's backup summary, then a long forget and prune: the whole log is filtered, so
/// `latestMoverStatus.logs` keeps the summary (a tail of the last 100 lines lost it).
#[tokio::test]
async fn the_backup_summary_survives_a_long_forget_and_prune_after_it() {
    let mut w = World::start().await;
    let mut log: Vec<String> = vec![
        "using parent snapshot 4f2a".into(),
        "processed 12 files, 3.4 MiB in 0:01".into(),
        "snapshot 9c1d77ab saved".into(),
    ];
    log.extend((0..3000).map(|i| format!("remove snapshot {i:08x} (forget)")));
    log.push("Restic completed in 2s".into());
    w.sim
        .job_behaviour(NS, MoverKind::Restic.job(), JobBehaviour::succeed(log));
    w.create_pvc(false);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Direct, Duration::from_secs(600)),
    )
    .await;
    let source = w.wait_successful_runs(SOURCE, 1).await;
    let logs = source.status.unwrap().latest_mover_status.unwrap().logs;
    assert_eq!(
        logs,
        "using parent snapshot 4f2a\nprocessed 12 files, 3.4 MiB in 0:01\nsnapshot 9c1d77ab saved\nRestic completed in 2s"
    );
}

/// copyMethod Direct mounts the application's own volume: the mover Job must run on the node
/// where the application's pod has it (a ReadWriteOnce volume attaches to one node), with that
/// pod's tolerations.
/// A Running pod `db-0` on `node-a`, tolerating `dedicated=db`, that mounts the PVC `claim`.
fn app_pod_using(claim: &str) -> k8s_openapi::api::core::v1::Pod {
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimVolumeSource, Pod, PodSpec, PodStatus, Toleration,
    };
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("db-0".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "db".into(),
                image: Some("postgres:16".into()),
                ..Default::default()
            }],
            node_name: Some("node-a".into()),
            tolerations: Some(vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Equal".into()),
                value: Some("db".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }]),
            volumes: Some(vec![Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.into(),
                    read_only: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        }),
    }
}

/// Applies `spec` (a restic source) and checks its mover Job runs on `node-a` with `db-0`'s
/// toleration.
async fn assert_pinned_to_node_a(w: &mut World, spec: v1::SourceSpec) {
    w.sim
        .job_behaviour(NS, MoverKind::Restic.job(), JobBehaviour::hang());
    w.apply(SOURCE, spec).await;
    let job = eventually("the mover Job", || {
        w.jobs()
            .into_iter()
            .find(|j| j.metadata.name.as_deref() == Some(MoverKind::Restic.job()))
    })
    .await;
    let pod = serde_json::to_value(job.spec.unwrap().template.spec.unwrap()).unwrap();
    assert_eq!(
        pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
        serde_json::json!({"nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["node-a"]}
        ]}]})
    );
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}])
    );
}

#[tokio::test]
async fn a_direct_mover_runs_on_the_node_of_the_pod_using_the_volume() {
    let mut w = World::start().await;
    w.sim.create(&app_pod_using(PVC)).unwrap();
    w.create_pvc(false);
    let spec = restic_spec(CopyMethod::Direct, Duration::from_secs(600));
    assert_pinned_to_node_a(&mut w, spec).await;
}

#[tokio::test]
async fn a_mover_runs_on_the_node_of_the_pod_using_a_pvc_of_its_mover_volumes() {
    let mut w = World::start().await;
    // The clone is attached nowhere yet; the PVC mounted as a moverVolume is, on node-a.
    w.sim.create(&app_pod_using("shared")).unwrap();
    w.create_pvc(false);
    let mut spec = restic_spec(CopyMethod::Clone, Duration::from_secs(600));
    spec.restic.as_mut().unwrap().mover_volumes = vec![v1::MoverVolume {
        mount_path: "shared".into(),
        volume_source: Some(snapgate_proto::json::json_to_struct(
            serde_json::json!({"persistentVolumeClaim": {"claimName": "shared"}})
                .as_object()
                .unwrap(),
        )),
    }];
    assert_pinned_to_node_a(&mut w, spec).await;
}
