//! What keeps a running node from being ready although no actor has given
//! up: pipeline stages that cannot write because their storage is full.
//!
//! A full data disk (or quota) does not fail the pipeline: the fetcher, the
//! blob writers and the transformers back off and retry, nothing is lost, and
//! the node finishes exactly once space is back. But until then it does no
//! work, so `/readyz` must say so (503, naming the stage), `/status` lists
//! the blocked actors, and `hubflow_storage_write_blocked{stage}` drives the
//! `HubflowStorageFull` alert.
//!
//! Read from the supervision status tree, so every stage is covered the same
//! way: an actor is blocked when its current error (the one its own status
//! publishes while it retries in place) says the storage is full, or when
//! the last error it exited with says so and it has not yet run
//! `healthy_after` (the supervision's `backoff_reset_ms`) since its restart.
//! The errors arrive as text (they cross the actor boundary formatted), so
//! [`out_of_space`] recognises the operating system's and SQLite's wording.

use hubflow_supervision::{NodeKind, NodeState, StatusNode};
use serde::Serialize;

use crate::pipeline::{
    INGEST_SUPERVISOR, NOTICES_SUPERVISOR, SOURCES_SUPERVISOR, TRANSFORM_SUPERVISOR,
};

/// The stages `hubflow_storage_write_blocked` has a series for (always all
/// of them, so an alert sees 0 before it sees 1).
pub const STAGES: &[&str] = &[
    "fetcher",
    "blob_writer",
    "consumer",
    "transformer",
    "notices",
];

/// One actor that cannot write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct WriteBlock {
    /// The actor's path in the status tree.
    pub path: String,
    /// Its stage (one of [`STAGES`], or `other`).
    pub stage: &'static str,
    /// The error it reports (paths and names of blobs, never secrets).
    pub error: String,
}

/// Whether an error's text says the storage it wrote to is full: `ENOSPC`
/// and `EDQUOT` as the standard library prints them, and SQLite's
/// `SQLITE_FULL`.
pub fn out_of_space(message: &str) -> bool {
    const SIGNS: &[&str] = &[
        "No space left on device",
        "(os error 28)",
        "Disk quota exceeded",
        "(os error 122)",
        "database or disk is full",
    ];
    SIGNS.iter().any(|sign| message.contains(sign))
}

/// The stage of the actor at `path` (`pipeline/<group>/…/<name>`).
pub fn stage_of(path: &str) -> &'static str {
    let mut parts = path.split('/').skip(1);
    let group = parts.next().unwrap_or_default();
    let name = path.rsplit('/').next().unwrap_or_default();
    match group {
        g if g == SOURCES_SUPERVISOR => "fetcher",
        g if g == INGEST_SUPERVISOR && name == "writer" => "blob_writer",
        g if g == INGEST_SUPERVISOR && name == "consumer" => "consumer",
        g if g == TRANSFORM_SUPERVISOR => "transformer",
        g if g == NOTICES_SUPERVISOR => "notices",
        _ => "other",
    }
}

/// Every worker under `tree` that cannot write now (see the module doc).
pub fn write_blocks(tree: &StatusNode, now_ms: i64, healthy_after_ms: u64) -> Vec<WriteBlock> {
    tree.walk()
        .into_iter()
        .filter(|node| node.kind == NodeKind::Worker)
        .filter_map(|node| {
            let current = node
                .observed
                .get("last_error")
                .and_then(|e| e.as_str())
                .filter(|e| out_of_space(e));
            let recovering = || {
                let exited = node.last_error.as_deref().filter(|e| out_of_space(e))?;
                let unproven = match node.state {
                    NodeState::Running => {
                        now_ms.saturating_sub(node.since_ms) < healthy_after_ms as i64
                    }
                    NodeState::Stopped | NodeState::Drained => false,
                    _ => true,
                };
                unproven.then_some(exited)
            };
            let error = current.or_else(recovering)?;
            Some(WriteBlock {
                path: node.path.clone(),
                stage: stage_of(&node.path),
                error: error.to_string(),
            })
        })
        .collect()
}

/// The readiness reason for `blocks` (`None` when there are none).
pub fn not_ready_reason(blocks: &[WriteBlock]) -> Option<String> {
    let first = blocks.first()?;
    let mut stages: Vec<&str> = blocks.iter().map(|b| b.stage).collect();
    stages.dedup();
    Some(format!(
        "storage full: {} cannot write; {} blocked, first {}: {}",
        stages.join(", "),
        blocks.len(),
        first.path,
        first.error
    ))
}

/// Set `hubflow_storage_write_blocked{stage}` (1 while any actor of the
/// stage is blocked) for every stage.
pub fn record(blocks: &[WriteBlock]) {
    for stage in STAGES {
        let blocked = blocks.iter().any(|b| b.stage == *stage);
        metrics::gauge!("hubflow_storage_write_blocked", "stage" => *stage).set(if blocked {
            1.0
        } else {
            0.0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(path: &str, state: NodeState, since_ms: i64) -> StatusNode {
        StatusNode {
            name: path.rsplit('/').next().unwrap().to_string(),
            path: path.to_string(),
            kind: NodeKind::Worker,
            state,
            generation: 1,
            restarts: 0,
            last_error: None,
            since_ms,
            version: None,
            history: Vec::new(),
            busy: false,
            queue_depth: 0,
            stalled_ms: 0,
            observed: serde_json::Value::Null,
            children: Vec::new(),
        }
    }

    fn tree(children: Vec<StatusNode>) -> StatusNode {
        let mut root = worker("pipeline", NodeState::Running, 0);
        root.kind = NodeKind::Supervisor;
        root.children = children;
        root
    }

    const ENOSPC: &str = "blob raw/ingest/p0000/0-9.hfr: cannot write temp file: No space left on device (os error 28)";

    #[test]
    fn recognises_the_systems_and_sqlites_wording_only() {
        assert!(out_of_space(ENOSPC));
        assert!(out_of_space(
            "hub ingest: transient error: publish failed: database or disk is full"
        ));
        assert!(out_of_space("write: Disk quota exceeded (os error 122)"));
        assert!(!out_of_space("connection refused (os error 111)"));
        assert!(!out_of_space("disk is slow"));
    }

    #[test]
    fn stages_come_from_the_tree_paths() {
        assert_eq!(stage_of("pipeline/sources/fetcher-demo"), "fetcher");
        assert_eq!(stage_of("pipeline/ingest/p0003/writer"), "blob_writer");
        assert_eq!(stage_of("pipeline/ingest/p0003/consumer"), "consumer");
        assert_eq!(stage_of("pipeline/transform/p0001"), "transformer");
        assert_eq!(stage_of("pipeline/notices/l0000"), "notices");
        assert_eq!(stage_of("pipeline/cluster"), "other");
    }

    #[test]
    fn a_current_error_blocks_until_the_actor_clears_it() {
        let mut writer = worker("pipeline/ingest/p0000/writer", NodeState::Running, 0);
        writer.observed = serde_json::json!({ "last_error": ENOSPC });
        let blocks = write_blocks(&tree(vec![writer.clone()]), 1_000_000, 30_000);
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].stage, "blob_writer");
        assert_eq!(blocks[0].error, ENOSPC);
        let reason = not_ready_reason(&blocks).unwrap();
        assert!(reason.contains("blob_writer cannot write"), "{reason}");

        writer.observed = serde_json::json!({ "last_error": null });
        assert!(write_blocks(&tree(vec![writer]), 1_000_000, 30_000).is_empty());
    }

    #[test]
    fn an_exit_blocks_while_backing_off_and_until_the_restart_has_run_long_enough() {
        let mut fetcher = worker(
            "pipeline/sources/fetcher-demo",
            NodeState::BackingOff,
            1_000,
        );
        fetcher.last_error = Some("publish failed: database or disk is full".into());
        let blocked = |node: &StatusNode, now| write_blocks(&tree(vec![node.clone()]), now, 30_000);
        assert_eq!(blocked(&fetcher, 2_000).len(), 1);
        // Restarted: still blocked until it has run `healthy_after`.
        fetcher.state = NodeState::Running;
        fetcher.since_ms = 5_000;
        assert_eq!(blocked(&fetcher, 10_000).len(), 1);
        assert!(blocked(&fetcher, 35_000).is_empty());
        // Another error replaces it: not a storage problem.
        fetcher.state = NodeState::BackingOff;
        fetcher.last_error = Some("connection refused (os error 111)".into());
        assert!(blocked(&fetcher, 36_000).is_empty());
        // A stopped actor is not blocked.
        fetcher.state = NodeState::Stopped;
        fetcher.last_error = Some(ENOSPC.into());
        assert!(blocked(&fetcher, 36_000).is_empty());
    }
}
