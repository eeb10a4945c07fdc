//! Who is calling, resolved once per RPC, and what they may do.
//!
//! Every service is wrapped in [`identify`], which puts a [`Caller`] in the request's
//! extensions; handlers ask [`Authorizer::check`] before touching a namespace. Today every
//! caller is anonymous and allowed; ServiceAccount tokens and per-namespace rules plug in here
//! without touching the handlers.

use tonic::{Request, Status};

/// The identity behind a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No credentials were checked (the default until authentication is configured).
    Anonymous,
}

/// What a caller wants to do in a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read sources, runs and copy status.
    Read,
    /// Create, change or delete sources; start runs.
    Manage,
    /// Release a copy (Trigger).
    Trigger,
    /// Act as the agent of a namespace.
    Agent,
}

/// Interceptor for every service: resolves the caller and records it on the request.
pub fn identify(mut req: Request<()>) -> Result<Request<()>, Status> {
    req.extensions_mut().insert(Caller::Anonymous);
    Ok(req)
}

/// The caller recorded by [`identify`].
pub(crate) fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("request reached a handler without an identity"))
}

/// Decides whether a caller may act on a namespace.
#[derive(Clone, Debug, Default)]
pub struct Authorizer;

impl Authorizer {
    /// Allows or refuses (`PERMISSION_DENIED`). Everything is allowed until authentication is
    /// configured; an empty namespace means "every namespace" (listing).
    pub fn check(&self, caller: &Caller, namespace: &str, action: Action) -> Result<(), Status> {
        match caller {
            Caller::Anonymous => {
                let _ = (namespace, action);
                Ok(())
            }
        }
    }
}
