//! The supervisor actor: starts children from their factories, watches them
//! (ractor supervision events and progress probes) and restarts them by
//! strategy, with backoff and restart intensity.
//!
//! Decisions, in order, when a child exits:
//! 1. Classify the exit ([`ExitReason`]): a handler error or panic is
//!    `Failed`, a kill by the health check `Stalled`, an external kill
//!    `Failed("killed")`, otherwise what the child put in its probe, or
//!    `Completed`.
//! 2. Restart policy: permanent always, transient only when abnormal,
//!    temporary never (the child is removed).
//! 3. Intensity, counted per child (so one poisoned partition cannot use up
//!    the budget of its healthy siblings): more than `max_restarts` restarts
//!    of that child within `window` escalates: a nested
//!    supervisor kills its children and fails (its parent decides); the root
//!    marks the child and itself failed and stops restarting it, so the
//!    status tree shows the pipeline failed instead of a hot loop; a
//!    supervisor built with `isolate_failures` marks only that child failed.
//! 4. Strategy: the set of children to restart (one, the rest, all); the
//!    others in the set are killed, since their in-flight work is recovered
//!    from checkpoints anyway.
//! 5. Backoff: the restart is a message sent to ourselves after the delay;
//!    the handler never sleeps.
//!
//! A spawn error (including a panic in `pre_start`, which ractor reports as
//! a spawn error rather than a supervision event) is a failure like any other.
//! Restarts are performed one child at a time inside the supervisor's
//! handler, so a supervisor never has more than one restart in flight.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::probe::{ActorProbe, ExitReason};
use crate::spec::{ChildContext, ChildFactory, ChildSpec, Restart, Strategy, SupervisorSpec};
use crate::status::{NodeKind, NodeState, StatusHandle};

/// How long a graceful stop of one child may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub enum SupervisorMsg {
    /// A backoff delay elapsed: start these children (if still awaiting `epoch`).
    RestartDue { names: Vec<String>, epoch: u64 },
    /// Look for stalled children.
    HealthCheck,
    /// Add and start a child (dynamic children: partitions, sources).
    AddChild(ChildSpec, RpcReplyPort<Result<(), String>>),
    /// Stop a child gracefully and forget it; replies whether it existed.
    RemoveChild(String, RpcReplyPort<bool>),
    /// Names of the current children, in start order.
    Children(RpcReplyPort<Vec<String>>),
    /// Stop a child gracefully (its in-flight message finishes and
    /// checkpoints) within `deadline`, then kill it; it stays
    /// [`NodeState::Drained`] until [`SupervisorMsg::Restart`].
    Drain {
        name: String,
        deadline: Duration,
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// Start a drained, failed or running child afresh (a running one is
    /// stopped gracefully first); forgets its failure history.
    Restart {
        name: String,
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// Drain the child named `spec.name` and start `spec` in its place. If
    /// the new child exits abnormally (fails to start, crashes, stalls)
    /// within `probation`, the previous spec is started again (rolled back).
    /// The reply comes once the outcome is known.
    Replace {
        spec: ChildSpec,
        deadline: Duration,
        probation: Duration,
        reply: RpcReplyPort<Result<ReplaceOutcome, String>>,
    },
    /// A replacement's probation ended.
    ProbationDue { name: String, generation: u64 },
    /// Fault injection: the supervisor itself panics (its parent restarts
    /// the subtree).
    Panic,
}

/// How a [`SupervisorMsg::Replace`] ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReplaceOutcome {
    /// The new version ran through its probation and is active.
    Promoted { version: Option<String> },
    /// The new version failed; the previous one runs again.
    RolledBack {
        version: Option<String>,
        restored: Option<String>,
        error: String,
    },
}

/// A replacement on probation: what to roll back to, and who to tell.
struct Probation {
    previous: ChildSpec,
    probation: Duration,
    reply: Option<RpcReplyPort<Result<ReplaceOutcome, String>>>,
}

/// Arguments of a supervisor actor.
pub struct SupervisorArgs {
    pub spec: SupervisorSpec,
    pub status: StatusHandle,
    /// The root never escalates; it reports failure in the status tree.
    pub root: bool,
}

struct Slot {
    spec: ChildSpec,
    status: StatusHandle,
    cell: Option<ActorCell>,
    probe: ActorProbe,
    generation: u64,
    /// Consecutive failures, for the backoff schedule.
    failures: u32,
    started_at: Instant,
    /// Set while a restart for this epoch is scheduled.
    awaiting: Option<u64>,
    /// Restarts of this child inside the intensity window.
    recent_restarts: VecDeque<Instant>,
    /// Stopped on request; not restarted until asked.
    drained: bool,
    probation: Option<Probation>,
}

pub struct SupervisorState {
    spec: SupervisorSpec,
    root: bool,
    status: StatusHandle,
    slots: Vec<Slot>,
    epoch: u64,
}

pub struct Supervisor;

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let path = args.status.path();
        let slots: Vec<Slot> = args
            .spec
            .children
            .iter()
            .map(|c| new_slot(&path, c.clone()))
            .collect();
        args.status
            .set_children(slots.iter().map(|s| s.status.clone()).collect());
        let mut state = SupervisorState {
            root: args.root,
            status: args.status,
            slots,
            epoch: 0,
            spec: args.spec,
        };
        for i in 0..state.slots.len() {
            start_child(&myself, &mut state, i).await?;
        }
        let every = state.spec.health_interval;
        if !every.is_zero() {
            myself.send_interval(every, || SupervisorMsg::HealthCheck);
        }
        Ok(state)
    }

    async fn post_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.status.set_state(NodeState::Running);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::RestartDue { names, epoch } => {
                restart_due(&myself, state, names, epoch).await?
            }
            SupervisorMsg::HealthCheck => {
                check_health(state);
                check_probations(&myself, state)?;
            }
            SupervisorMsg::AddChild(spec, reply) => {
                if state.slots.iter().any(|s| s.spec.name == spec.name) {
                    let _ = reply.send(Err(format!("child {} already exists", spec.name)));
                    return Ok(());
                }
                let path = state.status.path();
                state.slots.push(new_slot(&path, spec));
                publish_children(state);
                let i = state.slots.len() - 1;
                start_child(&myself, state, i).await?;
                let _ = reply.send(Ok(()));
            }
            SupervisorMsg::RemoveChild(name, reply) => {
                let Some(i) = state.slots.iter().position(|s| s.spec.name == name) else {
                    let _ = reply.send(false);
                    return Ok(());
                };
                let slot = state.slots.remove(i);
                publish_children(state);
                if let Some(cell) = slot.cell {
                    stop_gracefully(cell).await;
                }
                slot.status.set_state(NodeState::Stopped);
                let _ = reply.send(true);
            }
            SupervisorMsg::Children(reply) => {
                let _ = reply.send(state.slots.iter().map(|s| s.spec.name.clone()).collect());
            }
            SupervisorMsg::Drain {
                name,
                deadline,
                reply,
            } => drain_child(state, name, deadline, reply)?,
            SupervisorMsg::Restart { name, reply } => {
                let Some(i) = state.slots.iter().position(|s| s.spec.name == name) else {
                    let _ = reply.send(Err(format!("no child {name}")));
                    return Ok(());
                };
                let slot = &mut state.slots[i];
                slot.drained = false;
                slot.failures = 0;
                slot.recent_restarts.clear();
                slot.status
                    .record(format!("restarted {}", version_label(&slot.spec)));
                state.epoch += 1;
                restart_after_stop(&myself, &mut state.slots[i], state.epoch, STOP_GRACE);
                let _ = reply.send(Ok(()));
            }
            SupervisorMsg::Replace {
                spec,
                deadline,
                probation,
                reply,
            } => replace_child(&myself, state, spec, deadline, probation, reply)?,
            SupervisorMsg::ProbationDue { name, generation } => {
                probation_due(&myself, state, name, generation)?
            }
            SupervisorMsg::Panic => panic!("injected panic in supervisor {}", state.status.path()),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, exit) = match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                (cell, ExitReason::Failed(format!("{error}")))
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let probed = state
                    .slots
                    .iter()
                    .find(|s| s.cell.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
                    .and_then(|s| s.probe.take_exit());
                let exit = match (probed, reason.as_deref()) {
                    (Some(exit), _) => exit,
                    (None, Some("killed")) => ExitReason::Failed("killed".to_string()),
                    (None, _) => ExitReason::Completed,
                };
                (cell, exit)
            }
            _ => return Ok(()),
        };
        let Some(i) = state
            .slots
            .iter()
            .position(|s| s.cell.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
        else {
            // A child we stopped on purpose, or an earlier generation.
            return Ok(());
        };
        child_exited(&myself, state, i, exit)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Graceful: each child finishes its in-flight message. Dependents
        // first (reverse start order), or all at once when independent.
        if state.spec.stop_together {
            let mut stopping = tokio::task::JoinSet::new();
            for cell in state.slots.iter_mut().filter_map(|s| s.cell.take()) {
                stopping.spawn(stop_gracefully(cell));
            }
            while stopping.join_next().await.is_some() {}
            for slot in &state.slots {
                slot.status.set_state(NodeState::Stopped);
            }
        } else {
            for slot in state.slots.iter_mut().rev() {
                if let Some(cell) = slot.cell.take() {
                    stop_gracefully(cell).await;
                }
                slot.status.set_state(NodeState::Stopped);
            }
        }
        if state.status.state() != NodeState::Failed {
            state.status.set_state(NodeState::Stopped);
        }
        Ok(())
    }
}

async fn stop_gracefully(cell: ActorCell) {
    stop_within(cell, STOP_GRACE).await
}

/// Stop `cell` (its current message finishes), killing it after `deadline`.
async fn stop_within(cell: ActorCell, deadline: Duration) {
    if cell
        .stop_and_wait(Some("shutdown".to_string()), Some(deadline))
        .await
        .is_err()
    {
        warn!(actor = ?cell.get_name(), "child did not stop in time, killing it");
        cell.kill();
    }
}

/// Stop the slot's child gracefully (if running) off the supervisor's
/// handler, then have it started again (with whatever spec the slot holds
/// by then) through [`SupervisorMsg::RestartDue`].
fn restart_after_stop(
    myself: &ActorRef<SupervisorMsg>,
    slot: &mut Slot,
    epoch: u64,
    deadline: Duration,
) {
    slot.awaiting = Some(epoch);
    slot.status.set_state(NodeState::Starting);
    let cell = slot.cell.take();
    let msg = SupervisorMsg::RestartDue {
        names: vec![slot.spec.name.clone()],
        epoch,
    };
    let me = myself.clone();
    tokio::spawn(async move {
        if let Some(cell) = cell {
            stop_within(cell, deadline).await;
        }
        let _ = me.send_message(msg);
    });
}

fn version_label(spec: &ChildSpec) -> String {
    spec.version.clone().unwrap_or_else(|| "unversioned".into())
}

fn new_slot(parent: &str, spec: ChildSpec) -> Slot {
    let kind = if spec.is_supervisor() {
        NodeKind::Supervisor
    } else {
        NodeKind::Worker
    };
    Slot {
        status: StatusHandle::new(&spec.name, format!("{parent}/{}", spec.name), kind),
        spec,
        cell: None,
        probe: ActorProbe::new(),
        generation: 0,
        failures: 0,
        started_at: Instant::now(),
        awaiting: None,
        recent_restarts: VecDeque::new(),
        drained: false,
        probation: None,
    }
}

fn publish_children(state: &SupervisorState) {
    state
        .status
        .set_children(state.slots.iter().map(|s| s.status.clone()).collect());
}

async fn start_child(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    i: usize,
) -> Result<(), ActorProcessingErr> {
    let siblings = state.slots[..i]
        .iter()
        .filter_map(|s| s.cell.clone().map(|c| (s.spec.name.clone(), c)))
        .collect();
    let slot = &mut state.slots[i];
    slot.generation += 1;
    slot.probe = ActorProbe::new();
    slot.status.set_state(NodeState::Starting);
    let ctx = ChildContext {
        supervisor: myself.get_cell(),
        path: slot.status.path(),
        generation: slot.generation,
        probe: slot.probe.clone(),
        siblings,
        status: slot.status.clone(),
    };
    match slot.spec.factory.spawn(ctx).await {
        Ok(cell) => {
            slot.started_at = Instant::now();
            slot.status
                .started(cell.clone(), slot.probe.clone(), slot.generation);
            slot.status.set_version(slot.spec.version.clone());
            slot.cell = Some(cell);
            Ok(())
        }
        Err(spawn_error) => {
            let path = slot.status.path();
            warn!(path, error = %spawn_error, "child failed to start");
            child_exited(
                myself,
                state,
                i,
                ExitReason::Failed(format!("start failed: {spawn_error}")),
            )
        }
    }
}

fn check_health(state: &mut SupervisorState) {
    for slot in &state.slots {
        let (Some(cell), Some(timeout)) = (&slot.cell, slot.spec.stall_timeout) else {
            continue;
        };
        let stalled = slot.probe.stalled_for();
        if stalled >= timeout {
            warn!(
                path = slot.status.path(),
                stalled_ms = stalled.as_millis() as u64,
                "child made no progress, killing it"
            );
            metrics::counter!("hubflow_supervisor_stalls_total").increment(1);
            slot.probe.set_exit(ExitReason::Stalled);
            cell.kill();
        }
    }
}

/// A child exited: roll back a failed replacement, or apply the restart
/// policy, the intensity, the strategy and the backoff, in that order (see
/// the module doc).
fn child_exited(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    i: usize,
    exit: ExitReason,
) -> Result<(), ActorProcessingErr> {
    let slot = &mut state.slots[i];
    slot.cell = None;
    if slot.probation.is_some() && exit.is_abnormal() {
        return roll_back(myself, state, i, exit);
    }
    let error = exit_error(&exit);
    if !apply_restart_policy(state, i, &exit, error.clone()) {
        return Ok(());
    }
    metrics::counter!("hubflow_supervisor_restarts_total", "supervisor" => state.spec.name.clone())
        .increment(1);
    if intensity_exceeded(state, i) {
        return escalate(state, i, error.unwrap_or_default());
    }
    let (affected, epoch) = stop_affected(state, i);
    schedule_restart(myself, state, i, &affected, epoch)
}

/// What the status tree records as the error of an exit (none for a
/// normal one).
fn exit_error(exit: &ExitReason) -> Option<String> {
    match exit {
        ExitReason::Failed(e) => Some(e.clone()),
        ExitReason::Stalled => Some("stalled".to_string()),
        ExitReason::DownstreamClosed => Some("downstream closed".to_string()),
        _ => None,
    }
}

/// Restart policy: record the exit of child `i` and say whether it is
/// restarted; one that is not is marked stopped, and a temporary one is
/// removed.
fn apply_restart_policy(
    state: &mut SupervisorState,
    i: usize,
    exit: &ExitReason,
    error: Option<String>,
) -> bool {
    let slot = &mut state.slots[i];
    let path = slot.status.path();
    let abnormal = exit.is_abnormal();
    let restart = match slot.spec.restart {
        Restart::Permanent => true,
        Restart::Transient => abnormal,
        Restart::Temporary => false,
    };
    slot.status.exited(error, restart);
    if abnormal {
        warn!(path, exit = ?exit, "child exited abnormally");
    } else {
        info!(path, exit = ?exit, "child exited");
    }
    if !restart {
        slot.status.set_state(NodeState::Stopped);
        if slot.spec.restart == Restart::Temporary {
            state.slots.remove(i);
            publish_children(state);
        }
    }
    restart
}

/// Intensity: count a restart of child `i`; true when that makes more than
/// `max_restarts` within the window.
fn intensity_exceeded(state: &mut SupervisorState, i: usize) -> bool {
    let now = Instant::now();
    let window = state.spec.intensity.window;
    let recent = &mut state.slots[i].recent_restarts;
    recent.push_back(now);
    while recent
        .front()
        .is_some_and(|t| now.duration_since(*t) > window)
    {
        recent.pop_front();
    }
    recent.len() > state.spec.intensity.max_restarts as usize
}

/// Strategy: the children restarted with child `i` (a drained sibling stays
/// drained), the running ones killed, all awaiting a new restart epoch;
/// returns them with that epoch.
fn stop_affected(state: &mut SupervisorState, i: usize) -> (Vec<usize>, u64) {
    let affected: Vec<usize> = match state.spec.strategy {
        Strategy::OneForOne => vec![i],
        Strategy::RestForOne => (i..state.slots.len()).collect(),
        Strategy::OneForAll => (0..state.slots.len()).collect(),
    };
    let affected: Vec<usize> = affected
        .into_iter()
        .filter(|&j| j == i || !state.slots[j].drained)
        .collect();
    state.epoch += 1;
    let epoch = state.epoch;
    for &j in &affected {
        let other = &mut state.slots[j];
        if let Some(cell) = other.cell.take() {
            info!(
                path = other.status.path(),
                "stopping dependent child for restart"
            );
            cell.kill();
            other.status.exited(None, true);
        }
        other.awaiting = Some(epoch);
        other.status.set_state(NodeState::BackingOff);
    }
    (affected, epoch)
}

/// Backoff: send ourselves the restart of `affected` after the delay of the
/// failed child `i`'s schedule (its failure count resets once it ran for
/// `reset_after`).
fn schedule_restart(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    i: usize,
    affected: &[usize],
    epoch: u64,
) -> Result<(), ActorProcessingErr> {
    let backoff = state.spec.backoff;
    let slot = &mut state.slots[i];
    if slot.started_at.elapsed() >= backoff.reset_after {
        slot.failures = 0;
    }
    slot.failures += 1;
    let delay = backoff.delay(slot.failures);
    let names: Vec<String> = affected
        .iter()
        .map(|&j| state.slots[j].spec.name.clone())
        .collect();
    let msg = SupervisorMsg::RestartDue { names, epoch };
    if delay.is_zero() {
        myself.send_message(msg)?;
    } else {
        myself.send_after(delay, move || msg);
    }
    Ok(())
}

/// A replacement failed its probation: start the previous spec again at
/// once (no backoff, no intensity charge: the old version was healthy).
fn roll_back(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    i: usize,
    exit: ExitReason,
) -> Result<(), ActorProcessingErr> {
    let error = match &exit {
        ExitReason::Failed(e) => e.clone(),
        other => format!("{other:?}"),
    };
    roll_back_with(myself, state, i, error)
}

/// Roll back slot `i` to its previous spec, stopping the failed version
/// first if it still runs.
fn roll_back_with(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    i: usize,
    error: String,
) -> Result<(), ActorProcessingErr> {
    let slot = &mut state.slots[i];
    let Some(mut probation) = slot.probation.take() else {
        return Ok(());
    };
    let failed = std::mem::replace(&mut slot.spec, probation.previous);
    let path = slot.status.path();
    error!(path, version = ?failed.version, %error, "replacement failed, rolling back");
    slot.status.exited(Some(error.clone()), true);
    slot.status.record(format!(
        "rolled back {} to {}: {error}",
        version_label(&failed),
        version_label(&slot.spec)
    ));
    if let Some(reply) = probation.reply.take() {
        let _ = reply.send(Ok(ReplaceOutcome::RolledBack {
            version: failed.version,
            restored: slot.spec.version.clone(),
            error,
        }));
    }
    state.epoch += 1;
    restart_after_stop(myself, &mut state.slots[i], state.epoch, STOP_GRACE);
    Ok(())
}

/// The first sign of trouble below a child on probation: a descendant that
/// restarted or failed since the new version started (a group's own
/// supervisor contains its children's failures, so its exit alone would
/// not tell).
fn probation_trouble(slot: &Slot) -> Option<String> {
    slot.status.children().iter().find_map(|c| {
        c.snapshot().walk().into_iter().find_map(|n| {
            (n.restarts > 0 || n.state == NodeState::Failed).then(|| {
                format!(
                    "{} {} ({})",
                    n.path,
                    if n.state == NodeState::Failed {
                        "failed"
                    } else {
                        "restarted"
                    },
                    n.last_error.clone().unwrap_or_default()
                )
            })
        })
    })
}

/// Roll back every child on probation whose subtree is in trouble.
fn check_probations(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
) -> Result<(), ActorProcessingErr> {
    for i in 0..state.slots.len() {
        let slot = &state.slots[i];
        if slot.probation.is_none() || slot.cell.is_none() {
            continue;
        }
        if let Some(trouble) = probation_trouble(slot) {
            roll_back_with(myself, state, i, trouble)?;
        }
    }
    Ok(())
}

fn escalate(
    state: &mut SupervisorState,
    i: usize,
    error: String,
) -> Result<(), ActorProcessingErr> {
    let path = state.slots[i].status.path();
    let message = format!(
        "{path}: more than {} restarts in {:?} (last error: {error})",
        state.spec.intensity.max_restarts, state.spec.intensity.window
    );
    state.slots[i].status.set_state(NodeState::Failed);
    state.status.set_error(message.clone());
    if state.root || !state.spec.escalate {
        // Keep the rest running; report the failure. The root reports the
        // pipeline failed; an isolating supervisor only its child.
        error!(path, "restart intensity exceeded, giving up on this child");
        if state.root {
            state.status.set_state(NodeState::Failed);
        }
        return Ok(());
    }
    error!(path, "restart intensity exceeded, escalating");
    for slot in &mut state.slots {
        if let Some(cell) = slot.cell.take() {
            cell.kill();
        }
    }
    Err(message.into())
}

/// Spawns a nested supervisor (see [`SupervisorSpec::into_child`]).
pub(crate) struct NestedFactory(pub(crate) SupervisorSpec);

#[async_trait]
impl ChildFactory for NestedFactory {
    async fn spawn(&self, ctx: ChildContext) -> Result<ActorCell, ractor::SpawnErr> {
        let args = SupervisorArgs {
            spec: self.0.clone(),
            status: ctx.status.clone(),
            root: false,
        };
        let (actor, _) = Actor::spawn_linked(None, Supervisor, args, ctx.supervisor).await?;
        Ok(actor.get_cell())
    }
}

/// Backoff elapsed: start the children still awaiting `epoch` (and time
/// the probation of a replacement).
async fn restart_due(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    names: Vec<String>,
    epoch: u64,
) -> Result<(), ActorProcessingErr> {
    for name in names {
        if let Some(i) = state.slots.iter().position(|s| s.spec.name == name)
            && state.slots[i].awaiting == Some(epoch)
        {
            state.slots[i].awaiting = None;
            start_child(myself, state, i).await?;
            let slot = &state.slots[i];
            if let (Some(p), Some(_)) = (&slot.probation, &slot.cell) {
                let msg = SupervisorMsg::ProbationDue {
                    name: slot.spec.name.clone(),
                    generation: slot.generation,
                };
                myself.send_after(p.probation, move || msg);
            }
        }
    }
    Ok(())
}

/// Stop a child within `deadline` and keep it stopped until restarted.
fn drain_child(
    state: &mut SupervisorState,
    name: String,
    deadline: Duration,
    reply: RpcReplyPort<Result<(), String>>,
) -> Result<(), ActorProcessingErr> {
    let Some(i) = state.slots.iter().position(|s| s.spec.name == name) else {
        let _ = reply.send(Err(format!("no child {name}")));
        return Ok(());
    };
    let slot = &mut state.slots[i];
    slot.awaiting = None;
    slot.drained = true;
    slot.status
        .record(format!("drained {}", version_label(&slot.spec)));
    info!(path = slot.status.path(), "draining child");
    let status = slot.status.clone();
    let cell = slot.cell.take();
    tokio::spawn(async move {
        if let Some(cell) = cell {
            stop_within(cell, deadline).await;
        }
        status.exited(None, false);
        status.set_state(NodeState::Drained);
        let _ = reply.send(Ok(()));
    });
    Ok(())
}

/// Swap a child's spec: stop the old one (within `deadline`), start the
/// new one and watch it for `probation`.
fn replace_child(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    spec: ChildSpec,
    deadline: Duration,
    probation: Duration,
    reply: RpcReplyPort<Result<ReplaceOutcome, String>>,
) -> Result<(), ActorProcessingErr> {
    let Some(i) = state.slots.iter().position(|s| s.spec.name == spec.name) else {
        let _ = reply.send(Err(format!("no child {}", spec.name)));
        return Ok(());
    };
    let slot = &mut state.slots[i];
    if slot.probation.is_some() {
        let _ = reply.send(Err(format!(
            "{} is already being replaced",
            slot.status.path()
        )));
        return Ok(());
    }
    info!(
        path = slot.status.path(),
        from = ?slot.spec.version,
        to = ?spec.version,
        "replacing child"
    );
    slot.status.record(format!(
        "replacing {} with {}",
        version_label(&slot.spec),
        version_label(&spec)
    ));
    let previous = std::mem::replace(&mut slot.spec, spec);
    slot.probation = Some(Probation {
        previous,
        probation,
        reply: Some(reply),
    });
    slot.drained = false;
    slot.failures = 0;
    slot.recent_restarts.clear();
    state.epoch += 1;
    restart_after_stop(myself, &mut state.slots[i], state.epoch, deadline);
    Ok(())
}

/// A replacement's probation ended: promote it if it is still the one
/// that started it.
fn probation_due(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    name: String,
    generation: u64,
) -> Result<(), ActorProcessingErr> {
    check_probations(myself, state)?;
    if let Some(slot) = state.slots.iter_mut().find(|s| s.spec.name == name)
        && slot.generation == generation
        && slot.cell.is_some()
        && let Some(mut p) = slot.probation.take()
    {
        let version = slot.spec.version.clone();
        info!(path = slot.status.path(), ?version, "replacement promoted");
        slot.status
            .record(format!("promoted {}", version_label(&slot.spec)));
        if let Some(reply) = p.reply.take() {
            let _ = reply.send(Ok(ReplaceOutcome::Promoted { version }));
        }
    }
    Ok(())
}
