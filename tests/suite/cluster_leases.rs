//! Fetcher leases shared fairly: three `hubflow run` processes and five
//! sources. Each node holds its share (one or two leases); when the node
//! holding two is SIGKILLed the survivors take its sources once the leases
//! expire; when a new node joins, a node over its share hands a lease back
//! (its fetcher stops first, cursor saved) and the newcomer takes it. Every
//! source's records are curated exactly once.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::nodes::Nodes;
use hubflow::cluster::LeaseStore;
use hubflow_actors::now_ms;
use hubflow_actors::ports::StateStore;

use crate::cluster::{Store, curated_rows, start_three, write_config};

const SOURCES: [&str; 5] = ["s0", "s1", "s2", "s3", "s4"];

/// Who holds each source's fetcher lease now.
async fn holders(leases: &LeaseStore) -> BTreeMap<&'static str, Option<String>> {
    let now = now_ms();
    let mut out = BTreeMap::new();
    for source in SOURCES {
        let holder = leases
            .load(&format!("fetcher/{source}"))
            .await
            .unwrap()
            .and_then(|r| r.value.live_holder(now).map(str::to_string));
        out.insert(source, holder);
    }
    out
}

/// Every lease held by one of `nodes`, each holding 5/n (±1).
fn fair(holders: &BTreeMap<&str, Option<String>>, nodes: &[String]) -> bool {
    let mut counts: BTreeMap<&str, usize> = nodes.iter().map(|n| (n.as_str(), 0)).collect();
    for holder in holders.values() {
        match holder.as_deref().and_then(|h| counts.get_mut(h)) {
            Some(c) => *c += 1,
            None => return false,
        }
    }
    let (min, max) = (
        counts.values().min().copied().unwrap_or(0),
        counts.values().max().copied().unwrap_or(0),
    );
    max - min <= 1
}

async fn until_fair(nodes: &Nodes, leases: &LeaseStore, what: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let now = holders(leases).await;
        if fair(&now, &nodes.ids()) {
            eprintln!("{what}: {now:?} after {:?}", start.elapsed());
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not fair after {limit:?}: {now:?};{}",
            nodes.tails()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_sources_spread_over_three_nodes_and_move_fairly() {
    let _heavy = common::exclusive().await;
    let total = 1_500u64;
    let dir = tempfile::tempdir().unwrap();
    let demo = common::DemoServer::streaming(total, Some(120.0)).await;
    let store = Store::Filesystem;
    let (config_path, settings) = write_config(dir.path(), &demo.url, &store, 4, |c| {
        let template = c.sources[0].clone();
        c.sources = SOURCES
            .iter()
            .map(|name| {
                let mut s = template.clone();
                s.name = (*name).to_string();
                s
            })
            .collect();
    });
    let mut nodes = Nodes::new(dir.path().to_path_buf(), config_path);
    let backends = start_three(&mut nodes, &settings, &store).await;
    let leases = LeaseStore::new(
        StateStore::new(backends.blobs.clone(), "state"),
        "local",
        "observer",
        crate::cluster::LEASE,
    );
    until_fair(&nodes, &leases, "three nodes", Duration::from_secs(40)).await;

    // SIGKILL a node holding two: the survivors take its sources after the
    // expiry (quota 3 each now).
    let now = holders(&leases).await;
    let victim = nodes
        .ids()
        .into_iter()
        .find(|n| now.values().filter(|h| h.as_deref() == Some(n)).count() == 2)
        .expect("a node with two leases");
    nodes.kill(&victim);
    until_fair(&nodes, &leases, "after the kill", Duration::from_secs(30)).await;

    // A fourth node: somebody holds three, hands one back, d takes it.
    nodes.start("d");
    until_fair(&nodes, &leases, "after d joined", Duration::from_secs(40)).await;
    let now = holders(&leases).await;
    assert!(
        now.values().any(|h| h.as_deref() == Some("d")),
        "d holds nothing: {now:?}"
    );
    let handed = nodes
        .ids()
        .iter()
        .map(|id| std::fs::read_to_string(nodes.log(id)).unwrap_or_default())
        .any(|log| log.contains("fetcher lease handed back"));
    assert!(handed, "no node handed a lease back;{}", nodes.tails());

    let distinct = async || {
        let mut n = 0;
        for source in SOURCES {
            let sql = format!("SELECT count(DISTINCT id) AS d FROM {source}");
            let rows = curated_rows(&settings, backends.blobs.as_ref(), &sql).await;
            n += rows[0]["d"].as_u64().unwrap_or(0);
        }
        n
    };
    nodes
        .finish_and_drain(&settings, &backends, total * SOURCES.len() as u64, distinct)
        .await;
    eprintln!(
        "at the end: {:?}",
        hubflow::pipeline::Progress::read(&settings, &backends)
            .await
            .unwrap()
    );
    for source in SOURCES {
        let rows = curated_rows(
            &settings,
            backends.blobs.as_ref(),
            &format!("SELECT count(*) AS n, count(DISTINCT id) AS d FROM {source}"),
        )
        .await;
        assert_eq!(
            (rows[0]["n"].as_u64(), rows[0]["d"].as_u64()),
            (Some(total), Some(total)),
            "{source}"
        );
    }
    demo.stop().await;
}
