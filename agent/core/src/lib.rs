//! The pure heart of the snapgate agent: what to read, write and create in Kubernetes for a
//! run, with no IO, no clock and no async. The agent shell (`snapgate-agent`) observes the
//! cluster, calls these functions with what it saw (and the time, when one is needed), and
//! applies the objects and patches they return.
//!
//! ```text
//!   cluster objects (read by the shell)          directive (from the scheduler)
//!   PVC · VolumeSnapshot · clone PVC · Job · Pod ·        │
//!   Warning Event                                         │
//!          │                                              │
//!          ▼ observe / classify                           │
//!   PvcObserved · CopyReadiness · CloneReadiness ·        │
//!   JobState · stuck::Trouble · mover log tail            │
//!          │                                              ▼
//!          └──────────────► plan (the shell matches, one action per arm) ◄──┘
//!                              │
//!                              ▼ build
//!   annotation merge patches (annotations) · VolumeSnapshot / clone PVC /
//!   PVC from snapshot / restic cache / mover Job (resources), named by names
//! ```
//!
//! - [`annotations`]: the copy-trigger annotation keys, [`annotations::observe`], and merge
//!   patches that touch only snapgate-owned keys and are `None` when nothing would change.
//! - [`names`]: deterministic, DNS-safe names and identity labels.
//! - [`spec`]: the source spec as the agent reads it; typed errors naming the field.
//! - [`resources`]: k8s-openapi objects, including the mover Jobs of movers.md.
//! - [`classify`]: observed objects reduced to small enums, and mover log tails.
//! - [`stuck`]: mover pods that cannot start (and Jobs that cannot make one), from pods and
//!   Warning Events, and when such an attempt fails.
//! - [`volsync`]: a VolSync ReplicationSource serving the same PVC, which keeps a gated run from
//!   asking the application to quiesce.
//! - [`bounds`]: the sizes, times and characters the agent reports and writes, checked.
//! - [`reconnect`]: after a (re)connect, which runs the scheduler resent (the others are
//!   dropped) and which are held back until it has resent them all.

pub mod annotations;
pub mod bounds;
pub mod classify;
pub mod names;
pub mod pinning;
pub mod plan;
pub mod reconnect;
pub mod resources;
pub mod review;
pub mod spec;
pub mod stuck;
pub mod volsync;

pub use spec::{CopyMethod, Mover, MoverSpec, SpecError};
