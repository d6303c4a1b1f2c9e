//! A local mirror of a remote curated container, for `hubflow query`.
//!
//! DataFusion reads local Parquet files; when the curated container is in
//! Azure Blob Storage, [`sync`] brings the directory at `dir` up to date with
//! it before a query: it downloads Parquet files that are new or whose etag
//! changed (a replay rewrites files under the same name), deletes local files
//! that are gone from the container, and keeps the rest. What it holds is
//! recorded in `dir/.manifest.json` (name → etag), so a second query
//! downloads nothing. Downloads run a few at a time, each to a temporary file
//! renamed into place, so an interrupted sync leaves no half file behind and
//! the next one finishes the job.
//!
//! Blob names come from outside the process: a name that is absolute or has
//! a `..` component is refused (logged and skipped), never written outside
//! `dir`.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use futures::StreamExt;
use hubflow_actors::ports::{BlobError, BlobProperties, BlobStore};
use tracing::{info, warn};

const MANIFEST: &str = ".manifest.json";
const PARALLEL_DOWNLOADS: usize = 8;

/// What one [`sync`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub downloaded: usize,
    pub removed: usize,
    pub kept: usize,
    pub bytes_downloaded: u64,
    /// Names refused as unsafe paths.
    pub refused: usize,
}

/// Bring `dir` up to date with the Parquet files of `container` in `store`.
pub async fn sync(
    store: &dyn BlobStore,
    container: &str,
    dir: &Path,
) -> anyhow::Result<SyncReport> {
    let listed = match store.list(container, "").await {
        Ok(listed) => listed,
        // Nothing curated yet: an empty mirror, and the query says so.
        Err(BlobError::ContainerNotFound { .. }) => Vec::new(),
        Err(error) => {
            return Err(error).with_context(|| format!("listing container {container}"));
        }
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut report = SyncReport::default();
    let wanted = wanted_files(listed, container, &mut report);
    let manifest_path = dir.join(MANIFEST);
    let mut manifest = read_manifest(&manifest_path);

    // Files gone from the container, or about to be replaced.
    let stale: Vec<String> = manifest
        .iter()
        .filter(|(name, etag)| wanted.get(*name) != Some(*etag))
        .map(|(name, _)| name.clone())
        .collect();
    for name in stale {
        if let Some(path) = safe_relative(&name).map(|p| dir.join(p)) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
        }
        manifest.remove(&name);
        if !wanted.contains_key(&name) {
            report.removed += 1;
        }
    }

    let to_fetch: Vec<(String, String)> = wanted
        .iter()
        .filter(|(name, etag)| {
            manifest.get(*name) != Some(*etag)
                || safe_relative(name).is_none_or(|p| !dir.join(p).exists())
        })
        .map(|(n, e)| (n.clone(), e.clone()))
        .collect();
    report.kept = wanted.len() - to_fetch.len();

    let failure = download_all(store, container, dir, to_fetch, &mut manifest, &mut report).await;
    // The manifest records what is on disk, even after a failed download.
    write_manifest(&manifest_path, &manifest)?;
    // Parquet files the manifest lost track of (it was corrupt or deleted)
    // and the container no longer has: a query must not read them.
    report.removed += remove_unlisted(dir, dir, &wanted)?;
    if let Some(error) = failure {
        return Err(error);
    }
    info!(
        container,
        downloaded = report.downloaded,
        removed = report.removed,
        kept = report.kept,
        bytes = report.bytes_downloaded,
        "curated mirror synced"
    );
    Ok(report)
}

/// Download `to_fetch` into `dir`, a few at a time, recording each file
/// in `manifest`; the first failure, if any.
async fn download_all(
    store: &dyn BlobStore,
    container: &str,
    dir: &Path,
    to_fetch: Vec<(String, String)>,
    manifest: &mut BTreeMap<String, String>,
    report: &mut SyncReport,
) -> Option<anyhow::Error> {
    let bar = if to_fetch.len() > 1 {
        crate::progress::bar(to_fetch.len() as u64, "files", "mirroring curated")
    } else {
        None
    };
    let mut downloads = futures::stream::iter(to_fetch)
        .map(|(name, etag)| async move {
            let result = download(store, container, &name, dir).await;
            (name, etag, result)
        })
        .buffer_unordered(PARALLEL_DOWNLOADS);
    let mut failure = None;
    while let Some((name, etag, result)) = downloads.next().await {
        match result {
            Ok(bytes) => {
                report.downloaded += 1;
                report.bytes_downloaded += bytes;
                manifest.insert(name, etag);
                if let Some(bar) = &bar {
                    bar.inc(1);
                    bar.set_message(format!("{} MB", report.bytes_downloaded / 1_000_000));
                }
            }
            Err(error) => {
                failure.get_or_insert(error);
            }
        }
    }
    drop(downloads);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    failure
}

/// The curated Parquet files of a listing, by name, with their etags;
/// names that are not safe relative paths are refused (counted).
fn wanted_files(
    listed: Vec<BlobProperties>,
    container: &str,
    report: &mut SyncReport,
) -> BTreeMap<String, String> {
    let mut wanted = BTreeMap::new();
    for blob in listed {
        if !blob.name.ends_with(".parquet") {
            continue;
        }
        if safe_relative(&blob.name).is_none() {
            warn!(container, blob = %blob.name, "blob name is not a safe relative path, not mirrored");
            report.refused += 1;
            continue;
        }
        wanted.insert(blob.name, blob.etag.0);
    }
    wanted
}

/// What the mirror held after the last sync (empty when missing or
/// unreadable: everything is mirrored again).
fn read_manifest(path: &Path) -> BTreeMap<String, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            warn!(%error, path = %path.display(), "unreadable mirror manifest, mirroring again");
            BTreeMap::new()
        }),
        Err(_) => BTreeMap::new(),
    }
}

async fn download(
    store: &dyn BlobStore,
    container: &str,
    name: &str,
    dir: &Path,
) -> anyhow::Result<u64> {
    let relative = safe_relative(name).context("unsafe blob name")?;
    let path = dir.join(relative);
    let (bytes, _) = store
        .get(container, name)
        .await
        .with_context(|| format!("downloading {container}/{name}"))?;
    let parent = path.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::NamedTempFile::new_in(parent)
        .with_context(|| format!("temporary file in {}", parent.display()))?;
    std::fs::write(tmp.path(), &bytes)
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(&path)
        .with_context(|| format!("moving the download to {}", path.display()))?;
    Ok(bytes.len() as u64)
}

/// Delete `.parquet` files under `dir` that are not in `wanted`.
fn remove_unlisted(
    root: &Path,
    dir: &Path,
    wanted: &BTreeMap<String, String>,
) -> anyhow::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            removed += remove_unlisted(root, &path, wanted)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            let name = path
                .strip_prefix(root)
                .ok()
                .and_then(|p| p.to_str())
                .map(str::to_string);
            if name.is_none_or(|n| !wanted.contains_key(&n)) {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

fn write_manifest(path: &Path, manifest: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let dir = path.parent().context("manifest path has no directory")?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(tmp.path(), serde_json::to_vec(manifest)?)?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `name` as a relative path with only normal components.
fn safe_relative(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    if name.is_empty() || name.contains('\\') {
        return None;
    }
    path.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use hubflow_actors::ports::PutCondition;
    use hubflow_actors::ports::memory::MemoryBlobStore;

    async fn put(store: &MemoryBlobStore, name: &str, body: &'static [u8]) {
        store
            .put(
                "curated",
                name,
                Bytes::from_static(body),
                PutCondition::None,
            )
            .await
            .unwrap();
    }

    #[test]
    fn only_plain_relative_names_are_mirrored() {
        // Our stores refuse such names, another writer's may not.
        for bad in [
            "../escape.parquet",
            "/abs.parquet",
            "a/../../b.parquet",
            "a\\b.parquet",
            "",
        ] {
            assert_eq!(safe_relative(bad), None, "{bad:?}");
        }
        assert_eq!(
            safe_relative("demo/date=2026-11-28/hour=08/a.parquet"),
            Some(PathBuf::from("demo/date=2026-11-28/hour=08/a.parquet"))
        );
    }

    #[tokio::test]
    async fn mirrors_new_changed_and_removed_files() {
        let store = MemoryBlobStore::new();
        let dir = tempfile::tempdir().unwrap();
        // No container yet: an empty mirror.
        assert_eq!(
            sync(&store, "curated", dir.path()).await.unwrap(),
            SyncReport::default()
        );

        store.create_container("curated").await.unwrap();
        put(&store, "demo/date=2026-11-28/hour=08/a.parquet", b"a1").await;
        put(&store, "demo/date=2026-11-28/hour=08/b.parquet", b"b1").await;
        put(&store, "demo/notes.txt", b"not parquet").await;
        let first = sync(&store, "curated", dir.path()).await.unwrap();
        assert_eq!((first.downloaded, first.kept, first.refused), (2, 0, 0));
        let a = dir.path().join("demo/date=2026-11-28/hour=08/a.parquet");
        assert_eq!(std::fs::read(&a).unwrap(), b"a1");
        assert!(!dir.path().join("demo/notes.txt").exists());

        // Unchanged: nothing downloaded.
        let again = sync(&store, "curated", dir.path()).await.unwrap();
        assert_eq!((again.downloaded, again.kept, again.removed), (0, 2, 0));

        // A rewrite (new etag), a deletion, a new file, a lost local copy.
        put(&store, "demo/date=2026-11-28/hour=08/a.parquet", b"a2").await;
        store
            .delete("curated", "demo/date=2026-11-28/hour=08/b.parquet", None)
            .await
            .unwrap();
        put(&store, "demo/date=2026-11-28/hour=09/c.parquet", b"c1").await;
        let third = sync(&store, "curated", dir.path()).await.unwrap();
        assert_eq!((third.downloaded, third.kept, third.removed), (2, 0, 1));
        assert_eq!(std::fs::read(&a).unwrap(), b"a2");
        assert!(
            !dir.path()
                .join("demo/date=2026-11-28/hour=08/b.parquet")
                .exists()
        );
        std::fs::remove_file(&a).unwrap();
        let fourth = sync(&store, "curated", dir.path()).await.unwrap();
        assert_eq!((fourth.downloaded, fourth.kept), (1, 1));

        // A corrupt manifest only costs a full mirror, and a file deleted
        // meanwhile does not survive locally.
        std::fs::write(dir.path().join(MANIFEST), b"{oops").unwrap();
        store
            .delete("curated", "demo/date=2026-11-28/hour=09/c.parquet", None)
            .await
            .unwrap();
        let fifth = sync(&store, "curated", dir.path()).await.unwrap();
        assert_eq!((fifth.downloaded, fifth.removed), (1, 1));
        assert!(
            !dir.path()
                .join("demo/date=2026-11-28/hour=09/c.parquet")
                .exists()
        );
    }
}
