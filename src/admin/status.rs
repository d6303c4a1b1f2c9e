//! What `/status`, `/readyz` and `/events` say about the node: readiness
//! and the status document (tree, progress, versions, replay jobs).

use hubflow_supervision::{NodeState, StatusNode};

use super::answers::{StatusDocument, TransformSummary};
use super::state::AdminState;
use crate::health;

/// Why the node is not ready (`None`: ready), and the actors that cannot
/// write (storage full; see [`crate::health`]).
pub fn readiness(
    state: &AdminState,
    tree: &StatusNode,
) -> (Option<String>, Vec<health::WriteBlock>) {
    let healthy_after = state.pipeline().settings.supervision.backoff_reset_ms;
    let blocks = health::write_blocks(tree, hubflow_actors::now_ms(), healthy_after);
    let reason = if !state.is_started() {
        Some("the pipeline is not started (or is shutting down)".to_string())
    } else if tree.state == NodeState::Failed {
        Some(format!(
            "the root supervisor failed: {}",
            tree.last_error.as_deref().unwrap_or("no error recorded")
        ))
    } else {
        health::not_ready_reason(&blocks)
    };
    (reason, blocks)
}

/// The `/status` document (also what `/events` sends), from the live tree
/// and `progress` as read.
pub fn document(
    state: &AdminState,
    progress: anyhow::Result<crate::pipeline::Progress>,
) -> StatusDocument {
    let pipeline = state.pipeline();
    let tree = pipeline.root.snapshot();
    let (progress, progress_error) = match progress {
        Ok(p) => (Some(p), None),
        Err(error) => (None, Some(format!("{error:#}"))),
    };
    let transform = pipeline.settings.transform.status();
    let (not_ready, cannot_write) = readiness(state, &tree);
    StatusDocument {
        ready: not_ready.is_none(),
        not_ready,
        cannot_write,
        started_ms: state.started_ms(),
        versions: state.versions(),
        transform: TransformSummary {
            version: transform.active.version,
            seq: transform.seq,
            config_version: transform.config.version,
            drift: transform.drift,
            swapping: transform.swapping,
        },
        progress,
        progress_error,
        replays: state.replays().list(),
        tree,
        ts_ms: None,
    }
}
