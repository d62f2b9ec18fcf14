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
    assert!(matches!(decode(&t, 1 << 20), Err(CodecError::BadShape(_))));
    let mut t = good.clone();
    t.shape = vec![3, 0];
    assert!(matches!(decode(&t, 1 << 20), Err(CodecError::BadShape(_))));
    let mut t = good.clone();
    t.shape = vec![u32::MAX, u32::MAX, u32::MAX];
    assert!(matches!(decode(&t, 1 << 20), Err(CodecError::BadShape(_))));
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
    assert_eq!(decode(&encode(&v, &[12], Encoding::F32), 1 << 20), Err(CodecError::NonFinite { index: 5 }));
    v[5] = f32::INFINITY;
    assert_eq!(decode(&encode(&v, &[12], Encoding::F16), 1 << 20), Err(CodecError::NonFinite { index: 5 }));
    let mut t = encode(&sample(12), &[3, 4], Encoding::Int8);
    t.scales.pop();
    assert!(matches!(decode(&t, 1 << 20), Err(CodecError::QuantParams { expected: 3, .. })));
    let mut t = encode(&sample(12), &[3, 4], Encoding::Int8);
    t.zero_points[1] = f32::NAN;
    assert!(matches!(decode(&t, 1 << 20), Err(CodecError::NonFinite { .. })));
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
    // Claims a bigger shape than the bytes decompress to.
    let mut big = t.clone();
    big.shape = vec![2048];
    assert!(matches!(decode(&big, 1 << 20), Err(CodecError::ByteLength { expected: 8192, .. })));
    // A smaller shape: decompression would overrun and stops.
    let mut small = t.clone();
    small.shape = vec![512];
    assert!(matches!(decode(&small, 1 << 20), Err(CodecError::Decompress { expected: 2048, .. })));
    let mut garbage = t.clone();
    garbage.data = Bytes::from_static(&[0xff, 0xff, 0xff, 0x00, 0x01]);
    assert!(matches!(decode(&garbage, 1 << 20), Err(CodecError::Decompress { .. })));
    let mut unknown = t.clone();
    unknown.compression = 7;
    assert_eq!(decode(&unknown, 1 << 20), Err(CodecError::UnknownCompression(7)));
}
