//! git's long-running filter protocol (`filter.lode.process`): clean turns
//! a file into its pointer, smudge turns a pointer back into the file.
//!
//! One process serves a whole `git add` or `git checkout`, so the store and
//! its index are opened once, not once per file. The protocol itself is
//! gix-filter's server (`gix::filter::plumbing::driver::process::Server`).
//!
//! Clean: a file whose stat stamp matches the stat cache (it was just
//! ingested by `lode add`) is answered from the cache and its streamed
//! bytes are only drained; anything else is chunked from the stream. A
//! valid pointer is passed through unchanged (a pointer-only checkout stays
//! clean in `git status`); text that starts like a pointer but is not a
//! valid one is refused, naming the path. The store is flushed before the
//! pointer is answered: git may record the pointer in its index the moment
//! it has it, so the data must already be durable (invariant I2).
//!
//! Smudge: the pointer's file is streamed out, every chunk verified first.
//! When the data is not in the local store (or `LODE_SKIP_SMUDGE=1`), the
//! pointer itself is written and a warning says how to get the data: a
//! checkout never fails half-way for want of data.

use std::io::{Read, Write};
use std::path::Path;

use gix::filter::plumbing::driver::process::{Server, Status};

use crate::id::Id;
use crate::pointer::{self, Pointer};
use crate::statcache::{Stamp, StatCache};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("filter protocol: {0}")]
    Protocol(String),
    #[error("filter protocol i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Options {
    /// Leave pointers in the working tree on smudge.
    pub skip_smudge: bool,
}

/// Serve git on stdin/stdout until it closes the pipe. `warn` receives a
/// message for each file that could not be served (it goes to stderr).
pub fn serve(
    workdir: &Path,
    store: &Store,
    cache: &mut StatCache,
    opts: &Options,
    warn: &mut dyn FnMut(String),
) -> Result<(), FilterError> {
    let mut server = Server::handshake(
        std::io::stdin(),
        std::io::stdout(),
        "git-filter",
        &mut |versions| versions.contains(&2).then_some(2),
        &["clean", "smudge"],
    )
    .map_err(|e| FilterError::Protocol(e.to_string()))?;
    while let Some(mut req) = server
        .next_request()
        .map_err(|e| FilterError::Protocol(e.to_string()))?
    {
        let path = req
            .meta
            .iter()
            .find(|(k, _)| k == "pathname")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        let command = req.command.clone();
        // Read the whole request body first: the protocol needs it consumed
        // before any answer.
        let result = match command.as_str() {
            "clean" => clean(workdir, store, cache, &path, &mut req.as_read()),
            "smudge" => {
                let mut input = Vec::new();
                req.as_read()
                    .take(pointer::MAX_LEN as u64 + 1)
                    .read_to_end(&mut input)?;
                let rest_is_empty = input.len() <= pointer::MAX_LEN;
                if !rest_is_empty {
                    // Not a pointer: a file committed before it was tracked.
                    // Pass it through unchanged.
                    let mut all = input;
                    req.as_read().read_to_end(&mut all)?;
                    Ok(Answer::Bytes(all))
                } else {
                    smudge(store, &path, input, opts, warn)
                }
            }
            other => Err(format!("unsupported filter command {other:?}")),
        };
        match result {
            Ok(Answer::Bytes(bytes)) => {
                req.write_status(Status::success())?;
                req.as_write().write_all(&bytes)?;
                req.write_status(Status::Previous)?;
            }
            Ok(Answer::File(id)) => {
                req.write_status(Status::success())?;
                let outcome = {
                    let mut out = req.as_write();
                    store.write_file(&id, &mut out)
                };
                match outcome {
                    Ok(_) => req.write_status(Status::Previous)?,
                    Err(e) => {
                        warn(format!(
                            "{path}: {e}; the file in the working tree is incomplete, run `lode fsck --read-data`"
                        ));
                        req.write_status(Status::Named("error".into()))?;
                    }
                }
            }
            Err(message) => {
                warn(format!("{path}: {message}"));
                req.write_status(Status::Named("error".into()))?;
            }
        }
    }
    store
        .flush()
        .map_err(|e| FilterError::Protocol(e.to_string()))?;
    cache.save()?;
    Ok(())
}

enum Answer {
    Bytes(Vec<u8>),
    File(Id),
}

fn clean(
    workdir: &Path,
    store: &Store,
    cache: &mut StatCache,
    path: &str,
    input: &mut dyn Read,
) -> Result<Answer, String> {
    let stamp = std::fs::symlink_metadata(workdir.join(path))
        .ok()
        .map(|m| Stamp::of(&m));
    let mut head = Vec::new();
    input
        .take(pointer::MAX_LEN as u64 + 1)
        .read_to_end(&mut head)
        .map_err(|e| format!("reading from git: {e}"))?;
    if Pointer::looks_like(&head) && head.len() <= pointer::MAX_LEN {
        return match Pointer::parse(&head) {
            Ok(p) => match store.recipe(&p.id) {
                Ok(r) if r.size != p.size => Err(format!(
                    "the pointer says {} bytes but its file has {}: it was edited by hand; restore it with `git checkout -- {path}`",
                    p.size, r.size
                )),
                _ => Ok(Answer::Bytes(head)),
            },
            Err(e) => Err(format!(
                "{e}: the file looks like a lode pointer that was edited by hand; restore it with `git checkout -- {path}` or replace it with the real data"
            )),
        };
    }
    if let Some(stamp) = stamp {
        if let Some(id) = cache.get(path, &stamp).filter(|id| store.has_file(id)) {
            let rest = std::io::copy(input, &mut std::io::sink())
                .map_err(|e| format!("reading from git: {e}"))?;
            if head.len() as u64 + rest == stamp.size {
                return Ok(Answer::Bytes(
                    Pointer {
                        id,
                        size: stamp.size,
                    }
                    .encode()
                    .into_bytes(),
                ));
            }
            return Err(
                "the content git sent differs from the file on disk; run `lode add` on it".into(),
            );
        }
    }
    let ingested = store
        .ingest_stream(std::io::Cursor::new(head).chain(input))
        .map_err(|e| e.to_string())?;
    store.flush().map_err(|e| e.to_string())?;
    if let Some(stamp) = stamp.filter(|s| s.size == ingested.size) {
        cache.insert(path.to_string(), stamp, ingested.id);
    }
    Ok(Answer::Bytes(
        Pointer {
            id: ingested.id,
            size: ingested.size,
        }
        .encode()
        .into_bytes(),
    ))
}

fn smudge(
    store: &Store,
    path: &str,
    input: Vec<u8>,
    opts: &Options,
    warn: &mut dyn FnMut(String),
) -> Result<Answer, String> {
    let pointer = match Pointer::parse(&input) {
        Ok(p) => p,
        Err(pointer::PointerError::NotAPointer) => return Ok(Answer::Bytes(input)),
        Err(e) => return Err(format!("{e}; the committed pointer is damaged")),
    };
    if opts.skip_smudge {
        return Ok(Answer::Bytes(input));
    }
    if !store.has_file(&pointer.id) {
        warn(format!(
            "data for {path} ({}) is not in the local store; left the pointer in its place (fetch the data, then run `lode checkout`)",
            pointer.id
        ));
        return Ok(Answer::Bytes(input));
    }
    // Check the recipe up front, so a damaged one fails before any output.
    let recipe = store.recipe(&pointer.id).map_err(|e| e.to_string())?;
    if recipe.size != pointer.size {
        return Err(format!(
            "pointer says {} bytes but the stored file has {}",
            pointer.size, recipe.size
        ));
    }
    Ok(Answer::File(pointer.id))
}
