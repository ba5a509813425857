//! `lode add`: store files in parallel, then stage them with git.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use clap::Args;
use rayon::prelude::*;

use super::{Ctx, Outcome, human, repo_relative, setup};
use crate::statcache::{self, Stamp, StatCache};

/// Store files in lode and stage them for the next commit.
///
/// Files are chunked, deduplicated and compressed in parallel (across
/// files, and within each large file); directories are added recursively.
/// What no .gitattributes pattern routes to lode yet is tracked first: a
/// directory given here as `/dir/**`, a file by its exact name. Then `git
/// add` stages the pointers: the clean filter finds each file in the stat
/// cache and does not chunk or hash it again. Like `git add DIR`, adding a directory also stages git's own
/// files in it (`.gitignore`, …) as ordinary files.
///
/// If any file fails (vanished, changed while read, disk full), nothing is
/// staged; what was stored stays and is reused by the next attempt.
#[derive(Args)]
pub struct AddArgs {
    /// Files or directories to add.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

pub fn run(ctx: &Ctx, args: AddArgs) -> Result<Outcome> {
    let (repo, store) = ctx.open()?;
    let mut files: Vec<String> = Vec::new();
    // Directories given on the command line: an untracked file under one is
    // tracked by a pattern for the whole directory, not file by file.
    let mut dirs: Vec<String> = Vec::new();
    // What `git add` gets at the end: the arguments themselves, not every
    // file under them (git matches each index entry against every
    // pathspec: 20 000 file pathspecs took it seconds of string compares).
    let mut pathspecs: Vec<String> = Vec::new();
    for arg in &args.paths {
        let rel = repo_relative(&repo, &ctx.cwd, arg)?;
        pathspecs.push(if rel.is_empty() {
            ".".to_string()
        } else {
            rel.clone()
        });
        let abs = repo.workdir.join(&rel);
        let meta = std::fs::symlink_metadata(&abs)
            .with_context(|| format!("{} does not exist", arg.display()))?;
        if meta.is_dir() {
            let (under, control) = files_under(&repo, &rel)?;
            files.extend(under);
            if !control {
                dirs.push(rel);
            }
        } else if meta.is_file() {
            files.push(rel);
        } else {
            anyhow::bail!(
                "{} is not a regular file (symlinks and devices are left to git)",
                arg.display()
            );
        }
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        ctx.note("nothing to add");
        return Ok(Outcome::Ok);
    }

    // Route every path to lode.
    let filtered = repo.lode_filtered(&files)?;
    let mut untracked: Vec<String> = files
        .iter()
        .zip(&filtered)
        .filter(|(_, f)| !**f)
        .map(|(p, _)| {
            let dir = dirs
                .iter()
                .find(|d| d.is_empty() || p.starts_with(&format!("{d}/")));
            match dir {
                // Never a pattern for the whole tree: it would route
                // .gitattributes itself through the filter.
                Some(d) if d.is_empty() => setup::exact_pattern(p),
                Some(d) => format!("{}/**", setup::exact_pattern(d)),
                None => setup::exact_pattern(p),
            }
        })
        .collect();
    untracked.dedup();
    let attributes = repo.workdir.join(".gitattributes");
    let added_patterns = setup::add_patterns(&attributes, &untracked)?;
    for p in &added_patterns {
        ctx.note(format!("tracking {p}"));
    }

    // Ingest in parallel.
    // Files written a moment ago (a checkpoint just saved) would be racy in
    // the stat cache: let their timestamps age one tick first, so that the
    // `git add` below is answered from the cache.
    let newest = files
        .iter()
        .filter_map(|rel| std::fs::metadata(repo.workdir.join(rel)).ok())
        .map(|m| {
            let s = Stamp::of(&m);
            s.mtime_ns.max(s.ctime_ns)
        })
        .max()
        .unwrap_or(0);
    statcache::wait_out_racy(newest);
    let read_at = statcache::now_ns();
    let stamps: Vec<(String, PathBuf, Option<Stamp>)> = files
        .iter()
        .map(|rel| {
            let abs = repo.workdir.join(rel);
            let stamp = std::fs::metadata(&abs).ok().map(|m| Stamp::of(&m));
            (rel.clone(), abs, stamp)
        })
        .collect();
    let total: u64 = stamps.iter().filter_map(|s| s.2.map(|s| s.size)).sum();
    let bar = ctx.progress(total, "adding");
    let done = AtomicU64::new(0);
    let tick = |n: u64| {
        let d = done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(b) = &bar {
            b.set_position(d);
        }
    };
    let results: Vec<_> = stamps
        .par_iter()
        .map(|(rel, abs, stamp)| (rel, stamp, store.ingest_file(abs, &tick)))
        .collect();
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    store.flush().with_context(|| {
        let more = if files.len() > 1 {
            format!(" and {} more", files.len() - 1)
        } else {
            String::new()
        };
        format!("storing the data of {}{more}; nothing was staged", files[0])
    })?;

    let mut cache = StatCache::load(&repo.lode_dir.join("statcache"));
    let mut failures = Vec::new();
    let (mut size, mut new) = (0u64, 0u64);
    for (rel, stamp, result) in results {
        match (result, stamp) {
            (Ok(ing), Some(stamp)) => {
                size += ing.size;
                new += ing.new_bytes;
                cache.insert(rel.clone(), *stamp, ing.id, read_at);
            }
            (Ok(_), None) => failures.push(format!("{rel}: vanished while it was being added")),
            (Err(e), _) => failures.push(e.to_string()),
        }
    }
    cache.save().context("saving the stat cache")?;
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("lode: {f}");
        }
        anyhow::bail!(
            "{} of {} files could not be added; nothing was staged (what was stored is kept, run `lode add` again)",
            failures.len(),
            files.len()
        );
    }

    // Stage with git: the clean filter answers from the stat cache.
    let mut stage: Vec<&str> = pathspecs.iter().map(String::as_str).collect();
    if !added_patterns.is_empty() {
        stage.push(".gitattributes");
    }
    repo.stage(stage).context("staging with git add")?;
    let saved = if size > 0 {
        100.0 * (1.0 - new as f64 / size as f64)
    } else {
        0.0
    };
    ctx.note(format!(
        "added {} file{}, {} ({} new, {saved:.0}% deduplicated); commit with `git commit`",
        files.len(),
        if files.len() == 1 { "" } else { "s" },
        human(size),
        human(new)
    ));
    Ok(Outcome::Ok)
}

/// The files `git add` would take under directory `rel`: tracked ones and
/// untracked ones that are not ignored (git's own listing, so .gitignore
/// holds), regular files only, without git's control files (`.gitignore`,
/// `.gitattributes`, … at any depth) and the root `.lodeconfig`. Also says
/// whether the directory holds such control files (then it must not be
/// routed to lode as a whole).
fn files_under(repo: &crate::git::Repo, rel: &str) -> Result<(Vec<String>, bool)> {
    let spec = if rel.is_empty() { "." } else { rel };
    let listing = repo.git(&[
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
        "--",
        spec,
    ])?;
    let mut files = Vec::new();
    let mut control = false;
    for path in listing.split('\0').filter(|p| !p.is_empty()) {
        let name = path.rsplit('/').next().unwrap_or(path);
        if name.starts_with(".git") {
            control = true;
            continue;
        }
        if path == ".lodeconfig" {
            continue;
        }
        let is_file = std::fs::symlink_metadata(repo.workdir.join(path)).is_ok_and(|m| m.is_file());
        if is_file {
            files.push(path.to_string());
        }
    }
    Ok((files, control))
}
