//! `snapgate.v1.TriggerService`: what applications (the SDK) call.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use snapgate_proto::v1::{self, trigger_service_server::TriggerService};
use snapgate_scheduler_core::timestamp;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    driver::{Command, DriverHandle, WATCH_QUEUE},
    identity::{Action, Authorizer, caller},
    status::invalid,
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

fn target(t: Option<v1::CopyTarget>) -> Result<v1::CopyTarget, Status> {
    t.ok_or_else(|| invalid("target", "required: namespace and pvc (or source)"))
}

type CopyStream = Pin<Box<dyn Stream<Item = Result<v1::CopyStatus, Status>> + Send>>;

#[tonic::async_trait]
impl TriggerService for Triggers {
    type WatchCopyStream = CopyStream;

    async fn watch_copy(
        &self,
        req: Request<v1::WatchCopyRequest>,
    ) -> Result<Response<Self::WatchCopyStream>, Status> {
        let caller = caller(&req)?;
        let target = target(req.into_inner().target)?;
        self.auth.check(&caller, &target.namespace, Action::Read)?;
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        self.driver
            .ask(|reply| Command::WatchCopy { target, tx, reply })
            .await?;
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
        let caller = caller(&req)?;
        let r = req.into_inner();
        let target = target(r.target)?;
        self.auth
            .check(&caller, &target.namespace, Action::Trigger)?;
        let value = r.value.clone();
        let accepted = self
            .driver
            .ask(|reply| Command::Trigger {
                target,
                value: r.value,
                run_id: r.run_id,
                hold: r.hold,
                holder: r.holder,
                reply,
            })
            .await?;
        Ok(Response::new(v1::TriggerResponse {
            run_id: accepted.run_id.to_string(),
            value,
            status: Some(accepted.status),
            lease_deadline: accepted.lease_deadline.map(timestamp),
        }))
    }

    async fn end_hold(
        &self,
        req: Request<v1::EndHoldRequest>,
    ) -> Result<Response<v1::EndHoldResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let target = target(r.target)?;
        self.auth
            .check(&caller, &target.namespace, Action::Trigger)?;
        let status = self
            .driver
            .ask(|reply| Command::EndHold {
                target,
                run_id: r.run_id,
                value: r.value,
                reply,
            })
            .await?;
        Ok(Response::new(v1::EndHoldResponse {
            status: Some(status),
        }))
    }

    async fn get_copy_status(
        &self,
        req: Request<v1::GetCopyStatusRequest>,
    ) -> Result<Response<v1::CopyStatus>, Status> {
        let caller = caller(&req)?;
        let target = target(req.into_inner().target)?;
        self.auth.check(&caller, &target.namespace, Action::Read)?;
        let status = self
            .driver
            .ask(|reply| Command::CopyStatus { target, reply })
            .await?;
        Ok(Response::new(status))
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
