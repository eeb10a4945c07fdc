//! One function per subcommand: build the request, call the scheduler, print the answer as a
//! table or as JSON / YAML.

use std::{io::Read as _, path::Path};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use snapgate_sdk::{
    Client, CopyTarget, Error,
    json::{self as as_json, timestamp},
    proto::{self as v1, CopyMethod},
    volsync,
};
use tonic::Code;

use crate::{
    args::{Output, TargetArgs},
    table::Table,
};

/// Prints a value as JSON or YAML (callers print tables themselves).
pub(crate) fn print_value(output: Output, value: &Value) -> anyhow::Result<()> {
    match output {
        Output::Yaml => print!("{}", serde_yaml::to_string(value)?),
        Output::Json | Output::Table => println!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

fn list_value(items: Vec<Value>) -> Value {
    json!({ "apiVersion": "v1", "kind": "List", "items": items })
}

/// The copy target of `--pvc` / `--source`.
pub(crate) fn target(namespace: &str, t: &TargetArgs) -> CopyTarget {
    match (&t.pvc, &t.source) {
        (Some(pvc), _) => snapgate_sdk::pvc(namespace, pvc),
        (None, Some(source)) => snapgate_sdk::source(namespace, source),
        (None, None) => unreachable!("clap requires --pvc or --source"),
    }
}

fn read_file(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads and checks every document of every file (before anything is applied).
pub(crate) fn read_documents(
    namespace: &str,
    files: &[std::path::PathBuf],
) -> anyhow::Result<Vec<volsync::ReplicationSource>> {
    let mut documents = Vec::new();
    for file in files {
        let text = read_file(file)?;
        let parsed = volsync::parse_documents(&text, namespace).with_context(|| {
            format!(
                "{} is not a ReplicationSource snapgate can apply",
                file.display()
            )
        })?;
        for d in &parsed {
            for w in &d.warnings {
                eprintln!(
                    "warning: {}: {}/{}: {w}",
                    file.display(),
                    d.namespace,
                    d.name
                );
            }
        }
        documents.extend(parsed);
    }
    if documents.is_empty() {
        bail!("no ReplicationSource found in the given files");
    }
    Ok(documents)
}

/// `apply -f`: creates each source, or updates it when its spec differs.
pub(crate) async fn apply(
    client: &Client,
    documents: &[volsync::ReplicationSource],
    output: Output,
) -> anyhow::Result<()> {
    let mut applied = Vec::new();
    for doc in documents {
        let key = format!("{}/{}", doc.namespace, doc.name);
        let existing = client
            .sources()
            .get_source(v1::GetSourceRequest {
                namespace: doc.namespace.clone(),
                name: doc.name.clone(),
            })
            .await;
        let (source, verb) = match existing {
            Ok(current) => {
                let current = current.into_inner();
                if current.spec.as_ref() == Some(&doc.spec) {
                    (current, "unchanged")
                } else {
                    let updated = client
                        .sources()
                        .apply_source(volsync::apply_request(doc, current.version))
                        .await
                        .map_err(Error::from)
                        .with_context(|| format!("applying source {key}"))?;
                    (updated.into_inner(), "configured")
                }
            }
            Err(status) if status.code() == Code::NotFound => {
                let created = client
                    .sources()
                    .apply_source(volsync::apply_request(doc, 0))
                    .await
                    .map_err(Error::from)
                    .with_context(|| format!("creating source {key}"))?;
                (created.into_inner(), "created")
            }
            Err(status) => {
                return Err(Error::from(status)).with_context(|| format!("reading source {key}"));
            }
        };
        if output == Output::Table {
            println!("replicationsource {key} {verb}");
        }
        // Its run cannot move without an agent in the namespace: said at once, on stderr.
        if let Some(c) = source.status.as_ref().and_then(|st| {
            st.conditions
                .iter()
                .find(|c| c.r#type == "Synchronizing" && c.reason == "NoAgent")
        }) {
            eprintln!("warning: replicationsource {key}: {}", c.message);
        }
        applied.push(as_json::source(&source));
    }
    if output != Output::Table {
        print_value(output, &list_value(applied))?;
    }
    Ok(())
}

fn mover(spec: &v1::SourceSpec) -> (&'static str, i32) {
    if let Some(m) = &spec.restic {
        ("restic", m.copy_method)
    } else if let Some(m) = &spec.rclone {
        ("rclone", m.copy_method)
    } else if let Some(m) = &spec.rsync {
        ("rsync", m.copy_method)
    } else if let Some(m) = &spec.rsync_tls {
        ("rsyncTLS", m.copy_method)
    } else {
        ("", 0)
    }
}

fn time_cell(t: Option<&prost_types::Timestamp>) -> String {
    t.map(timestamp).unwrap_or_default()
}

fn source_table(sources: &[v1::Source]) -> String {
    let mut t = Table::new(&[
        "NAMESPACE",
        "NAME",
        "SOURCE",
        "MOVER",
        "COPY",
        "TRIGGER",
        "LAST SYNC",
        "DURATION",
        "NEXT SYNC",
        "RESULT",
        "STATE",
    ]);
    for s in sources {
        let spec = s.spec.clone().unwrap_or_default();
        let status = s.status.clone().unwrap_or_default();
        let (mover, method) = mover(&spec);
        let method = CopyMethod::try_from(method)
            .ok()
            .filter(|m| *m != CopyMethod::Unspecified)
            .map(|m| m.as_str_name().to_owned())
            .unwrap_or_default();
        let trigger = match &spec.trigger {
            Some(v1::ReplicationSourceTrigger {
                schedule: Some(s), ..
            }) => s.clone(),
            Some(v1::ReplicationSourceTrigger {
                manual: Some(m), ..
            }) => format!("manual:{m}"),
            _ => "continuous".into(),
        };
        let state = if spec.paused {
            "Paused".to_owned()
        } else {
            status
                .conditions
                .iter()
                .find(|c| c.r#type == "Synchronizing")
                .map(|c| c.reason.clone())
                .unwrap_or_default()
        };
        t.row(vec![
            s.namespace.clone(),
            s.name.clone(),
            spec.source_pvc.clone(),
            mover.into(),
            method,
            trigger,
            time_cell(status.last_sync_time.as_ref()),
            status
                .last_sync_duration
                .as_ref()
                .map(|d| snapgate_sdk::duration::format(snapgate_sdk::duration::from_proto(d)))
                .unwrap_or_default(),
            time_cell(status.next_sync_time.as_ref()),
            status
                .latest_mover_status
                .as_ref()
                .map(|m| m.result.clone())
                .unwrap_or_default(),
            state,
        ]);
    }
    t.render()
}

/// `get NAME`.
pub(crate) async fn get(
    client: &Client,
    namespace: &str,
    name: &str,
    output: Output,
) -> anyhow::Result<()> {
    let source = client
        .sources()
        .get_source(v1::GetSourceRequest {
            namespace: namespace.into(),
            name: name.into(),
        })
        .await
        .map_err(Error::from)?
        .into_inner();
    match output {
        Output::Table => print!("{}", source_table(&[source])),
        _ => print_value(output, &as_json::source(&source))?,
    }
    Ok(())
}

/// `list [-A]`: every page.
pub(crate) async fn list(
    client: &Client,
    namespace: &str,
    all: bool,
    output: Output,
) -> anyhow::Result<()> {
    let sources = client
        .list_sources(if all { "" } else { namespace })
        .await?;
    match output {
        Output::Table if sources.is_empty() => eprintln!("no sources found"),
        Output::Table => print!("{}", source_table(&sources)),
        _ => print_value(
            output,
            &list_value(sources.iter().map(as_json::source).collect()),
        )?,
    }
    Ok(())
}

/// `delete NAME`.
pub(crate) async fn delete(
    client: &Client,
    namespace: &str,
    name: &str,
    output: Output,
) -> anyhow::Result<()> {
    client
        .sources()
        .delete_source(v1::DeleteSourceRequest {
            namespace: namespace.into(),
            name: name.into(),
            expected_version: 0,
        })
        .await
        .map_err(Error::from)?;
    match output {
        Output::Table => println!("replicationsource {namespace}/{name} deleted"),
        _ => print_value(
            output,
            &json!({ "namespace": namespace, "name": name, "deleted": true }),
        )?,
    }
    Ok(())
}

/// `sync-now NAME`.
pub(crate) async fn sync_now(
    client: &Client,
    namespace: &str,
    name: &str,
    request_id: Option<String>,
    output: Output,
) -> anyhow::Result<()> {
    let request_id = request_id.unwrap_or_else(|| {
        format!(
            "cli-{}-{}",
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default(),
            std::process::id()
        )
    });
    let r = client
        .sources()
        .sync_now(v1::SyncNowRequest {
            namespace: namespace.into(),
            name: name.into(),
            request_id: request_id.clone(),
        })
        .await
        .map_err(Error::from)?
        .into_inner();
    match output {
        Output::Table if r.started => println!("{} started ({namespace}/{name})", r.run_id),
        Output::Table => println!(
            "{} already in flight or already started by request {request_id}; no new run",
            r.run_id
        ),
        _ => print_value(
            output,
            &json!({ "runId": r.run_id, "started": r.started, "requestId": request_id }),
        )?,
    }
    Ok(())
}

/// `pause NAME` and `resume NAME`.
pub(crate) async fn pause_or_resume(
    client: &Client,
    namespace: &str,
    name: &str,
    note: String,
    pause: bool,
    output: Output,
) -> anyhow::Result<()> {
    let source = if pause {
        client
            .sources()
            .pause_source(v1::PauseSourceRequest {
                namespace: namespace.into(),
                name: name.into(),
                note,
            })
            .await
    } else {
        client
            .sources()
            .resume_source(v1::ResumeSourceRequest {
                namespace: namespace.into(),
                name: name.into(),
                note,
            })
            .await
    }
    .map_err(Error::from)?
    .into_inner();
    match output {
        Output::Table => println!(
            "replicationsource {namespace}/{name} {}",
            if pause { "paused" } else { "resumed" }
        ),
        _ => print_value(output, &as_json::source(&source))?,
    }
    Ok(())
}

/// `runs NAME`.
pub(crate) async fn runs(
    client: &Client,
    namespace: &str,
    name: &str,
    limit: u32,
    output: Output,
) -> anyhow::Result<()> {
    let runs = client
        .sources()
        .list_runs(v1::ListRunsRequest {
            namespace: namespace.into(),
            name: name.into(),
            limit,
        })
        .await
        .map_err(Error::from)?
        .into_inner()
        .runs;
    if output != Output::Table {
        return print_value(output, &list_value(runs.iter().map(as_json::run).collect()));
    }
    if runs.is_empty() {
        eprintln!("no runs yet");
        return Ok(());
    }
    let mut t = Table::new(&[
        "RUN", "REASON", "PHASE", "RESULT", "TRIGGER", "RELEASED", "STARTED", "COPIED", "ENDED",
        "MESSAGE",
    ]);
    for r in &runs {
        t.row(vec![
            r.id.clone(),
            as_json::run_reason(r.reason),
            as_json::run_phase(r.phase),
            as_json::run_result(r.result),
            r.trigger.clone(),
            r.released_by.clone(),
            time_cell(r.start_time.as_ref()),
            time_cell(r.copy_time.as_ref()),
            time_cell(r.end_time.as_ref()),
            r.message.clone(),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

/// `preview NAME`.
pub(crate) async fn preview(
    client: &Client,
    namespace: &str,
    name: &str,
    count: u32,
    output: Output,
) -> anyhow::Result<()> {
    let p = client
        .sources()
        .preview_schedule(v1::PreviewScheduleRequest {
            namespace: namespace.into(),
            name: name.into(),
            count,
            after: None,
        })
        .await
        .map_err(Error::from)?
        .into_inner();
    let times: Vec<String> = p.times.iter().map(timestamp).collect();
    if output != Output::Table {
        return print_value(
            output,
            &json!({ "times": times, "localTimes": p.local_times }),
        );
    }
    let mut t = Table::new(&["#", "UTC", "LOCAL"]);
    for (i, utc) in times.iter().enumerate() {
        let local = p.local_times.get(i).cloned().unwrap_or_default();
        t.row(vec![(i + 1).to_string(), utc.clone(), local]);
    }
    print!("{}", t.render());
    Ok(())
}

/// `quarantined`.
pub(crate) async fn quarantined(client: &Client, output: Output) -> anyhow::Result<()> {
    let records = client
        .sources()
        .list_quarantined(v1::ListQuarantinedRequest {})
        .await
        .map_err(Error::from)?
        .into_inner()
        .records;
    if output != Output::Table {
        let items: Vec<serde_json::Value> = records
            .iter()
            .map(|r| json!({ "kind": r.kind, "key": r.key, "reason": r.reason }))
            .collect();
        return print_value(output, &json!({ "records": items }));
    }
    if records.is_empty() {
        println!("no quarantined records");
        return Ok(());
    }
    let mut t = Table::new(&["KIND", "KEY", "REASON"]);
    for r in records {
        t.row(vec![r.kind, r.key, r.reason]);
    }
    print!("{}", t.render());
    Ok(())
}

/// How `trigger` holds: `--hold` and `--holder`.
pub(crate) struct TriggerHow<'a> {
    pub(crate) hold: Option<std::time::Duration>,
    pub(crate) holder: Option<&'a str>,
}

/// `trigger VALUE`.
pub(crate) async fn trigger(
    client: &Client,
    target: &CopyTarget,
    value: &str,
    run_id: Option<&str>,
    how: TriggerHow<'_>,
    output: Output,
) -> anyhow::Result<()> {
    let r = client
        .trigger_held(target, run_id, value, how.hold, how.holder)
        .await?;
    let status = r.status.unwrap_or_default();
    let lease = r
        .lease_deadline
        .as_ref()
        .and_then(snapgate_proto::time::proto_time)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    match output {
        Output::Table if !status.holders_pending.is_empty() => println!(
            "{} on pvc {}/{}: trigger {:?} recorded, held until {lease}; not released until holders {} trigger too",
            r.run_id,
            status.namespace,
            status.pvc,
            r.value,
            status.holders_pending.join(", ")
        ),
        Output::Table => println!(
            "{} released on pvc {}/{} with {:?} ({}); hold until {lease}",
            r.run_id,
            status.namespace,
            status.pvc,
            r.value,
            as_json::copy_state(status.state)
        ),
        _ => print_value(
            output,
            &json!({ "runId": r.run_id, "value": r.value, "leaseDeadline": lease, "status": as_json::copy_status(&status) }),
        )?,
    }
    Ok(())
}

/// `watch`: one line (or object) per change, until interrupted or refused.
pub(crate) async fn watch(
    client: &Client,
    target: CopyTarget,
    output: Output,
) -> anyhow::Result<()> {
    let mut statuses = client.watch_copy(target);
    if output == Output::Table {
        println!(
            "{:<20}  {:<17}  {:<8}  {:<16}  {:<20}  REASON",
            "TIME", "STATE", "RUN", "SOURCE", "TRIGGER"
        );
    }
    loop {
        let next = tokio::select! {
            next = statuses.next() => next,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(status) = next else {
            return Ok(());
        };
        let status = status?;
        match output {
            Output::Table => {
                let time =
                    status.time.as_ref().map(timestamp).unwrap_or_else(|| {
                        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
                    });
                println!(
                    "{:<20}  {:<17}  {:<8}  {:<16}  {:<20}  {}",
                    time,
                    as_json::copy_state(status.state),
                    or_none(&status.run_id),
                    or_none(&status.source),
                    or_none(&status.trigger),
                    status.reason
                );
            }
            Output::Json => println!("{}", serde_json::to_string(&as_json::copy_status(&status))?),
            Output::Yaml => print!(
                "---\n{}",
                serde_yaml::to_string(&as_json::copy_status(&status))?
            ),
        }
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}
