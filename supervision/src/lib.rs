//! Supervision trees on ractor: restart strategies, backoff, restart
//! intensity, progress-based health and a status tree.
//!
//! ractor gives links, supervision events and stop/kill, but no restart
//! strategies, no backoff and no way to rebuild a child (its start arguments
//! are consumed). This crate adds them.
//!
//! Layout:
//! - [`probe`]: [`ActorProbe`], the observable side of a supervised actor
//!   (progress ticks, busy flag, queue depth, published state, typed exit
//!   reason), and [`ExitReason`].
//! - [`spec`]: what a supervisor is told: [`ChildSpec`] (a factory, a
//!   restart policy, a stall timeout), [`SupervisorSpec`] (strategy,
//!   [`Backoff`], [`Intensity`]); [`ActorFactory`], the factory of an actor
//!   whose arguments are rebuilt for each generation.
//! - [`supervisor`]: the [`Supervisor`] actor that applies them.
//! - [`status`]: the live status tree and its serializable snapshot.
//! - [`root`]: [`start_root`] and the [`RootHandle`] operators and tests
//!   drive: snapshot, kill or panic by path, add/remove children, and actor
//!   groups: drain (graceful stop that stays stopped), restart, and replace
//!   with a new version that is rolled back automatically when it fails
//!   its probation (the mechanism of hot swap and of moving partitions).

pub mod probe;
pub mod root;
pub mod spec;
pub mod status;
pub mod supervisor;

pub use probe::{ActorProbe, ExitReason};
pub use root::{RootHandle, TreeError, start_root};
pub use spec::{
    ActorFactory, Backoff, ChildContext, ChildFactory, ChildSpec, Intensity, Restart, Strategy,
    SupervisorSpec,
};
pub use status::{NodeKind, NodeState, StatusHandle, StatusNode};
pub use supervisor::{ReplaceOutcome, Supervisor, SupervisorArgs, SupervisorMsg};
