//! The one way the integration tests run Hubflow in-process and talk to it:
//!
//! - [`Service`]: `service::run_with` on a config, with its admin port on
//!   loopback (or where the config says), stopped through its stop hook;
//! - [`Admin`]: the admin HTTP client (reqwest) every module uses, for an
//!   in-process [`Service`] and for `hubflow run` processes alike
//!   ([`super::nodes::Nodes::admin`]);
//! - [`start_pipeline`] / [`start_embedded`]: `Pipeline::start` with an
//!   HTTP source per configured source, over backends the test chose;
//!   [`until_progress`] polls it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hubflow::backends::Backends;
use hubflow::config::{Config, Settings};
use hubflow::pipeline::{Pipeline, Progress};
use hubflow::service::{self, Hooks, RunOptions};
use hubflow::source::{HttpSource, SecretString};
use hubflow::telemetry::{self, LogFormat};
use hubflow_actors::ports::Source;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// An admin port's client: its base URL, the token control calls carry and
/// the operator name swaps are recorded under.
#[derive(Clone)]
pub struct Admin {
    /// `http://host:port`.
    pub base: String,
    token: Option<String>,
    operator: Option<String>,
    http: reqwest::Client,
    /// Every answer this client (and its clones) got, for
    /// [`super::openapi::check_answers`].
    answers: Arc<std::sync::Mutex<Vec<Answer>>>,
}

/// One answer of the admin port: what was asked and what came back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Answer {
    pub method: String,
    /// The path asked, without its query.
    pub path: String,
    pub status: u16,
    pub body: Value,
}

impl Admin {
    pub fn new(base: String, token: Option<&str>, timeout: Duration) -> Admin {
        let http = reqwest::Client::builder().timeout(timeout).build().unwrap();
        Admin::with_client(http, base, token)
    }

    /// A client on `base` sharing `http`'s connections.
    pub fn with_client(http: reqwest::Client, base: String, token: Option<&str>) -> Admin {
        Admin {
            base,
            token: token.map(str::to_string),
            operator: None,
            http,
            answers: Arc::default(),
        }
    }

    /// Every answer this client has had so far.
    pub fn answers(&self) -> Vec<Answer> {
        self.answers.lock().map(|a| a.clone()).unwrap_or_default()
    }

    fn record(&self, method: &Method, path: &str, answer: &Option<(StatusCode, Value)>) {
        let Some((status, body)) = answer else {
            return;
        };
        if let Ok(mut answers) = self.answers.lock() {
            answers.push(Answer {
                method: method.as_str().to_lowercase(),
                path: path.split('?').next().unwrap_or(path).to_string(),
                status: status.as_u16(),
                body: body.clone(),
            });
        }
    }

    /// The same client, recording its swaps as made by `operator`.
    pub fn operator(mut self, operator: &str) -> Admin {
        self.operator = Some(operator.to_string());
        self
    }

    /// `method path` with `token` (and the operator header, if any).
    fn request(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(o) = &self.operator {
            req = req.header("x-hubflow-operator", o);
        }
        req
    }

    /// Send `req` with a raw JSON body text; the status and the answer
    /// (JSON, or the text as a string); `None` when the port cannot be
    /// reached.
    async fn send(req: reqwest::RequestBuilder, body: Option<&str>) -> Option<(StatusCode, Value)> {
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(b.to_string()),
            None => req,
        };
        let resp = req.send().await.ok()?;
        let status = resp.status();
        let text = resp.text().await.ok()?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Some((status, value))
    }

    /// `method path` with `token` and a raw JSON body text, which must
    /// reach the port: the status and the answer.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let req = self.request(method.clone(), path, token);
        let answer = Admin::send(req, body).await;
        self.record(&method, path, &answer);
        answer.unwrap_or_else(|| panic!("{method} {}{path}: no answer", self.base))
    }

    /// `method path` with this client's token; `None` when unreachable.
    pub async fn try_call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Option<(StatusCode, Value)> {
        let req = self.request(method.clone(), path, self.token.as_deref());
        let answer = Admin::send(req, body.map(Value::to_string).as_deref()).await;
        self.record(&method, path, &answer);
        answer
    }

    /// `method path` with this client's token.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(Value::to_string);
        self.raw(method, path, self.token.as_deref(), body.as_deref())
            .await
    }

    /// `GET path` without a token.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.raw(Method::GET, path, None, None).await
    }

    /// `GET path` without a token: the response itself (headers and all).
    pub async fn get_response(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    /// `POST path` with this client's token.
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(&body)).await
    }

    /// `/status`, which must answer 200.
    pub async fn status(&self) -> Value {
        let (code, v) = self.get("/status").await;
        assert_eq!(code, StatusCode::OK, "{v}");
        v
    }

    /// Poll `/status` until `check` holds (bounded).
    pub async fn wait_until(&self, what: &str, limit: Duration, check: impl Fn(&Value) -> bool) {
        super::eventually(what, limit, Duration::from_millis(100), async || {
            let status = self.status().await;
            match check(&status) {
                true => Ok(()),
                false => Err(format!("status: {}", status["progress"])),
            }
        })
        .await
    }

    /// Poll replay job `id` (bounded, 120 s) until it no longer runs; its
    /// progress.
    pub async fn replay_finished(&self, id: u64) -> Value {
        let (limit, every) = (Duration::from_secs(120), Duration::from_millis(100));
        super::eventually(&format!("replay {id}"), limit, every, async || {
            let (code, progress) = self.get(&format!("/replay/{id}")).await;
            assert_eq!(code, StatusCode::OK, "{progress}");
            match progress["state"] != "running" {
                true => Ok(progress),
                false => Err(progress.to_string()),
            }
        })
        .await
    }

    /// Start a replay (`POST /replay` must accept it) and follow it to its
    /// end, which must be `completed`; its progress.
    pub async fn replay(&self, body: Value) -> Value {
        let (code, started) = self.post("/replay", body).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{started}");
        let done = self.replay_finished(started["id"].as_u64().unwrap()).await;
        assert_eq!(done["state"], "completed", "{done}");
        done
    }
}

/// A swap's answer (`POST /transform` or `/sources/..`): 200 with
/// `outcome`, and for a rollback the version `restored`; `context` is added
/// to the message when the status is not 200.
pub fn assert_swapped(
    answer: &(StatusCode, Value),
    outcome: &str,
    restored: Option<&str>,
    context: &str,
) {
    let (code, body) = answer;
    assert_eq!(*code, StatusCode::OK, "{body};{context}");
    assert_eq!(body["outcome"], outcome, "{body}");
    if let Some(restored) = restored {
        assert_eq!(body["restored"], restored, "{body}");
    }
}

/// The service running a config in this process, with its admin port.
pub struct Service {
    pub addr: SocketAddr,
    pub admin: Admin,
    pub settings: Settings,
    stop: Arc<tokio::sync::Notify>,
    run: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Service {
    /// Run `config` with admin token `token`; the admin port listens where
    /// the config says, on 127.0.0.1:0 when it says nothing.
    pub async fn start(config: Config, token: Option<&str>) -> Service {
        Service::start_with(config, token, false).await
    }

    /// [`Self::start`], with the reloadable log filter (`/log-level`).
    pub async fn start_with_logs(config: Config, token: Option<&str>) -> Service {
        Service::start_with(config, token, true).await
    }

    async fn start_with(mut config: Config, token: Option<&str>, logs: bool) -> Service {
        if config.admin.listen.is_none() {
            config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        }
        config.admin.token = token.map(SecretString::literal);
        let settings = config.validate().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = Arc::new(tokio::sync::Notify::new());
        let hooks = Hooks {
            logs: logs.then(|| telemetry::init_logs(LogFormat::Text)),
            on_admin_listening: Some(tx),
            stop: Some(stop.clone()),
            ..Hooks::default()
        };
        let run = tokio::spawn(service::run_with(
            settings.clone(),
            RunOptions::default(),
            hooks,
        ));
        let addr = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("admin port did not come up")
            .expect("service ended before the admin port listened");
        Service {
            addr,
            admin: Admin::new(format!("http://{addr}"), token, Duration::from_secs(120)),
            settings,
            stop,
            run,
        }
    }

    /// Stop as on a signal; the run must end Ok within a minute.
    pub async fn stop(self) {
        self.stop.notify_one();
        self.stopped().await;
    }

    /// Wait (bounded) for the run to end by itself (a drain); it must be Ok.
    pub async fn stopped(self) {
        let result = tokio::time::timeout(Duration::from_secs(60), self.run)
            .await
            .expect("service did not stop");
        result.unwrap().unwrap();
    }
}

/// An HTTP source for every source the settings configure.
pub fn http_sources(settings: &Settings) -> Vec<Arc<dyn Source>> {
    settings
        .sources
        .iter()
        .map(|s| Arc::new(HttpSource::new(s.clone()).unwrap()) as Arc<dyn Source>)
        .collect()
}

/// `Pipeline::start` over `backends`, fetching from the configured sources.
pub async fn start_pipeline(settings: &Settings, backends: Backends) -> Pipeline {
    Pipeline::start(settings.clone(), backends, http_sources(settings))
        .await
        .unwrap()
}

/// [`start_pipeline`] over the embedded backends of the data directory.
pub async fn start_embedded(settings: &Settings) -> Pipeline {
    let backends = Backends::embedded(settings).await.unwrap();
    start_pipeline(settings, backends).await
}

/// Poll the pipeline's progress every `every` until `done` holds (bounded
/// by `limit`); that progress.
pub async fn until_progress(
    pipeline: &Pipeline,
    what: &str,
    limit: Duration,
    every: Duration,
    done: impl Fn(&Progress) -> bool,
) -> Progress {
    super::eventually(what, limit, every, async || {
        let progress = pipeline.progress().await.unwrap();
        match done(&progress) {
            true => Ok(progress),
            false => Err(format!("{progress:?}\n{:#?}", pipeline.root.snapshot())),
        }
    })
    .await
}
