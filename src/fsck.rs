//! Store verification: structure always, every byte with `read_data`.
//!
//! Structure: each pack's footer parses and checks (magic, version,
//! checksum, bounds); the index agrees with the packs; each recipe decodes,
//! hashes to its id, and names only chunks the index knows; each pointer
//! committed anywhere in history has its file in the store. With
//! `read_data`, every record of every pack is read, decompressed and hashed,
//! and every pack's bytes are hashed against its name. Each damaged object
//! is then traced to the files that contain it and the (commit, path)
//! places those files are committed at, so the report says what was lost.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use crate::git::Committed;
use crate::id::Id;
use crate::index::{Entry, Kind};
use crate::pack::PackFile;
use crate::recipe::Recipe;
use crate::store::Store;

/// One thing wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The damaged or missing object.
    pub object: Id,
    /// What kind of object ("pack", "chunk", "file").
    pub kind: &'static str,
    pub what: String,
    /// Files (ids) whose bytes depend on the object.
    pub files: Vec<Id>,
    /// (commit, path) places where those files are committed.
    pub places: Vec<(String, String)>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub packs: usize,
    pub chunks: usize,
    pub files: usize,
    pub bytes_verified: u64,
    pub problems: Vec<Problem>,
    /// Committed files with no data here, when a remote is set.
    pub elsewhere: usize,
}

pub struct Options {
    pub read_data: bool,
    /// Committed files whose data is not here are expected (a remote holds
    /// them; `lode fetch` gets them): counted in [`Report::elsewhere`], not
    /// as problems.
    pub remote_set: bool,
}

/// Check `store`; `history` maps committed file ids to where they are
/// committed (from [`crate::git::Repo::where_in_history`]).
pub fn check(store: &Store, history: &HashMap<Id, Committed>, opts: &Options) -> Report {
    let mut report = Report::default();
    let mut problems: Vec<(Id, &'static str, String)> = Vec::new();
    let index = store.index_entries();

    // Index tables: checksums and order.
    for (path, what) in store.verify_tables() {
        problems.push((
            Id::default(),
            "index",
            format!(
                "{}: {what}; run `lode fsck --rebuild-index`",
                path.display()
            ),
        ));
    }

    // Packs on disk, their footers, and (with read_data) every byte. A
    // pack whose footer is unreadable is checked through the index entries
    // that point into it, so its damage is still traced to files.
    let packs = match store.pack_files() {
        Ok(p) => p,
        Err(e) => {
            problems.push((Id::default(), "pack", format!("cannot list packs: {e}")));
            Vec::new()
        }
    };
    report.packs = packs.len();
    let mut by_pack: HashMap<Id, Vec<Entry>> = HashMap::new();
    for e in &index {
        by_pack.entry(e.pack).or_default().push(*e);
    }
    let per_pack: Vec<PackResult> = packs
        .par_iter()
        .map(|(id, path)| {
            check_pack(
                *id,
                path,
                by_pack.get(id).map(Vec::as_slice).unwrap_or(&[]),
                opts,
            )
        })
        .collect();
    // Which pack holds each record (from footers, else from the index).
    let mut in_packs: HashMap<Id, Id> = HashMap::new();
    for r in per_pack {
        report.bytes_verified += r.verified;
        problems.extend(r.problems);
        for id in r.holds {
            in_packs.insert(id, r.pack);
        }
    }

    // The index must point only at packs that exist.
    let pack_ids: HashSet<Id> = packs.iter().map(|(id, _)| *id).collect();
    let mut indexed: HashSet<Id> = HashSet::new();
    for e in &index {
        indexed.insert(e.id);
        if !pack_ids.contains(&e.pack) {
            problems.push((
                e.id,
                kind_name(e.kind),
                format!("index points at pack {} which is missing", e.pack),
            ));
        }
    }
    let unindexed = in_packs.keys().filter(|id| !indexed.contains(id)).count();
    if unindexed > 0 {
        problems.push((
            Id::default(),
            "index",
            format!(
                "{unindexed} stored records are not in the index; run `lode fsck --rebuild-index`"
            ),
        ));
    }

    // Recipes: decode, verify, and check that every chunk is indexed.
    let recipes: Vec<&Entry> = index.iter().filter(|e| e.kind == Kind::Recipe).collect();
    report.files = recipes.len();
    report.chunks = index.iter().filter(|e| e.kind == Kind::Chunk).count();
    let decoded: Vec<(Id, Result<Recipe, String>)> = recipes
        .par_iter()
        .map(|e| (e.id, store.recipe(&e.id).map_err(|err| err.to_string())))
        .collect();
    let chunk_lens: HashMap<Id, u32> = index
        .iter()
        .filter(|e| e.kind == Kind::Chunk)
        .map(|e| (e.id, e.raw_len))
        .collect();
    let mut chunk_users: HashMap<Id, Vec<Id>> = HashMap::new();
    for (file, recipe) in &decoded {
        match recipe {
            Ok(r) => {
                for (chunk, len) in &r.chunks {
                    chunk_users.entry(*chunk).or_default().push(*file);
                    match chunk_lens.get(chunk) {
                        None => problems.push((*chunk, "chunk", "missing from the store".into())),
                        Some(stored) if stored != len => problems.push((
                            *file,
                            "file",
                            format!("its recipe gives chunk {chunk} {len} bytes, the stored chunk has {stored}"),
                        )),
                        Some(_) => {}
                    }
                }
            }
            Err(err) => problems.push((*file, "file", err.clone())),
        }
    }

    // Every committed pointer must have its file here, at the size it says.
    let sizes: HashMap<Id, u64> = decoded
        .iter()
        .filter_map(|(f, r)| Some((*f, r.as_ref().ok()?.size)))
        .collect();
    for (id, committed) in history {
        if !indexed.contains(id) && opts.remote_set {
            report.elsewhere += 1;
            continue;
        }
        if !indexed.contains(id) {
            problems.push((
                *id,
                "file",
                "committed, but its data is not in the store".into(),
            ));
            continue;
        }
        if let Some(&size) = sizes.get(id)
            && let Some(bad) = committed.sizes.iter().find(|&&s| s != size)
        {
            problems.push((
                *id,
                "file",
                format!(
                    "a committed pointer says {bad} bytes, the stored file has {}",
                    size
                ),
            ));
        }
    }

    problems.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    problems.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    report.problems = problems
        .into_iter()
        .map(|(object, kind, what)| {
            let mut files: Vec<Id> = match kind {
                "chunk" => chunk_users.get(&object).cloned().unwrap_or_default(),
                "file" => vec![object],
                "pack" => {
                    // Everything whose records live in the damaged pack.
                    let lost: HashSet<Id> = in_packs
                        .iter()
                        .filter(|(_, p)| **p == object)
                        .map(|(id, _)| *id)
                        .collect();
                    decoded
                        .iter()
                        .filter(|(f, r)| {
                            lost.contains(f)
                                || r.as_ref()
                                    .is_ok_and(|r| r.chunks.iter().any(|(c, _)| lost.contains(c)))
                        })
                        .map(|(f, _)| *f)
                        .collect()
                }
                _ => Vec::new(),
            };
            files.sort();
            files.dedup();
            let places = files
                .iter()
                .flat_map(|f| history.get(f).map(|c| c.places.clone()).unwrap_or_default())
                .collect();
            Problem {
                object,
                kind,
                what,
                files,
                places,
            }
        })
        .collect();
    report
}

struct PackResult {
    pack: Id,
    /// Ids of the records this pack holds (footer, else index).
    holds: Vec<Id>,
    problems: Vec<(Id, &'static str, String)>,
    verified: u64,
}

/// Check one pack: its footer, the index entries that point into it, and
/// with `read_data` every record and the pack's own hash.
fn check_pack(id: Id, path: &std::path::Path, indexed: &[Entry], opts: &Options) -> PackResult {
    let mut r = PackResult {
        pack: id,
        holds: Vec::new(),
        problems: Vec::new(),
        verified: 0,
    };
    let file = match PackFile::open(path) {
        Ok(f) => f,
        Err(e) => {
            r.problems.push((id, "pack", e.to_string()));
            r.holds = indexed.iter().map(|e| e.id).collect();
            return r;
        }
    };
    let footer = match file.footer() {
        Ok(f) => Some(f),
        Err(e) => {
            r.problems.push((id, "pack", e.to_string()));
            None
        }
    };
    let records: Vec<Entry> = match &footer {
        Some(f) => {
            let by_id: HashMap<Id, &Entry> = f.iter().map(|e| (e.id, e)).collect();
            for e in indexed {
                let matches = by_id.get(&e.id).is_some_and(|f| {
                    Entry {
                        pack: e.pack,
                        ..**f
                    } == *e
                });
                if !matches {
                    r.problems.push((
                        e.id,
                        kind_name(e.kind),
                        "its index entry does not match its pack; run `lode fsck --rebuild-index`"
                            .into(),
                    ));
                }
            }
            f.clone()
        }
        None => indexed.to_vec(),
    };
    r.holds = records.iter().map(|e| e.id).collect();
    if opts.read_data {
        if footer.is_some() {
            match std::fs::read(path) {
                Ok(bytes) if Id::of_chunk(&bytes) != id => {
                    r.problems
                        .push((id, "pack", "pack bytes do not hash to its name".into()))
                }
                Ok(bytes) => r.verified += bytes.len() as u64,
                Err(e) => r.problems.push((id, "pack", format!("cannot read: {e}"))),
            }
        }
        for e in &records {
            if let Err(err) = file.read_record(e) {
                r.problems.push((e.id, kind_name(e.kind), err.to_string()));
            }
        }
    }
    r
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Chunk => "chunk",
        Kind::Recipe => "file",
    }
}
