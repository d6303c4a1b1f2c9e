//! What keeps one client from hurting the others or the data: the server is
//! read-only ([`ReadOnly`], a query hook that runs before any other and
//! refuses every statement that is not a query, `EXPLAIN`, `SHOW`, `SET` of
//! a session variable or a transaction/cursor statement), and every
//! statement runs under [`Limits`] ([`Guarded`] wraps the DataFusion
//! handlers): a time limit covering planning, execution and sending the
//! rows, a cap on result rows, and cancellation (a Postgres cancel request
//! stops the statement even while its rows are being sent). The memory
//! limit is the session's pool (`super::catalog`).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Set, SetExpr, Statement};
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, Parser, QueryHook};
use futures::{Sink, StreamExt};
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::portal::Portal;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{QueryResponse, Response};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::data::DataRow;
use tokio::sync::watch;
use tracing::{info, warn};

type DfStatement = (String, Option<(Statement, LogicalPlan)>);

fn error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message,
    )))
}

/// The first keyword of a statement (`INSERT`, `CREATE`, …) for messages.
fn keyword(statement: &Statement) -> String {
    statement
        .to_string()
        .split_whitespace()
        .next()
        .unwrap_or("statement")
        .to_uppercase()
}

/// Why `statement` may not run here, or `None` when it may.
pub fn refusal(statement: &Statement) -> Option<String> {
    let read_only = |what: String| {
        Some(format!(
            "cannot execute {what}: hubflow's SQL server is read-only (SELECT, EXPLAIN, SHOW and SET of session variables)"
        ))
    };
    match statement {
        Statement::Query(query) => match query.body.as_ref() {
            SetExpr::Select(select) if select.into.is_some() => read_only("SELECT INTO".into()),
            _ => None,
        },
        Statement::Explain { statement, .. } => refusal(statement),
        Statement::Set(set) => {
            let variable = match set {
                Set::SingleAssignment { variable, .. } => Some(variable.to_string()),
                Set::ParenthesizedAssignments { .. } | Set::MultipleAssignments { .. } => {
                    Some("several variables".into())
                }
                _ => None,
            };
            match variable {
                // `datafusion.*` settings belong to the session every
                // client shares; a client changes only its own variables.
                Some(v) if v.contains('.') || v == "several variables" => Some(format!(
                    "SET {v} is not allowed: the server's settings are shared by every client"
                )),
                _ => None,
            }
        }
        Statement::ExplainTable { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowFunctions { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Discard { .. }
        | Statement::Deallocate { .. } => None,
        other => read_only(keyword(other)),
    }
}

fn refused(statement: &Statement) -> Option<PgWireError> {
    refusal(statement).map(|message| {
        metrics::counter!("hubflow_sql_refused_total", "protocol" => "postgres").increment(1);
        // 25006: read_only_sql_transaction, what Postgres answers a write
        // on a read-only transaction.
        error("25006", message)
    })
}

/// The read-only rule, as the first query hook.
#[derive(Debug)]
pub struct ReadOnly;

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        refused(statement).map(Err)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        refused(statement).map(Err)
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        refused(statement).map(Err)
    }
}

/// Where statements plan and run: a runtime of their own, so a statement
/// that keeps every core busy (DataFusion operators do not always yield)
/// cannot starve the listener, logins, cancel requests, other sessions'
/// sockets or, inside `hubflow run`, the pipeline; those stay on the
/// caller's runtime.
pub struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl QueryRuntime {
    pub fn new(threads: usize) -> std::io::Result<QueryRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("hubflow-sql-query")
            .enable_all()
            .build()?;
        Ok(QueryRuntime(Some(runtime)))
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        match &self.0 {
            Some(runtime) => runtime.handle(),
            None => unreachable!("the runtime is only taken when dropped"),
        }
    }

    /// Run `work` on this runtime, so every task it spawns (DataFusion's
    /// partitions) lands here too. `work` borrows the connection, so it
    /// cannot be spawned: the caller's worker thread blocks in it while
    /// its other tasks move to the other workers (`block_in_place`).
    async fn run<F: Future>(&self, work: F) -> F::Output {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let multi_thread = Handle::try_current()
            .is_ok_and(|caller| caller.runtime_flavor() == RuntimeFlavor::MultiThread);
        if multi_thread {
            let handle = self.handle().clone();
            tokio::task::block_in_place(move || handle.block_on(work))
        } else {
            // A current-thread caller cannot move its tasks away: plan there.
            work.await
        }
    }
}

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        // The server stops from async code, where a runtime may not block
        // on its own shutdown.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The limits every statement runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub max_rows: u64,
    /// One statement's share of the memory pool (where Hubflow executes
    /// the plan itself: Flight SQL, `super::memory`).
    pub statement_memory: usize,
}

/// Cancel switches of the statements running now, by connection
/// (pid, secret key), so a cancel request reaches a statement whose rows
/// are already streaming (pgwire's own cancel covers only planning).
#[derive(Default)]
pub struct Running {
    switches: Mutex<HashMap<Key, (u64, watch::Sender<bool>)>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// One running statement's cancel switch; `id` tells it apart from a later
/// statement of the same connection.
#[derive(Clone)]
struct Switch {
    id: u64,
    rx: watch::Receiver<bool>,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (u64, watch::Sender<bool>)>> {
        self.switches.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(&self, key: &Key) -> Switch {
        let (tx, rx) = watch::channel(false);
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(key.clone(), (id, tx));
        Switch { id, rx }
    }

    fn cancel(&self, key: &Key) -> bool {
        match self.lock().remove(key) {
            Some((_, tx)) => tx.send(true).is_ok(),
            None => false,
        }
    }

    fn finish(&self, key: &Key, switch: &Switch) {
        let mut map = self.lock();
        if map.get(key).is_some_and(|(id, _)| *id == switch.id) {
            map.remove(key);
        }
    }
}

type Key = (i32, Vec<u8>);

/// A connection's (pid, secret key): what a cancel request names.
fn connection_key(client: &impl ClientInfo) -> Key {
    let (pid, secret) = client.pid_and_secret_key();
    (pid, secret.to_bytes().to_vec())
}

/// Cancel requests: pgwire's (a statement still planning) and ours (a
/// statement sending rows).
pub struct Cancels {
    pub pgwire: DefaultCancelHandler,
    pub running: Arc<Running>,
}

#[async_trait]
impl CancelHandler for Cancels {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let key = (request.pid, request.secret_key.to_bytes().to_vec());
        let streaming = self.running.cancel(&key);
        info!(pid = request.pid, streaming, "sql cancel request");
        self.pgwire.on_cancel_request(request).await;
    }
}

/// The DataFusion handlers under [`Limits`].
pub struct Guarded {
    pub inner: Arc<DfSessionService>,
    pub limits: Limits,
    pub running: Arc<Running>,
    pub runtime: Arc<QueryRuntime>,
}

fn timeout_error(limit: Duration) -> PgWireError {
    metrics::counter!("hubflow_sql_queries_killed_total", "protocol" => "postgres", "reason" => "timeout").increment(1);
    // 57014: query_canceled, as Postgres's statement_timeout.
    error(
        "57014",
        format!(
            "canceling statement: it ran longer than the server's limit of {} s (sql.query_timeout_ms)",
            limit.as_secs_f64()
        ),
    )
}

impl Guarded {
    /// Run `work` (planning) under the deadline, then bound the rows of
    /// every result it returns.
    async fn guard<T, F>(
        &self,
        key: Key,
        work: F,
        shape: impl Fn(T) -> Vec<Response>,
        back: impl Fn(Vec<Response>) -> T,
    ) -> PgWireResult<T>
    where
        F: Future<Output = PgWireResult<T>>,
    {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let cancel = self.running.start(&key);
        let cancelled = until_set(cancel.rx.clone());
        let planned = self
            .runtime
            .run(async {
                tokio::select! {
                    result = tokio::time::timeout_at(deadline, work) => match result {
                        Ok(result) => result,
                        Err(_) => Err(timeout_error(self.limits.timeout)),
                    },
                    _ = cancelled => Err(PgWireError::QueryCanceled),
                }
            })
            .await;
        let responses = match planned {
            Ok(t) => shape(t),
            Err(e) => {
                self.running.finish(&key, &cancel);
                metrics::counter!("hubflow_sql_queries_total", "protocol" => "postgres", "outcome" => "error").increment(1);
                return Err(e);
            }
        };
        let responses = responses
            .into_iter()
            .map(|response| match response {
                Response::Query(query) => Response::Query(bounded(
                    query,
                    Bounds {
                        deadline,
                        limits: self.limits,
                        cancel: cancel.clone(),
                        running: Arc::clone(&self.running),
                        key: key.clone(),
                        started,
                        runtime: Arc::clone(&self.runtime),
                    },
                )),
                other => other,
            })
            .collect();
        Ok(back(responses))
    }
}

/// Resolves once `rx` reads `true`; never when its sender is gone first
/// (the statement finished, or the server handle was dropped).
pub(crate) async fn until_set(mut rx: watch::Receiver<bool>) {
    if rx.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What a client reads when its result passes `sql.max_result_rows`.
pub(crate) fn rows_over_limit(max: u64) -> String {
    format!("the result has more than {max} rows (sql.max_result_rows): add a LIMIT or aggregate")
}

/// Rows computed ahead of the client.
const ROWS_IN_FLIGHT: usize = 256;

struct Bounds {
    deadline: tokio::time::Instant,
    limits: Limits,
    cancel: Switch,
    running: Arc<Running>,
    key: Key,
    started: Instant,
    runtime: Arc<QueryRuntime>,
}

/// `query`'s rows, ending with an error at the deadline, past the row cap,
/// or on a cancel request; the DataFusion stream is dropped there, which
/// stops its work.
fn bounded(query: QueryResponse, bounds: Bounds) -> QueryResponse {
    let command_tag = query.command_tag().to_string();
    let row_schema = query.row_schema();
    let mut data_rows = query.data_rows;
    // The rows are computed on the query runtime and handed over here, so
    // the deadline and cancel requests are watched from the caller's
    // runtime even while every query thread is busy.
    let (tx, rx) = tokio::sync::mpsc::channel(ROWS_IN_FLIGHT);
    let forward = bounds.runtime.handle().spawn(async move {
        while let Some(row) = data_rows.next().await {
            if tx.send(row).await.is_err() {
                break;
            }
        }
    });
    struct State {
        rows: Option<tokio::sync::mpsc::Receiver<PgWireResult<DataRow>>>,
        forward: tokio::task::JoinHandle<()>,
        sent: u64,
        bounds: Bounds,
    }
    impl Drop for State {
        fn drop(&mut self) {
            // Stops the statement: dropping its stream ends its tasks.
            self.forward.abort();
            self.bounds
                .running
                .finish(&self.bounds.key, &self.bounds.cancel);
            metrics::histogram!("hubflow_sql_query_duration_seconds", "protocol" => "postgres")
                .record(self.bounds.started.elapsed().as_secs_f64());
        }
    }
    let state = State {
        rows: Some(rx),
        forward,
        sent: 0,
        bounds,
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        let rows = state.rows.as_mut()?;
        let next = tokio::select! {
            next = tokio::time::timeout_at(state.bounds.deadline, rows.recv()) => match next {
                Ok(next) => next,
                Err(_) => Some(Err(timeout_error(state.bounds.limits.timeout))),
            },
            _ = until_set(state.bounds.cancel.rx.clone()) => {
                metrics::counter!("hubflow_sql_queries_killed_total", "protocol" => "postgres", "reason" => "cancel").increment(1);
                Some(Err(PgWireError::QueryCanceled))
            }
        };
        match next {
            None => {
                metrics::counter!("hubflow_sql_queries_total", "protocol" => "postgres", "outcome" => "ok").increment(1);
                None
            }
            Some(Ok(row)) => {
                state.sent += 1;
                if state.sent > state.bounds.limits.max_rows {
                    state.rows = None;
                    metrics::counter!("hubflow_sql_queries_killed_total", "protocol" => "postgres", "reason" => "rows")
                        .increment(1);
                    let max = state.bounds.limits.max_rows;
                    return Some((Err(error("54000", rows_over_limit(max))), state));
                }
                Some((Ok(row), state))
            }
            Some(Err(e)) => {
                state.rows = None;
                metrics::counter!("hubflow_sql_queries_total", "protocol" => "postgres", "outcome" => "error").increment(1);
                warn!(error = %e, "sql statement failed while sending rows");
                Some((Err(e), state))
            }
        }
    });
    let mut out = QueryResponse::new(row_schema, stream);
    out.set_command_tag(&command_tag);
    out
}

#[async_trait]
impl SimpleQueryHandler for Guarded {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let key = connection_key(client);
        let inner = Arc::clone(&self.inner);
        self.guard(
            key,
            SimpleQueryHandler::do_query(inner.as_ref(), client, query),
            |r| r,
            |r| r,
        )
        .await
    }
}

#[async_trait]
impl ExtendedQueryHandler for Guarded {
    type Statement = DfStatement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.inner.query_parser()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // A second line behind [`ReadOnly`]: the plan itself may not write.
        if let (_, Some((_, plan))) = &portal.statement.statement {
            read_only_plan(plan)?;
        }
        let key = connection_key(client);
        let inner = Arc::clone(&self.inner);
        self.guard(
            key,
            ExtendedQueryHandler::do_query(inner.as_ref(), client, portal, max_rows),
            |r| vec![r],
            |mut r| r.pop().unwrap_or(Response::EmptyQuery),
        )
        .await
    }
}

/// Refuses a plan that defines or changes anything (DDL, DML, `COPY TO`).
pub fn read_only_plan(plan: &LogicalPlan) -> PgWireResult<()> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(true)
        .verify_plan(plan)
        .map_err(|e| {
            metrics::counter!("hubflow_sql_refused_total", "protocol" => "postgres").increment(1);
            error(
                "25006",
                format!("hubflow's SQL server is read-only: {}", e.strip_backtrace()),
            )
        })
}
