use super::*;

fn sample(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 37 % 101) as f32 - 30.0) / 7.0).collect()
}

#[test]
fn f32_round_trip_is_exact() {
    let v = sample(2 * 3 * 4);
    let t = encode(&v, &[2, 3, 4], Encoding::F32);
    assert_eq!(t.data.len(), 96);
    let (shape, back) = decode(&t, 1 << 20).unwrap();
    assert_eq!(shape, vec![2, 3, 4]);
    assert_eq!(back, v);
}

#[test]
fn half_precision_within_bound() {
    let v = sample(64);
    for (enc, rel) in [(Encoding::F16, 1.0 / 2048.0), (Encoding::Bf16, 1.0 / 256.0)] {
        let t = encode(&v, &[64], enc);
        assert_eq!(t.data.len(), 128);
        let (_, back) = decode(&t, 1 << 20).unwrap();
        for (a, b) in v.iter().zip(&back) {
            assert!((a - b).abs() <= a.abs() * rel + 1e-7, "{enc:?}: {a} vs {b}");
        }
    }
}

#[test]
fn int8_per_channel_within_half_a_step() {
    // Channel 1 has a 100x larger range than channel 0.
    let mut v = sample(50);
    v.extend(sample(50).iter().map(|x| x * 100.0));
    let t = encode(&v, &[2, 5, 10], Encoding::Int8);
    assert_eq!(t.data.len(), 100);
    assert_eq!(t.scales.len(), 2);
    let (_, back) = decode(&t, 1 << 20).unwrap();
    for c in 0..2 {
        let bound = t.scales[c] / 2.0 + 1e-5;
        for i in c * 50..(c + 1) * 50 {
            assert!((v[i] - back[i]).abs() <= bound * (1.0 + 1e-4), "c{c} {} vs {}", v[i], back[i]);
        }
    }
    // A constant channel decodes exactly.
    let t = encode(&[3.5; 8], &[8], Encoding::Int8);
    assert_eq!(decode(&t, 1 << 20).unwrap().1, vec![3.5; 8]);
}

#[test]
fn rejects_bad_payloads() {
    let good = encode(&sample(12), &[3, 4], Encoding::F32);
    let mut t = good.clone();
    t.data = t.data.slice(0..44);
    assert!(matches!(decode(&t, 1 << 20), Err(CodecError::ByteLength { expected: 48, got: 44, .. })));
    let mut t = good.clone();
    t.shape = vec![];
    assert_eq!(decode(&t, 1 << 20), Err(CodecError::EmptyShape));
    let mut t = good.clone();
    t.shape = vec![3, 0];
    assert!(matches!(decode(&t, 1 << 20), Err(CodecError::ZeroDimension { axis: 1, .. })));
    let mut t = good.clone();
    t.encoding = 42;
    assert_eq!(decode(&t, 1 << 20), Err(CodecError::UnknownEncoding(42)));
    t.encoding = 0;
    assert_eq!(decode(&t, 1 << 20), Err(CodecError::UnknownEncoding(0)));
    let mut t = good.clone();
    t.data = Bytes::new();
    assert_eq!(decode(&t, 1 << 20), Err(CodecError::Empty));
    assert!(matches!(decode(&good, 16), Err(CodecError::TooLarge { got: 48, limit: 16 })));
    let mut v = sample(12);
    v[5] = f32::NAN;
    assert_eq!(
        decode(&encode(&v, &[12], Encoding::F32), 1 << 20),
        Err(CodecError::NonFinite { index: 5, encoding: "f32", value: "NaN" })
    );
    v[5] = f32::INFINITY;
    assert_eq!(
        decode(&encode(&v, &[12], Encoding::F16), 1 << 20),
        Err(CodecError::NonFinite { index: 5, encoding: "f16", value: "+infinity" })
    );
    let mut t = encode(&sample(12), &[3, 4], Encoding::Int8);
    t.scales.pop();
    assert!(matches!(decode(&t, 1 << 20), Err(CodecError::QuantParams { expected: 3, .. })));
}

#[test]
fn shape_problems_are_named_as_what_they_are() {
    let good = encode(&sample(12), &[3, 4], Encoding::F32);
    // An element count that overflows is an overflow, not a zero dimension.
    let mut t = good.clone();
    t.shape = vec![u32::MAX, u32::MAX, u32::MAX];
    let e = decode(&t, 1 << 20).unwrap_err();
    assert!(matches!(e, CodecError::CountOverflow { what, .. } if what.starts_with("element count")), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("overflows") && !msg.contains("zero"), "{msg}");
    assert!(msg.contains("[4294967295, 4294967295, 4294967295]"), "{msg}");
    // The element count fits (64-bit) but the byte count does not.
    let mut t = good.clone();
    t.shape = vec![u32::MAX, u32::MAX];
    let e = decode(&t, 1 << 20).unwrap_err();
    let what = if usize::BITS == 64 { "byte count" } else { "element count" };
    assert!(matches!(e, CodecError::CountOverflow { what: w, .. } if w.starts_with(what)), "{e:?}");
    // Zero dimension: which one.
    t.shape = vec![3, 4, 0, 2];
    let msg = decode(&t, 1 << 20).unwrap_err().to_string();
    assert!(msg.contains("zero at dimension 2") && msg.contains("[3, 4, 0, 2]"), "{msg}");
    assert!(decode(&Tensor { shape: vec![], ..good.clone() }, 1 << 20)
        .unwrap_err()
        .to_string()
        .contains("at least one dimension"));
    // A shape with 100,000 dimensions is echoed bounded.
    let mut t = good.clone();
    t.shape = vec![1; 100_000];
    let msg = decode(&t, 1 << 20).unwrap_err().to_string();
    assert!(msg.len() < 200 && msg.contains("(100000 dims)") && msg.contains("needs 4"), "{msg}");
}

#[test]
fn int8_parameter_problems_name_the_field_and_channel() {
    let good = encode(&sample(12), &[3, 4], Encoding::Int8);
    let mut t = good.clone();
    t.zero_points[1] = f32::NAN;
    let e = decode(&t, 1 << 20).unwrap_err();
    assert!(matches!(e, CodecError::QuantParamNotFinite { field: "zero point", channel: 1, .. }), "{e:?}");
    assert!(e.to_string().contains("int8 zero point of channel 1 is NaN"), "{e}");
    let mut t = good.clone();
    t.scales[2] = f32::NEG_INFINITY;
    let e = decode(&t, 1 << 20).unwrap_err();
    assert!(matches!(e, CodecError::QuantParamNotFinite { field: "scale", channel: 2, .. }), "{e:?}");
    assert!(e.to_string().contains("int8 scale of channel 2 is -inf"), "{e}");
    // Finite parameters whose elements decode to infinity: the element, its
    // channel and the parameters are named, not "a non-finite element".
    let mut t = good.clone();
    t.scales[1] = f32::MAX;
    t.zero_points[1] = f32::MAX;
    let e = decode(&t, 1 << 20).unwrap_err();
    match e {
        CodecError::QuantOverflow { index, channel: 1, q, .. } => {
            assert!((4..8).contains(&index) && q > 0, "{index} {q}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn lz4_round_trips_and_only_when_it_pays() {
    // Post-ReLU-like: mostly zeros.
    let v: Vec<f32> = (0..4 * 14 * 14).map(|i| if i % 5 == 0 { i as f32 / 10.0 } else { 0.0 }).collect();
    for enc in ENCODINGS {
        let plain = encode(&v, &[4, 14, 14], enc);
        let mut t = plain.clone();
        compress(&mut t, Compression::Lz4);
        assert_eq!(t.compression, Compression::Lz4 as i32, "{enc:?}");
        // Zeros are 4 of every 5 values: runs of zero bytes, and for int8 a
        // fifth of the bytes left (distinct values) plus the run codes.
        let most = if enc == Encoding::Int8 { plain.data.len() * 3 / 4 } else { plain.data.len() / 2 };
        assert!(t.data.len() < most, "{enc:?}: {} of {}", t.data.len(), plain.data.len());
        assert_eq!(decode(&t, 1 << 20).unwrap(), decode(&plain, 1 << 20).unwrap(), "{enc:?}");
    }
    // Incompressible bytes stay as they are.
    let noise: Vec<f32> = (0..256u32).map(|i| (i.wrapping_mul(2_654_435_761) as f32).sqrt()).collect();
    let mut t = encode(&noise, &[256], Encoding::F32);
    compress(&mut t, Compression::Lz4);
    assert_eq!(t.compression, Compression::None as i32);
    assert_eq!(decode(&t, 1 << 20).unwrap().1, noise);
    let mut none = encode(&v, &[4, 14, 14], Encoding::F32);
    compress(&mut none, Compression::None);
    assert_eq!(none.data.len(), 4 * 4 * 14 * 14);
    assert_eq!(parse_compression("lz4"), Ok(Compression::Lz4));
    assert!(parse_compression("zip").is_err());
}

#[test]
fn bad_compressed_payloads_are_refused() {
    let v = vec![0.0f32; 1024];
    let mut t = encode(&v, &[1024], Encoding::F32);
    compress(&mut t, Compression::Lz4);
    assert!(t.data.len() < 100);
    // The decompressed size counts against the cap too (no decompression bombs).
    assert_eq!(decode(&t, 1000), Err(CodecError::TooLarge { got: 4096, limit: 1000 }));
    // Claims a bigger shape than the bytes decompress to: the message says
    // it was LZ4, and the decompressed size expected and got.
    let mut big = t.clone();
    big.shape = vec![1100];
    let e = decode(&big, 1 << 20).unwrap_err();
    assert!(matches!(e, CodecError::Lz4Short { expected: 4400, got: 4096, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("lz4") && msg.contains("decompresses to 4096 bytes") && msg.contains("needs 4400"), "{msg}");
    // A smaller shape: decompression would overrun and stops.
    let mut small = t.clone();
    small.shape = vec![512];
    let e = decode(&small, 1 << 20).unwrap_err();
    assert!(matches!(e, CodecError::Lz4TooLong { expected: 2048, .. }), "{e:?}");
    assert!(e.to_string().contains("more than the 2048 bytes"), "{e}");
    let mut garbage = t.clone();
    garbage.shape = vec![64];
    garbage.data = Bytes::from_static(&[0xff, 0xff, 0xff, 0x00, 0x01]);
    assert!(matches!(decode(&garbage, 1 << 20), Err(CodecError::Decompress { expected: 256, compressed: 5, .. })));
    // A truncated block: named as LZ4, with the sizes.
    let mut cut = t.clone();
    cut.data = t.data.slice(0..t.data.len() / 2);
    let e = decode(&cut, 1 << 20).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("lz4") && msg.contains("4096"), "{msg}");
    assert!(
        matches!(e, CodecError::Decompress { .. } | CodecError::Lz4Short { .. } | CodecError::Lz4Ratio { .. }),
        "{e:?}"
    );
    let mut unknown = t.clone();
    unknown.compression = 7;
    assert_eq!(decode(&unknown, 1 << 20), Err(CodecError::UnknownCompression(7)));
}

/// Found by the frame fuzzer: a few LZ4 bytes claiming a shape of tens of
/// terabytes allocated the whole decompression buffer (and aborted) when the
/// payload limit was large enough to allow it. No LZ4 block can grow more
/// than 255-fold, so such a shape is refused before anything is allocated.
#[test]
fn an_lz4_shape_no_block_can_fill_is_refused_before_allocating() {
    let mut t = encode(&[0.0f32; 256], &[256], Encoding::F32);
    compress(&mut t, Compression::Lz4);
    let compressed = t.data.len();
    t.shape = vec![1 << 20, 1 << 20, 12];
    let e = decode(&t, usize::MAX).unwrap_err();
    let most = lz4_max_output(compressed);
    assert_eq!(
        e,
        CodecError::Lz4Ratio {
            shape: echo::Shape::of(&t.shape),
            encoding: "f32",
            expected: (1usize << 40) * 48,
            most,
            compressed
        }
    );
    assert!(e.to_string().contains(&format!("can decompress to at most {most} bytes")), "{e}");
    // At the bound the block is tried (and is short).
    t.shape = vec![(most / 4) as u32];
    assert!(matches!(decode(&t, usize::MAX), Err(CodecError::Lz4Short { .. } | CodecError::Lz4TooLong { .. })));
}

/// Found by the codec fuzzer: a channel whose range is below ~7e-37 has a
/// subnormal scale with no finite inverse; every element used to quantize
/// to 255. The values must still come back within scale / 2.
#[test]
fn int8_keeps_its_bound_on_subnormal_ranges() {
    let values = [1.9324188e-37f32, 3.5265548e-38, 9.4e-44];
    let t = encode(&values, &[3], Encoding::Int8);
    assert!(!(1.0 / t.scales[0]).is_finite(), "the case needs a scale without a finite inverse");
    let (_, decoded) = decode(&t, usize::MAX).unwrap();
    for (v, d) in values.iter().zip(&decoded) {
        assert!((d - v).abs() <= t.scales[0] * 0.5 + 1e-37, "sent {v:e}, decoded {d:e}");
    }
}

#[test]
fn f32_decodes_from_unaligned_bytes_and_finiteness_is_checked_whole() {
    // A payload sliced out of a larger receive buffer can start at any byte.
    let v = sample(1000);
    let t = encode(&v, &[1000], Encoding::F32);
    let mut shifted = vec![0u8];
    shifted.extend_from_slice(&t.data);
    let unaligned = Tensor { data: Bytes::from(shifted).slice(1..), ..t };
    assert_eq!(decode(&unaligned, 1 << 20).unwrap().1, v);
    assert!(all_finite(&v) && all_finite(&[]));
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut w = v.clone();
        w[999] = bad;
        assert!(!all_finite(&w));
        assert!(matches!(
            decode(&encode(&w, &[1000], Encoding::F32), 1 << 20),
            Err(CodecError::NonFinite { index: 999, .. })
        ));
    }
}
