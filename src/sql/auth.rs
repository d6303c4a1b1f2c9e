//! Who may log in: SCRAM-SHA-256 against the `[sql]` users, the database
//! name check, and failed logins counted and logged (without the password,
//! which never reaches the server in SCRAM anyway).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::pgwire;
use pgwire::api::auth::sasl::scram::{SCRAM_ITERATIONS, gen_salted_password};
use pgwire::api::auth::{AuthSource, LoginInfo, Password};
use pgwire::api::{ClientInfo, ErrorHandler};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use rand::RngCore;
use tracing::warn;

use crate::config::sql::SqlUser;

/// The one database name clients connect to.
pub const DATABASE: &str = "hubflow";

/// The users of `[sql]`, each with a SCRAM salted password computed once at
/// start (the cleartext is not kept).
pub struct Users {
    salted: HashMap<String, Password>,
    /// Answered for an unknown user, so a wrong name fails exactly like a
    /// wrong password (no user enumeration).
    decoy: Password,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.salted.keys().collect();
        names.sort();
        f.debug_struct("Users").field("names", &names).finish()
    }
}

fn salted(password: &str) -> Password {
    let mut salt = vec![0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let hash = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
    Password::new(Some(salt), hash)
}

impl Users {
    pub fn new(users: &[SqlUser]) -> Users {
        let mut decoy = vec![0u8; 32];
        rand::rng().fill_bytes(&mut decoy);
        Users {
            salted: users
                .iter()
                .map(|u| (u.name.clone(), salted(u.password.expose())))
                .collect(),
            decoy: salted(&hex::encode(decoy)),
        }
    }
}

impl Users {
    /// Whether `password` is `user`'s (for Flight SQL's basic logins):
    /// the same salted hash SCRAM checks against, compared in constant
    /// time; an unknown user costs the same as a wrong password.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let known = self.salted.get(user);
        let stored = known.unwrap_or(&self.decoy);
        let salt = stored.salt().unwrap_or_default();
        let hash = gen_salted_password(password, salt, SCRAM_ITERATIONS);
        let expected = stored.password();
        let same = hash.len() == expected.len()
            && hash
                .iter()
                .zip(expected)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0;
        same && known.is_some()
    }
}

#[async_trait]
impl AuthSource for Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        if let Some(database) = login.database()
            && database != DATABASE
        {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "3D000".into(),
                format!("database \"{database}\" does not exist (the database is \"{DATABASE}\")"),
            ))));
        }
        let user = login.user().unwrap_or_default();
        Ok(self
            .salted
            .get(user)
            .cloned()
            .unwrap_or_else(|| self.decoy.clone()))
    }
}

/// Counts and logs what goes wrong on a connection: failed logins
/// (`hubflow_sql_failed_logins_total`) and protocol errors.
pub struct Errors;

impl ErrorHandler for Errors {
    fn on_error<C>(&self, client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        let peer = client.socket_addr();
        match error {
            PgWireError::InvalidPassword(user) => {
                // libpq leaves the user out of its SCRAM messages: name the
                // one from the startup message, as Postgres does.
                if user.is_empty()
                    && let Some(name) = client.metadata().get(pgwire::api::METADATA_USER)
                {
                    *user = name.clone();
                }
                metrics::counter!("hubflow_sql_failed_logins_total", "protocol" => "postgres")
                    .increment(1);
                warn!(user = %user, %peer, "sql login failed");
            }
            PgWireError::UserError(info) if info.code.starts_with("28") => {
                metrics::counter!("hubflow_sql_failed_logins_total", "protocol" => "postgres")
                    .increment(1);
                warn!(%peer, code = %info.code, "sql login failed");
            }
            PgWireError::UserError(_) | PgWireError::ApiError(_) => {}
            other => {
                metrics::counter!("hubflow_sql_protocol_errors_total").increment(1);
                warn!(%peer, error = %other, "sql protocol error");
            }
        }
    }
}

/// The users, shared by every connection's startup handler.
pub type SharedUsers = Arc<Users>;
