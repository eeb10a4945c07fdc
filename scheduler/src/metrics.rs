//! Prometheus metrics: VolSync's names and labels, plus snapgate's own.

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use snapgate_scheduler_core::model::RunResult;
use snapgate_scheduler_core::{Observation, SourceKey, validate::Mover};

/// VolSync's metric labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    obj_name: String,
    obj_namespace: String,
    role: String,
    method: String,
}

impl SourceLabels {
    fn new(key: &SourceKey, mover: Mover) -> Self {
        Self {
            obj_name: key.name.clone(),
            obj_namespace: key.namespace.clone(),
            role: "source".into(),
            method: mover.as_str().into(),
        }
    }
}

/// [`SourceLabels`] plus the run's result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    obj_name: String,
    obj_namespace: String,
    role: String,
    method: String,
    result: String,
}

fn histogram_seconds() -> Histogram {
    Histogram::new([
        1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    ])
}

/// A namespace.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    namespace: String,
}

/// Every metric the scheduler exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    missed_intervals: Family<SourceLabels, Counter>,
    out_of_sync: Family<SourceLabels, Gauge>,
    sync_duration: Family<SourceLabels, Histogram, fn() -> Histogram>,
    trigger_wait: Family<SourceLabels, Histogram, fn() -> Histogram>,
    trigger_timeouts: Family<SourceLabels, Counter>,
    mover_failures: Family<SourceLabels, Counter>,
    lease_expirations: Family<SourceLabels, Counter>,
    runs: Family<ResultLabels, Counter>,
    /// Agents with a live link.
    pub agents_connected: Gauge,
    sources_without_agent: Family<NamespaceLabels, Gauge>,
    /// Store commits that failed.
    pub store_errors: Counter,
    /// Stored records left out at start (see `ListQuarantined`).
    pub quarantined_records: Gauge,
    /// Open WatchCopy streams.
    pub watch_streams: Gauge,
    /// 1 while this scheduler leads (always, on the embedded store), else 0.
    pub leader: Gauge,
    /// On a follower, the store revision its copy of the leader's commits has reached (0
    /// while it has none: it then refuses reads too); 0 on the leader.
    pub follower_revision: Gauge,
    /// TLS handshakes in flight on the gRPC port.
    pub tls_handshakes: Gauge,
    /// Connections closed before their TLS handshake: their peer address had
    /// `tls::MAX_HANDSHAKES_PER_IP` handshakes in flight already.
    pub tls_handshakes_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Sets how many of `namespace`'s sources no connected agent serves.
    pub fn set_sources_without_agent(&self, namespace: &str, count: usize) {
        self.sources_without_agent
            .get_or_create(&NamespaceLabels {
                namespace: namespace.to_owned(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            registry: Arc::new(Registry::default()),
            missed_intervals: Family::default(),
            out_of_sync: Family::default(),
            sync_duration: Family::new_with_constructor(histogram_seconds),
            trigger_wait: Family::new_with_constructor(histogram_seconds),
            trigger_timeouts: Family::default(),
            mover_failures: Family::default(),
            lease_expirations: Family::default(),
            runs: Family::default(),
            agents_connected: Gauge::default(),
            sources_without_agent: Family::default(),
            store_errors: Counter::default(),
            quarantined_records: Gauge::default(),
            watch_streams: Gauge::default(),
            leader: Gauge::default(),
            follower_revision: Gauge::default(),
            tls_handshakes: Gauge::default(),
            tls_handshakes_refused: Counter::default(),
        };
        registry.register(
            "volsync_missed_intervals",
            "Syncs that completed later than the second schedule time after the previous one",
            m.missed_intervals.clone(),
        );
        registry.register(
            "volsync_volume_out_of_sync",
            "1 when the last sync missed its interval, else 0",
            m.out_of_sync.clone(),
        );
        registry.register(
            "volsync_sync_duration_seconds",
            "Duration of successful syncs",
            m.sync_duration.clone(),
        );
        registry.register(
            "snapgate_copy_trigger_wait_seconds",
            "How long runs waited for a copy trigger before release",
            m.trigger_wait.clone(),
        );
        registry.register(
            "snapgate_copy_trigger_timeouts",
            "Runs whose wait for a copy trigger timed out",
            m.trigger_timeouts.clone(),
        );
        registry.register(
            "snapgate_mover_failures",
            "Failed mover Job attempts",
            m.mover_failures.clone(),
        );
        registry.register(
            "snapgate_copy_lease_expirations",
            "Released runs whose hold lease ran out before the copy point (no copy counted; the run waited again)",
            m.lease_expirations.clone(),
        );
        registry.register("snapgate_runs", "Runs ended, by result", m.runs.clone());
        registry.register(
            "snapgate_agents_connected",
            "Agents with a live link to the scheduler",
            m.agents_connected.clone(),
        );
        registry.register(
            "snapgate_sources_without_agent",
            "Sources in a namespace that no connected agent serves (their runs cannot move)",
            m.sources_without_agent.clone(),
        );
        registry.register(
            "snapgate_store_errors",
            "Store commits that failed (the request was refused)",
            m.store_errors.clone(),
        );
        registry.register(
            "snapgate_store_quarantined_records",
            "Stored records left out at start because they cannot be decoded or run",
            m.quarantined_records.clone(),
        );
        registry.register(
            "snapgate_watch_streams",
            "Open WatchCopy streams",
            m.watch_streams.clone(),
        );
        registry.register(
            "snapgate_leader",
            "1 while this scheduler leads (always on the embedded store), else 0",
            m.leader.clone(),
        );
        registry.register(
            "snapgate_follower_revision",
            "On a follower, the store revision its copy of the leader's commits has reached (0 while it has none, and on the leader)",
            m.follower_revision.clone(),
        );
        registry.register(
            "snapgate_tls_handshakes",
            "TLS handshakes in flight on the gRPC port",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "snapgate_tls_handshakes_refused",
            "Connections closed before their TLS handshake because their address had 16 (MAX_HANDSHAKES_PER_IP) handshakes in flight",
            m.tls_handshakes_refused.clone(),
        );
        Self {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// Removes every series of a deleted source, whatever mover it used.
    pub fn forget_source(&self, key: &SourceKey) {
        for mover in [Mover::Restic, Mover::Rclone, Mover::Rsync, Mover::RsyncTls] {
            let l = SourceLabels::new(key, mover);
            self.missed_intervals.remove(&l);
            self.out_of_sync.remove(&l);
            self.sync_duration.remove(&l);
            self.trigger_wait.remove(&l);
            self.trigger_timeouts.remove(&l);
            self.mover_failures.remove(&l);
            self.lease_expirations.remove(&l);
            for result in ["Successful", "Failed", "TimedOut", "Aborted", "Unknown"] {
                self.runs.remove(&ResultLabels {
                    obj_name: l.obj_name.clone(),
                    obj_namespace: l.obj_namespace.clone(),
                    role: l.role.clone(),
                    method: l.method.clone(),
                    result: result.into(),
                });
            }
        }
    }

    /// Records one observation of the core.
    pub fn observe(&self, o: &Observation) {
        match o {
            Observation::RunFinished {
                source,
                mover,
                result,
                duration,
                missed,
            } => {
                let l = SourceLabels::new(source, *mover);
                if *result == RunResult::Successful {
                    self.sync_duration
                        .get_or_create(&l)
                        .observe(duration.as_seconds_f64());
                    self.out_of_sync.get_or_create(&l).set(i64::from(*missed));
                    if *missed {
                        self.missed_intervals.get_or_create(&l).inc();
                    }
                }
                let result = result.as_str();
                self.runs
                    .get_or_create(&ResultLabels {
                        obj_name: l.obj_name,
                        obj_namespace: l.obj_namespace,
                        role: l.role,
                        method: l.method,
                        result: result.into(),
                    })
                    .inc();
            }
            Observation::TriggerWait {
                source,
                mover,
                waited,
            } => self
                .trigger_wait
                .get_or_create(&SourceLabels::new(source, *mover))
                .observe(waited.as_seconds_f64()),
            Observation::TriggerTimeout { source, mover } => {
                self.trigger_timeouts
                    .get_or_create(&SourceLabels::new(source, *mover))
                    .inc();
            }
            Observation::MoverFailure { source, mover } => {
                self.mover_failures
                    .get_or_create(&SourceLabels::new(source, *mover))
                    .inc();
            }
            Observation::LeaseExpired { source, mover } => {
                self.lease_expirations
                    .get_or_create(&SourceLabels::new(source, *mover))
                    .inc();
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_sources_series_are_removed_whatever_its_mover() {
        let m = Metrics::new();
        let gone = SourceKey::new("apps", "gone");
        let kept = SourceKey::new("apps", "kept");
        for (key, mover) in [
            (&gone, Mover::Restic),
            (&gone, Mover::Rclone),
            (&kept, Mover::Restic),
        ] {
            m.observe(&Observation::RunFinished {
                source: key.clone(),
                mover,
                result: RunResult::Successful,
                duration: chrono::Duration::seconds(3),
                missed: true,
            });
            m.observe(&Observation::MoverFailure {
                source: key.clone(),
                mover,
            });
            m.observe(&Observation::TriggerTimeout {
                source: key.clone(),
                mover,
            });
        }
        assert!(m.encode().contains("obj_name=\"gone\""));
        m.forget_source(&gone);
        let text = m.encode();
        assert!(!text.contains("obj_name=\"gone\""), "{text}");
        assert!(text.contains("obj_name=\"kept\""));
    }
}
