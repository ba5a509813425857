//! Property tests that feed every parser of untrusted bytes arbitrary and
//! mutated input (invariant I6): each must return a value or an error,
//! never panic, hang or allocate beyond its bounds. (cargo-fuzz needs a
//! nightly toolchain, which this project cannot assume; these run in every
//! `cargo test`.)

#![cfg(test)]

use proptest::prelude::*;

use crate::id::Id;
use crate::index::{Entry, Kind, Table};
use crate::layout;
use crate::pointer::Pointer;
use crate::recipe::Recipe;

fn valid_recipe() -> (Recipe, Vec<u8>) {
    let r = Recipe {
        size: 5,
        chunks: vec![(Id::of_chunk(b"ab"), 2), (Id::of_chunk(b"cde"), 3)],
        tensors: vec![layout::Tensor {
            name: "w".into(),
            dtype: "F16".into(),
            shape: vec![1],
            start: 0,
            end: 2,
        }],
    };
    let bytes = r.encode();
    (r, bytes)
}

fn valid_table() -> Vec<u8> {
    let pack = Id::of_chunk(b"pack");
    let mut entries: Vec<Entry> = (0..20u8)
        .map(|n| Entry {
            id: Id::of_chunk(&[n]),
            pack,
            offset: 16 + n as u64 * 100,
            stored_len: 56,
            raw_len: 56,
            kind: Kind::Chunk,
            codec: crate::compress::Codec::Raw,
        })
        .collect();
    crate::index::encode(&[pack], &mut entries)
}

/// Up to `n` random byte flips, truncation or extension of `base`.
fn mutate(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len();
    (
        proptest::collection::vec((0..len.max(1), any::<u8>()), 0..8),
        0..=len + 16,
        any::<u8>(),
    )
        .prop_map(move |(flips, new_len, fill)| {
            let mut b = base.clone();
            for (at, x) in flips {
                if at < b.len() {
                    b[at] ^= x;
                }
            }
            b.resize(new_len, fill);
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn pointer_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Pointer::parse(&bytes);
        let mut p = b"version lode/1\noid b3:".to_vec();
        p.extend_from_slice(&bytes);
        let _ = Pointer::parse(&p);
    }

    #[test]
    fn recipe_decoder_never_panics(bytes in mutate(valid_recipe().1)) {
        let (r, _) = valid_recipe();
        if let Ok(decoded) = Recipe::decode(&bytes, &r.file_id()) {
            // Anything accepted must be exactly the recipe of that id.
            prop_assert_eq!(decoded.chunks, r.chunks);
        }
    }

    #[test]
    fn index_table_parser_never_panics(bytes in mutate(valid_table())) {
        if let Ok(t) = Table::parse(&bytes[..], true) {
            for e in t.iter() {
                let _ = e;
            }
            let _ = t.lookup(&Id::of_chunk(&[3]));
        }
        if let Ok(t) = Table::parse(&bytes[..], false) {
            let _ = t.lookup(&Id::of_chunk(&[3]));
            let _ = t.iter().count();
        }
    }

    #[test]
    fn safetensors_layout_never_panics(json in "[ -~]{0,200}", n in any::<u64>(), size in 0u64..1_000_000) {
        let mut head = n.to_le_bytes().to_vec();
        head.extend_from_slice(json.as_bytes());
        let l = layout::detect(&head, size);
        prop_assert_eq!(*l.segments.last().unwrap(), size);
        prop_assert!(l.segments.windows(2).all(|w| w[0] < w[1]));
        let mut real = (json.len() as u64).to_le_bytes().to_vec();
        real.extend_from_slice(json.as_bytes());
        let l = layout::detect(&real, size);
        prop_assert!(l.segments.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn pack_reader_never_panics(bytes in mutate(sample_pack())) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pack");
        std::fs::write(&path, &bytes).unwrap();
        let p = crate::pack::PackFile::open(&path).unwrap();
        if let Ok(footer) = p.footer() {
            for e in &footer {
                let _ = p.read_record(e);
            }
            let _ = p.read_run(&footer); // in id order: offsets out of order
            let mut by_offset = footer.clone();
            by_offset.sort_by_key(|e| e.offset);
            let _ = p.read_run(&by_offset);
        }
        for e in p.scan() {
            // Whatever a scan recovers reads back and verifies.
            prop_assert!(p.read_record(&e).is_ok());
        }
    }
}

fn sample_pack() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut w = crate::pack::PackWriter::create(dir.path()).expect("writer");
    for n in 0..4u8 {
        let raw = vec![n; 300 + n as usize];
        let (codec, stored) = crate::compress::encode(&raw);
        let stored = stored.unwrap_or_else(|| raw.clone());
        w.append(Kind::Chunk, Id::of_chunk(&raw), codec, raw.len(), &stored)
            .expect("append");
    }
    let (id, _) = w.finish(dir.path()).expect("finish");
    std::fs::read(dir.path().join(format!("{}.pack", id.to_hex()))).expect("read")
}
