//! `lode filter-process`: run by git, never by people.

use anyhow::Result;
use clap::Args;

use super::{Ctx, Outcome};
use crate::filter::{self, Options};
use crate::statcache::StatCache;

/// git's long-running clean/smudge filter. git starts it (config
/// `filter.lode.process`, set by `lode init` and `lode install`) and talks
/// to it over stdin/stdout. On checkout, data not in the local store is
/// fetched from the remote; LODE_SKIP_SMUDGE=1 leaves pointers in the
/// working tree instead (for `lode checkout` later, or `lode mount`).
#[derive(Args)]
pub struct FilterArgs {}

pub fn run(ctx: &Ctx, _args: FilterArgs) -> Result<Outcome> {
    // A fresh clone (after `lode install`) has no store yet: make it.
    let repo = ctx.repo()?;
    let store = crate::store::Store::open(&repo.lode_dir)?;
    let mut cache = StatCache::load(&repo.lode_dir.join("statcache"));
    let fetcher = super::transfer::SmudgeFetcher::new(&repo, &store);
    let opts = Options {
        skip_smudge: super::skip_smudge(),
        fetch: Some(Box::new(|id, path| fetcher.fetch(id, path))),
    };
    filter::serve(&repo.workdir, &store, &mut cache, &opts, &mut |msg| {
        eprintln!("lode: {msg}")
    })?;
    Ok(Outcome::Ok)
}
