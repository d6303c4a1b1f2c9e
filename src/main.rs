//! The `hubflow` command line: `run`, `ctl`, `demo-source`, `query`,
//! `config check`, `completions`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use hubflow::config::{Config, Settings};
use hubflow::ctl::{self, CtlArgs};
use hubflow::demo::{self, DemoConfig, FaultConfig};
use hubflow::otel;
use hubflow::query::{self, OutputFormat};
use hubflow::service::{self, Hooks, RunOptions, ServiceError};
use hubflow::telemetry::{self, LogControl};

/// mimalloc: per-thread free lists suit the data path, which allocates and
/// frees a page's and a batch's buffers on different threads (BENCHMARKS.md
/// has the measurement against the system allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "hubflow",
    version,
    about = "HTTP GET API → Event Hubs → raw blobs → zstd Parquet, supervised"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "HUBFLOW_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline (embedded hub + filesystem store + demo API by default).
    Run {
        /// TOML configuration; defaults and HUBFLOW__* environment overrides apply.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Exit once every source is caught up and everything is curated.
        #[arg(long)]
        exit_when_idle: bool,
        /// No status line.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Talk to a running node's admin port (status, pause/resume, drain,
    /// kill/panic/restart, replay, dead letters, log level).
    Ctl(CtlArgs),
    /// Serve the built-in third-party API simulator on its own.
    DemoSource {
        /// Where to listen, e.g. `127.0.0.1:8080`.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Records the API will ever have.
        #[arg(long, default_value_t = 100_000)]
        total: u64,
        /// Records appear at this rate (per second) instead of all at once.
        #[arg(long)]
        rate: Option<f64>,
        /// Inject the quick-start fault mix (500s, 429s, slow, truncated, garbage).
        #[arg(long)]
        faults: bool,
        /// Seed of the fault sequence (a run is reproducible), e.g. `7`.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print the first N records as NDJSON on stdout and exit (the same
        /// input for comparisons with other tools).
        #[arg(long, value_name = "N")]
        ndjson: Option<u64>,
    },
    /// Run SQL over the curated container (one table per source).
    Query {
        /// One statement over the curated tables (one per source), e.g.
        /// `"SELECT type, count(*) FROM demo GROUP BY type"`. Without it, an
        /// interactive session: statements end with `;` and may span lines;
        /// `\d` lists the tables, `\d demo` describes one, `\s` shows the
        /// history, `\q` quits.
        sql: Option<String>,
        /// TOML configuration (where curated data is), e.g. `hubflow.toml`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Output: an aligned table, CSV, JSON rows, or a Parquet file
        /// (zstd; with `--output`, or to a stdout that is not a terminal),
        /// e.g. `--format csv`.
        #[arg(long, short, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Write the result to this file instead of stdout, e.g.
        /// `--output result.parquet`.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// SQL for data scientists' own clients (psql, DBeaver, psycopg, Power BI).
    Sql {
        #[command(subcommand)]
        command: SqlCommand,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a shell completion script
    /// (`source <(hubflow completions bash)`, or save it where your shell
    /// loads completions: `hubflow completions fish > ~/.config/fish/completions/hubflow.fish`).
    Completions {
        /// The shell, e.g. `bash`.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file; errors name the field path.
    Check {
        /// The file, e.g. `deploy/config/production.toml`.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum SqlCommand {
    /// Serve the curated tables over the Postgres wire protocol and Arrow
    /// Flight SQL until a signal (database `hubflow`, a table per source;
    /// users from `[sql]` or HUBFLOW_SQL_USER / HUBFLOW_SQL_PASSWORD), e.g.
    /// `hubflow sql serve --config hubflow.toml`, then
    /// `psql "host=127.0.0.1 port=5433 dbname=hubflow user=analyst"` or an
    /// ADBC Flight SQL client on `grpc://127.0.0.1:50051`.
    Serve {
        /// TOML configuration (where curated data is, `[sql]`), e.g. `hubflow.toml`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Postgres wire protocol address instead of `[sql] pg_listen`,
        /// e.g. `127.0.0.1:5433` (port 0 picks a free port).
        #[arg(long)]
        pg_listen: Option<std::net::SocketAddr>,
        /// Arrow Flight SQL address instead of `[sql] flight_listen`, e.g.
        /// `127.0.0.1:50051` (port 0 picks a free port).
        #[arg(long, conflicts_with = "no_flight")]
        flight_listen: Option<std::net::SocketAddr>,
        /// Serve only the Postgres wire protocol.
        #[arg(long)]
        no_flight: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
    Parquet,
}

fn init_logs(format: LogFormat, traces: Option<&otel::Traces>) -> LogControl {
    telemetry::init_logs_with(
        match format {
            LogFormat::Text => telemetry::LogFormat::Text,
            LogFormat::Json => telemetry::LogFormat::Json,
        },
        traces.map(|t| t.tracer.clone()),
    )
}

fn settings(config: Option<&std::path::Path>) -> anyhow::Result<Settings> {
    Ok(Config::load(config)?.validate()?)
}

async fn main_inner(
    cli: Cli,
    logs: LogControl,
    otlp: Option<otel::OtlpSettings>,
) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            config,
            exit_when_idle,
            quiet,
        } => run(config.as_deref(), exit_when_idle, quiet, logs, otlp).await,
        Command::Ctl(args) => ctl::run(args).await,
        Command::DemoSource {
            addr,
            total,
            rate,
            faults,
            seed,
            ndjson,
        } => match ndjson {
            Some(n) => print_demo_records(n),
            None => serve_demo(&addr, total, rate, faults, seed).await,
        },
        Command::Query {
            sql,
            config,
            format,
            output,
        } => {
            // Only what reading curated data needs: no ingestion secret.
            let location = Config::load(config.as_deref())?.curated_location()?;
            query_command(&location, sql.as_deref(), format, output.as_deref()).await
        }
        Command::Sql {
            command:
                SqlCommand::Serve {
                    config,
                    pg_listen,
                    flight_listen,
                    no_flight,
                },
        } => sql_serve(config.as_deref(), pg_listen, flight_listen, no_flight).await,
        Command::Completions { shell } => {
            let mut cli = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cli, "hubflow", &mut std::io::stdout());
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => check_config(&file),
    }
}

/// `hubflow run`: the service, with OTLP metrics export when configured.
async fn run(
    config: Option<&Path>,
    exit_when_idle: bool,
    quiet: bool,
    logs: LogControl,
    otlp: Option<otel::OtlpSettings>,
) -> anyhow::Result<()> {
    let settings = settings(config)?;
    let options = RunOptions {
        exit_when_idle,
        status_every: (!quiet).then_some(Duration::from_secs(1)),
    };
    let hooks = Hooks {
        logs: Some(logs),
        ..Hooks::default()
    };
    let export = otlp
        .as_ref()
        .and_then(|o| otel::MetricsExport::start(o, telemetry::install_metrics()));
    let result = service::run_with(settings, options, hooks).await;
    if let Some(export) = export {
        export.finish().await;
    }
    result
}

/// `hubflow sql serve`: the SQL server alone, until a signal. Reads only
/// the storage sections and `[sql]` of the config.
async fn sql_serve(
    config: Option<&Path>,
    pg_listen: Option<std::net::SocketAddr>,
    flight_listen: Option<std::net::SocketAddr>,
    no_flight: bool,
) -> anyhow::Result<()> {
    let mut config = Config::load(config)?;
    if let Some(addr) = pg_listen {
        config.sql.pg_listen = addr;
    }
    if let Some(addr) = flight_listen {
        config.sql.flight = true;
        config.sql.flight_listen = addr;
    }
    if no_flight {
        config.sql.flight = false;
    }
    let (sql, location) = config.sql_server()?;
    let mut signals = service::Signals::new().context("installing signal handlers")?;
    let server = hubflow::sql::SqlServer::start(&sql, location).await?;
    // The lines scripts and tests read the bound ports from.
    eprintln!(
        "sql: postgres wire protocol on {} (database hubflow)",
        server.pg_addr()
    );
    if let Some(addr) = server.flight_addr() {
        eprintln!("sql: arrow flight sql on grpc://{addr}");
    }
    signals.recv().await;
    server.stop().await;
    Ok(())
}

/// `hubflow demo-source --ndjson N`: the demo's first `n` records as NDJSON.
fn print_demo_records(n: u64) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for i in 0..n {
        serde_json::to_writer(&mut out, &demo::demo_record(i))?;
        std::io::Write::write_all(&mut out, b"\n")?;
    }
    std::io::Write::flush(&mut out)?;
    Ok(())
}

/// `hubflow demo-source`: the demo API on `addr` until a signal.
async fn serve_demo(
    addr: &str,
    total: u64,
    rate: Option<f64>,
    faults: bool,
    seed: u64,
) -> anyhow::Result<()> {
    let config = DemoConfig {
        total,
        rate_per_sec: rate,
        faults: if faults {
            FaultConfig::lively()
        } else {
            FaultConfig::default()
        },
        seed,
        ..DemoConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    eprintln!("demo api on http://{}/v1/events", listener.local_addr()?);
    demo::serve(listener, config, service::shutdown_signal()).await?;
    Ok(())
}

/// `hubflow config check FILE`: validate every section and summarise.
fn check_config(file: &Path) -> anyhow::Result<()> {
    let settings = settings(Some(file))?;
    let admin = &settings.admin;
    let admin_state = if admin.enabled {
        let token = if admin.token.is_some() {
            " with a token"
        } else {
            ", no token"
        };
        format!("on {}{token}", admin.listen)
    } else {
        "off".to_string()
    };
    println!(
        "{}: ok ({} source(s), {} partitions, data in {}, admin {admin_state})",
        file.display(),
        settings.sources.len(),
        settings.hub.partitions,
        settings.data_dir().display(),
    );
    Ok(())
}

/// Transparent huge pages off for this process: the data path allocates and
/// frees batch-sized buffers, and with THP every first touch of a fresh
/// region zeroes 2 MiB (the kernel's `clear_page` was the largest single
/// cost of a load before this, BENCHMARKS.md) and counts 2 MiB of RSS.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integer arguments
    // and only sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h` (the -sys crate
/// has no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// How long freed memory stays with mimalloc before it goes back to the OS.
const PURGE_DELAY_MS: std::ffi::c_long = 25;

/// mimalloc v3 keeps freed memory for a second before returning it; a load
/// frees a batch's buffers every few milliseconds, so half of the peak RSS
/// was memory already freed (BENCHMARKS.md). 25 ms returns it in time at a
/// small CPU cost; `MIMALLOC_PURGE_DELAY` still overrides it.
fn return_freed_memory_soon() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads it on every purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
    }
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    return_freed_memory_soon();
    let cli = Cli::parse();
    // OpenTelemetry export (environment-configured) is for the service only.
    let otlp = match &cli.command {
        Command::Run { .. } => match otel::OtlpSettings::from_env() {
            Ok(otlp) => otlp,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let traces = match otlp.as_ref().map(otel::Traces::start).transpose() {
        Ok(traces) => traces.flatten(),
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let logs = init_logs(cli.log_format, traces.as_ref());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(main_inner(cli, logs, otlp));
    // Do not wait for tasks a second signal left behind: every write is
    // temp + rename, so stopping mid-way corrupts nothing.
    runtime.shutdown_timeout(Duration::from_millis(100));
    if let Some(traces) = traces {
        traces.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", hubflow::shell::render_error(&error));
            if let Some(code) = hubflow::ctl::exit_code(&error) {
                return ExitCode::from(code);
            }
            match error.downcast_ref::<ServiceError>() {
                Some(ServiceError::Interrupted) => ExitCode::from(130),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// `hubflow query`: one statement, or an interactive session without one.
async fn query_command(
    location: &hubflow::config::CuratedLocation,
    sql: Option<&str>,
    format: Format,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let text_format = match format {
        Format::Table => Some(OutputFormat::Table),
        Format::Csv => Some(OutputFormat::Csv),
        Format::Json => Some(OutputFormat::Json),
        Format::Parquet => None,
    };
    let Some(sql) = sql else {
        let Some(format) = text_format else {
            anyhow::bail!(
                "an interactive session prints tables, CSV or JSON: give a statement for --format parquet"
            );
        };
        let stdin = std::io::stdin();
        let mut session = hubflow::shell::Session {
            location,
            format,
            out: std::io::stdout(),
            err: std::io::stderr(),
            prompt: stdin.is_terminal(),
        };
        session.run(stdin.lock()).await?;
        return Ok(());
    };
    let batches = hubflow::query::curated(location, sql).await?;
    let mut out: Box<dyn Write + Send> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None if text_format.is_none() && std::io::stdout().is_terminal() => {
            anyhow::bail!(
                "refusing to write Parquet to a terminal: give --output FILE or redirect stdout"
            );
        }
        None => Box::new(std::io::stdout()),
    };
    match text_format {
        Some(format) => writeln!(out, "{}", query::format_batches(&batches, format)?)?,
        None => query::write_parquet(&batches, &mut out)?,
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use hubflow::shell::render_error;

    #[test]
    fn errors_print_each_message_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("sql: Schema error: no field x")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("Schema error: no field x")]
        struct Inner(#[source] Root);
        #[derive(Debug, thiserror::Error)]
        #[error("no field x")]
        struct Root;
        let error = anyhow::Error::new(Outer(Inner(Root)));
        assert_eq!(render_error(&error), "error: sql: Schema error: no field x");
        let error = error.context("running the query");
        assert_eq!(
            render_error(&error),
            "error: running the query\n  caused by: no field x"
        );
    }

    #[test]
    fn option_15_is_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads and sets one integer option.
        unsafe {
            assert_eq!(
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                1000,
                "mimalloc v3's purge_delay default"
            );
            return_freed_memory_soon();
            assert_eq!(
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                PURGE_DELAY_MS
            );
        }
    }
}
