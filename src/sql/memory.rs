//! A memory cap per statement inside the server's shared pool: every
//! reservation of one statement is counted against its own limit
//! (`sql.statement_memory_limit_mb`) and then against the pool all
//! statements share (`sql.memory_limit_mb`), so one heavy statement spills
//! or fails while the others keep the rest of the pool.
//!
//! Used where Hubflow executes the plan itself (Arrow Flight SQL); the
//! Postgres side executes inside datafusion-postgres on the shared pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::runtime_env::RuntimeEnv;

/// One statement's share of `shared`, at most `limit` bytes.
#[derive(Debug)]
pub struct StatementPool {
    shared: Arc<dyn MemoryPool>,
    limit: usize,
    used: AtomicUsize,
}

impl StatementPool {
    pub fn new(shared: Arc<dyn MemoryPool>, limit: usize) -> StatementPool {
        StatementPool {
            shared,
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// `base` with this statement's pool in place of the shared one.
    pub fn runtime(base: &RuntimeEnv, limit: usize) -> Arc<RuntimeEnv> {
        Arc::new(RuntimeEnv {
            memory_pool: Arc::new(StatementPool::new(Arc::clone(&base.memory_pool), limit)),
            disk_manager: Arc::clone(&base.disk_manager),
            cache_manager: Arc::clone(&base.cache_manager),
            object_store_registry: Arc::clone(&base.object_store_registry),
        })
    }
}

impl std::fmt::Display for StatementPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "statement pool: {} of {} bytes, inside {}",
            self.reserved(),
            self.limit,
            self.shared
        )
    }
}

impl MemoryPool for StatementPool {
    fn name(&self) -> &str {
        "hubflow statement pool"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.shared.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.shared.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
        self.shared.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
        self.shared.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let before = self.used.fetch_add(additional, Ordering::Relaxed);
        if before + additional > self.limit {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{} needs {additional} more bytes and the statement holds {before} of its {} (sql.statement_memory_limit_mb)",
                reservation.consumer().name(),
                self.limit
            )));
        }
        if let Err(e) = self.shared.try_grow(reservation, additional) {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(e);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::execution::memory_pool::GreedyMemoryPool;

    use super::*;

    #[test]
    fn a_statement_stops_at_its_own_limit_and_at_the_shared_one() {
        let shared: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1_000));
        let one: Arc<dyn MemoryPool> = Arc::new(StatementPool::new(Arc::clone(&shared), 600));
        let two: Arc<dyn MemoryPool> = Arc::new(StatementPool::new(Arc::clone(&shared), 600));
        let a = MemoryConsumer::new("sort").register(&one);
        a.try_grow(500).unwrap();
        let err = a.try_grow(200).unwrap_err().to_string();
        assert!(err.contains("statement_memory_limit_mb"), "{err}");
        assert_eq!(one.reserved(), 500);
        assert_eq!(shared.reserved(), 500);
        // The other statement has its own 600, but the pool only 500 left.
        let b = MemoryConsumer::new("join").register(&two);
        b.try_grow(400).unwrap();
        assert!(b.try_grow(150).is_err());
        assert_eq!(two.reserved(), 400);
        drop(a);
        assert_eq!(one.reserved(), 0);
        assert_eq!(shared.reserved(), 400);
        b.try_grow(150).unwrap();
    }
}
