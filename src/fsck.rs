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
}

pub struct Options {
    pub read_data: bool,
}

/// Check `store`; `history` maps committed file ids to their places (from
/// [`crate::git::Repo::where_in_history`]).
pub fn check(
    store: &Store,
    history: &HashMap<Id, Vec<(String, String)>>,
    opts: &Options,
) -> Report {
    let mut report = Report::default();
    let mut problems: Vec<(Id, &'static str, String)> = Vec::new();

    // Packs on disk, their footers, and (with read_data) every byte.
    let packs = match store.pack_files() {
        Ok(p) => p,
        Err(e) => {
            problems.push((Id::default(), "pack", format!("cannot list packs: {e}")));
            Vec::new()
        }
    };
    report.packs = packs.len();
    let per_pack: Vec<(
        Id,
        Result<Vec<Entry>, String>,
        Vec<(Id, &'static str, String)>,
        u64,
    )> = packs
        .par_iter()
        .map(|(id, path)| {
            let mut bad = Vec::new();
            let mut verified = 0;
            let footer = PackFile::open(path).and_then(|p| {
                let footer = p.footer()?;
                if opts.read_data {
                    match std::fs::read(path) {
                        Ok(bytes) if Id::of_chunk(&bytes) != *id => {
                            bad.push((
                                *id,
                                "pack",
                                "pack bytes do not hash to its name".to_string(),
                            ));
                        }
                        Ok(bytes) => verified += bytes.len() as u64,
                        Err(e) => bad.push((*id, "pack", format!("cannot read: {e}"))),
                    }
                    for e in &footer {
                        if let Err(err) = p.read_record(e) {
                            let kind = if e.kind == Kind::Chunk {
                                "chunk"
                            } else {
                                "file"
                            };
                            bad.push((e.id, kind, err.to_string()));
                        }
                    }
                }
                Ok(footer)
            });
            (*id, footer.map_err(|e| e.to_string()), bad, verified)
        })
        .collect();
    let mut in_packs: HashMap<Id, Id> = HashMap::new();
    for (pack, footer, bad, verified) in per_pack {
        report.bytes_verified += verified;
        problems.extend(bad);
        match footer {
            Ok(entries) => {
                for e in entries {
                    in_packs.insert(e.id, pack);
                }
            }
            Err(e) => problems.push((pack, "pack", e)),
        }
    }

    // The index must point only at packs that exist and hold the record.
    let index = store.index_entries();
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
    let mut chunk_users: HashMap<Id, Vec<Id>> = HashMap::new();
    for (file, recipe) in &decoded {
        match recipe {
            Ok(r) => {
                for (chunk, _) in &r.chunks {
                    chunk_users.entry(*chunk).or_default().push(*file);
                    if !indexed.contains(chunk) {
                        problems.push((*chunk, "chunk", "missing from the store".into()));
                    }
                }
            }
            Err(err) => {
                if !problems.iter().any(|(id, _, _)| id == file) {
                    problems.push((*file, "file", err.clone()));
                }
            }
        }
    }

    // Every committed pointer must have its file here.
    for id in history.keys() {
        if !indexed.contains(id) {
            problems.push((
                *id,
                "file",
                "committed, but its data is not in the store".into(),
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
                _ => Vec::new(),
            };
            if kind == "pack" {
                // Everything whose records lived in a damaged pack.
                let lost: HashSet<Id> = in_packs
                    .iter()
                    .filter(|(_, p)| **p == object)
                    .map(|(id, _)| *id)
                    .collect();
                files = decoded
                    .iter()
                    .filter(|(f, r)| {
                        lost.contains(f)
                            || r.as_ref()
                                .is_ok_and(|r| r.chunks.iter().any(|(c, _)| lost.contains(c)))
                    })
                    .map(|(f, _)| *f)
                    .collect();
            }
            files.sort();
            files.dedup();
            let places = files
                .iter()
                .flat_map(|f| history.get(f).cloned().unwrap_or_default())
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

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Chunk => "chunk",
        Kind::Recipe => "file",
    }
}
