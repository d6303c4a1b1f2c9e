//! Chaos: kill and panic random actors of a running pipeline at a steady
//! rate, to prove that supervision heals the dataflow with nothing lost.
//!
//! The driver walks the live status tree, picks a kind in rotation (so every
//! kind is hit: fetchers, consumers, blob-writers, transformers, notice
//! listeners and supervisors) and a random running node of that kind, then either kills it
//! (as a crash or an OOM kill would) or injects a panic into its handler
//! ([`hubflow_supervision::ActorProbe::request_panic`]; a supervisor panics
//! at once). Used by the chaos tests and the chaos throughput benchmark.

use std::collections::BTreeMap;
use std::time::Duration;

use hubflow_supervision::{NodeKind, NodeState, StatusHandle, SupervisorMsg};
use ractor::ActorRef;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a chaos run does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChaosConfig {
    /// Faults per second.
    pub rate_per_sec: f64,
    /// Share of faults that are panics (the rest are kills), 0..=1.
    pub panic_share: f64,
    pub seed: u64,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            rate_per_sec: 1.0,
            panic_share: 0.5,
            seed: 0x2545_F491_4F6C_DD1D,
        }
    }
}

/// The kinds of actor the driver rotates through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Fetcher,
    Consumer,
    Writer,
    Transformer,
    NoticeListener,
    Supervisor,
}

impl Target {
    /// Every kind of actor the driver hits.
    pub const ALL: [Target; 6] = [
        Target::Fetcher,
        Target::Consumer,
        Target::Writer,
        Target::Transformer,
        Target::NoticeListener,
        Target::Supervisor,
    ];

    /// The kind of the node at `path` in the pipeline tree.
    pub fn of(path: &str, kind: NodeKind) -> Target {
        if kind == NodeKind::Supervisor {
            Target::Supervisor
        } else if path.ends_with("/consumer") {
            Target::Consumer
        } else if path.ends_with("/writer") {
            Target::Writer
        } else if path.contains("/sources/") {
            Target::Fetcher
        } else if path.contains("/notices/") {
            Target::NoticeListener
        } else {
            Target::Transformer
        }
    }
}

/// What a chaos run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChaosReport {
    pub kills: BTreeMap<Target, u64>,
    pub panics: BTreeMap<Target, u64>,
}

impl ChaosReport {
    pub fn total(&self) -> u64 {
        self.kills.values().sum::<u64>() + self.panics.values().sum::<u64>()
    }

    /// Faults of either kind dealt to `target`.
    pub fn hits(&self, target: Target) -> u64 {
        self.kills.get(&target).copied().unwrap_or(0)
            + self.panics.get(&target).copied().unwrap_or(0)
    }
}

/// A running chaos driver; [`Chaos::stop`] ends it and returns its report.
pub struct Chaos {
    stop: watch::Sender<bool>,
    task: JoinHandle<ChaosReport>,
}

impl Chaos {
    /// Start dealing faults to the tree under `root` (the root itself is
    /// never hit: that is the process dying, covered by the crash tests).
    pub fn start(root: StatusHandle, config: ChaosConfig) -> Chaos {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut report = ChaosReport::default();
            if config.rate_per_sec <= 0.0 {
                return report;
            }
            let mut rng = Rng(config.seed | 1);
            let every = Duration::from_secs_f64(1.0 / config.rate_per_sec);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut turn = 0usize;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                // Rotate through the kinds, skipping kinds with nothing running.
                for _ in 0..Target::ALL.len() {
                    let target = Target::ALL[turn % Target::ALL.len()];
                    turn += 1;
                    let candidates = running(&root, target);
                    if candidates.is_empty() {
                        continue;
                    }
                    let victim = &candidates[rng.below(candidates.len())];
                    let panic = rng.unit() < config.panic_share;
                    if strike(victim, panic) {
                        let tally = if panic {
                            &mut report.panics
                        } else {
                            &mut report.kills
                        };
                        *tally.entry(target).or_default() += 1;
                        tracing::info!(path = victim.path(), ?target, panic, "chaos strike");
                    }
                    break;
                }
            }
            report
        });
        Chaos { stop, task }
    }

    pub async fn stop(self) -> ChaosReport {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

fn running(root: &StatusHandle, target: Target) -> Vec<StatusHandle> {
    let root_path = root.path();
    let mut out = Vec::new();
    let mut stack = root.children();
    while let Some(node) = stack.pop() {
        stack.extend(node.children());
        let path = node.path();
        if path != root_path
            && node.state() == NodeState::Running
            && node.cell().is_some()
            && Target::of(&path, node.kind()) == target
        {
            out.push(node);
        }
    }
    out
}

/// Kill or panic one node; false when it was no longer running.
fn strike(node: &StatusHandle, panic: bool) -> bool {
    let Some(cell) = node.cell() else {
        return false;
    };
    if !panic {
        cell.kill();
        return true;
    }
    match (node.kind(), node.probe()) {
        // The panic fires inside the worker's own handler.
        (NodeKind::Worker, Some(probe)) => {
            probe.request_panic();
            true
        }
        (NodeKind::Worker, None) => false,
        (NodeKind::Supervisor, _) => ActorRef::<SupervisorMsg>::from(cell)
            .send_message(SupervisorMsg::Panic)
            .is_ok(),
    }
}

/// xorshift64: reproducible runs from a seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
