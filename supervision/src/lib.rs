//! placeholder: supervision library being built
pub mod probe;
pub use probe::{ActorProbe, ExitReason};
