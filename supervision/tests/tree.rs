//! Deterministic tests of the supervision library: every strategy, restart
//! policies, backoff, escalation and isolation, stall detection, start
//! failures, drain / restart / replace with roll back, and fault injection,
//! all on paused tokio time (timers fire when the runtime is idle, so no
//! test waits on the wall clock).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hubflow_supervision::{
    ActorProbe, Backoff, ChildContext, ChildFactory, ChildSpec, ExitReason, Intensity, NodeState,
    ReplaceOutcome, Restart, RootHandle, StatusNode, Strategy, SupervisorMsg, SupervisorSpec,
    start_root,
};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};

enum WorkerMsg {
    Fail,
    Panic,
    /// Become busy and never make progress again.
    Hang,
    /// Stop normally.
    Finish,
    /// Work for a while, then count the work as done.
    Slow(Arc<AtomicU32>),
    /// `Slow`, then again, until stopped.
    Loop(Arc<AtomicU32>),
}

struct Worker;

struct WorkerArgs {
    probe: ActorProbe,
    fail_starts: Arc<AtomicU32>,
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = ActorProbe;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: WorkerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        if args
            .fail_starts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("pre_start panics");
        }
        Ok(args.probe)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        probe: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Fail => return Err("asked to fail".into()),
            WorkerMsg::Panic => panic!("asked to panic"),
            WorkerMsg::Hang => {
                probe.set_busy(true);
                std::future::pending::<()>().await;
            }
            WorkerMsg::Finish => {
                probe.set_exit(ExitReason::Completed);
                myself.stop(None);
            }
            WorkerMsg::Loop(done) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                done.fetch_add(1, Ordering::SeqCst);
                probe.tick();
                let _ = myself.send_message(WorkerMsg::Loop(done));
            }
            WorkerMsg::Slow(done) => {
                probe.set_busy(true);
                tokio::time::sleep(Duration::from_millis(200)).await;
                done.fetch_add(1, Ordering::SeqCst);
                probe.tick();
                probe.set_busy(false);
            }
        }
        Ok(())
    }
}

struct WorkerFactory {
    fail_starts: Arc<AtomicU32>,
}

#[async_trait]
impl ChildFactory for WorkerFactory {
    async fn spawn(&self, ctx: ChildContext) -> Result<ActorCell, ractor::SpawnErr> {
        let args = WorkerArgs {
            probe: ctx.probe,
            fail_starts: self.fail_starts.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, Worker, args, ctx.supervisor).await?;
        Ok(actor.get_cell())
    }
}

fn worker(name: &str, restart: Restart) -> ChildSpec {
    worker_failing_starts(name, restart, 0)
}

fn worker_failing_starts(name: &str, restart: Restart, fails: u32) -> ChildSpec {
    ChildSpec::new(
        name,
        restart,
        Arc::new(WorkerFactory {
            fail_starts: Arc::new(AtomicU32::new(fails)),
        }),
    )
}

fn quick(name: &str, strategy: Strategy) -> SupervisorSpec {
    SupervisorSpec::new(name, strategy)
        .backoff(Backoff::none())
        .health_interval(Duration::from_millis(50))
}

fn send(root: &RootHandle, path: &str, msg: WorkerMsg) {
    let cell = root
        .status()
        .find(path)
        .and_then(|n| n.cell())
        .unwrap_or_else(|| panic!("{path} is not running"));
    ActorRef::<WorkerMsg>::from(cell).send_message(msg).unwrap();
}

fn node(root: &RootHandle, path: &str) -> StatusNode {
    root.snapshot()
        .find(path)
        .cloned()
        .unwrap_or_else(|| panic!("no node {path}"))
}

/// Wait (in real or paused time) until `f` holds.
async fn until(root: &RootHandle, what: &str, f: impl Fn(&StatusNode) -> bool) {
    for _ in 0..2000 {
        if f(&root.snapshot()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}: {:#?}", root.snapshot());
}

fn running_gen(path: &'static str, generation: u64) -> impl Fn(&StatusNode) -> bool {
    move |s| {
        s.find(path)
            .is_some_and(|n| n.state == NodeState::Running && n.generation == generation)
    }
}

fn generations(root: &RootHandle, paths: &[&str]) -> Vec<u64> {
    paths.iter().map(|p| node(root, p).generation).collect()
}

/// A root (quick backoff) over plain workers, started.
async fn workers(strategy: Strategy, children: &[(&str, Restart)]) -> RootHandle {
    let mut spec = quick("root", strategy);
    for (name, restart) in children {
        spec = spec.child(worker(name, *restart));
    }
    start_root(spec).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn one_for_one_restarts_only_the_failed_child() {
    let root = workers(
        Strategy::OneForOne,
        &[("a", Restart::Permanent), ("b", Restart::Permanent)],
    )
    .await;
    send(&root, "root/a", WorkerMsg::Fail);
    until(&root, "a restarted", running_gen("root/a", 2)).await;
    send(&root, "root/a", WorkerMsg::Panic);
    until(&root, "a restarted twice", running_gen("root/a", 3)).await;
    assert_eq!(generations(&root, &["root/a", "root/b"]), vec![3, 1]);
    let a = node(&root, "root/a");
    assert_eq!(a.restarts, 2);
    assert!(a.last_error.unwrap().contains("panic"));
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn rest_for_one_restarts_the_child_and_those_after_it() {
    let root = workers(
        Strategy::RestForOne,
        &[
            ("a", Restart::Permanent),
            ("b", Restart::Permanent),
            ("c", Restart::Permanent),
        ],
    )
    .await;
    send(&root, "root/b", WorkerMsg::Fail);
    until(&root, "c restarted", running_gen("root/c", 2)).await;
    until(&root, "b restarted", running_gen("root/b", 2)).await;
    assert_eq!(
        generations(&root, &["root/a", "root/b", "root/c"]),
        vec![1, 2, 2]
    );
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn one_for_all_restarts_everyone() {
    let root = workers(
        Strategy::OneForAll,
        &[("a", Restart::Permanent), ("b", Restart::Permanent)],
    )
    .await;
    send(&root, "root/b", WorkerMsg::Fail);
    until(&root, "a restarted", running_gen("root/a", 2)).await;
    until(&root, "b restarted", running_gen("root/b", 2)).await;
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn restart_policies() {
    let root = workers(
        Strategy::OneForOne,
        &[
            ("transient", Restart::Transient),
            ("temporary", Restart::Temporary),
            ("permanent", Restart::Permanent),
        ],
    )
    .await;
    // A transient child that completes stays stopped...
    send(&root, "root/transient", WorkerMsg::Finish);
    until(&root, "transient stopped", |s| {
        s.find("root/transient")
            .is_some_and(|n| n.state == NodeState::Stopped)
    })
    .await;
    // ...a temporary child that fails is forgotten...
    send(&root, "root/temporary", WorkerMsg::Fail);
    until(&root, "temporary removed", |s| {
        s.find("root/temporary").is_none()
    })
    .await;
    // ...and a permanent child that completes is started again.
    send(&root, "root/permanent", WorkerMsg::Finish);
    until(
        &root,
        "permanent restarted",
        running_gen("root/permanent", 2),
    )
    .await;
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_grow_and_the_handler_never_sleeps() {
    let backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(8),
        multiplier: 2.0,
        reset_after: Duration::from_secs(3600),
    };
    let root = start_root(
        SupervisorSpec::new("root", Strategy::OneForOne)
            .backoff(backoff)
            .intensity(Intensity {
                max_restarts: 100,
                window: Duration::from_secs(60),
            })
            .child(worker("a", Restart::Permanent))
            .child(worker("b", Restart::Permanent)),
    )
    .await
    .unwrap();
    let mut delays = Vec::new();
    for generation in 2..=5u64 {
        send(&root, "root/a", WorkerMsg::Fail);
        until(&root, "a backing off", |s| {
            s.find("root/a")
                .is_some_and(|n| n.state == NodeState::BackingOff)
        })
        .await;
        let started = tokio::time::Instant::now();
        // While a waits, the supervisor still answers.
        let children = ractor::call!(root.actor(), SupervisorMsg::Children).unwrap();
        assert_eq!(children, vec!["a".to_string(), "b".to_string()]);
        until(&root, "a restarted", |s| {
            s.find("root/a")
                .is_some_and(|n| n.generation == generation && n.state == NodeState::Running)
        })
        .await;
        delays.push(started.elapsed());
    }
    for (n, d) in delays.iter().enumerate() {
        let cap = backoff.ceiling(n as u32 + 1);
        assert!(
            *d >= cap / 2 && *d <= cap + Duration::from_millis(50),
            "restart {n}: {d:?} vs cap {cap:?}"
        );
    }
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn poison_escalates_and_the_root_reports_failure_while_others_run() {
    let poisoned = SupervisorSpec::new("ingest", Strategy::OneForOne)
        .backoff(Backoff::none())
        .intensity(Intensity {
            max_restarts: 3,
            window: Duration::from_secs(60),
        })
        // Fails in pre_start on every attempt.
        .child(worker_failing_starts(
            "poison",
            Restart::Permanent,
            u32::MAX,
        ));
    let root = start_root(
        quick("root", Strategy::OneForOne)
            .intensity(Intensity {
                max_restarts: 2,
                window: Duration::from_secs(60),
            })
            .child(poisoned.into_child())
            .child(worker("healthy", Restart::Permanent)),
    )
    .await
    .unwrap();
    until(&root, "ingest failed", |s| {
        s.find("root/ingest")
            .is_some_and(|n| n.state == NodeState::Failed)
    })
    .await;
    let snapshot = root.snapshot();
    assert_eq!(snapshot.state, NodeState::Failed);
    assert!(
        snapshot
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("root/ingest")
    );
    let healthy = snapshot.find("root/healthy").unwrap();
    assert_eq!((healthy.state, healthy.generation), (NodeState::Running, 1));
    // The healthy child still works and is still supervised.
    send(&root, "root/healthy", WorkerMsg::Fail);
    until(&root, "healthy restarted", running_gen("root/healthy", 2)).await;
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_pre_start_panic_is_retried_like_any_failure() {
    let root = start_root(
        quick("root", Strategy::OneForOne).child(worker_failing_starts(
            "flaky",
            Restart::Permanent,
            2,
        )),
    )
    .await
    .unwrap();
    until(&root, "flaky running", running_gen("root/flaky", 3)).await;
    assert_eq!(node(&root, "root/flaky").restarts, 2);
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_stalled_child_is_killed_and_replaced() {
    let root =
        start_root(quick("root", Strategy::OneForOne).child(
            worker("stuck", Restart::Permanent).with_stall_timeout(Duration::from_millis(200)),
        ))
        .await
        .unwrap();
    send(&root, "root/stuck", WorkerMsg::Hang);
    until(&root, "stuck replaced", running_gen("root/stuck", 2)).await;
    assert_eq!(
        node(&root, "root/stuck").last_error.as_deref(),
        Some("stalled")
    );
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn killing_a_nested_supervisor_rebuilds_its_subtree() {
    let inner = quick("group", Strategy::OneForOne)
        .child(worker("x", Restart::Permanent))
        .child(worker("y", Restart::Permanent));
    let root = start_root(quick("root", Strategy::OneForOne).child(inner.into_child()))
        .await
        .unwrap();
    root.kill("root/group").unwrap();
    until(&root, "group restarted", running_gen("root/group", 2)).await;
    until(&root, "x back", running_gen("root/group/x", 1)).await;
    assert!(root.kill("root/nope").is_err());
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn children_can_be_added_and_removed_at_run_time() {
    let root = start_root(quick("root", Strategy::OneForOne))
        .await
        .unwrap();
    root.add_child("root", worker("p0", Restart::Permanent))
        .await
        .unwrap();
    assert!(
        root.add_child("root", worker("p0", Restart::Permanent))
            .await
            .is_err()
    );
    until(&root, "p0 running", running_gen("root/p0", 1)).await;
    assert!(root.remove_child("root", "p0").await.unwrap());
    assert!(root.snapshot().find("root/p0").is_none());
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_drained_child_finishes_its_work_and_stays_stopped_until_restarted() {
    let root = workers(
        Strategy::RestForOne,
        &[("a", Restart::Permanent), ("b", Restart::Permanent)],
    )
    .await;
    let done = Arc::new(AtomicU32::new(0));
    send(&root, "root/b", WorkerMsg::Slow(done.clone()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    root.drain("root/b", Duration::from_secs(5)).await.unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 1, "in-flight work finished");
    assert_eq!(node(&root, "root/b").state, NodeState::Drained);
    // A failure of `a` restarts `a` (rest_for_one) but not the drained `b`.
    send(&root, "root/a", WorkerMsg::Fail);
    until(&root, "a restarted", running_gen("root/a", 2)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(node(&root, "root/b").state, NodeState::Drained);
    root.restart("root/b").await.unwrap();
    until(&root, "b back", running_gen("root/b", 2)).await;
    assert!(
        node(&root, "root/b")
            .history
            .iter()
            .any(|h| h.starts_with("drained"))
    );
    assert!(root.drain("root", Duration::from_secs(1)).await.is_err());
    assert!(
        root.drain("root/nope", Duration::from_secs(1))
            .await
            .is_err()
    );
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_drain_past_its_deadline_kills() {
    let root =
        start_root(quick("root", Strategy::OneForOne).child(worker("h", Restart::Permanent)))
            .await
            .unwrap();
    send(&root, "root/h", WorkerMsg::Hang);
    root.drain("root/h", Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(node(&root, "root/h").state, NodeState::Drained);
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_healthy_replacement_is_promoted() {
    let root = start_root(
        quick("root", Strategy::OneForOne)
            .child(worker("t", Restart::Permanent).with_version("v1")),
    )
    .await
    .unwrap();
    let done = Arc::new(AtomicU32::new(0));
    send(&root, "root/t", WorkerMsg::Slow(done.clone()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let outcome = root
        .replace(
            "root",
            worker("t", Restart::Permanent).with_version("v2"),
            Duration::from_secs(5),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ReplaceOutcome::Promoted {
            version: Some("v2".into())
        }
    );
    assert_eq!(done.load(Ordering::SeqCst), 1, "v1 finished its work first");
    let t = node(&root, "root/t");
    assert_eq!(
        (t.state, t.version.as_deref()),
        (NodeState::Running, Some("v2"))
    );
    assert_eq!(
        t.history,
        vec![
            "replacing v1 with v2".to_string(),
            "promoted v2".to_string()
        ]
    );
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_replacement_that_cannot_start_is_rolled_back() {
    let root = start_root(
        quick("root", Strategy::OneForOne)
            .child(worker("t", Restart::Permanent).with_version("v1")),
    )
    .await
    .unwrap();
    let outcome = root
        .replace(
            "root",
            worker_failing_starts("t", Restart::Permanent, 1_000).with_version("v2"),
            Duration::from_secs(5),
            Duration::from_millis(500),
        )
        .await
        .unwrap();
    match outcome {
        ReplaceOutcome::RolledBack {
            version,
            restored,
            error,
        } => {
            assert_eq!(version.as_deref(), Some("v2"));
            assert_eq!(restored.as_deref(), Some("v1"));
            assert!(error.contains("start failed"), "{error}");
        }
        other => panic!("expected a roll back, got {other:?}"),
    }
    until(&root, "v1 running again", |s| {
        s.find("root/t")
            .is_some_and(|n| n.state == NodeState::Running && n.version.as_deref() == Some("v1"))
    })
    .await;
    assert!(
        node(&root, "root/t")
            .history
            .iter()
            .any(|h| h.starts_with("rolled back v2 to v1"))
    );
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_replacement_that_crashes_during_probation_is_rolled_back() {
    let root = Arc::new(
        start_root(
            quick("root", Strategy::OneForOne)
                .child(worker("t", Restart::Permanent).with_version("v1")),
        )
        .await
        .unwrap(),
    );
    let swapping = {
        let root = root.clone();
        tokio::spawn(async move {
            root.replace(
                "root",
                worker("t", Restart::Permanent).with_version("v2"),
                Duration::from_secs(5),
                Duration::from_secs(30),
            )
            .await
        })
    };
    until(&root, "v2 running", |s| {
        s.find("root/t")
            .is_some_and(|n| n.state == NodeState::Running && n.version.as_deref() == Some("v2"))
    })
    .await;
    send(&root, "root/t", WorkerMsg::Panic);
    let outcome = swapping.await.unwrap().unwrap();
    assert!(
        matches!(&outcome, ReplaceOutcome::RolledBack { error, .. } if error.contains("asked to panic")),
        "{outcome:?}"
    );
    until(&root, "v1 running again", |s| {
        s.find("root/t")
            .is_some_and(|n| n.state == NodeState::Running && n.version.as_deref() == Some("v1"))
    })
    .await;
    Arc::into_inner(root).unwrap().shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn injected_panics_restart_workers_and_supervisors() {
    let inner = quick("group", Strategy::OneForOne).child(worker("x", Restart::Permanent));
    let root = start_root(quick("root", Strategy::OneForOne).child(inner.into_child()))
        .await
        .unwrap();
    root.inject_panic("root/group/x").unwrap();
    // The panic fires when the worker next takes work.
    send(
        &root,
        "root/group/x",
        WorkerMsg::Slow(Arc::new(AtomicU32::new(0))),
    );
    until(&root, "x restarted", running_gen("root/group/x", 2)).await;
    assert!(
        node(&root, "root/group/x")
            .last_error
            .is_some_and(|e| e.contains("injected panic"))
    );
    root.inject_panic("root/group").unwrap();
    until(&root, "group restarted", running_gen("root/group", 2)).await;
    until(&root, "x rebuilt", running_gen("root/group/x", 1)).await;
    assert!(root.inject_panic("root").is_err());
    assert!(root.inject_panic("root/none").is_err());
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_isolating_supervisor_fails_only_the_poisoned_child() {
    let fails = Arc::new(AtomicU32::new(u32::MAX));
    let poison = ChildSpec::new(
        "p1",
        Restart::Permanent,
        Arc::new(WorkerFactory {
            fail_starts: fails.clone(),
        }),
    );
    let ingest = quick("ingest", Strategy::OneForOne)
        .intensity(Intensity {
            max_restarts: 3,
            window: Duration::from_secs(60),
        })
        .isolate_failures()
        .child(worker("p0", Restart::Permanent))
        .child(poison);
    let root = start_root(quick("root", Strategy::OneForOne).child(ingest.into_child()))
        .await
        .unwrap();
    until(&root, "p1 failed", |s| {
        s.find("root/ingest/p1")
            .is_some_and(|n| n.state == NodeState::Failed)
    })
    .await;
    let snapshot = root.snapshot();
    assert_eq!(snapshot.state, NodeState::Running, "the pipeline runs on");
    let ingest = snapshot.find("root/ingest").unwrap();
    assert_eq!((ingest.state, ingest.generation), (NodeState::Running, 1));
    assert!(
        ingest
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("root/ingest/p1")
    );
    assert_eq!(node(&root, "root/ingest/p0").state, NodeState::Running);
    // Fixed: an operator restarts it by path.
    fails.store(0, Ordering::SeqCst);
    root.restart("root/ingest/p1").await.unwrap();
    until(&root, "p1 back", |s| {
        s.find("root/ingest/p1")
            .is_some_and(|n| n.state == NodeState::Running)
    })
    .await;
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_group_whose_children_fail_during_probation_is_rolled_back() {
    let group = |version: &str| {
        quick("group", Strategy::OneForOne)
            .isolate_failures()
            .child(worker("w", Restart::Permanent))
            .into_child()
            .with_version(version)
    };
    let root = Arc::new(
        start_root(quick("root", Strategy::OneForOne).child(group("v1")))
            .await
            .unwrap(),
    );
    let swapping = {
        let root = root.clone();
        tokio::spawn(async move {
            root.replace(
                "root",
                group("v2"),
                Duration::from_secs(5),
                Duration::from_secs(30),
            )
            .await
        })
    };
    until(&root, "v2 running", |s| {
        s.find("root/group")
            .is_some_and(|n| n.state == NodeState::Running && n.version.as_deref() == Some("v2"))
            && s.find("root/group/w")
                .is_some_and(|n| n.state == NodeState::Running)
    })
    .await;
    // The group contains its child's failure; the probation still sees it.
    send(&root, "root/group/w", WorkerMsg::Fail);
    let outcome = swapping.await.unwrap().unwrap();
    assert!(
        matches!(&outcome, ReplaceOutcome::RolledBack { error, .. }
            if error.contains("root/group/w restarted") && error.contains("asked to fail")),
        "{outcome:?}"
    );
    until(&root, "v1 back", |s| {
        s.find("root/group")
            .is_some_and(|n| n.state == NodeState::Running && n.version.as_deref() == Some("v1"))
    })
    .await;
    Arc::into_inner(root).unwrap().shutdown().await;
}

/// Shutdown of three siblings that keep working in 200 ms steps (started
/// 50 ms apart): in reverse order, each finishing its step while the others
/// start new ones, or all at once when they are independent.
async fn shutdown_of_three_busy(together: bool) -> Duration {
    let mut spec = SupervisorSpec::new("root", Strategy::OneForOne)
        .child(worker("a", Restart::Permanent))
        .child(worker("b", Restart::Permanent))
        .child(worker("c", Restart::Permanent));
    if together {
        spec = spec.stop_children_together();
    }
    let root = start_root(spec).await.unwrap();
    let done = Arc::new(AtomicU32::new(0));
    for path in ["root/a", "root/b", "root/c"] {
        send(&root, path, WorkerMsg::Loop(done.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = tokio::time::Instant::now();
    root.shutdown().await;
    assert!(
        done.load(Ordering::SeqCst) >= 3,
        "every in-flight step finished"
    );
    started.elapsed()
}

#[tokio::test(start_paused = true)]
async fn independent_children_stop_together_dependent_ones_in_order() {
    let sequential = shutdown_of_three_busy(false).await;
    let together = shutdown_of_three_busy(true).await;
    // Paused time: the only time that passes is the workers' sleeps.
    // Sequential: c's step ends, then b's next one, then a's next one.
    assert!(sequential >= Duration::from_millis(350), "{sequential:?}");
    // Together: each finishes the step it is in.
    assert!(together < Duration::from_millis(250), "{together:?}");
}
