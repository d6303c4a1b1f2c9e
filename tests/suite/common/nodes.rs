//! `hubflow run` processes of one cluster on this host, each with its own
//! node id and admin port on loopback; killed when the test ends (or fails).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::harness::Admin;
use serde_json::Value;

/// The admin token every node is started with.
pub const TOKEN: &str = "cluster-test-token-0123456789";

pub struct Nodes {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub running: BTreeMap<String, Child>,
    /// Admin port of every node started (kept after it stops).
    pub ports: BTreeMap<String, u16>,
    http: reqwest::Client,
}

impl Nodes {
    pub fn new(dir: PathBuf, config: PathBuf) -> Nodes {
        Nodes {
            dir,
            config,
            running: BTreeMap::new(),
            ports: BTreeMap::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }

    /// Start node `id` with its admin port on a free loopback port the
    /// process picks itself (port 0) and logs; returns once it listens.
    /// (A port probed here and handed to the child can be handed out again
    /// before the child binds it, to another node: two nodes then answer
    /// on one port, or one fails to start.)
    pub fn start(&mut self, id: &str) {
        let log_path = self.log(id);
        let offset = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        // Appended: a node started again keeps its earlier life's lines.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_hubflow"))
            .args(["run", "--quiet", "--config"])
            .arg(&self.config)
            .env("HUBFLOW_LOG", "info")
            .env("HUBFLOW__CLUSTER__NODE_ID", id)
            .env("HUBFLOW__ADMIN__LISTEN", "127.0.0.1:0")
            .env("HUBFLOW_ADMIN_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning hubflow");
        let port = listening_port(&log_path, offset, &mut child);
        self.running.insert(id.to_string(), child);
        self.ports.insert(id.to_string(), port);
    }

    pub fn log(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    /// The last lines of every node's log, for failure messages.
    pub fn tails(&self) -> String {
        let mut out = String::new();
        for id in self.ports.keys() {
            let text = std::fs::read_to_string(self.log(id)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            out.push_str(&format!("\n--- {id} ---\n{tail}"));
        }
        out
    }

    pub fn kill(&mut self, id: &str) {
        let mut child = self.running.remove(id).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then wait for the exit.
    pub async fn drain(&mut self, id: &str, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.running.remove(id).unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{id} did not stop within {limit:?};{}", self.tails());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn ids(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// Node `id`'s admin client (token [`TOKEN`], operator "cluster-test").
    pub fn admin(&self, id: &str) -> Admin {
        let base = format!("http://127.0.0.1:{}", self.ports[id]);
        Admin::with_client(self.http.clone(), base, Some(TOKEN)).operator("cluster-test")
    }

    /// Call node `id`'s admin port; `None` when it cannot be reached.
    pub async fn call(
        &self,
        id: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Option<(StatusCode, Value)> {
        self.admin(id).try_call(method, path, body).await
    }

    /// Wait (bounded) until node `id` answers `/readyz` with 200.
    pub async fn until_ready(&self, id: &str, limit: Duration) {
        let what = format!("{id} ready");
        super::eventually(
            &what,
            limit,
            Duration::from_millis(100),
            async || match self.call(id, reqwest::Method::GET, "/readyz", None).await {
                Some((StatusCode::OK, _)) => Ok(()),
                other => Err(format!("{other:?};{}", self.tails())),
            },
        )
        .await
    }
}

impl Nodes {
    /// Wait (bounded) until all `total` records are fetched and curated,
    /// then drain every running node; each must exit 0.
    /// Wait (bounded) until every record is curated, then drain every
    /// node. "Every record" is `distinct()`, the distinct records curated,
    /// reaching `total`, read once the hub is caught up (every stage's
    /// checkpoint at the hub's end): the hub's own count cannot say it,
    /// since it holds the duplicates a restart re-publishes, so it reaches
    /// `total` while the last records are still being fetched.
    pub async fn finish_and_drain(
        &mut self,
        settings: &hubflow::config::Settings,
        backends: &hubflow::backends::Backends,
        total: u64,
        distinct: impl AsyncFn() -> u64,
    ) {
        let (limit, every) = (Duration::from_secs(120), Duration::from_millis(500));
        super::eventually("every record curated", limit, every, async || {
            let p = hubflow::pipeline::Progress::read(settings, backends)
                .await
                .unwrap();
            if !(p.idle(1) && p.in_hub >= total) {
                return Err(format!("not finished: {p:?};{}", self.tails()));
            }
            match distinct().await {
                n if n >= total => Ok(()),
                n => Err(format!(
                    "{n} of {total} distinct records curated: {p:?};{}",
                    self.tails()
                )),
            }
        })
        .await;
        for id in self.ids() {
            let status = self.drain(&id, Duration::from_secs(30)).await;
            assert!(
                status.success(),
                "{id} exited with {status};{}",
                self.tails()
            );
        }
    }
}

/// The port a node logs `admin port listening addr=…` with, in its log
/// after byte `offset` (bounded: 60 s; panics with the log if the node
/// exits first).
fn listening_port(log: &std::path::Path, offset: u64, child: &mut Child) -> u16 {
    const MARK: &str = "admin port listening addr=127.0.0.1:";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read(log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text[(offset as usize).min(text.len())..]).into_owned();
        if let Some(port) = text
            .split(MARK)
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
        {
            return port;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("node exited with {status} before listening:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "node did not listen within 60 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in self.running.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            self.keep_logs();
        }
    }
}

impl Nodes {
    /// Copy the cluster's directory (every node's whole log, the config and
    /// the data directory of the filesystem store) out of the test's
    /// temporary directory, removed when the test ends, into the target
    /// directory, so a failure can be read past the tails its message
    /// carries.
    fn keep_logs(&self) {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("failed-nodes-{stamp}"));
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&self.dir)
            .arg(&kept)
            .status();
        if !copied.is_ok_and(|s| s.success()) {
            return;
        }
        eprintln!("node logs and data kept in {}", kept.display());
    }
}
