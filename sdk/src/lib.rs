//! snapgate-sdk: what an application links to take part in the copy-trigger protocol, and the
//! `snapgate` CLI.
//!
//! ```text
//!  application                         scheduler (TriggerService)
//!  ───────────                         ─────────
//!  watch_copy(pvc) ◄────────────────── Pending → WaitingForTrigger (run-7)
//!  quiesce()
//!  trigger(run-7, value) ─────────────► release run-7 → the agent snapshots / clones the PVC
//!  wait_for_outcome(run-7) ◄────────── InProgress → Completed  (or Failed / TimedOut / Aborted)
//!  unquiesce()                          (always: also on failure, lost connection, hold limit)
//! ```
//!
//! [`Client::quiesced_copy`] does all of it and guarantees the unquiesce. It reports a copy as
//! consistent only when the run was released by its own trigger value (so after quiesce and
//! before unquiesce); a run released by anyone else's value (another application on the same
//! PVC, the `copy-trigger` annotation) is [`Error::ReleasedByAnother`]. The pieces
//! ([`Client::watch_copy`], [`Client::wait_for_copy_request`], [`Client::trigger`],
//! [`Client::wait_for_outcome`]) are there for applications that need them separately. Every
//! failure is an [`Error`] variant the caller can act on.
//!
//! ```no_run
//! use std::{sync::Arc, time::Duration};
//!
//! use snapgate_sdk::{Client, Error, GuardOptions, Outcome};
//! use tokio::sync::RwLock;
//!
//! # async fn run() -> Result<(), Error> {
//! let client = Client::builder("http://snapgate-scheduler:50051")
//!     .token("s3cr3t")
//!     .connect()
//!     .await?;
//! // The application's writers take a read lock per write; quiescing takes the write lock.
//! let writes = Arc::new(RwLock::new(()));
//! loop {
//!     let held = Arc::new(tokio::sync::Mutex::new(None));
//!     let (quiesce_lock, quiesce_slot) = (writes.clone(), held.clone());
//!     let result = client
//!         .quiesced_copy(
//!             snapgate_sdk::pvc("apps", "data"),
//!             move |request| async move {
//!                 println!("quiescing for {}", request.run_id);
//!                 *quiesce_slot.lock().await = Some(quiesce_lock.write_owned().await);
//!                 Ok::<_, Error>(())
//!             },
//!             move || async move {
//!                 held.lock().await.take(); // releases the write lock: writes resume
//!                 Ok::<_, Error>(())
//!             },
//!             GuardOptions::default().hold_limit(Duration::from_secs(60)),
//!         )
//!         .await;
//!     match result {
//!         Ok(copy) => println!("{} copied, writes paused for {:?}", copy.run_id, copy.held),
//!         Err(Error::CopyFailed { outcome: Outcome::TimedOut, .. }) => println!("skipped"),
//!         // Someone else's trigger released the run: not a copy of ours; wait for the next.
//!         Err(e @ Error::ReleasedByAnother { .. }) => println!("{e}"),
//!         Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_secs(5)).await,
//!         Err(e) => return Err(e),
//!     }
//! }
//! # }
//! ```
//!
//! Connections are plain HTTP/2 (`http://`) or TLS (`https://`, rustls with ring, system roots
//! plus an optional CA, and optionally a client certificate for a scheduler that asks for one:
//! [`ClientBuilder::client_identity`]); a bearer token, when set, is sent as
//! `authorization: Bearer <token>` on every call.

pub mod client;
pub use snapgate_proto::duration;
pub mod error;
pub mod guard;
pub mod handshake;
pub mod json;
pub mod tls;
pub mod volsync;
pub mod watch;

pub use client::{BearerToken, Client, ClientBuilder, pvc, source};
pub use error::{BoxError, Error};
pub use guard::{GuardOptions, GuardedCopy, default_trigger_value, prefixed_trigger_value};
pub use handshake::{CopyOutcome, CopyRequest, Outcome};
pub use snapgate_proto::v1 as proto;
pub use snapgate_proto::v1::{CopyState, CopyStatus, CopyTarget};
pub use watch::{Backoff, CopyWatch};
