//! A WatchCopy stream that survives the scheduler going away.
//!
//! ```text
//!           ┌──────── status (not a duplicate) ──► yielded; backoff reset
//!  Watching ┤
//!           └── stream ended / transport error ──► Lost ── sleep(backoff, doubling up to max) ──► reconnect
//!                                                    └── lost longer than give_up_after ──► Err(Unavailable), end
//!  Refused (NOT_FOUND, INVALID_ARGUMENT, PERMISSION_DENIED, ...) ──► Err(Refused), end
//! ```
//!
//! After a reconnect the scheduler sends the current status again; a status equal to the last
//! one yielded (apart from its `time`) is skipped, so the caller sees every change once.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, StreamExt, stream::BoxStream};
use snapgate_proto::v1::{self, CopyStatus, CopyTarget};
use tokio::time::Instant;
use tonic::Streaming;
use tracing::debug;

use crate::{
    client::Client,
    error::{Error, is_transient_code},
};

/// How a watch reconnects: capped exponential backoff, and optionally a time after which a
/// lost connection is given up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay after a lost connection.
    pub initial: Duration,
    /// The longest delay between two attempts.
    pub max: Duration,
    /// Give up when the connection has been lost this long (`None`: never).
    pub give_up_after: Option<Duration>,
}

impl Default for Backoff {
    /// 100 ms doubling up to 5 s, never giving up.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            give_up_after: None,
        }
    }
}

impl Backoff {
    /// Runs `call` until it succeeds or fails for good, waiting between attempts while the
    /// scheduler is unavailable; gives up (with the last error) after `give_up_after`.
    pub(crate) async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let since = Instant::now();
        let mut delay = self.initial;
        loop {
            match call().await {
                Err(e) if e.is_transient() => {
                    let lost_for = since.elapsed();
                    let wait = match self.give_up_after {
                        Some(limit) if lost_for >= limit => return Err(e),
                        Some(limit) => delay.min(limit.saturating_sub(lost_for)),
                        None => delay,
                    };
                    tokio::time::sleep(wait).await;
                    delay = delay.saturating_mul(2).min(self.max);
                }
                other => return other,
            }
        }
    }
}

/// The copy statuses of one target: the current one first, then every change. Ends only with
/// an error (see the module docs).
pub struct CopyWatch {
    inner: BoxStream<'static, Result<CopyStatus, Error>>,
    backoff: Backoff,
}

impl CopyWatch {
    /// How this watch reconnects (and so how long its user keeps retrying other calls).
    pub(crate) fn backoff(&self) -> &Backoff {
        &self.backoff
    }
}

impl std::fmt::Debug for CopyWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyWatch").finish_non_exhaustive()
    }
}

impl Stream for CopyWatch {
    type Item = Result<CopyStatus, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// Whether two statuses say the same thing (the `time` of the last timeline entry aside).
fn same(a: &CopyStatus, b: &CopyStatus) -> bool {
    CopyStatus {
        time: None,
        ..a.clone()
    } == CopyStatus {
        time: None,
        ..b.clone()
    }
}

struct State {
    client: Client,
    target: CopyTarget,
    backoff: Backoff,
    stream: Option<Streaming<CopyStatus>>,
    last: Option<CopyStatus>,
    lost_since: Option<Instant>,
    delay: Duration,
    done: bool,
}

impl State {
    async fn next(&mut self) -> Option<Result<CopyStatus, Error>> {
        loop {
            if self.done {
                return None;
            }
            let Some(stream) = self.stream.as_mut() else {
                let request = v1::WatchCopyRequest {
                    target: Some(self.target.clone()),
                };
                match self.client.triggers().watch_copy(request).await {
                    Ok(response) => self.stream = Some(response.into_inner()),
                    Err(status) => {
                        if let Some(e) = self.lost(status).await {
                            self.done = true;
                            return Some(Err(e));
                        }
                    }
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(status)) => {
                    self.lost_since = None;
                    self.delay = self.backoff.initial;
                    if self.last.as_ref().is_some_and(|l| same(l, &status)) {
                        continue;
                    }
                    self.last = Some(status.clone());
                    return Some(Ok(status));
                }
                Ok(None) => {
                    self.stream = None;
                    let ended = tonic::Status::unavailable("the scheduler ended the watch");
                    if let Some(e) = self.lost(ended).await {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
                Err(status) => {
                    self.stream = None;
                    if let Some(e) = self.lost(status).await {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
        }
    }

    /// Waits before the next attempt, or says why the watch ends.
    async fn lost(&mut self, status: tonic::Status) -> Option<Error> {
        if !is_transient_code(status.code()) {
            return Some(status.into());
        }
        let since = *self.lost_since.get_or_insert_with(Instant::now);
        let mut delay = self.delay;
        if let Some(limit) = self.backoff.give_up_after {
            let lost_for = since.elapsed();
            if lost_for >= limit {
                return Some(Error::Unavailable {
                    message: format!(
                        "watch of {} lost for {lost_for:.1?}: {}",
                        describe(&self.target),
                        status.message()
                    ),
                });
            }
            delay = delay.min(limit.saturating_sub(lost_for));
        }
        debug!(target = %describe(&self.target), ?delay, error = %status.message(), "watch lost; reconnecting");
        tokio::time::sleep(delay).await;
        self.delay = self.delay.saturating_mul(2).min(self.backoff.max);
        None
    }
}

/// `namespace/pvc` or `namespace/source <name>`, for messages.
pub(crate) fn describe(target: &CopyTarget) -> String {
    if target.source.is_empty() {
        format!("pvc {}/{}", target.namespace, target.pvc)
    } else {
        format!("source {}/{}", target.namespace, target.source)
    }
}

impl Client {
    /// Watches the copy status of a PVC or source, reconnecting forever with the default
    /// [`Backoff`] and skipping duplicates.
    pub fn watch_copy(&self, target: CopyTarget) -> CopyWatch {
        self.watch_copy_with(target, Backoff::default())
    }

    /// [`Client::watch_copy`] with a chosen reconnect policy.
    pub fn watch_copy_with(&self, target: CopyTarget, backoff: Backoff) -> CopyWatch {
        let state = State {
            client: self.clone(),
            target,
            delay: backoff.initial,
            backoff: backoff.clone(),
            stream: None,
            last: None,
            lost_since: None,
            done: false,
        };
        let inner = futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })
        .boxed();
        CopyWatch { inner, backoff }
    }
}
