//! Per-record compression: zstd where it pays, raw bytes where it does not.
//!
//! Model weights compress poorly, and unevenly by dtype. Measured with
//! `benches/store.rs` on Gaussian weights (σ = 0.02) in 64 KiB records:
//! fp16 1.088 × (zstd level 1 and 3 alike), bf16 1.282 ×, at about
//! 1.05 GB/s per core to compress and 1.1 GB/s to decompress. An 8 % saving
//! is not worth a third of ingest CPU and a decompression on every read, so
//! a record keeps its zstd form only when that saves at least 1/8 of its
//! bytes: fp16 weights are stored raw, bf16 weights, text, tokenized data
//! and sparse tensors are compressed.
//!
//! To avoid compressing whole records only to throw the result away, the
//! first 8 KiB are compressed first as a sample; a sample that saves less
//! than 1/10 means the record is stored raw. The sample costs an eighth of
//! a full compression. Level 1: the same ratio as level 3 on weights, a few
//! percent faster.
//!
//! Decoding is bounded (invariant I6): the caller passes the recorded raw
//! length, which is itself capped, and a frame that decodes to any other
//! length is corrupt.

/// How a record's payload is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

impl Codec {
    pub fn from_u8(v: u8) -> Option<Codec> {
        match v {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

pub const LEVEL: i32 = 1;
/// Bytes compressed first to decide whether a record is worth it.
const SAMPLE: usize = 8 * 1024;

/// Compress `raw` if it pays; returns the codec and the stored bytes
/// (`None` for the bytes means: store `raw` itself).
pub fn encode(raw: &[u8]) -> (Codec, Option<Vec<u8>>) {
    if raw.len() < 64 {
        return (Codec::Raw, None);
    }
    thread_local! {
        static CTX: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    let packed = CTX.with(|ctx| {
        let mut ctx = ctx.borrow_mut();
        if ctx.is_none() {
            *ctx = zstd::bulk::Compressor::new(LEVEL).ok();
        }
        let c = ctx.as_mut()?;
        if raw.len() > 2 * SAMPLE {
            let sample = &raw[..SAMPLE];
            let budget = SAMPLE - SAMPLE / 10;
            let mut out = vec![0u8; budget];
            if !c
                .compress_to_buffer(sample, &mut out[..])
                .is_ok_and(|n| n <= budget)
            {
                return None;
            }
        }
        // A frame larger than the budget is useless: give zstd exactly that.
        let budget = raw.len() - raw.len() / 8;
        let mut out = vec![0u8; budget];
        match c.compress_to_buffer(raw, &mut out[..]) {
            Ok(n) if n <= budget => {
                out.truncate(n);
                Some(out)
            }
            _ => None,
        }
    });
    match packed {
        Some(bytes) => (Codec::Zstd, Some(bytes)),
        None => (Codec::Raw, None),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("stored length {stored} does not match raw length {raw} of a raw record")]
    RawLength { stored: usize, raw: usize },
    #[error("zstd frame is corrupt: {0}")]
    Zstd(std::io::Error),
    #[error("zstd frame decodes to {got} bytes, recorded {want}")]
    Length { got: usize, want: usize },
}

/// Decode a payload to exactly `raw_len` bytes.
pub fn decode(codec: Codec, stored: &[u8], raw_len: usize) -> Result<Vec<u8>, DecodeError> {
    match codec {
        Codec::Raw => {
            if stored.len() != raw_len {
                return Err(DecodeError::RawLength {
                    stored: stored.len(),
                    raw: raw_len,
                });
            }
            Ok(stored.to_vec())
        }
        Codec::Zstd => {
            let mut out = vec![0u8; raw_len];
            // The buffer is the bound: a frame that decodes to more than the
            // recorded length fails here instead of allocating further.
            let n = zstd::bulk::decompress_to_buffer(stored, &mut out[..])
                .map_err(DecodeError::Zstd)?;
            if n != raw_len {
                return Err(DecodeError::Length {
                    got: n,
                    want: raw_len,
                });
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_data_is_compressed_and_round_trips() {
        let raw = vec![7u8; 100_000];
        let (codec, stored) = encode(&raw);
        assert_eq!(codec, Codec::Zstd);
        let stored = stored.unwrap();
        assert!(stored.len() < 1000);
        assert_eq!(decode(codec, &stored, raw.len()).unwrap(), raw);
    }

    #[test]
    fn noise_is_kept_raw() {
        let raw = crate::chunk::tests_support::noise(100_000, 3);
        let (codec, stored) = encode(&raw);
        assert_eq!(codec, Codec::Raw);
        assert!(stored.is_none());
    }

    #[test]
    fn a_bomb_is_refused() {
        // 10 MB of zeros compress to a few hundred bytes; claiming a small
        // raw length must fail rather than allocate or decode past it.
        let bomb = zstd::bulk::compress(&vec![0u8; 10_000_000], 1).unwrap();
        assert!(decode(Codec::Zstd, &bomb, 1000).is_err());
    }
}
