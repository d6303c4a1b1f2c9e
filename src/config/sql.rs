//! The `[sql]` section: the SQL server data scientists connect to with
//! their own clients (`crate::sql`): where the Postgres wire protocol and
//! Arrow Flight SQL listen, who may log in, TLS, and the limits every query runs under;
//! validated once into [`SqlSettings`] (by `Config::validate` for `hubflow
//! run`, by [`SqlConfig::validate`] alone for `hubflow sql serve`, which
//! needs no ingestion secret).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::source::{Secret, SecretString};

pub const DEFAULT_PG_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5433);
pub const DEFAULT_FLIGHT_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50051);
/// The single user when `[sql] users` is empty.
pub const USER_ENV: &str = "HUBFLOW_SQL_USER";
/// That user's password.
pub const PASSWORD_ENV: &str = "HUBFLOW_SQL_PASSWORD";
/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;

/// The `[sql]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConfig {
    /// Start the SQL server inside `hubflow run`.
    pub enabled: bool,
    /// Postgres wire protocol address (port 0 picks a free port).
    pub pg_listen: SocketAddr,
    /// Serve Arrow Flight SQL too (ADBC, pandas, polars).
    pub flight: bool,
    /// Arrow Flight SQL address (gRPC; port 0 picks a free port).
    pub flight_listen: SocketAddr,
    /// Who may log in (SCRAM-SHA-256). Empty: the one user of
    /// `HUBFLOW_SQL_USER` / `HUBFLOW_SQL_PASSWORD`.
    pub users: Vec<SqlUserConfig>,
    /// PEM certificate chain and PKCS#8 key: TLS for every connection.
    /// Required when `pg_listen` is not a loopback address.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Memory all running queries may hold together (sorts and joins
    /// spill to disk beyond it, other operators fail with a clear error).
    pub memory_limit_mb: u64,
    /// Memory one statement may hold within that pool (Arrow Flight SQL;
    /// Postgres statements draw on the shared pool directly).
    pub statement_memory_limit_mb: u64,
    /// A statement (planning, execution and sending its rows) is cancelled
    /// after this long.
    pub query_timeout_ms: u64,
    /// A result longer than this ends with an error asking for a LIMIT.
    pub max_result_rows: u64,
    /// Connections served at once; more are refused.
    pub max_connections: usize,
    /// How often new tables and schema changes are picked up.
    pub refresh_ms: u64,
    /// Threads statements run on (their own, apart from ingestion and from
    /// the listener, so a heavy query cannot stall logins, cancel requests
    /// or the pipeline). 0: two per core: a statement's partitions use one
    /// per core (DataFusion's `target_partitions`), so one heavy statement
    /// leaves threads for the others and the OS shares the cores.
    pub query_threads: usize,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            enabled: false,
            pg_listen: DEFAULT_PG_LISTEN,
            flight: true,
            flight_listen: DEFAULT_FLIGHT_LISTEN,
            users: Vec::new(),
            tls_cert: None,
            tls_key: None,
            memory_limit_mb: 1024,
            statement_memory_limit_mb: 512,
            query_timeout_ms: 300_000,
            max_result_rows: 10_000_000,
            max_connections: 64,
            refresh_ms: 5_000,
            query_threads: 0,
        }
    }
}

/// One `[[sql.users]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlUserConfig {
    pub name: String,
    /// Literal, `{ env = "VAR" }` or `{ file = "path" }`.
    pub password: SecretString,
}

#[derive(Debug, thiserror::Error)]
pub enum SqlConfigError {
    #[error("sql.{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> SqlConfigError {
    SqlConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// A user who may log in; the password never prints.
#[derive(Debug, Clone)]
pub struct SqlUser {
    pub name: String,
    pub password: Secret,
}

/// The validated `[sql]` section.
#[derive(Debug, Clone)]
pub struct SqlSettings {
    pub enabled: bool,
    pub pg_listen: SocketAddr,
    /// Where Arrow Flight SQL listens, when served.
    pub flight_listen: Option<SocketAddr>,
    pub users: Vec<SqlUser>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub memory_limit_bytes: usize,
    pub statement_memory_limit_bytes: usize,
    pub query_timeout: Duration,
    pub max_result_rows: u64,
    pub max_connections: usize,
    pub refresh: Duration,
    pub query_threads: usize,
}

impl SqlConfig {
    /// Resolve the passwords and check the section. Without a user the
    /// server would let nobody in, so a section that starts a server must
    /// name one (here or in the environment); off loopback it needs TLS.
    pub fn validate(&self, serving: bool) -> Result<SqlSettings, SqlConfigError> {
        let mut users = Vec::new();
        for (i, user) in self.users.iter().enumerate() {
            if user.name.trim().is_empty() {
                return Err(invalid("users", format!("entry {i} has an empty name")));
            }
            if users.iter().any(|u: &SqlUser| u.name == user.name) {
                return Err(invalid(
                    "users",
                    format!("user {:?} is listed twice", user.name),
                ));
            }
            let password = user
                .password
                .resolve(&format!("sql.users[{i}].password"))
                .map_err(|e| invalid("users", e.to_string()))?;
            users.push(SqlUser {
                name: user.name.clone(),
                password,
            });
        }
        if users.is_empty()
            && let Ok(name) = std::env::var(USER_ENV)
            && !name.is_empty()
        {
            let password = SecretString::env(PASSWORD_ENV)
                .resolve("sql password")
                .map_err(|e| invalid("users", e.to_string()))?;
            users.push(SqlUser { name, password });
        }
        for user in &users {
            if user.password.expose().chars().count() < MIN_PASSWORD_LEN {
                return Err(invalid(
                    "users",
                    format!(
                        "the password of {:?} must be at least {MIN_PASSWORD_LEN} characters",
                        user.name
                    ),
                ));
            }
        }
        if serving && users.is_empty() {
            return Err(invalid(
                "users",
                format!(
                    "no user may log in: add [[sql.users]] or set {USER_ENV} and {PASSWORD_ENV}"
                ),
            ));
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "tls_cert",
                    "tls_cert and tls_key are set together or not at all",
                ));
            }
        };
        let flight_listen = self.flight.then_some(self.flight_listen);
        for (field, addr) in [
            ("pg_listen", Some(self.pg_listen)),
            ("flight_listen", flight_listen),
        ] {
            if let Some(addr) = addr
                && serving
                && tls.is_none()
                && !addr.ip().is_loopback()
            {
                return Err(invalid(
                    field,
                    format!(
                        "{addr} is not a loopback address: set tls_cert and tls_key so passwords and data are not sent in clear"
                    ),
                ));
            }
        }
        if flight_listen == Some(self.pg_listen) && self.pg_listen.port() != 0 {
            return Err(invalid(
                "flight_listen",
                format!(
                    "{} is pg_listen too: give Flight SQL its own port",
                    self.pg_listen
                ),
            ));
        }
        for (field, value) in [
            ("memory_limit_mb", self.memory_limit_mb),
            ("statement_memory_limit_mb", self.statement_memory_limit_mb),
            ("query_timeout_ms", self.query_timeout_ms),
            ("max_result_rows", self.max_result_rows),
            ("max_connections", self.max_connections as u64),
            ("refresh_ms", self.refresh_ms),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        if self.statement_memory_limit_mb > self.memory_limit_mb {
            return Err(invalid(
                "statement_memory_limit_mb",
                format!(
                    "{} is more than memory_limit_mb ({}), the pool it is drawn from",
                    self.statement_memory_limit_mb, self.memory_limit_mb
                ),
            ));
        }
        let mb = |n: u64| usize::try_from(n.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        Ok(SqlSettings {
            enabled: self.enabled,
            pg_listen: self.pg_listen,
            flight_listen,
            users,
            tls,
            memory_limit_bytes: mb(self.memory_limit_mb),
            statement_memory_limit_bytes: mb(self.statement_memory_limit_mb),
            query_timeout: Duration::from_millis(self.query_timeout_ms),
            max_result_rows: self.max_result_rows,
            max_connections: self.max_connections,
            refresh: Duration::from_millis(self.refresh_ms),
            query_threads: match self.query_threads {
                0 => 2 * std::thread::available_parallelism().map_or(2, usize::from),
                n => n,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_user(password: &str) -> SqlConfig {
        SqlConfig {
            users: vec![SqlUserConfig {
                name: "analyst".into(),
                password: SecretString::literal(password),
            }],
            ..SqlConfig::default()
        }
    }

    #[test]
    fn a_server_needs_a_user_with_a_real_password_and_tls_off_loopback() {
        if std::env::var(USER_ENV).is_err() {
            let err = SqlConfig::default().validate(true).unwrap_err().to_string();
            assert!(err.starts_with("sql.users: no user may log in"), "{err}");
            // Not serving (the section only read for its defaults): fine.
            assert!(SqlConfig::default().validate(false).is_ok());
        }
        let err = with_user("short").validate(true).unwrap_err().to_string();
        assert!(err.contains("at least 8"), "{err}");
        assert!(!err.contains("short"), "{err}");
        let settings = with_user("a-long-password").validate(true).unwrap();
        assert!(!format!("{settings:?}").contains("a-long-password"));
        let open = SqlConfig {
            pg_listen: "0.0.0.0:5433".parse().unwrap(),
            ..with_user("a-long-password")
        };
        let err = open.validate(true).unwrap_err().to_string();
        assert!(err.starts_with("sql.pg_listen:"), "{err}");
        let open_flight = SqlConfig {
            flight_listen: "0.0.0.0:50051".parse().unwrap(),
            ..with_user("a-long-password")
        };
        let err = open_flight.validate(true).unwrap_err().to_string();
        assert!(err.starts_with("sql.flight_listen:"), "{err}");
        let no_flight = SqlConfig {
            flight: false,
            ..open_flight
        };
        assert_eq!(no_flight.validate(true).unwrap().flight_listen, None);
        let same = SqlConfig {
            flight_listen: DEFAULT_PG_LISTEN,
            ..with_user("a-long-password")
        };
        assert!(
            same.validate(true)
                .unwrap_err()
                .to_string()
                .contains("own port")
        );
        let half = SqlConfig {
            tls_cert: Some("cert.pem".into()),
            ..with_user("a-long-password")
        };
        assert!(half.validate(true).is_err());
        let zero = SqlConfig {
            query_timeout_ms: 0,
            ..with_user("a-long-password")
        };
        assert!(
            zero.validate(true)
                .unwrap_err()
                .to_string()
                .contains("query_timeout_ms")
        );
        let greedy = SqlConfig {
            statement_memory_limit_mb: 2048,
            ..with_user("a-long-password")
        };
        let err = greedy.validate(true).unwrap_err().to_string();
        assert!(err.starts_with("sql.statement_memory_limit_mb"), "{err}");
        let twice = SqlConfig {
            users: [
                with_user("a-long-password").users,
                with_user("another-one").users,
            ]
            .concat(),
            ..SqlConfig::default()
        };
        assert!(
            twice
                .validate(true)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn defaults_round_trip_and_unknown_fields_are_refused() {
        let toml = toml::to_string(&SqlConfig::default()).unwrap();
        let back: SqlConfig = toml::from_str(&toml).unwrap();
        assert_eq!(back, SqlConfig::default());
        assert!(toml::from_str::<SqlConfig>("pg_listn = \"127.0.0.1:1\"").is_err());
        let parsed: SqlConfig = toml::from_str(
            "enabled = true\n[[users]]\nname = \"ana\"\npassword = { env = \"ANA_PW\" }\n",
        )
        .unwrap();
        assert_eq!(parsed.users[0].name, "ana");
    }
}
