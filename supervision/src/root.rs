//! Starting a supervision tree and driving it from outside.

use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::spec::{ChildSpec, SupervisorSpec};
use crate::status::{NodeKind, StatusHandle, StatusNode};
use crate::supervisor::{ReplaceOutcome, Supervisor, SupervisorArgs, SupervisorMsg};

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

    /// Drain the actor or group at `path`: stop it gracefully (in-flight
    /// work finishes and checkpoints) within `deadline`, then kill it. It
    /// stays drained (not restarted) until [`RootHandle::restart`].
    pub async fn drain(&self, path: &str, deadline: Duration) -> Result<(), TreeError> {
        let (sup, name) = self.parent_of(path)?;
        ractor::call!(sup, |reply| SupervisorMsg::Drain {
            name,
            deadline,
            reply
        })
        .map_err(|e| TreeError::Unreachable(e.to_string()))?
        .map_err(TreeError::Rejected)
    }

    /// Start the actor or group at `path` afresh (after a drain, a failure,
    /// or while running: then it is stopped gracefully first).
    pub async fn restart(&self, path: &str) -> Result<(), TreeError> {
        let (sup, name) = self.parent_of(path)?;
        ractor::call!(sup, |reply| SupervisorMsg::Restart { name, reply })
            .map_err(|e| TreeError::Unreachable(e.to_string()))?
            .map_err(TreeError::Rejected)
    }

    /// Replace the child at `parent/<spec.name>` with `spec`: drain the
    /// running one within `deadline`, start the new one, and roll back to
    /// the previous spec if the new one exits abnormally within
    /// `probation`. Returns once promoted or rolled back.
    pub async fn replace(
        &self,
        parent: &str,
        spec: ChildSpec,
        deadline: Duration,
        probation: Duration,
    ) -> Result<ReplaceOutcome, TreeError> {
        let sup = self.supervisor_at(parent)?;
        ractor::call!(sup, |reply| SupervisorMsg::Replace {
            spec,
            deadline,
            probation,
            reply
        })
        .map_err(|e| TreeError::Unreachable(e.to_string()))?
        .map_err(TreeError::Rejected)
    }

    /// Fault injection: the actor at `path` panics inside its handler the
    /// next time it takes work (a supervisor panics at once). The root
    /// cannot be panicked; stop it with [`RootHandle::shutdown`].
    pub fn inject_panic(&self, path: &str) -> Result<(), TreeError> {
        let node = self
            .status
            .find(path)
            .ok_or_else(|| TreeError::UnknownPath(path.to_string()))?;
        if path == self.status.path() {
            return Err(TreeError::Rejected("the root cannot be panicked".into()));
        }
        match node.snapshot().kind {
            NodeKind::Worker => {
                node.probe()
                    .filter(|_| node.cell().is_some())
                    .ok_or_else(|| TreeError::NotRunning(path.to_string()))?
                    .request_panic();
            }
            NodeKind::Supervisor => {
                let cell = node
                    .cell()
                    .ok_or_else(|| TreeError::NotRunning(path.to_string()))?;
                ActorRef::<SupervisorMsg>::from(cell)
                    .send_message(SupervisorMsg::Panic)
                    .map_err(|e| TreeError::Unreachable(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// The supervisor owning `path` and the child's name in it.
    fn parent_of(&self, path: &str) -> Result<(ActorRef<SupervisorMsg>, String), TreeError> {
        if self.status.find(path).is_none() {
            return Err(TreeError::UnknownPath(path.to_string()));
        }
        let Some((parent, name)) = path.rsplit_once('/') else {
            return Err(TreeError::Rejected(
                "the root cannot be drained or restarted; shut the service down".into(),
            ));
        };
        Ok((self.supervisor_at(parent)?, name.to_string()))
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
