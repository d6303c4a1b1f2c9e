//! Hot swaps: changing what a running pipeline runs without stopping the
//! dataflow, kept durable in the spec logs of the state container
//! ([`crate::specs`]) and applied on every node of a cluster.
//!
//! - [`transform`]: transform versions (SQL over each curated batch): dry
//!   run on the newest raw blob, propose by compare-and-swap, converge (drain
//!   and replace the node's transform group), cluster-wide probation with
//!   automatic rollback, backfill plans.
//! - [`preview`]: a transform tried on the newest raw blob without a swap,
//!   with its first rows before and after.
//! - [`source`]: source settings: the same for one source's fetcher.
//!
//! Both build on the running [`crate::pipeline::Pipeline`]; what the
//! configuration needs of them (the transform spec, the active source
//! settings) lives lower, in `crate::transform` and `crate::source::live`.

pub mod preview;
pub mod source;
pub mod transform;
