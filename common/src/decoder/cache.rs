//! A session's KV cache for the layers one side holds.

use candle_core::{DType, Device, Tensor};

use super::config::DecoderConfig;

/// Keys and values of one layer: `[kv_heads, capacity, head_dim]` buffers
/// filled up to the session's length.
#[derive(Debug)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
}

/// The KV cache of layers `start..end` for one session. Grows in chunks (no
/// copy of the whole cache per token); [`KvCache::truncate`] rolls it back.
#[derive(Debug)]
pub struct KvCache {
    start: usize,
    layers: Vec<Option<LayerCache>>,
    len: usize,
    capacity: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// Positions added per growth step.
const CHUNK: usize = 256;

impl KvCache {
    /// An empty cache for layers `layers` of `config`.
    pub fn new(config: &DecoderConfig, layers: std::ops::Range<usize>) -> Self {
        Self {
            start: layers.start,
            layers: (layers.start..layers.end).map(|_| None).collect(),
            len: 0,
            capacity: 0,
            kv_heads: config.kv_heads,
            head_dim: config.head_dim(),
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes reserved (what a memory budget counts).
    pub fn bytes(&self) -> usize {
        self.layers.len() * 2 * self.kv_heads * self.capacity * self.head_dim * 4
    }

    /// Bytes the cache will reserve once it holds `len` positions.
    pub fn bytes_at(&self, len: usize) -> usize {
        let capacity = len.div_ceil(CHUNK) * CHUNK;
        self.layers.len() * 2 * self.kv_heads * capacity.max(self.capacity) * self.head_dim * 4
    }

    /// Forgets positions from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends `t` positions of layer `layer` (`k`, `v`: `[kv_heads, t,
    /// head_dim]`) and returns the layer's keys and values for positions
    /// `0..len + t`. All layers of a step append the same `t`; the length
    /// advances with [`KvCache::advance`].
    pub(crate) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let t = k.dim(1)?;
        let need = self.len + t;
        if need > self.capacity {
            self.grow(need, k.device())?;
        }
        let slot = self.layers[layer - self.start].as_mut().expect("grown above");
        slot.k.slice_set(&k.contiguous()?, 1, self.len)?;
        slot.v.slice_set(&v.contiguous()?, 1, self.len)?;
        Ok((slot.k.narrow(1, 0, need)?, slot.v.narrow(1, 0, need)?))
    }

    /// Counts the `t` positions a step appended to every layer.
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    fn grow(&mut self, need: usize, device: &Device) -> candle_core::Result<()> {
        let capacity = need.div_ceil(CHUNK) * CHUNK;
        for slot in self.layers.iter_mut() {
            let k = Tensor::zeros((self.kv_heads, capacity, self.head_dim), DType::F32, device)?;
            let v = Tensor::zeros((self.kv_heads, capacity, self.head_dim), DType::F32, device)?;
            if let Some(old) = slot.take() {
                if self.len > 0 {
                    k.slice_set(&old.k.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                    v.slice_set(&old.v.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                }
            }
            *slot = Some(LayerCache { k, v });
        }
        self.capacity = capacity;
        Ok(())
    }
}
