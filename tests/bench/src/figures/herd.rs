//! Figure 2: a thundering herd. `sources` scheduled sources all due at the same instant T
//! (seeded into the store), spread over `agents` namespaces each served by a connected stub
//! agent; how long until every run's directive has reached its agent, and the scheduler's peak
//! RSS. Then the same with a jitter: each source is due at T plus its own stable offset, and
//! what counts is how late each directive is after its own due time.
//!
//! The reference: the bare tonic server streaming as many messages of a directive's size over
//! as many streams (one per agent, each on its own connection).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use prost::Message as _;
use snapgate_proto::v1;

use super::Config;
use crate::{
    echo,
    procs::{self, SecSetup, Security},
    report::{Report, Row},
    seed::{self, Due},
    stats::{Summary, fmt_count, fmt_duration, fmt_mb},
    stub,
};

/// Goal: every directive sent within this of its due time.
const GOAL: Duration = Duration::from_secs(1);
/// Goal: peak scheduler RSS.
const GOAL_RSS: u64 = 300_000_000;

/// Runs figure 2: all due at once, then with a jitter.
pub(crate) async fn run(cfg: &Config, report: &mut Report, figure: &str) -> anyhow::Result<()> {
    for &n in &cfg.herd_sizes {
        run_variant(cfg, n, 0, report, figure).await?;
    }
    run_variant(cfg, cfg.sources, cfg.jitter_secs, report, figure).await
}

async fn run_variant(
    cfg: &Config,
    n: usize,
    jitter: i64,
    report: &mut Report,
    figure: &str,
) -> anyhow::Result<()> {
    let dir = cfg.tempdir("herd")?;
    let agents = cfg.agents.min(n).max(1);
    let namespaces: Vec<String> = (0..agents).map(|a| format!("ns-{a:03}")).collect();
    // T leaves time to seed, start the scheduler and connect the agents (measured: both grow
    // with the store; 100,000 scheduled sources take about 30 s).
    let lead = Duration::from_secs(5) + Duration::from_micros(300 * n as u64);
    let now = Utc::now();
    let t = now + chrono::Duration::from_std(lead)?;
    let mut records = Vec::with_capacity(n);
    let mut due: HashMap<String, DateTime<Utc>> = HashMap::with_capacity(n);
    for i in 0..n {
        let name = format!("s-{i:06}");
        let (record, at) = seed::source(&namespaces[i % agents], &name, Due::At(t), jitter, now)?;
        due.insert(name, at.context("a scheduled source has a due time")?);
        records.push(record);
    }
    let last_due = due.values().max().copied().unwrap_or(t);
    let sample_directive = v1::Directive {
        run_id: "run-100000".into(),
        source: Some(v1::SourceRef {
            namespace: namespaces[0].clone(),
            name: "s-000000".into(),
        }),
        spec: records
            .first()
            .map(|r| snapgate_scheduler::wire::common::spec_to_wire(&r.source.spec)),
        phase: v1::DirectivePhase::Gate as i32,
        generation: 1,
        ..Default::default()
    };
    let directive_bytes = sample_directive.encoded_len();
    seed::write(&dir.path().join("data"), records, false, now)?;

    let signer = snapgate_kube_sim::KubeSim::new();
    let sec = SecSetup::new(&dir.path().join("sec"), Security::PLAIN, &signer)?;
    let port = procs::free_port();
    let url = sec.url(port);
    let mut scheduler = procs::spawn_scheduler(
        &cfg.bins,
        &dir.path().join("data"),
        port,
        &sec,
        &dir.path().join("scheduler.log"),
    )?;
    procs::wait_serving(
        &mut scheduler,
        &sec,
        &url,
        ("ns-000", "probe"),
        lead + Duration::from_secs(120),
    )
    .await?;
    let inbox = Arc::new(stub::Inbox::default());
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel(agents);
    let mut stubs = Vec::new();
    for (a, ns) in namespaces.iter().enumerate() {
        let client = sec.client(&url, None).await?;
        stubs.push(AbortOnDrop(tokio::spawn(stub::run(
            client,
            format!("stub-{a}"),
            vec![ns.clone()],
            stub::Answer::Nothing,
            inbox.clone(),
            connected_tx.clone(),
        ))));
    }
    for _ in 0..agents {
        connected_rx
            .recv()
            .await
            .context("a stub agent never connected")?;
    }
    let connected_at = Utc::now();
    let before = scheduler.memory()?;
    let late_start = connected_at > t;

    // Wait for every directive, or the budget after the last due time.
    let budget = cfg.herd_budget;
    let give_up = last_due + chrono::Duration::from_std(budget)?;
    loop {
        scheduler.check_alive()?;
        let runs = unique_runs(&inbox);
        if runs >= n || Utc::now() > give_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peak = scheduler.memory()?;
    drop(stubs);
    let received = inbox.received();
    // The first directive of each source's run (a dropped link resends them).
    let mut first: HashMap<&str, SystemTime> = HashMap::with_capacity(n);
    for r in &received {
        let at = first.entry(r.source.as_str()).or_insert(r.at);
        *at = (*at).min(r.at);
    }
    let mut lateness = Vec::with_capacity(n);
    let mut last = SystemTime::UNIX_EPOCH;
    for (source, at) in first {
        let Some(d) = due.get(source) else {
            continue;
        };
        lateness.push(
            (DateTime::<Utc>::from(at) - *d)
                .to_std()
                .unwrap_or_default(),
        );
        last = last.max(at);
    }
    let sent = lateness.len();
    let finished = sent >= n;
    let late = Summary::of(&mut lateness);
    let all_sent_after_t = (DateTime::<Utc>::from(last) - t)
        .to_std()
        .unwrap_or_default();

    // The reference: the same number of messages of the same size over as many streams.
    let (mut echo, echo_port) = procs::spawn_echo(&cfg.bins, &sec, &dir.path().join("echo.log"))?;
    procs::echo_client(&mut echo, &sec, echo_port).await?;
    let reference =
        stream_reference(&sec, echo_port, agents, n.div_ceil(agents), directive_bytes).await?;
    drop(echo);

    let variant = if jitter == 0 {
        "all due at once".to_owned()
    } else {
        format!("jitter {jitter} s")
    };
    let size = format!("{} sources, {agents} agents", fmt_count(n));
    let mut notes = Vec::new();
    if late_start {
        notes.push(format!(
            "the scheduler and agents were ready only {} after T: the figure includes start-up",
            fmt_duration((connected_at - t).to_std().unwrap_or_default())
        ));
    }
    let dropped = inbox.dropped.load(std::sync::atomic::Ordering::Relaxed);
    if dropped > 0 {
        let why = inbox
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .unwrap_or_default();
        notes.push(format!(
            "{dropped} agent links ended and reconnected (the last: {why})"
        ));
    }
    let value = if finished {
        format!(
            "max {} (p50 {}, p99 {}); all sent T+{}",
            fmt_duration(late.max),
            fmt_duration(late.p50),
            fmt_duration(late.p99),
            fmt_duration(all_sent_after_t)
        )
    } else {
        format!(
            "did not finish within {} of the last due time: {} of {} sent",
            fmt_duration(budget),
            fmt_count(sent),
            fmt_count(n)
        )
    };
    let ratio = if jitter == 0 {
        all_sent_after_t.as_secs_f64() / reference.as_secs_f64()
    } else {
        late.max.as_secs_f64() / reference.as_secs_f64()
    };
    let mut row = Row::new(
        figure,
        format!("directives sent, late by ({variant})"),
        size.clone(),
    )
    .value(value)
    .reference(format!(
        "{} to stream {} × {} B",
        fmt_duration(reference),
        fmt_count(n),
        directive_bytes
    ))
    .ratio(if finished { ratio } else { f64::NAN })
    .goal(
        format!("every one within {}", fmt_duration(GOAL)),
        finished && late.max <= GOAL,
    );
    if !notes.is_empty() {
        row = row.note(notes.join("; "));
    }
    report.push(row);
    report.push(
        Row::new(figure, format!("peak scheduler RSS ({variant})"), size)
            .value(fmt_mb(peak.hwm))
            .reference(format!("{} loaded, before T", fmt_mb(before.rss)))
            .ratio(peak.hwm as f64 / before.rss as f64)
            .goal(format!("< {}", fmt_mb(GOAL_RSS)), peak.hwm < GOAL_RSS),
    );
    Ok(())
}

/// Distinct runs whose directive arrived.
fn unique_runs(inbox: &stub::Inbox) -> usize {
    // Duplicates only follow a dropped link (the resync): count cheaply until one happens.
    if inbox.dropped.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        return inbox.count();
    }
    inbox
        .received()
        .iter()
        .map(|r| r.run_id.clone())
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// How long the echo server takes to stream `per_stream` messages of about `bytes` bytes on
/// each of `streams` streams (each on its own connection), until the last arrives.
async fn stream_reference(
    sec: &SecSetup,
    port: u16,
    streams: usize,
    per_stream: usize,
    bytes: usize,
) -> anyhow::Result<Duration> {
    let mut clients = Vec::with_capacity(streams);
    for _ in 0..streams {
        clients.push(sec.client(&sec.url(port), None).await?);
    }
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                let mut s = c
                    .triggers()
                    .watch_copy(echo::stream_request(per_stream, bytes))
                    .await?
                    .into_inner();
                let mut n = 0;
                while let Some(m) = s.next().await {
                    m?;
                    n += 1;
                }
                anyhow::ensure!(n == per_stream, "the echo stream ended after {n} messages");
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
