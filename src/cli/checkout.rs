//! `lode checkout`: materialize pointer files in the working tree.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use rayon::prelude::*;

use super::{Ctx, Outcome, human, repo_relative};
use crate::git::{Repo, Tracked};
use crate::pointer::Pointer;
use crate::statcache::{self, Stamp, StatCache};
use crate::store::Store;

/// Replace pointer files in the working tree with their data, in parallel.
///
/// Works on the tracked files whose working copy is still a pointer (after
/// a clone with LODE_SKIP_SMUDGE=1, or a checkout made while the data was
/// not at hand). Data the local store lacks is fetched from the remote
/// first, when one is set. Files are written to a temporary name and
/// renamed into place, every chunk verified first: an interrupted checkout
/// leaves either the pointer or the whole file.
#[derive(Args)]
pub struct CheckoutArgs {
    /// Limit to these files or directories (default: the whole tree).
    paths: Vec<PathBuf>,
}

/// A working-tree file that is a lode pointer.
pub struct PointerFile {
    pub path: String,
    pub pointer: Pointer,
}

/// Tracked files in git's index whose working copy is a valid pointer,
/// limited to `prefixes` (relative paths; empty = all).
pub fn pointer_files(repo: &Repo, prefixes: &[String]) -> Result<Vec<PointerFile>> {
    let mut files = repo.index_files()?;
    if !prefixes.is_empty() {
        files.retain(|f| {
            prefixes
                .iter()
                .any(|p| p.is_empty() || f == p || f.starts_with(&format!("{p}/")))
        });
    }
    let filtered = repo.lode_filtered(&files)?;
    Ok(files
        .into_iter()
        .zip(filtered)
        .filter(|(_, f)| *f)
        .filter_map(|(path, _)| {
            let pointer = Pointer::read_file(&repo.workdir.join(&path))?;
            Some(PointerFile { path, pointer })
        })
        .collect())
}

pub fn run(ctx: &Ctx, args: CheckoutArgs) -> Result<Outcome> {
    let (repo, store) = ctx.open()?;
    let prefixes = args
        .paths
        .iter()
        .map(|p| repo_relative(&repo, &ctx.cwd, p))
        .collect::<Result<Vec<_>>>()?;
    materialize(ctx, &repo, &store, &prefixes)
}

/// Write the data of the pointer files under `prefixes` (empty: all),
/// fetching from the remote what the local store lacks when a remote is
/// set.
pub fn materialize(ctx: &Ctx, repo: &Repo, store: &Store, prefixes: &[String]) -> Result<Outcome> {
    let todo = pointer_files(repo, prefixes)?;
    if todo.is_empty() {
        ctx.note("every tracked file is already checked out");
        return Ok(Outcome::Ok);
    }
    let lacking: Vec<Tracked> = todo
        .iter()
        .filter(|f| !store.has_file(&f.pointer.id))
        .map(|f| Tracked {
            path: f.path.clone(),
            pointer: f.pointer,
        })
        .collect();
    if !lacking.is_empty() && crate::config::remote_url(repo)?.is_some() {
        super::transfer::fetch_files(ctx, repo, store, &lacking)?;
    }
    let (present, missing): (Vec<_>, Vec<_>) = todo
        .into_iter()
        .partition(|f| store.has_file(&f.pointer.id));
    let total = present.iter().map(|f| f.pointer.size).sum();
    let bar = ctx.progress(total, "checking out");
    let workdir = &repo.workdir;
    let results: Vec<(&PointerFile, Result<u64>)> = present
        .par_iter()
        .map(|f| {
            let dest = workdir.join(&f.path);
            let r = safe_parent(workdir, &f.path).and_then(|_| {
                store
                    .materialize(&f.pointer.id, &dest)
                    .with_context(|| format!("checking out {}", f.path))
            });
            if let Some(b) = &bar {
                b.inc(f.pointer.size);
            }
            (f, r)
        })
        .collect();
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let mut cache = StatCache::load(&repo.lode_dir.join("statcache"));
    // The files were created here a moment ago, under temporary names that
    // no other program knows: let their timestamps age one tick, then
    // trust them (the residual race is a writer that finds a brand-new file
    // within one tick of its rename).
    statcache::wait_out_racy(statcache::now_ns());
    let read_at = statcache::now_ns();
    let mut failed = 0;
    let mut bytes = 0;
    for (f, r) in &results {
        match r {
            Ok(n) => {
                bytes += n;
                if let Ok(meta) = std::fs::metadata(repo.workdir.join(&f.path)) {
                    cache.insert(f.path.clone(), Stamp::of(&meta), f.pointer.id, read_at);
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("lode: error: {e:#}");
            }
        }
    }
    cache.save().context("saving the stat cache")?;
    // git recorded the pointer's size in its index, so it would call the
    // files modified on size alone; staging them again records the new stat
    // data (the clean filter answers from the stat cache and yields the
    // same pointer blob, so nothing is hashed and the index content does
    // not change).
    // Only files whose staged pointer is the one materialized: staging a
    // file whose index entry says something else would change what the
    // user staged.
    let staged = repo.staged_pointers()?;
    let refresh = results
        .iter()
        .filter(|(f, r)| r.is_ok() && staged.get(&f.path) == Some(&f.pointer))
        .map(|(f, _)| f.path.as_str());
    repo.restage(refresh).context("refreshing git's index")?;
    for f in &missing {
        eprintln!(
            "lode: {}: data {} is not in the local store (and no remote is set: `lode remote set URL`)",
            f.path, f.pointer.id
        );
    }
    ctx.note(format!(
        "checked out {} file{}, {}",
        results.len() - failed,
        if results.len() - failed == 1 { "" } else { "s" },
        human(bytes)
    ));
    if failed > 0 || !missing.is_empty() {
        anyhow::bail!(
            "{} file(s) could not be checked out and still hold their pointer",
            failed + missing.len()
        );
    }
    Ok(Outcome::Ok)
}

/// Refuse to write through a symlinked directory out of the working tree
/// (invariant I7): the file's real parent must be inside it.
fn safe_parent(workdir: &std::path::Path, rel: &str) -> Result<()> {
    let abs = workdir.join(rel);
    let parent = abs.parent().context("path has no parent")?;
    let real =
        std::fs::canonicalize(parent).with_context(|| format!("resolving {}", parent.display()))?;
    if !real.starts_with(workdir) {
        anyhow::bail!(
            "{rel}: its directory leads outside the working tree (a symlink?); refusing to write there"
        );
    }
    Ok(())
}
