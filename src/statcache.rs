//! The stat cache: (path, size, mtime, ctime, inode) → file id, so an
//! unchanged file is never hashed twice.
//!
//! `lode add` ingests files in parallel and records them here; the `git
//! add` that follows runs the clean filter, which finds each file here and
//! answers with its pointer without chunking it again. The same test git
//! itself uses for its index (size, both times to the nanosecond, inode)
//! decides whether an entry still holds, and like git it does not trust a
//! stamp taken within a timestamp tick of the file's last change. `lode
//! add`, `lode checkout` and the clean filter record ids whose data is
//! durable in the store; `lode status` also records ids it only hashed
//! (the clean filter answers from the cache only when the data is stored).
//!
//! Stored as JSON (`{"version":1,"entries":{path:[{size,mtime_ns,ctime_ns,ino},"b3:…"]}}`),
//! replaced atomically under a file lock, merged with what other processes
//! wrote meanwhile.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable;
use crate::id::Id;

/// File timestamps tick coarsely (ext4 follows the kernel's jiffy: 1 to
/// 10 ms); a stamp must be older than this when read to be trusted.
pub const RACY_NS: i128 = 20_000_000;

/// Wall-clock time in the units of [`Stamp`].
pub fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// Sleep until every stamp up to `newest_ns` is older than [`RACY_NS`], so
/// files just written can be cached (at most 20 ms, once per command).
pub fn wait_out_racy(newest_ns: i128) {
    let wait = newest_ns + RACY_NS + 1 - now_ns();
    if wait > 0 {
        std::thread::sleep(std::time::Duration::from_nanos(wait as u64));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            ino: meta.ino(),
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
struct OnDisk {
    version: u32,
    entries: HashMap<String, (Stamp, String)>,
}

pub struct StatCache {
    path: PathBuf,
    entries: HashMap<String, (Stamp, Id)>,
    updates: HashMap<String, (Stamp, Id)>,
}

impl StatCache {
    /// Load the cache; a missing or unreadable one is empty (it is only a
    /// cache: the worst case is hashing again).
    pub fn load(path: &Path) -> StatCache {
        StatCache {
            path: path.to_path_buf(),
            entries: read(path),
            updates: HashMap::new(),
        }
    }

    /// The file id recorded for `key` if `stamp` still matches.
    pub fn get(&self, key: &str, stamp: &Stamp) -> Option<Id> {
        self.updates
            .get(key)
            .or_else(|| self.entries.get(key))
            .filter(|(s, _)| s == stamp)
            .map(|(_, id)| *id)
    }

    /// Record that `key` with `stamp` holds file `id`, as observed by a read
    /// that began at `read_at` (see [`now_ns`]). A file modified less than
    /// [`RACY_NS`] before that read is not recorded: a write in the same
    /// timestamp tick could change it without changing its stamp ("racy
    /// git"). Returns whether it was recorded.
    pub fn insert(&mut self, key: String, stamp: Stamp, id: Id, read_at: i128) -> bool {
        if stamp.mtime_ns.max(stamp.ctime_ns) + RACY_NS > read_at {
            return false;
        }
        self.updates.insert(key, (stamp, id));
        true
    }

    /// Write the updates, merged into what is on disk now.
    pub fn save(&mut self) -> std::io::Result<()> {
        if self.updates.is_empty() {
            return Ok(());
        }
        let lock_path = self.path.with_extension("lock");
        let lock = File::create(&lock_path)?;
        lock.lock()?;
        let mut merged = read(&self.path);
        merged.extend(self.updates.drain());
        let disk = OnDisk {
            version: 1,
            entries: merged
                .iter()
                .map(|(k, (s, id))| (k.clone(), (*s, id.to_string())))
                .collect(),
        };
        let bytes = serde_json::to_vec(&disk).map_err(std::io::Error::other)?;
        let result = durable::write(&self.path, &bytes);
        self.entries = merged;
        let _ = lock.unlock();
        result
    }
}

fn read(path: &Path) -> HashMap<String, (Stamp, Id)> {
    let Ok(bytes) = std::fs::read(path) else {
        return HashMap::new();
    };
    match serde_json::from_slice::<OnDisk>(&bytes) {
        Ok(d) if d.version == 1 => d
            .entries
            .into_iter()
            .filter_map(|(k, (s, id))| Some((k, (s, id.parse().ok()?))))
            .collect(),
        _ => HashMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_touched_file_misses() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"one").unwrap();
        let stamp = Stamp::of(&std::fs::metadata(&f).unwrap());
        let mut c = StatCache::load(&dir.path().join("statcache"));
        assert!(
            !c.insert("f".into(), stamp, Id::of_chunk(b"one"), now_ns()),
            "a stamp this fresh is racy"
        );
        wait_out_racy(stamp.mtime_ns.max(stamp.ctime_ns));
        assert!(c.insert("f".into(), stamp, Id::of_chunk(b"one"), now_ns()));
        c.save().unwrap();
        let c = StatCache::load(&dir.path().join("statcache"));
        assert_eq!(c.get("f", &stamp), Some(Id::of_chunk(b"one")));
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&f, b"two").unwrap();
        let stamp2 = Stamp::of(&std::fs::metadata(&f).unwrap());
        assert_eq!(c.get("f", &stamp2), None);
    }
}
