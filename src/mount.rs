//! The snapshot `lode mount` serves: a commit's tree, with lode files shown
//! at their real size and their bytes read lazily, chunk by chunk.
//!
//! Where a chunk comes from, in order:
//!
//! 1. a small in-memory cache (a FUSE read of 128 KiB spans two or three
//!    chunks; neighbouring reads share them);
//! 2. the node cache ([`NodeCache`]): verified chunk files shared by every
//!    mount on the machine, size-limited, least recently used evicted;
//! 3. the local store (`.git/lode`);
//! 4. the remote store: ranged, coalesced reads of its packs, many in
//!    flight; what arrives goes into the node cache.
//!
//! Every chunk is verified against its id on the way (the node cache's
//! files too, when read back): a bad chunk is an I/O error, never wrong
//! bytes. A reader that goes forward gets a read-ahead window that doubles
//! up to [`MAX_WINDOW`], fetched in the background; a random reader
//! (safetensors' mmap) fetches only the chunks it touches.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lode_fuse::{Attr, Error, Kind, Snapshot};

use crate::id::Id;
use crate::index::Kind as RecordKind;
use crate::pointer::Pointer;
use crate::recipe::Recipe;
use crate::remote::Remote;
use crate::store::{Store, StoreError};
use crate::transfer::{self, Known};

/// The largest read-ahead window of a sequential reader.
pub const MAX_WINDOW: u64 = 64 << 20;
/// The first window once a reader is seen going forward.
const FIRST_WINDOW: u64 = 1 << 20;
/// Bytes of chunks kept in memory.
const MEM_BYTES: u64 = 256 << 20;

/// Counters for `--metrics` (Prometheus text format).
#[derive(Default)]
pub struct Metrics {
    pub reads: AtomicU64,
    pub bytes_served: AtomicU64,
    pub memory_hits: AtomicU64,
    pub cache_hits: AtomicU64,
    pub store_reads: AtomicU64,
    pub remote_chunks: AtomicU64,
    pub remote_bytes: AtomicU64,
    pub remote_fetches: AtomicU64,
    pub remote_fetch_micros: AtomicU64,
    pub errors: AtomicU64,
}

impl Metrics {
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut line = |name: &str, help: &str, v: u64| {
            out.push_str(&format!(
                "# HELP lode_mount_{name} {help}\n# TYPE lode_mount_{name} counter\nlode_mount_{name} {v}\n"
            ));
        };
        line("reads_total", "read requests served", g(&self.reads));
        line(
            "bytes_served_total",
            "bytes returned to readers",
            g(&self.bytes_served),
        );
        line(
            "memory_hits_total",
            "chunks found in memory",
            g(&self.memory_hits),
        );
        line(
            "cache_hits_total",
            "chunks found in the node cache",
            g(&self.cache_hits),
        );
        line(
            "store_reads_total",
            "chunks read from the local store",
            g(&self.store_reads),
        );
        line(
            "remote_chunks_total",
            "chunks fetched from the remote",
            g(&self.remote_chunks),
        );
        line(
            "remote_bytes_total",
            "bytes downloaded from the remote",
            g(&self.remote_bytes),
        );
        line(
            "remote_fetches_total",
            "batches fetched from the remote",
            g(&self.remote_fetches),
        );
        line(
            "remote_fetch_seconds_total",
            "time spent in remote fetches",
            g(&self.remote_fetch_micros) / 1_000_000,
        );
        line(
            "errors_total",
            "reads answered with an error",
            g(&self.errors),
        );
        out
    }
}

/// The node-wide chunk cache: `<dir>/chunks/<2 hex>/<hex>`, each file a
/// verified chunk, written to `<dir>/tmp` and renamed into place (a crash
/// leaves a whole file or none; a damaged one fails verification when read
/// and is fetched again). Least recently used files (by mtime, refreshed on
/// use) go first when the cache is over its limit.
pub struct NodeCache {
    dir: PathBuf,
    limit: u64,
    used: AtomicU64,
    evicting: Mutex<()>,
}

impl NodeCache {
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<NodeCache> {
        std::fs::create_dir_all(dir.join("chunks"))?;
        std::fs::create_dir_all(dir.join("tmp"))?;
        let cache = NodeCache {
            dir: dir.to_path_buf(),
            limit,
            used: AtomicU64::new(0),
            evicting: Mutex::new(()),
        };
        let used = cache.files().iter().map(|f| f.1).sum();
        cache.used.store(used, Ordering::Relaxed);
        Ok(cache)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &Id) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join("chunks").join(&hex[..2]).join(hex)
    }

    /// Every cached chunk file: (path, size, mtime).
    fn files(&self) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        let mut out = Vec::new();
        let Ok(top) = std::fs::read_dir(self.dir.join("chunks")) else {
            return out;
        };
        for sub in top.flatten() {
            let Ok(files) = std::fs::read_dir(sub.path()) else {
                continue;
            };
            for f in files.flatten() {
                if let Ok(m) = f.metadata() {
                    let mtime = m.modified().unwrap_or(std::time::UNIX_EPOCH);
                    out.push((f.path(), m.len(), mtime));
                }
            }
        }
        out
    }

    /// The chunk, if cached and intact.
    pub fn get(&self, id: &Id) -> Option<Vec<u8>> {
        let path = self.path(id);
        let mut file = std::fs::File::open(&path).ok()?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).ok()?;
        if Id::of_chunk(&bytes) != *id {
            // Damaged on disk: drop it; the caller fetches it again.
            let _ = std::fs::remove_file(&path);
            return None;
        }
        // Mark it used (LRU); best effort.
        let _ = file.set_modified(std::time::SystemTime::now());
        Some(bytes)
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.path(id).exists()
    }

    /// Keep a verified chunk. Failures (a full disk) only cost a refetch.
    pub fn put(&self, id: &Id, bytes: &[u8]) {
        let path = self.path(id);
        if path.exists() {
            return;
        }
        let written = (|| -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut tmp = tempfile::NamedTempFile::new_in(self.dir.join("tmp"))?;
            tmp.write_all(bytes)?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        })();
        if written.is_ok() {
            let used =
                self.used.fetch_add(bytes.len() as u64, Ordering::Relaxed) + bytes.len() as u64;
            if used > self.limit {
                self.evict();
            }
        }
    }

    /// Remove least recently used chunks until the cache is at 90 % of its
    /// limit. Other mounts sharing the cache may evict at the same time:
    /// removing a file twice is harmless.
    fn evict(&self) {
        let Ok(_guard) = self.evicting.try_lock() else {
            return; // another thread is on it
        };
        let mut files = self.files();
        let mut used: u64 = files.iter().map(|f| f.1).sum();
        files.sort_by_key(|f| f.2);
        let target = self.limit / 10 * 9;
        for (path, len, _) in files {
            if used <= target {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                used -= len;
            }
        }
        self.used.store(used, Ordering::Relaxed);
    }
}

/// The default node cache: `$XDG_CACHE_HOME/lode`, else `~/.cache/lode`.
pub fn default_cache_dir(xdg_cache: Option<PathBuf>, home: Option<PathBuf>) -> PathBuf {
    xdg_cache
        .filter(|p| p.is_absolute())
        .or_else(|| home.map(|h| h.join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("lode")
}

/// A small LRU of chunks in memory.
struct Memory {
    chunks: HashMap<Id, (Arc<Vec<u8>>, u64)>,
    bytes: u64,
    tick: u64,
}

impl Memory {
    fn get(&mut self, id: &Id) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let tick = self.tick;
        self.chunks.get_mut(id).map(|(b, t)| {
            *t = tick;
            b.clone()
        })
    }

    fn put(&mut self, id: Id, bytes: Arc<Vec<u8>>) {
        self.tick += 1;
        self.bytes += bytes.len() as u64;
        if let Some((old, _)) = self.chunks.insert(id, (bytes, self.tick)) {
            self.bytes -= old.len() as u64;
        }
        while self.bytes > MEM_BYTES {
            let Some((&oldest, _)) = self.chunks.iter().min_by_key(|(_, (_, t))| *t) else {
                break;
            };
            if let Some((b, _)) = self.chunks.remove(&oldest) {
                self.bytes -= b.len() as u64;
            }
        }
    }
}

/// A recipe with the offset of each chunk in the file.
pub type Laid = (Recipe, Vec<u64>);

/// How the remote is reached: opened on the first miss, and again after a
/// failure (a server that was down may be back).
pub type OpenRemote = Box<dyn Fn() -> Result<Remote, String> + Send + Sync>;

/// Where chunks come from (see the module documentation).
pub struct Sources {
    store: Store,
    lode_dir: PathBuf,
    cache: NodeCache,
    open_remote: Option<OpenRemote>,
    remote: Mutex<Option<Arc<(Remote, Known)>>>,
    memory: Mutex<Memory>,
    recipes: Mutex<HashMap<Id, Arc<Laid>>>,
    /// Chunks being fetched in the background (read-ahead).
    in_flight: Mutex<HashSet<Id>>,
    /// Signalled when read-ahead chunks land (or fail).
    landed: std::sync::Condvar,
    pub metrics: Metrics,
}

fn io(e: impl std::fmt::Display) -> Error {
    Error::Io(e.to_string())
}

impl Sources {
    pub fn new(
        store: Store,
        lode_dir: PathBuf,
        cache: NodeCache,
        open_remote: Option<OpenRemote>,
    ) -> Sources {
        Sources {
            store,
            lode_dir,
            cache,
            open_remote,
            remote: Mutex::new(None),
            memory: Mutex::new(Memory {
                chunks: HashMap::new(),
                bytes: 0,
                tick: 0,
            }),
            recipes: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
            landed: std::sync::Condvar::new(),
            metrics: Metrics::default(),
        }
    }

    pub fn cache(&self) -> &NodeCache {
        &self.cache
    }

    fn remote(&self) -> Result<Arc<(Remote, Known)>, Error> {
        let mut slot = self.remote.lock().expect("remote lock poisoned");
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        let open = self
            .open_remote
            .as_ref()
            .ok_or_else(|| Error::Io("the data is not here and no remote is set".into()))?;
        let remote = open().map_err(Error::Io)?;
        let known = transfer::sync_index(&remote, &self.lode_dir).map_err(io)?;
        let r = Arc::new((remote, known));
        *slot = Some(r.clone());
        Ok(r)
    }

    /// A file's recipe and chunk offsets.
    pub fn recipe(&self, id: &Id) -> Result<Arc<Laid>, Error> {
        if let Some(r) = self.recipes.lock().expect("recipe lock poisoned").get(id) {
            return Ok(r.clone());
        }
        let recipe = if self.store.has_file(id) {
            self.store.recipe(id).map_err(io)?
        } else {
            self.remote_recipe(id)?
        };
        let offsets = recipe.offsets();
        let r = Arc::new((recipe, offsets));
        self.recipes
            .lock()
            .expect("recipe lock poisoned")
            .insert(*id, r.clone());
        Ok(r)
    }

    fn remote_recipe(&self, id: &Id) -> Result<Recipe, Error> {
        let remote = self.remote()?;
        let (remote, known) = (&remote.0, &remote.1);
        let entry = known
            .lookup(id)
            .filter(|e| e.kind == RecordKind::Recipe)
            .ok_or_else(|| Error::Io(format!("file {id} is not on the remote {}", remote.url())))?;
        let found = Mutex::new(None);
        let downloaded = AtomicU64::new(0);
        transfer::read_records(remote, &[entry], &downloaded, &|_| {}, &|e, raw, _| {
            let recipe = Recipe::decode(&raw, &e.id)
                .map_err(|source| StoreError::Recipe { id: e.id, source })?;
            *found.lock().expect("found") = Some(recipe);
            Ok(())
        })
        .map_err(|e| self.remote_failed(e))?;
        found
            .into_inner()
            .expect("found")
            .ok_or_else(|| Error::Io(format!("file {id}: no recipe came back")))
    }

    /// A remote failure: forget the connection (the next read reconnects,
    /// so reads recover when the server returns) and report EIO.
    fn remote_failed(&self, e: impl std::fmt::Display) -> Error {
        *self.remote.lock().expect("remote lock poisoned") = None;
        io(e)
    }

    /// The bytes of `chunks` (id, length), each verified, fetched from the
    /// nearest source that has it. Chunks that read-ahead is bringing in
    /// are waited for, not read a second time.
    pub fn chunks(&self, chunks: &[(Id, u32)]) -> Result<Vec<Arc<Vec<u8>>>, Error> {
        self.chunks_from(chunks, true)
    }

    fn fill_from_memory(&self, chunks: &[(Id, u32)], out: &mut [Option<Arc<Vec<u8>>>]) {
        let mut mem = self.memory.lock().expect("memory lock poisoned");
        for (i, (id, _)) in chunks.iter().enumerate() {
            if out[i].is_none()
                && let Some(b) = mem.get(id)
            {
                self.metrics.memory_hits.fetch_add(1, Ordering::Relaxed);
                out[i] = Some(b);
            }
        }
    }

    fn chunks_from(&self, chunks: &[(Id, u32)], wait: bool) -> Result<Vec<Arc<Vec<u8>>>, Error> {
        let mut out: Vec<Option<Arc<Vec<u8>>>> = vec![None; chunks.len()];
        let mut from_store = Vec::new();
        let mut from_remote = Vec::new();
        self.fill_from_memory(chunks, &mut out);
        if wait {
            let pending: Vec<Id> = {
                let in_flight = self.in_flight.lock().expect("in-flight lock poisoned");
                chunks
                    .iter()
                    .zip(&out)
                    .filter(|((id, _), o)| o.is_none() && in_flight.contains(id))
                    .map(|((id, _), _)| *id)
                    .collect()
            };
            if !pending.is_empty() {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
                let mut in_flight = self.in_flight.lock().expect("in-flight lock poisoned");
                while pending.iter().any(|id| in_flight.contains(id))
                    && std::time::Instant::now() < deadline
                {
                    in_flight = self
                        .landed
                        .wait_timeout(in_flight, std::time::Duration::from_millis(200))
                        .expect("in-flight lock poisoned")
                        .0;
                }
                drop(in_flight);
                self.fill_from_memory(chunks, &mut out);
            }
        }
        for (i, (id, len)) in chunks.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            if let Some(b) = self.cache.get(id).filter(|b| b.len() == *len as usize) {
                self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
                out[i] = Some(Arc::new(b));
            } else if self.store.lookup(id).is_some() {
                from_store.push(i);
            } else {
                from_remote.push(i);
            }
        }
        if !from_store.is_empty() {
            let want: Vec<(Id, u32)> = from_store.iter().map(|&i| chunks[i]).collect();
            let got = self.store.read_chunks(&want).map_err(io)?;
            self.metrics
                .store_reads
                .fetch_add(got.len() as u64, Ordering::Relaxed);
            for (&i, b) in from_store.iter().zip(got) {
                out[i] = Some(Arc::new(b));
            }
        }
        if !from_remote.is_empty() {
            let want: Vec<(Id, u32)> = from_remote.iter().map(|&i| chunks[i]).collect();
            let got = self.fetch_remote(&want)?;
            for &i in &from_remote {
                out[i] = got.get(&chunks[i].0).cloned();
            }
        }
        let mut mem = self.memory.lock().expect("memory lock poisoned");
        out.into_iter()
            .zip(chunks)
            .map(|(b, (id, len))| {
                let b = b.ok_or_else(|| Error::Io(format!("chunk {id} could not be read")))?;
                if b.len() != *len as usize {
                    return Err(Error::Io(format!("chunk {id} has the wrong length")));
                }
                mem.put(*id, b.clone());
                Ok(b)
            })
            .collect()
    }

    /// Fetch chunks from the remote (coalesced ranged reads, verified) into
    /// the node cache.
    fn fetch_remote(&self, chunks: &[(Id, u32)]) -> Result<HashMap<Id, Arc<Vec<u8>>>, Error> {
        let remote = self.remote()?;
        let (remote, known) = (&remote.0, &remote.1);
        let mut entries = Vec::new();
        for (id, _) in chunks {
            match known.lookup(id) {
                Some(e) if e.kind == RecordKind::Chunk => entries.push(e),
                _ => {
                    return Err(Error::Io(format!(
                        "chunk {id} is neither here nor on the remote {}",
                        remote.url()
                    )));
                }
            }
        }
        let got = Mutex::new(HashMap::new());
        let downloaded = AtomicU64::new(0);
        let started = std::time::Instant::now();
        transfer::read_records(remote, &entries, &downloaded, &|_| {}, &|e, raw, _| {
            self.cache.put(&e.id, &raw);
            got.lock().expect("got").insert(e.id, Arc::new(raw));
            Ok(())
        })
        .map_err(|e| self.remote_failed(e))?;
        let m = &self.metrics;
        m.remote_fetches.fetch_add(1, Ordering::Relaxed);
        m.remote_chunks
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        m.remote_bytes
            .fetch_add(downloaded.into_inner(), Ordering::Relaxed);
        m.remote_fetch_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(got.into_inner().expect("got"))
    }

    /// Put chunks that are neither local nor cached into the node cache
    /// (read-ahead and `lode prefetch`). Returns the bytes fetched. Blocks
    /// on the network: never call it from a rayon pool thread.
    pub fn warm(&self, chunks: &[(Id, u32)]) -> Result<u64, Error> {
        let missing: Vec<(Id, u32)> = chunks
            .iter()
            .filter(|(id, _)| !self.cache.contains(id) && self.store.lookup(id).is_none())
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(0);
        }
        let got = self.fetch_remote(&missing)?;
        Ok(got.values().map(|b| b.len() as u64).sum())
    }
}

/// One node of the mounted tree.
#[derive(Clone, Debug)]
enum Node {
    Dir(Vec<(String, Attr)>),
    Blob { oid: gix::ObjectId, attr: Attr },
    Lode { pointer: Pointer, attr: Attr },
}

/// A file's sequential reader: where its reads have got to, its
/// read-ahead window, and how far read-ahead has been scheduled.
#[derive(Clone, Copy)]
struct Stream {
    end: u64,
    window: u64,
    scheduled: u64,
}

/// A commit's tree over [`Sources`].
pub struct Tree {
    repo: gix::ThreadSafeRepository,
    nodes: HashMap<String, Node>,
    sources: Arc<Sources>,
    /// Per file: the sequential reader's state.
    streams: Mutex<HashMap<Id, Stream>>,
}

impl Tree {
    /// Read the tree of `rev`.
    pub fn load(repo: &crate::git::Repo, rev: &str, sources: Arc<Sources>) -> Result<Tree, String> {
        let tree = repo.resolve_tree(rev).map_err(|e| e.to_string())?;
        let mut recorder = gix::traverse::tree::Recorder::default();
        tree.traverse()
            .breadthfirst(&mut recorder)
            .map_err(|e| format!("reading the tree of {rev}: {e}"))?;
        let mut nodes: HashMap<String, Node> = HashMap::new();
        let mut children: HashMap<String, Vec<(String, Attr)>> = HashMap::new();
        children.insert(String::new(), Vec::new());
        for entry in recorder.records {
            let path = entry.filepath.to_string();
            let (parent, name) = match path.rsplit_once('/') {
                Some((p, n)) => (p.to_string(), n.to_string()),
                None => (String::new(), path.clone()),
            };
            let dir = Attr {
                kind: Kind::Dir,
                size: 0,
                executable: false,
            };
            let node = if entry.mode.is_tree() {
                children.entry(path.clone()).or_default();
                Some((dir, None))
            } else if entry.mode.is_blob() {
                let exec = entry.mode.is_executable();
                let pointer = repo
                    .pointer_blob(entry.oid)
                    .map_err(|e| format!("reading {path}: {e}"))?;
                let size = match pointer {
                    Some(p) => p.size,
                    None => repo
                        .repo
                        .find_header(entry.oid)
                        .map_err(|e| format!("reading {path}: {e}"))?
                        .size(),
                };
                let attr = Attr {
                    kind: Kind::File,
                    size,
                    executable: exec,
                };
                let node = match pointer {
                    Some(pointer) => Node::Lode { pointer, attr },
                    None => Node::Blob {
                        oid: entry.oid,
                        attr,
                    },
                };
                Some((attr, Some(node)))
            } else {
                None // symlinks and submodules are not shown
            };
            if let Some((attr, node)) = node {
                children.entry(parent).or_default().push((name, attr));
                if let Some(n) = node {
                    nodes.insert(path, n);
                }
            }
        }
        for (dir, mut list) in children {
            list.sort_by(|a, b| a.0.cmp(&b.0));
            nodes.insert(dir, Node::Dir(list));
        }
        Ok(Tree {
            repo: repo.repo.clone().into_sync(),
            nodes,
            sources,
            streams: Mutex::new(HashMap::new()),
        })
    }

    pub fn sources(&self) -> &Arc<Sources> {
        &self.sources
    }

    /// Every lode file of the tree: (path, pointer).
    pub fn lode_files(&self) -> Vec<(String, Pointer)> {
        let mut out: Vec<(String, Pointer)> = self
            .nodes
            .iter()
            .filter_map(|(p, n)| match n {
                Node::Lode { pointer, .. } => Some((p.clone(), *pointer)),
                _ => None,
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn read_lode(&self, pointer: &Pointer, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        if offset >= pointer.size || buf.is_empty() {
            return Ok(0);
        }
        let r = self.sources.recipe(&pointer.id)?;
        let (recipe, offsets) = (&r.0, &r.1);
        if recipe.size != pointer.size {
            return Err(Error::Io(format!(
                "file {}: the pointer says {} bytes, the data has {}",
                pointer.id, pointer.size, recipe.size
            )));
        }
        let end = (offset + buf.len() as u64).min(recipe.size);
        let first = offsets.partition_point(|&o| o <= offset) - 1;
        let last = offsets.partition_point(|&o| o < end);
        let chunks = self.sources.chunks(&recipe.chunks[first..last])?;
        let mut written = 0;
        for (k, bytes) in chunks.iter().enumerate() {
            let start = offsets[first + k];
            let from = offset.max(start) - start;
            let to = (end.min(start + bytes.len() as u64) - start) as usize;
            let n = to - from as usize;
            buf[written..written + n].copy_from_slice(&bytes[from as usize..to]);
            written += n;
        }
        self.read_ahead(pointer.id, r.clone(), offset, end);
        Ok(written)
    }

    /// A reader going forward (reads near where the last ones ended; FUSE
    /// delivers them slightly out of order) gets the chunks ahead of it
    /// brought into memory (and the node cache, from the remote) in the
    /// background, in batches of half a window; the window doubles with
    /// each such read up to [`MAX_WINDOW`]. Any other read resets it.
    fn read_ahead(&self, id: Id, r: Arc<Laid>, offset: u64, end: u64) {
        let size = r.0.size;
        let (from, to) = {
            let mut streams = self.streams.lock().expect("streams lock poisoned");
            let s = streams.entry(id).or_insert(Stream {
                end: u64::MAX,
                window: 0,
                scheduled: 0,
            });
            let near = s.end != u64::MAX && offset.abs_diff(s.end) <= 4 << 20;
            if near {
                s.window = (s.window * 2).clamp(FIRST_WINDOW, MAX_WINDOW);
                s.end = s.end.max(end);
            } else {
                *s = Stream {
                    end,
                    window: 0,
                    scheduled: 0,
                };
                return;
            }
            let from = s.scheduled.max(s.end);
            let to = (s.end + s.window).min(size);
            if to <= from || (to - from < s.window / 2 && to < size) {
                return;
            }
            s.scheduled = to;
            (from, to)
        };
        let offsets = &r.1;
        let first = offsets.partition_point(|&o| o <= from).saturating_sub(1);
        let last = offsets.partition_point(|&o| o < to);
        let todo: Vec<(Id, u32)> = {
            let mut in_flight = self
                .sources
                .in_flight
                .lock()
                .expect("in-flight lock poisoned");
            let mem = self.sources.memory.lock().expect("memory lock poisoned");
            r.0.chunks[first..last]
                .iter()
                .filter(|(cid, _)| !mem.chunks.contains_key(cid) && in_flight.insert(*cid))
                .copied()
                .collect()
        };
        if todo.is_empty() {
            return;
        }
        let sources = self.sources.clone();
        let done = move |sources: &Sources, todo: &[(Id, u32)]| {
            let mut in_flight = sources.in_flight.lock().expect("in-flight lock poisoned");
            for (cid, _) in todo {
                in_flight.remove(cid);
            }
            sources.landed.notify_all();
        };
        // A thread of its own, not rayon's pool: a fetch blocks on network
        // requests and then decodes on rayon, and blocking pool threads on
        // work queued behind them would deadlock.
        let todo_for_thread = todo.clone();
        let spawned = std::thread::Builder::new()
            .name("lode-readahead".into())
            .spawn(move || {
                // Errors here are not the reader's: its own read fetches again.
                let _ = sources.chunks_from(&todo_for_thread, false);
                done(&sources, &todo_for_thread);
            });
        if spawned.is_err() {
            // No thread to spare: the reads themselves will fetch.
            let mut in_flight = self
                .sources
                .in_flight
                .lock()
                .expect("in-flight lock poisoned");
            for (cid, _) in &todo {
                in_flight.remove(cid);
            }
            self.sources.landed.notify_all();
        }
    }
}

impl Snapshot for Tree {
    fn getattr(&self, path: &str) -> Result<Attr, Error> {
        match self.nodes.get(path).ok_or(Error::NotFound)? {
            Node::Dir(_) => Ok(Attr {
                kind: Kind::Dir,
                size: 0,
                executable: false,
            }),
            Node::Blob { attr, .. } | Node::Lode { attr, .. } => Ok(*attr),
        }
    }

    fn readdir(&self, path: &str) -> Result<Vec<(String, Attr)>, Error> {
        match self.nodes.get(path).ok_or(Error::NotFound)? {
            Node::Dir(list) => Ok(list.clone()),
            _ => Err(Error::NotADirectory),
        }
    }

    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        let m = &self.sources.metrics;
        m.reads.fetch_add(1, Ordering::Relaxed);
        let result = match self.nodes.get(path).ok_or(Error::NotFound)? {
            Node::Dir(_) => Err(Error::IsADirectory),
            Node::Lode { pointer, .. } => self.read_lode(pointer, offset, buf),
            Node::Blob { oid, .. } => {
                let repo = self.repo.to_thread_local();
                let blob = repo.find_object(*oid).map_err(io)?;
                let data = &blob.data;
                let start = (offset as usize).min(data.len());
                let n = buf.len().min(data.len() - start);
                buf[..n].copy_from_slice(&data[start..start + n]);
                Ok(n)
            }
        };
        match &result {
            Ok(n) => {
                m.bytes_served.fetch_add(*n as u64, Ordering::Relaxed);
            }
            Err(_) => {
                m.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }
}

/// Serve `metrics` in Prometheus text format on `addr` (loopback), one
/// thread, until the process ends.
pub fn serve_metrics(addr: &str, sources: Arc<Sources>) -> std::io::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("lode-metrics".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut conn = conn;
                let mut buf = [0u8; 1024];
                let _ = std::io::Read::read(&mut conn, &mut buf);
                let body = sources.metrics.render();
                let _ = write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_cache_verifies_and_evicts_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = NodeCache::open(dir.path(), 100_000).unwrap();
        let chunks: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 40_000]).collect();
        let ids: Vec<Id> = chunks.iter().map(|c| Id::of_chunk(c)).collect();
        cache.put(&ids[0], &chunks[0]);
        cache.put(&ids[1], &chunks[1]);
        // Make the first the oldest, the second recently used.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::open(cache.path(&ids[0]))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(cache.get(&ids[1]).unwrap(), chunks[1]);
        cache.put(&ids[2], &chunks[2]); // 120 000 bytes > 100 000: evict
        assert!(!cache.contains(&ids[0]), "the least recently used stays");
        assert!(cache.contains(&ids[1]) && cache.contains(&ids[2]));
        // A damaged file is dropped, not returned.
        std::fs::write(cache.path(&ids[2]), b"garbage").unwrap();
        assert!(cache.get(&ids[2]).is_none());
        assert!(!cache.contains(&ids[2]));
        // A second cache on the same directory sees what is there.
        let again = NodeCache::open(dir.path(), 100_000).unwrap();
        assert_eq!(again.get(&ids[1]).unwrap(), chunks[1]);
    }

    #[test]
    fn metrics_render_as_prometheus_text() {
        let m = Metrics::default();
        m.bytes_served.fetch_add(42, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains(
            "# TYPE lode_mount_bytes_served_total counter\nlode_mount_bytes_served_total 42\n"
        ));
    }
}
