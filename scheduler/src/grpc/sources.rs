//! `snapgate.v1.SourceService`: what operators drive.

use prost::Message;
use snapgate_proto::v1::{self, source_service_server::SourceService};
use snapgate_scheduler_core::SourceKey;

/// The largest `ListSources` or `ListRuns` answer, encoded: well inside a gRPC client's
/// default 4 MiB message limit.
pub(crate) const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;
use tonic::{Request, Response, Status};

use super::{bounded, source_key};
use crate::{
    driver::{Command, DriverHandle},
    identity::{Action, Audited, Authorizer, caller, rpc_of},
    reads::Read,
    status::invalid,
    wire::{
        common::{spec_input, time_from_wire, time_to_wire},
        sources::{run_to_wire, source_to_wire},
    },
};

/// The SourceService implementation.
pub struct Sources {
    driver: DriverHandle,
    auth: Authorizer,
}

impl Sources {
    /// A service over the driver.
    pub fn new(driver: DriverHandle, auth: Authorizer) -> Self {
        Self { driver, auth }
    }

    fn allow<T>(&self, req: &Request<T>, namespace: &str, action: Action) -> Result<(), Status> {
        self.auth
            .check(&caller(req)?, &rpc_of(req), namespace, action)
    }

    /// PauseSource and ResumeSource, once allowed: the change, audited.
    async fn set_paused(
        &self,
        audited: Audited,
        namespace: &str,
        name: &str,
        paused: bool,
        note: String,
    ) -> Result<Response<v1::Source>, Status> {
        let out = match source_key(namespace, name) {
            Ok(key) => self
                .driver
                .ask(|reply| Command::SetPaused {
                    key,
                    paused,
                    note,
                    reply,
                })
                .await
                .map(|s| Response::new(source_to_wire(&s)))
                .map_err(Status::from),
            Err(e) => Err(e),
        };
        audited.finish(self.auth.audit(), &out, "");
        out
    }

    /// Allows a mutating call and starts its audit record.
    fn allow_audited<T>(
        &self,
        req: &Request<T>,
        namespace: &str,
        name: &str,
    ) -> Result<Audited, Status> {
        self.allow(req, namespace, Action::Manage)?;
        Ok(Audited::new(&caller(req)?, &rpc_of(req), namespace, name))
    }
}

#[tonic::async_trait]
impl SourceService for Sources {
    async fn list_quarantined(
        &self,
        req: Request<v1::ListQuarantinedRequest>,
    ) -> Result<Response<v1::ListQuarantinedResponse>, Status> {
        // Records of any namespace: an operator's question.
        self.allow(&req, "", Action::Manage)?;
        let records = self
            .driver
            .ask(|reply| Command::Read(Read::ListQuarantined { reply }))
            .await?
            .into_iter()
            .map(|q| v1::QuarantinedRecord {
                kind: q.kind.to_owned(),
                key: q.key,
                reason: q.reason,
            })
            .collect();
        Ok(Response::new(v1::ListQuarantinedResponse { records }))
    }

    async fn apply_source(
        &self,
        req: Request<v1::ApplySourceRequest>,
    ) -> Result<Response<v1::Source>, Status> {
        let audited = self.allow_audited(&req, &req.get_ref().namespace, &req.get_ref().name)?;
        let out: Result<Response<v1::Source>, Status> = async {
            let author = caller(&req)?.author();
            let r = req.into_inner();
            let key = source_key(&r.namespace, &r.name)?;
            let spec = r.spec.ok_or_else(|| invalid("spec", "required"))?;
            let spec = spec_input(&spec).map_err(|e| invalid(&e.field, &e.rule))?;
            let source = self
                .driver
                .ask(|reply| Command::Apply {
                    key,
                    spec: Box::new(spec),
                    expected_version: r.expected_version,
                    author,
                    reply,
                })
                .await?;
            Ok(Response::new(source_to_wire(&source)))
        }
        .await;
        audited.finish(self.auth.audit(), &out, "");
        out
    }

    async fn get_source(
        &self,
        req: Request<v1::GetSourceRequest>,
    ) -> Result<Response<v1::Source>, Status> {
        self.allow(&req, &req.get_ref().namespace, Action::Read)?;
        let key = source_key(&req.get_ref().namespace, &req.get_ref().name)?;
        let source = self
            .driver
            .ask(|reply| Command::Read(Read::Get { key, reply }))
            .await?;
        Ok(Response::new(source_to_wire(&source)))
    }

    async fn list_sources(
        &self,
        req: Request<v1::ListSourcesRequest>,
    ) -> Result<Response<v1::ListSourcesResponse>, Status> {
        self.allow(&req, &req.get_ref().namespace, Action::Read)?;
        let r = req.into_inner();
        let limit = bounded("pageSize", r.page_size, 100, 1000)?;
        let after = if r.page_token.is_empty() {
            None
        } else {
            let (ns, name) = r
                .page_token
                .split_once('/')
                .ok_or_else(|| invalid("pageToken", "not a token from a previous page"))?;
            Some(
                source_key(ns, name)
                    .map_err(|_| invalid("pageToken", "not a token from a previous page"))?,
            )
        };
        if let Some(a) = &after
            && !r.namespace.is_empty()
            && a.namespace != r.namespace
        {
            return Err(invalid(
                "pageToken",
                "belongs to a listing of another namespace",
            ));
        }
        let namespace = (!r.namespace.is_empty()).then_some(r.namespace);
        let (sources, next) = self
            .driver
            .ask(|reply| {
                Command::Read(Read::List {
                    namespace,
                    after,
                    limit,
                    reply,
                })
            })
            .await?;
        let (sources, next) = bounded_page(&sources, next);
        Ok(Response::new(v1::ListSourcesResponse {
            sources,
            next_page_token: next.map(|k: SourceKey| k.to_string()).unwrap_or_default(),
        }))
    }

    async fn delete_source(
        &self,
        req: Request<v1::DeleteSourceRequest>,
    ) -> Result<Response<v1::DeleteSourceResponse>, Status> {
        let audited = self.allow_audited(&req, &req.get_ref().namespace, &req.get_ref().name)?;
        let out: Result<Response<v1::DeleteSourceResponse>, Status> = async {
            let r = req.into_inner();
            let key = source_key(&r.namespace, &r.name)?;
            self.driver
                .ask(|reply| Command::Delete {
                    key,
                    expected_version: r.expected_version,
                    reply,
                })
                .await?;
            Ok(Response::new(v1::DeleteSourceResponse {}))
        }
        .await;
        audited.finish(self.auth.audit(), &out, "");
        out
    }

    async fn sync_now(
        &self,
        req: Request<v1::SyncNowRequest>,
    ) -> Result<Response<v1::SyncNowResponse>, Status> {
        let audited = self.allow_audited(&req, &req.get_ref().namespace, &req.get_ref().name)?;
        let out: Result<Response<v1::SyncNowResponse>, Status> = async {
            let r = req.into_inner();
            let key = source_key(&r.namespace, &r.name)?;
            let (run, started) = self
                .driver
                .ask(|reply| Command::SyncNow {
                    key,
                    request_id: r.request_id,
                    reply,
                })
                .await?;
            Ok(Response::new(v1::SyncNowResponse {
                run_id: run.to_string(),
                started,
            }))
        }
        .await;
        audited.finish(self.auth.audit(), &out, run_of(&out));
        out
    }

    async fn pause_source(
        &self,
        req: Request<v1::PauseSourceRequest>,
    ) -> Result<Response<v1::Source>, Status> {
        let audited = self.allow_audited(&req, &req.get_ref().namespace, &req.get_ref().name)?;
        let r = req.into_inner();
        self.set_paused(audited, &r.namespace, &r.name, true, r.note)
            .await
    }

    async fn resume_source(
        &self,
        req: Request<v1::ResumeSourceRequest>,
    ) -> Result<Response<v1::Source>, Status> {
        let audited = self.allow_audited(&req, &req.get_ref().namespace, &req.get_ref().name)?;
        let r = req.into_inner();
        self.set_paused(audited, &r.namespace, &r.name, false, r.note)
            .await
    }

    async fn list_runs(
        &self,
        req: Request<v1::ListRunsRequest>,
    ) -> Result<Response<v1::ListRunsResponse>, Status> {
        self.allow(&req, &req.get_ref().namespace, Action::Read)?;
        let r = req.into_inner();
        let key = source_key(&r.namespace, &r.name)?;
        let limit = bounded("limit", r.limit, 20, 100)?;
        let runs = self
            .driver
            .ask(|reply| Command::Read(Read::ListRuns { key, limit, reply }))
            .await?;
        Ok(Response::new(v1::ListRunsResponse {
            runs: bounded_runs(&runs),
        }))
    }

    async fn preview_schedule(
        &self,
        req: Request<v1::PreviewScheduleRequest>,
    ) -> Result<Response<v1::PreviewScheduleResponse>, Status> {
        self.allow(&req, &req.get_ref().namespace, Action::Read)?;
        let r = req.into_inner();
        let key = source_key(&r.namespace, &r.name)?;
        let count = bounded("count", r.count, 5, 100)?;
        let after = time_from_wire(r.after.as_ref());
        let (times, tz) = self
            .driver
            .ask(|reply| {
                Command::Read(Read::Preview {
                    key,
                    after,
                    count,
                    reply,
                })
            })
            .await?;
        Ok(Response::new(v1::PreviewScheduleResponse {
            local_times: times
                .iter()
                .map(|t| t.with_timezone(&tz).to_rfc3339())
                .collect(),
            times: times.into_iter().map(time_to_wire).collect(),
        }))
    }
}

/// The run a SyncNow answered with, for its audit record.
fn run_of(out: &Result<Response<v1::SyncNowResponse>, Status>) -> &str {
    out.as_ref()
        .map(|r| r.get_ref().run_id.as_str())
        .unwrap_or_default()
}

/// A page of sources on the wire: in order, ending early (the next page starting after the
/// last one kept) when the next would take the encoded response past [`MAX_PAGE_BYTES`], well
/// inside a gRPC client's default 4 MiB message limit. At least one source per page.
fn bounded_page(
    sources: &[snapgate_scheduler_core::model::Source],
    next: Option<SourceKey>,
) -> (Vec<v1::Source>, Option<SourceKey>) {
    let mut out = Vec::with_capacity(sources.len());
    let mut bytes = 0usize;
    for s in sources {
        let wire = source_to_wire(s);
        // Field tag and length prefix included, as in the response message.
        let size = wire.encoded_len().saturating_add(8);
        if !out.is_empty() && bytes.saturating_add(size) > MAX_PAGE_BYTES {
            let last = sources
                .get(out.len().wrapping_sub(1))
                .map(|s| s.key.clone());
            return (out, last);
        }
        bytes = bytes.saturating_add(size);
        out.push(wire);
    }
    (out, next)
}

/// Runs on the wire, newest first, as many as fit [`MAX_PAGE_BYTES`] (at least one).
fn bounded_runs(runs: &[snapgate_scheduler_core::model::Run]) -> Vec<v1::Run> {
    let mut out = Vec::with_capacity(runs.len());
    let mut bytes = 0usize;
    for r in runs {
        let wire = run_to_wire(r);
        bytes = bytes.saturating_add(wire.encoded_len().saturating_add(8));
        if !out.is_empty() && bytes > MAX_PAGE_BYTES {
            break;
        }
        out.push(wire);
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use snapgate_scheduler_core::{
        Scheduler,
        model::{CopyMethod, JsonObject, MoverInput, SpecInput},
    };

    use super::*;

    /// A free-form object of about `bytes` bytes, as large as admission lets one be.
    fn object(bytes: usize) -> JsonObject {
        let mut o = JsonObject::new();
        o.insert("k".into(), serde_json::Value::String("x".repeat(bytes)));
        o
    }

    /// However large the sources, every page of ListSources fits a client's default message
    /// limit, and paging from one page to the next lists every source exactly once.
    #[test]
    fn a_page_of_sources_always_fits_a_clients_default_message_limit() {
        let now = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        let mut core = Scheduler::new();
        for i in 0..300 {
            let mut mover = MoverInput::restic(CopyMethod::Snapshot, "restic-secret");
            mover.volume.mover_resources = Some(object(16_000));
            mover.volume.mover_affinity = Some(object(16_000));
            mover.volume.mover_security_context = Some(object(16_000));
            let mut spec = SpecInput::new("data", mover);
            spec.encoded_len = 50_000;
            core.apply_source(SourceKey::new("apps", &format!("s{i:03}")), spec, 0, now)
                .unwrap();
        }
        let mut after = None;
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let (sources, next) = core.list_sources(None, after.as_ref(), 1000);
            let (page, next) = bounded_page(&sources, next);
            pages += 1;
            let response = v1::ListSourcesResponse {
                sources: page.clone(),
                next_page_token: next.as_ref().map(ToString::to_string).unwrap_or_default(),
            };
            let size = response.encoded_len();
            assert!(size <= MAX_PAGE_BYTES + 64, "page {pages}: {size} bytes");
            assert!(size < 4 * 1024 * 1024, "page {pages}: {size} bytes");
            assert!(!page.is_empty(), "page {pages} is empty");
            seen.extend(page.into_iter().map(|s| s.name));
            match next {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        assert!(pages > 1, "300 sources of ~48 KB do not fit one page");
        let expected: Vec<String> = (0..300).map(|i| format!("s{i:03}")).collect();
        assert_eq!(seen, expected);
    }
}
