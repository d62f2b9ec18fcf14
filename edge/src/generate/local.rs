//! The edge's own decoder for one generation: layers `0..K` with their KV
//! cache, and the layer-K state of every position (what a new cloud
//! session is replayed from). One owner, two operations: [`LocalDecoder::step`]
//! (runs off the async runtime, on a blocking thread) and
//! [`LocalDecoder::truncate`] (a rollback after rejected drafts or a
//! fallback).

use std::sync::Arc;

use offramp_common::decoder::{DecoderModel, KvCache, Tensor};

use super::{edge_layers, DecoderEdge, GenerateError, LocalHead};

/// What a step produced.
pub(super) struct Stepped<T> {
    /// Positions the step added.
    pub rows: usize,
    /// The last position's state at the head's tap layer.
    pub tap: Tensor,
    /// What the step's follow-up computed on the blocking thread.
    pub then: T,
}

pub(super) struct LocalDecoder {
    model: Arc<DecoderModel>,
    head: LocalHead,
    /// `None` only while a step runs.
    cache: Option<KvCache>,
    states: Vec<f32>,
    hidden: usize,
}

impl LocalDecoder {
    pub fn new(edge: &DecoderEdge, max_positions: usize) -> Self {
        let c = edge.bundle.config();
        Self {
            model: edge.model.clone(),
            head: edge.local_head(),
            cache: Some(KvCache::new(c, 0..edge.split)),
            states: Vec::with_capacity(max_positions * c.hidden),
            hidden: c.hidden,
        }
    }

    /// Positions computed so far.
    pub fn len(&self) -> usize {
        self.states.len() / self.hidden
    }

    /// Layer-K states of positions `0..len()`, row-major.
    pub fn states(&self) -> &[f32] {
        &self.states
    }

    /// Runs layers `0..K` over `ids` at the next positions, then `then`
    /// over the model, the head and the tapped state, on the same blocking
    /// thread (a draft computes its logits there).
    pub async fn step<T: Send + 'static>(
        &mut self,
        ids: Vec<u32>,
        then: impl FnOnce(&DecoderModel, LocalHead, &Tensor) -> Result<T, GenerateError> + Send + 'static,
    ) -> Result<Stepped<T>, GenerateError> {
        let (model, head, pos) = (self.model.clone(), self.head, self.len());
        let mut cache = self.cache.take().expect("the cache is back after every step");
        let (cache, result) = tokio::task::spawn_blocking(move || {
            let r = edge_layers(&model, &mut cache, &ids, pos, head)
                .and_then(|(state_k, tap)| then(&model, head, &tap).map(|t| (state_k, tap, t)));
            (cache, r)
        })
        .await
        .map_err(|e| GenerateError::Join(e.to_string()))?;
        self.cache = Some(cache);
        let (state_k, tap, then) = result?;
        self.states.extend_from_slice(&state_k);
        Ok(Stepped { rows: state_k.len() / self.hidden, tap, then })
    }

    /// Drops positions `keep..` (cache and states).
    pub fn truncate(&mut self, keep: usize) {
        self.cache.as_mut().expect("the cache is back after every step").truncate(keep);
        self.states.truncate(keep * self.hidden);
    }
}
