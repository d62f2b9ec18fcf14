//! The cloud's whole request path up to compute and back: an `InferRequest`
//! decoded from the fuzz input goes through `CloudState::infer` (caller
//! check, validation of model, fingerprint, split, tensor, token ids, exit
//! history and policy rules, the batcher and the executor) on two tiny
//! seeded models: the 3-exit CNN and a 3-layer encoder taking token ids.
//!
//! What must hold: no panic, no hang; an answer has a finite confidence in
//! [0, 1], finite probabilities summing to 1, a prediction among the labels
//! and an exit at or after the split; an error has a bounded message and is
//! never `Internal` (bad input is the client's error, not the server's).
//!
//! Input: a steering byte, then an `InferRequest` message. Bit 0 of the
//! steering byte picks the model whose id replaces the request's (bit 1
//! clear) and bit 2 puts the right fingerprint for the request's split in,
//! so the fuzzer reaches past the cheap checks; bit 3 asks for probabilities.

#![no_main]

mod check;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use offramp_cloud::auth::Caller;
use offramp_cloud::batcher::Batcher;
use offramp_cloud::config::{BatchConfig, ModelSource};
use offramp_cloud::error::CloudError;
use offramp_cloud::models::Registry;
use offramp_cloud::service::CloudState;
use offramp_common::model::arch::{init_weights, tiny_encoder, Arch};
use offramp_common::model::SplitSide;
use offramp_common::{codec, Bundle};
use offramp_proto::InferRequest;
use prost::Message;

struct World {
    rt: tokio::runtime::Runtime,
    state: CloudState,
    models: Vec<Bundle>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let m = Arch::Tiny.manifest("tiny");
        let cnn = Bundle::from_parts(m.clone(), init_weights(&m, 3).unwrap()).unwrap();
        let models = vec![cnn, tiny_encoder(7)];
        let sources: Vec<ModelSource> =
            models.iter().map(|b| ModelSource::Loaded(std::sync::Arc::new(b.clone()))).collect();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let batch = BatchConfig::try_new(4, std::time::Duration::from_micros(50), 64, 1).unwrap();
        let state = CloudState {
            registry: Registry::load(&sources, None).unwrap(),
            batcher: Batcher::start(batch).unwrap(),
            max_payload_bytes: 1 << 16,
            encodings: codec::ENCODINGS.to_vec(),
            draining: false.into(),
            generation: Default::default(),
        };
        World { rt, state, models }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&steer, rest)) = data.split_first() else { return };
    let Ok(mut req) = InferRequest::decode(rest) else { return };
    let w = world();
    let model = &w.models[usize::from(steer & 1)];
    if steer & 2 == 0 {
        req.model_id = model.model_id().to_string();
    }
    if steer & 4 != 0 {
        if let Some(fp) = model.fingerprint(SplitSide::Cloud, req.split as usize) {
            req.model_fingerprint = fp;
        }
    }
    req.want_probabilities = steer & 8 != 0;
    let answer = w.rt.block_on(w.state.infer(&req, &Caller::new(None)));
    match answer {
        Ok(r) => {
            let m = w.models.iter().find(|b| b.model_id() == req.model_id).expect("answered for a held model");
            assert!(r.confidence.is_finite() && (0.0..=1.0).contains(&r.confidence), "confidence {}", r.confidence);
            assert!((r.prediction as usize) < m.num_classes(), "prediction {}", r.prediction);
            assert!((r.exit as usize) < m.num_exits(), "exit {}", r.exit);
            if req.want_probabilities {
                assert_eq!(r.probabilities.len(), m.num_classes());
                assert!(
                    r.probabilities.iter().all(|p| p.is_finite() && (0.0..=1.0).contains(p)),
                    "{:?}",
                    r.probabilities
                );
                let sum: f32 = r.probabilities.iter().sum();
                assert!((sum - 1.0).abs() < 1e-3, "probabilities sum to {sum}");
            }
        }
        Err(e) => {
            assert!(!matches!(e, CloudError::Internal(_)), "bad input answered as an internal error: {e}");
            let msg = e.to_string();
            assert!(msg.len() <= check::MAX_MESSAGE, "error message of {} bytes: {}", msg.len(), &msg[..200]);
        }
    }
});
