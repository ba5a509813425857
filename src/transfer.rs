//! Push and fetch: moving packs between the local store and a remote.
//!
//! Push uploads every local pack that holds a record the remote's index
//! lacks (whole packs: a dataset of small files goes up in a few large
//! requests), many in flight, then the pack's footer (`packs/<id>.idx`),
//! and only when every pack is up, one index segment (`index/<id>`) naming
//! them. Readers find data through segments alone, so a record is never
//! visible on the remote before its pack is whole there; a push that
//! fails or is killed leaves at most unindexed packs, which the next push
//! finds (one size request each) and does not send again.
//!
//! Fetch reads the remote's segments (cached under `.git/lode/remotes/`),
//! then the records it needs with ranged, coalesced reads, many in flight.
//! Every record is verified before it is stored; chunks are stored before
//! the recipes that name them, so a killed fetch never leaves a file that
//! looks present but is not.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use futures::TryStreamExt;
use rayon::iter::{ParallelBridge, ParallelIterator};

use crate::id::Id;
use crate::index::{self, Entry, Kind, Table};
use crate::pack::{self, PackFile, RECORD_HEADER};
use crate::recipe::Recipe;
use crate::remote::{self, Remote, RemoteError};
use crate::store::{self, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Missing(String),
    #[error("{what}: {source}")]
    Local {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = TransferError> = std::result::Result<T, E>;

/// Largest span of one ranged read, and the largest gap between two
/// wanted records that is read through rather than split.
const RANGE_MAX: u64 = 16 << 20;
const RANGE_GAP: u64 = 1 << 20;

/// The remote's index, as far as its segments say: record id → where.
pub struct Known {
    tables: Vec<store::Mapped>,
}

impl Known {
    pub fn lookup(&self, id: &Id) -> Option<Entry> {
        self.tables.iter().find_map(|t| t.lookup(id))
    }

    /// Whether the remote holds the whole file (a recipe in a segment
    /// means its chunks are in that segment or an earlier one).
    pub fn has_file(&self, id: &Id) -> bool {
        self.lookup(id).is_some_and(|e| e.kind == Kind::Recipe)
    }

    pub fn segments(&self) -> usize {
        self.tables.len()
    }
}

/// Bring the local copy of the remote's index up to date: list `index/`,
/// download the segments not seen before (verified against their names),
/// and map them all.
pub fn sync_index(remote: &Remote, lode_dir: &Path) -> Result<Known> {
    let dir = remote::cache_dir(lode_dir, remote.url()).join("index");
    std::fs::create_dir_all(&dir).map_err(|source| TransferError::Local {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let names = remote.block_on(remote.list("index"))?;
    let names: Vec<Id> = names.iter().filter_map(|n| Id::from_hex(n).ok()).collect();
    let new: Vec<Id> = names
        .iter()
        .filter(|id| !dir.join(id.to_hex()).exists())
        .copied()
        .collect();
    remote.block_on(async {
        futures::stream::iter(new.iter().map(Ok::<_, TransferError>))
            .try_for_each_concurrent(remote.transfers, |id| {
                let dir = &dir;
                async move {
                    let rel = format!("index/{}", id.to_hex());
                    let bytes = remote.get(&rel).await?;
                    let damaged = |reason: String| RemoteError::Damaged {
                        what: rel.clone(),
                        url: remote.url().to_string(),
                        reason,
                    };
                    if Id::of_chunk(&bytes) != *id {
                        return Err(damaged("its bytes do not hash to its name".into()).into());
                    }
                    Table::parse(&bytes[..], true).map_err(|e| damaged(e.to_string()))?;
                    let path = dir.join(id.to_hex());
                    crate::durable::write(&path, &bytes).map_err(|source| {
                        TransferError::Local {
                            what: format!("writing {}", path.display()),
                            source,
                        }
                    })?;
                    Ok(())
                }
            })
            .await
    })?;
    let mut tables = Vec::new();
    for id in &names {
        tables.push(store::map_table(&dir.join(id.to_hex()))?);
    }
    Ok(Known { tables })
}

/// What a push did.
#[derive(Debug, Default, serde::Serialize)]
pub struct PushReport {
    /// Files the pushed commits name.
    pub files: usize,
    /// Of those, files the remote already had.
    pub files_present: usize,
    pub packs_uploaded: usize,
    /// Packs found whole on the remote (an earlier, interrupted push).
    pub packs_present: usize,
    pub bytes_uploaded: u64,
    /// The index segment written, if anything was new.
    pub segment: Option<String>,
    pub requests: u64,
}

/// Upload the data of `files` (file ids) that the remote lacks. Returns
/// only when every record is on the remote and indexed there.
pub fn push(
    store: &Store,
    remote: &Remote,
    lode_dir: &Path,
    files: &[(Id, String)],
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<PushReport> {
    store.flush()?;
    let known = sync_index(remote, lode_dir)?;
    let mut report = PushReport {
        files: files.len(),
        ..Default::default()
    };
    // Records the remote lacks, by local pack.
    let mut packs: HashSet<Id> = HashSet::new();
    let mut seen: HashSet<Id> = HashSet::new();
    for (id, path) in files {
        if !seen.insert(*id) {
            continue;
        }
        if known.has_file(id) {
            report.files_present += 1;
            continue;
        }
        let recipe = store.recipe(id).map_err(|e| match e {
            StoreError::Missing { .. } => TransferError::Missing(format!(
                "{path}: data {id} is neither in the local store nor on the remote, so it cannot be pushed; \
                 fetch it from where it was committed, or commit the file again"
            )),
            other => other.into(),
        })?;
        let ids = std::iter::once(*id).chain(recipe.chunks.iter().map(|c| c.0));
        for rid in ids {
            if known.lookup(&rid).is_some() {
                continue;
            }
            let entry = store.lookup(&rid).ok_or_else(|| {
                TransferError::Missing(format!(
                    "{path}: chunk {rid} is missing from the local store; run `lode fsck`"
                ))
            })?;
            packs.insert(entry.pack);
        }
    }
    report.files = seen.len();
    let mut packs: Vec<Id> = packs.into_iter().collect();
    packs.sort();
    if packs.is_empty() {
        report.requests = remote.requests();
        return Ok(report);
    }
    let packs_dir = store.packs_dir();
    let sizes: Vec<(Id, PathBuf, u64)> = packs
        .iter()
        .map(|id| {
            let path = packs_dir.join(format!("{}.pack", id.to_hex()));
            let size = std::fs::metadata(&path)
                .map_err(|source| TransferError::Local {
                    what: format!("reading {}", path.display()),
                    source,
                })?
                .len();
            Ok((*id, path, size))
        })
        .collect::<Result<_>>()?;
    let total: u64 = sizes.iter().map(|s| s.2).sum();
    let sent = std::sync::atomic::AtomicU64::new(0);
    let on_bytes = |n: u64| {
        let now = sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        progress(now, total);
    };
    let footers: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
    let counts = Mutex::new((0usize, 0usize, 0u64));
    remote.block_on(async {
        futures::stream::iter(sizes.iter().map(Ok::<_, TransferError>))
            .try_for_each_concurrent(remote.transfers, |(id, path, size)| {
                let (footers, counts, on_bytes) = (&footers, &counts, &on_bytes);
                async move {
                    let hex = id.to_hex();
                    let footer = {
                        let path = path.clone();
                        tokio::task::spawn_blocking(move || PackFile::open(&path)?.footer())
                            .await
                            .expect("footer task")
                            .map_err(StoreError::from)?
                    };
                    let pack_key = format!("packs/{hex}.pack");
                    let there = remote.size(&pack_key).await? == Some(*size);
                    if there {
                        on_bytes(*size);
                    } else {
                        remote.put_file(&pack_key, path, *id, on_bytes).await?;
                    }
                    let mut entries: Vec<Entry> = footer
                        .into_iter()
                        .map(|e| Entry { pack: *id, ..e })
                        .collect();
                    let idx = index::encode(&[*id], &mut entries);
                    remote
                        .put(&format!("packs/{hex}.idx"), Bytes::from(idx))
                        .await?;
                    let mut c = counts.lock().expect("counts");
                    if there {
                        c.1 += 1;
                    } else {
                        c.0 += 1;
                        c.2 += size;
                    }
                    footers.lock().expect("footers").extend(entries);
                    Ok(())
                }
            })
            .await
    })?;
    // Every pack is whole on the remote: now, and only now, index them.
    let mut entries = footers.into_inner().expect("footers");
    let segment = index::encode(&packs, &mut entries);
    let seg_id = Id::of_chunk(&segment);
    remote.block_on(remote.put(
        &format!("index/{}", seg_id.to_hex()),
        Bytes::from(segment.clone()),
    ))?;
    let cached = remote::cache_dir(lode_dir, remote.url())
        .join("index")
        .join(seg_id.to_hex());
    // The local copy only saves a download later.
    let _ = crate::durable::write(&cached, &segment);
    let (up, present, bytes) = counts.into_inner().expect("counts");
    report.packs_uploaded = up;
    report.packs_present = present;
    report.bytes_uploaded = bytes;
    report.segment = Some(seg_id.to_hex());
    report.requests = remote.requests();
    Ok(report)
}

/// What a fetch did.
#[derive(Debug, Default, serde::Serialize)]
pub struct FetchReport {
    pub files: usize,
    /// Files that were already in the local store.
    pub files_present: usize,
    pub records: usize,
    pub bytes_downloaded: u64,
    pub requests: u64,
}

/// Download the data of `files` (file id, path for messages) that the
/// local store lacks, every record verified. `known` is the remote's index
/// ([`sync_index`]).
pub fn fetch(
    store: &Store,
    remote: &Remote,
    known: &Known,
    files: &[(Id, String)],
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<FetchReport> {
    let mut report = FetchReport {
        files: files.len(),
        ..Default::default()
    };
    let mut want: Vec<(Id, &str)> = Vec::new();
    let mut seen = HashSet::new();
    for (id, path) in files {
        if !seen.insert(*id) {
            continue;
        }
        report.files = seen.len();
        if store.has_file(id) {
            report.files_present += 1;
        } else {
            want.push((*id, path));
        }
    }
    if want.is_empty() {
        return Ok(report);
    }
    let not_there = |what: String| {
        TransferError::Missing(format!(
            "{what} is not on the remote {} (was it pushed? `lode push` from the repository that committed it)",
            remote.url()
        ))
    };
    let mut recipe_entries = Vec::new();
    for (id, path) in &want {
        match known.lookup(id) {
            Some(e) if e.kind == Kind::Recipe => recipe_entries.push(e),
            _ => return Err(not_there(format!("{path} (data {id})"))),
        }
    }
    // Recipes first: they say which chunks to get. Not stored yet.
    let recipes: Mutex<Vec<(Entry, Recipe, Bytes)>> = Mutex::new(Vec::new());
    let downloaded = std::sync::atomic::AtomicU64::new(0);
    read_records(
        remote,
        &recipe_entries,
        &downloaded,
        &|_| {},
        &|e, raw, record| {
            let recipe = Recipe::decode(&raw, &e.id)
                .map_err(|source| StoreError::Recipe { id: e.id, source })?;
            recipes.lock().expect("recipes").push((e, recipe, record));
            Ok(())
        },
    )?;
    let recipes = recipes.into_inner().expect("recipes");
    let paths: HashMap<Id, &str> = want.iter().copied().collect();
    let mut chunk_entries: BTreeMap<Id, Entry> = BTreeMap::new();
    for (e, recipe, _) in &recipes {
        for (cid, _) in &recipe.chunks {
            if chunk_entries.contains_key(cid) || store.lookup(cid).is_some() {
                continue;
            }
            match known.lookup(cid) {
                Some(ce) if ce.kind == Kind::Chunk => {
                    chunk_entries.insert(*cid, ce);
                }
                _ => {
                    return Err(not_there(format!(
                        "chunk {cid} of {}",
                        paths.get(&e.id).copied().unwrap_or("a file")
                    )));
                }
            }
        }
    }
    let chunk_entries: Vec<Entry> = chunk_entries.into_values().collect();
    let total: u64 = chunk_entries
        .iter()
        .map(|e| e.stored_len as u64 + RECORD_HEADER as u64)
        .sum();
    let done = std::sync::atomic::AtomicU64::new(0);
    let on_bytes = |n: u64| {
        let now = done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        progress(now, total);
    };
    read_records(
        remote,
        &chunk_entries,
        &downloaded,
        &on_bytes,
        &|e, raw, record| {
            store.insert_verified(
                Kind::Chunk,
                e.id,
                e.codec,
                raw.len(),
                &record[RECORD_HEADER..],
            )?;
            Ok(())
        },
    )?;
    // Only now the recipes: their chunks are all stored (same pack or an
    // earlier one; packs become durable in order).
    for (e, recipe, record) in &recipes {
        store.insert_verified(
            Kind::Recipe,
            e.id,
            e.codec,
            e.raw_len as usize,
            &record[RECORD_HEADER..],
        )?;
        let _ = recipe;
    }
    store.flush()?;
    report.records = chunk_entries.len() + recipes.len();
    report.bytes_downloaded = downloaded.into_inner();
    report.requests = remote.requests();
    Ok(report)
}

pub(crate) type OnRecord<'a> = dyn Fn(Entry, Vec<u8>, Bytes) -> Result<(), StoreError> + Sync + 'a;

/// Read `entries` from the remote's packs: grouped by pack, sorted by
/// offset, coalesced into ranges of up to [`RANGE_MAX`], many in flight;
/// each record decoded and verified, then handed to `on_record` with its
/// raw bytes and the record as stored.
pub(crate) fn read_records(
    remote: &Remote,
    entries: &[Entry],
    downloaded: &std::sync::atomic::AtomicU64,
    on_bytes: &(dyn Fn(u64) + Sync),
    on_record: &OnRecord<'_>,
) -> Result<()> {
    let mut sorted = entries.to_vec();
    sorted.sort_by_key(|e| (e.pack, e.offset));
    let mut ranges: Vec<Vec<Entry>> = Vec::new();
    for e in sorted {
        let end = |x: &Entry| x.offset + RECORD_HEADER as u64 + x.stored_len as u64;
        let joins = ranges.last().is_some_and(|r| {
            let (first, last) = (r[0], r[r.len() - 1]);
            first.pack == e.pack
                && e.offset >= end(&last)
                && e.offset - end(&last) <= RANGE_GAP
                && end(&e) - first.offset <= RANGE_MAX
        });
        if joins {
            ranges.last_mut().expect("non-empty").push(e);
        } else {
            ranges.push(vec![e]);
        }
    }
    // Downloads run on the async runtime; decoding and hashing (CPU work)
    // on rayon, fed through a bounded channel (memory stays at a few
    // ranges per transfer).
    std::thread::scope(|scope| {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<Entry>, Bytes)>(remote.transfers);
        let decoder = scope.spawn(move || {
            std::iter::from_fn(|| rx.blocking_recv())
                .par_bridge()
                .try_for_each(|(run, bytes)| -> Result<(), StoreError> {
                    let key = format!("packs/{}.pack", run[0].pack.to_hex());
                    let origin = PathBuf::from(format!("{} {key}", remote.url()));
                    let start = run[0].offset;
                    for e in run {
                        let at = (e.offset - start) as usize;
                        let record = bytes.slice(at..at + RECORD_HEADER + e.stored_len as usize);
                        let raw = pack::decode_record(&origin, &e, &record)?;
                        let n = record.len() as u64;
                        on_record(e, raw, record)?;
                        on_bytes(n);
                    }
                    Ok(())
                })
        });
        let downloads = remote.block_on(async {
            let tx = tx;
            futures::stream::iter(ranges.into_iter().map(Ok::<_, TransferError>))
                .try_for_each_concurrent(remote.transfers, |run| {
                    let tx = &tx;
                    async move {
                        let key = format!("packs/{}.pack", run[0].pack.to_hex());
                        let start = run[0].offset;
                        let last = run[run.len() - 1];
                        let end = last.offset + RECORD_HEADER as u64 + last.stored_len as u64;
                        let bytes = remote.get_range(&key, start..end).await?;
                        downloaded
                            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        // A closed channel means the decoder failed: its
                        // error is the one reported.
                        let _ = tx.send((run, bytes)).await;
                        Ok(())
                    }
                })
                .await
        });
        let decoded = decoder.join().expect("decoder thread");
        decoded?;
        downloads
    })
}
