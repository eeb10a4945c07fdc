//! snapgate end to end: the scheduler, the agent and the simulated API server in one process,
//! over real gRPC on loopback and kube's real client.
//!
//! ```text
//!   test ──gRPC──► scheduler ◄──AgentService.Connect── agent ──REST──► kube-sim
//!     │                                                                 ▲
//!     └────────────── kube Client (as a user or controller) ────────────┘
//! ```
//!
//! [`World`] starts the three; the tests under `tests/` drive them as users, applications
//! and cluster controllers would.

pub mod recorder;
pub mod secure;
pub mod world;

pub use world::*;
