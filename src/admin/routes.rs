//! The admin API's route table and handlers.
//!
//! [`routes`] is the single list of endpoints: the router and the OpenAPI
//! document are both built from it, so adding an endpoint is one line there
//! (`Route::post(path, access, summary, handler).body(schema)`) and it is
//! served, guarded and documented at once.
//!
//! Errors are JSON (`{"error": {"code", "message"}}`) with a 4xx status for
//! bad input; a refused call changes nothing.

use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Json, Router};
use hubflow_actors::consumer::ConsumerMsg;
use hubflow_actors::fetcher::FetcherMsg;
use hubflow_supervision::root::TreeError;
use hubflow_supervision::{NodeKind, NodeState, StatusNode};
use ractor::{ActorRef, Message};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::answers::*;
use super::auth::AuthError;
use super::openapi::{self, Answering, SchemaFn, schema_of};
use super::state::AdminState;
use super::{events, status, ui};
use crate::dlq::{Dlq, DlqError, ListFilter};
use crate::replay::{ReplayError, ReplayProgress, ReplayRequest};
use crate::swap::transform as hot_swap;
use crate::telemetry::{self, LogError};
use crate::trace::TraceError;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Liveness and readiness: open on every address, so a kubelet, a load
    /// balancer or a container healthcheck can probe without the token.
    /// They answer a state, never data or configuration.
    Probe,
    /// Open on a loopback address; needs the token on any other.
    Read,
    /// Always needs the token (changes the running state).
    Control,
    /// The console's static files (page, script, style sheet): open on
    /// every address, so a browser can load the page and send the token
    /// from it. They hold no data and no configuration.
    Asset,
}

/// One endpoint: how it is served and how it is documented.
pub struct Route {
    pub method: Method,
    /// axum path syntax (`/replay/{id}`, `/dlq/{*id}`).
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
    /// JSON Schema of the request body, for routes that take one.
    pub body: Option<SchemaFn>,
    /// JSON Schema of a successful answer: the type the handler returns
    /// (`None` for answers that are not JSON).
    pub answer: SchemaFn,
    /// Status of a successful answer.
    pub success: StatusCode,
    /// Media type of a successful answer.
    pub media: &'static str,
    /// Error statuses beyond those its access, body and path imply (see
    /// `openapi::responses`).
    pub fails: &'static [u16],
    handler: MethodRouter<AdminState>,
}

impl Route {
    pub fn get<H, T, Args>(
        path: &'static str,
        access: Access,
        summary: &'static str,
        handler: H,
    ) -> Self
    where
        H: axum::handler::Handler<T, AdminState> + Answering<Args>,
        T: 'static,
    {
        Route {
            method: Method::GET,
            path,
            access,
            summary,
            body: None,
            answer: <H as Answering<Args>>::answer_schema,
            success: StatusCode::OK,
            media: "application/json",
            fails: &[],
            handler: axum::routing::get(handler),
        }
    }

    pub fn post<H, T, Args>(
        path: &'static str,
        access: Access,
        summary: &'static str,
        handler: H,
    ) -> Self
    where
        H: axum::handler::Handler<T, AdminState> + Answering<Args>,
        T: 'static,
    {
        Route {
            method: Method::POST,
            path,
            access,
            summary,
            body: None,
            answer: <H as Answering<Args>>::answer_schema,
            success: StatusCode::OK,
            media: "application/json",
            fails: &[],
            handler: axum::routing::post(handler),
        }
    }

    /// The request body: type `B`, read with [`JsonBody`].
    pub fn body<B: JsonSchema>(mut self) -> Self {
        self.body = Some(schema_of::<B>);
        self
    }

    /// A success status other than 200 (e.g. 202 for background work).
    pub fn success(mut self, status: StatusCode) -> Self {
        self.success = status;
        self
    }

    /// Error statuses this route answers beyond those implied.
    pub fn fails(mut self, statuses: &'static [u16]) -> Self {
        self.fails = statuses;
        self
    }

    /// A success answer that is not JSON (e.g. `text/plain`).
    pub fn media(mut self, media: &'static str) -> Self {
        self.media = media;
        self
    }
}

/// Every endpoint of the admin API.
pub fn routes() -> Vec<Route> {
    use Access::{Asset, Control, Probe, Read};
    vec![
        Route::get("/healthz", Probe, "The process is alive", healthz),
        Route::get("/readyz", Probe, "The pipeline is started, its root supervisor has not failed and every stage can write (503 with the reason and the blocked actors otherwise)", readyz),
        Route::get("/metrics", Read, "Prometheus text exposition of every metric", metrics).media("text/plain"),
        Route::get("/status", Read, "Supervision status tree, progress from durable state, versions and replay jobs", status),
        Route::get("/events", Read, "Server-sent events: the /status document (plus ts_ms) as a `status` event whenever the tree changes, and at least every second", events::stream).media("text/event-stream"),
        Route::get("/ui", Asset, "The operator console (a single page; it reads /events and calls the control routes with the token typed into it)", ui::page).media("text/html"),
        Route::get("/ui/app.js", Asset, "The console's script", ui::script).media("text/javascript"),
        Route::get("/ui/app.css", Asset, "The console's style sheet", ui::style).media("text/css"),
        Route::get("/openapi.json", Read, "This document", openapi_json),
        Route::get("/auth/check", Control, "Answers 200 when the bearer token is accepted and changes nothing (the console checks the token it is given)", auth_check),
        Route::post("/pause", Control, "Pause one source's fetcher or all ingest (every partition consumer)", pause).body::<PauseRequest>(),
        Route::post("/resume", Control, "Resume one source's fetcher or all ingest", resume).body::<PauseRequest>(),
        Route::post("/drain", Control, "Drain a group or actor by path (it stays stopped until restarted); without a path, drain the node and exit", drain).body::<DrainRequest>().fails(&[503]),
        Route::post("/actors/kill", Control, "Kill the actor or subtree at a path, as a crash would (it is restarted per its policy)", kill).body::<ActorRequest>().fails(&[503]),
        Route::post("/actors/restart", Control, "Start the actor or group at a path afresh (after a drain or failure, or gracefully while running)", restart).body::<ActorRequest>().fails(&[503]),
        Route::post("/actors/panic", Control, "Fault injection: the actor at a path panics on its next message", panic_actor).body::<ActorRequest>().fails(&[503]),
        Route::get("/log-level", Read, "The log filter in effect", get_log_level).fails(&[503]),
        Route::post("/log-level", Control, "Replace the log filter (EnvFilter directives)", set_log_level).body::<LogLevelRequest>().fails(&[503]),
        Route::post("/replay", Control, "Start a background replay of raw blobs of one partition into curated", start_replay).body::<ReplayRequest>().success(StatusCode::ACCEPTED).fails(&[422, 503]),
        Route::get("/replay", Read, "Every replay job and its progress", list_replays),
        Route::get("/replay/{id}", Read, "One replay job's progress", get_replay),
        Route::get("/dlq", Read, "List dead letters (query: stage, pending_only, limit)", list_dlq).fails(&[400]),
        Route::get("/trace", Read, "Lineage of one record (query: source and id, or file and row of a curated file): the request that fetched it, hub partition and sequence, raw blob and position, curated file and transform version, dead letters and replays that touched it", trace).fails(&[400, 404]),
        Route::get("/dlq/{*id}", Read, "Inspect one dead letter (id = <stage>/<key>)", get_dlq),
        Route::get("/transform", Read, "The transformation spec this node runs, drift from its config file, the durable spec log (every version: who, when, dry run, outcome) and, per version, the raw ranges it curated and replayed", get_transform),
        Route::post("/transform", Control, "Hot-swap the transformation spec on every node: validate, dry-run on the newest raw blob, propose it in the durable spec log (409 if another swap won or is in probation), each node drains and replaces its transform group, one node's failure in the probation rolls back everywhere", swap_transform).body::<SwapRequest>().fails(&[422]),
        Route::post("/transform/dry-run", Control, "Run a transform on the newest raw blob without swapping it in: the first rows before (the batch table the SQL reads) and after, rows in and out, output columns; refused (422) like a swap would be. Nothing is written", dry_run_transform).body::<DryRunRequest>().fails(&[422]),
        Route::post("/transform/rollback", Control, "Swap back to an earlier version (default: the newest promoted one before the active version), with the same dry run and probation as a swap", rollback_transform).body::<RollbackRequest>().fails(&[422]),
        Route::post("/transform/backfill", Control, "Replay everything curated since version `since` first ran, with version `with` (default: the active one), after a dry run; one replay job per partition", backfill_transform).body::<BackfillRequest>().success(StatusCode::ACCEPTED).fails(&[422]),
        Route::get("/sources", Read, "Each source's settings version on this node, and its durable spec log (every version: who, when, outcome)", get_sources),
        Route::post("/sources/{name}", Control, "Hot-swap a source's settings (the [[sources]] table as JSON; secrets as env or file references): validated, kept in the source's durable spec log (409 if another swap won or is in probation), the node running its fetcher replaces it from its saved cursor and rolls it back if it fails its probation", swap_source).body::<SourceSwapRequest>().fails(&[422]),
        Route::post("/dlq/redrive", Control, "Republish a transform dead letter to hub ingest (optionally with a corrected payload) and mark it redriven", redrive_dlq).body::<RedriveRequest>().fails(&[422, 503]),
    ]
}

/// The admin router. `require_token_everywhere` is set on non-loopback
/// addresses: then read routes need the token too (probes never do).
pub fn router(state: AdminState, require_token_everywhere: bool) -> Router {
    let mut router = Router::new();
    for route in routes() {
        let mut handler = route.handler;
        let needs_token = match route.access {
            Access::Probe | Access::Asset => false,
            Access::Read => require_token_everywhere,
            Access::Control => true,
        };
        if needs_token {
            handler =
                handler.route_layer(middleware::from_fn_with_state(state.clone(), require_token));
        }
        router = router.route(route.path, handler);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

// ---------------------------------------------------------------------------
// Errors, auth and body parsing
// ---------------------------------------------------------------------------

/// A JSON error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": { "code": self.code, "message": self.message } }));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<TreeError> for ApiError {
    fn from(e: TreeError) -> Self {
        match &e {
            TreeError::UnknownPath(_) => ApiError::not_found(e.to_string()),
            TreeError::NotRunning(_) | TreeError::Rejected(_) => ApiError::conflict(e.to_string()),
            TreeError::Unreachable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unreachable",
                e.to_string(),
            ),
        }
    }
}

impl From<DlqError> for ApiError {
    fn from(e: DlqError) -> Self {
        match &e {
            DlqError::NotFound(_) => ApiError::not_found(e.to_string()),
            DlqError::InvalidId(_) => ApiError::bad_request(e.to_string()),
            DlqError::NotRedrivable { .. } | DlqError::AlreadyRedriven { .. } => {
                ApiError::conflict(e.to_string())
            }
            DlqError::InvalidPayload(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_payload",
                e.to_string(),
            ),
            DlqError::Publish(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "hub_unavailable",
                e.to_string(),
            ),
            DlqError::Damaged { .. } | DlqError::Blob(_) => ApiError::internal(e.to_string()),
        }
    }
}

impl From<TraceError> for ApiError {
    fn from(e: TraceError) -> Self {
        match &e {
            TraceError::UnknownSource(_)
            | TraceError::NotFound { .. }
            | TraceError::NoSuchFile(_) => ApiError::not_found(e.to_string()),
            TraceError::BadFile { .. } => ApiError::bad_request(e.to_string()),
            TraceError::Other(error) => ApiError::internal(format!("{error:#}")),
        }
    }
}

impl From<ReplayError> for ApiError {
    fn from(e: ReplayError) -> Self {
        match &e {
            ReplayError::UnknownPartition { .. } | ReplayError::InvalidRange(_) => {
                ApiError::bad_request(e.to_string())
            }
            ReplayError::UnknownJob(_) => ApiError::not_found(e.to_string()),
            ReplayError::Failed(error) => ApiError::internal(format!("{error:#}")),
        }
    }
}

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    match state.auth().check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => {
            let status = match error {
                AuthError::NoTokenConfigured => StatusCode::FORBIDDEN,
                AuthError::Missing | AuthError::Invalid => StatusCode::UNAUTHORIZED,
            };
            warn!(method = %request.method(), path = request.uri().path(), reason = %error, "admin call refused");
            ApiError::new(status, "unauthorized", error.to_string()).into_response()
        }
    }
}

/// `Json<T>` whose rejection is a JSON [`ApiError`] (400/415/422 with the
/// parser's message).
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(ApiError::new(
                rejection.status(),
                "invalid_body",
                rejection.body_text(),
            )),
        }
    }
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint {method} {}; see GET /openapi.json",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{method} is not allowed on {}; see GET /openapi.json",
            uri.path()
        ),
    )
}

// ---------------------------------------------------------------------------
// Read endpoints
// ---------------------------------------------------------------------------

async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, Json<Readiness>) {
    let tree = state.pipeline().root.snapshot();
    let (reason, blocks) = status::readiness(&state, &tree);
    let status = match reason {
        None => StatusCode::OK,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let answer = Readiness {
        ready: reason.is_none(),
        cannot_write: reason.is_some().then_some(blocks),
        reason,
    };
    (status, Json(answer))
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let pipeline = state.pipeline();
    let tree = pipeline.root.snapshot();
    {
        let mut computed = state.pipeline_metrics().lock().await;
        let refresh = computed.refresh(&pipeline.settings, &pipeline.backends, &tree);
        match tokio::time::timeout(Duration::from_secs(5), refresh).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                warn!(error = %format!("{error:#}"), "cannot refresh pipeline metrics")
            }
            Err(_) => warn!("refreshing pipeline metrics timed out"),
        }
    }
    let text = telemetry::render_metrics(state.metrics_handle());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

async fn status(State(state): State<AdminState>) -> Json<StatusDocument> {
    let progress = state.pipeline().progress().await;
    Json(status::document(&state, progress))
}

/// Reached only past the token check.
async fn auth_check() -> Json<TokenCheck> {
    Json(TokenCheck { token: "accepted" })
}

async fn openapi_json() -> Json<Value> {
    Json(openapi::document(&routes()))
}

// ---------------------------------------------------------------------------
// Control: pause / resume
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// A source name (its fetcher is `fetcher-<name>`).
    #[serde(default)]
    pub source: Option<String>,
    /// Every partition consumer.
    #[serde(default)]
    pub ingest: bool,
}

fn running_workers<'a>(tree: &'a StatusNode, name: &dyn Fn(&str) -> bool) -> Vec<&'a StatusNode> {
    tree.walk()
        .into_iter()
        .filter(|n| n.kind == NodeKind::Worker && name(&n.name))
        .collect()
}

fn send<M: Message>(state: &AdminState, path: &str, msg: M) -> Result<(), ApiError> {
    let cell = state
        .pipeline()
        .root
        .status()
        .find(path)
        .and_then(|h| h.cell())
        .ok_or_else(|| ApiError::conflict(format!("actor at {path} is not running")))?;
    ActorRef::<M>::from(cell)
        .send_message(msg)
        .map_err(|e| ApiError::conflict(format!("actor at {path} did not take the message: {e}")))
}

fn pause_or_resume(
    state: &AdminState,
    req: PauseRequest,
    pause: bool,
) -> Result<Json<PauseAnswer>, ApiError> {
    let verb = if pause { "paused" } else { "resumed" };
    let tree = state.pipeline().root.snapshot();
    let paths: Vec<String> = match (req.source, req.ingest) {
        (Some(_), true) | (None, false) => {
            return Err(ApiError::bad_request(
                "give exactly one of \"source\" (a source name) or \"ingest\": true",
            ));
        }
        (Some(source), false) => {
            let wanted = format!("fetcher-{source}");
            let found = running_workers(&tree, &|n| n == wanted);
            let Some(node) = found.first() else {
                let known: Vec<String> = running_workers(&tree, &|n| n.starts_with("fetcher-"))
                    .iter()
                    .map(|n| n.name.trim_start_matches("fetcher-").to_string())
                    .collect();
                return Err(ApiError::not_found(format!(
                    "no source named {source:?} (sources: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            };
            // Recorded first, so a fetcher restarted from now on keeps it.
            state.pipeline().boards.pauses.set_source(&source, pause);
            send(
                state,
                &node.path,
                if pause {
                    FetcherMsg::Pause
                } else {
                    FetcherMsg::Resume
                },
            )?;
            vec![node.path.clone()]
        }
        (None, true) => {
            // Recorded first, so consumers (re)started from now on keep it.
            state.pipeline().boards.pauses.set_ingest(pause);
            let consumers = running_workers(&tree, &|n| n == "consumer");
            let mut done = Vec::new();
            for node in consumers.iter().filter(|n| n.state == NodeState::Running) {
                let msg = if pause {
                    ConsumerMsg::Pause
                } else {
                    ConsumerMsg::Resume
                };
                match send(state, &node.path, msg) {
                    Ok(()) => done.push(node.path.clone()),
                    // Restarting right now: it starts in the recorded state.
                    Err(error) => warn!(
                        path = node.path,
                        error = error.message,
                        "consumer not reached"
                    ),
                }
            }
            if done.is_empty() {
                return Err(ApiError::conflict(
                    "no partition consumer is running on this node",
                ));
            }
            done
        }
    };
    info!(?paths, verb, "admin pause/resume");
    Ok(Json(match pause {
        true => PauseAnswer {
            paused: Some(paths),
            resumed: None,
        },
        false => PauseAnswer {
            paused: None,
            resumed: Some(paths),
        },
    }))
}

async fn pause(
    State(state): State<AdminState>,
    JsonBody(req): JsonBody<PauseRequest>,
) -> Result<Json<PauseAnswer>, ApiError> {
    pause_or_resume(&state, req, true)
}

async fn resume(
    State(state): State<AdminState>,
    JsonBody(req): JsonBody<PauseRequest>,
) -> Result<Json<PauseAnswer>, ApiError> {
    pause_or_resume(&state, req, false)
}

// ---------------------------------------------------------------------------
// Control: drain, kill, restart, panic
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Path of the group or actor; absent: the whole node.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub deadline_secs: Option<u64>,
}

async fn drain(
    State(state): State<AdminState>,
    JsonBody(req): JsonBody<DrainRequest>,
) -> Result<(StatusCode, Json<DrainAnswer>), ApiError> {
    let deadline = match req.deadline_secs {
        Some(0) => return Err(ApiError::bad_request("deadline_secs must be at least 1")),
        Some(s) if s > 3_600 => {
            return Err(ApiError::bad_request("deadline_secs must be at most 3600"));
        }
        Some(s) => Duration::from_secs(s),
        None => state.drain_deadline(),
    };
    match req.path {
        None => {
            info!("admin: node drain requested");
            state.request_node_drain();
            let answer = DrainAnswer {
                draining: Some("node"),
                drained: None,
            };
            Ok((StatusCode::ACCEPTED, Json(answer)))
        }
        Some(path) => {
            info!(path, ?deadline, "admin: drain");
            state.pipeline().root.drain(&path, deadline).await?;
            let answer = DrainAnswer {
                draining: None,
                drained: Some(path),
            };
            Ok((StatusCode::OK, Json(answer)))
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActorRequest {
    pub path: String,
}

async fn kill(
    State(state): State<AdminState>,
    JsonBody(req): JsonBody<ActorRequest>,
) -> Result<Json<Killed>, ApiError> {
    let root = &state.pipeline().root;
    if req.path == root.status().path() {
        return Err(ApiError::conflict(
            "the root cannot be killed; drain the node (POST /drain without a path)",
        ));
    }
    root.kill(&req.path)?;
    info!(path = req.path, "admin: killed");
    Ok(Json(Killed { killed: req.path }))
}

async fn restart(
    State(state): State<AdminState>,
    JsonBody(req): JsonBody<ActorRequest>,
) -> Result<Json<Restarted>, ApiError> {
    state.pipeline().root.restart(&req.path).await?;
    info!(path = req.path, "admin: restarted");
    Ok(Json(Restarted {
        restarted: req.path,
    }))
}

async fn panic_actor(
    State(state): State<AdminState>,
    JsonBody(req): JsonBody<ActorRequest>,
) -> Result<Json<PanicInjected>, ApiError> {
    state.pipeline().root.inject_panic(&req.path)?;
    info!(path = req.path, "admin: panic injected");
    Ok(Json(PanicInjected {
        panic_injected: req.path,
    }))
}

// ---------------------------------------------------------------------------
// Control: transformation spec (hot swap)
// ---------------------------------------------------------------------------

async fn get_transform(
    State(state): State<AdminState>,
) -> Result<Json<TransformDocument>, ApiError> {
    use crate::transform::{SPEC_RECORD, TransformSpec};
    let pipeline = state.pipeline();
    let local = pipeline.settings.transform.status();
    let log = hot_swap::store(&pipeline.settings, &pipeline.backends)
        .load::<TransformSpec>(SPEC_RECORD)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map(|r| r.log);
    let ranges = hot_swap::ranges(&pipeline.settings, &pipeline.backends)
        .await
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    Ok(Json(TransformDocument {
        node: local,
        log,
        ranges,
    }))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwapRequest {
    pub version: String,
    #[serde(default)]
    pub sql: Option<String>,
    /// Seconds the new version must stay healthy (default 10).
    #[serde(default)]
    #[schemars(range(min = 1, max = 3600))]
    pub probation_secs: Option<u64>,
}

/// Who is asking, from the `X-Hubflow-Operator` header (`hubflow ctl` sends
/// the user's name): at most 64 printable characters, else `admin`.
fn operator(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("x-hubflow-operator")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 64 && !v.chars().any(char::is_control))
        .unwrap_or("admin")
        .to_string()
}

fn swap_options(
    state: &AdminState,
    headers: &axum::http::HeaderMap,
    probation_secs: Option<u64>,
    origin: crate::specs::Origin,
) -> Result<hot_swap::SwapOptions, ApiError> {
    let mut options = hot_swap::SwapOptions::default();
    if let Some(secs) = probation_secs {
        if !(1..=3_600).contains(&secs) {
            return Err(ApiError::bad_request("probation_secs must be 1..=3600"));
        }
        options.probation = Duration::from_secs(secs);
    }
    options.drain_deadline = state.drain_deadline();
    options.by = operator(headers);
    options.origin = origin;
    Ok(options)
}

fn transform_error(e: crate::transform::TransformError) -> ApiError {
    use crate::specs::SpecError;
    use crate::transform::TransformError;
    match e {
        e @ (TransformError::Invalid(_) | TransformError::DryRun { .. }) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_transform",
            e.to_string(),
        ),
        e @ TransformError::Store(SpecError::UnknownVersion(_)) => {
            ApiError::not_found(e.to_string())
        }
        e @ (TransformError::Busy(_) | TransformError::Conflict(_)) => {
            ApiError::conflict(e.to_string())
        }
        e => ApiError::internal(e.to_string()),
    }
}

async fn run_swap(
    state: &AdminState,
    spec: crate::transform::TransformSpec,
    options: hot_swap::SwapOptions,
) -> Result<Json<hot_swap::SwapOutcome>, ApiError> {
    let outcome = hot_swap::swap(state.pipeline(), spec, options)
        .await
        .map_err(transform_error)?;
    if let hot_swap::SwapOutcome::Promoted { version, .. } = &outcome {
        state.set_version("transform", version);
    }
    Ok(Json(outcome))
}

async fn swap_transform(
    State(state): State<AdminState>,
    headers: axum::http::HeaderMap,
    JsonBody(req): JsonBody<SwapRequest>,
) -> Result<Json<hot_swap::SwapOutcome>, ApiError> {
    let options = swap_options(
        &state,
        &headers,
        req.probation_secs,
        crate::specs::Origin::Swap,
    )?;
    let spec = crate::transform::TransformSpec {
        version: req.version,
        sql: req.sql,
    };
    run_swap(&state, spec, options).await
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunRequest {
    /// The SQL to try (over the table `batch`); absent or empty: the
    /// identity.
    #[serde(default)]
    pub sql: Option<String>,
    /// The label its rows carry in `_transform_version` (default `dry-run`).
    #[serde(default = "dry_run_label")]
    pub version: String,
    /// Rows to show on each side (default 5, at most 100).
    #[serde(default = "dry_run_rows")]
    #[schemars(range(min = 1, max = 100))]
    pub rows: usize,
}

fn dry_run_label() -> String {
    "dry-run".into()
}

fn dry_run_rows() -> usize {
    5
}

async fn dry_run_transform(
    State(state): State<AdminState>,
    JsonBody(req): JsonBody<DryRunRequest>,
) -> Result<Json<DryRunPreview>, ApiError> {
    use crate::swap::preview;
    if !(1..=preview::MAX_ROWS).contains(&req.rows) {
        return Err(ApiError::bad_request(format!(
            "rows must be 1..={}",
            preview::MAX_ROWS
        )));
    }
    let spec = crate::transform::TransformSpec {
        version: req.version,
        sql: req.sql,
    };
    let found = preview::preview(state.pipeline(), &spec, req.rows)
        .await
        .map_err(transform_error)?;
    Ok(Json(DryRunPreview {
        dry_run: found.dry_run,
        before: found.before,
        after: found.after,
    }))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to return to; absent: the newest promoted one before the
    /// active version.
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    #[schemars(range(min = 1, max = 3600))]
    pub probation_secs: Option<u64>,
}

async fn rollback_transform(
    State(state): State<AdminState>,
    headers: axum::http::HeaderMap,
    JsonBody(req): JsonBody<RollbackRequest>,
) -> Result<Json<hot_swap::SwapOutcome>, ApiError> {
    use crate::transform::{SPEC_RECORD, TransformSpec};
    let options = swap_options(
        &state,
        &headers,
        req.probation_secs,
        crate::specs::Origin::Rollback,
    )?;
    let pipeline = state.pipeline();
    let log = hot_swap::store(&pipeline.settings, &pipeline.backends)
        .load::<TransformSpec>(SPEC_RECORD)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::internal("the spec log is not written yet"))?
        .log;
    let spec = hot_swap::rollback_target(&log, req.to.as_deref()).map_err(transform_error)?;
    info!(to = spec.version, "admin: transform rollback");
    run_swap(&state, spec, options).await
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    /// Rewrite everything curated since this version first ran.
    pub since: String,
    /// With this version (default: the active one).
    #[serde(default)]
    pub with: Option<String>,
}

async fn backfill_transform(
    State(state): State<AdminState>,
    JsonBody(req): JsonBody<BackfillRequest>,
) -> Result<(StatusCode, Json<BackfillStarted>), ApiError> {
    let pipeline = state.pipeline();
    let with = hot_swap::resolve(&pipeline.settings, &pipeline.backends, req.with.as_deref())
        .await
        .map_err(transform_error)?;
    // The same safety as a swap: the version must run on real data first.
    let dry = hot_swap::dry_run(pipeline, &with.version, with.transform.clone())
        .await
        .map_err(transform_error)?;
    let log = hot_swap::store(&pipeline.settings, &pipeline.backends)
        .load::<crate::transform::TransformSpec>(crate::transform::SPEC_RECORD)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::internal("the spec log is not written yet"))?
        .log;
    let labels = hot_swap::versions_since(&log, &req.since).map_err(transform_error)?;
    let (plan, forgotten) = hot_swap::backfill_plan(
        &pipeline.settings,
        &pipeline.backends,
        &labels,
        &with.version,
    )
    .await
    .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    let partitions = pipeline
        .backends
        .ingest
        .partition_ids()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .len();
    let mut jobs = Vec::new();
    for request in plan {
        let mut ctx = state.replay_context();
        ctx.transform = with.clone();
        let (partition, from, to) = (
            request.partition,
            request.from_sequence,
            request.to_sequence,
        );
        let id = state.replays().start(ctx, partitions, request).await?;
        jobs.push(BackfillJob {
            id,
            url: format!("/replay/{id}"),
            partition,
            from_sequence: from,
            to_sequence: to,
        });
    }
    info!(
        since = req.since,
        with = with.version,
        jobs = jobs.len(),
        "admin: transform backfill started"
    );
    let started = BackfillStarted {
        since: req.since,
        with: with.version,
        dry_run: dry,
        jobs,
        partitions_forgotten: forgotten,
    };
    Ok((StatusCode::ACCEPTED, Json(started)))
}

async fn get_sources(State(state): State<AdminState>) -> Result<Json<Sources>, ApiError> {
    let pipeline = state.pipeline();
    let logs = crate::swap::source::logs(&pipeline.settings, &pipeline.backends)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(Sources { sources: logs }))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceSwapRequest {
    /// A label for these settings in the status tree.
    pub version: String,
    /// A `[[sources]]` table as JSON (see the README's source reference);
    /// secrets as env or file references.
    #[schemars(with = "serde_json::Map<String, Value>")]
    pub source: crate::source::HttpSourceConfig,
    #[serde(default)]
    #[schemars(range(min = 1, max = 3600))]
    pub probation_secs: Option<u64>,
}

async fn swap_source(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    JsonBody(req): JsonBody<SourceSwapRequest>,
) -> Result<Json<crate::swap::source::SourceSwapOutcome>, ApiError> {
    use crate::swap::source::SourceSpecError;
    if req.source.name != name {
        return Err(ApiError::bad_request(format!(
            "the body names source {:?}, the path {name:?}",
            req.source.name
        )));
    }
    let probation = Duration::from_secs(req.probation_secs.unwrap_or(10).clamp(1, 3_600));
    match crate::swap::source::swap(
        state.pipeline(),
        req.source,
        &req.version,
        probation,
        &operator(&headers),
    )
    .await
    {
        Ok(outcome) => Ok(Json(outcome)),
        Err(e @ SourceSpecError::Invalid(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_source",
            e.to_string(),
        )),
        Err(e @ SourceSpecError::Unknown(_)) => Err(ApiError::not_found(e.to_string())),
        Err(e @ (SourceSpecError::Conflict(_) | SourceSpecError::Busy(_))) => {
            Err(ApiError::conflict(e.to_string()))
        }
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

// ---------------------------------------------------------------------------
// Control: log level
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogLevelRequest {
    pub filter: String,
}

fn log_control(state: &AdminState) -> Result<&telemetry::LogControl, ApiError> {
    state.logs().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this process has no reloadable log filter",
        )
    })
}

async fn get_log_level(State(state): State<AdminState>) -> Result<Json<LogFilter>, ApiError> {
    let filter = log_control(&state)?.current();
    Ok(Json(LogFilter { filter }))
}

async fn set_log_level(
    State(state): State<AdminState>,
    JsonBody(req): JsonBody<LogLevelRequest>,
) -> Result<Json<LogFilter>, ApiError> {
    let logs = log_control(&state)?;
    logs.set(&req.filter).map_err(|e| match e {
        LogError::InvalidFilter { .. } => ApiError::bad_request(e.to_string()),
        LogError::Unavailable(_) => ApiError::internal(e.to_string()),
    })?;
    Ok(Json(LogFilter {
        filter: logs.current(),
    }))
}

// ---------------------------------------------------------------------------
// Replay
// ---------------------------------------------------------------------------

async fn start_replay(
    State(state): State<AdminState>,
    JsonBody(req): JsonBody<ReplayRequest>,
) -> Result<(StatusCode, Json<ReplayStarted>), ApiError> {
    let partitions = state
        .pipeline()
        .backends
        .ingest
        .partition_ids()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "hub_unavailable",
                e.to_string(),
            )
        })?
        .len();
    // The version is chosen explicitly: the request's, else the active one.
    let pipeline = state.pipeline();
    let mut ctx = state.replay_context();
    ctx.transform = hot_swap::resolve(
        &pipeline.settings,
        &pipeline.backends,
        req.version.as_deref(),
    )
    .await
    .map_err(transform_error)?;
    let version = ctx.transform.version.clone();
    let id = state.replays().start(ctx, partitions, req).await?;
    let started = ReplayStarted {
        id,
        url: format!("/replay/{id}"),
        transform_version: version,
    };
    Ok((StatusCode::ACCEPTED, Json(started)))
}

async fn list_replays(State(state): State<AdminState>) -> Json<Replays> {
    Json(Replays {
        replays: state.replays().list(),
    })
}

async fn get_replay(
    State(state): State<AdminState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Json<ReplayProgress>, ApiError> {
    let Path(id) =
        id.map_err(|e| ApiError::bad_request(format!("replay id: {}", e.body_text())))?;
    Ok(Json(state.replays().get(id)?))
}

// ---------------------------------------------------------------------------
// Dead letters
// ---------------------------------------------------------------------------

fn dlq(state: &AdminState) -> Dlq {
    let p = state.pipeline();
    Dlq::of(&p.settings, &p.backends)
}

async fn list_dlq(
    State(state): State<AdminState>,
    filter: Result<Query<ListFilter>, QueryRejection>,
) -> Result<Json<DeadLetters>, ApiError> {
    let Query(filter) = filter.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let dead_letters = dlq(&state).list(&filter).await?;
    Ok(Json(DeadLetters { dead_letters }))
}

async fn get_dlq(
    State(state): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<crate::dlq::DeadLetterDetail>, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(dlq(&state).inspect(&id).await?))
}

/// The query of `GET /trace`: a record (`source` and `id`) or a curated
/// row (`file` and `row`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceQuery {
    pub source: Option<String>,
    pub id: Option<String>,
    pub file: Option<String>,
    pub row: Option<usize>,
}

async fn trace(
    State(state): State<AdminState>,
    query: Result<Query<TraceQuery>, QueryRejection>,
) -> Result<Json<crate::trace::Trace>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let p = state.pipeline();
    let found = match q {
        TraceQuery {
            source: Some(source),
            id: Some(id),
            file: None,
            row: None,
        } => crate::trace::trace(&p.settings, &p.backends, &source, &id).await?,
        TraceQuery {
            source: None,
            id: None,
            file: Some(file),
            row: Some(row),
        } => crate::trace::trace_row(&p.settings, &p.backends, &file, row).await?,
        _ => {
            return Err(ApiError::bad_request(
                "give source and id, or file and row (e.g. /trace?source=demo&id=evt-1)",
            ));
        }
    };
    Ok(Json(found))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    pub id: String,
    /// A corrected payload (a JSON object) to publish instead of the stored one.
    #[serde(default)]
    pub payload: Option<Value>,
}

async fn redrive_dlq(
    State(state): State<AdminState>,
    JsonBody(req): JsonBody<RedriveRequest>,
) -> Result<Json<crate::dlq::RedriveOutcome>, ApiError> {
    Ok(Json(
        dlq(&state).redrive(&req.id, req.payload.as_ref()).await?,
    ))
}
