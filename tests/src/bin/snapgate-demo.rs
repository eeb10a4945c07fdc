//! `snapgate-demo`: the whole loop on one machine, printing the copy-trigger timeline.
//!
//! ```text
//!   simulated API server (served on --kube-listen, kubeconfig in --dir)
//!        ▲ REST (kube's client, as in a cluster)
//!   agent ──gRPC──► scheduler (--grpc-listen, redb in --dir) ◄──gRPC── application (SDK)
//! ```
//!
//! The application writes all the time and, through the SDK's guard, pauses its writes from
//! WaitingForTrigger to Completed of every copy.
//!
//! Secured as on a cluster: the simulated API server issues ServiceAccount tokens (written to
//! `--dir`) and the scheduler checks every caller's against its key set. The operator is
//! `snapgate/admin`, the application `demo/db-app`, the agent `demo/snapgate-agent`, and the
//! agent reviews the source's author with the API server before it acts. The demo prints what the PVC's annotations
//! say (read by a watch, as `kubectl get pvc -w` would), what the application does, and how
//! each run ends. `kubectl --kubeconfig <dir>/kubeconfig -n demo get pvc data -w` shows the same.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;
use futures::StreamExt as _;
use k8s_openapi::{
    api::core::v1::{Namespace, PersistentVolumeClaim, PersistentVolumeClaimSpec, Secret},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use snapgate_agent::{
    AgentConfig, SchedulerAccess, link::Backoff, metrics::Metrics as AgentMetrics,
};
use snapgate_agent_core::plan::PlanConfig;
use snapgate_contract::{
    COPY_TRIGGER as TRIGGER, LATEST_COPY_STATUS as STATUS, LATEST_COPY_TRIGGER as LATEST,
    LATEST_COPY_TRIGGER_WAITING_SINCE as SINCE, USE_COPY_TRIGGER as USE,
};
use snapgate_e2e::secure;
use snapgate_kube_sim::{JobBehaviour, KubeSim, PodOutcome};
use snapgate_proto::{clock::SystemClock, v1};
use snapgate_scheduler::{
    Config,
    audit::Audit,
    identity::{Authorizer, Policy},
    metrics::Metrics,
    serve,
    store::RedbStore,
};
use snapgate_sdk::{Client, Error, GuardOptions};
use tokio::sync::{Mutex, RwLock};

const NS: &str = "demo";
const PVC: &str = "data";
/// The operator, an admin of the scheduler.
const OPS: (&str, &str) = ("snapgate", "admin");
/// The application.
const APP: (&str, &str) = (NS, "db-app");
/// The agent of the namespace.
const AGENT: (&str, &str) = (NS, "snapgate-agent");

/// snapgate demo: scheduler, agent, simulated cluster and an application, on loopback.
#[derive(Debug, Parser)]
struct Args {
    /// Where the simulated API server listens (kubectl reaches it through the kubeconfig).
    #[arg(long, default_value = "127.0.0.1:6443")]
    kube_listen: String,
    /// Where the scheduler's gRPC API listens (grpcurl and the CLI reach it there).
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc_listen: String,
    /// Where the kubeconfig and the scheduler's store go.
    #[arg(long, default_value = "snapgate-demo")]
    dir: PathBuf,
    /// Stop after this many completed runs (0: run until Ctrl-C).
    #[arg(long, default_value_t = 3)]
    runs: u32,
}

fn stamp(start: Instant) -> String {
    format!("{:>7.3}s", start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let start = Instant::now();
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let store_dir = args.dir.join("store");
    if store_dir.exists() {
        std::fs::remove_dir_all(&store_dir)?;
    }
    std::fs::create_dir_all(&store_dir)?;

    // The simulated cluster: a snapshot takes a moment, a restic Job a second.
    let sim = KubeSim::new();
    sim.controllers()
        .snapshot_ready_delay(Duration::from_millis(700))
        .default_job_behaviour(JobBehaviour::sequence(vec![
            PodOutcome::succeed([
                "using parent snapshot 4f2a77c1",
                "processed 1204 files, 48.213 MiB in 0:01",
                "snapshot 9c1d77ab saved",
                "Restic completed in 1s",
            ])
            .after(Duration::from_secs(1)),
        ]));
    let kube_addr = sim
        .serve(&args.kube_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--kube-listen)", args.kube_listen))?;
    let kubeconfig = args.dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, snapgate_kube_sim::ADMIN_TOKEN)?;
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig)?,
            &KubeConfigOptions::default(),
        )
        .await?,
    )?;
    cluster_objects(&client).await?;

    // Every caller's ServiceAccount token, as projected into its pod.
    let ops_token = secure::write_token(&sim, &args.dir, OPS);
    let app_token = secure::write_token(&sim, &args.dir, APP);
    let agent_token = secure::write_token(&sim, &args.dir, AGENT);

    // The scheduler: tokens checked against the simulator's key set.
    let listener = snapgate_scheduler::bind(args.grpc_listen.parse()?, "--grpc-listen").await?;
    let grpc_addr = listener.local_addr()?;
    let policy = Policy {
        admins: [secure::subject(OPS)].into(),
        agent_service_account: AGENT.1.into(),
        ..Policy::default()
    };
    let config = Config {
        store: RedbStore::open(&store_dir)?.into(),
        clock: Arc::new(SystemClock),
        metrics: Metrics::new(),
        authorizer: Authorizer::with_policy(policy, Audit::to_log()),
        authenticator: Some(secure::authenticator(&sim, &args.dir).await),
        rate: (0, 0),
        lease_policy: Default::default(),
    };
    let scheduler = tokio::spawn(serve(config, listener, std::future::pending()));
    let url = format!("http://{grpc_addr}");

    // The agent, talking to the served API server with the kubeconfig, as in a cluster, and
    // to the scheduler with its token; it reviews the source's author before it acts.
    let agent = tokio::spawn(snapgate_agent::run_with(
        AgentConfig {
            scheduler: url.clone(),
            agent_id: "demo-agent".into(),
            namespaces: vec![NS.into()],
            plan: PlanConfig::default(),
            backoff: Backoff::default(),
            retry_after: Duration::from_secs(1),
            metrics: AgentMetrics::new(),
            clock: Arc::new(SystemClock),
        },
        SchedulerAccess {
            token_file: Some(agent_token.clone()),
            ..SchedulerAccess::default()
        },
        client.clone(),
    ));

    println!("snapgate demo");
    println!("  simulated API server  http://{kube_addr}");
    println!("  scheduler (gRPC)      {url}");
    println!(
        "  watch the PVC:        kubectl --kubeconfig {} -n {NS} get pvc {PVC} -w \\\n                          -o custom-columns='STATUS:.metadata.annotations.volsync\\.backube/latest-copy-status,LATEST:.metadata.annotations.volsync\\.backube/latest-copy-trigger'",
        kubeconfig.display()
    );
    println!(
        "  drive it:             grpcurl -plaintext -H \"authorization: Bearer $(cat {})\" \\\n                          -d '{{\"namespace\":\"{NS}\",\"name\":\"db\"}}' {grpc_addr} snapgate.v1.SourceService/ListRuns",
        ops_token.display()
    );
    println!(
        "  ServiceAccount tokens (audience snapgate, checked by the scheduler):\n                          {} (operator, admin)\n                          {} (application)\n                          {} (agent)",
        ops_token.display(),
        app_token.display(),
        agent_token.display(),
    );
    println!();

    let sdk = Client::builder(url.clone())
        .token_file(&ops_token)
        .connect()
        .await?;
    let app_sdk = Client::builder(url.clone())
        .token_file(&app_token)
        .connect()
        .await?;
    sdk.sources()
        .apply_source(v1::ApplySourceRequest {
            namespace: NS.into(),
            name: "db".into(),
            spec: Some(v1::SourceSpec {
                source_pvc: PVC.into(),
                // No schedule, no manual tag: continuous, the next run starts after cleanup.
                trigger: None,
                restic: Some(v1::ReplicationSourceResticSpec {
                    copy_method: v1::CopyMethod::Snapshot as i32,
                    repository: "restic-config".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            expected_version: 0,
        })
        .await?;
    println!(
        "{} ops: applied source {NS}/db (restic, copyMethod Snapshot, continuous)",
        stamp(start)
    );

    let pvc_watch = tokio::spawn(print_pvc_timeline(client.clone(), start));
    let app = tokio::spawn(application(app_sdk, start));
    let done = print_runs(sdk, start, args.runs);
    tokio::select! {
        r = done => r?,
        _ = tokio::signal::ctrl_c() => println!("interrupted"),
    }
    app.abort();
    pvc_watch.abort();
    agent.abort();
    scheduler.abort();
    Ok(())
}

/// The namespace, the restic Secret and the application's gated PVC.
async fn cluster_objects(client: &kube::Client) -> anyhow::Result<()> {
    let pp = PostParams::default();
    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(
            &pp,
            &Namespace {
                metadata: meta(NS),
                ..Default::default()
            },
        )
        .await?;
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(
            &pp,
            &Secret {
                metadata: meta("restic-config"),
                string_data: Some(BTreeMap::from([
                    (
                        "RESTIC_REPOSITORY".into(),
                        "s3:http://minio:9000/demo".into(),
                    ),
                    ("RESTIC_PASSWORD".into(), "demo".into()),
                ])),
                ..Default::default()
            },
        )
        .await?;
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), NS)
        .create(
            &pp,
            &PersistentVolumeClaim {
                metadata: ObjectMeta {
                    annotations: Some(BTreeMap::from([(USE.into(), String::new())])),
                    ..meta(PVC)
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    resources: Some(k8s_openapi::api::core::v1::VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".into(),
                            Quantity("1Gi".into()),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                status: None,
            },
        )
        .await?;
    Ok(())
}

/// Prints every change of the PVC's copy-trigger annotations, as a watch sees it.
async fn print_pvc_timeline(client: kube::Client, start: Instant) {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client, NS);
    let config = watcher::Config::default().fields(&format!("metadata.name={PVC}"));
    let mut stream = watcher(pvcs, config).applied_objects().boxed();
    let mut last = BTreeMap::new();
    while let Some(Ok(pvc)) = stream.next().await {
        let a = pvc.metadata.annotations.unwrap_or_default();
        let shown: BTreeMap<String, String> = [STATUS, LATEST, TRIGGER, SINCE]
            .into_iter()
            .filter_map(|k| a.get(k).map(|v| (k.to_owned(), v.clone())))
            .collect();
        if shown == last {
            continue;
        }
        let short = |k: &str| k.trim_start_matches("volsync.backube/").to_owned();
        let text: Vec<String> = shown
            .iter()
            .map(|(k, v)| format!("{}={v}", short(k)))
            .collect();
        println!("{} pvc {NS}/{PVC}: {}", stamp(start), text.join(" "));
        last = shown;
    }
}

/// The application: writes all the time; pauses its writes around every copy.
async fn application(sdk: Client, start: Instant) {
    let lock = Arc::new(RwLock::new(()));
    let written = Arc::new(AtomicU64::new(0));
    let (writer_lock, counter) = (lock.clone(), written.clone());
    tokio::spawn(async move {
        loop {
            {
                let _write = writer_lock.read().await;
                counter.fetch_add(1, Ordering::Relaxed);
            }
            // The application's pace of writes.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    loop {
        let held = Arc::new(Mutex::new(None));
        let (q_lock, q_held, q_count) = (lock.clone(), held.clone(), written.clone());
        let u_count = written.clone();
        let result = sdk
            .quiesced_copy(
                snapgate_sdk::pvc(NS, PVC),
                move |request| async move {
                    *q_held.lock().await = Some(q_lock.write_owned().await);
                    println!(
                        "{} app: copy requested for {}: writes paused after {} records; triggering",
                        stamp(start),
                        request.run_id,
                        q_count.load(Ordering::Relaxed)
                    );
                    Ok::<_, Error>(())
                },
                move || async move {
                    held.lock().await.take();
                    println!(
                        "{} app: unquiesced at the copy point; writes resume ({} records)",
                        stamp(start),
                        u_count.load(Ordering::Relaxed)
                    );
                    Ok::<_, Error>(())
                },
                GuardOptions::default().hold_limit(Duration::from_secs(30)),
            )
            .await;
        match result {
            Ok(copy) => println!(
                "{} app: {} copied with trigger {:?}; writes were paused {:?}",
                stamp(start),
                copy.run_id,
                copy.trigger,
                copy.held
            ),
            Err(e) => {
                println!("{} app: {e}", stamp(start));
                // The application's back-off before it tries again.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Prints each run's end (with the mover's result), until `runs` have ended.
async fn print_runs(sdk: Client, start: Instant, runs: u32) -> anyhow::Result<()> {
    let mut reported = std::collections::BTreeSet::new();
    loop {
        let list = sdk
            .sources()
            .list_runs(v1::ListRunsRequest {
                namespace: NS.into(),
                name: "db".into(),
                limit: 20,
            })
            .await?
            .into_inner()
            .runs;
        for run in list.iter().rev() {
            if run.result() == v1::RunResult::Unspecified || !reported.insert(run.id.clone()) {
                continue;
            }
            let mover = run.mover_status.clone().unwrap_or_default();
            let result = match run.result() {
                v1::RunResult::Successful => "Successful",
                v1::RunResult::Failed => "Failed",
                v1::RunResult::TimedOut => "TimedOut",
                v1::RunResult::Aborted => "Aborted",
                v1::RunResult::Unspecified => "unknown",
            };
            println!(
                "{} run {} ended {} (trigger {:?}); mover {}:\n{}",
                stamp(start),
                run.id,
                result,
                run.trigger,
                mover.result,
                mover
                    .logs
                    .lines()
                    .map(|l| format!("            | {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        if runs > 0 && reported.len() >= runs as usize {
            println!("{} demo done: {} runs", stamp(start), reported.len());
            return Ok(());
        }
        // The pause between two looks at the runs.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
