//! lode-fuse: a read-only filesystem over an immutable snapshot.
//!
//! This crate knows nothing of git, packs or object stores. It serves any
//! [`Snapshot`] (lookup by path, directory listing, attributes, positioned
//! reads over a tree that never changes) and turns it into what a FUSE
//! kernel driver asks for: inode numbers, lookups by (parent inode, name),
//! directory listings with offsets, reads at offsets, and errno values. The
//! logic is plain Rust, tested without a kernel against a reference model;
//! one thin adapter ([`fuse`], the only file that touches `fuser`) replies
//! to the kernel. `lode` implements the trait in `src/mount.rs` from git
//! trees and its stores.
//!
//! Inodes: the root is 1; every other path gets the next number the first
//! time it is looked up, and keeps it for the life of the mount (the tree is
//! immutable, so there is nothing to invalidate). Paths are `/`-separated
//! and relative to the root ("" is the root).

use std::collections::HashMap;
use std::sync::RwLock;

pub mod fuse;

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// Attributes of a node, as the snapshot knows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub kind: Kind,
    pub size: u64,
    pub executable: bool,
}

/// Why a snapshot operation failed; each maps to one errno.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    /// Data could not be read or failed verification: never wrong bytes.
    #[error("i/o error: {0}")]
    Io(String),
}

impl Error {
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound => 2,       // ENOENT
            Error::NotADirectory => 20, // ENOTDIR
            Error::IsADirectory => 21,  // EISDIR
            Error::Io(_) => 5,          // EIO
        }
    }
}

/// An immutable tree the filesystem serves.
pub trait Snapshot: Send + Sync {
    /// Attributes of the node at `path` ("" is the root directory).
    fn getattr(&self, path: &str) -> Result<Attr, Error>;
    /// The children of the directory at `path`, sorted by name.
    fn readdir(&self, path: &str) -> Result<Vec<(String, Attr)>, Error>;
    /// Read up to `buf.len()` bytes of the file at `path` from `offset`;
    /// returns the count (0 at or past the end).
    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, Error>;
}

pub const ROOT: u64 = 1;

/// The filesystem logic: inodes over a snapshot.
pub struct Fs<S> {
    snapshot: S,
    inodes: RwLock<Inodes>,
}

struct Inodes {
    paths: Vec<String>, // inode n is paths[n - 1]
    by_path: HashMap<String, u64>,
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

impl<S: Snapshot> Fs<S> {
    pub fn new(snapshot: S) -> Self {
        let inodes = Inodes {
            paths: vec![String::new()],
            by_path: HashMap::from([(String::new(), ROOT)]),
        };
        Fs {
            snapshot,
            inodes: RwLock::new(inodes),
        }
    }

    pub fn snapshot(&self) -> &S {
        &self.snapshot
    }

    fn path_of(&self, ino: u64) -> Result<String, Error> {
        let inodes = self.inodes.read().expect("inode table poisoned");
        ino.checked_sub(1)
            .and_then(|i| inodes.paths.get(i as usize))
            .cloned()
            .ok_or(Error::NotFound)
    }

    fn inode_for(&self, path: &str) -> u64 {
        if let Some(&ino) = self
            .inodes
            .read()
            .expect("inode table poisoned")
            .by_path
            .get(path)
        {
            return ino;
        }
        let mut inodes = self.inodes.write().expect("inode table poisoned");
        if let Some(&ino) = inodes.by_path.get(path) {
            return ino;
        }
        inodes.paths.push(path.to_string());
        let ino = inodes.paths.len() as u64;
        inodes.by_path.insert(path.to_string(), ino);
        ino
    }

    /// Look `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &str) -> Result<(u64, Attr), Error> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(Error::NotFound);
        }
        let dir = self.path_of(parent)?;
        if self.snapshot.getattr(&dir)?.kind != Kind::Dir {
            return Err(Error::NotADirectory);
        }
        let path = join(&dir, name);
        let attr = self.snapshot.getattr(&path)?;
        Ok((self.inode_for(&path), attr))
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, Error> {
        self.snapshot.getattr(&self.path_of(ino)?)
    }

    /// Entries of directory `ino` from `offset` on: (next offset, inode,
    /// name, attributes). Offsets are positions in the sorted listing.
    pub fn readdir(&self, ino: u64, offset: u64) -> Result<Vec<(u64, u64, String, Attr)>, Error> {
        let dir = self.path_of(ino)?;
        let entries = self.snapshot.readdir(&dir)?;
        Ok(entries
            .into_iter()
            .enumerate()
            .skip(offset as usize)
            .map(|(i, (name, attr))| {
                let child = self.inode_for(&join(&dir, &name));
                (i as u64 + 1, child, name, attr)
            })
            .collect())
    }

    /// Read `size` bytes of file `ino` at `offset` (short only at the end).
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Error> {
        let path = self.path_of(ino)?;
        let attr = self.snapshot.getattr(&path)?;
        if attr.kind == Kind::Dir {
            return Err(Error::IsADirectory);
        }
        let want = (size as u64).min(attr.size.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            let n = self
                .snapshot
                .read_at(&path, offset + got as u64, &mut buf[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A reference tree: path → file bytes; directories are implied.
    struct MemTree(BTreeMap<String, Vec<u8>>);

    impl MemTree {
        fn is_dir(&self, path: &str) -> bool {
            path.is_empty() || self.0.keys().any(|k| k.starts_with(&format!("{path}/")))
        }
    }

    impl Snapshot for MemTree {
        fn getattr(&self, path: &str) -> Result<Attr, Error> {
            if let Some(b) = self.0.get(path) {
                return Ok(Attr {
                    kind: Kind::File,
                    size: b.len() as u64,
                    executable: false,
                });
            }
            if self.is_dir(path) {
                return Ok(Attr {
                    kind: Kind::Dir,
                    size: 0,
                    executable: false,
                });
            }
            Err(Error::NotFound)
        }
        fn readdir(&self, path: &str) -> Result<Vec<(String, Attr)>, Error> {
            if self.0.contains_key(path) {
                return Err(Error::NotADirectory);
            }
            if !self.is_dir(path) {
                return Err(Error::NotFound);
            }
            let prefix = if path.is_empty() {
                String::new()
            } else {
                format!("{path}/")
            };
            let mut names: Vec<String> = self
                .0
                .keys()
                .filter_map(|k| k.strip_prefix(&prefix))
                .map(|rest| rest.split('/').next().unwrap().to_string())
                .collect();
            names.dedup();
            Ok(names
                .into_iter()
                .map(|n| (n.clone(), self.getattr(&join(path, &n)).unwrap()))
                .collect())
        }
        fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
            let b = self.0.get(path).ok_or(Error::NotFound)?;
            // Serve at most 7 bytes per call: the filesystem must loop.
            let start = (offset as usize).min(b.len());
            let n = buf.len().min(b.len() - start).min(7);
            buf[..n].copy_from_slice(&b[start..start + n]);
            Ok(n)
        }
    }

    fn tree() -> MemTree {
        let mut m = BTreeMap::new();
        m.insert("a.txt".to_string(), b"hello world".to_vec());
        m.insert(
            "models/base/model.safetensors".to_string(),
            (0..200u8).collect(),
        );
        m.insert("models/readme".to_string(), b"r".to_vec());
        MemTree(m)
    }

    /// Walk to `path` by lookups from the root, as the kernel does.
    fn resolve(fs: &Fs<MemTree>, path: &str) -> Result<u64, Error> {
        let mut ino = ROOT;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = fs.lookup(ino, part)?.0;
        }
        Ok(ino)
    }

    #[test]
    fn errno_for_each_case() {
        let fs = Fs::new(tree());
        assert_eq!(fs.lookup(ROOT, "nope").unwrap_err().errno(), 2);
        let file = resolve(&fs, "a.txt").unwrap();
        assert_eq!(fs.lookup(file, "x").unwrap_err().errno(), 20);
        assert_eq!(fs.read(ROOT, 0, 10).unwrap_err().errno(), 21);
        assert_eq!(fs.getattr(9999).unwrap_err().errno(), 2);
        assert!(fs.lookup(ROOT, "..").is_err());
    }

    #[test]
    fn readdir_offsets_resume() {
        let fs = Fs::new(tree());
        let all = fs.readdir(ROOT, 0).unwrap();
        let names: Vec<&str> = all.iter().map(|e| e.2.as_str()).collect();
        assert_eq!(names, ["a.txt", "models"]);
        let rest = fs.readdir(ROOT, all[0].0).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].2, "models");
        // A listed child has the inode a lookup gives.
        assert_eq!(rest[0].1, fs.lookup(ROOT, "models").unwrap().0);
    }

    proptest! {
        /// Random reads at random offsets, from several threads, return
        /// exactly the reference bytes.
        #[test]
        fn reads_match_the_reference(ops in proptest::collection::vec((0usize..3, 0u64..260, 0u32..300), 1..40)) {
            let fs = std::sync::Arc::new(Fs::new(tree()));
            let reference = tree();
            let paths: Vec<String> = reference.0.keys().cloned().collect();
            let handles: Vec<_> = ops.chunks(10).map(|chunk| {
                let fs = fs.clone();
                let chunk = chunk.to_vec();
                let paths = paths.clone();
                std::thread::spawn(move || {
                    chunk.into_iter().map(|(p, off, size)| {
                        let ino = resolve(&fs, &paths[p]).unwrap();
                        (p, off, size, fs.read(ino, off, size).unwrap())
                    }).collect::<Vec<_>>()
                })
            }).collect();
            for h in handles {
                for (p, off, size, got) in h.join().unwrap() {
                    let b = &reference.0[&paths[p]];
                    let start = (off as usize).min(b.len());
                    let end = (start + size as usize).min(b.len());
                    prop_assert_eq!(&got[..], &b[start..end]);
                }
            }
        }
    }
}
