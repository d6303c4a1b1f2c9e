//! The admin port: an HTTP/JSON server (axum) that `hubflow run` starts next
//! to the pipeline, for operators and `hubflow ctl`.
//!
//! Layout:
//! - this file: binding the listener, [`serve`] (the `[admin]` section and
//!   its validation live in `crate::config::admin`);
//! - [`auth`]: bearer-token checks (constant time; the token is never logged);
//! - [`state`]: [`AdminState`], what the handlers share (the running
//!   pipeline, log control, metrics, replay jobs, readiness, node drain);
//! - [`routes`]: the route table (one line per route: method, path, access,
//!   summary, body schema, handler) and every handler;
//! - [`answers`]: the typed answers the handlers return;
//! - [`openapi`]: the OpenAPI 3.1 document, built from the same table and
//!   from the request and answer types (JSON Schemas derived by schemars);
//! - [`status`]: readiness and the status document (`/status`, `/readyz`,
//!   `/events`);
//! - [`events`]: `GET /events`, the status document as server-sent events,
//!   from one producer per process however many browsers watch;
//! - [`ui`]: the operator console (`GET /ui`): a page, a script and a style
//!   sheet embedded in the binary, served with a strict
//!   Content-Security-Policy.
//!
//! Access: the probes (`/healthz`, `/readyz`) are open on every address,
//! for kubelets and container healthchecks, and so are the console's static
//! files (no data in them); read endpoints (`/metrics`,
//! `/status`, `/openapi.json`, listings) are open on a loopback address;
//! every control call needs `Authorization: Bearer <token>`, and on a
//! non-loopback address every call but the probes does. With no token configured, control calls are refused, and
//! the server refuses to start on a non-loopback address.

pub mod answers;
pub mod auth;
pub mod events;
pub mod openapi;
pub mod routes;
pub mod state;
pub mod status;
pub mod ui;

use std::future::Future;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::admin::AdminSettings;

pub use routes::{Access, Route, router, routes};
pub use state::{AdminParts, AdminState};

/// Default listen address when `[admin] listen` is not set.
/// Bind the admin listener. The default address falls back to a free
/// loopback port when taken (several nodes on one host); an explicit one
/// must bind.
pub async fn bind(settings: &AdminSettings) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(settings.listen).await {
        Ok(listener) => Ok(listener),
        Err(error)
            if !settings.listen_explicit && error.kind() == std::io::ErrorKind::AddrInUse =>
        {
            let listener = TcpListener::bind((settings.listen.ip(), 0))
                .await
                .map_err(|e| anyhow::anyhow!("binding the admin port: {e}"))?;
            warn!(
                wanted = %settings.listen,
                listening = %listener.local_addr()?,
                "default admin port in use; listening on a free port (set admin.listen to choose)"
            );
            Ok(listener)
        }
        Err(error) => Err(anyhow::anyhow!(
            "binding the admin port {}: {error}",
            settings.listen
        )),
    }
}

/// Serve the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && !state.auth().has_token() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("refusing to serve the admin port on non-loopback {addr} without a token"),
        ));
    }
    let app = router(state.clone(), !addr.ip().is_loopback());
    info!(%addr, token = state.auth().has_token(), "admin port listening");
    // Event streams never end by themselves: close them when the shutdown
    // begins, or the graceful shutdown would wait for every browser.
    let shutdown = async move {
        shutdown.await;
        state.close_streams();
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
