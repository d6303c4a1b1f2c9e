//! Time from a failure to the replacement processing messages, with no
//! backoff: a panic inside the handler, a kill, and a panic in a nested
//! supervisor (the whole subtree rebuilt).
//!
//! `cargo bench --bench supervision`

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use hubflow_supervision::{
    ActorProbe, Backoff, ChildContext, ChildFactory, ChildSpec, Intensity, Restart, RootHandle,
    Strategy, SupervisorSpec, start_root,
};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};

enum Msg {
    Ping(RpcReplyPort<u64>),
    Work,
}

struct Echo;

impl Actor for Echo {
    type Msg = Msg;
    type State = ActorProbe;
    type Arguments = ActorProbe;

    async fn pre_start(
        &self,
        _myself: ActorRef<Msg>,
        probe: ActorProbe,
    ) -> Result<ActorProbe, ActorProcessingErr> {
        Ok(probe)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Msg>,
        msg: Msg,
        probe: &mut ActorProbe,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Ping(reply) => {
                let _ = reply.send(probe.progress());
            }
            Msg::Work => {
                probe.set_busy(true);
                probe.tick();
                probe.set_busy(false);
            }
        }
        Ok(())
    }
}

struct EchoFactory;

#[async_trait]
impl ChildFactory for EchoFactory {
    async fn spawn(&self, ctx: ChildContext) -> Result<ActorCell, ractor::SpawnErr> {
        let (actor, _) = Actor::spawn_linked(None, Echo, ctx.probe, ctx.supervisor).await?;
        Ok(actor.get_cell())
    }
}

fn spec() -> SupervisorSpec {
    let group = SupervisorSpec::new("group", Strategy::OneForOne)
        .backoff(Backoff::none())
        .intensity(Intensity {
            max_restarts: u32::MAX,
            window: Duration::from_secs(1),
        })
        .child(ChildSpec::new(
            "echo",
            Restart::Permanent,
            Arc::new(EchoFactory),
        ));
    SupervisorSpec::new("root", Strategy::OneForOne)
        .backoff(Backoff::none())
        .intensity(Intensity {
            max_restarts: u32::MAX,
            window: Duration::from_secs(1),
        })
        .child(group.into_child())
}

/// The echo actor of generation > `after`, once it answers a message.
async fn replacement_answers(root: &RootHandle, after: u64) {
    loop {
        if let Some(node) = root.status().find("root/group/echo")
            && let Some(cell) = node.cell()
            && node.generation() > after
            && ractor::call!(ActorRef::<Msg>::from(cell), Msg::Ping).is_ok()
        {
            return;
        }
        tokio::task::yield_now().await;
    }
}

fn echo(root: &RootHandle) -> (ActorRef<Msg>, u64) {
    let node = root.status().find("root/group/echo").expect("echo exists");
    let cell = node.cell().expect("echo runs");
    (ActorRef::from(cell), node.generation())
}

fn restart_latency(c: &mut Criterion) {
    // Injected panics are the point here; printing each one (with a
    // backtrace under RUST_BACKTRACE) would dominate what is measured.
    std::panic::set_hook(Box::new(|_| {}));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let root = rt.block_on(async { start_root(spec()).await.expect("tree starts") });
    let mut group = c.benchmark_group("restart");
    group.bench_function("panic_to_replacement_answering", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let root = &root;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (actor, generation) = echo(root);
                    let t = Instant::now();
                    root.inject_panic("root/group/echo")
                        .expect("panic injected");
                    let _ = actor.send_message(Msg::Work);
                    replacement_answers(root, generation).await;
                    total += t.elapsed();
                }
                total
            }
        })
    });
    group.bench_function("kill_to_replacement_answering", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let root = &root;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (_, generation) = echo(root);
                    let t = Instant::now();
                    root.kill("root/group/echo").expect("killed");
                    replacement_answers(root, generation).await;
                    total += t.elapsed();
                }
                total
            }
        })
    });
    group.bench_function("supervisor_panic_to_subtree_answering", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let root = &root;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let group_gen = root
                        .status()
                        .find("root/group")
                        .map(|n| n.generation())
                        .unwrap_or(0);
                    let t = Instant::now();
                    root.inject_panic("root/group").expect("panic injected");
                    // The rebuilt subtree starts its echo at generation 1.
                    loop {
                        if root
                            .status()
                            .find("root/group")
                            .is_some_and(|n| n.generation() > group_gen)
                        {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    replacement_answers(root, 0).await;
                    total += t.elapsed();
                }
                total
            }
        })
    });
    group.finish();
    rt.block_on(root.shutdown());
}

criterion_group!(benches, restart_latency);
criterion_main!(benches);
