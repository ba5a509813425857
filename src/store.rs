//! The local store, `.git/lode/`: packs, the chunk index, and the ingest
//! and read paths over them.
//!
//! ```text
//! .git/lode/
//!   packs/<id>.pack   immutable packs (chunks and recipes)
//!   index/<id>.idx    sorted index tables (derived; rebuilt from footers)
//!   statcache         path, size, mtime, ctime, inode → file id
//!   tmp/              packs being written
//! ```
//!
//! Ingest cuts a file (see [`crate::chunk`], [`crate::layout`]), hashes and
//! compresses the chunks on rayon, and appends the new ones to the current
//! pack; the recipe goes in after all of its chunks, so a recipe is never
//! durable before its data. [`Store::flush`] closes the pack (fsync, rename,
//! directory fsync) and only then adds its table to the index: a lookup
//! never finds what is not durably stored. Reads verify every chunk against
//! its id before returning it (invariant I3).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock, mpsc};

use rayon::prelude::*;

use crate::chunk;
use crate::compress;
use crate::durable;
use crate::id::Id;
use crate::index::{self, Entry, Kind, Table};
use crate::layout;
use crate::pack::{self, PackError, PackFile, PackWriter, TARGET_SIZE};
use crate::recipe::{Recipe, RecipeError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error("{what} {id} is not in the local store")]
    Missing { what: &'static str, id: Id },
    #[error("recipe {id}: {source}")]
    Recipe {
        id: Id,
        #[source]
        source: RecipeError,
    },
    #[error("index table {path}: {source}")]
    Index {
        path: PathBuf,
        #[source]
        source: index::TableError,
    },
    #[error("{path} changed while it was being added; nothing was recorded for it (add it again)")]
    Changed { path: PathBuf },
    #[error("{path} vanished while it was being added; nothing was recorded for it")]
    Vanished { path: PathBuf },
    #[error("storing data failed: {0}")]
    Closing(String),
    #[error(
        "a file of {size} bytes in {chunks} chunks is larger than format lode/1 can describe (about 7 M chunks, 480 GB)"
    )]
    TooLarge { size: u64, chunks: usize },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Like [`io_err`], but a file that is not there any more has vanished.
fn vanished_or<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |e| match e.kind() {
        std::io::ErrorKind::NotFound => StoreError::Vanished {
            path: path.to_path_buf(),
        },
        _ => io_err(op, path)(e),
    }
}

/// The outcome of ingesting one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ingested {
    pub id: Id,
    pub size: u64,
    /// Raw bytes of chunks this store did not have before.
    pub new_bytes: u64,
}

struct Pending {
    writer: Option<PackWriter>,
    /// Ids of the open pack, in the order appended.
    open_ids: Vec<Id>,
    /// Ids appended to packs that are not indexed yet (the open one and
    /// those being closed): dedup must see them, lookups must not.
    ids: HashSet<Id>,
    /// Packs handed to the closer and not yet indexed.
    closing: usize,
    /// The closer's first error: every later append and flush fails.
    failed: Option<String>,
}

pub(crate) type Mapped = Table<memmap2::Mmap>;

/// A full pack on its way to the closer, with the ids it holds.
type Closing = (PackWriter, Vec<Id>);

/// The local store. Cheap to share between threads; packs are closed
/// (fsync, rename, index) by one background thread, in the order they were
/// filled, while ingest goes on: on a 2-core machine that overlap is what
/// lets hashing and compression keep the disk busy.
pub struct Store {
    inner: Arc<Inner>,
}

pub struct Inner {
    root: PathBuf,
    tables: RwLock<Vec<(PathBuf, Mapped)>>,
    /// Index tables that could not be loaded, and why (fsck reports them).
    bad_tables: Mutex<Vec<(PathBuf, String)>>,
    pending: Mutex<Pending>,
    closed: Condvar,
    closer: Mutex<Option<(mpsc::Sender<Closing>, std::thread::JoinHandle<()>)>>,
    packs: Mutex<HashMap<Id, Arc<PackFile>>>,
}

impl std::ops::Deref for Store {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Packs already handed over are finished; the open one (never
        // flushed, so never reported as stored) is discarded.
        let closer = self
            .inner
            .closer
            .lock()
            .map(|mut c| c.take())
            .ok()
            .flatten();
        if let Some((tx, handle)) = closer {
            drop(tx);
            let _ = handle.join();
        }
    }
}

/// A chunk ready to append: id, private copy, and (when the store lacks
/// it) its codec and compressed bytes.
type Prepared = (Id, Vec<u8>, Option<(compress::Codec, Option<Vec<u8>>)>);

/// Full packs that may wait for the closer before appends wait too.
const MAX_CLOSING: usize = 4;

/// Chunks read at once when a file is written out: 64 chunks, 4 MiB on
/// average; batches of a materialized file run in parallel.
const READ_BATCH: usize = 64;
/// The largest single read of consecutive records.
const RUN_BYTES: u64 = 8 << 20;

impl Store {
    /// Open (creating the directories if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        for sub in ["packs", "index", "tmp"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        let inner = Arc::new(Inner {
            root: root.to_path_buf(),
            tables: RwLock::new(Vec::new()),
            bad_tables: Mutex::new(Vec::new()),
            pending: Mutex::new(Pending {
                writer: None,
                open_ids: Vec::new(),
                ids: HashSet::new(),
                closing: 0,
                failed: None,
            }),
            closed: Condvar::new(),
            closer: Mutex::new(None),
            packs: Mutex::new(HashMap::new()),
        });
        inner.load_tables()?;
        inner.index_orphans()?;
        inner.remove_stale_temps();
        // Unbounded: packs are handed over under the pack lock (that keeps
        // them in order) and the closer takes that lock too, so a send must
        // never block. Appends wait instead when more than MAX_CLOSING full
        // packs are queued (see `append_encoded`).
        let (tx, rx) = mpsc::channel::<Closing>();
        let worker = inner.clone();
        let handle = std::thread::Builder::new()
            .name("lode-pack-closer".into())
            .spawn(move || {
                for (writer, ids) in rx {
                    // After one pack failed, later ones are discarded, not
                    // closed: a later pack may hold the recipe of chunks
                    // that were in the failed one.
                    let failed = worker
                        .pending
                        .lock()
                        .expect("pack lock poisoned")
                        .failed
                        .is_some();
                    let result = if failed {
                        Ok(())
                    } else {
                        writer
                            .finish(&worker.packs_dir())
                            .map_err(StoreError::from)
                            .and_then(|(pack, mut entries)| worker.add_table(&[pack], &mut entries))
                    };
                    let mut pending = worker.pending.lock().expect("pack lock poisoned");
                    pending.closing -= 1;
                    for id in &ids {
                        pending.ids.remove(id);
                    }
                    if let Err(e) = result {
                        pending.failed.get_or_insert(e.to_string());
                    }
                    worker.closed.notify_all();
                }
            })
            .map_err(io_err("start the pack closer for", root))?;
        *inner.closer.lock().expect("closer lock poisoned") = Some((tx, handle));
        Ok(Store { inner })
    }
}

impl Inner {
    pub fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    pub fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    fn load_tables(&self) -> Result<()> {
        let dir = self.index_dir();
        let mut tables = Vec::new();
        let mut bad = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let path = entry.map_err(io_err("list", &dir))?.path();
            if path.extension().is_some_and(|e| e == "idx") {
                // A damaged table must not stop every command (fsck among
                // them): it is skipped here and reported by fsck.
                match map_table(&path) {
                    Ok(t) => tables.push((path, t)),
                    Err(e) => bad.push((path, e.to_string())),
                }
            }
        }
        tables.sort_by(|a, b| a.0.cmp(&b.0));
        *self.tables.write().expect("index lock poisoned") = tables;
        *self.bad_tables.lock().expect("index lock poisoned") = bad;
        Ok(())
    }

    /// Index packs that are durable but not indexed: a process killed
    /// between a pack's rename and its index table leaves one. Its records
    /// are good (the pack was fsynced first), so they are indexed now and
    /// the next ingest finds them instead of storing them again.
    fn index_orphans(&self) -> Result<()> {
        let indexed: HashSet<Id> = {
            let tables = self.tables.read().expect("index lock poisoned");
            tables
                .iter()
                .flat_map(|(_, t)| t.packs().iter().copied())
                .collect()
        };
        for (id, path) in self.pack_files()? {
            if indexed.contains(&id) {
                continue;
            }
            let Ok(file) = PackFile::open(&path) else {
                continue;
            };
            // A pack whose footer does not read is left to `lode fsck`.
            if let Ok(footer) = file.footer() {
                let mut entries: Vec<Entry> = footer
                    .into_iter()
                    .map(|e| Entry { pack: id, ..e })
                    .collect();
                self.add_table(&[id], &mut entries)?;
            }
        }
        Ok(())
    }

    /// Remove temporary packs left by killed processes. A live writer
    /// appends to its temp file continuously and closes it within seconds
    /// of its last append, so a temp file untouched for an hour is dead.
    /// Best effort: a failure here costs disk space, nothing else.
    fn remove_stale_temps(&self) {
        let Ok(dir) = std::fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for entry in dir.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < hour_ago);
            if stale
                && entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("pack-") && n.ends_with(".tmp"))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Where a durable record lies, if anywhere.
    pub fn lookup(&self, id: &Id) -> Option<Entry> {
        let tables = self.tables.read().expect("index lock poisoned");
        tables.iter().find_map(|(_, t)| t.lookup(id))
    }

    /// Whether a record is stored or on its way (dedup). Pending first: the
    /// closer indexes a pack before it forgets its pending ids, so this
    /// order never misses a record that is moving between the two.
    fn contains(&self, id: &Id) -> bool {
        self.pending
            .lock()
            .expect("pack lock poisoned")
            .ids
            .contains(id)
            || self.lookup(id).is_some()
    }

    /// Whether the file's recipe is durably stored (its chunks are then
    /// too: a recipe is only ever stored after its chunks).
    pub fn has_file(&self, id: &Id) -> bool {
        self.lookup(id).is_some_and(|e| e.kind == Kind::Recipe)
    }

    /// Every entry of the index (for fsck and du).
    pub fn index_entries(&self) -> Vec<Entry> {
        let tables = self.tables.read().expect("index lock poisoned");
        tables
            .iter()
            .flat_map(|(_, t)| t.iter().flatten().collect::<Vec<_>>())
            .collect()
    }

    /// Paths of the loaded index tables.
    pub fn table_paths(&self) -> Vec<PathBuf> {
        self.tables
            .read()
            .expect("index lock poisoned")
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn append(&self, kind: Kind, id: Id, raw: &[u8]) -> Result<bool> {
        if self.contains(&id) {
            return Ok(false);
        }
        let (codec, stored) = compress::encode(raw);
        let stored = stored.as_deref().unwrap_or(raw);
        self.append_encoded(kind, id, codec, raw.len(), stored)
    }

    /// Store an encoded record as it is (no recompression): one fetched
    /// from elsewhere, or one just hashed and compressed here. The caller
    /// has verified it: `stored` decodes with
    /// `codec` to `raw_len` bytes that hash to `id` (chunks) or decode as
    /// the recipe `id` (recipes). Returns whether it was new.
    pub fn insert_verified(
        &self,
        kind: Kind,
        id: Id,
        codec: compress::Codec,
        raw_len: usize,
        stored: &[u8],
    ) -> Result<bool> {
        if self.contains(&id) {
            return Ok(false);
        }
        self.append_encoded(kind, id, codec, raw_len, stored)
    }

    fn append_encoded(
        &self,
        kind: Kind,
        id: Id,
        codec: compress::Codec,
        raw_len: usize,
        stored: &[u8],
    ) -> Result<bool> {
        let mut pending = self.pending.lock().expect("pack lock poisoned");
        if let Some(e) = &pending.failed {
            return Err(StoreError::Closing(e.clone()));
        }
        if !pending.ids.insert(id) {
            return Ok(false); // another thread stored it meanwhile
        }
        if pending.writer.is_none() {
            pending.writer = Some(PackWriter::create(&self.root.join("tmp"))?);
        }
        let writer = pending.writer.as_mut().expect("just created");
        if let Err(e) = writer.append(kind, id, codec, raw_len, stored) {
            // The open pack is broken (I4): drop it with everything in it,
            // and fail every later append and flush of this store.
            pending.writer = None;
            for open in std::mem::take(&mut pending.open_ids) {
                pending.ids.remove(&open);
            }
            pending.ids.remove(&id);
            pending.failed.get_or_insert(e.to_string());
            return Err(e.into());
        }
        let full = writer.len() >= TARGET_SIZE;
        pending.open_ids.push(id);
        if full {
            self.hand_off(&mut pending)?;
            // Backpressure when the disk is slower than hashing: at most
            // MAX_CLOSING full packs wait (each holds an open file). The
            // wait releases the lock, so the closer can finish one; the
            // hand-off itself never blocks under the lock (the closer needs
            // it too: blocking there deadlocked).
            while pending.closing > MAX_CLOSING && pending.failed.is_none() {
                pending = self.closed.wait(pending).expect("pack lock poisoned");
            }
        }
        Ok(true)
    }

    /// Give the open pack to the closer thread (FIFO: packs become durable
    /// in the order they were filled, so a recipe never becomes durable
    /// before the chunks it names).
    fn hand_off(&self, pending: &mut Pending) -> Result<()> {
        let Some(writer) = pending.writer.take() else {
            return Ok(());
        };
        let ids = std::mem::take(&mut pending.open_ids);
        if writer.is_empty() {
            return Ok(());
        }
        let closer = self.closer.lock().expect("closer lock poisoned");
        let (tx, _) = closer
            .as_ref()
            .ok_or_else(|| StoreError::Closing("the store is closing".into()))?;
        tx.send((writer, ids))
            .map_err(|_| StoreError::Closing("the pack closer stopped".into()))?;
        pending.closing += 1;
        Ok(())
    }

    /// Write a table durably under its content's name; returns its path.
    fn write_table(&self, packs: &[Id], entries: &mut [Entry]) -> Result<PathBuf> {
        let bytes = index::encode(packs, entries);
        let path = self
            .index_dir()
            .join(format!("{}.idx", Id::of_chunk(&bytes).to_hex()));
        durable::write(&path, &bytes).map_err(io_err("write index table", &path))?;
        Ok(path)
    }

    /// Remove tables superseded by one already durable, then reload: a
    /// lookup never misses, whatever another process does meanwhile.
    fn replace_tables(&self, new: &Path, old: &[PathBuf]) -> Result<()> {
        for p in old.iter().filter(|p| p.as_path() != new) {
            remove_table(p)?;
        }
        durable::sync_dir(&self.index_dir()).map_err(io_err("fsync", &self.index_dir()))?;
        self.load_tables()
    }

    fn add_table(&self, packs: &[Id], entries: &mut [Entry]) -> Result<()> {
        let path = self.write_table(packs, entries)?;
        let table = map_table(&path)?;
        let mut tables = self.tables.write().expect("index lock poisoned");
        tables.push((path, table));
        let merge = tables.len() > index::MERGE_AT;
        drop(tables);
        if merge {
            self.merge_tables()?;
        }
        Ok(())
    }

    /// Merge the smaller index tables into one, keeping the largest
    /// `MERGE_AT / 2` as they are. Tables grow like a log-structured tree:
    /// each merge rewrites only small tables, so a store that gains one
    /// pack at a time (a `git add` per file) does not rewrite its whole
    /// index every few packs, and lookups stay within `MERGE_AT` tables.
    pub fn merge_tables(&self) -> Result<()> {
        let mut by_size: Vec<(u64, PathBuf)> = {
            let tables = self.tables.read().expect("index lock poisoned");
            tables.iter().map(|(p, t)| (t.len(), p.clone())).collect()
        };
        by_size.sort();
        let keep = (index::MERGE_AT / 2).min(by_size.len().saturating_sub(2));
        let merge: Vec<PathBuf> = by_size[..by_size.len() - keep]
            .iter()
            .map(|(_, p)| p.clone())
            .collect();
        let mut entries: Vec<Entry> = {
            let tables = self.tables.read().expect("index lock poisoned");
            tables
                .iter()
                .filter(|(p, _)| merge.contains(p))
                .flat_map(|(_, t)| t.iter().flatten().collect::<Vec<_>>())
                .collect()
        };
        let mut packs: Vec<Id> = entries
            .iter()
            .map(|e| e.pack)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        packs.sort();
        let path = self.write_table(&packs, &mut entries)?;
        self.replace_tables(&path, &merge)
    }

    /// Rebuild the index from the packs alone (the index is derived data):
    /// from each pack's footer, or, where the footer is damaged, from a scan
    /// of its self-describing records, keeping those that verify. Returns
    /// the number of packs indexed and a note for each pack that needed a
    /// scan or could not be read.
    pub fn rebuild_index(&self) -> Result<(usize, Vec<String>)> {
        self.flush()?;
        let mut entries = Vec::new();
        let mut packs = Vec::new();
        let mut notes = Vec::new();
        for (id, path) in self.pack_files()? {
            let file = match PackFile::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    notes.push(e.to_string());
                    continue;
                }
            };
            let found = match file.footer() {
                Ok(footer) => footer,
                Err(e) => {
                    let scanned = file.scan();
                    notes.push(format!(
                        "{e}; recovered {} record(s) by scanning it",
                        scanned.len()
                    ));
                    scanned
                }
            };
            if !found.is_empty() {
                packs.push(id);
                entries.extend(found.into_iter().map(|e| Entry { pack: id, ..e }));
            }
        }
        let path = self.write_table(&packs, &mut entries)?;
        // Every table, including those that failed to load (damaged).
        let old: Vec<PathBuf> = std::fs::read_dir(self.index_dir())
            .map_err(io_err("list", &self.index_dir()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "idx"))
            .collect();
        self.replace_tables(&path, &old)?;
        Ok((packs.len(), notes))
    }

    /// Verify every index table's checksum and order; returns the damaged
    /// ones with what is wrong.
    pub fn verify_tables(&self) -> Vec<(PathBuf, String)> {
        let mut bad = self.bad_tables.lock().expect("index lock poisoned").clone();
        for path in self.table_paths() {
            let result = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| Table::parse(b, true).map(|_| ()).map_err(|e| e.to_string()));
            if let Err(e) = result {
                bad.push((path, e));
            }
        }
        bad
    }

    /// Every `packs/<id>.pack` file.
    pub fn pack_files(&self) -> Result<Vec<(Id, PathBuf)>> {
        let dir = self.packs_dir();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let path = entry.map_err(io_err("list", &dir))?.path();
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".pack"))
                .and_then(|h| Id::from_hex(h).ok());
            if let Some(id) = id {
                out.push((id, path));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Make everything ingested so far durable and findable: hand over the
    /// open pack and wait until the closer has indexed every pack.
    pub fn flush(&self) -> Result<()> {
        let mut pending = self.pending.lock().expect("pack lock poisoned");
        self.hand_off(&mut pending)?;
        while pending.closing > 0 {
            pending = self.closed.wait(pending).expect("pack lock poisoned");
        }
        match &pending.failed {
            Some(e) => Err(StoreError::Closing(e.clone())),
            None => Ok(()),
        }
    }

    /// Ingest chunks of `data` cut at `ends`, then the recipe.
    fn ingest_cut(
        &self,
        data: &[u8],
        ends: &[usize],
        tensors: Vec<layout::Tensor>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Ingested> {
        let starts: Vec<usize> = std::iter::once(0).chain(ends.iter().copied()).collect();
        let pieces: Vec<&[u8]> = starts.windows(2).map(|w| &data[w[0]..w[1]]).collect();
        let results = self.store_chunks(&pieces, progress)?;
        let new_bytes = results.iter().filter(|r| r.2).map(|r| r.1 as u64).sum();
        let recipe = Recipe {
            size: data.len() as u64,
            chunks: results.into_iter().map(|(id, len, _)| (id, len)).collect(),
            tensors,
        };
        let id = self.store_recipe(&recipe)?;
        Ok(Ingested {
            id,
            size: recipe.size,
            new_bytes,
        })
    }

    /// Hash and compress chunks in parallel, then append them in the
    /// order given, a batch at a time: a file's chunks lie in order in its
    /// packs, so a sequential read of the file is a sequential read of the
    /// pack (coalesced local reads, ranged remote reads without gaps).
    /// Returns (id, length, whether it was new) per chunk.
    fn store_chunks(
        &self,
        pieces: &[&[u8]],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<(Id, u32, bool)>> {
        const BATCH: usize = 512; // about 32 MiB
        let mut out = Vec::with_capacity(pieces.len());
        let mut batches = pieces.chunks(BATCH);
        let mut ready = batches.next().map(|b| self.prepare_chunks(b));
        // Appending one batch (in order, one thread) overlaps with hashing
        // and compressing the next (all the other threads).
        while let Some(current) = ready.take() {
            let next = batches.next();
            let (prepared, appended) = rayon::join(
                || next.map(|b| self.prepare_chunks(b)),
                || self.append_prepared(current, progress),
            );
            out.extend(appended?);
            ready = prepared;
        }
        Ok(out)
    }

    /// Hash each piece (a private copy: the source may be a map of a file
    /// another process is writing, and the bytes hashed must be the bytes
    /// stored, I1) and compress the ones the store lacks.
    fn prepare_chunks(&self, batch: &[&[u8]]) -> Vec<Prepared> {
        batch
            .par_iter()
            .map(|piece| {
                let bytes = piece.to_vec();
                let id = Id::of_chunk(&bytes);
                let encoded = (!self.contains(&id)).then(|| compress::encode(&bytes));
                (id, bytes, encoded)
            })
            .collect()
    }

    fn append_prepared(
        &self,
        prepared: Vec<Prepared>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<(Id, u32, bool)>> {
        let mut out = Vec::with_capacity(prepared.len());
        for (id, bytes, encoded) in prepared {
            let new = match encoded {
                Some((codec, stored)) => {
                    let stored = stored.as_deref().unwrap_or(&bytes);
                    self.insert_verified(Kind::Chunk, id, codec, bytes.len(), stored)?
                }
                None => false,
            };
            progress(bytes.len() as u64);
            out.push((id, bytes.len() as u32, new));
        }
        Ok(out)
    }

    fn store_recipe(&self, recipe: &Recipe) -> Result<Id> {
        let id = recipe.file_id();
        let bytes = recipe.encode();
        if bytes.len() > pack::MAX_RECIPE as usize {
            return Err(StoreError::TooLarge {
                size: recipe.size,
                chunks: recipe.chunks.len(),
            });
        }
        self.append(Kind::Recipe, id, &bytes)?;
        Ok(id)
    }

    /// Ingest bytes already in memory.
    pub fn ingest_bytes(&self, data: &[u8]) -> Result<Ingested> {
        let (ends, tensors) = plan(data);
        self.ingest_cut(data, &ends, tensors, &|_| {})
    }

    /// Ingest a file on disk, chunking it in parallel. The file is checked
    /// again afterwards: one that changed or vanished meanwhile is an error
    /// (its chunks stay stored and are reused by the next attempt).
    pub fn ingest_file(&self, path: &Path, progress: &(dyn Fn(u64) + Sync)) -> Result<Ingested> {
        let file = File::open(path).map_err(vanished_or("open", path))?;
        let before = file.metadata().map_err(io_err("stat", path))?;
        let ingested = match map_readonly(&file, before.len()).map_err(io_err("map", path))? {
            None => self.ingest_bytes(&[])?,
            Some(map) => {
                let _ = map.advise(memmap2::Advice::Sequential);
                let (ends, tensors) = plan(&map);
                self.ingest_cut(&map, &ends, tensors, progress)?
            }
        };
        let after = std::fs::metadata(path).map_err(vanished_or("stat", path))?;
        if crate::statcache::Stamp::of(&after) != crate::statcache::Stamp::of(&before) {
            return Err(StoreError::Changed {
                path: path.to_path_buf(),
            });
        }
        Ok(ingested)
    }

    /// Ingest a stream of unknown length (git's clean filter).
    pub fn ingest_stream(&self, mut reader: impl std::io::Read) -> Result<Ingested> {
        let stdin_path = Path::new("<stream>");
        let mut head = vec![0u8; 8];
        let got = read_full(&mut reader, &mut head).map_err(io_err("read", stdin_path))?;
        head.truncate(got);
        if let Some(n) = layout::safetensors_header_len(&head) {
            let mut rest = vec![0u8; n as usize - 8];
            let got = read_full(&mut reader, &mut rest).map_err(io_err("read", stdin_path))?;
            rest.truncate(got);
            head.extend_from_slice(&rest);
        }
        let cuts = layout::stream_cuts(&head);
        let head_for_layout = head.clone();
        let mut chunker = chunk::StreamChunker::new(
            std::io::Read::chain(std::io::Cursor::new(head), reader),
            cuts,
        );
        let mut chunks = Vec::new();
        let mut size = 0u64;
        let mut new_bytes = 0u64;
        loop {
            let batch = chunker
                .next_batch(16 << 20)
                .map_err(io_err("read", stdin_path))?;
            if batch.is_empty() {
                break;
            }
            let pieces: Vec<&[u8]> = batch.iter().map(|(_, b)| b.as_slice()).collect();
            let done = self.store_chunks(&pieces, &|_| {})?;
            for (id, len, new) in done {
                size += len as u64;
                if new {
                    new_bytes += len as u64;
                }
                chunks.push((id, len));
            }
        }
        let tensors = layout::detect(&head_for_layout, size).tensors;
        let recipe = Recipe {
            size,
            chunks,
            tensors,
        };
        let id = self.store_recipe(&recipe)?;
        Ok(Ingested {
            id,
            size,
            new_bytes,
        })
    }

    fn pack(&self, id: &Id) -> Result<Arc<PackFile>> {
        let mut packs = self.packs.lock().expect("pack cache poisoned");
        if let Some(p) = packs.get(id) {
            return Ok(p.clone());
        }
        let path = self.packs_dir().join(format!("{}.pack", id.to_hex()));
        let p = Arc::new(PackFile::open(&path)?);
        packs.insert(*id, p.clone());
        Ok(p)
    }

    fn read_entry(&self, id: &Id, kind: Kind, what: &'static str) -> Result<Vec<u8>> {
        let entry = match self.lookup(id) {
            Some(e) => e,
            None if self
                .pending
                .lock()
                .expect("pack lock poisoned")
                .ids
                .contains(id) =>
            {
                self.flush()?;
                self.lookup(id)
                    .ok_or(StoreError::Missing { what, id: *id })?
            }
            None => return Err(StoreError::Missing { what, id: *id }),
        };
        if entry.kind != kind {
            return Err(StoreError::Missing { what, id: *id });
        }
        Ok(self.pack(&entry.pack)?.read_record(&entry)?)
    }

    /// A file's recipe, verified against its id.
    pub fn recipe(&self, id: &Id) -> Result<Recipe> {
        let raw = self.read_entry(id, Kind::Recipe, "file")?;
        Recipe::decode(&raw, id).map_err(|source| StoreError::Recipe { id: *id, source })
    }

    /// One chunk, verified against its id.
    pub fn chunk(&self, id: &Id) -> Result<Vec<u8>> {
        self.read_entry(id, Kind::Chunk, "chunk")
    }

    /// The bytes of `chunks`, in order, every one verified. Records that
    /// lie next to each other in a pack (the usual case for one file) are
    /// read with one read of up to [`RUN_BYTES`]: a 1 GiB file is a few
    /// hundred reads, not 16 000.
    pub fn read_chunks(&self, chunks: &[(Id, u32)]) -> Result<Vec<Vec<u8>>> {
        let mut located = Vec::with_capacity(chunks.len());
        for (i, (id, _)) in chunks.iter().enumerate() {
            let entry = match self.lookup(id) {
                Some(e) if e.kind == Kind::Chunk => e,
                _ => {
                    // Not indexed yet (still in an open pack) or missing.
                    let bytes = self.chunk(id)?;
                    located.push((i, None, Some(bytes)));
                    continue;
                }
            };
            located.push((i, Some(entry), None));
        }
        let mut order: Vec<usize> = (0..located.len())
            .filter(|&k| located[k].1.is_some())
            .collect();
        order.sort_by_key(|&k| {
            let e = located[k].1.expect("filtered");
            (e.pack, e.offset)
        });
        let mut runs: Vec<Vec<usize>> = Vec::new();
        for k in order {
            let e = located[k].1.expect("filtered");
            let joins = runs
                .last()
                .and_then(|run| run.last())
                .map(|&prev| located[prev].1.expect("filtered"))
                .is_some_and(|p| {
                    let end = p.offset + pack::RECORD_HEADER as u64 + p.stored_len as u64;
                    let run_start = located[runs.last().expect("non-empty")[0]]
                        .1
                        .expect("filtered")
                        .offset;
                    p.pack == e.pack
                        && (e.offset == p.offset || e.offset == end)
                        && end - run_start < RUN_BYTES
                });
            if joins {
                runs.last_mut().expect("non-empty").push(k);
            } else {
                runs.push(vec![k]);
            }
        }
        let decoded: Vec<Vec<(usize, Vec<u8>)>> = runs
            .par_iter()
            .map(|run| {
                let entries: Vec<Entry> = run
                    .iter()
                    .map(|&k| located[k].1.expect("filtered"))
                    .collect();
                let pack = self.pack(&entries[0].pack)?;
                let bytes = pack.read_run(&entries)?;
                Ok(run.iter().map(|&k| located[k].0).zip(bytes).collect())
            })
            .collect::<Result<_>>()?;
        let mut out: Vec<Option<Vec<u8>>> = located.into_iter().map(|(_, _, b)| b).collect();
        for (i, bytes) in decoded.into_iter().flatten() {
            out[i] = Some(bytes);
        }
        // The recipe's lengths are part of the file id, the bytes' hash is
        // the chunk id: both must agree, or offsets would shift (I3).
        out.into_iter()
            .zip(chunks)
            .map(|(b, (id, len))| {
                let b = b.expect("every chunk was read");
                if b.len() != *len as usize {
                    return Err(StoreError::Recipe {
                        id: *id,
                        source: RecipeError::Malformed(
                            "a chunk's length differs from the length its recipe gives",
                        ),
                    });
                }
                Ok(b)
            })
            .collect()
    }

    /// Stream a file's bytes, every chunk verified before it is written.
    pub fn write_file(&self, id: &Id, out: &mut dyn Write) -> Result<u64> {
        let recipe = self.recipe(id)?;
        let out_path = Path::new("<output>");
        // Eight batches (32 MiB) decode in parallel, then go out in order.
        for group in recipe.chunks.chunks(READ_BATCH * 8) {
            let batches: Vec<Vec<Vec<u8>>> = group
                .par_chunks(READ_BATCH)
                .map(|b| self.read_chunks(b))
                .collect::<Result<_>>()?;
            for b in batches.iter().flatten() {
                out.write_all(b).map_err(io_err("write", out_path))?;
            }
        }
        Ok(recipe.size)
    }

    /// Write a file's bytes to `dest` (atomically replacing whatever is
    /// there): batches of chunks read, verified and written in parallel.
    pub fn materialize(&self, id: &Id, dest: &Path) -> Result<u64> {
        let recipe = self.recipe(id)?;
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".lode-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(io_err("create temporary file in", dir))?;
        let file = tmp.as_file();
        file.set_len(recipe.size)
            .map_err(io_err("extend", tmp.path()))?;
        let offsets = recipe.offsets();
        recipe
            .chunks
            .par_chunks(READ_BATCH)
            .zip(offsets.par_chunks(READ_BATCH))
            .try_for_each(|(batch, at)| {
                for (bytes, &at) in self.read_chunks(batch)?.into_iter().zip(at) {
                    file.write_all_at(&bytes, at)
                        .map_err(io_err("write", tmp.path()))?;
                }
                Ok::<_, StoreError>(())
            })?;
        if let Ok(meta) = std::fs::metadata(dest) {
            let _ = std::fs::set_permissions(tmp.path(), meta.permissions());
        }
        tmp.persist(dest).map_err(|e| StoreError::Io {
            op: "rename into",
            path: dest.to_path_buf(),
            source: e.error,
        })?;
        Ok(recipe.size)
    }
}

/// Where `data` is cut (chunk end offsets) and its tensor table.
fn plan(data: &[u8]) -> (Vec<usize>, Vec<layout::Tensor>) {
    let layout = layout::detect(data, data.len() as u64);
    let segments: Vec<usize> = layout.segments.iter().map(|&s| s as usize).collect();
    (chunk::cuts_segmented(data, &segments), layout.tensors)
}

/// The recipe of `data` (and so its file id), without storing anything.
pub fn identify(data: &[u8]) -> Recipe {
    let (ends, tensors) = plan(data);
    let starts: Vec<usize> = std::iter::once(0).chain(ends.iter().copied()).collect();
    let chunks = starts
        .par_windows(2)
        .map(|w| (Id::of_chunk(&data[w[0]..w[1]]), (w[1] - w[0]) as u32))
        .collect();
    Recipe {
        size: data.len() as u64,
        chunks,
        tensors,
    }
}

/// The recipe of a file on disk, without storing anything.
pub fn identify_file(path: &Path) -> Result<Recipe> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let len = file.metadata().map_err(io_err("stat", path))?.len();
    Ok(
        match map_readonly(&file, len).map_err(io_err("map", path))? {
            None => identify(&[]),
            Some(map) => identify(&map),
        },
    )
}

/// A read-only map of a working file of `len` bytes (`None` when empty:
/// an empty map is an error on some systems).
pub(crate) fn map_readonly(file: &File, len: u64) -> std::io::Result<Option<memmap2::Mmap>> {
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the map is read-only and its users hold it only while they
    // read the file once. Another process may still change the file: a
    // truncation makes reads of the lost pages fault (SIGBUS) and the
    // process dies before it records anything for the file (the limit in
    // docs/SEMANTICS.md); any other change is caught by the callers, which
    // compare the file's stamp before and after, hash and store each chunk
    // from one private copy, and (the clean filter) compare the map with
    // the bytes git sends.
    unsafe { memmap2::Mmap::map(file) }.map(Some)
}

fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Remove a superseded index table. Another process merging at the same
/// time may have removed it already: that is fine, its entries are in a
/// merged table (both merges keep everything they saw).
fn remove_table(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_err("remove superseded index table", path)(e))
        }
        _ => Ok(()),
    }
}

pub(crate) fn map_table(path: &Path) -> Result<Mapped> {
    let file = File::open(path).map_err(io_err("open index table", path))?;
    // SAFETY: index tables are immutable once renamed into place (they are
    // replaced by new files, never rewritten), so the mapped bytes do not
    // change under us; a table removed by a merge stays mapped until dropped.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err("map index table", path))?;
    Table::parse(map, false).map_err(|source| StoreError::Index {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::tests_support::noise;

    #[test]
    fn dedup_across_versions_and_verified_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let v1 = noise(3 << 20, 1);
        let mut v2 = v1.clone();
        v2[1_500_000] ^= 1;
        let a = store.ingest_bytes(&v1).unwrap();
        store.flush().unwrap();
        let b = store.ingest_bytes(&v2).unwrap();
        store.flush().unwrap();
        assert_eq!(a.new_bytes, v1.len() as u64);
        assert!(b.new_bytes <= 2 * chunk::MAX_SIZE as u64, "{}", b.new_bytes);
        let mut out = Vec::new();
        store.write_file(&b.id, &mut out).unwrap();
        assert_eq!(out, v2);
        // Reopen: the index is durable.
        let store = Store::open(dir.path()).unwrap();
        assert!(store.has_file(&a.id));
        let (n, errors) = store.rebuild_index().unwrap();
        assert_eq!((n, errors.len()), (2, 0));
        let mut out = Vec::new();
        store.write_file(&a.id, &mut out).unwrap();
        assert_eq!(out, v1);
        // A stream of the same bytes gives the same id.
        let s = store.ingest_stream(&v1[..]).unwrap();
        assert_eq!(s.id, a.id);
        assert_eq!(s.new_bytes, 0);
    }

    #[test]
    fn many_small_packs_merge_into_few_tables_and_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        for i in 0..60u64 {
            let data = noise(20_000 + i as usize, i + 1);
            ids.push((store.ingest_bytes(&data).unwrap().id, data));
            store.flush().unwrap(); // one pack, one table each
        }
        let tables = store.table_paths().len();
        assert!(tables <= index::MERGE_AT, "{tables} tables");
        let store = Store::open(dir.path()).unwrap();
        for (id, data) in &ids {
            let mut out = Vec::new();
            store.write_file(id, &mut out).unwrap();
            assert_eq!(&out, data);
        }
        assert_eq!(store.pack_files().unwrap().len(), 60);
    }
}
