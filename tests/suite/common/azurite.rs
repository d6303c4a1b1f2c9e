//! Azurite, the Azure Storage emulator, for the Azure Blob adapter tests.
//!
//! [`Azurite::start`] runs `.tools/azurite/node_modules/.bin/azurite-blob`
//! (installed by `scripts/install-azurite.sh`) on 127.0.0.1 with a free
//! port and a temporary workspace, waits (bounded) until it answers HTTP,
//! and kills it on drop. A missing install fails the test with the command
//! to run; nothing is skipped silently.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hubflow::azure::{AzureAuthConfig, AzureBlobConfig, AzureBlobStore};
use hubflow::source::SecretString;

/// Azurite's account (public, documented by Microsoft).
pub const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known account key (public, documented by Microsoft).
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository root (where `.tools/` is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running Azurite blob service; killed on drop.
pub struct Azurite {
    /// `http://127.0.0.1:<port>/devstoreaccount1` (no trailing slash).
    pub account_url: String,
    pub port: u16,
    child: Child,
    _workspace: tempfile::TempDir,
}

impl Azurite {
    pub async fn start() -> Azurite {
        let bin = repo_root().join(".tools/azurite/node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "Azurite is not installed at {}: run `bash scripts/install-azurite.sh` first",
            bin.display()
        );
        let workspace = tempfile::tempdir().expect("temp dir for azurite");
        let mut child = Command::new(&bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", "0", "--location"])
            .arg(workspace.path())
            .args(["--silent", "--loose", "--disableTelemetry"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));

        // Azurite prints "... successfully listens on http://127.0.0.1:<port>".
        let stdout = child.stdout.take().expect("azurite stdout");
        let (tx, rx) = std::sync::mpsc::channel::<u16>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listens on http://127.0.0.1:").nth(1) {
                    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    if let Ok(port) = port.parse() {
                        let _ = tx.send(port);
                    }
                }
                // Keep draining so azurite never blocks on a full pipe.
            }
        });
        let port = match rx.recv_timeout(START_TIMEOUT) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "azurite did not report its port within {START_TIMEOUT:?} (exit: {status:?})"
                );
            }
        };
        let account_url = format!("http://127.0.0.1:{port}/{ACCOUNT}");
        let mut azurite = Azurite {
            account_url,
            port,
            child,
            _workspace: workspace,
        };
        azurite.wait_until_answering().await;
        azurite
    }

    /// Poll until an HTTP request gets any answer (bounded).
    async fn wait_until_answering(&mut self) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let url = format!("{}?comp=list", self.account_url);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("azurite exited before answering: {status}");
            }
            if client.get(&url).send().await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "azurite on port {} did not answer within {START_TIMEOUT:?}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `[azure_blob]` section for this Azurite with account-key auth.
    pub fn account_key_config(&self) -> AzureBlobConfig {
        let mut config = AzureBlobConfig::new(
            self.account_url.clone(),
            AzureAuthConfig::AccountKey {
                key: SecretString::literal(ACCOUNT_KEY),
            },
        );
        // Fail fast in tests; the pipeline above retries.
        config.max_retries = 2;
        config.request_timeout_secs = 30;
        config
    }

    /// A store on this Azurite with account-key auth.
    pub fn account_key_store(&self) -> AzureBlobStore {
        let settings = self
            .account_key_config()
            .validate()
            .expect("azurite config");
        AzureBlobStore::new(&settings).expect("azure blob store")
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
