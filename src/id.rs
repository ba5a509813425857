//! Object identity: every chunk, file and pack is named by a BLAKE3-256 [`Id`].
//!
//! Chunk ids are plain BLAKE3 of the chunk bytes. File ids hash the canonical
//! chunk list (id and length of each chunk) in BLAKE3's derive-key mode under
//! [`FILE_CONTEXT`], so a file id can never equal a chunk id, and a reader can
//! verify any chunk of a file without reading the whole file.

use std::fmt;
use std::str::FromStr;

/// The derive-key context for file ids. Part of format version `lode/1`:
/// changing it changes every pointer ever written.
pub const FILE_CONTEXT: &str = "lode 2026-11 file id v1";

/// A BLAKE3-256 object id, shown as `b3:<64 hex>`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// The id of a chunk: BLAKE3 of its bytes.
    pub fn of_chunk(bytes: &[u8]) -> Id {
        Id(*blake3::hash(bytes).as_bytes())
    }

    /// The id of a file made of `chunks` (id, length), in order.
    pub fn of_file<'a>(chunks: impl IntoIterator<Item = (&'a Id, u64)>) -> Id {
        let mut hasher = blake3::Hasher::new_derive_key(FILE_CONTEXT);
        for (id, len) in chunks {
            hasher.update(&id.0);
            hasher.update(&len.to_le_bytes());
        }
        Id(*hasher.finalize().as_bytes())
    }

    /// The first `n` hex digits, for tables meant for people.
    pub fn short(&self) -> String {
        let full = self.to_string();
        full[..3 + 12].to_string()
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from_digit((b >> 4) as u32, 16).expect("nibble < 16"));
            s.push(char::from_digit((b & 15) as u32, 16).expect("nibble < 16"));
        }
        s
    }

    pub fn from_hex(hex: &str) -> Result<Id, ParseIdError> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return Err(ParseIdError(hex.to_string()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16);
            let lo = (pair[1] as char).to_digit(16);
            match (hi, lo) {
                // Only lower-case hex is canonical: one id, one spelling.
                (Some(h), Some(l))
                    if !pair[0].is_ascii_uppercase() && !pair[1].is_ascii_uppercase() =>
                {
                    out[i] = (h * 16 + l) as u8
                }
                _ => return Err(ParseIdError(hex.to_string())),
            }
        }
        Ok(Id(out))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b3:{}", self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a lode id: {0:?} (expected b3: and 64 lower-case hex digits)")]
pub struct ParseIdError(pub String);

impl FromStr for Id {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Id, ParseIdError> {
        match s.strip_prefix("b3:") {
            Some(hex) => Id::from_hex(hex),
            None => Err(ParseIdError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_round_trips() {
        let id = Id::of_chunk(b"hello");
        let s = id.to_string();
        assert!(s.starts_with("b3:"));
        assert_eq!(s.parse::<Id>().unwrap(), id);
        assert!(s.to_uppercase().parse::<Id>().is_err());
        assert!("b3:zz".parse::<Id>().is_err());
    }

    #[test]
    fn file_ids_live_in_their_own_domain() {
        // A file of one chunk must not share the chunk's id.
        let chunk = Id::of_chunk(b"abc");
        let file = Id::of_file([(&chunk, 3)]);
        assert_ne!(chunk, file);
        // BLAKE3 of "abc" is a published test vector.
        assert_eq!(
            chunk.to_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }
}
