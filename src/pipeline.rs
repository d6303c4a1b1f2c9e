//! The topology: backends opened from the settings, and the supervision tree
//! of actors built on them.
//!
//! ```text
//! pipeline (one_for_one)
//! ├── sources (one_for_one) ── fetcher-<source> per configured source
//! ├── ingest (one_for_one) ── p0000 … pNNNN, each rest_for_one(writer, consumer)
//! ├── transform (one_for_one) ── p0000 … pNNNN transformers
//! └── ownership (with `[cluster] enabled`: starts and stops the fetchers and
//!     partition groups this node holds leases and ownership for)
//! ```
//!
//! A partition's writer starts before its consumer, which finds it as a
//! sibling; when the writer dies the consumer is restarted after it
//! (rest_for_one) and asks the new writer where to resume. One partition's
//! failure never touches another's; a failing transformer never stops
//! ingestion (raw keeps landing and is transformed when it recovers).
//!
//! [`Progress`] reads the durable state (source cursors, hub positions,
//! writer and transformer checkpoints), so it is the same whichever process
//! wrote it: the status line and the "exit when idle" check use it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hubflow_actors::blob_writer::{BlobWriter, Checkpoint, WriterMsg, WriterParams};
use hubflow_actors::consumer::{ConsumerParams, PartitionConsumer};
use hubflow_actors::fetcher::{CursorRecord, Fetcher, FetcherParams};
use hubflow_actors::notices::{NoticeListener, NoticeListenerParams, WakeBoard};
use hubflow_actors::pauses::Pauses;
use hubflow_actors::ports::{Hub, Source, StateStore, checkpoint_name};
use hubflow_actors::retry::RetryDelay;
use hubflow_actors::transformer::{
    self, CurateSlots, TransformCheckpoint, Transformer, TransformerParams,
};
use hubflow_supervision::{
    ActorFactory, Backoff, ChildContext, ChildFactory, ChildSpec, Intensity, Restart, RootHandle,
    Strategy, SupervisorSpec,
};
use ractor::SpawnErr;
use serde::Serialize;

use crate::backends::{Backends, INGEST_HUB};
use crate::config::{LandedNotices, Settings};

/// Consumer group of the notice listeners on hub "landed".
pub const TRANSFORM_GROUP: &str = "transform";

/// The node's switchboards its actors are built with: not backends, but
/// shared state of one running pipeline.
#[derive(Clone, Default)]
pub struct Switchboards {
    /// Wake-up lines from the notice listeners to the transformers (see
    /// `hubflow_actors::notices`).
    pub board: WakeBoard,
    /// Operator pauses, read by the fetcher and consumer factories so a
    /// restarted actor stays paused (see `hubflow_actors::pauses`).
    pub pauses: Pauses,
    /// How many curations this node's transformers run at once (one per
    /// core).
    pub curate_slots: CurateSlots,
}

/// A running pipeline: the supervision tree, what it runs against, the
/// switchboards its actors share and the settings it was built from.
/// Started by `Pipeline::start` (in `crate::node`).
pub struct Pipeline {
    pub root: RootHandle,
    pub backends: Backends,
    pub boards: Switchboards,
    pub settings: Settings,
}

impl Pipeline {
    /// Graceful stop: consumers before writers, each finishing its batch.
    pub async fn shutdown(self) {
        self.root.shutdown().await;
    }

    pub async fn progress(&self) -> anyhow::Result<Progress> {
        Progress::read(&self.settings, &self.backends).await
    }
}

fn supervisor(name: &str, strategy: Strategy, settings: &Settings) -> SupervisorSpec {
    let s = &settings.supervision;
    SupervisorSpec::new(name, strategy)
        .backoff(Backoff {
            initial: Duration::from_millis(s.backoff_initial_ms),
            max: Duration::from_millis(s.backoff_max_ms),
            multiplier: 2.0,
            reset_after: Duration::from_millis(s.backoff_reset_ms),
        })
        .intensity(Intensity {
            max_restarts: s.max_restarts,
            window: Duration::from_secs(s.window_secs),
        })
        .health_interval(Duration::from_millis((s.stall_timeout_ms / 4).max(250)))
}

/// Name of the root supervisor.
pub const ROOT_SUPERVISOR: &str = "pipeline";
/// The supervisor of the fetchers (children `fetcher-<source>`).
pub const SOURCES_SUPERVISOR: &str = "sources";
/// The supervisor of the partition groups (children `pNNNN`).
pub const INGEST_SUPERVISOR: &str = "ingest";
/// The supervisor of the transformers (children `pNNNN`).
pub const TRANSFORM_SUPERVISOR: &str = "transform";
/// The supervisor of the notice listeners (children `lNNNN`, one per
/// partition of hub "landed", on every node).
pub const NOTICES_SUPERVISOR: &str = "notices";

/// The child name of a source's fetcher under [`SOURCES_SUPERVISOR`].
pub fn fetcher_child_name(source: &str) -> String {
    format!("fetcher-{source}")
}

/// The child name of a partition's group under [`INGEST_SUPERVISOR`] and
/// [`TRANSFORM_SUPERVISOR`].
pub fn partition_child_name(partition: u32) -> String {
    format!("p{partition:04}")
}

/// The supervision tree for these settings.
///
/// With `[cluster] enabled` the sources, ingest and transform supervisors
/// start empty: the ownership manager ([`crate::cluster`], added by
/// `Pipeline::start`) adds a fetcher per source lease it holds and the
/// groups of the partitions it owns. The notice listeners run on every
/// node regardless.
pub async fn tree(
    settings: &Settings,
    backends: &Backends,
    boards: &Switchboards,
    sources: Vec<Arc<dyn Source>>,
) -> anyhow::Result<SupervisorSpec> {
    // Sources, partitions and transformers are isolated from each other: one
    // that keeps failing is marked failed (an operator restarts it by path)
    // while the others run on.
    let mut source_sup = supervisor(SOURCES_SUPERVISOR, Strategy::OneForOne, settings)
        .isolate_failures()
        .stop_children_together();
    let mut ingest_sup = supervisor(INGEST_SUPERVISOR, Strategy::OneForOne, settings)
        .isolate_failures()
        .stop_children_together();
    let mut transform_sup = transform_supervisor(settings);
    if !settings.cluster.enabled {
        for source in sources {
            source_sup = source_sup.child(fetcher_spec(settings, backends, boards, source));
        }
        let partitions = backends
            .ingest
            .partition_ids()
            .await
            .context("listing ingest partitions")?;
        for partition in partitions {
            ingest_sup =
                ingest_sup.child(ingest_partition_spec(settings, backends, boards, partition));
            transform_sup = transform_sup.child(transform_partition_spec(
                settings, backends, boards, partition,
            ));
        }
    }
    // Every node listens to every landed partition: Event Grid puts a
    // blob's notice on any of them, and a node's transformers need theirs.
    let mut notices_sup = supervisor(NOTICES_SUPERVISOR, Strategy::OneForOne, settings)
        .isolate_failures()
        .stop_children_together();
    for landed_partition in backends
        .landed
        .partition_ids()
        .await
        .context("listing landed partitions")?
    {
        notices_sup = notices_sup.child(notice_listener_spec(
            settings,
            backends,
            boards,
            landed_partition,
        ));
    }
    // Start order is downstream first (transformers, notice listeners,
    // writers and consumers, then the fetchers), so a graceful stop, which
    // goes in reverse, stops intake first: no page is fetched while the
    // rest drains.
    Ok(supervisor(ROOT_SUPERVISOR, Strategy::OneForOne, settings)
        .child(
            transform_sup
                .into_child()
                .with_version(settings.transform.current().version),
        )
        .child(notices_sup.into_child())
        .child(ingest_sup.into_child())
        .child(source_sup.into_child()))
}

/// The fetcher of one source (child of [`SOURCES_SUPERVISOR`]).
/// Built from the settings this node runs for the source
/// ([`crate::source::ActiveSources`], the newest version it knows),
/// else from `source` as given.
pub fn fetcher_spec(
    settings: &Settings,
    backends: &Backends,
    boards: &Switchboards,
    source: Arc<dyn Source>,
) -> ChildSpec {
    if let Some(live) = settings.live_sources.get(source.name()) {
        return fetcher_spec_with(settings, backends, boards, live.source, live.budget)
            .with_version(&live.version);
    }
    let budget = crate::source::retry_budget_for(&settings.sources, source.name());
    fetcher_spec_with(settings, backends, boards, source, budget)
}

pub(crate) fn fetcher_spec_with(
    settings: &Settings,
    backends: &Backends,
    boards: &Switchboards,
    source: Arc<dyn Source>,
    retry_budget: hubflow_actors::retry::RetryBudget,
) -> ChildSpec {
    let cfg = settings;
    let stall = Duration::from_millis(cfg.supervision.stall_timeout_ms);
    let params = FetcherParams {
        hub: backends.ingest.clone(),
        state: backends.state(settings),
        dead_letters: backends.blobs.clone(),
        dead_letter_container: cfg.storage.dead_letter_container.clone(),
        poll_interval: Duration::from_millis(cfg.fetcher.poll_interval_ms),
        max_publish_events: cfg.fetcher.max_publish_events,
        read_ahead_pages: cfg.fetcher.read_ahead_pages,
        retry: RetryDelay {
            initial: Duration::from_millis(cfg.fetcher.retry_initial_ms),
            max: Duration::from_millis(cfg.fetcher.retry_max_ms),
        },
        retry_budget,
        probe: Default::default(),
        start_paused: false,
        page_log_retention: Duration::from_secs(cfg.fetcher.page_log_retention_hours * 3600),
        node_id: settings.node_id(),
        source: source.clone(),
    };
    ChildSpec::new(
        fetcher_child_name(source.name()),
        Restart::Permanent,
        fetcher_factory(params, boards.pauses.clone()),
    )
    .with_stall_timeout(stall)
}

/// One ingest partition's group (child of [`INGEST_SUPERVISOR`]):
/// rest_for_one(writer, consumer).
pub fn ingest_partition_spec(
    settings: &Settings,
    backends: &Backends,
    boards: &Switchboards,
    partition: u32,
) -> ChildSpec {
    let cfg = settings;
    let state = backends.state(settings);
    let stall = Duration::from_millis(cfg.supervision.stall_timeout_ms);
    let writer = WriterParams {
        namespace: cfg.pipeline.namespace.clone(),
        ingest_hub: INGEST_HUB.to_string(),
        consumer_group: cfg.pipeline.consumer_group.clone(),
        partition,
        raw: backends.blobs.clone(),
        raw_container: cfg.storage.raw_container.clone(),
        state,
        landed: backends.landed.clone(),
        announce: cfg.transform_options.notices == LandedNotices::Writer,
        zstd_level: settings.raw_zstd_level,
        probe: Default::default(),
    };
    let consumer = ConsumerTemplate {
        hub: backends.ingest.clone(),
        consumer_group: cfg.pipeline.consumer_group.clone(),
        partition,
        limits: settings.batch,
        max_wait: Duration::from_millis(500),
        pauses: boards.pauses.clone(),
    };
    supervisor(
        &partition_child_name(partition),
        Strategy::RestForOne,
        settings,
    )
    .child(
        ChildSpec::new(
            "writer",
            Restart::Permanent,
            ActorFactory::new(
                || BlobWriter,
                move |ctx: &ChildContext| {
                    Ok(WriterParams {
                        probe: ctx.probe.clone(),
                        ..writer.clone()
                    })
                },
            ),
        )
        .with_stall_timeout(stall),
    )
    .child(
        ChildSpec::new("consumer", Restart::Permanent, consumer_factory(consumer))
            .with_stall_timeout(stall),
    )
    .into_child()
}

/// The notice listener of one landed partition (child of
/// [`NOTICES_SUPERVISOR`]).
pub fn notice_listener_spec(
    settings: &Settings,
    backends: &Backends,
    boards: &Switchboards,
    landed_partition: u32,
) -> ChildSpec {
    let cfg = settings;
    let params = NoticeListenerParams {
        landed: backends.landed.clone(),
        landed_partition,
        consumer_group: TRANSFORM_GROUP.to_string(),
        ingest_hub: INGEST_HUB.to_string(),
        raw_container: cfg.storage.raw_container.clone(),
        board: boards.board.clone(),
        max_wait: Duration::from_millis(500),
        probe: Default::default(),
    };
    ChildSpec::new(
        format!("l{landed_partition:04}"),
        Restart::Permanent,
        ActorFactory::new(
            || NoticeListener,
            move |ctx: &ChildContext| {
                Ok(NoticeListenerParams {
                    probe: ctx.probe.clone(),
                    ..params.clone()
                })
            },
        ),
    )
    .with_stall_timeout(Duration::from_millis(cfg.supervision.stall_timeout_ms))
}

/// One partition's transformer (child of [`TRANSFORM_SUPERVISOR`]).
pub fn transform_partition_spec(
    settings: &Settings,
    backends: &Backends,
    boards: &Switchboards,
    partition: u32,
) -> ChildSpec {
    let cfg = settings;
    let state = backends.state(settings);
    let stall = Duration::from_millis(cfg.supervision.stall_timeout_ms);
    let transform = TransformerParams {
        ingest_hub: INGEST_HUB.to_string(),
        partition,
        raw: backends.blobs.clone(),
        raw_container: cfg.storage.raw_container.clone(),
        curated: backends.blobs.clone(),
        curated_container: cfg.storage.curated_container.clone(),
        state: state.clone(),
        board: boards.board.clone(),
        dead_letters: backends.blobs.clone(),
        dead_letter_container: cfg.storage.dead_letter_container.clone(),
        options: settings.curate.clone(),
        dedupe_window: cfg.transform_options.dedupe_window,
        poll_wait: Duration::from_millis(cfg.transform_options.poll_ms),
        transform: settings.transform.current(),
        window_cache: Default::default(),
        curate_slots: boards.curate_slots.clone(),
        probe: Default::default(),
    };
    ChildSpec::new(
        partition_child_name(partition),
        Restart::Permanent,
        ActorFactory::new(
            || Transformer,
            move |ctx: &ChildContext| {
                Ok(TransformerParams {
                    probe: ctx.probe.clone(),
                    ..transform.clone()
                })
            },
        ),
    )
    .with_stall_timeout(stall)
    .with_version(settings.transform.current().version)
}

/// The transform group as it should run now: the transformers of the
/// partitions the running group has, with the active transform version.
/// What [`crate::transform::swap`] replaces the running group with.
pub async fn transform_group_spec(pipeline: &Pipeline) -> anyhow::Result<ChildSpec> {
    let path = format!("{ROOT_SUPERVISOR}/{TRANSFORM_SUPERVISOR}");
    let group = pipeline
        .root
        .status()
        .find(&path)
        .with_context(|| format!("no {path} in the tree"))?;
    let mut spec = transform_supervisor(&pipeline.settings);
    for child in group.children() {
        let name = child.name();
        let partition = name
            .strip_prefix('p')
            .and_then(|n| n.parse::<u32>().ok())
            .with_context(|| format!("unexpected transform child {name}"))?;
        spec = spec.child(transform_partition_spec(
            &pipeline.settings,
            &pipeline.backends,
            &pipeline.boards,
            partition,
        ));
    }
    Ok(spec
        .into_child()
        .with_version(pipeline.settings.transform.current().version))
}

fn transform_supervisor(settings: &Settings) -> SupervisorSpec {
    supervisor(TRANSFORM_SUPERVISOR, Strategy::OneForOne, settings)
        .isolate_failures()
        .stop_children_together()
}

/// A source's fetcher; a restarted one starts paused when an operator
/// paused its source.
fn fetcher_factory(params: FetcherParams, pauses: Pauses) -> Arc<dyn ChildFactory> {
    ActorFactory::new(
        || Fetcher,
        move |ctx: &ChildContext| {
            Ok(FetcherParams {
                probe: ctx.probe.clone(),
                start_paused: pauses.source(params.source.name()),
                ..params.clone()
            })
        },
    )
}

#[derive(Clone)]
struct ConsumerTemplate {
    hub: Arc<dyn Hub>,
    consumer_group: String,
    partition: u32,
    limits: hubflow_actors::consumer::BatchLimits,
    max_wait: Duration,
    pauses: Pauses,
}

/// A partition's consumer: it hands its batches to the writer started
/// before it in the same group (rest_for_one), and starts paused while
/// ingest is paused.
fn consumer_factory(t: ConsumerTemplate) -> Arc<dyn ChildFactory> {
    ActorFactory::new(
        || PartitionConsumer,
        move |ctx: &ChildContext| {
            let writer = ctx.sibling::<WriterMsg>("writer").ok_or_else(|| {
                SpawnErr::StartupFailed(format!("{}: writer is not running", ctx.path).into())
            })?;
            Ok(ConsumerParams {
                hub: t.hub.clone(),
                consumer_group: t.consumer_group.clone(),
                partition: t.partition,
                writer,
                limits: t.limits,
                max_wait: t.max_wait,
                start_paused: t.pauses.ingest(),
                probe: ctx.probe.clone(),
            })
        },
    )
}

/// How far the data has come, read from durable state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Progress {
    /// Records published by the fetchers (over every run).
    pub fetched: u64,
    /// Every source reported it had nothing more.
    pub sources_caught_up: bool,
    /// Events in hub "ingest".
    pub in_hub: u64,
    /// Events landed in raw blobs (writer checkpoints).
    pub landed: u64,
    /// Events the transformers have passed (transformer checkpoints).
    pub transformed: u64,
    /// The same counts per partition of hub "ingest" (the lag of a stage
    /// is `in_hub` less its count).
    pub partitions: Vec<PartitionProgress>,
}

/// How far one partition has come.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PartitionProgress {
    pub partition: u32,
    pub in_hub: u64,
    pub landed: u64,
    pub transformed: u64,
}

impl PartitionProgress {
    /// Every partition of hub "ingest": its events, and how far the writer
    /// and the transformer checkpoints have come.
    pub async fn read_all(
        settings: &Settings,
        backends: &Backends,
    ) -> anyhow::Result<Vec<PartitionProgress>> {
        use futures::StreamExt;
        let state = backends.state(settings);
        let partitions = backends.ingest.partition_ids().await?;
        // Three reads per partition, partitions side by side (64 of them
        // read one by one are seconds on a loaded store), in order.
        futures::stream::iter(partitions)
            .map(|partition| PartitionProgress::read(settings, backends, &state, partition))
            .buffered(PROGRESS_READS_AT_ONCE)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    async fn read(
        settings: &Settings,
        backends: &Backends,
        state: &StateStore,
        partition: u32,
    ) -> anyhow::Result<PartitionProgress> {
        let mut row = PartitionProgress {
            partition,
            ..Default::default()
        };
        let props = backends.ingest.partition_properties(partition).await?;
        if !props.is_empty {
            row.in_hub = (props.last_enqueued_sequence_number + 1) as u64;
        }
        let writer = checkpoint_name(
            &settings.pipeline.namespace,
            INGEST_HUB,
            &settings.pipeline.consumer_group,
            partition,
        );
        if let Some(cp) = state.load::<Checkpoint>(&writer).await? {
            row.landed = (cp.value.sequence_number + 1).max(0) as u64;
        }
        let transform = transformer::checkpoint_name(INGEST_HUB, partition);
        if let Some(cp) = state.load::<TransformCheckpoint>(&transform).await? {
            row.transformed = cp.value.next_sequence.max(0) as u64;
        }
        Ok(row)
    }
}

/// Partitions whose progress is read at the same time.
const PROGRESS_READS_AT_ONCE: usize = 16;

impl Progress {
    pub async fn read(settings: &Settings, backends: &Backends) -> anyhow::Result<Progress> {
        let state = backends.state(settings);
        let mut progress = Progress {
            sources_caught_up: true,
            ..Default::default()
        };
        for name in state.list_names("sources/").await? {
            if let Some(cursor) = state.load::<CursorRecord>(&name).await? {
                progress.fetched += cursor.value.records;
                progress.sources_caught_up &= cursor.value.caught_up;
            }
        }
        for row in PartitionProgress::read_all(settings, backends).await? {
            progress.in_hub += row.in_hub;
            progress.landed += row.landed;
            progress.transformed += row.transformed;
            progress.partitions.push(row);
        }
        Ok(progress)
    }

    /// Everything fetched is in the hub, landed and transformed.
    pub fn idle(&self, expected_sources: usize) -> bool {
        (expected_sources == 0 || self.sources_caught_up && self.fetched > 0)
            && self.landed == self.in_hub
            && self.transformed == self.in_hub
    }
}
