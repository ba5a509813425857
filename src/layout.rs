//! Format-aware layout: where a file's content-defined chunking must cut
//! regardless of content, and the tensor table kept as a recipe hint.
//!
//! For a safetensors file the cuts are the end of the header and each
//! tensor's first byte. A fine-tune that rewrites some tensors then leaves
//! every other tensor's chunks untouched (their chunking restarts at the
//! same offsets), and the tensors of one large file chunk in parallel.
//! Parsing uses Hugging Face's own `safetensors` crate (header capped at
//! 100 MB by it); a file that is not valid safetensors is chunked as one
//! plain segment, never refused.

use serde::{Deserialize, Serialize};

/// One tensor of a safetensors file, as recorded in a recipe's hints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: u64,
    pub end: u64,
}

/// What lode knows of a file's inner structure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Segment ends (absolute, ascending, the last = file size).
    pub segments: Vec<u64>,
    /// Tensor table, in file order (empty for non-safetensors files).
    pub tensors: Vec<Tensor>,
}

/// The length of the safetensors prefix (8-byte length + JSON header) that
/// `head` announces, if it is plausible: the reader must then hand
/// [`detect`] at least that many bytes.
pub fn safetensors_header_len(head: &[u8]) -> Option<u64> {
    let n = u64::from_le_bytes(head.get(..8)?.try_into().ok()?);
    // The header is JSON that starts with '{'; the crate caps it at 100 MB.
    if !(2..=100_000_000).contains(&n) || head.get(8).is_some_and(|&b| b != b'{') {
        return None;
    }
    Some(n + 8)
}

/// The layout of a file of `file_size` bytes from its first bytes.
///
/// The cuts come from the header alone (those past the end are dropped), so
/// a stream whose size is not known in advance cuts exactly where a file on
/// disk with the same bytes does: the file id depends on content only. The
/// tensor table is kept only when the header describes the file exactly.
pub fn detect(head: &[u8], file_size: u64) -> Layout {
    let mut layout = Layout {
        segments: Vec::new(),
        tensors: Vec::new(),
    };
    if let Some((header_len, tensors, data_len)) = parse_safetensors(head) {
        layout.segments.push(header_len);
        for t in &tensors {
            if t.start > *layout.segments.last().expect("non-empty") {
                layout.segments.push(t.start);
            }
        }
        if header_len + data_len == file_size {
            layout.tensors = tensors;
        }
    }
    layout.segments.retain(|&s| s < file_size);
    layout.segments.push(file_size);
    layout
}

/// The segment ends of a stream of unknown size: [`detect`]'s cuts without
/// the final end (the stream's end always closes the last segment).
pub fn stream_cuts(head: &[u8]) -> Vec<u64> {
    let mut layout = detect(head, u64::MAX);
    layout.segments.pop();
    layout.segments
}

fn parse_safetensors(head: &[u8]) -> Option<(u64, Vec<Tensor>, u64)> {
    let header_len = safetensors_header_len(head)?;
    let json = std::str::from_utf8(head.get(8..header_len as usize)?).ok()?;
    // Deserializing validates: offsets contiguous, sizes match dtype × shape.
    let meta: safetensors::tensor::Metadata = serde_json::from_str(json).ok()?;
    let mut tensors: Vec<Tensor> = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| Tensor {
            name,
            dtype: format!("{:?}", info.dtype),
            shape: info.shape.clone(),
            start: header_len + info.data_offsets.0 as u64,
            end: header_len + info.data_offsets.1 as u64,
        })
        .collect();
    tensors.sort_by_key(|t| (t.start, t.end));
    Some((header_len, tensors, meta.data_len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_safetensors() -> Vec<u8> {
        let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[3],"data_offsets":[8,14]},"__metadata__":{"x":"y"}}"#;
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&[1u8; 14]);
        out
    }

    #[test]
    fn safetensors_cuts_at_header_and_each_tensor() {
        let f = tiny_safetensors();
        let h = f.len() as u64 - 14;
        let l = detect(&f, f.len() as u64);
        assert_eq!(l.segments, vec![h, h + 8, h + 14]);
        assert_eq!(l.tensors.len(), 2);
        assert_eq!(l.tensors[1].name, "b");
        assert_eq!(l.tensors[1].dtype, "F16");
    }

    #[test]
    fn anything_else_is_one_segment() {
        let mut f = tiny_safetensors();
        f.push(0); // size no longer matches the header: same cuts, no table
        let l = detect(&f, f.len() as u64);
        assert_eq!(l.segments.len(), 3, "{:?}", l.segments);
        assert!(l.tensors.is_empty());
        assert_eq!(stream_cuts(&f), l.segments[..2].to_vec());
        assert_eq!(detect(b"hello", 5).segments, vec![5]);
        assert_eq!(detect(b"", 0).segments, vec![0]);
    }
}
