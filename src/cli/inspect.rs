//! Read-only commands: `status`, `ls`, `show`, `hash`, `du`.

use std::collections::HashSet;
use std::path::PathBuf;

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use rayon::prelude::*;
use serde_json::json;

use super::{Ctx, Outcome, human, repo_relative};
use crate::id::Id;
use crate::index::Kind;
use crate::pointer::Pointer;
use crate::recipe::Recipe;
use crate::statcache::{Stamp, StatCache};
use crate::store;

/// Show the state of every tracked file in the working tree.
///
/// States: `present` (the file is here and matches what is staged),
/// `modified` (differs from the staged pointer: `git add` it),
/// `pointer` (only the pointer is here; `lode checkout` brings the data),
/// `missing-data` (a pointer whose data is not in the local store),
/// `deleted` (staged, but gone from the working tree).
#[derive(Args)]
pub struct StatusArgs {
    /// Print JSON lines for scripts.
    #[arg(long)]
    json: bool,
}

pub fn status(ctx: &Ctx, args: StatusArgs) -> Result<Outcome> {
    let (repo, store) = ctx.open()?;
    let files = repo.index_files()?;
    let filtered = repo.lode_filtered(&files)?;
    let tracked: Vec<String> = files
        .into_iter()
        .zip(filtered)
        .filter(|(_, f)| *f)
        .map(|(p, _)| p)
        .collect();
    // Staged pointers: blob ids from git's index.
    let staged = repo.staged_pointers()?;
    let mut cache = StatCache::load(&repo.lode_dir.join("statcache"));
    let read_at = crate::statcache::now_ns();
    let rows: Vec<StatusRow> = tracked
        .par_iter()
        .map(|path| {
            let abs = repo.workdir.join(path);
            let staged = staged.get(path).copied();
            let Ok(meta) = std::fs::metadata(&abs) else {
                return (path.clone(), "deleted", staged, None);
            };
            let stamp = Stamp::of(&meta);
            if let Some(p) = Pointer::read_file(&abs) {
                let state = if store.has_file(&p.id) {
                    "pointer"
                } else {
                    "missing-data"
                };
                return (path.clone(), state, Some(p), None);
            }
            let (id, fresh) = match cache.get(path, &stamp) {
                Some(id) => (Some(id), None),
                None => match store::identify_file(&abs) {
                    Ok(r) => (Some(r.file_id()), Some((stamp, r.file_id()))),
                    Err(_) => (None, None),
                },
            };
            let state = match (staged, id) {
                (Some(p), Some(id)) if p.id == id => "present",
                _ => "modified",
            };
            (path.clone(), state, staged, fresh)
        })
        .collect();
    let mut changed = false;
    for (path, _, _, fresh) in &rows {
        if let Some((stamp, id)) = fresh {
            changed |= cache.insert(path.clone(), *stamp, *id, read_at);
        }
    }
    if changed {
        let _ = cache.save();
    }
    // One write for many lines (100 000 files: one write(2) each was a
    // second of the no-op status).
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (path, state, ptr, _) in &rows {
        if args.json {
            writeln!(
                out,
                "{}",
                json!({"path": path, "state": state, "id": ptr.map(|p| p.id.to_string()), "size": ptr.map(|p| p.size)})
            )?;
        } else {
            let size = ptr.map(|p| human(p.size)).unwrap_or_default();
            writeln!(out, "{state:<12} {size:>10}  {path}")?;
        }
    }
    out.flush()?;
    if rows.is_empty() && !args.json {
        ctx.note("no tracked files; track some with `lode track PATTERN` or `lode add PATH`");
    }
    Ok(Outcome::Ok)
}

/// Path, state, staged pointer, and a freshly computed (stamp, id) to cache.
type StatusRow = (String, &'static str, Option<Pointer>, Option<(Stamp, Id)>);

/// List the tracked files of a commit: size, file id, whether the data is
/// in the local store, path.
#[derive(Args)]
pub struct LsArgs {
    /// The commit (any git revision).
    #[arg(default_value = "HEAD")]
    rev: String,
    /// Print JSON lines for scripts.
    #[arg(long)]
    json: bool,
}

pub fn ls(ctx: &Ctx, args: LsArgs) -> Result<Outcome> {
    let (repo, store) = ctx.open()?;
    for t in repo.tracked_at(&args.rev)? {
        let local = store.has_file(&t.pointer.id);
        if args.json {
            println!(
                "{}",
                json!({"path": t.path, "id": t.pointer.id.to_string(), "size": t.pointer.size, "local": local})
            );
        } else {
            println!(
                "{:>10}  {}  {}  {}",
                human(t.pointer.size),
                t.pointer.id.short(),
                if local { "local  " } else { "missing" },
                t.path
            );
        }
    }
    Ok(Outcome::Ok)
}

/// Describe a tracked file: id, size, chunks, stored bytes, and for
/// safetensors files each tensor with a digest of its chunks (equal
/// digests mean equal bytes).
///
/// TARGET is a path in the working tree (a file or its pointer), `REV:PATH`,
/// or a file id (`b3:…`).
#[derive(Args)]
pub struct ShowArgs {
    target: String,
    /// Print JSON for scripts.
    #[arg(long, conflicts_with = "textconv")]
    json: bool,
    /// git's diff textconv mode: TARGET is a file holding a blob; print a
    /// summary to diff (set up by `lode init` as `diff.lode.textconv`).
    #[arg(long)]
    textconv: bool,
}

pub fn show(ctx: &Ctx, args: ShowArgs) -> Result<Outcome> {
    if args.textconv {
        return textconv(ctx, &args.target);
    }
    let (repo, store) = ctx.open()?;
    let (id, size) = if let Ok(id) = args.target.parse::<Id>() {
        (id, None)
    } else if let Some((rev, path)) = args.target.split_once(':') {
        let t = repo
            .tracked_at(rev)?
            .into_iter()
            .find(|t| t.path == path)
            .with_context(|| format!("{path} is not a lode-tracked file in {rev}"))?;
        (t.pointer.id, Some(t.pointer.size))
    } else {
        let rel = repo_relative(&repo, &ctx.cwd, &PathBuf::from(&args.target))?;
        let abs = repo.workdir.join(&rel);
        match Pointer::read_file(&abs) {
            Some(p) => (p.id, Some(p.size)),
            None => {
                let r = store::identify_file(&abs)?;
                (r.file_id(), Some(r.size))
            }
        }
    };
    let recipe = store.recipe(&id).ok();
    let stored: Option<u64> = recipe.as_ref().map(|r| {
        r.chunks
            .iter()
            .filter_map(|(c, _)| store.lookup(c))
            .map(|e| e.stored_len as u64)
            .sum()
    });
    if args.json {
        let tensors = recipe.as_ref().map(|r| tensor_rows(r).into_iter().map(|(t, d)| json!({"name": t.name, "dtype": t.dtype, "shape": t.shape, "start": t.start, "end": t.end, "digest": d})).collect::<Vec<_>>());
        println!(
            "{}",
            json!({"id": id.to_string(), "size": recipe.as_ref().map(|r| r.size).or(size), "local": recipe.is_some(),
                   "chunks": recipe.as_ref().map(|r| r.chunks.len()), "stored": stored, "tensors": tensors})
        );
        return Ok(Outcome::Ok);
    }
    println!("id       {id}");
    match &recipe {
        Some(r) => {
            println!("size     {} ({} bytes)", human(r.size), r.size);
            println!(
                "chunks   {} (average {})",
                r.chunks.len(),
                human(r.size / r.chunks.len().max(1) as u64)
            );
            println!(
                "stored   {} of its chunks' bytes in packs",
                human(stored.unwrap_or(0))
            );
            if !r.tensors.is_empty() {
                println!("tensors  {}", r.tensors.len());
                for (t, d) in tensor_rows(r) {
                    println!(
                        "  {d}  {:<5} {:<18} {}",
                        t.dtype,
                        format!("{:?}", t.shape),
                        t.name
                    );
                }
            }
        }
        None => {
            if let Some(s) = size {
                println!("size     {} ({s} bytes)", human(s));
            }
            println!("data     not in the local store");
        }
    }
    Ok(Outcome::Ok)
}

/// Each tensor with a short digest of the chunks that hold it. Tensors
/// start at chunk boundaries (format-aware cuts), so a tensor's chunks are
/// exactly those inside its byte range.
fn tensor_rows(r: &Recipe) -> Vec<(crate::layout::Tensor, String)> {
    let offsets = r.offsets();
    r.tensors
        .iter()
        .map(|t| {
            let mut h = blake3::Hasher::new();
            for ((id, len), &at) in r.chunks.iter().zip(&offsets) {
                if at >= t.start && at + *len as u64 <= t.end.max(t.start) {
                    h.update(&id.0);
                }
            }
            (t.clone(), h.finalize().to_hex()[..12].to_string())
        })
        .collect()
}

fn textconv(ctx: &Ctx, file: &str) -> Result<Outcome> {
    // git hands over either the committed pointer or, for the working tree
    // and smudged blobs, the file itself (mapped, never read into memory):
    // both summarize the same way.
    let recipe = match Pointer::read_file(std::path::Path::new(file)) {
        Some(p) => {
            println!("lode file {}", p.id);
            println!("size {} ({} bytes)", human(p.size), p.size);
            match ctx
                .open()
                .ok()
                .and_then(|(_, store)| store.recipe(&p.id).ok())
            {
                Some(r) => r,
                None => {
                    println!("(data not in the local store)");
                    return Ok(Outcome::Ok);
                }
            }
        }
        None => {
            let r = store::identify_file(std::path::Path::new(file))
                .with_context(|| format!("reading {file}"))?;
            println!("lode file {}", r.file_id());
            println!("size {} ({} bytes)", human(r.size), r.size);
            r
        }
    };
    for (t, d) in tensor_rows(&recipe) {
        println!("tensor {} {} {:?} {d}", t.name, t.dtype, t.shape);
    }
    Ok(Outcome::Ok)
}

/// Print the lode file id of files (nothing is stored).
#[derive(Args)]
pub struct HashArgs {
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn hash(_ctx: &Ctx, args: HashArgs) -> Result<Outcome> {
    for f in &args.files {
        let r = store::identify_file(f).with_context(|| format!("hashing {}", f.display()))?;
        println!("{}  {}", r.file_id(), f.display());
    }
    Ok(Outcome::Ok)
}

/// Logical bytes (every file in the store, each version at its full size)
/// against the bytes of its packs on disk, and the dedup ratio.
#[derive(Args)]
pub struct DuArgs {
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

pub fn du(ctx: &Ctx, args: DuArgs) -> Result<Outcome> {
    let (_, store) = ctx.open()?;
    let entries = store.index_entries();
    let mut seen = HashSet::new();
    let (mut files, mut logical, mut chunk_raw, mut chunks) = (0u64, 0u64, 0u64, 0u64);
    for e in &entries {
        if !seen.insert((e.id, e.kind)) {
            continue;
        }
        match e.kind {
            Kind::Recipe => {
                files += 1;
                logical += store.recipe(&e.id).map(|r| r.size).unwrap_or(0);
            }
            Kind::Chunk => {
                chunks += 1;
                chunk_raw += e.raw_len as u64;
            }
        }
    }
    let mut on_disk = 0u64;
    for (_, path) in store.pack_files()? {
        on_disk += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    }
    let ratio = if on_disk > 0 {
        logical as f64 / on_disk as f64
    } else {
        0.0
    };
    if args.json {
        println!(
            "{}",
            json!({"files": files, "chunks": chunks, "logical": logical, "unique": chunk_raw, "stored": on_disk, "ratio": ratio})
        );
    } else {
        println!("files     {files}");
        println!(
            "logical   {:>10}  (every version of every file, at full size)",
            human(logical)
        );
        println!(
            "unique    {:>10}  (distinct chunks, {chunks} of them)",
            human(chunk_raw)
        );
        println!(
            "stored    {:>10}  (packs on disk, after compression)",
            human(on_disk)
        );
        println!("ratio     {ratio:>10.2}x");
    }
    Ok(Outcome::Ok)
}
