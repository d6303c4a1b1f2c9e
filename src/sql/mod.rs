//! SQL for data scientists from the clients they already use: the curated
//! tables served over the Postgres wire protocol (psql, DBeaver, psycopg,
//! pandas, Power BI) and Arrow Flight SQL (ADBC, pandas, polars), by
//! `hubflow sql serve` or inside `hubflow run` with `[sql] enabled = true`.
//!
//! The protocol, the Postgres catalog (`pg_catalog`, the SQL dialect
//! clients send at start-up) and the Arrow ↔ Postgres type mapping are
//! datafusion-postgres (pgwire underneath); Hubflow adds what a shared
//! server needs around it:
//! - [`catalog`]: the one DataFusion session (database `hubflow`, schema
//!   `public`, one table per source with the schema registry's types), its
//!   memory pool, and the refresh that picks up new sources and schema
//!   changes;
//! - [`auth`]: SCRAM-SHA-256 logins for the `[sql]` users, the database
//!   name, failed logins counted and logged;
//! - [`guard`]: read-only (every statement that is not a query refused
//!   with SQLSTATE 25006), and per-statement limits: time, result rows,
//!   cancellation while rows stream; statements on threads of their own;
//! - [`memory`]: the per-statement memory cap inside the shared pool;
//! - [`json`]: nested columns (structs, maps, lists of them) as JSON text,
//!   through a view per table that has them;
//! - [`yielding`]: the optimizer rule that makes a running statement
//!   stoppable (every operator's input yields to tokio's budget);
//! - [`flight`]: Arrow Flight SQL over the same session, users, query
//!   threads and limits (basic logins answered with bearer tokens,
//!   statements, prepared statements, the metadata ADBC asks for);
//! - this file: [`SqlServer`], the listeners (TLS when configured, a cap on
//!   Postgres connections answered with SQLSTATE 53300) and their shutdown.
//!
//! Nothing here needs an ingestion secret: the server reads only the
//! storage settings (`crate::config::CuratedLocation`).

pub mod auth;
pub mod catalog;
pub mod flight;
pub mod guard;
pub mod json;
pub mod memory;
pub mod yielding;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, QueryHook};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::api::auth::{DefaultServerParameterProvider, StartupHandler};
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{ConnectionManager, ErrorHandler, PgWireServerHandlers};
use pgwire::tokio::tokio_rustls::rustls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::CuratedLocation;
use crate::config::sql::SqlSettings;

pub use catalog::Catalog;

/// Everything one connection is served with; a fresh startup handler per
/// connection (the SASL exchange keeps state).
struct Handlers {
    guarded: Arc<guard::Guarded>,
    users: Arc<auth::Users>,
    parameters: Arc<DefaultServerParameterProvider>,
    connections: Arc<ConnectionManager>,
    cancels: Arc<guard::Cancels>,
    /// TLS is configured: a client off loopback must use it.
    tls: bool,
}

/// With TLS configured, a login over plain text is refused unless it comes
/// from loopback.
fn plain_text_refused(tls: bool, secure: bool, peer: std::net::IpAddr) -> bool {
    tls && !secure && !peer.is_loopback()
}

/// Refuses a plain-text login from off loopback when TLS is configured
/// (pgwire itself serves both on one port).
struct RequireTls<H> {
    inner: H,
    tls: bool,
}

#[async_trait::async_trait]
impl<H: StartupHandler> StartupHandler for RequireTls<H> {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: pgwire::messages::PgWireFrontendMessage,
    ) -> pgwire::error::PgWireResult<()>
    where
        C: pgwire::api::ClientInfo
            + futures::Sink<pgwire::messages::PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::Error: std::fmt::Debug,
        pgwire::error::PgWireError:
            From<<C as futures::Sink<pgwire::messages::PgWireBackendMessage>>::Error>,
    {
        if matches!(message, pgwire::messages::PgWireFrontendMessage::Startup(_))
            && plain_text_refused(self.tls, client.is_secure(), client.socket_addr().ip())
        {
            return Err(pgwire::error::PgWireError::UserError(Box::new(
                pgwire::error::ErrorInfo::new(
                    "FATAL".into(),
                    "28000".into(),
                    "hubflow's sql server requires TLS off loopback (connect with sslmode=require)"
                        .into(),
                ),
            )));
        }
        self.inner.on_startup(client, message).await
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.guarded)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.guarded)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        let users: Arc<dyn pgwire::api::auth::AuthSource> = self.users.clone();
        Arc::new(RequireTls {
            inner: SASLAuthStartupHandler::new(Arc::clone(&self.parameters))
                .with_scram(ScramAuth::new(users))
                .with_connection_manager(Arc::clone(&self.connections)),
            tls: self.tls,
        })
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(auth::Errors)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::clone(&self.cancels)
    }
}

/// A running SQL server.
pub struct SqlServer {
    pg_addr: SocketAddr,
    flight_addr: Option<SocketAddr>,
    flight_task: Option<tokio::task::JoinHandle<()>>,
    max_connections: usize,
    limiter: Arc<Semaphore>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    catalog: Arc<Catalog>,
}

impl SqlServer {
    /// Open the catalog, bind `settings.pg_listen` and serve until
    /// [`SqlServer::stop`].
    pub async fn start(
        settings: &SqlSettings,
        location: CuratedLocation,
    ) -> anyhow::Result<SqlServer> {
        let catalog = Arc::new(Catalog::open(location, settings.memory_limit_bytes).await?);
        let tls = settings
            .tls
            .as_ref()
            .map(|(cert, key)| tls_acceptor(cert, key))
            .transpose()?;
        let listener = TcpListener::bind(settings.pg_listen)
            .await
            .with_context(|| format!("binding the sql port {}", settings.pg_listen))?;
        let pg_addr = listener.local_addr()?;
        let flight_listener = match settings.flight_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the flight sql port {addr}"))?,
            ),
            None => None,
        };
        let users = Arc::new(auth::Users::new(&settings.users));
        let runtime = Arc::new(
            guard::QueryRuntime::new(settings.query_threads)
                .context("starting the sql query threads")?,
        );
        let limits = guard::Limits {
            timeout: settings.query_timeout,
            max_rows: settings.max_result_rows,
            statement_memory: settings.statement_memory_limit_bytes,
        };
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(guard::ReadOnly),
            Arc::new(datafusion_postgres::hooks::cursor::CursorStatementHook),
            Arc::new(datafusion_postgres::hooks::set_show::SetShowHook),
            Arc::new(datafusion_postgres::hooks::transactions::TransactionStatementHook),
        ];
        let running = Arc::new(guard::Running::default());
        let connections = Arc::new(ConnectionManager::new());
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        let handlers = Arc::new(Handlers {
            guarded: Arc::new(guard::Guarded {
                inner: Arc::new(DfSessionService::new_with_hooks(catalog.context(), hooks)),
                limits,
                running: Arc::clone(&running),
                runtime: Arc::clone(&runtime),
            }),
            users: Arc::clone(&users),
            parameters: Arc::new(parameters),
            cancels: Arc::new(guard::Cancels {
                pgwire: DefaultCancelHandler::new(Arc::clone(&connections)),
                running,
            }),
            connections,
            tls: tls.is_some(),
        });
        let (stop, stopped) = watch::channel(false);
        let (flight_addr, flight_task) = match flight_listener {
            Some(listener) => {
                let addr = listener.local_addr()?;
                let service = flight::FlightSql::new(Arc::clone(&catalog), users, limits, runtime)?;
                let tls = settings
                    .tls
                    .as_ref()
                    .map(|(cert, key)| flight_tls(cert, key))
                    .transpose()?;
                let task = tokio::spawn(serve_flight(listener, service, tls, stopped.clone()));
                info!(addr = %addr, tls = settings.tls.is_some(), "sql server listening (arrow flight sql)");
                (Some(addr), Some(task))
            }
            None => (None, None),
        };
        let limiter = Arc::new(Semaphore::new(settings.max_connections));
        let task = tokio::spawn(serve(
            listener,
            tls,
            handlers,
            Arc::clone(&limiter),
            stopped.clone(),
        ));
        tokio::spawn(refresh_loop(
            Arc::clone(&catalog),
            settings.refresh,
            stopped,
        ));
        let tables = catalog.tables().await;
        info!(addr = %pg_addr, tls = settings.tls.is_some(), users = settings.users.len(), ?tables, "sql server listening (postgres wire protocol)");
        Ok(SqlServer {
            pg_addr,
            flight_addr,
            flight_task,
            max_connections: settings.max_connections,
            limiter,
            stop,
            task,
            catalog,
        })
    }

    /// Where the Postgres wire protocol listens.
    pub fn pg_addr(&self) -> SocketAddr {
        self.pg_addr
    }

    /// Where Arrow Flight SQL listens, when served.
    pub fn flight_addr(&self) -> Option<SocketAddr> {
        self.flight_addr
    }

    /// Connections open now (each holds one of `sql.max_connections`).
    pub fn connections(&self) -> usize {
        self.max_connections - self.limiter.available_permits()
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Stop listening and close every connection.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if let Some(flight) = self.flight_task {
            let _ = flight.await;
        }
        info!("sql server stopped");
    }

    /// Serve until the listener fails (for `hubflow sql serve`, which ends
    /// on a signal).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the sql server task failed")
    }
}

async fn refresh_loop(
    catalog: Arc<Catalog>,
    every: std::time::Duration,
    stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = guard::until_set(stopped.clone()) => return,
        }
        if let Err(error) = catalog.refresh().await {
            metrics::counter!("hubflow_sql_refresh_errors_total").increment(1);
            let error = format!("{error:#}");
            warn!(%error, "sql table refresh failed; serving the tables as they were");
        }
    }
}

async fn serve(
    listener: TcpListener,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    handlers: Arc<Handlers>,
    limiter: Arc<Semaphore>,
    stopped: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (socket, peer) = tokio::select! {
            _ = guard::until_set(stopped.clone()) => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "sql accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&limiter).try_acquire_owned() else {
            metrics::counter!("hubflow_sql_connections_refused_total").increment(1);
            warn!(%peer, "sql connection refused: too many connections (sql.max_connections)");
            connections.spawn(refuse(socket));
            continue;
        };
        metrics::counter!("hubflow_sql_connections_total").increment(1);
        let handlers = Arc::clone(&handlers);
        let tls = tls.clone();
        connections.spawn(async move {
            let _permit = permit;
            let gauge = metrics::gauge!("hubflow_sql_connections_active");
            gauge.increment(1.0);
            debug!(%peer, "sql connection");
            if let Err(error) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                debug!(%peer, %error, "sql connection ended with an error");
            }
            gauge.decrement(1.0);
        });
    }
    connections.shutdown().await;
}

/// Answer a connection over the cap with Postgres's own error
/// (FATAL 53300 too_many_connections) and close it.
async fn refuse(mut socket: tokio::net::TcpStream) {
    let mut fields = Vec::new();
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "53300"),
        (
            b'M',
            "too many connections to hubflow's sql server (sql.max_connections)",
        ),
    ] {
        fields.push(code);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    message.extend_from_slice(&fields);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        // Clients ask for TLS (or GSS) first and show no error text sent in
        // answer to that: decline, and refuse after the startup message,
        // as Postgres does.
        while let Some(request) = startup_request(&mut socket).await {
            if request != SSL_REQUEST && request != GSSENC_REQUEST {
                break;
            }
            if socket.write_all(b"N").await.is_err() {
                return;
            }
        }
        let _ = socket.write_all(&message).await;
        let _ = socket.shutdown().await;
    })
    .await;
}

/// The protocol code of an SSLRequest and a GSSENCRequest.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// Reads one untyped startup-phase message (length, code, body) and
/// returns its code; `None` on a closed socket or an implausible length.
async fn startup_request(socket: &mut tokio::net::TcpStream) -> Option<u32> {
    let mut head = [0u8; 8];
    socket.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    // A startup message is a few hundred bytes; anything else is not one.
    if !(8..=10_000).contains(&len) {
        return None;
    }
    let mut body = vec![0u8; len - 8];
    socket.read_exact(&mut body).await.ok()?;
    Some(code)
}

/// Serve Arrow Flight SQL on `listener` until `stopped`.
async fn serve_flight(
    listener: TcpListener,
    service: flight::FlightSql,
    tls: Option<tonic::transport::ServerTlsConfig>,
    stopped: watch::Receiver<bool>,
) {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = match builder.tls_config(tls) {
            Ok(builder) => builder,
            Err(error) => {
                warn!(%error, "flight sql tls setup failed; not serving flight sql");
                return;
            }
        };
    }
    // Bounds on what one client may hold open: streams per connection,
    // and a connection that stops answering pings is closed.
    let served = builder
        .max_concurrent_streams(Some(64))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(arrow_flight::flight_service_server::FlightServiceServer::new(service))
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY each call waits out a delayed ACK
            // (~40 ms twice: 96 ms for any query in BENCHMARKS.md).
            tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(std::time::Duration::from_secs(60))),
            guard::until_set(stopped),
        )
        .await;
    if let Err(error) = served {
        warn!(%error, "flight sql server stopped with an error");
    }
}

/// Flight SQL's TLS (tonic's, with rustls) from the same PEM files.
fn flight_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    // The same files the Postgres side loads; that parse names a bad file.
    tls_acceptor(cert, key)?;
    // tonic builds its rustls config with the process's default crypto
    // provider, which this build (ring for pgwire, aws-lc-rs for the HTTP
    // clients) cannot pick by itself; the Postgres side uses ring.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let cert = std::fs::read(cert).with_context(|| format!("sql.tls_cert {}", cert.display()))?;
    let key = std::fs::read(key).with_context(|| format!("sql.tls_key {}", key.display()))?;
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key)))
}

/// A TLS acceptor from a PEM certificate chain and private key.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<pgwire::tokio::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("sql.tls_cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "sql.tls_cert {}: no certificate in the file",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("sql.tls_key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("sql tls protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("sql.tls_cert and sql.tls_key do not make a usable certificate")?;
    Ok(pgwire::tokio::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_loopback_a_tls_server_refuses_plain_text() {
        let remote: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        let v6_remote: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let v6_local: std::net::IpAddr = "::1".parse().unwrap();
        assert!(plain_text_refused(true, false, remote));
        assert!(plain_text_refused(true, false, v6_remote));
        assert!(!plain_text_refused(true, true, remote));
        assert!(!plain_text_refused(true, false, local));
        assert!(!plain_text_refused(true, false, v6_local));
        // Without TLS the config refuses a non-loopback address at start.
        assert!(!plain_text_refused(false, false, remote));
    }
}
