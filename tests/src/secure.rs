//! Authentication as on a cluster, with the simulated API server as the token issuer: the
//! scheduler checks ServiceAccount tokens against the simulator's key set, and each caller
//! presents a token the simulator signed for the audience `snapgate`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use snapgate_kube_sim::KubeSim;
use snapgate_scheduler::auth::{Authenticator, IssuerConfig, JwksSource};

/// The audience of every token for the scheduler (its `--auth-audience` default).
pub const AUDIENCE: &str = "snapgate";

/// `system:serviceaccount:<ns>:<sa>`.
pub fn subject((ns, sa): (&str, &str)) -> String {
    format!("system:serviceaccount:{ns}:{sa}")
}

/// A token of the ServiceAccount `(ns, sa)` for the scheduler, valid for an hour, written to
/// `dir/token-<ns>-<sa>` (as a projected token is mounted); its path.
pub fn write_token(sim: &KubeSim, dir: &Path, (ns, sa): (&str, &str)) -> PathBuf {
    let path = dir.join(format!("token-{ns}-{sa}"));
    let token = sim.issue_token(ns, sa, &[AUDIENCE], Duration::from_secs(3600));
    std::fs::write(&path, token).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// The scheduler's check of the tokens `sim` signs: its key set written to `dir/jwks.json`
/// (as a mounted JWKS file) and its issuer.
pub async fn authenticator(sim: &KubeSim, dir: &Path) -> Arc<Authenticator> {
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, sim.jwks().to_string())
        .unwrap_or_else(|e| panic!("{}: {e}", jwks.display()));
    Authenticator::load(vec![IssuerConfig {
        cluster: String::new(),
        issuer: sim.issuer(),
        audience: AUDIENCE.into(),
        jwks: JwksSource::File(jwks),
    }])
    .await
}
