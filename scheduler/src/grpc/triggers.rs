//! `snapgate.v1.TriggerService`: what applications (the SDK) call.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use snapgate_proto::v1::{self, trigger_service_server::TriggerService};
use snapgate_scheduler_core::model::CopyTarget;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    driver::{Command, DriverHandle, WATCH_QUEUE},
    identity::{Action, Audited, Authorizer, caller, rpc_of},
    reads::Read,
    status::invalid,
    wire::{
        common::opt_time_to_wire,
        triggers::{copy_status_to_wire, copy_target, hold},
    },
};

/// The TriggerService implementation.
pub struct Triggers {
    driver: DriverHandle,
    auth: Authorizer,
}

impl Triggers {
    /// A service over the driver.
    pub fn new(driver: DriverHandle, auth: Authorizer) -> Self {
        Self { driver, auth }
    }
}

impl Triggers {
    /// Audits a refusal by `copyTrigger.allowedServiceAccounts` (other errors pass as they are).
    fn denied(
        &self,
        caller: &crate::identity::Caller,
        rpc: &str,
        namespace: &str,
        status: Status,
    ) -> Status {
        if status.code() == tonic::Code::PermissionDenied {
            Audited::new(caller, rpc, namespace, "").finish(
                self.auth.audit(),
                &Err::<(), _>(status.clone()),
                "",
            );
        }
        status
    }

    /// The caller's ServiceAccount when it acts as an application of the target's namespace.
    fn application(&self, caller: &crate::identity::Caller, target: &CopyTarget) -> Option<String> {
        self.auth
            .application_of(caller, &target.namespace)
            .map(str::to_owned)
    }
}

fn target(t: Option<v1::CopyTarget>) -> Result<CopyTarget, Status> {
    t.as_ref()
        .map(copy_target)
        .ok_or_else(|| invalid("target", "required: namespace and pvc (or source)"))
}

type CopyStream = Pin<Box<dyn Stream<Item = Result<v1::CopyStatus, Status>> + Send>>;

#[tonic::async_trait]
impl TriggerService for Triggers {
    type WatchCopyStream = CopyStream;

    async fn watch_copy(
        &self,
        req: Request<v1::WatchCopyRequest>,
    ) -> Result<Response<Self::WatchCopyStream>, Status> {
        let (caller, rpc) = (caller(&req)?, rpc_of(&req));
        let target = target(req.into_inner().target)?;
        self.auth
            .check(&caller, &rpc, &target.namespace, Action::ReadCopy)?;
        let application = self.application(&caller, &target);
        let namespace = target.namespace.clone();
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        self.driver
            .ask(|reply| Command::WatchCopy {
                target,
                application,
                identity: match &caller {
                    crate::identity::Caller::Anonymous => None,
                    c => Some(c.name().to_owned()),
                },
                tx,
                reply,
            })
            .await
            .map_err(|e| self.denied(&caller, &rpc, &namespace, e.into()))?;
        let closed = WatchClosed(self.driver.clone());
        // The guard lives as long as the stream: when the client goes away, the driver forgets
        // the watcher at once, on a quiet PVC too.
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(
            move |status| {
                let _ = &closed;
                status
            },
        ))))
    }

    async fn trigger(
        &self,
        req: Request<v1::TriggerRequest>,
    ) -> Result<Response<v1::TriggerResponse>, Status> {
        let (caller, rpc) = (caller(&req)?, rpc_of(&req));
        let r = req.into_inner();
        let target = target(r.target)?;
        self.auth
            .check(&caller, &rpc, &target.namespace, Action::Trigger)?;
        let audited = Audited::new(&caller, &rpc, &target.namespace, &target.source);
        let application = self.application(&caller, &target);
        // With authentication, an application holds as its own ServiceAccount: it cannot
        // trigger in another holder's name.
        if let Some(sa) = &application
            && !r.holder.is_empty()
            && r.holder != *sa
        {
            let denied = Err(Status::permission_denied(format!(
                "ServiceAccount {sa} may trigger only as holder {sa}, not {}",
                snapgate_proto::text::quoted(&r.holder)
            )));
            audited.finish(self.auth.audit(), &denied, "");
            return denied;
        }
        let value = r.value.clone();
        let accepted = self
            .driver
            .ask(|reply| Command::Trigger {
                target,
                value: r.value,
                run_id: r.run_id,
                hold: hold(r.hold.as_ref()),
                holder: r.holder,
                application,
                reply,
            })
            .await
            .map_err(Status::from);
        let run = accepted
            .as_ref()
            .map(|a| a.run_id.to_string())
            .unwrap_or_default();
        audited.finish(self.auth.audit(), &accepted, &run);
        let accepted = accepted?;
        Ok(Response::new(v1::TriggerResponse {
            run_id: accepted.run_id.to_string(),
            value,
            status: Some(copy_status_to_wire(&accepted.status)),
            lease_deadline: opt_time_to_wire(accepted.lease_deadline),
        }))
    }

    async fn end_hold(
        &self,
        req: Request<v1::EndHoldRequest>,
    ) -> Result<Response<v1::EndHoldResponse>, Status> {
        let (caller, rpc) = (caller(&req)?, rpc_of(&req));
        let r = req.into_inner();
        let target = target(r.target)?;
        self.auth
            .check(&caller, &rpc, &target.namespace, Action::Trigger)?;
        let audited = Audited::new(&caller, &rpc, &target.namespace, &target.source);
        let application = self.application(&caller, &target);
        let run = r.run_id.clone();
        let status = self
            .driver
            .ask(|reply| Command::EndHold {
                target,
                run_id: r.run_id,
                value: r.value,
                application,
                reply,
            })
            .await
            .map_err(Status::from);
        audited.finish(self.auth.audit(), &status, &run);
        Ok(Response::new(v1::EndHoldResponse {
            status: Some(copy_status_to_wire(&status?)),
        }))
    }

    async fn get_copy_status(
        &self,
        req: Request<v1::GetCopyStatusRequest>,
    ) -> Result<Response<v1::CopyStatus>, Status> {
        let (caller, rpc) = (caller(&req)?, rpc_of(&req));
        let target = target(req.into_inner().target)?;
        self.auth
            .check(&caller, &rpc, &target.namespace, Action::ReadCopy)?;
        let application = self.application(&caller, &target);
        let namespace = target.namespace.clone();
        let status = self
            .driver
            .ask(|reply| {
                Command::Read(Read::CopyStatus {
                    target,
                    application,
                    reply,
                })
            })
            .await
            .map_err(|e| self.denied(&caller, &rpc, &namespace, e.into()))?;
        Ok(Response::new(copy_status_to_wire(&status)))
    }
}

/// Tells the driver a WatchCopy stream ended, when dropped with it.
struct WatchClosed(DriverHandle);

impl Drop for WatchClosed {
    fn drop(&mut self) {
        let driver = self.0.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { driver.tell(Command::ReapWatchers).await });
        }
    }
}
