//! A blob store wrapper that injects faults on matching blob names: every
//! put fails (poison) or never returns (a stalled SDK call), until cleared.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use hubflow_actors::ports::{BlobError, BlobProperties, BlobStore, ETag, PutCondition};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every matching put fails with a permanent error.
    Fail,
    /// Every matching put hangs until the fault is cleared.
    Hang,
}

#[derive(Debug, Clone)]
struct Fault {
    container: String,
    name_contains: String,
    mode: Mode,
}

pub struct FaultyBlobStore {
    inner: Arc<dyn BlobStore>,
    fault: Mutex<Option<Fault>>,
    cleared: watch::Sender<u64>,
}

impl FaultyBlobStore {
    pub fn new(inner: Arc<dyn BlobStore>) -> Arc<FaultyBlobStore> {
        Arc::new(FaultyBlobStore {
            inner,
            fault: Mutex::new(None),
            cleared: watch::channel(0).0,
        })
    }

    /// Puts into `container` whose name contains `name_contains` misbehave.
    pub fn inject(&self, container: &str, name_contains: &str, mode: Mode) {
        *self.fault.lock().unwrap() = Some(Fault {
            container: container.to_string(),
            name_contains: name_contains.to_string(),
            mode,
        });
    }

    pub fn clear(&self) {
        *self.fault.lock().unwrap() = None;
        self.cleared.send_modify(|n| *n += 1);
    }

    fn fault_for(&self, container: &str, name: &str) -> Option<Mode> {
        let fault = self.fault.lock().unwrap();
        fault
            .as_ref()
            .filter(|f| f.container == container && name.contains(&f.name_contains))
            .map(|f| f.mode)
    }
}

#[async_trait]
impl BlobStore for FaultyBlobStore {
    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }

    async fn create_container(&self, container: &str) -> Result<(), BlobError> {
        self.inner.create_container(container).await
    }

    async fn put(
        &self,
        container: &str,
        name: &str,
        data: Bytes,
        condition: PutCondition,
    ) -> Result<BlobProperties, BlobError> {
        match self.fault_for(container, name) {
            Some(Mode::Fail) => {
                return Err(BlobError::Other {
                    container: container.to_string(),
                    name: name.to_string(),
                    message: "injected poison".to_string(),
                });
            }
            Some(Mode::Hang) => {
                let mut cleared = self.cleared.subscribe();
                while self.fault_for(container, name).is_some() {
                    if cleared.changed().await.is_err() {
                        break;
                    }
                }
            }
            None => {}
        }
        self.inner.put(container, name, data, condition).await
    }

    async fn get(&self, container: &str, name: &str) -> Result<(Bytes, BlobProperties), BlobError> {
        self.inner.get(container, name).await
    }

    async fn get_range(
        &self,
        container: &str,
        name: &str,
        range: Range<u64>,
    ) -> Result<Bytes, BlobError> {
        self.inner.get_range(container, name, range).await
    }

    async fn properties(&self, container: &str, name: &str) -> Result<BlobProperties, BlobError> {
        self.inner.properties(container, name).await
    }

    async fn list(&self, container: &str, prefix: &str) -> Result<Vec<BlobProperties>, BlobError> {
        self.inner.list(container, prefix).await
    }

    async fn delete(
        &self,
        container: &str,
        name: &str,
        if_match: Option<&ETag>,
    ) -> Result<(), BlobError> {
        self.inner.delete(container, name, if_match).await
    }
}
