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
