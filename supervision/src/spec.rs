//! What a supervisor is told: its children (as factories), its strategy,
//! restart policies, backoff and restart intensity.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ractor::{ActorCell, ActorRef};
use serde::{Deserialize, Serialize};

use crate::probe::ActorProbe;
use crate::status::StatusHandle;

/// Which children restart when one of them exits abnormally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the child that exited.
    OneForOne,
    /// The child that exited and every child started after it (they depend on it).
    RestForOne,
    /// Every child.
    OneForAll,
}

/// When a child that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Always (long-running workers).
    Permanent,
    /// Only after an abnormal exit (failed, stalled, killed).
    Transient,
    /// Never; the child is removed when it exits.
    Temporary,
}

/// Exponential backoff with jitter, capped, reset after sustained health.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    /// A child that ran this long without failing starts again at `initial`.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            reset_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// No delay at all (tests, benchmarks of restart latency).
    pub fn none() -> Self {
        Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            multiplier: 1.0,
            reset_after: Duration::ZERO,
        }
    }

    /// The cap for the `failures`-th consecutive failure (1-based), before jitter.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(63) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        Duration::from_secs_f64(secs.min(self.max.as_secs_f64()))
    }

    /// The delay before restart number `failures`: uniformly in
    /// `[ceiling/2, ceiling]`, so restarts of many children spread out.
    pub fn delay(&self, failures: u32) -> Duration {
        let cap = self.ceiling(failures);
        if cap.is_zero() {
            return cap;
        }
        let half = cap / 2;
        half + cap.mul_f64(rand::random::<f64>() * 0.5)
    }
}

/// More than `max_restarts` within `window` escalates to the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intensity {
    pub max_restarts: u32,
    pub window: Duration,
}

impl Default for Intensity {
    fn default() -> Self {
        Intensity {
            max_restarts: 10,
            window: Duration::from_secs(60),
        }
    }
}

/// What a factory gets to build one generation of a child.
#[derive(Clone)]
pub struct ChildContext {
    /// The supervisor to link the child to.
    pub supervisor: ActorCell,
    /// `root/ingest/p0003/writer`.
    pub path: String,
    /// 1 for the first start, +1 per restart.
    pub generation: u64,
    /// The probe the child must report to (fresh for every generation).
    pub probe: ActorProbe,
    /// Running siblings started before this child, by name.
    pub siblings: BTreeMap<String, ActorCell>,
    /// The child's node in the status tree.
    pub status: StatusHandle,
}

impl ChildContext {
    /// A sibling started earlier by the same supervisor (rest_for_one
    /// dependencies), typed by its message.
    pub fn sibling<M: ractor::Message>(&self, name: &str) -> Option<ActorRef<M>> {
        self.siblings.get(name).cloned().map(ActorRef::from)
    }
}

/// Builds a child; called again for every restart, so it holds everything
/// needed to rebuild (ractor's own start arguments are consumed).
#[async_trait]
pub trait ChildFactory: Send + Sync + 'static {
    async fn spawn(&self, ctx: ChildContext) -> Result<ActorCell, ractor::SpawnErr>;
}

/// The usual factory: a ractor actor whose start arguments are built
/// afresh for each generation by `args` (from the generation's context: its
/// probe, its siblings), spawned linked to the supervisor.
pub struct ActorFactory<A, F> {
    actor: fn() -> A,
    args: F,
}

impl<A, F> ActorFactory<A, F>
where
    A: ractor::Actor,
    F: Fn(&ChildContext) -> Result<A::Arguments, ractor::SpawnErr> + Send + Sync + 'static,
{
    /// `actor` makes the actor value (`|| MyActor` for a unit struct).
    pub fn new(actor: fn() -> A, args: F) -> Arc<Self> {
        Arc::new(ActorFactory { actor, args })
    }
}

#[async_trait]
impl<A, F> ChildFactory for ActorFactory<A, F>
where
    A: ractor::Actor,
    F: Fn(&ChildContext) -> Result<A::Arguments, ractor::SpawnErr> + Send + Sync + 'static,
{
    async fn spawn(&self, ctx: ChildContext) -> Result<ActorCell, ractor::SpawnErr> {
        let args = (self.args)(&ctx)?;
        let (actor, _) =
            ractor::Actor::spawn_linked(None, (self.actor)(), args, ctx.supervisor).await?;
        Ok(actor.get_cell())
    }
}

/// One child of a supervisor.
#[derive(Clone)]
pub struct ChildSpec {
    pub name: String,
    pub restart: Restart,
    /// Kill the child when it is busy and makes no progress for this long.
    pub stall_timeout: Option<Duration>,
    pub factory: Arc<dyn ChildFactory>,
    /// A label for what this child runs (a transform spec version, say);
    /// shown in the status tree, and what a replace reports.
    pub version: Option<String>,
    nested: bool,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("restart", &self.restart)
            .field("stall_timeout", &self.stall_timeout)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl ChildSpec {
    pub fn new(name: impl Into<String>, restart: Restart, factory: Arc<dyn ChildFactory>) -> Self {
        ChildSpec {
            name: name.into(),
            restart,
            stall_timeout: None,
            factory,
            version: None,
            nested: false,
        }
    }

    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// True for a nested supervisor.
    pub fn is_supervisor(&self) -> bool {
        self.nested
    }

    pub fn with_stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = Some(timeout);
        self
    }
}

/// A supervisor: its name, strategy and children.
#[derive(Clone, Debug)]
pub struct SupervisorSpec {
    pub name: String,
    pub strategy: Strategy,
    pub backoff: Backoff,
    pub intensity: Intensity,
    /// How often children's probes are checked for stalls.
    pub health_interval: Duration,
    /// When a child exceeds its restart intensity: `true` (the default)
    /// escalates to the parent; `false` marks only that child failed and
    /// keeps its siblings running (per-partition isolation).
    pub escalate: bool,
    /// Stop the children all at once on shutdown instead of one after
    /// another in reverse start order: for siblings that do not depend on
    /// each other (one per partition), so a shutdown waits for the slowest
    /// in-flight message, not for the sum of them.
    pub stop_together: bool,
    pub children: Vec<ChildSpec>,
}

impl SupervisorSpec {
    pub fn new(name: impl Into<String>, strategy: Strategy) -> Self {
        SupervisorSpec {
            name: name.into(),
            strategy,
            backoff: Backoff::default(),
            intensity: Intensity::default(),
            health_interval: Duration::from_secs(1),
            escalate: true,
            stop_together: false,
            children: Vec::new(),
        }
    }

    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn intensity(mut self, intensity: Intensity) -> Self {
        self.intensity = intensity;
        self
    }

    pub fn health_interval(mut self, every: Duration) -> Self {
        self.health_interval = every;
        self
    }

    /// Contain a child that exceeds its restart intensity: mark it failed
    /// (visible in the status tree, restartable by an operator) instead of
    /// escalating, so one poisoned partition never stops its siblings.
    pub fn isolate_failures(mut self) -> Self {
        self.escalate = false;
        self
    }

    /// The children are independent: stop them concurrently on shutdown
    /// (see [`SupervisorSpec::stop_together`]).
    pub fn stop_children_together(mut self) -> Self {
        self.stop_together = true;
        self
    }

    pub fn child(mut self, child: ChildSpec) -> Self {
        self.children.push(child);
        self
    }

    /// This supervisor as a (permanent) child of another.
    pub fn into_child(self) -> ChildSpec {
        ChildSpec {
            name: self.name.clone(),
            restart: Restart::Permanent,
            stall_timeout: None,
            factory: Arc::new(crate::supervisor::NestedFactory(self)),
            version: None,
            nested: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_in_the_upper_half() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            reset_after: Duration::from_secs(10),
        };
        let ceilings: Vec<u128> = (1..=7).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 2000, 2000]);
        for n in 1..=7 {
            for _ in 0..100 {
                let d = b.delay(n);
                assert!(d >= b.ceiling(n) / 2 && d <= b.ceiling(n), "{d:?} for {n}");
            }
        }
        assert_eq!(Backoff::none().delay(5), Duration::ZERO);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(2));
    }
}
