//! End-to-end throughput under chaos as a fraction of throughput without
//! it: the same N demo records (served all at once on loopback) through the
//! in-process pipeline (fetch → hub → raw → Parquet), once calm, then with
//! the chaos driver at 1 and at 5 faults per second (half kills, half
//! panics, every kind of actor including supervisors). Each run ends when
//! everything is curated; the counts are checked exact.
//!
//! `cargo bench --bench chaos_throughput` (records:
//! `HUBFLOW_BENCH_RECORDS`, default 100000; rates: `HUBFLOW_BENCH_RATES`,
//! default "0,1,5"; rounds: `HUBFLOW_BENCH_ROUNDS`, default 1)

use std::sync::Arc;
use std::time::{Duration, Instant};

use hubflow::backends::Backends;
use hubflow::chaos::{Chaos, ChaosConfig};
use hubflow::config::Config;
use hubflow::demo::{self, DemoConfig};
use hubflow::pipeline::Pipeline;
use hubflow::source::HttpSource;
use hubflow_actors::ports::Source;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run_once(total: u64, rate: f64, seed: u64) -> anyhow::Result<(Duration, u64)> {
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(demo::serve(
        listener,
        DemoConfig {
            total,
            ..DemoConfig::default()
        },
        async {
            let _ = stopped.await;
        },
    ));
    let mut source = demo::demo_source_config(&url);
    source.query.insert("limit".into(), "1000".into());
    let mut config = Config {
        sources: vec![source],
        ..Config::default()
    };
    config.pipeline.data_dir = dir.path().to_path_buf();
    config.batch.max_age_ms = 300;
    config.fetcher.poll_interval_ms = 200;
    config.fetcher.retry_initial_ms = 50;
    config.transform.poll_ms = 200;
    config.demo.enabled = false;
    config.supervision.backoff_initial_ms = 10;
    config.supervision.backoff_max_ms = 200;
    config.supervision.max_restarts = 1_000;
    let settings = config.validate()?;
    let source: Arc<dyn Source> = Arc::new(HttpSource::new(settings.sources[0].clone())?);
    let backends = Backends::embedded(&settings).await?;

    let started = Instant::now();
    let pipeline = Pipeline::start(settings.clone(), backends, vec![source]).await?;
    let chaos = Chaos::start(
        pipeline.root.status().clone(),
        ChaosConfig {
            rate_per_sec: rate,
            panic_share: 0.5,
            seed,
        },
    );
    loop {
        let p = pipeline.progress().await?;
        if p.idle(1) && p.transformed >= total {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1_800),
            "no finish: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let report = chaos.stop().await;
    pipeline.shutdown().await;
    let _ = stop.send(());
    let _ = server.await;
    let rows = hubflow::query::curated(
        &settings.curated_location(),
        "SELECT count(*) AS n, count(DISTINCT id) AS d FROM demo",
    )
    .await?;
    let text = hubflow::query::format_batches(&rows, hubflow::query::OutputFormat::Json)?;
    let counts: serde_json::Value = serde_json::from_str(&text)?;
    anyhow::ensure!(
        counts[0]["n"] == total && counts[0]["d"] == total,
        "curated is not exact: {counts}"
    );
    Ok((elapsed, report.total()))
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we use.
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    // Injected panics are expected; printing each would cost the run time.
    std::panic::set_hook(Box::new(|_| {}));
    let total: u64 = env("HUBFLOW_BENCH_RECORDS", 100_000);
    let rounds: u32 = env("HUBFLOW_BENCH_ROUNDS", 1);
    let rates: Vec<f64> = env("HUBFLOW_BENCH_RATES", "0,1,5".to_string())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut baseline = None;
    println!("records={total} rounds={rounds}");
    println!(
        "{:>10} {:>10} {:>12} {:>8} {:>8}",
        "faults/s", "seconds", "records/s", "faults", "ratio"
    );
    for rate in rates {
        let mut best = Duration::MAX;
        let mut faults = 0;
        for round in 0..rounds {
            let (elapsed, dealt) = rt.block_on(run_once(total, rate, 7 + u64::from(round)))?;
            if elapsed < best {
                best = elapsed;
                faults = dealt;
            }
        }
        let throughput = total as f64 / best.as_secs_f64();
        let base = *baseline.get_or_insert(throughput);
        println!(
            "{rate:>10} {:>10.2} {throughput:>12.0} {faults:>8} {:>8.2}",
            best.as_secs_f64(),
            throughput / base
        );
    }
    Ok(())
}
