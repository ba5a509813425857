//! Content-defined chunking: a gear rolling hash with FastCDC-style
//! normalized cuts.
//!
//! A chunk ends where the top bits of the gear hash are all zero. The hash
//! is `h = (h << 1) + GEAR[byte]`, so its top bit depends on the last 64
//! bytes: that is the window. Chunks are at least [`MIN_SIZE`] (16 KiB, the
//! hash is not even computed before it: cut-point skipping saves a quarter of
//! the work), at most [`MAX_SIZE`] (256 KiB), and aim at [`AVG_SIZE`]
//! (64 KiB): before the average a stricter mask (18 bits) makes early cuts
//! rare, after it a looser one (14 bits) makes late cuts likely, which
//! narrows the spread of sizes (FastCDC's normalized chunking, level 2).
//!
//! 64 KiB is the trade DESIGN.md settles on: small enough that a fine-tune
//! touching 10 % of tensors shares the rest at chunk granularity, large
//! enough that a 100 GB checkpoint is 1.6 M chunks (58 MB of recipe), and
//! that per-chunk overhead (index entry, zstd frame, hash finalization)
//! stays far below the cost of the bytes.
//!
//! Every cut depends only on the previous cut and the bytes after it. That
//! one fact gives both streaming (any buffer size) and parallel chunking of
//! one large range with boundaries identical to a sequential pass: see
//! [`cuts`]. The parameters are part of the format (`lode/1`); the golden
//! vectors in the tests catch any change, which would silently break dedup.

use rayon::prelude::*;

pub const MIN_SIZE: usize = 16 * 1024;
pub const AVG_SIZE: usize = 64 * 1024;
pub const MAX_SIZE: usize = 256 * 1024;

/// 18 top bits: the mask used before the average size.
const MASK_STRICT: u64 = !0u64 << (64 - 18);
/// 14 top bits: the mask used after the average size.
const MASK_LOOSE: u64 = !0u64 << (64 - 14);

/// Ranges longer than this are cut in parallel pieces and stitched.
const PIECE: usize = 8 * 1024 * 1024;

/// The gear table: 256 pseudo-random words from splitmix64, seeded with
/// "lode". Generated at compile time so it is the same on every platform.
pub static GEAR: [u64; 256] = gear_table();

const fn gear_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut state: u64 = 0x6c6f_6465; // "lode"
    let mut i = 0;
    while i < 256 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
}

/// The length of the chunk that starts at `data[0]`, where `data` runs to
/// the end of the range being chunked (or at least [`MAX_SIZE`] bytes past
/// the chunk start, which is all a cut can depend on).
#[inline]
pub fn next_cut(data: &[u8]) -> usize {
    let n = data.len();
    if n <= MIN_SIZE {
        return n;
    }
    let end = n.min(MAX_SIZE);
    let normal = end.min(AVG_SIZE);
    match scan(data, 0, MIN_SIZE, normal, MASK_STRICT) {
        Ok(cut) => cut,
        Err(h) => scan(data, h, normal, end, MASK_LOOSE).unwrap_or(end),
    }
}

/// Roll the gear hash over `data[i..end]`: `Ok(chunk length)` at the first
/// byte whose hash has the `mask` bits clear, else `Err(hash at end)`.
///
/// Two bytes per step with the same result as one at a time: since
/// `h2 = 2·h1 + g1 = 4·h0 + (2·g0 + g1)` in wrapping arithmetic, the loop's
/// dependency chain is one shift and one add per two bytes, and the middle
/// hash `h1` is computed off that chain only to be tested (the figures are
/// in docs/BENCHMARKS.md, B9).
#[inline(always)]
fn scan(data: &[u8], mut h: u64, mut i: usize, end: usize, mask: u64) -> Result<usize, u64> {
    while i + 1 < end {
        let g0 = GEAR[data[i] as usize];
        let g1 = GEAR[data[i + 1] as usize];
        let h1 = (h << 1).wrapping_add(g0);
        h = (h << 2).wrapping_add((g0 << 1).wrapping_add(g1));
        if h1 & mask == 0 {
            return Ok(i + 1);
        }
        if h & mask == 0 {
            return Ok(i + 2);
        }
        i += 2;
    }
    if i < end {
        h = (h << 1).wrapping_add(GEAR[data[i] as usize]);
        if h & mask == 0 {
            return Ok(i + 1);
        }
    }
    Err(h)
}

/// Sequential cuts of `data[from..]`, stopping after the first cut at or past
/// `stop`. Returned as absolute end offsets.
fn cuts_from(data: &[u8], from: usize, stop: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity((stop.saturating_sub(from)) / AVG_SIZE + 2);
    let mut pos = from;
    while pos < data.len() {
        pos += next_cut(&data[pos..]);
        out.push(pos);
        if pos >= stop {
            break;
        }
    }
    out
}

/// The chunk end offsets of `data`, exactly as a sequential pass would find
/// them, computed in parallel for long ranges.
///
/// Each piece of [`PIECE`] bytes is chunked on its own, from its own start,
/// until its first cut past the piece end. Stitching then runs the sequential
/// pass across each piece border, from the last accepted cut, until it lands
/// on a cut the next piece also found: from there on the two agree (a cut
/// depends only on the previous cut), so the rest of that piece's cuts are
/// taken as they are. Convergence usually comes within one or two chunks; if
/// it never comes (long runs of identical bytes give only forced cuts), the
/// stitch simply continues sequentially, so the result is always exact.
pub fn cuts(data: &[u8]) -> Vec<usize> {
    if data.len() <= 2 * PIECE {
        return cuts_from(data, 0, data.len());
    }
    let starts: Vec<usize> = (0..data.len()).step_by(PIECE).collect();
    let pieces: Vec<Vec<usize>> = starts
        .par_iter()
        .map(|&p| cuts_from(data, p, p + PIECE))
        .collect();
    let mut out: Vec<usize> = Vec::with_capacity(data.len() / AVG_SIZE + 16);
    for piece in pieces {
        let mut last = out.last().copied().unwrap_or(0);
        if piece.last().is_some_and(|&end| end <= last) {
            continue; // an earlier stitch already ran past this whole piece
        }
        loop {
            match piece.binary_search(&last) {
                Ok(i) => {
                    out.extend_from_slice(&piece[i + 1..]);
                    break;
                }
                Err(i) if i == piece.len() => break, // ran past this piece
                Err(_) => {
                    if last == 0 && out.is_empty() {
                        // The first piece starts at 0: its cuts are final.
                        out.extend_from_slice(&piece);
                        break;
                    }
                    last += next_cut(&data[last..]);
                    out.push(last);
                }
            }
        }
    }
    out
}

/// Chunk ends for `data` split into independent `segments` (end offsets,
/// ascending, the last equal to `data.len()`): format-aware cuts first, then
/// content-defined cuts inside each segment. Segments run in parallel.
pub fn cuts_segmented(data: &[u8], segments: &[usize]) -> Vec<usize> {
    let mut bounds = Vec::with_capacity(segments.len());
    let mut start = 0;
    for &end in segments {
        if end > start {
            bounds.push((start, end));
            start = end;
        }
    }
    let per: Vec<Vec<usize>> = bounds
        .par_iter()
        .map(|&(s, e)| cuts(&data[s..e]).into_iter().map(|c| c + s).collect())
        .collect();
    per.concat()
}

/// A chunker over a stream: yields the same chunks as [`cuts_segmented`]
/// on the whole input, whatever the reader's read sizes.
pub struct StreamChunker<R> {
    reader: R,
    buf: Vec<u8>,
    /// Offset in the stream of `buf[0]`.
    base: u64,
    /// Consumed bytes of `buf` (already handed out).
    pos: usize,
    eof: bool,
    /// Remaining segment ends (absolute stream offsets), ascending.
    segments: std::collections::VecDeque<u64>,
}

impl<R: std::io::Read> StreamChunker<R> {
    /// `segments`: absolute ends of format-aware segments; the stream end is
    /// always a segment end, so an empty list means one segment.
    pub fn new(reader: R, segments: Vec<u64>) -> Self {
        StreamChunker {
            reader,
            buf: Vec::new(),
            base: 0,
            pos: 0,
            eof: false,
            segments: segments.into(),
        }
    }

    fn fill(&mut self, want: usize) -> std::io::Result<()> {
        while self.buf.len() - self.pos < want && !self.eof {
            if self.pos > 0 && self.pos >= self.buf.len() / 2 {
                self.buf.drain(..self.pos);
                self.base += self.pos as u64;
                self.pos = 0;
            }
            let old = self.buf.len();
            let grow = (want - (old - self.pos)).max(1 << 20);
            self.buf.resize(old + grow, 0);
            let n = loop {
                match self.reader.read(&mut self.buf[old..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.buf.truncate(old);
                        return Err(e);
                    }
                }
            };
            self.buf.truncate(old + n);
            if n == 0 {
                self.eof = true;
            }
        }
        Ok(())
    }

    /// Up to `max_bytes` of whole chunks: (stream offset, bytes of each).
    /// Empty when the stream is done.
    pub fn next_batch(&mut self, max_bytes: usize) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut total = 0;
        while total < max_bytes {
            self.fill(MAX_SIZE)?;
            let avail = self.buf.len() - self.pos;
            if avail == 0 {
                break;
            }
            let here = self.base + self.pos as u64;
            while self.segments.front().is_some_and(|&end| end <= here) {
                self.segments.pop_front();
            }
            let mut limit = avail;
            if let Some(&end) = self.segments.front() {
                limit = limit.min((end - here) as usize);
            }
            let len = next_cut(&self.buf[self.pos..self.pos + limit]);
            out.push((here, self.buf[self.pos..self.pos + len].to_vec()));
            self.pos += len;
            total += len;
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// Deterministic pseudo-random bytes (xorshift), the same everywhere.
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::noise;
    use super::*;

    #[test]
    fn golden_vectors() {
        // Any change here changes chunk boundaries and silently breaks dedup
        // with every store written before: that needs a new format version.
        assert_eq!(GEAR[0], GOLDEN_GEAR0, "gear table changed");
        let data = noise(2 * 1024 * 1024, 42);
        let c = cuts(&data);
        let lens: Vec<usize> = c
            .iter()
            .scan(0, |p, &e| {
                let l = e - *p;
                *p = e;
                Some(l)
            })
            .collect();
        let digest = blake3::hash(format!("{lens:?}").as_bytes())
            .to_hex()
            .to_string();
        assert_eq!(c.len(), GOLDEN_COUNT, "chunk count changed: {lens:?}");
        assert_eq!(&lens[..4], &GOLDEN_FIRST, "first chunk lengths changed");
        assert_eq!(digest, GOLDEN_DIGEST, "chunk boundaries changed");
    }

    const GOLDEN_GEAR0: u64 = 12619280305076071705;
    const GOLDEN_COUNT: usize = 30;
    const GOLDEN_FIRST: [usize; 4] = [70394, 65551, 35670, 150603];
    const GOLDEN_DIGEST: &str = "ec73e3aeb0a3c3dc2e52280b617a47ed7cbccd165698a0c26b771944a18958b7";

    #[test]
    fn parallel_equals_sequential_on_large_input() {
        let mut data = noise(5 * PIECE + 12345, 7);
        // A long run of zeros across a piece border: only forced cuts there.
        for b in &mut data[PIECE - 1000..PIECE + 3 * MAX_SIZE] {
            *b = 0;
        }
        assert_eq!(cuts(&data), cuts_from(&data, 0, data.len()));
    }

    /// The chunk ends a [`StreamChunker`] finds when its reader hands out
    /// at most `read_size` bytes per read; every chunk's bytes are checked
    /// against `data` at its offset.
    fn stream(data: &[u8], segments: &[usize], read_size: usize) -> Vec<usize> {
        struct Reads<'a>(&'a [u8], usize);
        impl std::io::Read for Reads<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.1).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let segs = segments.iter().map(|&s| s as u64).collect();
        let mut sc = StreamChunker::new(Reads(data, read_size), segs);
        let mut ends = Vec::new();
        loop {
            let batch = sc.next_batch(300_000).unwrap();
            if batch.is_empty() {
                return ends;
            }
            for (off, bytes) in batch {
                let off = off as usize;
                assert_eq!(&data[off..off + bytes.len()], &bytes[..]);
                ends.push(off + bytes.len());
            }
        }
    }

    #[test]
    fn stream_equals_whole() {
        let data = noise(3 * 1024 * 1024 + 17, 9);
        let segments = vec![100_000usize, 1_000_000, data.len()];
        assert_eq!(
            stream(&data, &segments, 7919),
            cuts_segmented(&data, &segments)
        );
    }

    mod properties {
        use super::super::*;
        use super::{noise, stream};
        use proptest::prelude::*;

        fn chunks_of(data: &[u8], ends: &[usize]) -> Vec<Vec<u8>> {
            let mut start = 0;
            ends.iter()
                .map(|&e| {
                    let c = data[start..e].to_vec();
                    start = e;
                    c
                })
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

            /// Chunks concatenate to the input, within the size bounds
            /// (only a segment's last chunk may be short).
            #[test]
            fn lossless_and_bounded(len in 0usize..3_000_000, seed in any::<u64>(), zeros in any::<bool>()) {
                let mut data = noise(len, seed);
                if zeros {
                    let half = len / 2;
                    data[half..].fill(0);
                }
                let ends = cuts(&data);
                prop_assert_eq!(chunks_of(&data, &ends).concat(), data.clone());
                let mut start = 0;
                for (i, &e) in ends.iter().enumerate() {
                    let n = e - start;
                    prop_assert!(n <= MAX_SIZE);
                    prop_assert!(n >= MIN_SIZE || i == ends.len() - 1, "chunk {} is {} bytes", i, n);
                    start = e;
                }
            }

            /// Boundaries do not depend on how the input arrives.
            #[test]
            fn independent_of_buffer_size(len in 1usize..2_000_000, seed in any::<u64>(), read in 1usize..500_000, cut in 0usize..2_000_000) {
                let data = noise(len, seed);
                let mut segments = vec![cut.min(len), len];
                segments.dedup();
                prop_assert_eq!(stream(&data, &segments, read), cuts_segmented(&data, &segments));
            }

            /// A local edit changes only nearby chunks: at most eight, for an
            /// overwrite or an insertion (with minimum-size skipping, the
            /// cuts after an edit that moves or removes a cut re-synchronize
            /// within a few chunks; proptest found five after an insertion
            /// and four after an overwrite).
            /// Fixed-size chunking would change every chunk after an
            /// insertion: 20 or more here.
            #[test]
            fn local_edits_stay_local(seed in any::<u64>(), at in 0usize..1_500_000, insert in any::<bool>()) {
                let v1 = noise(3_000_000, seed);
                let mut v2 = v1.clone();
                if insert {
                    v2.splice(at..at, b"an inserted phrase".iter().copied());
                } else {
                    for b in &mut v2[at..(at + 100).min(v1.len())] {
                        *b ^= 0x5a;
                    }
                }
                let old: std::collections::HashSet<Vec<u8>> = chunks_of(&v1, &cuts(&v1)).into_iter().collect();
                let new = chunks_of(&v2, &cuts(&v2));
                let fresh = new.iter().filter(|c| !old.contains(*c)).count();
                prop_assert!(fresh <= 8, "{} new chunks for one edit", fresh);
            }
        }

        /// Regression (found by `local_edits_stay_local`): an overwrite of
        /// 100 bytes that changes four chunks, not the three once assumed.
        #[test]
        fn overwrite_resync_regression_four_chunks() {
            let v1 = noise(3_000_000, 11181037085850350970);
            let mut v2 = v1.clone();
            for b in &mut v2[229_766..229_866] {
                *b ^= 0x5a;
            }
            let old: std::collections::HashSet<Vec<u8>> =
                chunks_of(&v1, &cuts(&v1)).into_iter().collect();
            let fresh = chunks_of(&v2, &cuts(&v2))
                .iter()
                .filter(|c| !old.contains(*c))
                .count();
            assert!((1..=8).contains(&fresh), "{fresh} new chunks");
        }

        /// Regression (found by `local_edits_stay_local`): an insertion
        /// whose cuts took five chunks to re-synchronize.
        #[test]
        fn insertion_resync_regression_five_chunks() {
            let v1 = noise(1_500_000, 14602578187562658382);
            let mut v2 = v1.clone();
            v2.splice(922_563..922_563, b"an inserted phrase".iter().copied());
            let old: std::collections::HashSet<Vec<u8>> =
                chunks_of(&v1, &cuts(&v1)).into_iter().collect();
            let fresh = chunks_of(&v2, &cuts(&v2))
                .into_iter()
                .filter(|c| !old.contains(c))
                .count();
            assert!((1..=8).contains(&fresh), "{fresh} new chunks");
        }

        /// The same cuts with one thread or many, on input long enough to be
        /// cut in parallel pieces.
        #[test]
        fn independent_of_thread_count() {
            for seed in [1u64, 2, 3] {
                let data = noise(3 * PIECE + 777 * seed as usize, seed);
                let one = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap()
                    .install(|| cuts(&data));
                let four = rayon::ThreadPoolBuilder::new()
                    .num_threads(4)
                    .build()
                    .unwrap()
                    .install(|| cuts(&data));
                assert_eq!(one, four);
                assert_eq!(one, cuts_from(&data, 0, data.len()));
            }
        }
    }
}
