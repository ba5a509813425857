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
//! Data the local store lacks is fetched through [`Options::fetch`] (the
//! remote). When that fails too (or with `LODE_SKIP_SMUDGE=1`), the pointer
//! itself is written and a warning says how to get the data: a checkout
//! never fails half-way for want of data.

use std::io::{Read, Write};
use std::path::Path;

use gix::filter::plumbing::driver::process::{Server, Status};

use crate::id::Id;
use crate::pointer::{self, Pointer};
use crate::statcache::{self, Stamp, StatCache};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("filter protocol: {0}")]
    Protocol(String),
    #[error("filter protocol i/o: {0}")]
    Io(#[from] std::io::Error),
}

const PIPE_SIZE: usize = 1 << 20;

/// Fetch a file's data from elsewhere (the remote) into the store.
pub type Fetch<'a> = Box<dyn Fn(Id, &str) -> Result<(), String> + 'a>;

pub struct Options<'a> {
    /// Leave pointers in the working tree on smudge.
    pub skip_smudge: bool,
    /// Where smudge gets data the local store lacks.
    pub fetch: Option<Fetch<'a>>,
}

/// Serve git on stdin/stdout until it closes the pipe. `warn` receives a
/// message for each file that could not be served (it goes to stderr).
pub fn serve(
    workdir: &Path,
    store: &Store,
    cache: &mut StatCache,
    opts: &Options<'_>,
    warn: &mut dyn FnMut(String),
) -> Result<(), FilterError> {
    // git sends a file as 64 KiB packets; with the default 64 KiB pipe every
    // packet is a context switch. A 1 MiB pipe lets git run ahead (see
    // docs/BENCHMARKS.md for the effect on `git add` answered from the stat
    // cache). Best effort: not a pipe, or capped by the system, and the
    // default stays.
    let _ = rustix::pipe::fcntl_setpipe_size(std::io::stdin(), PIPE_SIZE);
    let _ = rustix::pipe::fcntl_setpipe_size(std::io::stdout(), PIPE_SIZE);
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
            "clean" => {
                let mut input = UntilEnd {
                    inner: req.as_read(),
                    ended: false,
                };
                let result = clean(workdir, store, cache, &path, &mut input);
                if result.is_err() && !input.ended {
                    // git's content must be consumed before any answer, or
                    // the next request would start inside this one. (Once
                    // it has ended, reading on would block on the next.)
                    std::io::copy(&mut input, &mut std::io::sink())?;
                }
                result
            }
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
                            "{path}: {e}; git discards the partial file, run `lode fsck --read-data`"
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

/// A request's content, remembering whether its end was reached.
struct UntilEnd<R> {
    inner: R,
    ended: bool,
}

impl<R: Read> Read for UntilEnd<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ended {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        self.ended = n == 0 && !buf.is_empty();
        Ok(n)
    }
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
    let read_at = statcache::now_ns();
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
    if let Some(stamp) = stamp
        && let Some(id) = cache.get(path, &stamp).filter(|id| store.has_file(id))
    {
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
    let on_disk = stamp
        .filter(|s| s.size >= PARALLEL_FROM)
        .and_then(|_| map_file(&workdir.join(path)));
    let ingested = match on_disk {
        Some(map) => {
            let (ingested, same_as_disk) = ingest_alongside(store, &map, head, input)?;
            // Both ways read the map after comparing parts of it: if the
            // file changed meanwhile, what was stored may not be what git
            // sent. Refuse rather than guess.
            let after = std::fs::symlink_metadata(workdir.join(path))
                .ok()
                .map(|m| Stamp::of(&m));
            if after != stamp {
                return Err("the file changed while git was adding it; run `git add` again".into());
            }
            if same_as_disk {
                // Stored bytes = git's bytes = the file on disk with this
                // stamp: the next `git add` or `git status` may trust it.
                let stamp = stamp.expect("mapped files have a stamp");
                cache.insert(path.to_string(), stamp, ingested.id, read_at);
            }
            ingested
        }
        // A small file, or not on disk: git's stream is all there is, and
        // nothing shows that it equals the file on disk, so nothing is
        // cached.
        None => store
            .ingest_stream(std::io::Cursor::new(head).chain(input))
            .map_err(|e| e.to_string())?,
    };
    store.flush().map_err(|e| e.to_string())?;
    Ok(Answer::Bytes(
        Pointer {
            id: ingested.id,
            size: ingested.size,
        }
        .encode()
        .into_bytes(),
    ))
}

/// Files at least this large are chunked from the file on disk in parallel
/// (below it, streaming costs less than a thread and a map).
const PARALLEL_FROM: u64 = 4 << 20;

fn map_file(path: &Path) -> Option<memmap2::Mmap> {
    let file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    crate::store::map_readonly(&file, len).ok().flatten()
}

/// Clean a large file the fast way: git streams the file one packet at a
/// time, which only one core can chunk, but the same bytes are on disk. So
/// the file on disk is chunked in parallel while this thread drains git's
/// stream and compares it with the map. Identical (the usual case): the
/// parallel result stands. Different (the file changed meanwhile, or git
/// is cleaning bytes that are not the working tree's): the stream is
/// ingested instead, from the identical prefix, the differing bytes read so
/// far and the rest of the stream. Whatever git sends is what gets stored;
/// the caller re-checks the file's stamp, since both ways read the map
/// after comparing it. Returns whether git's bytes equal the file's.
fn ingest_alongside(
    store: &Store,
    map: &[u8],
    head: Vec<u8>,
    input: &mut dyn Read,
) -> Result<(crate::store::Ingested, bool), String> {
    let (parallel, mismatch) = std::thread::scope(|s| {
        let worker = s.spawn(|| store.ingest_bytes(map));
        let mismatch = compare_stream(&head, input, map);
        (worker.join(), mismatch)
    });
    let parallel = parallel.map_err(|_| "ingest thread panicked".to_string())?;
    match mismatch.map_err(|e| format!("reading from git: {e}"))? {
        None => Ok((parallel.map_err(|e| e.to_string())?, true)),
        Some((prefix, pending)) => store
            .ingest_stream(
                std::io::Cursor::new(&map[..prefix])
                    .chain(std::io::Cursor::new(pending))
                    .chain(input),
            )
            .map(|ingested| (ingested, false))
            .map_err(|e| e.to_string()),
    }
}

/// Read git's stream (after `head`) and compare it with `map`. `None` if
/// identical; else the length of the identical prefix and the bytes read
/// past it (the rest of the stream is still unread).
fn compare_stream(
    head: &[u8],
    input: &mut dyn Read,
    map: &[u8],
) -> std::io::Result<Option<(usize, Vec<u8>)>> {
    let mut buf = head.to_vec();
    buf.resize(buf.len().max(1 << 20), 0);
    let mut n = head.len();
    let mut pos = 0usize;
    loop {
        if n == 0 {
            n = match input.read(&mut buf) {
                Ok(0) => {
                    return Ok(if pos == map.len() {
                        None
                    } else {
                        Some((pos, Vec::new()))
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
        }
        let want = &map[pos.min(map.len())..(pos + n).min(map.len())];
        if want != &buf[..n] {
            let d = want
                .iter()
                .zip(&buf[..n])
                .position(|(a, b)| a != b)
                .unwrap_or(want.len());
            return Ok(Some((pos + d, buf[d..n].to_vec())));
        }
        pos += n;
        n = 0;
    }
}

fn smudge(
    store: &Store,
    path: &str,
    input: Vec<u8>,
    opts: &Options<'_>,
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
        let fetched = match &opts.fetch {
            Some(fetch) => fetch(pointer.id, path),
            None => Err("no remote to fetch from".into()),
        };
        if let Err(why) = fetched {
            warn(format!(
                "data for {path} ({}) is not in the local store and could not be fetched ({why}); left the pointer in its place (run `lode checkout` when the remote is reachable)",
                pointer.id
            ));
            return Ok(Answer::Bytes(input));
        }
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
