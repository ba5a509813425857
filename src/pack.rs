//! Packs: immutable containers of chunk and recipe records with an index
//! footer, written atomically, named by the BLAKE3 of their bytes.
//!
//! A pack is the unit of local storage and of transfer: about 64 MiB, so a
//! 1 GiB checkpoint is 16 files and a million 4 KiB files are 60, not a
//! million. Each record carries its own header (kind, codec, lengths, id),
//! so any byte range of consecutive records decodes without the footer —
//! what a mount needs to read a range of a remote pack.
//!
//! Layout (little-endian), see docs/FORMAT.md:
//! `"LODEPACK"`, version u32 = 1, reserved u32; records, each a 44-byte
//! header (kind u8, codec u8, reserved u16, raw length u32, stored length
//! u32, id 32 bytes) and its payload; the footer (an index table, see
//! [`crate::index`], with no pack table); the footer's length u64 and
//! `"LODEEND1"`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::compress::{self, Codec};
use crate::durable;
use crate::id::Id;
use crate::index::{self, Entry, Kind};

pub const MAGIC: &[u8; 8] = b"LODEPACK";
pub const END_MAGIC: &[u8; 8] = b"LODEEND1";
pub const VERSION: u32 = 1;
pub const HEADER: u64 = 16;
pub const RECORD_HEADER: usize = 44;
const TRAILER: u64 = 16;
/// A pack is closed once it holds this many bytes (see the module docs).
pub const TARGET_SIZE: u64 = 64 * 1024 * 1024;
/// The largest recipe record: a 100 GB file is about 1.6 M chunks, 58 MB.
pub const MAX_RECIPE: u32 = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pack {path} is corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("record {id} at offset {offset} of pack {path} is corrupt: {what}")]
    Record {
        path: PathBuf,
        id: Id,
        offset: u64,
        what: String,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PackError + 'a {
    move |source| PackError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Largest raw length a record of `kind` may claim (invariant I6).
pub fn max_raw(kind: Kind) -> u32 {
    match kind {
        Kind::Chunk => crate::chunk::MAX_SIZE as u32,
        Kind::Recipe => MAX_RECIPE,
    }
}

/// A pack being written to a temporary file.
pub struct PackWriter {
    tmp: tempfile::NamedTempFile,
    out: BufWriter<File>,
    offset: u64,
    entries: Vec<Entry>,
}

impl PackWriter {
    /// Start a pack in `tmp_dir` (same file system as the packs directory).
    pub fn create(tmp_dir: &Path) -> Result<PackWriter, PackError> {
        let tmp = tempfile::Builder::new()
            .prefix("pack-")
            .suffix(".tmp")
            .tempfile_in(tmp_dir)
            .map_err(io("create temporary pack in", tmp_dir))?;
        let file = tmp.as_file().try_clone().map_err(io("open", tmp.path()))?;
        let mut w = PackWriter {
            tmp,
            // Records of 16 KiB and more (every chunk but a file's last) go
            // straight to the file: buffering them would only copy them once
            // more; headers and small records are gathered.
            out: BufWriter::with_capacity(16 << 10, file),
            offset: 0,
            entries: Vec::new(),
        };
        let mut header = Vec::with_capacity(HEADER as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        w.write(&header)?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), PackError> {
        self.out
            .write_all(bytes)
            .map_err(io("write", self.tmp.path()))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.offset
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Append one record. `stored` is the encoded payload (`raw` itself when
    /// the codec is raw).
    pub fn append(
        &mut self,
        kind: Kind,
        id: Id,
        codec: Codec,
        raw_len: usize,
        stored: &[u8],
    ) -> Result<(), PackError> {
        let mut h = [0u8; RECORD_HEADER];
        h[0] = kind as u8;
        h[1] = codec as u8;
        h[4..8].copy_from_slice(&(raw_len as u32).to_le_bytes());
        h[8..12].copy_from_slice(&(stored.len() as u32).to_le_bytes());
        h[12..44].copy_from_slice(&id.0);
        let entry = Entry {
            id,
            pack: Id::default(),
            offset: self.offset,
            stored_len: stored.len() as u32,
            raw_len: raw_len as u32,
            kind,
            codec,
        };
        // After a failed write the pack is unusable (its offsets no longer
        // match the file): the caller must drop it, never append again.
        self.write(&h)?;
        self.write(stored)?;
        self.entries.push(entry);
        Ok(())
    }

    /// Write the footer, make the pack durable under its final name in
    /// `packs_dir`, and return its id and entries (pointing at it).
    ///
    /// Order (invariant I1): temp file written and fsynced, renamed, then
    /// the directory fsynced. Any error aborts; the temp file is removed.
    pub fn finish(mut self, packs_dir: &Path) -> Result<(Id, Vec<Entry>), PackError> {
        let footer = index::encode(&[], &mut self.entries.clone());
        self.write(&footer)?;
        let mut trailer = Vec::with_capacity(TRAILER as usize);
        trailer.extend_from_slice(&(footer.len() as u64).to_le_bytes());
        trailer.extend_from_slice(END_MAGIC);
        self.write(&trailer)?;
        self.out.flush().map_err(io("write", self.tmp.path()))?;
        self.tmp
            .as_file()
            .sync_all()
            .map_err(io("fsync", self.tmp.path()))?;
        // The id is hashed here, on the closer thread, from the page cache,
        // rather than record by record while appending: appends hold the
        // store's pack lock, and hashing 1 GiB there took 0.25 s of time
        // every ingest thread waited through.
        let id = hash_file(self.tmp.as_file()).map_err(io("read back", self.tmp.path()))?;
        let dest = packs_dir.join(format!("{}.pack", id.to_hex()));
        self.tmp.persist(&dest).map_err(|e| PackError::Io {
            op: "rename pack to",
            path: dest.clone(),
            source: e.error,
        })?;
        durable::sync_dir(packs_dir).map_err(io("fsync", packs_dir))?;
        let entries = self
            .entries
            .into_iter()
            .map(|e| Entry { pack: id, ..e })
            .collect();
        Ok((id, entries))
    }
}

/// BLAKE3 of a whole file, read from its start.
fn hash_file(file: &File) -> std::io::Result<Id> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            return Ok(Id(*hasher.finalize().as_bytes()));
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
}

/// Read access to one pack file.
pub struct PackFile {
    pub path: PathBuf,
    file: File,
    pub len: u64,
}

impl PackFile {
    pub fn open(path: &Path) -> Result<PackFile, PackError> {
        let file = File::open(path).map_err(io("open pack", path))?;
        let len = file.metadata().map_err(io("stat pack", path))?.len();
        Ok(PackFile {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    fn corrupt(&self, what: impl Into<String>) -> PackError {
        PackError::Corrupt {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, PackError> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(self.corrupt(format!(
                "range {offset}+{len} is past the end ({} bytes)",
                self.len
            )));
        }
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(io("read pack", &self.path))?;
        Ok(buf)
    }

    /// The footer's entries, checked (header, trailer, checksum, bounds).
    pub fn footer(&self) -> Result<Vec<Entry>, PackError> {
        if self.len < HEADER + TRAILER {
            return Err(self.corrupt("shorter than a pack header and trailer (truncated?)"));
        }
        let head = self.read_at(0, HEADER as usize)?;
        if &head[..8] != MAGIC {
            return Err(self.corrupt("not a lode pack (bad magic)"));
        }
        let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(self.corrupt(format!("unsupported pack version {version}")));
        }
        let trailer = self.read_at(self.len - TRAILER, TRAILER as usize)?;
        if &trailer[8..] != END_MAGIC {
            return Err(self.corrupt("no end marker (truncated?)"));
        }
        let flen = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
        if flen > self.len - HEADER - TRAILER {
            return Err(self.corrupt("footer length is larger than the pack"));
        }
        let footer_at = self.len - TRAILER - flen;
        let bytes = self.read_at(footer_at, flen as usize)?;
        let table =
            index::Table::parse(bytes, true).map_err(|e| self.corrupt(format!("footer: {e}")))?;
        let mut out = Vec::with_capacity(table.len() as usize);
        for e in table.iter() {
            let e = e.ok_or_else(|| self.corrupt("footer entry is malformed"))?;
            let end = e
                .offset
                .checked_add(RECORD_HEADER as u64 + e.stored_len as u64);
            if e.offset < HEADER
                || end.is_none_or(|end| end > footer_at)
                || e.raw_len > max_raw(e.kind)
            {
                return Err(self.corrupt(format!("footer entry {} is out of bounds", e.id)));
            }
            out.push(e);
        }
        Ok(out)
    }

    /// Recover the records of a pack whose footer is lost, by walking the
    /// self-describing records from the header on. Stops at the first bytes
    /// that are not a valid, verified record (the footer, or damage): what
    /// is returned is exactly the records that read back correctly.
    pub fn scan(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut at = HEADER;
        while at + RECORD_HEADER as u64 <= self.len {
            let Ok(h) = self.read_at(at, RECORD_HEADER) else {
                break;
            };
            let (Some(kind), Some(codec)) = (Kind::from_u8(h[0]), Codec::from_u8(h[1])) else {
                break;
            };
            let raw_len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
            let stored_len = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
            let entry = Entry {
                id: Id(h[12..44].try_into().expect("32 bytes")),
                pack: Id::default(),
                offset: at,
                stored_len,
                raw_len,
                kind,
                codec,
            };
            let Ok(raw) = self.read_record(&entry) else {
                break;
            };
            if kind == Kind::Recipe && crate::recipe::Recipe::decode(&raw, &entry.id).is_err() {
                break;
            }
            out.push(entry);
            at += RECORD_HEADER as u64 + stored_len as u64;
        }
        out
    }

    /// Read, decode and verify one record. Chunks are checked against their
    /// id here; recipes are checked by [`crate::recipe::Recipe::decode`].
    pub fn read_record(&self, e: &Entry) -> Result<Vec<u8>, PackError> {
        self.check_bounds(e)?;
        let buf = self.read_at(e.offset, RECORD_HEADER + e.stored_len as usize)?;
        self.decode_record(e, &buf)
    }

    fn check_bounds(&self, e: &Entry) -> Result<(), PackError> {
        check_bounds(&self.path, e)
    }

    fn bad_record(&self, e: &Entry, what: String) -> PackError {
        bad_record(&self.path, e, what)
    }

    /// Decode and verify a record from its bytes (header and payload).
    pub fn decode_record(&self, e: &Entry, record: &[u8]) -> Result<Vec<u8>, PackError> {
        decode_record(&self.path, e, record)
    }

    /// Read consecutive records with one read: `entries` sorted by offset,
    /// each starting where the previous one ends (or the same record again).
    /// Every record is decoded and verified.
    pub fn read_run(&self, entries: &[Entry]) -> Result<Vec<Vec<u8>>, PackError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(Vec::new());
        };
        for e in entries {
            self.check_bounds(e)?;
        }
        let start = first.offset;
        let end = last
            .offset
            .checked_add(RECORD_HEADER as u64 + last.stored_len as u64)
            .filter(|&end| end >= start)
            .ok_or_else(|| self.bad_record(last, "record range overflows".into()))?;
        let buf = self.read_at(start, (end - start) as usize)?;
        entries
            .iter()
            .map(|e| {
                let len = RECORD_HEADER + e.stored_len as usize;
                let record = e
                    .offset
                    .checked_sub(start)
                    .and_then(|at| buf.get(at as usize..(at as usize).checked_add(len)?))
                    .ok_or_else(|| self.bad_record(e, "record is outside its run".into()))?;
                self.decode_record(e, record)
            })
            .collect()
    }
}

fn bad_record(origin: &Path, e: &Entry, what: String) -> PackError {
    PackError::Record {
        path: origin.to_path_buf(),
        id: e.id,
        offset: e.offset,
        what,
    }
}

/// Refuse a record whose index entry claims more than a record may hold
/// (before anything is allocated for it).
pub fn check_bounds(origin: &Path, e: &Entry) -> Result<(), PackError> {
    if e.raw_len > max_raw(e.kind) {
        return Err(bad_record(
            origin,
            e,
            format!("raw length {} exceeds the limit", e.raw_len),
        ));
    }
    Ok(())
}

/// Decode and verify one record (header and payload) described by `e`,
/// wherever its bytes came from (`origin` names it in errors). Chunks are
/// checked against their id here; recipes by [`crate::recipe::Recipe::decode`].
pub fn decode_record(origin: &Path, e: &Entry, record: &[u8]) -> Result<Vec<u8>, PackError> {
    check_bounds(origin, e)?;
    if record.len() != RECORD_HEADER + e.stored_len as usize {
        return Err(bad_record(origin, e, "record is truncated".into()));
    }
    let (h, payload) = record.split_at(RECORD_HEADER);
    let want_len = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
    if h[0] != e.kind as u8
        || h[1] != e.codec as u8
        || want_len(4) != e.raw_len
        || want_len(8) != e.stored_len
        || h[12..44] != e.id.0
    {
        return Err(bad_record(
            origin,
            e,
            "record header does not match the index".into(),
        ));
    }
    let raw = compress::decode(e.codec, payload, e.raw_len as usize)
        .map_err(|err| bad_record(origin, e, err.to_string()))?;
    if e.kind == Kind::Chunk && Id::of_chunk(&raw) != e.id {
        return Err(bad_record(
            origin,
            e,
            "bytes do not hash to the chunk id".into(),
        ));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_back_and_detect_a_flipped_byte() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(dir.path()).unwrap();
        let a = vec![5u8; 70_000];
        let (codec, stored) = compress::encode(&a);
        let stored = stored.unwrap_or_else(|| a.clone());
        w.append(Kind::Chunk, Id::of_chunk(&a), codec, a.len(), &stored)
            .unwrap();
        let b = b"raw bytes".to_vec();
        w.append(Kind::Chunk, Id::of_chunk(&b), Codec::Raw, b.len(), &b)
            .unwrap();
        let (id, entries) = w.finish(dir.path()).unwrap();
        let path = dir.path().join(format!("{}.pack", id.to_hex()));
        assert_eq!(Id::of_chunk(&std::fs::read(&path).unwrap()), id);
        let p = PackFile::open(&path).unwrap();
        let footer = p.footer().unwrap();
        assert_eq!(footer.len(), 2);
        for e in &entries {
            let raw = p.read_record(e).unwrap();
            assert_eq!(Id::of_chunk(&raw), e.id);
        }
        // Flip one payload byte of the raw record: reading it must fail.
        let e = entries.iter().find(|e| e.codec == Codec::Raw).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(e.offset as usize) + RECORD_HEADER] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let p = PackFile::open(&path).unwrap();
        assert!(p.read_record(e).is_err());
        // Truncation is caught by the footer check.
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(PackFile::open(&path).unwrap().footer().is_err());
    }
}
