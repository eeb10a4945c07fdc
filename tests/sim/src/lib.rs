//! snapgate's deterministic simulation: the whole system in one process, on virtual time,
//! under a seeded schedule of faults, so that a failing seed replays.
//!
//! ```text
//!  seed ──► StdRng ──► scenario: namespaces, PVCs, sources, applications, a schedule of
//!                      faults (crashes, cut connections, API errors, slow snapshots,
//!                      failing Jobs) and edits (SyncNow, pause, delete, edit)
//!
//!  one current-thread tokio runtime, time paused (virtual: hours pass in seconds)
//!  ┌───────────────────────────────────────────────────────────────────────────────┐
//!  │ SDK apps ─┐                                                                    │
//!  │ operator ─┼─ duplex pipes (net) ─► scheduler (serve_incoming, redb in a tmpdir) │
//!  │ agents ───┘                                                                    │
//!  │   └─ kube::Client (in-process tower service) ─► KubeSim ─► change feed ─► cuts  │
//!  └───────────────────────────────────────────────────────────────────────────────┘
//!                      invariants (see [`invariants`]) checked every virtual minute and at the end
//! ```
//!
//! [`run_seed`] runs one seed and returns what it found. Run it with
//! `cargo run --release -p snapgate-sim -- --seeds N` (see `docs/reliability.md`).

pub mod invariants;
pub mod net;
pub mod record;
pub mod store;
mod world;

pub use invariants::Violation;
pub use world::{Options, Sabotage};

/// What one seed found.
#[derive(Debug)]
pub struct SeedOutcome {
    /// The seed.
    pub seed: u64,
    /// The invariants it broke (empty: none).
    pub violations: Vec<Violation>,
    /// The SHA-256 of its event trace: equal for two runs of the seed when the replay is exact.
    pub digest: String,
    /// Its event trace.
    pub trace: Vec<String>,
}

/// Runs one seed on a fresh current-thread runtime with paused time.
pub fn run_seed(seed: u64, options: &Options) -> anyhow::Result<SeedOutcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    let (record, violations) = runtime.block_on(world::run(seed, options));
    snapgate_kube_sim::set_thread_clock(None);
    // Every task of the seed (scheduler, agents, applications) ends with its runtime.
    drop(runtime);
    let trace = record.lock().trace.clone();
    Ok(SeedOutcome {
        seed,
        violations,
        digest: record.digest(),
        trace,
    })
}
