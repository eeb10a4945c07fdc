//! Figure 9: high availability, the scheduler on etcd.
//!
//! 1. Write throughput: `clients` concurrent clients apply distinct new sources over 100
//!    namespaces (ApplySource, `skipInitialRun`: every accepted call is a commit) for `measure`
//!    against one scheduler on redb and against one on etcd (a fresh etcd, one replica, elected
//!    before it serves), and against one on a three-member etcd cluster on this machine, with
//!    figure 3's rate loop; the rates, p50/p99 latencies, and etcd's rate over redb's.
//! 2. Failover: two replicas on one etcd with `--etcd-lease-ttl ha_ttl`, `ha_sources` idle
//!    sources applied and one source with a run in flight (its GATE directive is resent on every
//!    agent (re)connect and never answered); a stub agent connects to the replicas in turn
//!    (client-side failover). `ha_failovers` times: SIGKILL the leader (the replica named by
//!    the etcd key `<prefix>/leader`), then time kill → the key held by the other replica (a
//!    new create_revision), kill → the other replica answering a SourceService call (it has
//!    loaded the store; its health turns SERVING at the same moment), and kill → the stub's
//!    first directive from it. The killed replica is then restarted (as Kubernetes would) and
//!    waits as a follower, so there are always two. "Serving" is answering a call only a
//!    leader serves (a Trigger naming no target: refused as invalid, changing nothing); until
//!    then the harness also reads the source on the other replica, which as a follower serves
//!    reads from its copy of the leader's commits: every failed read is counted.
//! 3. Follower lag, before the kills: `ha_lag_samples` new sources applied one by one on the
//!    leader, each read on the follower until it shows: acknowledgement → visible.
//!
//! Without an etcd binary the figure is skipped with a row saying how to build one.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use snapgate_etcd::testing::{EtcdCluster, EtcdServer};
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

/// The flags of replica `name` on etcd at `endpoints` (comma-separated) under `prefix`.
fn etcd_args(endpoints: &str, prefix: &str, ttl: Duration, name: &str) -> Vec<String> {
    vec![
        "--store".into(),
        "etcd".into(),
        "--etcd-endpoints".into(),
        endpoints.into(),
        "--etcd-prefix".into(),
        prefix.into(),
        "--etcd-lease-ttl".into(),
        format!("{}s", ttl.as_secs()),
        "--replica-name".into(),
        name.into(),
    ]
}

/// Part 1: the write rate on redb, then on etcd, then on a three-member etcd.
async fn writes(
    cfg: &Config,
    etcd: &EtcdServer,
    sec: &SecSetup,
    dir: &std::path::Path,
    report: &mut Report,
    figure: &str,
) -> anyhow::Result<()> {
    let mut measured = Vec::new();
    // Started for its own measurement only: idle members would still share the machine.
    let mut cluster = None;
    for store in ["redb", "etcd", "etcd3"] {
        let port = procs::free_port();
        let url = sec.url(port);
        let extra = match store {
            "etcd" => etcd_args(&etcd.endpoint(), "/bench-writes", cfg.ha_ttl, "writer"),
            "etcd3" => {
                // A three-member etcd on this machine: a commit is fsynced by two at least.
                let started = tokio::spawn(EtcdCluster::start(3))
                    .await
                    .context("starting a three-member etcd")?;
                let endpoints = started.options("/").endpoints.join(",");
                cluster = Some(started);
                etcd_args(&endpoints, "/bench-writes", cfg.ha_ttl, "writer")
            }
            _ => Vec::new(),
        };
        let mut scheduler = procs::spawn_scheduler_with(
            &cfg.bins,
            &dir.join(format!("data-{store}")),
            port,
            sec,
            &dir.join(format!("scheduler-{store}.log")),
            &extra,
        )?;
        // On etcd: serving once elected and loaded (a follower refuses writes).
        wait_leading(&mut scheduler, sec, &url, Duration::from_secs(60)).await?;
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
        (_, redb, ref redb_lat, redb_n),
        (_, etcd_rate, ref etcd_lat, etcd_n),
        (_, etcd3_rate, ref etcd3_lat, etcd3_n),
    ] = measured[..]
    else {
        bail!("three stores measured");
    };
    let on_etcd = [
        (
            "ApplySource/s on etcd (1 replica)",
            "ApplySource latency on etcd",
            etcd_rate,
            etcd_lat,
            format!(
                "{} calls on etcd, {} on redb in {:?} each",
                fmt_count(etcd_n),
                fmt_count(redb_n),
                cfg.measure
            ),
        ),
        (
            "ApplySource/s on a 3-member etcd (one machine)",
            "ApplySource latency on a 3-member etcd",
            etcd3_rate,
            etcd3_lat,
            format!(
                "{} calls in {:?}; the three members share this machine's cores and disk",
                fmt_count(etcd3_n),
                cfg.measure
            ),
        ),
    ];
    for (rate_metric, latency_metric, rate, lat, note) in on_etcd {
        let ratio = rate / redb;
        report.push(
            Row::new(figure, rate_metric, size.clone())
                .value(fmt_rate(rate))
                .reference(format!("redb {}", fmt_rate(redb)))
                .ratio(ratio)
                .goal(format!("≥ {WRITE_GOAL}x redb"), ratio >= WRITE_GOAL)
                .note(note),
        );
        report.push(
            Row::new(figure, latency_metric, size.clone())
                .value(latency(lat))
                .reference(format!("redb {}", latency(redb_lat)))
                .ratio(lat.p50.as_secs_f64() / redb_lat.p50.as_secs_f64()),
        );
    }
    drop(cluster);
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
            &etcd_args(&etcd.endpoint(), PREFIX, ttl, name),
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
            wait_leading(&mut r.proc, sec, &sec.url(port), Duration::from_secs(60)).await?;
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
    let lag = follower_lag(
        cfg,
        sdk,
        &sec.client(&sec.url(replicas[1].port), None).await?,
    )
    .await?;
    let (mut elected, mut serving, mut directive) = (Vec::new(), Vec::new(), Vec::new());
    let (mut reads, mut reads_failed, mut last_read_error) = (0_usize, 0_usize, None::<String>);
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
            if t_serving.is_none() && leads(&other_client).await {
                t_serving = Some(killed_at.elapsed());
            }
            // Reads on the other replica meanwhile: a follower serves them from its copy.
            if t_serving.is_none() {
                reads += 1;
                let read = other_client
                    .sources()
                    .get_source(v1::GetSourceRequest {
                        namespace: NS.into(),
                        name: INFLIGHT.into(),
                    })
                    .await;
                if let Err(status) = read {
                    reads_failed += 1;
                    last_read_error = Some(status.to_string());
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
    report.push(
        Row::new(
            figure,
            "GetSource on the other replica, kill → new leader serving",
            format!("{n} kills"),
        )
        .value(format!("{reads_failed} of {} failed", fmt_count(reads)))
        .goal("none fails (followers serve reads)", reads_failed == 0)
        .note(last_read_error.unwrap_or_default()),
    );
    let mut lag = lag;
    let lag_summary = Summary::of(&mut lag);
    report.push(
        Row::new(
            figure,
            "ApplySource acknowledged → visible on the follower",
            format!("{} applies", lag.len()),
        )
        .value(format!(
            "p50 {} / p99 {} / max {}",
            fmt_duration(lag_summary.p50),
            fmt_duration(lag_summary.p99),
            fmt_duration(lag.iter().max().copied().unwrap_or_default())
        ))
        .goal(
            "p99 ≤ 100 ms",
            lag_summary.p99 <= Duration::from_millis(100),
        ),
    );
    Ok(())
}

/// Whether the scheduler behind `client` leads: it answers a call only a leader serves (a
/// Trigger naming no target, refused as invalid and changing nothing) with anything but
/// UNAVAILABLE, which is a follower's (or a process not up).
async fn leads(client: &snapgate_sdk::Client) -> bool {
    match client
        .triggers()
        .trigger(v1::TriggerRequest::default())
        .await
    {
        Ok(_) => true,
        Err(status) => status.code() != tonic::Code::Unavailable,
    }
}

/// Waits until the scheduler at `url` leads (elected and loaded: it serves writes).
async fn wait_leading(
    proc: &mut Proc,
    sec: &SecSetup,
    url: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        proc.check_alive()?;
        if let Ok(client) = sec.client(url, None).await
            && leads(&client).await
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the scheduler did not lead within {within:?}");
        }
        // Another process starting: polled, every 5 ms.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How long after the leader acknowledged an ApplySource the follower shows it, over
/// `ha_lag_samples` new sources applied one after another: each polled on the follower until
/// found (every poll a GetSource round trip, some 0.3 ms on loopback).
async fn follower_lag(
    cfg: &Config,
    leader: &snapgate_sdk::Client,
    follower: &snapgate_sdk::Client,
) -> anyhow::Result<Vec<Duration>> {
    let mut lags = Vec::with_capacity(cfg.ha_lag_samples);
    for i in 0..cfg.ha_lag_samples {
        let name = format!("lag-{i:05}");
        leader
            .sources()
            .apply_source(v1::ApplySourceRequest {
                namespace: NS.into(),
                name: name.clone(),
                spec: Some(v1::SourceSpec {
                    skip_initial_run: true,
                    ..seed::spec(&name, Due::Idle, 0)
                }),
                expected_version: 0,
            })
            .await
            .with_context(|| format!("applying {name}"))?;
        let acked = Instant::now();
        loop {
            let found = follower
                .sources()
                .get_source(v1::GetSourceRequest {
                    namespace: NS.into(),
                    name: name.clone(),
                })
                .await;
            match found {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => bail!("reading {name} on the follower: {s}"),
            }
            anyhow::ensure!(
                acked.elapsed() < Duration::from_secs(10),
                "{name} not on the follower 10 s after the leader acknowledged it"
            );
        }
        lags.push(acked.elapsed());
    }
    Ok(lags)
}

/// Waits until replica `r` runs as a follower that has seen `leader` lead and serves reads:
/// it refuses a leader's call with UNAVAILABLE naming `leader` (its campaign is under way) and
/// answers a GetSource from its copy of the leader's commits.
async fn wait_follower(r: &mut Replica, sec: &SecSetup, leader: &str) -> anyhow::Result<()> {
    let url = sec.url(r.port);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        r.proc.check_alive()?;
        if let Ok(client) = sec.client(&url, None).await {
            let answer = client
                .triggers()
                .trigger(v1::TriggerRequest::default())
                .await;
            let follows = answer.is_err_and(|status| {
                status.code() == tonic::Code::Unavailable
                    && status
                        .metadata()
                        .get(snapgate_scheduler::replica::LEADER_METADATA)
                        .and_then(|v| v.to_str().ok())
                        == Some(leader)
            });
            let read = client
                .sources()
                .get_source(v1::GetSourceRequest {
                    namespace: NS.into(),
                    name: INFLIGHT.into(),
                })
                .await;
            let reads = match read {
                Ok(_) => true,
                Err(status) => status.code() == tonic::Code::NotFound,
            };
            if follows && reads {
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
