//! The stat cache: (path, size, mtime, ctime, inode) → file id, so an
//! unchanged file is never hashed twice.
//!
//! `lode add` ingests files in parallel and records them here; the `git
//! add` that follows runs the clean filter, which finds each file here and
//! answers with its pointer without chunking it again. The same test git
//! itself uses for its index (size, both times to the nanosecond, inode)
//! decides whether an entry still holds. Entries are written only after the
//! data they name is durable in the store.
//!
//! Stored as JSON (`{"version":1,"entries":{path:[size,mtime_ns,ctime_ns,ino,id]}}`),
//! replaced atomically under a file lock, merged with what other processes
//! wrote meanwhile.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable;
use crate::id::Id;

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

    pub fn insert(&mut self, key: String, stamp: Stamp, id: Id) {
        self.updates.insert(key, (stamp, id));
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
        c.insert("f".into(), stamp, Id::of_chunk(b"one"));
        c.save().unwrap();
        let c = StatCache::load(&dir.path().join("statcache"));
        assert_eq!(c.get("f", &stamp), Some(Id::of_chunk(b"one")));
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&f, b"two").unwrap();
        let stamp2 = Stamp::of(&std::fs::metadata(&f).unwrap());
        assert_eq!(c.get("f", &stamp2), None);
    }
}
