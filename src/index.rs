//! Sorted index tables: chunk and recipe ids → (pack, offset, lengths).
//!
//! One byte format serves three places: the footer of every pack (no pack
//! table: its entries point into the pack that holds it), the local index
//! (`.git/lode/index/*.idx`, one table per new pack, merged into one table
//! when there are more than [`MERGE_AT`]), and later the remote index
//! segments. Tables are sorted by id and memory-mapped, so a lookup is a
//! binary search over pages the kernel caches: memory stays bounded for a
//! 10 TB store (160 M entries, 9 GB of tables, only touched pages resident).
//!
//! Layout (all integers little-endian), see docs/FORMAT.md:
//! `"LODEIDX\0"`, version u32 = 1, pack count u32, entry count u64, the
//! pack ids (32 bytes each), the entries (56 bytes each, sorted by id), and
//! a BLAKE3 checksum of everything before it (32 bytes).

use crate::compress::Codec;
use crate::id::Id;

pub const MAGIC: &[u8; 8] = b"LODEIDX\0";
pub const VERSION: u32 = 1;
const HEADER: usize = 24;
pub const ENTRY: usize = 56;
const CHECKSUM: usize = 32;
/// Tables beyond this count are merged into one (bounded lookups).
pub const MERGE_AT: usize = 16;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Kind {
    Chunk = 1,
    Recipe = 2,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Chunk),
            2 => Some(Kind::Recipe),
            _ => None,
        }
    }
}

/// Where one record lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: Id,
    /// The pack's id; in a pack footer, the zero id means "this pack".
    pub pack: Id,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub kind: Kind,
    pub codec: Codec,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("index table is truncated or has a bad header")]
    Header,
    #[error("index table has unsupported version {0}")]
    Version(u32),
    #[error("index table checksum does not match its contents")]
    Checksum,
    #[error("index table entry {0} is malformed or out of order")]
    Entry(u64),
}

/// Serialize `entries` (any order) for `packs`. Each entry's `pack` must be
/// one of `packs`, or the zero id when `packs` is empty (a pack footer).
pub fn encode(packs: &[Id], entries: &mut [Entry]) -> Vec<u8> {
    entries.sort_by_key(|a| (a.id, a.kind));
    let mut out = Vec::with_capacity(HEADER + packs.len() * 32 + entries.len() * ENTRY + CHECKSUM);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for p in packs {
        out.extend_from_slice(&p.0);
    }
    for e in entries.iter() {
        let ordinal = if packs.is_empty() {
            0
        } else {
            packs
                .iter()
                .position(|p| *p == e.pack)
                .expect("entry's pack is in the pack table") as u32
        };
        out.extend_from_slice(&e.id.0);
        out.extend_from_slice(&ordinal.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.stored_len.to_le_bytes());
        out.extend_from_slice(&e.raw_len.to_le_bytes());
        out.push(e.kind as u8);
        out.push(e.codec as u8);
        out.extend_from_slice(&[0, 0]);
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// A parsed view over table bytes (owned or memory-mapped).
pub struct Table<B> {
    bytes: B,
    packs: Vec<Id>,
    count: u64,
    entries_at: usize,
}

impl<B: AsRef<[u8]>> Table<B> {
    /// Check the header and size; the checksum only with `verify` (it reads
    /// every byte, which `fsck` does and a lookup must not).
    pub fn parse(bytes: B, verify: bool) -> Result<Self, TableError> {
        let b = bytes.as_ref();
        if b.len() < HEADER + CHECKSUM || &b[..8] != MAGIC {
            return Err(TableError::Header);
        }
        let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(TableError::Version(version));
        }
        let npacks = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")) as usize;
        let count = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
        let want = (npacks as u64)
            .checked_mul(32)
            .and_then(|p| {
                count
                    .checked_mul(ENTRY as u64)
                    .and_then(|e| e.checked_add(p))
            })
            .and_then(|n| n.checked_add((HEADER + CHECKSUM) as u64));
        if want != Some(b.len() as u64) {
            return Err(TableError::Header);
        }
        if verify && blake3::hash(&b[..b.len() - CHECKSUM]).as_bytes() != &b[b.len() - CHECKSUM..] {
            return Err(TableError::Checksum);
        }
        let packs = (0..npacks)
            .map(|i| {
                Id(b[HEADER + i * 32..HEADER + i * 32 + 32]
                    .try_into()
                    .expect("32 bytes"))
            })
            .collect();
        let entries_at = HEADER + npacks * 32;
        let table = Table {
            bytes,
            packs,
            count,
            entries_at,
        };
        if verify {
            let mut prev: Option<(Id, Kind)> = None;
            for i in 0..count {
                let e = table.entry(i).ok_or(TableError::Entry(i))?;
                if prev.is_some_and(|p| p > (e.id, e.kind)) {
                    return Err(TableError::Entry(i));
                }
                prev = Some((e.id, e.kind));
            }
        }
        Ok(table)
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn packs(&self) -> &[Id] {
        &self.packs
    }

    fn raw_id(&self, i: u64) -> &[u8] {
        let at = self.entries_at + i as usize * ENTRY;
        &self.bytes.as_ref()[at..at + 32]
    }

    /// Entry `i`, or `None` if it is malformed.
    pub fn entry(&self, i: u64) -> Option<Entry> {
        let at = self.entries_at + i as usize * ENTRY;
        let e = &self.bytes.as_ref()[at..at + ENTRY];
        let ordinal = u32::from_le_bytes(e[32..36].try_into().ok()?) as usize;
        let pack = if self.packs.is_empty() {
            if ordinal != 0 {
                return None;
            }
            Id::default()
        } else {
            *self.packs.get(ordinal)?
        };
        Some(Entry {
            id: Id(e[..32].try_into().ok()?),
            pack,
            offset: u64::from_le_bytes(e[36..44].try_into().ok()?),
            stored_len: u32::from_le_bytes(e[44..48].try_into().ok()?),
            raw_len: u32::from_le_bytes(e[48..52].try_into().ok()?),
            kind: Kind::from_u8(e[52])?,
            codec: Codec::from_u8(e[53])?,
        })
    }

    /// Binary search for `id` (of either kind).
    pub fn lookup(&self, id: &Id) -> Option<Entry> {
        let (mut lo, mut hi) = (0u64, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.raw_id(mid).cmp(&id.0[..]) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return self.entry(mid),
            }
        }
        None
    }

    pub fn iter(&self) -> impl Iterator<Item = Option<Entry>> + '_ {
        (0..self.count).map(|i| self.entry(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, pack: Id) -> Entry {
        Entry {
            id: Id::of_chunk(&[n]),
            pack,
            offset: n as u64 * 100,
            stored_len: 10,
            raw_len: 20,
            kind: Kind::Chunk,
            codec: Codec::Zstd,
        }
    }

    #[test]
    fn lookup_finds_every_entry_and_nothing_else() {
        let packs = [Id::of_chunk(b"p1"), Id::of_chunk(b"p2")];
        let mut entries: Vec<Entry> = (0..200u8)
            .map(|n| entry(n, packs[(n % 2) as usize]))
            .collect();
        let bytes = encode(&packs, &mut entries.clone());
        let t = Table::parse(bytes, true).unwrap();
        assert_eq!(t.len(), 200);
        for e in entries.drain(..) {
            assert_eq!(t.lookup(&e.id), Some(e));
        }
        assert_eq!(t.lookup(&Id::of_chunk(b"absent")), None);
    }

    #[test]
    fn damage_is_detected() {
        let mut entries = vec![entry(1, Id::default())];
        let mut bytes = encode(&[], &mut entries);
        bytes[30] ^= 1;
        assert!(matches!(
            Table::parse(&bytes[..], true),
            Err(TableError::Checksum)
        ));
        assert!(Table::parse(&bytes[..bytes.len() - 1], false).is_err());
    }
}
