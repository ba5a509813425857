//! `lode fsck`: verify the store and say what any damage affects.

use anyhow::Result;
use clap::Args;

use super::{Ctx, Outcome, human};
use crate::fsck::{self, Options};

/// Verify the local store.
///
/// Always: every pack footer, the index against the packs, every recipe
/// against its id, and that each file committed anywhere in history has
/// its data here. With --read-data: every byte of every pack is read,
/// decompressed and hashed. Each damaged or missing object is listed with
/// the files and (commit, path) places it affects.
///
/// Exit status: 0 clean, 1 problems found, 2 fsck itself failed.
#[derive(Args)]
pub struct FsckArgs {
    /// Read and verify every stored byte (slow: reads the whole store).
    #[arg(long)]
    read_data: bool,
    /// Rebuild the index from the pack footers first (the index is derived
    /// data; this repairs a damaged or incomplete one).
    #[arg(long)]
    rebuild_index: bool,
}

pub fn run(ctx: &Ctx, args: FsckArgs) -> Result<Outcome> {
    let (repo, store) = ctx.open()?;
    if args.rebuild_index {
        let (n, notes) = store.rebuild_index()?;
        ctx.note(format!("rebuilt the index from {n} pack(s)"));
        for note in notes {
            eprintln!("lode: {note}");
        }
    }
    let history = repo.where_in_history(3)?;
    let report = fsck::check(
        &store,
        &history,
        &Options {
            read_data: args.read_data,
            remote_set: crate::config::remote_url(&repo)?.is_some(),
        },
    );
    for p in &report.problems {
        println!("damaged {} {}: {}", p.kind, p.object, p.what);
        for f in &p.files {
            println!("  affects file {f}");
        }
        for (commit, path) in &p.places {
            println!("  committed at {commit}:{path}");
        }
    }
    let verified = if args.read_data {
        format!(", {} read and verified", human(report.bytes_verified))
    } else {
        String::new()
    };
    ctx.note(format!(
        "checked {} pack(s), {} chunk(s), {} file(s){verified}: {}",
        report.packs,
        report.chunks,
        report.files,
        if report.problems.is_empty() {
            "no problems".to_string()
        } else {
            format!("{} problem(s)", report.problems.len())
        }
    ));
    if report.elsewhere > 0 {
        ctx.note(format!(
            "{} committed file(s) have no data here; `lode fetch` gets them from the remote",
            report.elsewhere
        ));
    }
    Ok(if report.problems.is_empty() {
        Outcome::Ok
    } else {
        Outcome::No
    })
}
