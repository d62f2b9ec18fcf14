//! Checks shared by the fuzz targets: what must hold of every answer.

#![allow(dead_code)]

use offramp_common::codec;
use offramp_proto::Tensor;

/// Longest error message a target accepts: values a peer chose must be
/// echoed bounded (see `offramp_common::codec::echo`), never whole.
pub const MAX_MESSAGE: usize = 2048;

/// Decodes `t` and checks what the codec promises: no panic; on success the
/// shape is the tensor's, the value count is the shape's element count, every
/// value is finite and the payload was within `limit`; on failure a bounded
/// message.
pub fn tensor(t: &Tensor, limit: usize) -> Option<Vec<f32>> {
    match codec::decode(t, limit) {
        Ok((shape, values)) => {
            assert!(!shape.is_empty(), "decoded an empty shape");
            assert_eq!(shape.len(), t.shape.len(), "decoded shape rank differs");
            for (&got, &sent) in shape.iter().zip(&t.shape) {
                assert_eq!(got, sent as usize, "decoded shape differs");
                assert!(got > 0, "decoded a zero dimension");
            }
            let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).expect("decoded an overflowing shape");
            assert_eq!(values.len(), count, "value count is not the shape's element count");
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                panic!("decoded a non-finite value {} at {i}", values[i]);
            }
            assert!(t.data.len() <= limit, "accepted {} bytes over the limit {limit}", t.data.len());
            Some(values)
        }
        Err(e) => {
            let m = e.to_string();
            assert!(m.len() <= MAX_MESSAGE, "codec error message of {} bytes: {}", m.len(), &m[..200]);
            None
        }
    }
}
