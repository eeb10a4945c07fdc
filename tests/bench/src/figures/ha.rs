//! Figure 9: high availability, the scheduler on etcd.
//!
//! 1. Write throughput: `clients` concurrent clients apply distinct new sources over 100
//!    namespaces (ApplySource, `skipInitialRun`: every accepted call is a commit) for `measure`
//!    against one scheduler on redb and against one on etcd (a fresh etcd, one replica, elected
//!    before it serves), with figure 3's rate loop; the rates, p50/p99 latencies, and etcd's
//!    rate over redb's.
//! 2. Failover: two replicas on one etcd with `--etcd-lease-ttl ha_ttl`, `ha_sources` idle
//!    sources applied and one source with a run in flight (its GATE directive is resent on every
//!    agent (re)connect and never answered); a stub agent connects to the replicas in turn
//!    (client-side failover). `ha_failovers` times: SIGKILL the leader (the replica named by
//!    the etcd key `<prefix>/leader`), then time kill → the key held by the other replica (a
//!    new create_revision), kill → the other replica answering a SourceService call (it has
//!    loaded the store; its health turns SERVING at the same moment), and kill → the stub's
//!    first directive from it. The killed replica is then restarted (as Kubernetes would) and
//!    waits as a follower, so there are always two.
//!
//! Without an etcd binary the figure is skipped with a row saying how to build one.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use snapgate_etcd::testing::EtcdServer;
use snapgate_proto::v1;

use super::{
    Config,
    throughput::{self, AbortOnDrop, Rate},
};
use crate::{
    procs::{self, Proc, SecSetup, Security},
    report::{Report, Row},
    seed::{self, Due},
    stats::{Summary, fmt_count, fmt_duration, fmt_rate},
    stub,
};

/// The namespaces of the applied (idle) sources, as figure 4's: `bulk-00` ... `bulk-99`.
/// Spread because, while no agent serves a namespace, the scheduler counts its sources after
/// every write to it (`snapgate_sources_without_agent`): thousands of new sources in one
/// namespace would measure that count, not the store.
const BULK_NAMESPACES: usize = 100;
/// The namespace of the source with a run in flight, the stub agent's only one.
const NS: &str = "ha";
/// The source with a run in flight.
const INFLIGHT: &str = "inflight";
/// The goal of the write rate on etcd, as a share of redb's.
const WRITE_GOAL: f64 = 0.25;
/// The goal of kill → first directive from the new leader: the lease TTL plus this.
const FAILOVER_SLACK: Duration = Duration::from_secs(5);

/// Runs figure 9.
pub(crate) async fn run(cfg: &Config, report: &mut Report, figure: &str) -> anyhow::Result<()> {
    if let Err(why) = snapgate_etcd::testing::etcd_binary() {
        report.push(
            Row::new(figure, "the whole figure", "-")
                .value("skipped: no etcd binary")
                .note(why),
        );
        return Ok(());
    }
    // EtcdServer panics when etcd does not come up: on a task of its own, a harness error.
    let etcd = tokio::spawn(EtcdServer::start())
        .await
        .context("starting etcd")?;
    let dir = cfg.tempdir("ha")?;
    let signer = snapgate_kube_sim::KubeSim::new();
    let sec = SecSetup::new(&dir.path().join("sec"), Security::PLAIN, &signer)?;
    writes(cfg, &etcd, &sec, dir.path(), report, figure).await?;
    failover(cfg, &etcd, &sec, dir.path(), report, figure).await
}

/// ApplySource of a new idle source `w-<i>` in `bulk-<i % 100>`.
fn apply_call(
    c: snapgate_sdk::Client,
    i: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::Status>> + Send>> {
    Box::pin(async move {
        let name = format!("w-{i:06}");
        c.sources()
            .apply_source(v1::ApplySourceRequest {
                namespace: format!("bulk-{:02}", i % BULK_NAMESPACES),
                spec: Some(v1::SourceSpec {
                    skip_initial_run: true,
                    ..seed::spec(&name, Due::Idle, 0)
                }),
                name,
                expected_version: 0,
            })
            .await
            .map(drop)
    })
}

/// The flags of replica `name` on `etcd` under `prefix`.
fn etcd_args(etcd: &EtcdServer, prefix: &str, ttl: Duration, name: &str) -> Vec<String> {
    vec![
        "--store".into(),
        "etcd".into(),
        "--etcd-endpoints".into(),
        etcd.endpoint(),
        "--etcd-prefix".into(),
        prefix.into(),
        "--etcd-lease-ttl".into(),
        format!("{}s", ttl.as_secs()),
        "--replica-name".into(),
        name.into(),
    ]
}

/// Part 1: the write rate on redb, then on etcd.
async fn writes(
    cfg: &Config,
    etcd: &EtcdServer,
    sec: &SecSetup,
    dir: &std::path::Path,
    report: &mut Report,
    figure: &str,
) -> anyhow::Result<()> {
    let mut measured = Vec::new();
    for store in ["redb", "etcd"] {
        let port = procs::free_port();
        let url = sec.url(port);
        let extra = if store == "etcd" {
            etcd_args(etcd, "/bench-writes", cfg.ha_ttl, "writer")
        } else {
            Vec::new()
        };
        let mut scheduler = procs::spawn_scheduler_with(
            &cfg.bins,
            &dir.join(format!("data-{store}")),
            port,
            sec,
            &dir.join(format!("scheduler-{store}.log")),
            &extra,
        )?;
        // On etcd: serving once elected and loaded (a follower refuses with UNAVAILABLE).
        procs::wait_serving(
            &mut scheduler,
            sec,
            &url,
            ("bulk-00", "probe"),
            Duration::from_secs(60),
        )
        .await?;
        let clients = throughput::connect(sec, &url, cfg.clients.1).await?;
        let rate =
            throughput::rate(&clients, cfg.clients.0, cfg.measure, usize::MAX, apply_call).await;
        scheduler.check_alive()?;
        let Rate {
            per_sec,
            failed,
            mut latencies,
            ..
        } = rate?;
        anyhow::ensure!(failed == 0, "ApplySource on {store}: {failed} calls failed");
        let summary = Summary::of(&mut latencies);
        measured.push((store, per_sec, summary, latencies.len()));
    }
    let size = format!("{} clients / {} conns", cfg.clients.0, cfg.clients.1);
    let latency =
        |s: &Summary| format!("p50 {} / p99 {}", fmt_duration(s.p50), fmt_duration(s.p99));
    let [
        (_, redb, redb_lat, redb_n),
        (_, etcd_rate, etcd_lat, etcd_n),
    ] = measured[..]
    else {
        bail!("two stores measured");
    };
    let ratio = etcd_rate / redb;
    report.push(
        Row::new(figure, "ApplySource/s on etcd (1 replica)", size.clone())
            .value(fmt_rate(etcd_rate))
            .reference(format!("redb {}", fmt_rate(redb)))
            .ratio(ratio)
            .goal(format!("≥ {WRITE_GOAL}x redb"), ratio >= WRITE_GOAL)
            .note(format!(
                "{} calls on etcd, {} on redb in {:?} each",
                fmt_count(etcd_n),
                fmt_count(redb_n),
                cfg.measure
            )),
    );
    report.push(
        Row::new(figure, "ApplySource latency on etcd", size)
            .value(latency(&etcd_lat))
            .reference(format!("redb {}", latency(&redb_lat)))
            .ratio(etcd_lat.p50.as_secs_f64() / redb_lat.p50.as_secs_f64()),
    );
    Ok(())
}

/// One replica of part 2.
struct Replica {
    name: String,
    port: u16,
    proc: Proc,
}

/// Part 2: failover between two replicas.
async fn failover(
    cfg: &Config,
    etcd: &EtcdServer,
    sec: &SecSetup,
    dir: &std::path::Path,
    report: &mut Report,
    figure: &str,
) -> anyhow::Result<()> {
    const PREFIX: &str = "/bench-failover";
    let ttl = cfg.ha_ttl;
    let spawn = |name: &str, port: u16, start: usize| {
        procs::spawn_scheduler_with(
            &cfg.bins,
            &dir.join(format!("data-{name}")),
            port,
            sec,
            &dir.join(format!("scheduler-{name}-{start}.log")),
            &etcd_args(etcd, PREFIX, ttl, name),
        )
    };
    let mut replicas = Vec::with_capacity(2);
    for (k, name) in ["replica-0", "replica-1"].into_iter().enumerate() {
        let port = procs::free_port();
        let proc = spawn(name, port, 0)?;
        let mut r = Replica {
            name: name.into(),
            port,
            proc,
        };
        if k == 0 {
            // The first leads.
            procs::wait_serving(
                &mut r.proc,
                sec,
                &sec.url(port),
                (NS, INFLIGHT),
                Duration::from_secs(60),
            )
            .await?;
        } else {
            wait_follower(&mut r, sec, "replica-0").await?;
        }
        replicas.push(r);
    }
    let leader_url = sec.url(replicas[0].port);

    // The load the leader holds: idle sources, and one run in flight.
    let clients = throughput::connect(sec, &leader_url, cfg.clients.1).await?;
    let applied = throughput::rate(
        &clients,
        cfg.clients.0.min(cfg.ha_sources.max(1)),
        Duration::from_secs(120),
        cfg.ha_sources,
        apply_call,
    )
    .await?;
    anyhow::ensure!(
        applied.failed == 0 && applied.latencies.len() == cfg.ha_sources,
        "applying {} sources: {} failed, {} applied",
        cfg.ha_sources,
        applied.failed,
        applied.latencies.len()
    );
    let sdk = &clients[0];
    sdk.sources()
        .apply_source(v1::ApplySourceRequest {
            namespace: NS.into(),
            name: INFLIGHT.into(),
            spec: Some(v1::SourceSpec {
                skip_initial_run: true,
                ..seed::spec(INFLIGHT, Due::Idle, 0)
            }),
            expected_version: 0,
        })
        .await
        .context("applying the source with a run in flight")?;
    let started = sdk
        .sources()
        .sync_now(v1::SyncNowRequest {
            namespace: NS.into(),
            name: INFLIGHT.into(),
            request_id: "ha".into(),
        })
        .await
        .context("SyncNow of the source with a run in flight")?
        .into_inner();
    anyhow::ensure!(started.started, "SyncNow started no run");

    // The stub agent, failing over between the replicas itself.
    let mut stub_clients = Vec::with_capacity(replicas.len());
    for r in &replicas {
        stub_clients.push(sec.client(&sec.url(r.port), None).await?);
    }
    let inbox = Arc::new(stub::Inbox::default());
    let (tx, mut connected) = tokio::sync::mpsc::channel(1);
    let _stub = AbortOnDrop(tokio::spawn(stub::run_failover(
        stub_clients,
        "stub".into(),
        vec![NS.into()],
        stub::Answer::Nothing,
        inbox.clone(),
        tx,
    )));
    tokio::time::timeout(Duration::from_secs(30), connected.recv())
        .await
        .context("the stub agent did not connect within 30 s")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    // The directive comes over the stub's stream; the harness only sees the inbox (polled).
    while inbox.count() == 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the stub agent got no directive within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let client = snapgate_etcd::Client::new(&etcd.options(PREFIX)).context("an etcd client")?;
    let key = etcd.options(PREFIX).leader_key();
    let (mut elected, mut serving, mut directive) = (Vec::new(), Vec::new(), Vec::new());
    for trial in 0..cfg.ha_failovers {
        let (kv, _) = client
            .get(key.as_bytes())
            .await
            .context("reading the key")?;
        let kv = kv.context("no leader key")?;
        let leader_name = String::from_utf8_lossy(&kv.value).into_owned();
        let leader = replicas
            .iter()
            .position(|r| r.name == leader_name)
            .with_context(|| format!("the leader key names {leader_name:?}"))?;
        let other = 1 - leader;
        let other_url = sec.url(replicas[other].port);
        let other_client = sec.client(&other_url, None).await?;

        let killed_at = Instant::now();
        let killed_wall = SystemTime::now();
        replicas[leader].proc.kill();

        let (mut t_elected, mut t_serving, mut t_directive) = (None, None, None);
        let until = killed_at + ttl + Duration::from_secs(30);
        while t_elected.is_none() || t_serving.is_none() || t_directive.is_none() {
            replicas[other].proc.check_alive()?;
            if t_elected.is_none()
                && let Ok((Some(kv2), _)) = client.get(key.as_bytes()).await
                && kv2.create_revision != kv.create_revision
                && kv2.value == replicas[other].name.as_bytes()
            {
                t_elected = Some(killed_at.elapsed());
            }
            if t_serving.is_none() {
                let answer = other_client
                    .sources()
                    .get_source(v1::GetSourceRequest {
                        namespace: NS.into(),
                        name: INFLIGHT.into(),
                    })
                    .await;
                if answer.is_ok() {
                    t_serving = Some(killed_at.elapsed());
                }
            }
            if t_directive.is_none()
                && let Some(at) = inbox
                    .received()
                    .iter()
                    .map(|r| r.at)
                    .filter(|&at| at > killed_wall)
                    .min()
            {
                // The wall clock of its arrival, against the kill's.
                t_directive = Some(at.duration_since(killed_wall).unwrap_or_default());
            }
            if Instant::now() > until {
                bail!(
                    "failover {trial}: within {:?} of the kill: elected {t_elected:?}, serving \
                     {t_serving:?}, directive {t_directive:?}; the stub's last error: {:?}",
                    until - killed_at,
                    inbox.last_error.lock().ok().and_then(|e| e.clone())
                );
            }
            // The other replica and etcd are processes of their own: polled, every 10 ms.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (e, s, d) = (
            t_elected.unwrap_or_default(),
            t_serving.unwrap_or_default(),
            t_directive.unwrap_or_default(),
        );
        println!(
            "   failover {}: {} → {}: elected {}, serving {}, first directive {}",
            trial + 1,
            replicas[leader].name,
            replicas[other].name,
            fmt_duration(e),
            fmt_duration(s),
            fmt_duration(d)
        );
        elected.push(e);
        serving.push(s);
        directive.push(d);

        // Restarted, as Kubernetes would: a follower of the new leader.
        let (name, port) = (replicas[leader].name.clone(), replicas[leader].port);
        replicas[leader].proc = spawn(&name, port, trial + 1)?;
        let new_leader = replicas[other].name.clone();
        wait_follower(&mut replicas[leader], sec, &new_leader).await?;
    }

    let n = cfg.ha_failovers;
    let size = format!(
        "2 replicas, TTL {}, {} sources, {n} kills",
        fmt_duration(ttl),
        fmt_count(cfg.ha_sources + 1)
    );
    let spread = |samples: &[Duration]| {
        let mut s = samples.to_vec();
        s.sort();
        let median = s.get(s.len() / 2).copied().unwrap_or_default();
        let text = format!(
            "min {} / median {} / max {}",
            fmt_duration(s.first().copied().unwrap_or_default()),
            fmt_duration(median),
            fmt_duration(s.last().copied().unwrap_or_default())
        );
        (text, s.last().copied().unwrap_or_default(), median)
    };
    let (text, _, median) = spread(&elected);
    report.push(
        Row::new(
            figure,
            "kill -9 leader → other replica elected",
            size.clone(),
        )
        .value(text)
        .reference(format!("lease TTL {}", fmt_duration(ttl)))
        .ratio(median.as_secs_f64() / ttl.as_secs_f64()),
    );
    let (text, _, median) = spread(&serving);
    report.push(
        Row::new(figure, "kill -9 leader → new leader serving", size.clone())
            .value(text)
            .reference(format!("lease TTL {}", fmt_duration(ttl)))
            .ratio(median.as_secs_f64() / ttl.as_secs_f64()),
    );
    let (text, max, median) = spread(&directive);
    let goal = ttl + FAILOVER_SLACK;
    report.push(
        Row::new(
            figure,
            "kill -9 leader → stub agent's first directive",
            size,
        )
        .value(text)
        .reference(format!("lease TTL {}", fmt_duration(ttl)))
        .ratio(median.as_secs_f64() / ttl.as_secs_f64())
        .goal(
            format!("max ≤ TTL + {}", fmt_duration(FAILOVER_SLACK)),
            max <= goal,
        ),
    );
    Ok(())
}

/// Waits until replica `r` runs as a follower that has seen `leader` lead: it refuses calls
/// with UNAVAILABLE naming `leader` (its campaign is under way).
async fn wait_follower(r: &mut Replica, sec: &SecSetup, leader: &str) -> anyhow::Result<()> {
    let url = sec.url(r.port);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        r.proc.check_alive()?;
        if let Ok(client) = sec.client(&url, None).await {
            let answer = client
                .sources()
                .get_source(v1::GetSourceRequest {
                    namespace: NS.into(),
                    name: INFLIGHT.into(),
                })
                .await;
            if let Err(status) = answer
                && status.code() == tonic::Code::Unavailable
                && status
                    .metadata()
                    .get(snapgate_scheduler::replica::LEADER_METADATA)
                    .and_then(|v| v.to_str().ok())
                    == Some(leader)
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{} was not a follower of {leader} within 60 s", r.name);
        }
        // Another process starting: polled, every 20 ms.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
