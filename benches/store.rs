//! Store-core benchmarks: chunking, hashing, compression and pack writing,
//! each on 16 MiB of synthetic model weights, reported as bytes per second.
//!
//! The inputs are Gaussian weights (σ = 0.02, the scale of a trained
//! transformer's linear layers) stored as fp16 and as bf16, from a fixed
//! PRNG, so every run and every machine benchmarks the same bytes. Weights,
//! not random bytes, because compression ratios depend on them: fp16 keeps
//! 10 mantissa bits of noise and compresses about 1.09 ×, bf16 only 7 and
//! compresses about 1.28 × (shared/BENCHMARKS.md).
//!
//! Groups:
//! - `chunk`: lode's gear CDC ([`lode::chunk::cuts`]) against the `fastcdc`
//!   crate (v2020, the same 16/64/256 KiB sizes, at its default
//!   normalization level 1 and at level 2, the one lode uses), then chunk +
//!   BLAKE3 of every chunk: target B9, ≥ 1 GB/s per core. Everything here
//!   runs in a one-thread rayon pool, so the figures are per core.
//! - `compress`: [`lode::compress::encode`] per 64 KiB chunk (zstd level 1,
//!   kept only where it saves 1/16), against zstd levels 1 and 3 directly
//!   and a byte-grouped bf16 variant (high bytes through zstd, low bytes
//!   raw); the ratios are printed once to stderr, criterion prints speeds.
//! - `pack`: [`lode::pack::PackWriter`] writing every chunk's record
//!   (pre-encoded) and finishing the pack (footer, fsync, rename, directory
//!   fsync); and the whole single-core ingest path (cut, hash, encode,
//!   append, finish).
//!
//! Run: `cargo bench --bench store -- --noplot` (about a minute
//! on a 2-core machine; sample sizes and times are kept small for that).

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime,
};

use lode::compress::{self, Codec};
use lode::id::Id;
use lode::index::Kind;
use lode::pack::PackWriter;

/// Input size of every benchmark: large enough that per-call costs vanish
/// and small enough that 10 samples of the slowest case fit in seconds.
const INPUT: usize = 16 * 1024 * 1024;
/// The fixed chunk size used for the compression comparison (lode's average
/// chunk; the real chunks vary from 16 to 256 KiB around it).
const BLOCK: usize = 64 * 1024;
const SIGMA: f32 = 0.02;

/// splitmix64: a small deterministic PRNG, the same on every platform.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so the logarithm below is finite.
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// `n` Gaussian samples of standard deviation `sigma` (Box-Muller).
fn gaussian(n: usize, sigma: f32, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix(seed);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let r = (-2.0 * rng.unit().ln()).sqrt();
        let theta = std::f64::consts::TAU * rng.unit();
        out.push((r * theta.cos()) as f32 * sigma);
        out.push((r * theta.sin()) as f32 * sigma);
    }
    out.truncate(n);
    out
}

/// IEEE binary16 bits of `x`, rounded to nearest even (subnormals included:
/// about 0.2 % of σ = 0.02 weights fall below fp16's normal range).
fn f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 31 {
        return sign | 0x7c00;
    }
    let (mut h, rem, half) = if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        (m >> shift, m & ((1 << shift) - 1), 1u32 << (shift - 1))
    } else {
        (((e as u32) << 10) | (man >> 13), man & 0x1fff, 0x1000)
    };
    if rem > half || (rem == half && h & 1 == 1) {
        h += 1; // a carry into the exponent is the correct rounding
    }
    sign | h as u16
}

/// bfloat16 bits of `x`: the top half of the f32, rounded to nearest even.
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

fn to_bytes(values: &[f32], convert: fn(f32) -> u16) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| convert(v).to_le_bytes())
        .collect()
}

struct Inputs {
    fp16: Vec<u8>,
    bf16: Vec<u8>,
}

/// Known conversions, checked before any input is made: a wrong
/// converter would benchmark bytes unlike real weights.
fn check_conversions() {
    let f16 = [
        (1.0, 0x3c00),
        (-2.0, 0xc000),
        (0.02, 0x251f),
        (65504.0, 0x7bff),
        (1e6, 0x7c00),
    ];
    let f16_edges = [
        (5.960_464_5e-8, 0x0001),     // smallest subnormal
        (6.103_515_6e-5, 0x0400),     // smallest normal
        (1.0 + 1.0 / 2048.0, 0x3c00), // a tie rounds to even
    ];
    for (x, bits) in f16.into_iter().chain(f16_edges) {
        assert_eq!(f16_bits(x), bits, "f16 of {x}");
    }
    for (x, bits) in [(1.0, 0x3f80), (0.02, 0x3ca4), (-0.02, 0xbca4)] {
        assert_eq!(bf16_bits(x), bits, "bf16 of {x}");
    }
}

fn inputs() -> Inputs {
    check_conversions();
    let values = gaussian(INPUT / 2, SIGMA, 0x6c6f_6465);
    Inputs {
        fp16: to_bytes(&values, f16_bits),
        bf16: to_bytes(&values, bf16_bits),
    }
}

/// Run `f` on one rayon thread: the figures are per core, and lode's
/// chunker would otherwise fan out on inputs above 16 MiB.
fn one_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread rayon pool can always be built")
        .install(f)
}

fn group<'a>(c: &'a mut Criterion, name: &str, bytes: usize) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(bytes as u64))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

fn lengths(ends: &[usize]) -> impl Iterator<Item = usize> + '_ {
    ends.iter().scan(0, |prev, &end| {
        let len = end - *prev;
        *prev = end;
        Some(len)
    })
}

fn bench_chunk(c: &mut Criterion) {
    let data = inputs().fp16;
    let ends = lode::chunk::cuts(&data);
    let fast_l1 = fastcdc::v2020::FastCDC::new(&data, 16384, 65536, 262144).count();
    let fast_l2 = fastcdc::v2020::FastCDC::with_level(
        &data,
        16384,
        65536,
        262144,
        fastcdc::v2020::Normalization::Level2,
    )
    .count();
    eprintln!(
        "chunk: 16 MiB fp16 weights -> gear {} chunks (mean {} B), fastcdc L1 {} chunks (mean {} B), fastcdc L2 {} chunks (mean {} B)",
        ends.len(),
        data.len() / ends.len(),
        fast_l1,
        data.len() / fast_l1,
        fast_l2,
        data.len() / fast_l2
    );

    let mut g = group(c, "chunk", data.len());
    g.bench_function("gear_cuts", |b| {
        b.iter(|| one_thread(|| lode::chunk::cuts(black_box(&data))))
    });
    g.bench_function("fastcdc_v2020_l1", |b| {
        b.iter(|| {
            fastcdc::v2020::FastCDC::new(black_box(&data), 16384, 65536, 262144)
                .map(|c| c.length)
                .sum::<usize>()
        })
    });
    g.bench_function("fastcdc_v2020_l2", |b| {
        b.iter(|| {
            fastcdc::v2020::FastCDC::with_level(
                black_box(&data),
                16384,
                65536,
                262144,
                fastcdc::v2020::Normalization::Level2,
            )
            .map(|c| c.length)
            .sum::<usize>()
        })
    });
    g.bench_function("blake3_per_chunk", |b| {
        b.iter(|| {
            let mut start = 0;
            for &end in &ends {
                black_box(Id::of_chunk(&data[start..end]));
                start = end;
            }
        })
    });
    // B9: the figure that has to reach 1 GB/s on one core.
    g.bench_function("gear_cuts_blake3_1thread", |b| {
        b.iter(|| {
            one_thread(|| {
                let ends = lode::chunk::cuts(black_box(&data));
                let mut ids = Vec::with_capacity(ends.len());
                let mut start = 0;
                for &end in &ends {
                    ids.push(Id::of_chunk(&data[start..end]));
                    start = end;
                }
                ids
            })
        })
    });
    g.finish();
}

/// Compress `data` in [`BLOCK`]s with one reused zstd context; returns the
/// stored size (a block that does not shrink would be stored raw, so it
/// counts at its raw size, as in lode).
fn zstd_blocks(ctx: &mut zstd::bulk::Compressor<'_>, data: &[u8], out: &mut Vec<u8>) -> usize {
    let mut stored = 0;
    for block in data.chunks(BLOCK) {
        out.clear();
        let n = ctx
            .compress_to_buffer(block, out)
            .expect("output buffer holds the zstd bound");
        stored += n.min(block.len());
    }
    stored
}

/// bf16 byte grouping: the high bytes (sign, exponent, top mantissa bit)
/// of a block through zstd, the low bytes (mantissa noise) stored raw.
fn grouped_blocks(
    ctx: &mut zstd::bulk::Compressor<'_>,
    data: &[u8],
    high: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> usize {
    let mut stored = 0;
    for block in data.chunks(BLOCK) {
        high.clear();
        high.extend(block.chunks_exact(2).map(|p| p[1]));
        out.clear();
        let n = ctx
            .compress_to_buffer(&high[..], out)
            .expect("output buffer holds the zstd bound");
        stored += n.min(high.len()) + block.len() / 2;
    }
    stored
}

fn lode_encode_blocks(data: &[u8]) -> usize {
    data.chunks(BLOCK)
        .map(|block| match compress::encode(block) {
            (_, Some(packed)) => packed.len(),
            (_, None) => block.len(),
        })
        .sum()
}

fn bench_compress(c: &mut Criterion) {
    let inputs = inputs();
    let cases: [(&str, &[u8]); 2] = [("fp16", &inputs.fp16), ("bf16", &inputs.bf16)];
    let mut ctx1 = zstd::bulk::Compressor::new(1).expect("zstd level 1 context");
    let mut ctx3 = zstd::bulk::Compressor::new(3).expect("zstd level 3 context");
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(BLOCK));
    let mut high = Vec::with_capacity(BLOCK / 2);

    // Ratios once: criterion measures time, not size.
    for (name, data) in cases {
        let ratio = |stored: usize| data.len() as f64 / stored as f64;
        eprintln!(
            "compress: 16 MiB {name} weights (σ={SIGMA}) in 64 KiB blocks -> lode encode {:.3} x, zstd-1 {:.3} x, zstd-3 {:.3} x, byte-grouped zstd-1 {:.3} x, byte-grouped zstd-3 {:.3} x",
            ratio(lode_encode_blocks(data)),
            ratio(zstd_blocks(&mut ctx1, data, &mut out)),
            ratio(zstd_blocks(&mut ctx3, data, &mut out)),
            ratio(grouped_blocks(&mut ctx1, data, &mut high, &mut out)),
            ratio(grouped_blocks(&mut ctx3, data, &mut high, &mut out)),
        );
    }

    let mut g = group(c, "compress", INPUT);
    for (name, data) in cases {
        g.bench_function(format!("lode_encode/{name}"), |b| {
            b.iter(|| lode_encode_blocks(black_box(data)))
        });
        g.bench_function(format!("zstd1/{name}"), |b| {
            b.iter(|| zstd_blocks(&mut ctx1, black_box(data), &mut out))
        });
        g.bench_function(format!("zstd3/{name}"), |b| {
            b.iter(|| zstd_blocks(&mut ctx3, black_box(data), &mut out))
        });
    }
    let bf16 = &inputs.bf16[..];
    g.bench_function("grouped_zstd1/bf16", |b| {
        b.iter(|| grouped_blocks(&mut ctx1, black_box(bf16), &mut high, &mut out))
    });

    // Decoding is what a checkout or a mount pays on every read (B4, B11).
    let encoded: Vec<(Codec, Vec<u8>, usize)> = bf16
        .chunks(BLOCK)
        .map(|block| {
            let (codec, packed) = compress::encode(block);
            (codec, packed.unwrap_or_else(|| block.to_vec()), block.len())
        })
        .collect();
    g.bench_function("lode_decode/bf16", |b| {
        b.iter(|| {
            for (codec, stored, raw_len) in &encoded {
                black_box(
                    compress::decode(*codec, stored, *raw_len).expect("bytes encoded above decode"),
                );
            }
        })
    });
    g.finish();
}

fn bench_pack(c: &mut Criterion) {
    let data = inputs().bf16;
    let ends = lode::chunk::cuts(&data);
    let records: Vec<(Id, Codec, usize, Vec<u8>)> = lengths(&ends)
        .scan(0, |start, len| {
            let bytes = &data[*start..*start + len];
            *start += len;
            let (codec, packed) = compress::encode(bytes);
            Some((
                Id::of_chunk(bytes),
                codec,
                len,
                packed.unwrap_or_else(|| bytes.to_vec()),
            ))
        })
        .collect();
    let dir = tempfile::tempdir().expect("a temporary directory for packs");
    let (tmp, packs) = (dir.path().join("tmp"), dir.path().join("packs"));
    for d in [&tmp, &packs] {
        std::fs::create_dir_all(d).expect("create pack directories");
    }

    // Each iteration writes a 16 MiB pack and fsyncs it: its speed is the
    // disk's as much as lode's. The same bytes give the same pack id, so
    // the directory holds one pack however long this runs.
    let mut g = group(c, "pack", data.len());
    g.bench_function("write_16MiB_fsync", |b| {
        b.iter(|| {
            let mut w = PackWriter::create(&tmp).expect("create pack");
            for (id, codec, raw_len, stored) in &records {
                w.append(Kind::Chunk, *id, *codec, *raw_len, stored)
                    .expect("append record");
            }
            w.finish(&packs).expect("finish pack")
        })
    });
    // One core's whole ingest: cut, hash, encode, append, finish.
    g.bench_function("ingest_bf16_1thread", |b| {
        b.iter(|| {
            one_thread(|| {
                let ends = lode::chunk::cuts(black_box(&data));
                let mut w = PackWriter::create(&tmp).expect("create pack");
                let mut start = 0;
                for &end in &ends {
                    let bytes = &data[start..end];
                    let (codec, packed) = compress::encode(bytes);
                    let stored = packed.as_deref().unwrap_or(bytes);
                    w.append(Kind::Chunk, Id::of_chunk(bytes), codec, bytes.len(), stored)
                        .expect("append record");
                    start = end;
                }
                w.finish(&packs).expect("finish pack")
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench_chunk, bench_compress, bench_pack);
criterion_main!(benches);
