//! Pointers: the git blob committed for a tracked path.
//!
//! ```text
//! version lode/1
//! oid b3:<file id>
//! size <bytes>
//! ```
//!
//! Three lines, each ending in `\n`, nothing else: the same content gives
//! the same blob on every machine. Parsing is strict and bounded: anything
//! that starts like a pointer but is not exactly one is reported as
//! malformed (a pointer edited by hand), never guessed at.

use crate::id::Id;

pub const PREFIX: &[u8] = b"version lode/";
/// No valid pointer is longer than this.
pub const MAX_LEN: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pointer {
    pub id: Id,
    pub size: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PointerError {
    #[error("not a lode pointer")]
    NotAPointer,
    #[error("malformed lode pointer: {0}")]
    Malformed(String),
}

impl Pointer {
    pub fn encode(&self) -> String {
        format!("version lode/1\noid {}\nsize {}\n", self.id, self.size)
    }

    /// Whether `bytes` claims to be a pointer (valid or not).
    pub fn looks_like(bytes: &[u8]) -> bool {
        bytes.starts_with(PREFIX)
    }

    /// The pointer a regular file on disk holds, if it holds a valid one
    /// (only files small enough to be a pointer are read).
    pub fn read_file(path: &std::path::Path) -> Option<Pointer> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        if !meta.is_file() || meta.len() > MAX_LEN as u64 {
            return None;
        }
        Pointer::parse(&std::fs::read(path).ok()?).ok()
    }

    pub fn parse(bytes: &[u8]) -> Result<Pointer, PointerError> {
        if !Self::looks_like(bytes) {
            return Err(PointerError::NotAPointer);
        }
        let bad = |what: &str| PointerError::Malformed(what.to_string());
        if bytes.len() > MAX_LEN {
            return Err(bad("longer than any pointer"));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("missing final newline"))?;
        let lines: Vec<&str> = body.split('\n').collect();
        let [version, oid, size] = lines[..] else {
            return Err(bad("expected exactly three lines: version, oid, size"));
        };
        if version != "version lode/1" {
            return Err(bad(&format!("unsupported version line {version:?}")));
        }
        let id = oid
            .strip_prefix("oid ")
            .ok_or_else(|| bad("second line must be `oid b3:<64 hex>`"))?
            .parse::<Id>()
            .map_err(|e| bad(&e.to_string()))?;
        let size_text = size
            .strip_prefix("size ")
            .ok_or_else(|| bad("third line must be `size <bytes>`"))?;
        if size_text.is_empty()
            || !size_text.bytes().all(|b| b.is_ascii_digit())
            || (size_text.len() > 1 && size_text.starts_with('0'))
        {
            return Err(bad("size must be a decimal number without leading zeros"));
        }
        let size = size_text
            .parse::<u64>()
            .map_err(|_| bad("size out of range"))?;
        Ok(Pointer { id, size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = Pointer {
            id: Id::of_chunk(b"x"),
            size: 42,
        };
        assert_eq!(Pointer::parse(p.encode().as_bytes()), Ok(p));
    }

    #[test]
    fn hand_edits_are_malformed_not_guessed() {
        let p = Pointer {
            id: Id::of_chunk(b"x"),
            size: 42,
        }
        .encode();
        assert_eq!(Pointer::parse(b"hello"), Err(PointerError::NotAPointer));
        for bad in [
            p.replace("size 42", "size 042"),
            p.replace("size 42", "size -1"),
            p.replace("oid b3:", "oid sha256:"),
            p.trim_end().to_string(),
            format!("{p}extra\n"),
            p.replace("lode/1", "lode/2"),
        ] {
            assert!(
                matches!(
                    Pointer::parse(bad.as_bytes()),
                    Err(PointerError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }
}
