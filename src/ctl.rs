//! `hubflow ctl`: the admin port's command-line client.
//!
//! The address and token come from `--addr`/`--token` or the environment
//! (`HUBFLOW_ADMIN_ADDR`, `HUBFLOW_ADMIN_TOKEN`). Output is readable text, or
//! the server's JSON with `--json`. `ctl replay` and `ctl transform
//! backfill` follow the jobs they started (a progress bar per job with
//! rate and ETA on a terminal, a plain line per change otherwise) unless
//! `--no-wait`.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Default address (the server's default listen address).
pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";

/// No `Debug`: it holds the token.
#[derive(Args)]
pub struct CtlArgs {
    /// Admin address (`host:port` or `http://host:port`), e.g. `10.0.0.4:9464`.
    #[arg(long, env = "HUBFLOW_ADMIN_ADDR", default_value = DEFAULT_ADDR, global = true)]
    pub addr: String,
    /// Bearer token for control calls (better from the environment:
    /// `export HUBFLOW_ADMIN_TOKEN=…`).
    #[arg(
        long,
        env = "HUBFLOW_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Print the server's JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Request timeout in seconds, e.g. `120` for a slow node.
    #[arg(long, default_value_t = 30, global = true)]
    pub timeout_secs: u64,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Liveness: GET /healthz; exit status 0 only on 200 (container
    /// healthchecks; needs no token).
    Health,
    /// Readiness: GET /readyz; exit status 0 only on 200, otherwise the
    /// reason the node is not ready (needs no token).
    Ready,
    /// The status tree, progress and versions.
    Status,
    /// Pause a source (`--source NAME`) or all ingest (`--ingest`).
    Pause(Target),
    /// Resume a source or all ingest.
    Resume(Target),
    /// Drain a group or actor by path; without a path, drain the node (it exits).
    Drain {
        /// A path of the status tree, e.g. `pipeline/transform`; none: the node.
        path: Option<String>,
        /// How long the drain may take before the rest is stopped, e.g. `60`
        /// (default: `[admin] drain_deadline_secs`).
        #[arg(long)]
        deadline_secs: Option<u64>,
    },
    /// Kill the actor or subtree at PATH, as a crash would.
    Kill {
        /// e.g. `pipeline/ingest/p0001/consumer` (`hubflow ctl status` lists paths).
        path: String,
    },
    /// Make the actor at PATH panic on its next message.
    Panic {
        /// e.g. `pipeline/transform/p0003`.
        path: String,
    },
    /// Start the actor or group at PATH afresh.
    Restart {
        /// e.g. `pipeline/sources/fetcher-demo`.
        path: String,
    },
    /// Replay raw blobs of a partition into curated.
    Replay(ReplayArgs),
    /// Lineage of one record: the request that fetched it, hub partition
    /// and sequence, raw blob and position, curated file and transform
    /// version, dead letters and replays
    /// (`hubflow ctl trace demo evt-42`, or from a curated row:
    /// `hubflow ctl trace --file demo/date=…/hour=…/x.parquet --row 0`).
    Trace {
        /// The source (the curated table's name).
        #[arg(required_unless_present = "file", requires = "id")]
        source: Option<String>,
        /// The record's id.
        id: Option<String>,
        /// A curated file (`<source>/date=…/hour=…/<name>.parquet`).
        #[arg(long, conflicts_with = "source", requires = "row")]
        file: Option<String>,
        /// The row of --file, from 0.
        #[arg(long, requires = "file")]
        row: Option<usize>,
    },
    /// Dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Show the log filter, or set it (`info,hubflow_actors=debug`).
    LogLevel {
        /// EnvFilter directives, e.g. `info,hubflow_actors::transformer=debug`;
        /// none: show the filter in effect.
        filter: Option<String>,
    },
    /// The transform: the version in effect, drift from the config file,
    /// every version (who, when, outcome) and the raw ranges each curated;
    /// `rollback` and `backfill` change it.
    Transform {
        #[command(subcommand)]
        command: Option<TransformCommand>,
    },
    /// Hot-swap the transformation spec (validated, dry-run, drained and
    /// replaced, rolled back automatically if it fails its probation).
    Swap {
        /// The new version's label, e.g. `v2`.
        #[arg(long = "version")]
        label: String,
        /// `SELECT … FROM batch`, e.g. `'SELECT *, amount * 100 AS amount_cents
        /// FROM batch'`; neither this nor --sql-file: identity.
        #[arg(long, conflicts_with = "sql_file")]
        sql: Option<String>,
        /// Read the SQL from this file, e.g. `v2.sql`.
        #[arg(long)]
        sql_file: Option<std::path::PathBuf>,
        /// Seconds the new version must run without a failure before it is
        /// promoted, e.g. `30` (default 10).
        #[arg(long)]
        probation_secs: Option<u64>,
    },
    /// Hot-swap a source's settings from a TOML file holding its
    /// `[[sources]]` table (or the table's keys at the top level), e.g.
    /// `hubflow ctl source orders --file orders.toml --version limit-500`.
    /// Secrets must be `{ env = "VAR" }` or `{ file = "path" }`.
    Source {
        /// The source's name (the file's table must have the same), e.g. `orders`.
        name: String,
        /// The TOML file, e.g. `orders.toml`.
        #[arg(long)]
        file: std::path::PathBuf,
        /// A label for these settings, e.g. `limit-500`.
        #[arg(long = "version")]
        label: String,
        /// Seconds the new fetcher must run without a failure before the
        /// settings are promoted, e.g. `30`.
        #[arg(long)]
        probation_secs: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TransformCommand {
    /// Swap back to an earlier version on every node (dry run and
    /// probation as a swap).
    Rollback {
        /// The version to return to, e.g. `v1`; default: the newest
        /// promoted one before the active version.
        #[arg(long)]
        to: Option<String>,
        /// Seconds of probation, e.g. `30` (as for a swap).
        #[arg(long)]
        probation_secs: Option<u64>,
    },
    /// Replay everything curated since version SINCE first ran, with
    /// version WITH (default: the active one): one replay per partition.
    Backfill {
        /// The version whose first run starts the range, e.g. `v2`.
        #[arg(long)]
        since: String,
        /// The version to curate with, e.g. `v3`; default: the active one.
        #[arg(long)]
        with: Option<String>,
        /// Print the jobs and return at once instead of following them.
        #[arg(long)]
        no_wait: bool,
        /// Give up following the jobs after this many seconds.
        #[arg(long, default_value_t = 3_600)]
        wait_secs: u64,
    },
}

#[derive(Debug, Args)]
pub struct Target {
    /// One source's fetcher, e.g. `--source demo`.
    #[arg(long, conflicts_with = "ingest", required_unless_present = "ingest")]
    pub source: Option<String>,
    /// Every partition consumer of hub ingest (fetchers keep publishing).
    #[arg(long)]
    pub ingest: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The hub partition whose raw blobs are replayed, e.g. `0`.
    #[arg(long)]
    pub partition: u32,
    /// First hub sequence number of the range (inclusive), e.g. `0`.
    #[arg(long)]
    pub from_sequence: Option<i64>,
    /// Last hub sequence number of the range (inclusive), e.g. `9999`.
    #[arg(long)]
    pub to_sequence: Option<i64>,
    /// Start of the enqueued-time range, RFC 3339, e.g. 2026-01-01T00:00:00Z.
    #[arg(long)]
    pub from_time: Option<String>,
    /// End of the enqueued-time range (exclusive), RFC 3339, e.g.
    /// 2026-01-02T00:00:00Z.
    #[arg(long)]
    pub to_time: Option<String>,
    /// The transform version to curate with; default: the active version.
    #[arg(long = "version")]
    pub version: Option<String>,
    /// Print the job id and return at once.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up following the job after this many seconds.
    #[arg(long, default_value_t = 3_600)]
    pub wait_secs: u64,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, newest first.
    List {
        /// Only this stage, e.g. `transform` or `source/demo`.
        #[arg(long)]
        stage: Option<String>,
        /// Leave out redriven ones.
        #[arg(long)]
        pending: bool,
        /// At most this many, newest first (up to 10000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead letter with its body.
    Show {
        /// `<stage>/<key>` as listed, e.g. `transform/ingest-p0001-…-000003`.
        id: String,
    },
    /// Republish a transform dead letter to hub ingest.
    Redrive {
        /// `<stage>/<key>` as listed, e.g. `transform/ingest-p0001-…-000003`.
        id: String,
        /// A corrected payload (a JSON object) instead of the stored one,
        /// e.g. `'{"id": "evt-1", "n": 1}'`.
        #[arg(long, conflicts_with = "payload_file")]
        payload: Option<String>,
        /// Read the corrected payload from this file, e.g. `fixed.json`.
        #[arg(long)]
        payload_file: Option<std::path::PathBuf>,
    },
}

/// An error answer of the admin API.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
}

/// Exit codes of `hubflow ctl`: 3 the admin port cannot be reached (not
/// listening, timed out), 4 the request was refused (a 4xx: bad input,
/// token, conflict), 5 the service failed it (a 5xx). Other errors exit 1.
pub fn exit_code(error: &anyhow::Error) -> Option<u8> {
    for cause in error.chain() {
        if let Some(failure) = cause.downcast_ref::<ApiFailure>() {
            return Some(if failure.status.is_client_error() {
                4
            } else {
                5
            });
        }
        if let Some(e) = cause.downcast_ref::<reqwest::Error>()
            && (e.is_connect() || e.is_timeout() || e.is_request())
        {
            return Some(3);
        }
    }
    None
}

/// A client of one admin port.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(addr: &str, token: Option<String>, timeout: Duration) -> anyhow::Result<Client> {
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", addr.trim_end_matches('/'))
        };
        url::Url::parse(&base).with_context(|| format!("invalid admin address {addr:?}"))?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .context("building the http client")?;
        Ok(Client {
            base,
            token: token.filter(|t| !t.is_empty()),
            http,
        })
    }

    /// Call `method path` with an optional JSON body; the JSON answer, or an
    /// [`ApiFailure`] carrying the server's message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        // Who asks, for the spec log's history (`by`).
        if let Some(user) = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty() && u.len() <= 64 && u.is_ascii())
        {
            request = request.header("x-hubflow-operator", user);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {url}: is `hubflow run` listening there?"))?;
        let status = response.status();
        let text = response.text().await.context("reading the answer")?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            return Err(ApiFailure { status, message }.into());
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }
}

/// Run one `hubflow ctl` command.
pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let client = Client::new(
        &args.addr,
        args.token.clone(),
        Duration::from_secs(args.timeout_secs.max(1)),
    )?;
    let out = Out { json: args.json };
    match args.command {
        CtlCommand::Health => {
            let v = client.get("/healthz").await?;
            out.print(&v, "ok".to_string());
        }
        CtlCommand::Ready => {
            let v = client.get("/readyz").await?;
            out.print(&v, "ready".to_string());
        }
        CtlCommand::Status => {
            let status = client.get("/status").await?;
            out.print(&status, render_status(&status));
        }
        CtlCommand::LogLevel { filter } => {
            let v = match filter {
                Some(f) => client.post("/log-level", &json!({ "filter": f })).await?,
                None => client.get("/log-level").await?,
            };
            out.print(
                &v,
                format!("log filter: {}", v["filter"].as_str().unwrap_or("?")),
            );
        }
        CtlCommand::Replay(replay) => run_replay(&client, replay, out.json).await?,
        CtlCommand::Trace {
            source,
            id,
            file,
            row,
        } => run_trace(&client, &out, source, id, file, row).await?,
        CtlCommand::Dlq { command } => run_dlq(&client, &out, command).await?,
        CtlCommand::Transform { command } => run_transform(&client, &out, command).await?,
        CtlCommand::Swap {
            label,
            sql,
            sql_file,
            probation_secs,
        } => {
            let sql = text_or_file(sql, sql_file.as_deref())?;
            let mut body = json!({ "version": label, "sql": sql });
            if let Some(p) = probation_secs {
                body["probation_secs"] = json!(p);
            }
            let v = client.post("/transform", &body).await?;
            out.print(&v, swap_text(&v));
        }
        CtlCommand::Source {
            name,
            file,
            label,
            probation_secs,
        } => {
            let source = source_table(&file, &name)?;
            let mut body = json!({ "version": label, "source": source });
            if let Some(p) = probation_secs {
                body["probation_secs"] = json!(p);
            }
            let v = client.post(&format!("/sources/{name}"), &body).await?;
            out.print(&v, swap_text(&v));
        }
        control => run_control(&client, &out, control).await?,
    }
    Ok(())
}

/// How answers are printed: the server's JSON (`--json`) or text.
struct Out {
    json: bool,
}

impl Out {
    fn print(&self, value: &Value, text: String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            println!("{text}");
        }
    }
}

/// `text`, or the contents of `file` when only that is given.
fn text_or_file(
    text: Option<String>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<String>> {
    match (text, file) {
        (Some(text), _) => Ok(Some(text)),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map(Some)
            .with_context(|| format!("reading {}", file.display())),
        (None, None) => Ok(None),
    }
}

/// Pause, resume, drain, kill, panic and restart.
async fn run_control(client: &Client, out: &Out, command: CtlCommand) -> anyhow::Result<()> {
    match command {
        CtlCommand::Pause(target) | CtlCommand::Resume(target)
            if target.source.is_none() && !target.ingest =>
        {
            anyhow::bail!("give --source NAME or --ingest");
        }
        CtlCommand::Pause(target) => {
            let v = client.post("/pause", &target_body(&target)).await?;
            out.print(&v, format!("paused: {}", list(&v["paused"])));
        }
        CtlCommand::Resume(target) => {
            let v = client.post("/resume", &target_body(&target)).await?;
            out.print(&v, format!("resumed: {}", list(&v["resumed"])));
        }
        CtlCommand::Drain {
            path,
            deadline_secs,
        } => {
            let mut body = json!({});
            if let Some(p) = &path {
                body["path"] = json!(p);
            }
            if let Some(d) = deadline_secs {
                body["deadline_secs"] = json!(d);
            }
            let v = client.post("/drain", &body).await?;
            let text = match path {
                Some(p) => {
                    format!("drained {p} (it stays stopped until `hubflow ctl restart {p}`)")
                }
                None => "the node is draining and will exit".to_string(),
            };
            out.print(&v, text);
        }
        CtlCommand::Kill { path } => {
            let v = client
                .post("/actors/kill", &json!({ "path": path }))
                .await?;
            out.print(&v, format!("killed {path}"));
        }
        CtlCommand::Panic { path } => {
            let v = client
                .post("/actors/panic", &json!({ "path": path }))
                .await?;
            out.print(&v, format!("panic injected into {path}"));
        }
        CtlCommand::Restart { path } => {
            let v = client
                .post("/actors/restart", &json!({ "path": path }))
                .await?;
            out.print(&v, format!("restarted {path}"));
        }
        other => anyhow::bail!("not a control command: {other:?}"),
    }
    Ok(())
}

/// `trace SOURCE ID` or `trace --file FILE --row N`.
async fn run_trace(
    client: &Client,
    out: &Out,
    source: Option<String>,
    id: Option<String>,
    file: Option<String>,
    row: Option<usize>,
) -> anyhow::Result<()> {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let query = match (source, id, file, row) {
        (Some(source), Some(id), None, None) => {
            format!("source={}&id={}", enc(&source), enc(&id))
        }
        (None, None, Some(file), Some(row)) => format!("file={}&row={row}", enc(&file)),
        _ => anyhow::bail!("give SOURCE ID, or --file FILE --row N"),
    };
    let v = client.get(&format!("/trace?{query}")).await?;
    out.print(&v, crate::trace::render(&v));
    Ok(())
}

/// `transform`, `transform rollback`, `transform backfill`.
async fn run_transform(
    client: &Client,
    out: &Out,
    command: Option<TransformCommand>,
) -> anyhow::Result<()> {
    match command {
        None => {
            let v = client.get("/transform").await?;
            out.print(&v, render_transform(&v));
        }
        Some(TransformCommand::Rollback { to, probation_secs }) => {
            let mut body = json!({});
            if let Some(to) = &to {
                body["to"] = json!(to);
            }
            if let Some(p) = probation_secs {
                body["probation_secs"] = json!(p);
            }
            let v = client.post("/transform/rollback", &body).await?;
            out.print(&v, swap_text(&v));
        }
        Some(TransformCommand::Backfill {
            since,
            with,
            no_wait,
            wait_secs,
        }) => {
            let mut body = json!({ "since": since });
            if let Some(with) = &with {
                body["with"] = json!(with);
            }
            let v = client.post("/transform/backfill", &body).await?;
            let jobs: Vec<String> = v["jobs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|j| {
                    format!(
                        "  partition {}: sequences {}..={} (replay {})",
                        j["partition"], j["from_sequence"], j["to_sequence"], j["id"]
                    )
                })
                .collect();
            out.print(
                &v,
                format!(
                    "backfill of everything since {since} with transform version {} (dry run: {} rows in, {} out):\n{}",
                    v["with"].as_str().unwrap_or("?"),
                    v["dry_run"]["rows_in"],
                    v["dry_run"]["rows_out"],
                    if jobs.is_empty() {
                        "  nothing to replay".to_string()
                    } else {
                        jobs.join("\n")
                    }
                ),
            );
            if !no_wait {
                let ids: Vec<u64> = v["jobs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|j| j["id"].as_u64())
                    .collect();
                let finished = follow_replays(client, &ids, wait_secs).await?;
                let failed: Vec<String> = finished
                    .iter()
                    .zip(&ids)
                    .filter(|(p, _)| p["state"] == "failed")
                    .map(|(p, id)| format!("{id}: {}", p["error"].as_str().unwrap_or("?")))
                    .collect();
                if !failed.is_empty() {
                    anyhow::bail!("backfill replays failed: {}", failed.join("; "));
                }
                eprintln!("backfill done: {} replay(s) completed", finished.len());
            }
        }
    }
    Ok(())
}

/// `dlq list|show|redrive`.
async fn run_dlq(client: &Client, out: &Out, command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List {
            stage,
            pending,
            limit,
        } => {
            let mut query = vec![format!("limit={limit}")];
            if let Some(s) = stage {
                query.push(format!(
                    "stage={}",
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                ));
            }
            if pending {
                query.push("pending_only=true".into());
            }
            let v = client.get(&format!("/dlq?{}", query.join("&"))).await?;
            out.print(&v, render_dlq_list(&v));
        }
        DlqCommand::Show { id } => {
            let v = client.get(&format!("/dlq/{id}")).await?;
            out.print(&v, render_dlq_detail(&v));
        }
        DlqCommand::Redrive {
            id,
            payload,
            payload_file,
        } => {
            let text = text_or_file(payload, payload_file.as_deref())?;
            let mut body = json!({ "id": id });
            if let Some(text) = text {
                let value: Value = serde_json::from_str(&text).context("--payload is not JSON")?;
                body["payload"] = value;
            }
            let v = client.post("/dlq/redrive", &body).await?;
            out.print(
                &v,
                format!(
                    "redriven {} (record {} of source {}) to partition {}",
                    id,
                    v["record_id"].as_str().unwrap_or("?"),
                    v["source"].as_str().unwrap_or("?"),
                    v["partition"]
                ),
            );
        }
    }
    Ok(())
}

fn target_body(target: &Target) -> Value {
    match &target.source {
        Some(source) => json!({ "source": source }),
        None => json!({ "ingest": true }),
    }
}

/// Source `name`'s settings from a TOML file: its `[[sources]]` entry of
/// that name, or the table's keys at the top level; as JSON.
pub fn source_table(file: &std::path::Path, name: &str) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", file.display()))?;
    let table = match doc.get("sources") {
        Some(toml::Value::Array(entries)) => entries
            .iter()
            .find(|e| e.get("name").and_then(toml::Value::as_str) == Some(name))
            .cloned()
            .with_context(|| format!("{} has no [[sources]] entry named {name}", file.display()))?,
        _ => toml::Value::Table(doc),
    };
    let found = table.get("name").and_then(toml::Value::as_str);
    if found != Some(name) {
        anyhow::bail!(
            "{} holds the settings of source {:?}, not {name:?}",
            file.display(),
            found.unwrap_or("(unnamed)")
        );
    }
    Ok(serde_json::to_value(&table)?)
}

/// A swap's or rollback's answer as text.
fn swap_text(v: &Value) -> String {
    let version = v["version"].as_str().unwrap_or("?");
    match v["outcome"].as_str() {
        Some("promoted") => format!("{version} (seq {}) is active on every node", v["seq"]),
        Some("rolled_back") => format!(
            "{version} failed and was rolled back to {} on every node: {}",
            v["restored"].as_str().unwrap_or("?"),
            v["error"].as_str().unwrap_or("?")
        ),
        _ => v.to_string(),
    }
}

/// `GET /transform` as text: what runs, drift, the versions and their ranges.
pub fn render_transform(v: &Value) -> String {
    let mut out = format!(
        "running: {} (seq {})\nconfig file: {}{}\n",
        v["active"]["version"].as_str().unwrap_or("?"),
        v["seq"],
        v["config"]["version"].as_str().unwrap_or("?"),
        if v["drift"] == true {
            " (differs from the running version: the spec log wins)"
        } else {
            ""
        }
    );
    if let Some(p) = v["log"]["probation"].as_object() {
        out.push_str(&format!("in probation: seq {}\n", p["seq"]));
    }
    out.push_str("versions:\n");
    for e in v["log"]["entries"].as_array().into_iter().flatten() {
        let version = e["version"].as_str().unwrap_or("?");
        out.push_str(&format!(
            "  {:>4} {:<16} {:<11} {:<8} by {} on {}{}\n",
            e["seq"],
            version,
            e["outcome"].as_str().unwrap_or("?"),
            e["origin"].as_str().unwrap_or("?"),
            e["by"].as_str().unwrap_or("?"),
            e["node"].as_str().unwrap_or("?"),
            e["detail"]
                .as_str()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ));
        let ranges = &v["ranges"][version];
        for r in ranges["curated"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "         curated p{} sequences {}..{}\n",
                r["partition"], r["from_sequence"], r["to_sequence"]
            ));
        }
        for r in ranges["replayed"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "         replayed p{} ({} rows, job {} {})\n",
                r["partition"],
                r["rows"],
                r["job"],
                r["state"].as_str().unwrap_or("?")
            ));
        }
    }
    out
}

fn list(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

async fn run_replay(client: &Client, args: ReplayArgs, json_out: bool) -> anyhow::Result<()> {
    let mut body = json!({ "partition": args.partition });
    for (key, value) in [
        ("from_sequence", args.from_sequence.map(|v| json!(v))),
        ("to_sequence", args.to_sequence.map(|v| json!(v))),
        ("from_time", args.from_time.map(|v| json!(v))),
        ("to_time", args.to_time.map(|v| json!(v))),
        ("version", args.version.clone().map(|v| json!(v))),
    ] {
        if let Some(v) = value {
            body[key] = v;
        }
    }
    let started = client.post("/replay", &body).await?;
    let id = started["id"]
        .as_u64()
        .context("the server did not return a replay id")?;
    // Say which version rewrites the files before following the job.
    eprintln!(
        "replay {id} of partition {} curates with transform version {}{}",
        args.partition,
        started["transform_version"].as_str().unwrap_or("?"),
        if args.version.is_some() {
            " (as asked)"
        } else {
            " (the active version; --version picks another)"
        }
    );
    if args.no_wait {
        if json_out {
            println!("{}", serde_json::to_string_pretty(&started)?);
        } else {
            println!(
                "replay {id} started; `hubflow ctl status` shows its progress (GET /replay/{id})"
            );
        }
        return Ok(());
    }
    let progress = follow_replays(client, &[id], args.wait_secs)
        .await?
        .pop()
        .context("no progress of the replay")?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&progress)?);
    } else {
        println!(
            "replay {id} {}: {} blobs, {} rows, {} files, {} duplicates dropped, {} rejected",
            progress["state"].as_str().unwrap_or("?"),
            progress["blobs_done"],
            progress["rows"],
            progress["files"],
            progress["duplicates_dropped"],
            progress["rejected"]
        );
    }
    if progress["state"] == "failed" {
        anyhow::bail!(
            "replay {id} failed: {}",
            progress["error"].as_str().unwrap_or("unknown error")
        );
    }
    Ok(())
}

/// One line of a replay job's progress.
fn replay_line(id: u64, progress: &Value) -> String {
    format!(
        "replay {id} ({}): {}/{} blobs, {} rows, {} files{}",
        progress["transform_version"].as_str().unwrap_or("?"),
        progress["blobs_done"],
        progress["blobs_total"],
        progress["rows"],
        progress["files"],
        match progress["blobs_corrupt"].as_u64() {
            Some(n) if n > 0 => format!(", {n} corrupt skipped"),
            _ => String::new(),
        }
    )
}

/// Follow replay jobs until none is running (at most `wait_secs`): a bar
/// per job (blobs, rate, ETA) on a terminal, else a line per change. Their
/// last progress, in the order of `ids`.
async fn follow_replays(
    client: &Client,
    ids: &[u64],
    wait_secs: u64,
) -> anyhow::Result<Vec<Value>> {
    let multi = crate::progress::multi();
    let mut bars: Vec<Option<indicatif::ProgressBar>> = vec![None; ids.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_secs);
    let mut last_lines = vec![String::new(); ids.len()];
    let mut done: Vec<Option<Value>> = vec![None; ids.len()];
    loop {
        for (i, id) in ids.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let progress = client.get(&format!("/replay/{id}")).await?;
            let line = replay_line(*id, &progress);
            let total = progress["blobs_total"].as_u64().unwrap_or(0);
            match &multi {
                Some(multi) if total > 0 || progress["state"] != "running" => {
                    let bar = bars[i].get_or_insert_with(|| {
                        crate::progress::add(multi, total, "blobs", format!("replay {id}"))
                    });
                    bar.set_length(total);
                    bar.set_position(progress["blobs_done"].as_u64().unwrap_or(0));
                    bar.set_message(format!(
                        "{} rows, {} files",
                        progress["rows"], progress["files"]
                    ));
                }
                Some(_) => {}
                None if line != last_lines[i] => eprintln!("{line}"),
                None => {}
            }
            last_lines[i] = line;
            if progress["state"] != "running" {
                if let Some(bar) = &bars[i] {
                    bar.finish_with_message(progress["state"].as_str().unwrap_or("?").to_string());
                }
                done[i] = Some(progress);
            }
        }
        if done.iter().all(Option::is_some) {
            if multi.is_some() {
                // The bars stay; what follows starts on a line of its own.
                eprintln!();
            }
            return Ok(done.into_iter().flatten().collect());
        }
        if tokio::time::Instant::now() >= deadline {
            let running: Vec<String> = ids
                .iter()
                .zip(&done)
                .filter(|(_, d)| d.is_none())
                .map(|(id, _)| id.to_string())
                .collect();
            anyhow::bail!(
                "replay {} still running after {wait_secs}s",
                running.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The status answer as text: the progress line, then the tree.
pub fn render_status(status: &Value) -> String {
    let mut out = String::new();
    let p = &status["progress"];
    out.push_str(&format!(
        "ready: {}   fetched {} | in hub {} | landed {} | curated {}\n",
        status["ready"], p["fetched"], p["in_hub"], p["landed"], p["transformed"]
    ));
    if let Some(reason) = status["not_ready"].as_str() {
        out.push_str(&format!("not ready: {reason}\n"));
    }
    if let Some(versions) = status["versions"].as_object() {
        let v: Vec<String> = versions
            .iter()
            .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("?")))
            .collect();
        out.push_str(&format!("versions: {}\n", v.join(", ")));
    }
    let t = &status["transform"];
    if let Some(version) = t["version"].as_str() {
        out.push_str(&format!("transform: {version} (seq {})", t["seq"]));
        if t["drift"] == true {
            out.push_str(&format!(
                ", differs from the config file's {} (the spec log wins)",
                t["config_version"].as_str().unwrap_or("?")
            ));
        }
        out.push('\n');
    }
    fn walk(node: &Value, depth: usize, out: &mut String) {
        let mut line = format!(
            "{}{:<width$} {:<11} gen {:<3} restarts {:<3} queue {}",
            "  ".repeat(depth),
            node["name"].as_str().unwrap_or("?"),
            node["state"].as_str().unwrap_or("?"),
            node["generation"],
            node["restarts"],
            node["queue_depth"],
            width = 28usize.saturating_sub(depth * 2)
        );
        if node["busy"] == true {
            line.push_str(" busy");
        }
        if node["observed"]["paused"] == true {
            line.push_str(" paused");
        }
        if let Some(e) = node["last_error"].as_str() {
            line.push_str(&format!("  last error: {e}"));
        }
        out.push_str(&line);
        out.push('\n');
        if let Some(children) = node["children"].as_array() {
            for c in children {
                walk(c, depth + 1, out);
            }
        }
    }
    walk(&status["tree"], 0, &mut out);
    if let Some(replays) = status["replays"].as_array().filter(|r| !r.is_empty()) {
        out.push_str("replays:\n");
        for r in replays {
            out.push_str(&format!(
                "  {} partition {} {}: {}/{} blobs, {} rows\n",
                r["id"],
                r["request"]["partition"],
                r["state"].as_str().unwrap_or("?"),
                r["blobs_done"],
                r["blobs_total"],
                r["rows"]
            ));
        }
    }
    out.trim_end().to_string()
}

fn render_dlq_list(v: &Value) -> String {
    let Some(letters) = v["dead_letters"].as_array().filter(|l| !l.is_empty()) else {
        return "no dead letters".to_string();
    };
    let mut out = String::new();
    for l in letters {
        let created =
            chrono::DateTime::from_timestamp_millis(l["created_ms"].as_i64().unwrap_or(0))
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default();
        let state = if l["redriven_ms"].is_null() {
            ""
        } else {
            "  [redriven]"
        };
        out.push_str(&format!(
            "{created}  {}  {}{state}\n    {}\n",
            l["id"].as_str().unwrap_or("?"),
            l["redrive"].as_str().unwrap_or("?"),
            l["reason"].as_str().unwrap_or("?")
        ));
    }
    out.trim_end().to_string()
}

fn render_dlq_detail(v: &Value) -> String {
    format!(
        "id:       {}\nstage:    {}\nreason:   {}\nredrive:  {}{}\ncontext:  {}\nbody ({} bytes{}):\n{}",
        v["id"].as_str().unwrap_or("?"),
        v["info"]["stage"].as_str().unwrap_or("?"),
        v["info"]["reason"].as_str().unwrap_or("?"),
        v["redrive"].as_str().unwrap_or("?"),
        if v["redriven"].is_null() {
            ""
        } else {
            " (already redriven)"
        },
        v["info"]["context"],
        v["body_bytes"],
        if v["body_truncated"] == true {
            ", truncated"
        } else {
            ""
        },
        v["body_preview"].as_str().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    /// Every argument and option of every `ctl` command says what it is.
    #[test]
    fn every_ctl_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let cmd = <super::CtlArgs as clap::Args>::augment_args(clap::Command::new("ctl"));
        let mut missing = Vec::new();
        walk(&cmd, "ctl", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    use super::*;

    #[test]
    fn addresses_get_a_scheme() {
        let c = Client::new("127.0.0.1:1", None, Duration::from_secs(1)).unwrap();
        assert_eq!(c.base, "http://127.0.0.1:1");
        let c = Client::new("http://h:2/", Some(String::new()), Duration::from_secs(1)).unwrap();
        assert_eq!(c.base, "http://h:2");
        assert!(c.token.is_none());
        assert!(Client::new("http://[bad", None, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn status_renders_the_tree() {
        let status = json!({
            "ready": true,
            "progress": {"fetched": 5, "in_hub": 5, "landed": 5, "transformed": 4},
            "versions": {"hubflow": "0.1.0"},
            "tree": {"name": "pipeline", "state": "running", "generation": 1, "restarts": 0, "queue_depth": 0,
                     "children": [{"name": "consumer", "state": "running", "generation": 2, "restarts": 1,
                                   "queue_depth": 3, "busy": true, "observed": {"paused": true}, "last_error": "boom", "children": []}]}
        });
        let text = render_status(&status);
        assert!(text.contains("curated 4"), "{text}");
        assert!(text.contains("  consumer"), "{text}");
        assert!(
            text.contains("paused") && text.contains("last error: boom"),
            "{text}"
        );
        assert!(!text.contains("not ready"), "{text}");
        let mut blocked = status.clone();
        blocked["ready"] = json!(false);
        blocked["not_ready"] = json!("storage full: blob_writer cannot write");
        let text = render_status(&blocked);
        assert!(
            text.contains("not ready: storage full: blob_writer cannot write"),
            "{text}"
        );
    }
}
