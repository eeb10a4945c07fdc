//! `snapgate.v1.AgentService`: the link agents hold open.
//!
//! The first message must be `hello`. The scheduler answers `welcome`, then every directive in
//! flight for the agent's namespaces, then each change as it happens. Reports flow the other
//! way until either side closes; a closed link just unregisters the agent, whose directives
//! are resent in full when it reconnects.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use snapgate_proto::v1::{
    self, agent_message::Message as FromAgent, agent_service_server::AgentService,
};
use snapgate_scheduler_core::{SourceKey, validate};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info_span, warn};

use crate::{
    driver::{Command, DriverHandle},
    identity::{Action, Audited, Authorizer, caller, rpc_of},
    status::invalid,
};

/// The AgentService implementation.
pub struct Agents {
    driver: DriverHandle,
    auth: Authorizer,
}

impl Agents {
    /// A service over the driver.
    pub fn new(driver: DriverHandle, auth: Authorizer) -> Self {
        Self { driver, auth }
    }
}

/// The most namespaces one agent may serve.
pub(crate) const MAX_AGENT_NAMESPACES: usize = 1000;

type ToAgentStream = Pin<Box<dyn Stream<Item = Result<v1::SchedulerMessage, Status>> + Send>>;

fn check_hello(hello: &v1::AgentHello) -> Result<(), Status> {
    validate::printable("hello.agentId", &hello.agent_id, true)
        .map_err(|e| invalid(&e.field, &e.rule))?;
    if hello.namespaces.is_empty() {
        return Err(invalid("hello.namespaces", "at least one namespace"));
    }
    if hello.namespaces.len() > MAX_AGENT_NAMESPACES {
        return Err(invalid(
            "hello.namespaces",
            &format!(
                "at most {MAX_AGENT_NAMESPACES} namespaces per agent, got {}",
                hello.namespaces.len()
            ),
        ));
    }
    for ns in &hello.namespaces {
        validate::dns_label("hello.namespaces", ns).map_err(|e| invalid(&e.field, &e.rule))?;
    }
    Ok(())
}

#[tonic::async_trait]
impl AgentService for Agents {
    type ConnectStream = ToAgentStream;

    async fn connect(
        &self,
        req: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let (caller, rpc) = (caller(&req)?, rpc_of(&req));
        let mut inbound = req.into_inner();
        let hello = match inbound.next().await {
            Some(Ok(v1::AgentMessage {
                message: Some(FromAgent::Hello(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => return Err(Status::invalid_argument("the first message must be hello")),
        };
        check_hello(&hello)?;
        for ns in &hello.namespaces {
            self.auth.check(&caller, &rpc, ns, Action::Agent)?;
        }

        let agent_id = hello.agent_id.clone();
        let audited = Audited::new(&caller, &rpc, &hello.namespaces.join(","), "");
        let subject = caller.name().to_owned();
        let connected = self
            .driver
            .ask(|reply| Command::AgentConnect {
                hello,
                subject,
                reply,
            })
            .await
            .map_err(Status::from);
        audited.finish(self.auth.audit(), &connected, "");
        let (conn, rx) = connected?;
        let driver = self.driver.clone();
        tokio::spawn(
            async move {
                while let Some(msg) = inbound.next().await {
                    match msg {
                        Ok(v1::AgentMessage {
                            message: Some(FromAgent::Report(report)),
                        }) => {
                            let report = crate::wire::agents::report(&report);
                            driver.tell(Command::AgentReport { conn, report }).await
                        }
                        Ok(v1::AgentMessage {
                            message: Some(FromAgent::LeaseRequest(request)),
                        }) => {
                            let request = crate::wire::agents::lease_request(&request);
                            driver.tell(Command::AgentLease { conn, request }).await
                        }
                        Ok(v1::AgentMessage {
                            message: Some(FromAgent::NamespaceGone(gone)),
                        }) => {
                            driver
                                .tell(Command::AgentNamespaceGone {
                                    conn,
                                    namespace: gone.namespace,
                                })
                                .await
                        }
                        Ok(v1::AgentMessage {
                            message: Some(FromAgent::Retired(retired)),
                        }) => {
                            let source = retired.source.unwrap_or_default();
                            driver
                                .tell(Command::AgentRetired {
                                    conn,
                                    source: SourceKey::new(&source.namespace, &source.name),
                                })
                                .await
                        }
                        Ok(other) => debug!(?other, "ignoring unexpected agent message"),
                        Err(e) => {
                            warn!(error = %e, "agent link failed");
                            break;
                        }
                    }
                }
                driver.tell(Command::AgentGone { conn }).await;
            }
            .instrument(info_span!("agent", id = %agent_id, conn)),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
