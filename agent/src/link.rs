//! The agent's link to the scheduler: connect out, say hello, hold the stream, reconnect.
//!
//! ```text
//!  connect ──► hello ──► welcome ──► directives / forgets / lease grants ──► executor
//!     ▲                          reports, lease requests ◄────────────────── executor
//!     └── capped exponential back-off with jitter ◄── stream ends or fails
//! ```
//!
//! The link keeps no state of its own: after every (re)connect the scheduler resends every
//! directive in flight, and the executor re-reports what it observes for them.

use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use snapgate_proto::v1::{
    self, agent_message, agent_service_client::AgentServiceClient,
    scheduler_message::Message as FromScheduler,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::access::Connector;

/// What the link hands to the executor.
#[derive(Debug)]
pub enum LinkEvent {
    /// A new connection: the directives in flight follow (`active_runs` of them).
    Connected {
        /// How many directives the scheduler is about to resend.
        active_runs: u32,
        /// Where the executor's messages (reports, lease requests) go for this connection.
        outbox: mpsc::Sender<agent_message::Message>,
    },
    /// A run's desired state.
    Directive(Box<v1::Directive>),
    /// A run is over.
    Forget(String),
    /// The answer to a lease request sent on this connection.
    Lease(v1::LeaseGrant),
    /// A source was deleted: remove what the agent made for it that outlives runs.
    Retire(v1::Retire),
    /// The connection is gone; nothing is delivered until the next `Connected`, and no lease
    /// request of the connection is answered any more.
    Disconnected,
}

/// Back-off between connection attempts.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The cap.
    pub max: Duration,
}

impl Default for Backoff {
    /// 100 ms, doubling to 3 s: while the link is down no run moves on, and an application
    /// held for its copy point may be holding its writes, so the agent retries promptly.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(3),
        }
    }
}

impl Backoff {
    /// The delay before attempt `n` (0-based): doubling, capped, with ±25% jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_jittered(attempt, rand::rng().random_range(0.75..1.25))
    }

    /// [`Backoff::delay`] with the jitter factor given (`0.75..1.25`, from
    /// [`Connector::jitter`]).
    pub fn delay_jittered(&self, attempt: u32, jitter: f64) -> Duration {
        let base = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
            .min(self.max);
        // `mul_f64` panics past `Duration::MAX`; a cap that large is the cap.
        Duration::try_from_secs_f64(base.as_secs_f64() * jitter)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// Holds the link open for ever, sending what arrives to `events`. Returns when `events`
/// is closed. Every attempt makes a new connection with `scheduler`'s settings: TLS (the CA
/// and client certificate files re-read if they changed) and the bearer token as its file
/// holds it then.
pub async fn run(
    scheduler: Connector,
    hello: v1::AgentHello,
    backoff: Backoff,
    events: mpsc::Sender<LinkEvent>,
) {
    let mut attempt = 0u32;
    loop {
        let mut welcomed = false;
        match session(&scheduler, &hello, &events, &mut welcomed).await {
            Ok(()) => info!("scheduler closed the link; reconnecting"),
            Err(e) => warn!(error = %e, attempt, "scheduler link failed"),
        }
        // A link that was up (however it ended) starts the back-off afresh: the next
        // attempt comes after the first delay, not after the cap reached by earlier failures.
        if welcomed {
            attempt = 0;
        }
        if events.send(LinkEvent::Disconnected).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff.delay_jittered(attempt, scheduler.jitter())).await;
        attempt = attempt.saturating_add(1);
    }
}

/// One connection, until it ends; `welcomed` is set once the scheduler has welcomed the agent.
async fn session(
    scheduler: &Connector,
    hello: &v1::AgentHello,
    events: &mpsc::Sender<LinkEvent>,
    welcomed: &mut bool,
) -> anyhow::Result<()> {
    let channel = scheduler.connect().await?;
    let (out_tx, out_rx) = mpsc::channel::<v1::AgentMessage>(256);
    out_tx
        .send(v1::AgentMessage {
            message: Some(agent_message::Message::Hello(hello.clone())),
        })
        .await?;
    let mut inbound = AgentServiceClient::new(channel)
        .connect(ReceiverStream::new(out_rx))
        .await?
        .into_inner();
    let (outbox_tx, mut outbox_rx) = mpsc::channel::<agent_message::Message>(256);
    let forward = tokio::spawn(async move {
        while let Some(message) = outbox_rx.recv().await {
            let msg = v1::AgentMessage {
                message: Some(message),
            };
            if out_tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut outbox = Some(outbox_tx);
    let result = async {
        while let Some(msg) = inbound.next().await {
            let event = match msg?.message {
                Some(FromScheduler::Welcome(w)) => {
                    info!(active_runs = w.active_runs, "connected to the scheduler");
                    *welcomed = true;
                    LinkEvent::Connected {
                        active_runs: w.active_runs,
                        outbox: outbox
                            .take()
                            .ok_or_else(|| anyhow::anyhow!("second welcome"))?,
                    }
                }
                Some(FromScheduler::Directive(d)) => LinkEvent::Directive(Box::new(d)),
                Some(FromScheduler::Forget(f)) => LinkEvent::Forget(f.run_id),
                Some(FromScheduler::Lease(l)) => LinkEvent::Lease(l),
                Some(FromScheduler::Retire(r)) => LinkEvent::Retire(r),
                None => continue,
            };
            if events.send(event).await.is_err() {
                break;
            }
        }
        Ok(())
    }
    .await;
    forward.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_back_off_capped_at_duration_max_never_panics() {
        let b = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
        };
        for attempt in [0, 1, 16, u32::MAX] {
            assert!(b.delay(attempt) <= Duration::MAX);
        }
    }

    #[test]
    fn by_default_a_lost_link_is_retried_within_a_tenth_of_a_second_and_never_after_3_s() {
        let b = Backoff::default();
        for _ in 0..50 {
            assert!(b.delay(0) <= Duration::from_millis(125), "{:?}", b.delay(0));
            for attempt in [1, 4, 5, 10, u32::MAX] {
                let d = b.delay(attempt);
                assert!(d <= Duration::from_secs(3), "attempt {attempt}: {d:?}");
            }
        }
        // Jitter: agents that lost the link together do not all come back at once.
        let spread: std::collections::BTreeSet<Duration> = (0..50).map(|_| b.delay(10)).collect();
        assert!(spread.len() > 1, "{spread:?}");
    }

    #[test]
    fn back_off_doubles_up_to_its_cap_with_bounded_jitter() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        for (attempt, base_ms) in [
            (0, 100.0),
            (1, 200.0),
            (3, 800.0),
            (10, 5000.0),
            (40, 5000.0),
        ] {
            for _ in 0..50 {
                let d = b.delay(attempt).as_secs_f64() * 1000.0;
                assert!(d >= base_ms * 0.75 - 1e-6, "attempt {attempt}: {d}");
                assert!(
                    d <= (base_ms * 1.25).min(5000.0) + 1e-6,
                    "attempt {attempt}: {d}"
                );
            }
        }
    }
}
