//! The cloud's decoder sessions: a `Generate` stream of messages decoded
//! from the fuzz input (open, decode steps with their hidden states,
//! drafts and sampling settings) served by `Generation::serve`, the code
//! behind the gRPC and QUIC `Generate` streams, on the cloud side (layers
//! 3..6) of the tiny seeded decoder, with its engine thread.
//!
//! What must hold: no panic, no hang (the stream served within 10 s); the
//! session opens at most once and first; every refused step and the final
//! status carry a session error's code that is never `Internal` or
//! `Unknown` (bad input is the edge's fault) in a bounded message; a
//! step's answer is within the session (position, cache, vocabulary, a
//! probability in [0, 1]); once the stream ends no session or KV cache
//! reservation is left; and the service then serves a fresh well-formed
//! session (open, two argmax steps) as if nothing had happened.
//!
//! Input: a steering byte, then `GenerateRequest` messages, each prefixed
//! with its length as a varint (prost's length-delimited form); the stream
//! ends at the first that does not decode. Bit 0 of the steering byte puts
//! the cloud's fingerprint for the split into every open (so the fuzzer
//! reaches past the fingerprint check), bit 1 ends the stream with an error
//! status from the transport instead of a clean close.

#![no_main]

mod check;
mod tiny;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use offramp_cloud::auth::Caller;
use offramp_cloud::generation::{DecoderSlot, Generation, SessionLimits};
use offramp_common::codec;
use offramp_common::decoder::DecoderBundle;
use offramp_proto as pb;
use pb::generate_request::Msg;
use pb::generate_response::Result as Answer;
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Code, Status};

/// The split the cloud serves (it holds layers 3..6 of 6).
const SPLIT: usize = 3;
/// Positions a session may reach (`--max-session-tokens`): bounds compute.
const MAX_TOKENS: usize = 64;

struct World {
    rt: tokio::runtime::Runtime,
    generation: Arc<Generation>,
    /// The cloud fingerprint per split it serves.
    fingerprints: std::collections::BTreeMap<usize, String>,
    hidden: usize,
    vocab: usize,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let (whole, dir) = tiny::decoder("generate-session", 512);
        let cloud = dir.join("cloud");
        whole.split(SPLIT, &dir.join("edge"), Some(&cloud)).unwrap();
        let slot = DecoderSlot::load(DecoderBundle::open(&cloud).unwrap()).unwrap();
        let fingerprints = slot.fingerprints.clone();
        let (hidden, vocab) = (slot.bundle.config().hidden, slot.bundle.config().vocab);
        let limits = SessionLimits {
            max_sessions: 2,
            max_tokens: MAX_TOKENS,
            idle_ttl: Duration::from_secs(5),
            ..Default::default()
        };
        let generation =
            Generation::start(vec![slot], limits, 1 << 16, vec![pb::Encoding::F32, pb::Encoding::F16]).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        World { rt, generation: Arc::new(generation), fingerprints, hidden, vocab }
    })
}

/// The messages of the input: length-delimited, up to the first that does
/// not decode.
fn messages(mut rest: &[u8], right_fingerprint: bool, w: &World) -> Vec<pb::GenerateRequest> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let Ok(mut m) = pb::GenerateRequest::decode_length_delimited(&mut rest) else { break };
        if let Some(Msg::Open(open)) = &mut m.msg {
            if right_fingerprint {
                let fp = w.fingerprints.get(&(open.split as usize)).unwrap_or(&w.fingerprints[&SPLIT]);
                open.model_fingerprint = fp.clone();
            }
        }
        out.push(m);
    }
    out
}

/// Serves one stream to its end; every answer, in order.
fn serve(w: &World, inbound: Vec<Result<pb::GenerateRequest, Status>>) -> Vec<Result<pb::GenerateResponse, Status>> {
    w.rt.block_on(async {
        let (tx, mut rx) = mpsc::channel(8);
        let serving = tokio::spawn(w.generation.clone().serve(Caller::default(), futures::stream::iter(inbound), tx));
        let run = async {
            let mut got = Vec::new();
            while let Some(m) = rx.recv().await {
                got.push(m);
            }
            serving.await.expect("the session task does not panic");
            got
        };
        tokio::time::timeout(Duration::from_secs(10), run).await.expect("the stream is served within 10 s")
    })
}

fn bounded_error(code: Code, message: &str) {
    assert!(!matches!(code, Code::Internal | Code::Unknown), "bad input answered as {code:?}: {message}");
    assert!(message.len() <= check::MAX_MESSAGE, "message of {} bytes: {}", message.len(), &message[..200]);
}

/// A well-formed session still runs: opened, then a token after each step.
fn fresh_session_runs(w: &World) {
    let open = pb::GenerateRequest {
        msg: Some(Msg::Open(pb::OpenSession {
            model_fingerprint: w.fingerprints[&SPLIT].clone(),
            split: SPLIT as u32,
            max_positions: 8,
            ..Default::default()
        })),
    };
    let rows = |n: usize| Some(codec::encode(&vec![0.1; n * w.hidden], &[n, w.hidden], pb::Encoding::F32));
    let argmax = pb::DecodeStep { want: pb::Want::Argmax as i32, ..Default::default() };
    let steps = [
        pb::DecodeStep { request_id: 1, position: 0, hidden: rows(2), ..argmax.clone() },
        pb::DecodeStep { request_id: 2, position: 2, hidden: rows(1), ..argmax },
    ];
    let inbound = std::iter::once(open).chain(steps.map(|s| pb::GenerateRequest { msg: Some(Msg::Step(s)) }));
    let got = serve(w, inbound.map(Ok).collect());
    let got: Vec<_> = got.into_iter().map(|m| m.expect("a fresh session ends cleanly")).collect();
    assert!(matches!(got.first().and_then(|m| m.result.as_ref()), Some(Answer::Opened(_))), "{got:?}");
    let steps: Vec<(u64, u32, u32)> = got[1..]
        .iter()
        .map(|m| match &m.result {
            Some(Answer::Step(s)) => (m.request_id, s.position, s.cached),
            other => panic!("a fresh session's step answered {other:?}"),
        })
        .collect();
    assert_eq!(steps, vec![(1, 2, 2), (2, 3, 3)]);
}

fuzz_target!(|data: &[u8]| {
    let Some((&steer, rest)) = data.split_first() else { return };
    let w = world();
    let mut inbound: Vec<Result<_, Status>> = messages(rest, steer & 1 != 0, w).into_iter().map(Ok).collect();
    if steer & 2 != 0 {
        inbound.push(Err(Status::data_loss("the stream broke")));
    }
    let got = serve(w, inbound);
    for (i, m) in got.iter().enumerate() {
        match m {
            Err(status) => {
                assert_eq!(i + 1, got.len(), "answers after the final status: {got:?}");
                bounded_error(status.code(), status.message());
            }
            Ok(r) => match &r.result {
                Some(Answer::Opened(_)) => assert_eq!(i, 0, "opened twice or late: {got:?}"),
                Some(Answer::Step(s)) => {
                    assert!(s.position as usize <= MAX_TOKENS && s.cached as usize <= MAX_TOKENS, "{s:?}");
                    assert!((s.token as usize) < w.vocab, "token outside the vocabulary: {s:?}");
                    assert!((0.0..=1.0).contains(&s.probability), "probability: {s:?}");
                }
                Some(Answer::Error(e)) => bounded_error(Code::from(e.code), &e.message),
                None => panic!("an empty answer: {got:?}"),
            },
        }
    }
    let g = &w.generation;
    assert_eq!((g.live_sessions(), g.reserved_bytes()), (0, 0), "the session outlived its stream");
    fresh_session_runs(w);
});
