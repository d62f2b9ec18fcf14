//! The edge's text and token-id input paths on an encoder: arbitrary text
//! through the bundle's tokenizer (`Edge::classify_text`, what the local
//! `Classify` API and the HTTP front end call), and arbitrary token-id rows
//! through `Edge::classify` (the `input` field), on a seeded tiny BERT
//! imported from the Hugging Face layout (WordPiece tokenizer inside the
//! bundle) that the edge holds whole.
//!
//! What must hold: no panic; text is tokenized or refused with a bounded
//! message (too long, nothing to encode); an answer is on the edge with a
//! finite confidence in [0, 1] and a label of the model; bad token ids get a
//! bounded error answer (tier `error`), never a panic or a NaN.
//!
//! Input: a mode byte, then mode 0: UTF-8 text (invalid bytes replaced);
//! mode 1: little-endian f32 token ids.

#![no_main]

mod check;

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use offramp_common::Bundle;
use offramp_edge::{Edge, EdgeConfig, Tier};
use offramp_training::import_hf;
use offramp_training::import_hf::testing::TinyBert;

struct World {
    rt: tokio::runtime::Runtime,
    edge: Edge,
    labels: Vec<String>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("offramp-fuzz-text-{}", std::process::id()));
        TinyBert::default().write(&dir.join("hf"), 11).unwrap();
        let args = import_hf::testing::import_args(&dir.join("hf"), &dir.join("bundle"));
        import_hf::run(&args).unwrap();
        let bundle = Bundle::load(dir.join("bundle")).unwrap();
        let n = bundle.num_blocks();
        let labels = bundle.labels().to_vec();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let edge = rt.block_on(Edge::start(EdgeConfig::new(bundle, Some(n), vec![]))).unwrap();
        World { rt, edge, labels }
    })
}

fn answered(w: &World, a: &offramp_edge::Answer) {
    match a.tier {
        Tier::Edge => {
            assert!(a.confidence.is_finite() && (0.0..=1.0).contains(&a.confidence), "confidence {}", a.confidence);
            let p = a.prediction.expect("an edge answer has a prediction") as usize;
            assert!(p < w.labels.len(), "prediction {p}");
            assert_eq!(a.class.as_deref(), Some(w.labels[p].as_str()));
        }
        Tier::Error => {
            let e = a.error.as_deref().expect("an error answer says why");
            assert!(e.len() <= check::MAX_MESSAGE, "error of {} bytes", e.len());
        }
        other => panic!("the edge holds the whole model, yet the answer came from {other:?}: {a:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let w = world();
    if mode % 2 == 0 {
        let text = String::from_utf8_lossy(rest);
        match w.rt.block_on(w.edge.classify_text(None, &text, Duration::from_secs(5))) {
            Ok(a) => answered(w, &a),
            Err(e) => {
                let m = e.to_string();
                assert!(m.len() <= check::MAX_MESSAGE, "tokenize error of {} bytes: {}", m.len(), &m[..200]);
            }
        }
    } else {
        let ids: Vec<f32> = rest.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let a = w.rt.block_on(w.edge.classify_with_deadline(None, ids, Duration::from_secs(5)));
        answered(w, &a);
    }
});
