//! The hidden-state wire codec, shared by edge and cloud.
//!
//! A tensor travels as a shape (batch excluded), an encoding and little-endian
//! element bytes in row-major order:
//!
//! | encoding | bytes/elem | error bound                                   |
//! |----------|-----------:|-----------------------------------------------|
//! | f32      | 4          | exact                                         |
//! | f16      | 2          | relative 2^-11 (IEEE half, round to nearest)  |
//! | bf16     | 2          | relative 2^-8                                 |
//! | int8     | 1          | scale/2 per element, per channel              |
//!
//! int8 is affine per channel: for a `[C, ...]` tensor each channel `c` stores
//! `q = round((x - min_c) / scale_c)` in `0..=255` with `scale_c =
//! (max_c - min_c) / 255`, and decodes to `min_c + q * scale_c` (`zero_points`
//! carries `min_c`). Per channel rather than per tensor because conv feature
//! maps differ in range by channel (after ReLU some are nearly dead, some are
//! large); one scale per tensor would spend most of the 256 levels on the
//! largest channel. A 1-D tensor is one channel. The overhead is 8 bytes a
//! channel.
//!
//! On top of the encoding, the element bytes may be compressed losslessly
//! ([`compress`], LZ4 block format): post-ReLU feature maps hold many zeros,
//! which f32 and int8 bytes keep as long runs. The edge compresses only when
//! that makes the payload smaller, so a compressed payload never costs more
//! than a plain one; `offramp codec-eval` measures what it saves.
//!
//! Decoding checks everything a peer could get wrong, and names each problem
//! as what it is: unknown encoding or compression; an empty shape, a zero
//! dimension, or an element count that overflows; byte length not matching
//! shape × element size; an LZ4 block that is not one, or decompresses to
//! fewer or more bytes than the shape needs (decompression never writes past
//! that size); missing or non-finite int8 scales and zero points, or ones so
//! large an element decodes to infinity; NaN/Inf values; and a size cap (on
//! the compressed and the decompressed size).

use bytes::Bytes;
use half::{bf16, f16};
use offramp_proto::{Compression, Encoding, Tensor};

pub use offramp_base::echo;

use echo::Shape;

/// Why a payload was rejected. Each message names the field, the element or
/// channel, and what was expected; values a peer chose are echoed bounded
/// ([`echo`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("tensor encoding {0} is not supported (expected f32, f16, bf16 or int8)")]
    UnknownEncoding(i32),
    #[error("tensor payload is empty")]
    Empty,
    #[error("tensor shape is empty: it needs at least one dimension")]
    EmptyShape,
    #[error("tensor shape {shape} has a zero at dimension {axis}: every dimension must be at least 1")]
    ZeroDimension { shape: Shape, axis: usize },
    #[error("tensor shape {shape} in {encoding} is too large: its {what} overflows a {bits}-bit count")]
    CountOverflow { shape: Shape, encoding: &'static str, what: &'static str, bits: u32 },
    #[error("tensor payload is {got} bytes, the limit is {limit}")]
    TooLarge { got: usize, limit: usize },
    #[error("tensor payload has {got} bytes, shape {shape} in {encoding} needs {expected}")]
    ByteLength { shape: Shape, encoding: &'static str, expected: usize, got: usize },
    #[error("int8 tensor needs {expected} scales and zero points (one per channel), got {scales} and {zero_points}")]
    QuantParams { expected: usize, scales: usize, zero_points: usize },
    #[error("int8 {field} of channel {channel} is {value}: scales and zero points must be finite")]
    QuantParamNotFinite { field: &'static str, channel: usize, value: f32 },
    #[error(
        "int8 element {index} (channel {channel}) decodes to {value}: zero point {zero_point} + {q} x scale {scale} \
         is not a finite f32 (the channel's scale and zero point are too large)"
    )]
    QuantOverflow { index: usize, channel: usize, q: u8, scale: f32, zero_point: f32, value: f32 },
    #[error("{encoding} tensor holds {value} at element {index}, a non-finite value: every element must be finite")]
    NonFinite { index: usize, encoding: &'static str, value: &'static str },
    #[error("tensor compression {0} is not supported (expected none or lz4)")]
    UnknownCompression(i32),
    #[error(
        "lz4 payload ({compressed} bytes) is not an lz4 block that decompresses to the {expected} bytes shape \
         {shape} in {encoding} needs: {reason}"
    )]
    Decompress { shape: Shape, encoding: &'static str, expected: usize, compressed: usize, reason: String },
    #[error(
        "lz4 payload ({compressed} bytes) decompresses to at least {at_least} bytes, more than the {expected} bytes \
         shape {shape} in {encoding} needs"
    )]
    Lz4TooLong { shape: Shape, encoding: &'static str, expected: usize, at_least: usize, compressed: usize },
    #[error(
        "lz4 payload ({compressed} bytes) decompresses to {got} bytes, shape {shape} in {encoding} needs {expected}"
    )]
    Lz4Short { shape: Shape, encoding: &'static str, expected: usize, got: usize, compressed: usize },
    #[error(
        "lz4 payload ({compressed} bytes) can decompress to at most {most} bytes, shape {shape} in {encoding} needs \
         {expected}"
    )]
    Lz4Ratio { shape: Shape, encoding: &'static str, expected: usize, most: usize, compressed: usize },
}

/// How a non-finite value reads in a message.
fn non_finite_name(v: f32) -> &'static str {
    if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "+infinity"
    } else {
        "-infinity"
    }
}

/// Bytes per element of an encoding.
pub fn element_size(encoding: Encoding) -> usize {
    match encoding {
        Encoding::F32 | Encoding::Unspecified => 4,
        Encoding::F16 | Encoding::Bf16 => 2,
        Encoding::Int8 => 1,
    }
}

/// Short name of an encoding (`f32`, `f16`, `bf16`, `int8`).
pub fn encoding_name(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::F32 => "f32",
        Encoding::F16 => "f16",
        Encoding::Bf16 => "bf16",
        Encoding::Int8 => "int8",
        Encoding::Unspecified => "unspecified",
    }
}

/// Parses `f32`, `f16`, `bf16` or `int8`.
pub fn parse_encoding(s: &str) -> Result<Encoding, UnknownName> {
    match s {
        "f32" => Ok(Encoding::F32),
        "f16" => Ok(Encoding::F16),
        "bf16" => Ok(Encoding::Bf16),
        "int8" => Ok(Encoding::Int8),
        other => Err(UnknownName { what: "encoding", name: other.to_string(), expected: "f32, f16, bf16 or int8" }),
    }
}

/// A name (of an encoding or compression) this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?} (expected {expected})")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
    pub expected: &'static str,
}

/// `deserialize_with` helpers: config files name encodings and compressions
/// as the flags do.
pub mod serde_names {
    use offramp_proto::{Compression, Encoding};
    use serde::{Deserialize, Deserializer};

    pub fn encoding<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Encoding>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::parse_encoding(&s).map_err(serde::de::Error::custom))
            .transpose()
    }

    pub fn encodings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Encoding>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| super::parse_encoding(s).map_err(serde::de::Error::custom))
            .collect()
    }

    pub fn compression<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Compression>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::parse_compression(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Short name of a compression (`none`, `lz4`).
pub fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "none",
        Compression::Lz4 => "lz4",
    }
}

/// Parses `none` or `lz4`.
pub fn parse_compression(s: &str) -> Result<Compression, UnknownName> {
    match s {
        "none" => Ok(Compression::None),
        "lz4" => Ok(Compression::Lz4),
        other => Err(UnknownName { what: "compression", name: other.to_string(), expected: "none or lz4" }),
    }
}

/// Compressions this build decodes besides none.
pub const COMPRESSIONS: [Compression; 1] = [Compression::Lz4];

/// Compresses an encoded tensor's bytes with `compression` when that makes
/// them smaller; otherwise (or for `None`) leaves the tensor as it is.
pub fn compress(t: &mut Tensor, compression: Compression) {
    if compression == Compression::None || t.compression != Compression::None as i32 {
        return;
    }
    let packed = lz4_flex::block::compress(&t.data);
    if packed.len() < t.data.len() {
        t.data = Bytes::from(packed);
        t.compression = compression as i32;
    }
}

/// Every encoding this build speaks.
pub const ENCODINGS: [Encoding; 4] = [Encoding::F32, Encoding::F16, Encoding::Bf16, Encoding::Int8];

/// `values` as little-endian bytes: one copy on a little-endian machine
/// (the wire's byte order), a conversion per value elsewhere. (The
/// per-value loop, and its twin in [`decode`], stood out in the I/O
/// thread's profile of 200 KB transformer states.)
fn f32_to_le_bytes(values: &[f32]) -> Bytes {
    if cfg!(target_endian = "little") {
        Bytes::copy_from_slice(bytemuck::cast_slice(values))
    } else {
        Bytes::from(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
    }
}

/// Whether every value is finite, with no early exit so that it compiles
/// to SIMD compares (an early-exit scan is a branch per value; on a 200 KB
/// state it stood out in the I/O thread's profile).
pub fn all_finite(values: &[f32]) -> bool {
    values.iter().fold(true, |ok, v| ok & v.is_finite())
}

/// The index of the first NaN or infinite value, if any.
fn first_non_finite(values: &[f32]) -> Option<usize> {
    if all_finite(values) {
        None
    } else {
        values.iter().position(|v| !v.is_finite())
    }
}

/// Little-endian `data` (a multiple of 4 bytes, at any alignment) as f32s:
/// one copy on a little-endian machine, a conversion per value elsewhere.
fn f32_from_le_bytes(data: &[u8]) -> Vec<f32> {
    if cfg!(target_endian = "little") {
        bytemuck::pod_collect_to_vec(data)
    } else {
        data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
}

/// Encodes `values` of shape `shape` (batch excluded).
pub fn encode(values: &[f32], shape: &[usize], encoding: Encoding) -> Tensor {
    debug_assert_eq!(values.len(), shape.iter().product::<usize>());
    let shape_u32: Vec<u32> = shape.iter().map(|&d| d as u32).collect();
    let mut out = Tensor { shape: shape_u32, encoding: encoding as i32, ..Default::default() };
    out.data = match encoding {
        Encoding::F32 | Encoding::Unspecified => {
            out.encoding = Encoding::F32 as i32;
            f32_to_le_bytes(values)
        }
        Encoding::F16 => Bytes::from(values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect::<Vec<_>>()),
        Encoding::Bf16 => Bytes::from(values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect::<Vec<_>>()),
        Encoding::Int8 => {
            let channels = if shape.len() > 1 { shape[0] } else { 1 };
            let per = values.len() / channels.max(1);
            let mut buf = Vec::with_capacity(values.len());
            for chunk in values.chunks(per.max(1)) {
                let (lo, hi) = chunk.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
                let scale = if hi > lo { (hi - lo) / 255.0 } else { 0.0 };
                let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                let quantize = |q: f32| q.round().clamp(0.0, 255.0) as u8;
                if inv.is_finite() {
                    buf.extend(chunk.iter().map(|&v| quantize((v - lo) * inv)));
                } else {
                    // A subnormal scale (a channel range below ~7e-37) has no
                    // finite inverse: divide instead (found by the codec fuzzer).
                    buf.extend(chunk.iter().map(|&v| quantize((v - lo) / scale)));
                }
                out.scales.push(scale);
                out.zero_points.push(lo);
            }
            Bytes::from(buf)
        }
    };
    out
}

/// Decodes a payload, checking it completely. `max_bytes` caps the payload size.
pub fn decode(t: &Tensor, max_bytes: usize) -> Result<(Vec<usize>, Vec<f32>), CodecError> {
    let encoding = Encoding::try_from(t.encoding)
        .ok()
        .filter(|e| *e != Encoding::Unspecified)
        .ok_or(CodecError::UnknownEncoding(t.encoding))?;
    let compression =
        Compression::try_from(t.compression).map_err(|_| CodecError::UnknownCompression(t.compression))?;
    if t.data.is_empty() {
        return Err(CodecError::Empty);
    }
    if t.data.len() > max_bytes {
        return Err(CodecError::TooLarge { got: t.data.len(), limit: max_bytes });
    }
    let name = encoding_name(encoding);
    let (count, expected) = element_and_byte_count(&t.shape, encoding)?;
    let byte_length = |got| CodecError::ByteLength { shape: Shape::of(&t.shape), encoding: name, expected, got };
    let unpacked;
    let data: &[u8] = match compression {
        Compression::None => {
            if t.data.len() != expected {
                return Err(byte_length(t.data.len()));
            }
            &t.data
        }
        Compression::Lz4 => {
            if expected > max_bytes {
                return Err(CodecError::TooLarge { got: expected, limit: max_bytes });
            }
            unpacked = decompress_lz4(t, name, expected)?;
            &unpacked
        }
    };
    let values: Vec<f32> = match encoding {
        Encoding::F32 | Encoding::Unspecified => f32_from_le_bytes(data),
        Encoding::F16 => data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Encoding::Bf16 => data.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Encoding::Int8 => return Ok((t.shape.iter().map(|&d| d as usize).collect(), dequantize(t, data, count)?)),
    };
    if let Some(index) = first_non_finite(&values) {
        return Err(CodecError::NonFinite { index, encoding: name, value: non_finite_name(values[index]) });
    }
    Ok((t.shape.iter().map(|&d| d as usize).collect(), values))
}

/// Checks a shape and returns its element count and byte count in
/// `encoding`: an empty shape, a zero dimension and a count that overflows
/// are each named as such.
fn element_and_byte_count(shape: &[u32], encoding: Encoding) -> Result<(usize, usize), CodecError> {
    if shape.is_empty() {
        return Err(CodecError::EmptyShape);
    }
    if let Some(axis) = shape.iter().position(|&d| d == 0) {
        return Err(CodecError::ZeroDimension { shape: Shape::of(shape), axis });
    }
    let overflow = |what| CodecError::CountOverflow {
        shape: Shape::of(shape),
        encoding: encoding_name(encoding),
        what,
        bits: usize::BITS,
    };
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
        .ok_or_else(|| overflow("element count (the product of the dimensions)"))?;
    let bytes = count
        .checked_mul(element_size(encoding))
        .ok_or_else(|| overflow("byte count (elements x bytes per element)"))?;
    Ok((count, bytes))
}

/// The most bytes an LZ4 block of `compressed` bytes can decompress to: a
/// match grows by at most 255 bytes per input byte (its length's extension
/// bytes), plus a sequence's fixed part.
pub fn lz4_max_output(compressed: usize) -> usize {
    compressed.saturating_mul(255).saturating_add(64)
}

/// Decompresses an LZ4 block into exactly `expected` bytes (never more).
/// A shape no block of this size can fill is refused before anything is
/// allocated: without that, a few bytes claiming a huge shape would
/// allocate it whenever the payload limit allows.
fn decompress_lz4(t: &Tensor, encoding: &'static str, expected: usize) -> Result<Vec<u8>, CodecError> {
    let shape = || Shape::of(&t.shape);
    let compressed = t.data.len();
    let most = lz4_max_output(compressed);
    if expected > most {
        return Err(CodecError::Lz4Ratio { shape: shape(), encoding, expected, most, compressed });
    }
    let mut buf = vec![0u8; expected];
    let n = lz4_flex::block::decompress_into(&t.data, &mut buf).map_err(|e| match e {
        lz4_flex::block::DecompressError::OutputTooSmall { expected: at_least, .. } => {
            CodecError::Lz4TooLong { shape: shape(), encoding, expected, at_least, compressed }
        }
        other => CodecError::Decompress { shape: shape(), encoding, expected, compressed, reason: other.to_string() },
    })?;
    if n != expected {
        return Err(CodecError::Lz4Short { shape: shape(), encoding, expected, got: n, compressed });
    }
    Ok(buf)
}

/// Dequantizes int8 `data` (already `count` bytes): per-channel parameters
/// checked first, then every element's value.
fn dequantize(t: &Tensor, data: &[u8], count: usize) -> Result<Vec<f32>, CodecError> {
    let channels = if t.shape.len() > 1 { t.shape[0] as usize } else { 1 };
    if t.scales.len() != channels || t.zero_points.len() != channels {
        return Err(CodecError::QuantParams {
            expected: channels,
            scales: t.scales.len(),
            zero_points: t.zero_points.len(),
        });
    }
    for (field, params) in [("scale", &t.scales), ("zero point", &t.zero_points)] {
        if let Some(channel) = params.iter().position(|v| !v.is_finite()) {
            return Err(CodecError::QuantParamNotFinite { field, channel, value: params[channel] });
        }
    }
    let per = count / channels;
    let mut out = Vec::with_capacity(count);
    for (channel, chunk) in data.chunks(per).enumerate() {
        let (scale, zero_point) = (t.scales[channel], t.zero_points[channel]);
        for (i, &q) in chunk.iter().enumerate() {
            let value = zero_point + q as f32 * scale;
            if !value.is_finite() {
                return Err(CodecError::QuantOverflow {
                    index: channel * per + i,
                    channel,
                    q,
                    scale,
                    zero_point,
                    value,
                });
            }
            out.push(value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
