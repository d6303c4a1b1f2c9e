//! Arrow Flight SQL: the same tables as the Postgres wire protocol, for
//! ADBC, pandas and polars clients, which take Arrow record batches as
//! DataFusion produces them (no row-by-row conversion).
//!
//! - Logins: HTTP basic credentials in the handshake (or on any call),
//!   checked against the `[sql]` users' SCRAM salted passwords; the answer
//!   is a bearer token ([`TOKEN_LIFETIME`]) that later calls carry. Failed
//!   logins are counted and logged with the user name, never the password.
//! - Statements: `GetFlightInfo` plans the SQL (read-only: DDL, DML and
//!   session statements refused with `PERMISSION_DENIED`) and answers its
//!   schema with a ticket holding the statement; `DoGet` plans it again and
//!   streams the batches. Planning and execution run on the SQL server's
//!   query threads ([`super::guard::QueryRuntime`]) under the same
//!   [`Limits`] as the Postgres side: a deadline, a cap on result rows,
//!   and memory: each statement its own cap inside the shared pool
//!   ([`super::memory`]). A client that goes away drops the stream,
//!   which stops the statement.
//! - Prepared statements with `$1`-style parameters (one row of values per
//!   execution), planned once and kept per user until closed; clients that
//!   go away without closing them cannot fill the server: beyond
//!   [`MAX_PREPARED_PER_USER`] a user's least recently used statement is
//!   dropped, beyond [`MAX_PREPARED`] anyone's.
//! - Metadata: catalogs, schemas, tables (with their Arrow schemas), table
//!   types and SqlInfo, enough for `adbc_get_objects` and
//!   `adbc_get_table_schema`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementSubstraitPlan, CommandStatementUpdate, DoPutPreparedStatementResult,
    ProstMessageExt, SqlInfo, SqlSupportedTransaction, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use base64::Engine as _;
use datafusion::common::{DataFusionError, ParamValues, ScalarValue};
use datafusion::execution::TaskContext;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::execute_stream;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use rand::RngCore;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::auth::{DATABASE, Users};
use super::catalog::{Catalog, SCHEMA};
use super::guard::{Limits, QueryRuntime};

/// How long a bearer token from a login stays valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions (tokens) kept at once; a login beyond it drops expired ones
/// first and is refused if none has expired.
const MAX_SESSIONS: usize = 10_000;
/// Prepared statements kept at once, over all users.
pub const MAX_PREPARED: usize = 1_024;
/// Prepared statements kept at once for one user.
pub const MAX_PREPARED_PER_USER: usize = 256;
/// Batches computed ahead of the client.
const BATCHES_IN_FLIGHT: usize = 2;

const PROTOCOL: &str = "flight";

type DoGetStream = <FlightSql as FlightService>::DoGetStream;

/// The Flight SQL service over the shared catalog.
pub struct FlightSql {
    catalog: Arc<Catalog>,
    users: Arc<Users>,
    limits: Limits,
    runtime: Arc<QueryRuntime>,
    sessions: Mutex<HashMap<String, Session>>,
    prepared: Mutex<HashMap<Vec<u8>, Prepared>>,
    sql_info: SqlInfoData,
}

struct Session {
    user: String,
    expires: Instant,
}

struct Prepared {
    owner: String,
    /// Planned (and checked read-only) once, when prepared; each execution
    /// binds its values into a copy.
    plan: LogicalPlan,
    /// `$1`, `$2`, … in order, with the type the plan expects when known.
    parameters: Vec<Option<DataType>>,
    bound: Option<ParamValues>,
    used: Instant,
}

/// Drops least recently used prepared statements so `user` can add one
/// within [`MAX_PREPARED_PER_USER`] and [`MAX_PREPARED`].
fn make_room<V>(
    prepared: &mut HashMap<Vec<u8>, V>,
    user: &str,
    owner: impl Fn(&V) -> &str,
    used: impl Fn(&V) -> Instant,
) {
    let oldest = |prepared: &HashMap<Vec<u8>, V>, mine: bool| {
        prepared
            .iter()
            .filter(|(_, p)| !mine || owner(p) == user)
            .min_by_key(|(_, p)| used(p))
            .map(|(handle, _)| handle.clone())
    };
    let held = prepared.values().filter(|p| owner(p) == user).count();
    let evict = if held >= MAX_PREPARED_PER_USER {
        oldest(prepared, true)
    } else if prepared.len() >= MAX_PREPARED {
        oldest(prepared, false)
    } else {
        None
    };
    if let Some(handle) = evict {
        prepared.remove(&handle);
        debug!(user, "dropped the least recently used prepared statement");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A DataFusion error as the status a Flight client shows.
fn sql_error(error: DataFusionError) -> Status {
    let message = error.strip_backtrace();
    match error.find_root() {
        DataFusionError::ResourcesExhausted(_) if message.contains("statement_memory_limit_mb") => {
            Status::resource_exhausted(message)
        }
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(format!(
            "{message} (sql.memory_limit_mb is shared by every running query)"
        )),
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => Status::invalid_argument(message),
        _ => Status::internal(message),
    }
}

fn read_only(what: &str) -> Status {
    metrics::counter!("hubflow_sql_refused_total", "protocol" => PROTOCOL).increment(1);
    Status::permission_denied(format!(
        "hubflow's SQL server is read-only (queries only): {what}"
    ))
}

fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

fn random_token(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

/// One row of bound values as the plan's parameters, cast to the types the
/// plan expects where it knows them.
fn parameter_values(
    batches: &[RecordBatch],
    expected: &[Option<DataType>],
) -> Result<ParamValues, Status> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(ParamValues::List(Vec::new()));
    };
    if rows > 1 {
        return Err(Status::invalid_argument(format!(
            "bind one row of parameter values per execution of a query (got {rows})"
        )));
    }
    if batch.num_columns() != expected.len() {
        return Err(Status::invalid_argument(format!(
            "the statement has {} parameter(s), {} value(s) were bound",
            expected.len(),
            batch.num_columns()
        )));
    }
    let mut values = Vec::with_capacity(expected.len());
    for (i, (column, want)) in batch.columns().iter().zip(expected).enumerate() {
        let value = ScalarValue::try_from_array(column, 0).map_err(sql_error)?;
        let value = match want {
            Some(want) if value.data_type() != *want && !value.is_null() => {
                value.cast_to(want).map_err(|e| {
                    Status::invalid_argument(format!(
                        "parameter ${}: {} is not a {want}: {}",
                        i + 1,
                        value,
                        e.strip_backtrace()
                    ))
                })?
            }
            Some(want) if value.is_null() => ScalarValue::try_from(want).map_err(sql_error)?,
            _ => value,
        };
        values.push(value);
    }
    Ok(ParamValues::from(values))
}

/// `$1`, `$2`, … of `plan` in order (`None` where the type is not known).
fn parameter_types(plan: &LogicalPlan) -> Result<Vec<Option<DataType>>, Status> {
    let types = plan.get_parameter_types().map_err(sql_error)?;
    let mut numbered = Vec::with_capacity(types.len());
    for (name, ty) in types {
        let n = name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "parameter {name}: use numbered parameters ($1, $2, …)"
                ))
            })?;
        numbered.push((n, ty));
    }
    numbered.sort_by_key(|(n, _)| *n);
    if numbered.iter().enumerate().any(|(i, (n, _))| *n != i + 1) {
        return Err(Status::invalid_argument(
            "parameters must be numbered $1, $2, … without gaps",
        ));
    }
    Ok(numbered.into_iter().map(|(_, ty)| ty).collect())
}

impl FlightSql {
    pub fn new(
        catalog: Arc<Catalog>,
        users: Arc<Users>,
        limits: Limits,
        runtime: Arc<QueryRuntime>,
    ) -> anyhow::Result<FlightSql> {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "hubflow");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(
            SqlInfo::FlightSqlServerTransaction,
            SqlSupportedTransaction::None as i32,
        );
        info.append(SqlInfo::FlightSqlServerCancel, false);
        info.append(
            SqlInfo::FlightSqlServerStatementTimeout,
            i32::try_from(limits.timeout.as_millis()).unwrap_or(i32::MAX),
        );
        Ok(FlightSql {
            catalog,
            users,
            limits,
            runtime,
            sessions: Mutex::default(),
            prepared: Mutex::default(),
            sql_info: info.build()?,
        })
    }

    /// The user a request is made by: a bearer token from a login, or basic
    /// credentials on the call itself.
    async fn user_of<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let Some(header) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "log in first: hubflow's Flight SQL server needs a user name and password (basic authentication in the handshake)",
            ));
        };
        let header = header
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
        if let Some(token) = header.strip_prefix("Bearer ") {
            let mut sessions = lock(&self.sessions);
            return match sessions.get(token.trim()) {
                Some(session) if session.expires > Instant::now() => Ok(session.user.clone()),
                Some(_) => {
                    sessions.remove(token.trim());
                    Err(Status::unauthenticated("the session expired: log in again"))
                }
                None => Err(Status::unauthenticated(
                    "unknown session token: log in again",
                )),
            };
        }
        if let Some(basic) = header.strip_prefix("Basic ") {
            return self.login(basic, request.remote_addr()).await;
        }
        Err(Status::unauthenticated(
            "unsupported authorization: use basic (user name and password) or the bearer token a login answered",
        ))
    }

    /// Check basic credentials (`base64(user:password)`).
    async fn login(
        &self,
        basic: &str,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<String, Status> {
        // Padded or not: Go's Flight client (ADBC) leaves the padding out.
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(basic.trim().trim_end_matches('='))
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .ok_or_else(|| Status::unauthenticated("malformed basic authorization"))?;
        let Some((user, password)) = decoded.split_once(':') else {
            return Err(Status::unauthenticated(
                "malformed basic authorization (user:password)",
            ));
        };
        let (user, password) = (user.to_owned(), password.to_owned());
        let users = Arc::clone(&self.users);
        let name = user.clone();
        // PBKDF2 (SCRAM's 4096 rounds) off the async threads.
        let ok = tokio::task::spawn_blocking(move || users.verify(&name, &password))
            .await
            .unwrap_or(false);
        if ok {
            Ok(user)
        } else {
            metrics::counter!("hubflow_sql_failed_logins_total", "protocol" => PROTOCOL)
                .increment(1);
            let peer = peer.map(|p| p.to_string()).unwrap_or_default();
            warn!(user = %user, %peer, protocol = PROTOCOL, "sql login failed");
            Err(Status::unauthenticated(format!(
                "password authentication failed for user \"{user}\""
            )))
        }
    }

    fn new_session(&self, user: String) -> Result<String, Status> {
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= MAX_SESSIONS {
            let now = Instant::now();
            sessions.retain(|_, s| s.expires > now);
            if sessions.len() >= MAX_SESSIONS {
                return Err(Status::resource_exhausted(
                    "too many open Flight SQL sessions; try again later",
                ));
            }
        }
        let token = random_token(32);
        sessions.insert(
            token.clone(),
            Session {
                user,
                expires: Instant::now() + TOKEN_LIFETIME,
            },
        );
        Ok(token)
    }

    /// Run `work` on the query threads, under the statement deadline.
    async fn on_query_threads<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, Status>> + Send + 'static,
    ) -> Result<T, Status> {
        let limit = self.limits.timeout;
        let task = self.runtime.handle().spawn(work);
        let abort = task.abort_handle();
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(Status::internal(format!("the statement failed: {e}"))),
            Err(_) => {
                abort.abort();
                Err(timeout_status(limit))
            }
        }
    }

    /// Plan `sql` (refusing anything that is not a query), with `params`
    /// bound when given.
    async fn plan(&self, sql: &str, params: Option<ParamValues>) -> Result<LogicalPlan, Status> {
        let ctx = self.catalog.context();
        let sql = sql.to_owned();
        let plan = self
            .on_query_threads(async move {
                let plan = ctx
                    .state()
                    .create_logical_plan(&sql)
                    .await
                    .map_err(sql_error)?;
                SQLOptions::new()
                    .with_allow_ddl(false)
                    .with_allow_dml(false)
                    .with_allow_statements(false)
                    .verify_plan(&plan)
                    .map_err(|e| read_only(&e.strip_backtrace()))?;
                match params {
                    Some(params) => plan.with_param_values(params).map_err(sql_error),
                    None => Ok(plan),
                }
            })
            .await;
        if plan.is_err() {
            metrics::counter!("hubflow_sql_queries_total", "protocol" => PROTOCOL, "outcome" => "error")
                .increment(1);
        }
        plan
    }

    /// Stream `plan`'s batches under the limits.
    async fn execute(&self, plan: LogicalPlan) -> Result<Response<DoGetStream>, Status> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let ctx = self.catalog.context();
        let memory = self.limits.statement_memory;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch, Status>>(BATCHES_IN_FLIGHT);
        let (schema_tx, schema_rx) = tokio::sync::oneshot::channel::<Result<SchemaRef, Status>>();
        let forward = self.runtime.handle().spawn(async move {
            let state = ctx.state();
            let stream = match state.create_physical_plan(&plan).await {
                Ok(physical) => {
                    // This statement's own cap inside the shared pool.
                    let task = TaskContext::from(&state).with_runtime(
                        super::memory::StatementPool::runtime(state.runtime_env(), memory),
                    );
                    execute_stream(physical, Arc::new(task))
                }
                Err(e) => Err(e),
            };
            let mut stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    let _ = schema_tx.send(Err(sql_error(e)));
                    return;
                }
            };
            if schema_tx.send(Ok(stream.schema())).is_err() {
                return;
            }
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(sql_error);
                let failed = batch.is_err();
                if tx.send(batch).await.is_err() || failed {
                    break;
                }
            }
        });
        let mut state = Outgoing {
            rows: Some(rx),
            forward,
            sent: 0,
            deadline,
            limits: self.limits,
            started,
        };
        let schema = match tokio::time::timeout_at(deadline, schema_rx).await {
            Ok(Ok(Ok(schema))) => schema,
            Ok(Ok(Err(e))) => {
                state.rows = None;
                metrics::counter!("hubflow_sql_queries_total", "protocol" => PROTOCOL, "outcome" => "error")
                    .increment(1);
                return Err(e);
            }
            Ok(Err(_)) => {
                return Err(Status::internal(
                    "the statement stopped before its first batch",
                ));
            }
            Err(_) => return Err(timeout_status(self.limits.timeout)),
        };
        let batches = futures::stream::unfold(state, |mut state| async move {
            let rows = state.rows.as_mut()?;
            let next = match tokio::time::timeout_at(state.deadline, rows.recv()).await {
                Ok(next) => next,
                Err(_) => Some(Err(timeout_status(state.limits.timeout))),
            };
            match next {
                None => {
                    metrics::counter!("hubflow_sql_queries_total", "protocol" => PROTOCOL, "outcome" => "ok")
                        .increment(1);
                    None
                }
                Some(Ok(batch)) => {
                    state.sent += batch.num_rows() as u64;
                    if state.sent > state.limits.max_rows {
                        state.rows = None;
                        metrics::counter!("hubflow_sql_queries_killed_total", "protocol" => PROTOCOL, "reason" => "rows")
                            .increment(1);
                        let max = state.limits.max_rows;
                        return Some((
                            Err(FlightError::Tonic(Box::new(Status::resource_exhausted(
                                super::guard::rows_over_limit(max),
                            )))),
                            state,
                        ));
                    }
                    Some((Ok(batch), state))
                }
                Some(Err(status)) => {
                    state.rows = None;
                    metrics::counter!("hubflow_sql_queries_total", "protocol" => PROTOCOL, "outcome" => "error")
                        .increment(1);
                    warn!(error = %status.message(), protocol = PROTOCOL, "sql statement failed while sending rows");
                    Some((Err(FlightError::Tonic(Box::new(status))), state))
                }
            }
        });
        let flight = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(flight)))
    }

    /// A `FlightInfo` answering `descriptor` with `schema` and one endpoint
    /// on this server that redeems `ticket`.
    fn info(
        schema: &Schema,
        ticket: impl ProstMessageExt,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = Ticket::new(ticket.as_any().encode_to_vec());
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }

    /// One batch as a `DoGet` answer.
    fn one_batch(batch: Result<RecordBatch, FlightError>) -> Response<DoGetStream> {
        let schema = batch.as_ref().map(|b| b.schema()).ok();
        let mut encoder = FlightDataEncoderBuilder::new();
        if let Some(schema) = schema {
            encoder = encoder.with_schema(schema);
        }
        let stream = encoder
            .build(futures::stream::once(async { batch }))
            .map_err(Status::from);
        Response::new(Box::pin(stream))
    }

    /// The prepared statement `handle` of `user`, as (sql, parameter
    /// count, bound values).
    fn prepared(
        &self,
        handle: &[u8],
        user: &str,
    ) -> Result<(LogicalPlan, usize, Option<ParamValues>), Status> {
        let mut prepared = lock(&self.prepared);
        match prepared.get_mut(handle) {
            Some(p) if p.owner == user => {
                p.used = Instant::now();
                Ok((p.plan.clone(), p.parameters.len(), p.bound.clone()))
            }
            _ => Err(Status::not_found(
                "no such prepared statement (closed, or made by another user)",
            )),
        }
    }

    async fn plan_prepared(&self, handle: &[u8], user: &str) -> Result<LogicalPlan, Status> {
        let (plan, parameters, bound) = self.prepared(handle, user)?;
        match bound {
            Some(values) => plan.with_param_values(values).map_err(sql_error),
            None if parameters > 0 => Err(Status::invalid_argument(format!(
                "bind the statement's {parameters} parameter(s) before executing it"
            ))),
            None => Ok(plan),
        }
    }
}

fn timeout_status(limit: Duration) -> Status {
    metrics::counter!("hubflow_sql_queries_killed_total", "protocol" => PROTOCOL, "reason" => "timeout")
        .increment(1);
    Status::deadline_exceeded(format!(
        "canceling statement: it ran longer than the server's limit of {} s (sql.query_timeout_ms)",
        limit.as_secs_f64()
    ))
}

/// A statement's batches on their way out.
struct Outgoing {
    rows: Option<tokio::sync::mpsc::Receiver<Result<RecordBatch, Status>>>,
    forward: tokio::task::JoinHandle<()>,
    sent: u64,
    deadline: tokio::time::Instant,
    limits: Limits,
    started: Instant,
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        // Ends the statement: a client that stops reading, a limit, or the
        // last batch sent.
        self.forward.abort();
        metrics::histogram!("hubflow_sql_query_duration_seconds", "protocol" => PROTOCOL)
            .record(self.started.elapsed().as_secs_f64());
    }
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let user = match request
            .metadata()
            .get("authorization")
            .and_then(|h| h.to_str().ok())
        {
            Some(header) if header.starts_with("Basic ") => {
                self.login(&header["Basic ".len()..], request.remote_addr())
                    .await?
            }
            _ => {
                return Err(Status::unauthenticated(
                    "log in with basic authentication (user name and password) in the handshake",
                ));
            }
        };
        let token = self.new_session(user.clone())?;
        debug!(user = %user, "flight sql login");
        let bearer = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Status::internal("token is not a header value"))?;
        let answer = HandshakeResponse {
            protocol_version: 0,
            payload: token.into_bytes().into(),
        };
        let mut response: Response<
            Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>,
        > = Response::new(Box::pin(futures::stream::iter([Ok(answer)])));
        response.metadata_mut().insert("authorization", bearer);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.user_of(&request).await?;
        let plan = self.plan(&query.query, None).await?;
        let schema = plan.schema().as_arrow().clone();
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        Self::info(&schema, ticket, request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.user_of(&request).await?;
        let sql = std::str::from_utf8(&ticket.statement_handle)
            .map_err(|_| Status::invalid_argument("the ticket is not a statement"))?;
        let plan = self.plan(sql, None).await?;
        self.execute(plan).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let user = self.user_of(&request).await?;
        let plan = self.plan(&query.query, None).await?;
        let parameters = parameter_types(&plan)?;
        let parameter_schema = Schema::new(
            parameters
                .iter()
                .enumerate()
                .map(|(i, ty)| {
                    Field::new(
                        format!("${}", i + 1),
                        ty.clone().unwrap_or(DataType::Null),
                        true,
                    )
                })
                .collect::<Vec<_>>(),
        );
        let handle = random_token(16).into_bytes();
        {
            let mut prepared = lock(&self.prepared);
            make_room(&mut prepared, &user, |p| &p.owner, |p| p.used);
            prepared.insert(
                handle.clone(),
                Prepared {
                    owner: user,
                    plan: plan.clone(),
                    parameters,
                    bound: None,
                    used: Instant::now(),
                },
            );
        }
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into(),
            dataset_schema: schema_bytes(plan.schema().as_arrow())?,
            parameter_schema: schema_bytes(&parameter_schema)?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        let user = self.user_of(&request).await?;
        let handle = query.prepared_statement_handle.to_vec();
        self.prepared(&handle, &user)?;
        lock(&self.prepared).remove(&handle);
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let user = self.user_of(&request).await?;
        let handle = query.prepared_statement_handle.to_vec();
        self.prepared(&handle, &user)?;
        let mut batches = FlightRecordBatchStream::new_from_flight_data(
            request.into_inner().map_err(FlightError::from),
        );
        let mut values = Vec::new();
        let mut rows = 0;
        while let Some(batch) = batches.next().await {
            let batch =
                batch.map_err(|e| Status::invalid_argument(format!("parameter values: {e}")))?;
            rows += batch.num_rows();
            values.push(batch);
            if rows > 1 {
                break;
            }
        }
        let mut prepared = lock(&self.prepared);
        let Some(statement) = prepared.get_mut(&handle) else {
            return Err(Status::not_found("the prepared statement was closed"));
        };
        statement.bound = Some(parameter_values(&values, &statement.parameters)?);
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(query.prepared_statement_handle),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let user = self.user_of(&request).await?;
        let plan = self
            .plan_prepared(&query.prepared_statement_handle, &user)
            .await?;
        let schema = plan.schema().as_arrow().clone();
        Self::info(&schema, query, request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let user = self.user_of(&request).await?;
        let plan = self
            .plan_prepared(&query.prepared_statement_handle, &user)
            .await?;
        self.execute(plan).await
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.user_of(&request).await?;
        let schema = query.into_builder().schema();
        Self::info(&schema, query, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.user_of(&request).await?;
        let mut builder = query.into_builder();
        builder.append(DATABASE);
        Ok(Self::one_batch(builder.build()))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.user_of(&request).await?;
        let schema = query.clone().into_builder().schema();
        Self::info(&schema, query, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.user_of(&request).await?;
        let mut builder = query.into_builder();
        builder.append(DATABASE, SCHEMA);
        Ok(Self::one_batch(builder.build()))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.user_of(&request).await?;
        let schema = query.clone().into_builder().schema();
        Self::info(&schema, query, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.user_of(&request).await?;
        let ctx = self.catalog.context();
        let mut builder = query.into_builder();
        for name in self.catalog.tables().await {
            // A table dropped since the list was read is left out.
            let Ok(table) = ctx.table_provider(name.as_str()).await else {
                continue;
            };
            builder
                .append(DATABASE, SCHEMA, &name, "TABLE", &table.schema())
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        Ok(Self::one_batch(builder.build()))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.user_of(&request).await?;
        let schema = query.into_builder().schema();
        Self::info(&schema, query, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.user_of(&request).await?;
        let mut builder = query.into_builder();
        builder.append("TABLE");
        Ok(Self::one_batch(builder.build()))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.user_of(&request).await?;
        let schema = query.clone().into_builder(&self.sql_info).schema();
        Self::info(&schema, query, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.user_of(&request).await?;
        Ok(Self::one_batch(query.into_builder(&self.sql_info).build()))
    }

    async fn do_put_statement_update(
        &self,
        _query: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.user_of(&request).await?;
        Err(read_only("updates are refused"))
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.user_of(&request).await?;
        Err(read_only("updates are refused"))
    }

    async fn do_put_statement_ingest(
        &self,
        _query: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.user_of(&request).await?;
        Err(read_only("bulk ingestion is refused"))
    }

    async fn do_put_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.user_of(&request).await?;
        Err(Status::unimplemented(
            "substrait plans are not supported; send SQL",
        ))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<arrow_flight::Ticket>,
        message: Any,
    ) -> Result<Response<DoGetStream>, Status> {
        Err(Status::invalid_argument(format!(
            "unknown ticket type {}",
            message.type_url
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use datafusion::prelude::SessionContext;

    use super::*;

    fn one_row(columns: Vec<(&str, arrow::array::ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    #[test]
    fn bound_values_are_cast_to_the_plans_types_and_one_row_is_required() {
        let batch = one_row(vec![
            ("a", Arc::new(Int64Array::from(vec![7]))),
            ("b", Arc::new(StringArray::from(vec!["x"]))),
        ]);
        let values =
            parameter_values(std::slice::from_ref(&batch), &[Some(DataType::Int32), None]).unwrap();
        let ParamValues::List(values) = values else {
            panic!("positional")
        };
        assert_eq!(values[0].value, ScalarValue::Int32(Some(7)));
        assert_eq!(values[1].value, ScalarValue::Utf8(Some("x".into())));
        let err = parameter_values(std::slice::from_ref(&batch), &[None]).unwrap_err();
        assert!(
            err.message().contains("1 parameter(s), 2 value(s)"),
            "{err}"
        );
        let two = one_row(vec![("a", Arc::new(Int64Array::from(vec![1, 2])))]);
        let err = parameter_values(&[two], &[None]).unwrap_err();
        assert!(err.message().contains("one row"), "{err}");
        let text = one_row(vec![("a", Arc::new(StringArray::from(vec!["seven"])))]);
        let err = parameter_values(&[text], &[Some(DataType::Int64)]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("parameter $1"), "{err}");
    }

    #[tokio::test]
    async fn parameters_are_numbered_in_order() {
        let ctx = SessionContext::new();
        let plan = ctx
            .state()
            .create_logical_plan("SELECT $2 + 1 AS b, $1 = 'x' AS a")
            .await
            .unwrap();
        let types = parameter_types(&plan).unwrap();
        assert_eq!(types.len(), 2);
        let gap = ctx
            .state()
            .create_logical_plan("SELECT $1, $3")
            .await
            .unwrap();
        assert!(parameter_types(&gap).is_err());
    }

    #[test]
    fn abandoned_prepared_statements_make_room_oldest_first() {
        let start = Instant::now();
        let mut map: HashMap<Vec<u8>, (String, Instant)> = HashMap::new();
        let add = |map: &mut HashMap<Vec<u8>, (String, Instant)>, user: &str, i: usize| {
            make_room(map, user, |p| &p.0, |p| p.1);
            let at = start + Duration::from_millis(i as u64);
            map.insert(format!("{user}-{i}").into_bytes(), (user.to_string(), at));
        };
        for i in 0..MAX_PREPARED_PER_USER + 10 {
            add(&mut map, "greedy", i);
        }
        // The greedy user's oldest went; nobody else was touched.
        assert_eq!(map.len(), MAX_PREPARED_PER_USER);
        assert!(!map.contains_key(b"greedy-0".as_slice()));
        assert!(map.contains_key(b"greedy-10".as_slice()));
        add(&mut map, "quiet", 1_000);
        assert!(map.contains_key(b"quiet-1000".as_slice()));
        // Over the global cap the oldest of anyone's goes.
        let mut i = 2_000;
        for user in ["a", "b", "c", "d"] {
            for _ in 0..MAX_PREPARED_PER_USER {
                add(&mut map, user, i);
                i += 1;
            }
        }
        assert_eq!(map.len(), MAX_PREPARED);
        assert!(map.keys().all(|k| !k.starts_with(b"greedy")));
    }

    #[test]
    fn errors_map_to_the_status_a_client_can_act_on() {
        let plan = sql_error(DataFusionError::Plan("table 'nope' not found".into()));
        assert_eq!(plan.code(), tonic::Code::InvalidArgument);
        let memory = sql_error(DataFusionError::ResourcesExhausted("sort".into()));
        assert_eq!(memory.code(), tonic::Code::ResourceExhausted);
        assert!(memory.message().contains("sql.memory_limit_mb"));
        assert_eq!(read_only("x").code(), tonic::Code::PermissionDenied);
    }
}
