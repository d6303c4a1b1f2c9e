//! Starting a node's pipeline: [`Pipeline::start`] reads the stored
//! transform version (`crate::swap::transform::bootstrap`), builds and
//! starts the supervision tree (`crate::pipeline::tree`) with the node's
//! switchboards, and with `[cluster] enabled` adds the ownership manager
//! (`crate::cluster`).
//!
//! It sits above `pipeline`, `cluster` and `swap`, which all build on the
//! tree's pieces, so none of them has to reach up to the others: the
//! pipeline module describes the tree, this one assembles a running node.

use std::sync::Arc;

use anyhow::Context;
use hubflow_actors::ports::Source;
use hubflow_supervision::start_root;

use crate::backends::Backends;
use crate::config::Settings;
use crate::pipeline::{Pipeline, ROOT_SUPERVISOR, Switchboards, tree};

impl Pipeline {
    /// Build the tree for `sources` and start it.
    pub async fn start(
        settings: Settings,
        backends: Backends,
        sources: Vec<Arc<dyn Source>>,
    ) -> anyhow::Result<Pipeline> {
        backends.ensure_containers(&settings).await?;
        // The stored transform version, before any transformer starts.
        crate::swap::transform::bootstrap(
            &settings,
            &crate::swap::transform::store(&settings, &backends),
        )
        .await
        .context("reading the transform spec log")?;
        let boards = Switchboards::default();
        let spec = tree(&settings, &backends, &boards, sources.clone()).await?;
        let root = start_root(spec)
            .await
            .context("starting the supervision tree")?;
        if settings.cluster.enabled {
            // Added last, so a graceful shutdown stops it first: it stops
            // its groups, then releases its partitions and leases.
            let manager = crate::cluster::manager_spec(
                &settings,
                &backends,
                &boards,
                sources,
                root.status().clone(),
            )
            .await?;
            root.add_child(ROOT_SUPERVISOR, manager)
                .await
                .context("starting the ownership manager")?;
        }
        Ok(Pipeline {
            root,
            backends,
            boards,
            settings,
        })
    }
}
