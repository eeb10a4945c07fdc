//! The audit trail: one JSON line per mutating call, Trigger, agent connection and denial.
//!
//! Written to `--audit-log FILE` (appended, one line per record) or, without it, to the log
//! under the target `snapgate::audit`. A record names who (the token's subject, never the
//! token), what (the RPC), where (namespace, source, run) and the result (a gRPC code name).

use std::{
    fs::File,
    io::Write as _,
    path::Path,
    sync::{Arc, Mutex},
};

use serde::Serialize;
use tonic::Code;
use tracing::{info, warn};

/// One audited event.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Record<'a> {
    /// When, RFC 3339 UTC (filled in by [`Audit::record`]).
    pub time: String,
    /// Who: the token's subject, or `anonymous`.
    pub identity: &'a str,
    /// The RPC, e.g. `snapgate.v1.SourceService/ApplySource`.
    pub rpc: &'a str,
    /// The namespace acted on ("" for every namespace).
    pub namespace: &'a str,
    /// The source, when the call names one.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub source: &'a str,
    /// The run, when the call names or makes one.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub run: &'a str,
    /// The gRPC code the call ended with, e.g. `Ok`, `PermissionDenied`.
    pub code: String,
}

/// Where audit records go.
#[derive(Clone, Debug, Default)]
pub struct Audit {
    file: Option<Arc<Mutex<File>>>,
}

impl Audit {
    /// Records to the log (target `snapgate::audit`).
    pub fn to_log() -> Self {
        Self::default()
    }

    /// Appends records to `path` (created if missing).
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file: Some(Arc::new(Mutex::new(file))),
        })
    }

    /// Writes one record, stamped with the current time.
    pub fn record(&self, mut record: Record<'_>) {
        record.time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let line = match serde_json::to_string(&record) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "audit record not serialisable");
                return;
            }
        };
        match &self.file {
            None => info!(target: "snapgate::audit", "{line}"),
            Some(file) => {
                let written = file
                    .lock()
                    .map_err(|_| std::io::Error::other("audit log lock poisoned"))
                    .and_then(|mut f| writeln!(f, "{line}"));
                if let Err(e) = written {
                    warn!(error = %e, "audit record not written");
                }
            }
        }
    }
}

/// A gRPC code as its name (`PermissionDenied`).
pub fn code_name(code: Code) -> String {
    format!("{code:?}")
}
