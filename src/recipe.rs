//! Recipes: a file's chunk list, stored under the file id, with hints.
//!
//! The chunk list (id and length of each chunk) is the file's identity: the
//! file id is BLAKE3 over it (see [`crate::id`]), so decoding a recipe
//! recomputes the id and refuses a record that does not match. Hints are
//! not part of the id: today the safetensors tensor table (name, dtype,
//! shape, byte range), which `lode show` and `git diff` use to say which
//! tensors changed. Pack locations are not hinted in version 1: the chunk
//! index answers where each chunk lies, so a repack never rewrites recipes.
//!
//! Layout (little-endian): `"LRCP"`, version u8 = 1, flags u8 (bit 0: a
//! tensor table follows), reserved u16, file size u64, chunk count u32,
//! then per chunk its id (32 bytes) and length u32, then if flagged the
//! tensor table as JSON, prefixed by its length u32.

use crate::chunk::MAX_SIZE;
use crate::id::Id;
use crate::layout::Tensor;

const MAGIC: &[u8; 4] = b"LRCP";
const VERSION: u8 = 1;
const FIXED: usize = 4 + 4 + 8 + 4;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipe {
    pub size: u64,
    pub chunks: Vec<(Id, u32)>,
    pub tensors: Vec<Tensor>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("recipe is malformed: {0}")]
    Malformed(&'static str),
    #[error("recipe does not hash to its id (want {want}, got {got})")]
    Mismatch { want: Id, got: Id },
}

impl Recipe {
    pub fn file_id(&self) -> Id {
        Id::of_file(self.chunks.iter().map(|(id, len)| (id, *len as u64)))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED + self.chunks.len() * 36 + 64);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(if self.tensors.is_empty() { 0 } else { 1 });
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for (id, len) in &self.chunks {
            out.extend_from_slice(&id.0);
            out.extend_from_slice(&len.to_le_bytes());
        }
        if !self.tensors.is_empty() {
            let json = serde_json::to_vec(&self.tensors).expect("tensor table serializes");
            out.extend_from_slice(&(json.len() as u32).to_le_bytes());
            out.extend_from_slice(&json);
        }
        out
    }

    /// Decode and verify against `id`. Bounded: every count is checked
    /// against the bytes present before anything is allocated for it.
    pub fn decode(bytes: &[u8], id: &Id) -> Result<Recipe, RecipeError> {
        use RecipeError::Malformed;
        if bytes.len() < FIXED || &bytes[..4] != MAGIC {
            return Err(Malformed("bad magic or too short"));
        }
        if bytes[4] != VERSION {
            return Err(Malformed("unsupported version"));
        }
        let flags = bytes[5];
        let size = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let n = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")) as usize;
        let body = &bytes[FIXED..];
        if body.len() < n.saturating_mul(36) {
            return Err(Malformed("chunk count larger than the record"));
        }
        let mut chunks = Vec::with_capacity(n);
        let mut total = 0u64;
        for c in body[..n * 36].chunks_exact(36) {
            let len = u32::from_le_bytes(c[32..36].try_into().expect("4 bytes"));
            if len == 0 || len as usize > MAX_SIZE {
                return Err(Malformed("chunk length out of bounds"));
            }
            total += len as u64;
            chunks.push((Id(c[..32].try_into().expect("32 bytes")), len));
        }
        if total != size {
            return Err(Malformed("chunk lengths do not add up to the file size"));
        }
        let rest = &body[n * 36..];
        let tensors = if flags & 1 == 1 {
            if rest.len() < 4 {
                return Err(Malformed("tensor table length missing"));
            }
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            if rest.len() != 4 + len {
                return Err(Malformed("tensor table length does not match"));
            }
            serde_json::from_slice(&rest[4..])
                .map_err(|_| Malformed("tensor table is not valid JSON"))?
        } else {
            if !rest.is_empty() {
                return Err(Malformed("trailing bytes"));
            }
            Vec::new()
        };
        let recipe = Recipe {
            size,
            chunks,
            tensors,
        };
        let got = recipe.file_id();
        if got != *id {
            return Err(RecipeError::Mismatch { want: *id, got });
        }
        Ok(recipe)
    }

    /// Chunk index and offset in the file of each chunk.
    pub fn offsets(&self) -> Vec<u64> {
        let mut at = 0;
        self.chunks
            .iter()
            .map(|(_, len)| {
                let o = at;
                at += *len as u64;
                o
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let r = Recipe {
            size: 5,
            chunks: vec![(Id::of_chunk(b"ab"), 2), (Id::of_chunk(b"cde"), 3)],
            tensors: vec![Tensor {
                name: "w".into(),
                dtype: "F16".into(),
                shape: vec![1],
                start: 0,
                end: 2,
            }],
        };
        let id = r.file_id();
        let bytes = r.encode();
        assert_eq!(Recipe::decode(&bytes, &id).unwrap(), r);
        let mut bad = bytes.clone();
        bad[20] ^= 1; // a chunk id bit
        assert!(matches!(
            Recipe::decode(&bad, &id),
            Err(RecipeError::Mismatch { .. })
        ));
        let mut huge = bytes;
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Recipe::decode(&huge, &id).is_err());
    }
}
