//! Starting a supervision tree and driving it from outside.

use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::spec::{ChildSpec, SupervisorSpec};
use crate::status::{NodeKind, StatusHandle, StatusNode};
use crate::supervisor::{Supervisor, SupervisorArgs, SupervisorMsg};

/// The running root of a tree.
pub struct RootHandle {
    actor: ActorRef<SupervisorMsg>,
    join: JoinHandle<()>,
    status: StatusHandle,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("no actor at path {0}")]
    UnknownPath(String),
    #[error("actor at {0} is not running")]
    NotRunning(String),
    #[error("supervisor did not answer: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Rejected(String),
}

/// Start `spec` as the root supervisor (path = its name).
pub async fn start_root(spec: SupervisorSpec) -> Result<RootHandle, ractor::SpawnErr> {
    let status = StatusHandle::new(&spec.name, spec.name.clone(), NodeKind::Supervisor);
    let args = SupervisorArgs {
        spec,
        status: status.clone(),
        root: true,
    };
    let (actor, join) = Actor::spawn(None, Supervisor, args).await?;
    Ok(RootHandle {
        actor,
        join,
        status,
    })
}

impl RootHandle {
    pub fn snapshot(&self) -> StatusNode {
        self.status.snapshot()
    }

    pub fn status(&self) -> &StatusHandle {
        &self.status
    }

    pub fn actor(&self) -> &ActorRef<SupervisorMsg> {
        &self.actor
    }

    /// Kill the actor (or supervisor subtree) at `path`, as a crash would.
    pub fn kill(&self, path: &str) -> Result<(), TreeError> {
        let node = self
            .status
            .find(path)
            .ok_or_else(|| TreeError::UnknownPath(path.to_string()))?;
        let cell = node
            .cell()
            .ok_or_else(|| TreeError::NotRunning(path.to_string()))?;
        cell.kill();
        Ok(())
    }

    /// Add a child to the supervisor at `parent`.
    pub async fn add_child(&self, parent: &str, child: ChildSpec) -> Result<(), TreeError> {
        let sup = self.supervisor_at(parent)?;
        ractor::call!(sup, SupervisorMsg::AddChild, child)
            .map_err(|e| TreeError::Unreachable(e.to_string()))?
            .map_err(TreeError::Rejected)
    }

    /// Gracefully stop and forget the child `name` of the supervisor at `parent`.
    pub async fn remove_child(&self, parent: &str, name: &str) -> Result<bool, TreeError> {
        let sup = self.supervisor_at(parent)?;
        ractor::call!(sup, SupervisorMsg::RemoveChild, name.to_string())
            .map_err(|e| TreeError::Unreachable(e.to_string()))
    }

    fn supervisor_at(&self, path: &str) -> Result<ActorRef<SupervisorMsg>, TreeError> {
        let node = self
            .status
            .find(path)
            .ok_or_else(|| TreeError::UnknownPath(path.to_string()))?;
        if node.snapshot().kind != NodeKind::Supervisor {
            return Err(TreeError::Rejected(format!("{path} is not a supervisor")));
        }
        let cell = node
            .cell()
            .or_else(|| (path == self.status.path()).then(|| self.actor.get_cell()))
            .ok_or_else(|| TreeError::NotRunning(path.to_string()))?;
        Ok(ActorRef::from(cell))
    }

    /// Stop the whole tree gracefully (dependents first) and wait for it.
    pub async fn shutdown(self) {
        self.actor.stop(Some("shutdown".to_string()));
        let _ = self.join.await;
    }
}
