//! The agent's Prometheus metrics: what it did to the cluster, what it reported, whether it is
//! connected. Served on `--metrics-listen` at `/metrics`.

use std::sync::{Arc, atomic::AtomicI64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use snapgate_agent_core::plan::{self, Action};
use snapgate_proto::v1::report::Observation;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// A failed Kubernetes API call: what it was and how it failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiErrorLabels {
    verb: String,
    resource: String,
    class: String,
}

/// The agent's metrics (cheap to clone; clones share the values).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    actions: Family<KindLabel, Counter>,
    reports: Family<KindLabel, Counter>,
    api_errors: Family<ApiErrorLabels, Counter>,
    /// 1 while the link to the scheduler is up.
    pub connected: Gauge<i64, AtomicI64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric in it.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("snapgate_agent");
        let actions = Family::<KindLabel, Counter>::default();
        let reports = Family::<KindLabel, Counter>::default();
        let api_errors = Family::<ApiErrorLabels, Counter>::default();
        let connected = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "actions",
            "Actions applied to the cluster, by kind",
            actions.clone(),
        );
        registry.register(
            "reports",
            "Reports sent to the scheduler, by observation",
            reports.clone(),
        );
        registry.register(
            "api_errors",
            "Kubernetes API calls that failed, by verb, resource and class (forbidden, invalid, conflict, transient, not_found, already_exists)",
            api_errors.clone(),
        );
        registry.register(
            "connected",
            "Whether the link to the scheduler is up",
            connected.clone(),
        );
        Self {
            registry: Arc::new(registry),
            actions,
            reports,
            api_errors,
            connected,
        }
    }

    /// Counts a failed Kubernetes API call.
    pub fn api_error(&self, verb: &str, resource: &str, class: &str) {
        self.api_errors
            .get_or_create(&ApiErrorLabels {
                verb: verb.into(),
                resource: resource.into(),
                class: class.into(),
            })
            .inc();
    }

    /// Counts an applied action.
    pub fn action(&self, action: &Action) {
        let kind = match action {
            Action::PatchPvc { .. } => "PatchPvc",
            Action::PatchJob { .. } => "PatchJob",
            Action::CreateSnapshot(_) => "CreateSnapshot",
            Action::CreatePvc(_) => "CreatePvc",
            Action::CreateJob(_) => "CreateJob",
            Action::DeleteSnapshot(_) => "DeleteSnapshot",
            Action::DeletePvc(_) => "DeletePvc",
            Action::DeleteJob(_) => "DeleteJob",
            Action::FailStuckJob { .. } => "FailStuckJob",
            Action::ReadSecrets(_) => "ReadSecrets",
            Action::Event(_) => "Event",
            Action::ReportMover { .. } => "ReportMover",
            Action::Report(_) => "Report",
            Action::WakeAt(_) => "WakeAt",
            Action::RequestLease => "RequestLease",
            Action::ReviewAuthor(_) => "ReviewAuthor",
            Action::ListPods => "ListPods",
            Action::ListVolSync => "ListVolSync",
            Action::ApplyMoverAccount(_) => "ApplyMoverAccount",
        };
        self.actions
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// Counts a report sent.
    pub fn report(&self, observation: &Observation) {
        self.reports
            .get_or_create(&KindLabel {
                kind: plan::observation_name(observation).into(),
            })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
