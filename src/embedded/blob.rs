//! A [`BlobStore`] on a local directory tree, safe to share between processes.
//!
//! Layout: `<root>/<container>/<blob name>`, where the blob name's `/`
//! separated segments become directories, so a curated Parquet file is a plain
//! file a query engine can read straight from disk ([`FsBlobStore::container_path`]).
//!
//! Writes are crash-safe: the bytes go to a temp file in the target's
//! directory, are fsynced, renamed over the target, and the directory is
//! fsynced. A reader therefore sees either the old or the new blob, never a
//! torn one.
//!
//! Conditional writes are atomic across processes: every rename and delete
//! happens while holding an exclusive advisory lock (`flock`) on the
//! container's lock file, and the `IfNoneMatch` / `IfMatch` check is made under
//! the same lock. Only the short check+rename is serialized; the (possibly
//! large) temp file is written before the lock is taken.
//!
//! ETags are derived from the content: the first 128 bits of the SHA-256 of
//! the bytes plus the length, so they are stable across processes and
//! restarts with no side file. Two writes of identical bytes therefore have
//! the same etag: `IfMatch` is a compare-and-swap on the *value*, which is what
//! the state records (checkpoints, ownership) need. Listing caches etags per
//! file identity (inode, size, timestamps) so a listing does not rehash
//! unchanged files; conditional checks always hash afresh.
//!
//! Names of files and directories starting with `.hubflow-` are reserved (the
//! lock file and temp files) and are refused as blob name segments.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use hubflow_actors::ports::{
    BlobError, BlobProperties, BlobStore, ETag, PutCondition, validate_blob_name,
};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

/// Prefix of every file name the store keeps for itself.
const RESERVED_PREFIX: &str = ".hubflow-";
/// The per-container lock file.
const LOCK_FILE: &str = ".hubflow-lock";
/// Prefix of temp files (followed by pid and a random suffix).
const TEMP_PREFIX: &str = ".hubflow-tmp-";
/// Upper bound on cached etags before the cache is cleared.
const ETAG_CACHE_LIMIT: usize = 100_000;

/// A blob store on a local directory. Cheap to clone; clones share the etag
/// cache. Several processes may open the same root at once.
#[derive(Clone)]
pub struct FsBlobStore {
    root: PathBuf,
    etags: Arc<Mutex<HashMap<PathBuf, (FileKey, ETag)>>>,
}

impl std::fmt::Debug for FsBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsBlobStore")
            .field("root", &self.root)
            .finish()
    }
}

impl FsBlobStore {
    /// Open (creating it if needed) a store rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| {
            io_error(
                "",
                "",
                &format!("cannot create blob root {}", root.display()),
                e,
            )
        })?;
        Ok(FsBlobStore {
            root,
            etags: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The directory every container lives under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding `container`'s blobs (whether or not it exists).
    pub fn container_path(&self, container: &str) -> PathBuf {
        self.root.join(container)
    }

    /// Remove temp files older than `older_than` left behind by writers that
    /// crashed mid-put. Returns how many were removed. Safe to run while other
    /// processes write: a temp file younger than `older_than` is left alone.
    pub async fn remove_stale_temp_files(
        &self,
        container: &str,
        older_than: Duration,
    ) -> Result<usize, BlobError> {
        let this = self.clone();
        let container = container.to_string();
        blocking(&container.clone(), "", move || {
            let dir = this.existing_container(&container)?;
            let mut removed = 0;
            remove_stale_temps(&dir, older_than, &mut removed)
                .map_err(|e| io_error(&container, "", "cannot sweep temp files", e))?;
            Ok(removed)
        })
        .await
    }

    fn existing_container(&self, container: &str) -> Result<PathBuf, BlobError> {
        validate_container(container)?;
        let dir = self.container_path(container);
        match fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => Ok(dir),
            Ok(_) => Err(BlobError::ContainerNotFound {
                container: container.to_string(),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(BlobError::ContainerNotFound {
                container: container.to_string(),
            }),
            Err(e) => Err(io_error(container, "", "cannot stat container", e)),
        }
    }

    fn lock_container(&self, dir: &Path, container: &str) -> Result<File, BlobError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(|e| io_error(container, "", "cannot open container lock file", e))?;
        file.lock()
            .map_err(|e| io_error(container, "", "cannot lock container", e))?;
        Ok(file)
    }

    fn cached_etag(&self, path: &Path, key: &FileKey) -> Option<ETag> {
        let cache = self.etags.lock().ok()?;
        match cache.get(path) {
            Some((cached_key, etag)) if cached_key == key => Some(etag.clone()),
            _ => None,
        }
    }

    fn remember_etag(&self, path: &Path, key: FileKey, etag: &ETag) {
        if let Ok(mut cache) = self.etags.lock() {
            if cache.len() >= ETAG_CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(path.to_path_buf(), (key, etag.clone()));
        }
    }

    fn forget_etag(&self, path: &Path) {
        if let Ok(mut cache) = self.etags.lock() {
            cache.remove(path);
        }
    }

    fn put_blocking(
        &self,
        container: &str,
        name: &str,
        data: &[u8],
        condition: &PutCondition,
    ) -> Result<BlobProperties, BlobError> {
        let dir = self.existing_container(container)?;
        let target = blob_path(&dir, name)?;
        let parent = target
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.clone());
        let etag = etag_of(data);

        // A condition that already fails is reported before writing anything;
        // it is checked again under the lock below.
        if let PutCondition::IfNoneMatch = condition
            && path_is_file(&target)
        {
            return Err(conflict_exists(container, name));
        }

        let (mut temp, temp_path) = create_temp(&dir, &parent, container, name)?;
        let guard = TempGuard(Some(temp_path.clone()));
        temp.write_all(data)
            .and_then(|()| temp.sync_all())
            .map_err(|e| io_error(container, name, "cannot write temp file", e))?;

        let lock = self.lock_container(&dir, container)?;
        match condition {
            PutCondition::None => {}
            PutCondition::IfNoneMatch => {
                if path_is_file(&target) {
                    return Err(conflict_exists(container, name));
                }
            }
            PutCondition::IfMatch(expected) => match hash_file(&target) {
                Ok((current, _)) if &current == expected => {}
                Ok(_) => return Err(conflict_changed(container, name)),
                Err(e) if is_missing(&e) => return Err(conflict_changed(container, name)),
                Err(e) => return Err(io_error(container, name, "cannot read current blob", e)),
            },
        }
        fs::rename(&temp_path, &target).map_err(|e| {
            if target.is_dir() {
                other(
                    container,
                    name,
                    "a directory of longer blob names exists at this name".to_string(),
                )
            } else {
                io_error(container, name, "cannot rename temp file into place", e)
            }
        })?;
        guard.disarm();
        sync_dir(&parent).map_err(|e| io_error(container, name, "cannot fsync directory", e))?;
        // The temp handle is the renamed inode: its metadata is the blob's.
        let meta = temp
            .metadata()
            .map_err(|e| io_error(container, name, "cannot stat written blob", e))?;
        drop(lock);

        self.remember_etag(&target, FileKey::of(&meta), &etag);
        metrics::counter!("hubflow_fsblob_put_bytes_total").increment(data.len() as u64);
        Ok(BlobProperties {
            name: name.to_string(),
            etag,
            size: meta.len(),
            last_modified_ms: modified_ms(&meta),
        })
    }

    fn get_blocking(
        &self,
        container: &str,
        name: &str,
    ) -> Result<(Bytes, BlobProperties), BlobError> {
        let dir = self.existing_container(container)?;
        let path = blob_path(&dir, name)?;
        let mut file = open_blob(&path, container, name)?;
        let meta = file
            .metadata()
            .map_err(|e| io_error(container, name, "cannot stat blob", e))?;
        let mut data = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut data)
            .map_err(|e| io_error(container, name, "cannot read blob", e))?;
        let etag = etag_of(&data);
        self.remember_etag(&path, FileKey::of(&meta), &etag);
        let props = BlobProperties {
            name: name.to_string(),
            etag,
            size: data.len() as u64,
            last_modified_ms: modified_ms(&meta),
        };
        Ok((Bytes::from(data), props))
    }

    fn get_range_blocking(
        &self,
        container: &str,
        name: &str,
        range: Range<u64>,
    ) -> Result<Bytes, BlobError> {
        let dir = self.existing_container(container)?;
        let path = blob_path(&dir, name)?;
        let mut file = open_blob(&path, container, name)?;
        let size = file
            .metadata()
            .map_err(|e| io_error(container, name, "cannot stat blob", e))?
            .len();
        let start = range.start.min(size);
        let end = range.end.clamp(start, size);
        let mut data = vec![0u8; (end - start) as usize];
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_exact(&mut data))
            .map_err(|e| io_error(container, name, "cannot read blob range", e))?;
        Ok(Bytes::from(data))
    }

    fn properties_blocking(
        &self,
        container: &str,
        name: &str,
    ) -> Result<BlobProperties, BlobError> {
        let dir = self.existing_container(container)?;
        let path = blob_path(&dir, name)?;
        let file = open_blob(&path, container, name)?;
        self.properties_of_open(&path, file, container, name)
    }

    /// Properties of an open blob file, hashing it only when the etag cache
    /// does not know this exact file version.
    fn properties_of_open(
        &self,
        path: &Path,
        mut file: File,
        container: &str,
        name: &str,
    ) -> Result<BlobProperties, BlobError> {
        let meta = file
            .metadata()
            .map_err(|e| io_error(container, name, "cannot stat blob", e))?;
        let key = FileKey::of(&meta);
        let etag = match self.cached_etag(path, &key) {
            Some(etag) => etag,
            None => {
                let (etag, _) = hash_reader(&mut file)
                    .map_err(|e| io_error(container, name, "cannot hash blob", e))?;
                self.remember_etag(path, key, &etag);
                etag
            }
        };
        Ok(BlobProperties {
            name: name.to_string(),
            etag,
            size: meta.len(),
            last_modified_ms: modified_ms(&meta),
        })
    }

    fn list_blocking(
        &self,
        container: &str,
        prefix: &str,
    ) -> Result<Vec<BlobProperties>, BlobError> {
        let dir = self.existing_container(container)?;
        let mut names = Vec::new();
        collect_names(&dir, "", prefix, &mut names)
            .map_err(|e| io_error(container, prefix, "cannot list container", e))?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let path = blob_path(&dir, &name)?;
            let file = match File::open(&path) {
                Ok(file) => file,
                // Deleted (or replaced by a directory) since it was listed.
                Err(e) if is_missing(&e) => continue,
                Err(e) => return Err(io_error(container, &name, "cannot open blob", e)),
            };
            out.push(self.properties_of_open(&path, file, container, &name)?);
        }
        Ok(out)
    }

    fn delete_blocking(
        &self,
        container: &str,
        name: &str,
        if_match: Option<&ETag>,
    ) -> Result<(), BlobError> {
        let dir = self.existing_container(container)?;
        let path = blob_path(&dir, name)?;
        let not_found = || BlobError::NotFound {
            container: container.to_string(),
            name: name.to_string(),
        };
        let lock = self.lock_container(&dir, container)?;
        match if_match {
            Some(expected) => match hash_file(&path) {
                Ok((current, _)) if &current == expected => {}
                Ok(_) => return Err(conflict_changed(container, name)),
                Err(e) if is_missing(&e) => return Err(not_found()),
                Err(e) => return Err(io_error(container, name, "cannot read current blob", e)),
            },
            None => {
                if !path_is_file(&path) {
                    return Err(not_found());
                }
            }
        }
        fs::remove_file(&path).map_err(|e| {
            if is_missing(&e) {
                not_found()
            } else {
                io_error(container, name, "cannot delete blob", e)
            }
        })?;
        self.forget_etag(&path);
        // Remove directories the delete left empty, so a later blob may take
        // their name. Failing (not empty, raced) is fine. Then fsync the
        // deepest directory that is still there.
        let mut current = path.parent().unwrap_or(&dir);
        while current != dir && fs::remove_dir(current).is_ok() {
            current = current.parent().unwrap_or(&dir);
        }
        sync_dir(current).map_err(|e| io_error(container, name, "cannot fsync directory", e))?;
        drop(lock);
        Ok(())
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    fn describe(&self) -> String {
        format!("filesystem blob store at {}", self.root.display())
    }

    async fn create_container(&self, container: &str) -> Result<(), BlobError> {
        validate_container(container)?;
        let dir = self.container_path(container);
        let root = self.root.clone();
        let owned = container.to_string();
        blocking(container, "", move || {
            fs::create_dir_all(&dir)
                .and_then(|()| sync_dir(&root))
                .map_err(|e| io_error(&owned, "", "cannot create container", e))
        })
        .await
    }

    async fn put(
        &self,
        container: &str,
        name: &str,
        data: Bytes,
        condition: PutCondition,
    ) -> Result<BlobProperties, BlobError> {
        let this = self.clone();
        let (c, n) = (container.to_string(), name.to_string());
        blocking(container, name, move || {
            this.put_blocking(&c, &n, &data, &condition)
        })
        .await
    }

    async fn get(&self, container: &str, name: &str) -> Result<(Bytes, BlobProperties), BlobError> {
        let this = self.clone();
        let (c, n) = (container.to_string(), name.to_string());
        blocking(container, name, move || this.get_blocking(&c, &n)).await
    }

    async fn get_range(
        &self,
        container: &str,
        name: &str,
        range: Range<u64>,
    ) -> Result<Bytes, BlobError> {
        let this = self.clone();
        let (c, n) = (container.to_string(), name.to_string());
        blocking(container, name, move || {
            this.get_range_blocking(&c, &n, range)
        })
        .await
    }

    async fn properties(&self, container: &str, name: &str) -> Result<BlobProperties, BlobError> {
        let this = self.clone();
        let (c, n) = (container.to_string(), name.to_string());
        blocking(container, name, move || this.properties_blocking(&c, &n)).await
    }

    async fn list(&self, container: &str, prefix: &str) -> Result<Vec<BlobProperties>, BlobError> {
        let this = self.clone();
        let (c, p) = (container.to_string(), prefix.to_string());
        blocking(container, prefix, move || this.list_blocking(&c, &p)).await
    }

    async fn delete(
        &self,
        container: &str,
        name: &str,
        if_match: Option<&ETag>,
    ) -> Result<(), BlobError> {
        let this = self.clone();
        let (c, n) = (container.to_string(), name.to_string());
        let if_match = if_match.cloned();
        blocking(container, name, move || {
            this.delete_blocking(&c, &n, if_match.as_ref())
        })
        .await
    }
}

/// Run filesystem work off the async runtime.
async fn blocking<T, F>(container: &str, name: &str, f: F) -> Result<T, BlobError>
where
    F: FnOnce() -> Result<T, BlobError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => Err(other(
            container,
            name,
            format!("filesystem task failed: {join}"),
        )),
    }
}

/// The identity of one version of a file, for the etag cache. Every put
/// renames a fresh inode into place, so a changed blob changes its key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileKey {
    #[cfg(unix)]
    fn of(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }

    #[cfg(not(unix))]
    fn of(meta: &fs::Metadata) -> Self {
        let ns = |t: io::Result<SystemTime>| {
            t.ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i128)
        };
        FileKey {
            dev: 0,
            ino: 0,
            size: meta.len(),
            mtime_ns: ns(meta.modified()),
            ctime_ns: ns(meta.created()),
        }
    }
}

/// The etag of a blob's bytes: 128 bits of SHA-256 and the length, in hex.
pub fn etag_of(data: &[u8]) -> ETag {
    let digest = Sha256::digest(data);
    format_etag(&digest, data.len() as u64)
}

fn format_etag(digest: &[u8], len: u64) -> ETag {
    ETag(format!("{}-{len:x}", hex::encode(&digest[..16])))
}

fn hash_reader(reader: &mut impl Read) -> io::Result<(ETag, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((format_etag(&hasher.finalize(), len), len))
}

fn hash_file(path: &Path) -> io::Result<(ETag, u64)> {
    let mut file = File::open(path)?;
    if file.metadata()?.is_dir() {
        return Err(io::Error::new(ErrorKind::NotFound, "is a directory"));
    }
    hash_reader(&mut file)
}

fn validate_container(container: &str) -> Result<(), BlobError> {
    let invalid = |reason: &str| {
        Err(BlobError::InvalidName {
            name: container.to_string(),
            reason: format!("container name {reason}"),
        })
    };
    if container.is_empty() || container.len() > 255 {
        return invalid("length must be 1..=255");
    }
    if container.starts_with('.') {
        return invalid("must not start with '.'");
    }
    if container
        .chars()
        .any(|c| c.is_control() || c == '/' || c == '\\')
    {
        return invalid("must not contain '/', '\\' or control characters");
    }
    Ok(())
}

/// Validate `name` and map it to its path under the container directory.
fn blob_path(container_dir: &Path, name: &str) -> Result<PathBuf, BlobError> {
    validate_blob_name(name)?;
    let mut path = container_dir.to_path_buf();
    for segment in name.split('/') {
        if segment.starts_with(RESERVED_PREFIX) {
            return Err(BlobError::InvalidName {
                name: name.to_string(),
                reason: format!("segments starting with {RESERVED_PREFIX:?} are reserved"),
            });
        }
        path.push(segment);
    }
    Ok(path)
}

fn open_blob(path: &Path, container: &str, name: &str) -> Result<File, BlobError> {
    let not_found = || BlobError::NotFound {
        container: container.to_string(),
        name: name.to_string(),
    };
    let file = File::open(path).map_err(|e| {
        if is_missing(&e) {
            not_found()
        } else {
            io_error(container, name, "cannot open blob", e)
        }
    })?;
    match file.metadata() {
        Ok(meta) if meta.is_file() => Ok(file),
        Ok(_) => Err(not_found()),
        Err(e) => Err(io_error(container, name, "cannot stat blob", e)),
    }
}

/// Create the temp file for a put, creating the parent directories. Retries
/// when a concurrent delete removes a freshly created (still empty) parent.
fn create_temp(
    container_dir: &Path,
    parent: &Path,
    container: &str,
    name: &str,
) -> Result<(File, PathBuf), BlobError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        if let Err(e) = fs::create_dir_all(parent) {
            let message = if e.kind() == ErrorKind::AlreadyExists || is_missing(&e) {
                "a blob exists where a directory of this name's prefix is needed".to_string()
            } else {
                format!(
                    "cannot create directory under {}: {e}",
                    container_dir.display()
                )
            };
            return Err(other(container, name, message));
        }
        let temp_path = parent.join(format!(
            "{TEMP_PREFIX}{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
        {
            Ok(file) => return Ok((file, temp_path)),
            Err(e) if e.kind() == ErrorKind::NotFound && attempts < 10 => {
                debug!(container, name, "parent directory vanished, retrying");
            }
            Err(e) => return Err(io_error(container, name, "cannot create temp file", e)),
        }
    }
}

/// Removes the temp file on drop unless disarmed (after a successful rename).
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take()
            && let Err(error) = fs::remove_file(&path)
            && error.kind() != ErrorKind::NotFound
        {
            warn!(path = %path.display(), %error, "cannot remove temp file");
        }
    }
}

fn collect_names(dir: &Path, rel: &str, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        // Removed by a concurrent delete while we walked.
        Err(e) if is_missing(&e) && !rel.is_empty() => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if is_missing(&e) => continue,
            Err(e) => return Err(e),
        };
        let file_name = entry.file_name();
        let Some(segment) = file_name.to_str() else {
            warn!(dir = %dir.display(), "skipping a file whose name is not utf-8");
            continue;
        };
        if segment.starts_with(RESERVED_PREFIX) {
            continue;
        }
        let name = if rel.is_empty() {
            segment.to_string()
        } else {
            format!("{rel}/{segment}")
        };
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if is_missing(&e) => continue,
            Err(e) => return Err(e),
        };
        if file_type.is_dir() {
            let as_dir = format!("{name}/");
            if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                collect_names(&entry.path(), &name, prefix, out)?;
            }
        } else if file_type.is_file() && name.starts_with(prefix) {
            out.push(name);
        }
    }
    Ok(())
}

fn remove_stale_temps(dir: &Path, older_than: Duration, removed: &mut usize) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if is_missing(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        let is_temp = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TEMP_PREFIX));
        if file_type.is_dir() {
            remove_stale_temps(&entry.path(), older_than, removed)?;
        } else if is_temp {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= older_than);
            if old && fs::remove_file(entry.path()).is_ok() {
                *removed += 1;
            }
        }
    }
    Ok(())
}

fn path_is_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// Missing file, or a path component that is a file rather than a directory.
fn is_missing(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

fn modified_ms(meta: &fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn conflict_exists(container: &str, name: &str) -> BlobError {
    metrics::counter!("hubflow_fsblob_conflicts_total", "kind" => "already_exists").increment(1);
    BlobError::AlreadyExists {
        container: container.to_string(),
        name: name.to_string(),
    }
}

fn conflict_changed(container: &str, name: &str) -> BlobError {
    metrics::counter!("hubflow_fsblob_conflicts_total", "kind" => "precondition_failed")
        .increment(1);
    BlobError::PreconditionFailed {
        container: container.to_string(),
        name: name.to_string(),
    }
}

fn other(container: &str, name: &str, message: String) -> BlobError {
    BlobError::Other {
        container: container.to_string(),
        name: name.to_string(),
        message,
    }
}

fn io_error(container: &str, name: &str, context: &str, error: io::Error) -> BlobError {
    let message = format!("{context}: {error}");
    match error.kind() {
        ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            BlobError::Transient {
                container: container.to_string(),
                name: name.to_string(),
                message,
            }
        }
        _ => other(container, name, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_depends_on_content_and_length() {
        assert_eq!(etag_of(b"abc"), etag_of(b"abc"));
        assert_ne!(etag_of(b"abc"), etag_of(b"abd"));
        assert!(etag_of(b"abc").0.ends_with("-3"));
        let (streamed, len) = hash_reader(&mut &b"abc"[..]).unwrap();
        assert_eq!(streamed, etag_of(b"abc"));
        assert_eq!(len, 3);
    }

    #[test]
    fn reserved_and_escaping_names_are_refused() {
        let dir = Path::new("/tmp/c");
        assert!(blob_path(dir, "a/../b").is_err());
        assert!(blob_path(dir, ".hubflow-lock").is_err());
        assert!(blob_path(dir, "x/.hubflow-tmp-1").is_err());
        assert_eq!(blob_path(dir, "a/b").unwrap(), Path::new("/tmp/c/a/b"));
        assert!(validate_container("..").is_err());
        assert!(validate_container("a/b").is_err());
        assert!(validate_container("raw").is_ok());
    }
}
