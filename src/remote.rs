//! The remote store: any object_store URL (`s3://`, `gs://`, `az://`,
//! `file://`, `http(s)://`) seen as a flat key space under a prefix.
//!
//! ```text
//! <url>/packs/<id>.pack   packs, byte for byte as in the local store
//! <url>/packs/<id>.idx    a pack's footer alone, as an index table
//! <url>/index/<id>        index segments, one per push: record id → pack
//! ```
//!
//! Every request goes through [`Remote::request`]: it counts requests (for
//! reports and for fault injection in tests), retries transient failures
//! with backoff, and turns errors into messages that name the key and the
//! remote. Credentials come from each cloud's own environment and config
//! chain and never appear in a message.

use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("{op} {key} on {url}: {message}")]
    Request {
        op: &'static str,
        key: String,
        url: String,
        message: String,
    },
    #[error("{what} on {url} is damaged: {reason}")]
    Damaged {
        what: String,
        url: String,
        reason: String,
    },
    #[error("starting the transfer runtime: {0}")]
    Runtime(std::io::Error),
}

pub type Result<T, E = RemoteError> = std::result::Result<T, E>;

/// Packs larger than this go up in parts.
pub const MULTIPART_AT: u64 = 16 << 20;
/// The size of one part of a multipart upload.
pub const PART_SIZE: usize = 16 << 20;
/// Attempts per request at this layer (the HTTP stores retry inside each
/// attempt too, with their own backoff).
const ATTEMPTS: u32 = 3;

/// Which requests fail on purpose (tests; `LODE_TEST_FAIL_REQUEST=k` for
/// request k only, `k+` for k and every request after it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Once(u64),
    From(u64),
}

impl Fault {
    pub fn parse(s: &str) -> Option<Fault> {
        match s.strip_suffix('+') {
            Some(k) => k.parse().ok().map(Fault::From),
            None => s.parse().ok().map(Fault::Once),
        }
    }

    fn hits(self, n: u64) -> bool {
        match self {
            Fault::Once(k) => n == k,
            Fault::From(k) => n >= k,
        }
    }
}

/// One remote store. Holds the async runtime its requests run on; callers
/// use [`Remote::block_on`] and stay synchronous.
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    root: Key,
    runtime: tokio::runtime::Runtime,
    requests: AtomicU64,
    fault: Option<Fault>,
    /// Requests in flight at once.
    pub transfers: usize,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.url)
    }
}

/// Turn what a user typed into a remote URL: URLs stay as they are, a
/// local path becomes an absolute `file://` URL.
pub fn normalize_url(input: &str, cwd: &Path) -> Result<String> {
    let bad = |reason: &str| RemoteError::Url {
        url: input.to_string(),
        reason: reason.to_string(),
    };
    if input.trim().is_empty() {
        return Err(bad("it is empty"));
    }
    if input.contains("://") {
        let url = url::Url::parse(input).map_err(|e| bad(&e.to_string()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "credentials do not belong in the URL (it is committed); use the store's environment variables",
            ));
        }
        return match url.scheme() {
            "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" | "file" | "http" | "https" => {
                Ok(input.trim_end_matches('/').to_string())
            }
            other => Err(bad(&format!(
                "unknown scheme {other:?}; use s3://, gs://, az://, file://, http(s):// or a local directory"
            ))),
        };
    }
    let path = Path::new(input);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    let abs = lexical_normalize(&joined);
    let url =
        url::Url::from_directory_path(&abs).map_err(|_| bad("not a usable directory path"))?;
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Resolve `.` and `..` in a path without touching the file system.
pub fn lexical_normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

impl Remote {
    /// Connect to the store at `url` (nothing is sent until a request).
    pub fn open(url: &str) -> Result<Remote> {
        let bad = |reason: String| RemoteError::Url {
            url: url.to_string(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
        };
        let (store, root): (Arc<dyn ObjectStore>, Key) = match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|_| bad("not a local path".into()))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| bad(format!("creating {}: {e}", dir.display())))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(store), Key::default())
            }
            "s3" | "s3a" => {
                let store = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_retry(retry)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(store), url_prefix(&parsed)?)
            }
            "gs" => {
                let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(store), url_prefix(&parsed)?)
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let store = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(store), url_prefix(&parsed)?)
            }
            "http" | "https" => {
                let store = object_store::http::HttpBuilder::new()
                    .with_url(url)
                    .with_retry(retry)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(store), Key::default())
            }
            other => return Err(bad(format!("unknown scheme {other:?}"))),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("lode-transfer")
            .enable_all()
            .build()
            .map_err(RemoteError::Runtime)?;
        Ok(Remote {
            url: url.to_string(),
            store,
            root,
            runtime,
            requests: AtomicU64::new(0),
            fault: None,
            transfers: 8,
        })
    }

    /// Requests in flight at once (at least 1).
    pub fn with_transfers(mut self, n: usize) -> Remote {
        self.transfers = n.max(1);
        self
    }

    /// Make request `k` (counted from 1) fail, or every request from `k`.
    pub fn with_fault(mut self, fault: Option<Fault>) -> Remote {
        self.fault = fault;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Requests sent so far (retries included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    fn key(&self, rel: &str) -> Key {
        if self.root.as_ref().is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.root))
        }
    }

    /// One request, retried with backoff while its error is transient.
    async fn request<T, F, Fut>(&self, op: &'static str, rel: &str, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let result = match self.injected() {
                Some(e) => Err(e),
                None => f().await,
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if attempt < ATTEMPTS && transient(&e) => {
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(RemoteError::Request {
                        op,
                        key: rel.to_string(),
                        url: self.url.clone(),
                        message: describe(&e),
                    });
                }
            }
        }
    }

    /// Store `bytes` at `rel`. Keys are content addressed, so an object
    /// already there holds the same bytes: create-only where the store
    /// honours it, a harmless overwrite where it does not.
    pub async fn put(&self, rel: &str, bytes: Bytes) -> Result<()> {
        let key = self.key(rel);
        let created = self
            .request("upload", rel, || {
                let payload = PutPayload::from(bytes.clone());
                let key = key.clone();
                async move {
                    match self
                        .store
                        .put_opts(&key, payload, PutOptions::from(PutMode::Create))
                        .await
                    {
                        Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
                        Err(object_store::Error::NotImplemented { .. }) => {
                            Err(object_store::Error::NotImplemented {
                                operation: "create-only put".into(),
                                implementer: "store".into(),
                            })
                        }
                        other => other.map(|_| ()),
                    }
                }
            })
            .await;
        match created {
            Err(RemoteError::Request { message, .. }) if message.contains("create-only put") => {
                self.request("upload", rel, || self.store.put(&key, bytes.clone().into()))
                    .await
                    .map(|_| ())
            }
            other => other,
        }
    }

    /// Upload the local file `path` to `rel`: in one request when small,
    /// in parts of [`PART_SIZE`] (several in flight) when large. The bytes
    /// sent are hashed on the way; when they do not hash to `expect` the
    /// upload is abandoned (a damaged local pack is never published).
    pub async fn put_file(
        &self,
        rel: &str,
        path: &Path,
        expect: crate::id::Id,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        let local = |e: std::io::Error| RemoteError::Request {
            op: "read",
            key: path.display().to_string(),
            url: "this machine".into(),
            message: e.to_string(),
        };
        let size = std::fs::metadata(path).map_err(local)?.len();
        if size <= MULTIPART_AT {
            let p = path.to_path_buf();
            let bytes = tokio::task::spawn_blocking(move || std::fs::read(p))
                .await
                .expect("read task")
                .map_err(local)?;
            if crate::id::Id::of_chunk(&bytes) != expect {
                return Err(RemoteError::Damaged {
                    what: format!("local pack {}", path.display()),
                    url: "this machine".into(),
                    reason: "its bytes do not hash to its name; run `lode fsck`".into(),
                });
            }
            let n = bytes.len() as u64;
            self.put(rel, Bytes::from(bytes)).await?;
            progress(n);
            return Ok(());
        }
        // A multipart upload is retried whole: a part cannot be sent twice.
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.multipart_once(rel, path, size, expect, progress).await {
                Ok(()) => return Ok(()),
                Err((e, true)) if attempt < ATTEMPTS => {
                    let _ = e;
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                    attempt += 1;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Count a request; the injected failure if this one is to fail.
    fn injected(&self) -> Option<object_store::Error> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        self.fault
            .is_some_and(|f| f.hits(n))
            .then(|| object_store::Error::Generic {
                store: "fault injection",
                source: format!("request {n} failed on purpose (LODE_TEST_FAIL_REQUEST)").into(),
            })
    }

    /// One multipart upload; the error says whether another try may help.
    async fn multipart_once(
        &self,
        rel: &str,
        path: &Path,
        size: u64,
        expect: crate::id::Id,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), (RemoteError, bool)> {
        let local = |e: std::io::Error| {
            let e = RemoteError::Request {
                op: "read",
                key: path.display().to_string(),
                url: "this machine".into(),
                message: e.to_string(),
            };
            (e, false)
        };
        let remote = |op: &'static str, e: object_store::Error| {
            let retry = transient(&e);
            (self.failed(op, rel, &e), retry)
        };
        let key = self.key(rel);
        if let Some(e) = self.injected() {
            return Err(remote("start upload of", e));
        }
        let mut upload = self
            .store
            .put_multipart(&key)
            .await
            .map_err(|e| remote("start upload of", e))?;
        let outcome = async {
            let file = Arc::new(std::fs::File::open(path).map_err(local)?);
            let mut hasher = blake3::Hasher::new();
            let mut in_flight = futures::stream::FuturesUnordered::new();
            let mut at = 0u64;
            while at < size {
                let len = (size - at).min(PART_SIZE as u64) as usize;
                let f = file.clone();
                let part = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len];
                    std::os::unix::fs::FileExt::read_exact_at(&*f, &mut buf, at).map(|_| buf)
                })
                .await
                .expect("read task")
                .map_err(local)?;
                hasher.update(&part);
                at += len as u64;
                if let Some(e) = self.injected() {
                    return Err(remote("upload part of", e));
                }
                let fut = upload.put_part(PutPayload::from(part));
                in_flight.push(async move { fut.await.map(|_| len as u64) });
                while in_flight.len() >= 4 {
                    let done = in_flight.next().await.expect("non-empty");
                    progress(done.map_err(|e| remote("upload part of", e))?);
                }
            }
            while let Some(done) = in_flight.next().await {
                progress(done.map_err(|e| remote("upload part of", e))?);
            }
            if crate::id::Id(*hasher.finalize().as_bytes()) != expect {
                let e = RemoteError::Damaged {
                    what: format!("local pack {}", path.display()),
                    url: "this machine".into(),
                    reason: "its bytes do not hash to its name; run `lode fsck`".into(),
                };
                return Err((e, false));
            }
            if let Some(e) = self.injected() {
                return Err(remote("finish upload of", e));
            }
            upload
                .complete()
                .await
                .map_err(|e| remote("finish upload of", e))?;
            Ok(())
        }
        .await;
        if outcome.is_err() {
            // Best effort: an unfinished upload is invisible anyway, and
            // stores expire abandoned parts.
            let _ = upload.abort().await;
        }
        outcome
    }

    fn failed(&self, op: &'static str, rel: &str, e: &object_store::Error) -> RemoteError {
        RemoteError::Request {
            op,
            key: rel.to_string(),
            url: self.url.clone(),
            message: describe(e),
        }
    }

    /// The whole object at `rel`.
    pub async fn get(&self, rel: &str) -> Result<Bytes> {
        let key = self.key(rel);
        self.request("download", rel, || async {
            self.store.get(&key).await?.bytes().await
        })
        .await
    }

    /// Bytes `range` of the object at `rel`; a short answer is an error.
    pub async fn get_range(&self, rel: &str, range: Range<u64>) -> Result<Bytes> {
        let key = self.key(rel);
        let want = range.end - range.start;
        let bytes = self
            .request("download", rel, || {
                self.store.get_range(&key, range.clone())
            })
            .await?;
        if bytes.len() as u64 != want {
            return Err(RemoteError::Damaged {
                what: rel.to_string(),
                url: self.url.clone(),
                reason: format!("asked for {want} bytes, got {}", bytes.len()),
            });
        }
        Ok(bytes)
    }

    /// The size of the object at `rel`, or `None` when there is none.
    pub async fn size(&self, rel: &str) -> Result<Option<u64>> {
        let key = self.key(rel);
        self.request("look up", rel, || async {
            match self.store.head(&key).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// The names (last path component) of the objects under `dir`.
    pub async fn list(&self, dir: &str) -> Result<Vec<String>> {
        let key = self.key(dir);
        self.request("list", dir, || async {
            let mut names = Vec::new();
            let mut stream = self.store.list(Some(&key));
            while let Some(meta) = stream.next().await {
                if let Some(name) = meta?.location.filename() {
                    names.push(name.to_string());
                }
            }
            Ok(names)
        })
        .await
    }
}

/// The path part of a bucket URL, as the key prefix.
fn url_prefix(url: &url::Url) -> Result<Key> {
    let path = url.path().trim_matches('/');
    let decoded = percent_decode(path);
    Key::parse(&decoded).map_err(|e| RemoteError::Url {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn transient(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    )
}

/// An object_store error as one line, with its causes (the top level alone
/// often says only "Generic S3 error").
fn describe(e: &object_store::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s = s.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = std::error::Error::source(source.expect("some"));
    }
    out
}

/// Where the local copies of a remote's index segments live.
pub fn cache_dir(lode_dir: &Path, url: &str) -> PathBuf {
    let key = blake3::hash(url.as_bytes()).to_hex();
    lode_dir.join("remotes").join(&key.as_str()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_paths_become_file_urls() {
        let cwd = Path::new("/work/repo");
        assert_eq!(
            normalize_url("s3://bucket/models/", cwd).unwrap(),
            "s3://bucket/models"
        );
        assert_eq!(
            normalize_url("../store", cwd).unwrap(),
            "file:///work/store"
        );
        assert_eq!(normalize_url("/srv/lode", cwd).unwrap(), "file:///srv/lode");
        assert!(normalize_url("ftp://x/y", cwd).is_err());
        assert!(normalize_url("s3://key:secret@bucket/x", cwd).is_err());
        assert!(normalize_url("", cwd).is_err());
    }

    #[test]
    fn faults_hit_the_requests_they_name() {
        assert_eq!(Fault::parse("3"), Some(Fault::Once(3)));
        assert_eq!(Fault::parse("3+"), Some(Fault::From(3)));
        assert!(Fault::Once(3).hits(3) && !Fault::Once(3).hits(4));
        assert!(Fault::From(3).hits(9) && !Fault::From(3).hits(2));
    }

    #[test]
    fn a_file_remote_stores_reads_ranges_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let url = normalize_url(dir.path().to_str().unwrap(), Path::new("/")).unwrap();
        let remote = Remote::open(&url).unwrap();
        remote.block_on(async {
            remote
                .put("index/a", Bytes::from_static(b"hello"))
                .await
                .unwrap();
            // A second put of the same key is harmless.
            remote
                .put("index/a", Bytes::from_static(b"hello"))
                .await
                .unwrap();
            assert_eq!(
                remote.get_range("index/a", 1..4).await.unwrap(),
                &b"ell"[..]
            );
            assert!(remote.get_range("index/a", 1..40).await.is_err());
            assert_eq!(remote.size("index/a").await.unwrap(), Some(5));
            assert_eq!(remote.size("index/b").await.unwrap(), None);
            assert_eq!(remote.list("index").await.unwrap(), vec!["a".to_string()]);
        });
        // A fault on one request is retried away; from then on, it is not.
        let remote = Remote::open(&url).unwrap().with_fault(Some(Fault::Once(1)));
        assert!(remote.block_on(remote.get("index/a")).is_ok());
        let remote = Remote::open(&url).unwrap().with_fault(Some(Fault::From(1)));
        let err = remote.block_on(remote.get("index/a")).unwrap_err();
        assert!(err.to_string().contains("index/a"), "{err}");
    }
}
