//! Sessions without processes: the step and draft rules, admission, the
//! code table, and whole sessions on a tiny seeded decoder driven through
//! [`Generation::serve`] in-process.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use offramp_common::codec;
use offramp_common::decoder::speculative::SparseDistError;
use offramp_common::decoder::{DecoderBundle, DecoderError};
use offramp_proto as pb;
use pb::generate_request::Msg;
use tokio::sync::mpsc;
use tonic::{Code, Status};

use super::session::{check_drafts, session_positions, StepRules};
use super::*;
use crate::error::CloudError;

const HIDDEN: usize = 4;
const VOCAB: usize = 10;

fn rules() -> StepRules<'static> {
    StepRules { max_positions: 8, hidden: HIDDEN, vocab: VOCAB, encodings: &[pb::Encoding::F32], max_payload: 1 << 20 }
}

fn hidden(t: usize) -> Option<pb::Tensor> {
    Some(codec::encode(&vec![0.1; t * HIDDEN], &[t, HIDDEN], pb::Encoding::F32))
}

fn step(want: pb::Want, t: usize) -> pb::DecodeStep {
    pb::DecodeStep { request_id: 1, hidden: hidden(t), want: want as i32, ..Default::default() }
}

fn draft(token: u32) -> pb::Draft {
    pb::Draft { token, ..Default::default() }
}

fn verify(drafts: Vec<pb::Draft>, temperature: f32) -> pb::DecodeStep {
    pb::DecodeStep { drafts, temperature, ..step(pb::Want::Verify, 1) }
}

#[test]
fn good_steps_pass_with_what_the_engine_needs() {
    let s = rules().check(&pb::DecodeStep { position: 3, request_id: 9, ..step(pb::Want::Argmax, 2) }).unwrap();
    assert_eq!((s.request_id, s.pos, s.t, s.want, s.x.len()), (9, 3, 2, pb::Want::Argmax, 2 * HIDDEN));
    assert!(s.drafts.is_empty() && !s.speculative);
    let s = rules().check(&pb::DecodeStep { temperature: 0.7, uniform: 0.5, ..step(pb::Want::Sample, 1) }).unwrap();
    assert_eq!((s.want, s.temperature, s.uniform), (pb::Want::Sample, 0.7, 0.5));
    let s = rules().check(&pb::DecodeStep { speculative: true, ..verify(vec![draft(3)], 0.0) }).unwrap();
    assert_eq!((s.drafts.len(), s.drafts[0].token, s.speculative), (1, 3, true));
    // The session's last position is still in.
    assert!(rules().check(&pb::DecodeStep { position: 6, ..step(pb::Want::None, 2) }).is_ok());
}

#[test]
fn each_step_rule_refuses_by_name() {
    use SessionError as E;
    let refused = |s: pb::DecodeStep| rules().check(&s).unwrap_err();
    let e = refused(pb::DecodeStep { want: 99, ..step(pb::Want::Argmax, 1) });
    assert!(matches!(e, E::UnknownWant(99)), "{e}");
    let e = refused(step(pb::Want::Sample, 1));
    assert!(matches!(e, E::SampleNeedsTemperature(t) if t == 0.0), "{e}");
    assert!(e.to_string().contains("WANT_SAMPLE needs a positive temperature"), "{e}");
    let e = refused(pb::DecodeStep { temperature: -1.0, ..step(pb::Want::Argmax, 1) });
    assert!(matches!(e, E::Temperature(t) if t == -1.0), "{e}");
    let e = refused(pb::DecodeStep { temperature: f32::INFINITY, ..step(pb::Want::Argmax, 1) });
    assert!(matches!(e, E::Temperature(_)), "{e}");
    let e = refused(pb::DecodeStep { uniform: 1.5, ..step(pb::Want::Argmax, 1) });
    assert!(matches!(e, E::Uniform(u) if u == 1.5), "{e}");
    let e = refused(pb::DecodeStep { drafts: vec![draft(1)], ..step(pb::Want::Argmax, 1) });
    assert!(matches!(e, E::DraftsWithoutVerify), "{e}");
    let e = refused(pb::DecodeStep { speculative: true, ..step(pb::Want::Argmax, 1) });
    assert!(matches!(e, E::DraftsWithoutVerify), "{e}");
    let e = refused(pb::DecodeStep { hidden: None, ..step(pb::Want::Argmax, 1) });
    assert!(matches!(e, E::MissingTensor), "{e}");
    let int8 = codec::encode(&[0.1; HIDDEN], &[1, HIDDEN], pb::Encoding::Int8);
    let e = refused(pb::DecodeStep { hidden: Some(int8), ..step(pb::Want::Argmax, 1) });
    assert!(matches!(&e, E::EncodingNotAccepted { got: "int8", accepted } if accepted == &["f32"]), "{e}");
    let mut nan = codec::encode(&[0.1; HIDDEN], &[1, HIDDEN], pb::Encoding::F32);
    let mut data = nan.data.to_vec();
    data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    nan.data = data.into();
    let e = refused(pb::DecodeStep { hidden: Some(nan), ..step(pb::Want::Argmax, 1) });
    assert!(matches!(e, E::Codec(_)) && e.to_string().starts_with("hidden state: "), "{e}");
    let wide = codec::encode(&[0.1; 2 * (HIDDEN + 1)], &[2, HIDDEN + 1], pb::Encoding::F32);
    let e = refused(pb::DecodeStep { hidden: Some(wide), ..step(pb::Want::Argmax, 1) });
    assert!(matches!(e, E::Shape { hidden: HIDDEN, .. }), "{e}");
    assert!(e.to_string().contains("shape [2, 5]"), "{e}");
    let flat = codec::encode(&[0.1; HIDDEN], &[HIDDEN], pb::Encoding::F32);
    assert!(matches!(refused(pb::DecodeStep { hidden: Some(flat), ..step(pb::Want::Argmax, 1) }), E::Shape { .. }));
    let e = refused(pb::DecodeStep { position: 7, ..step(pb::Want::Argmax, 2) });
    assert!(matches!(e, E::PastSessionEnd { start: 7, end: 9, max_positions: 8 }), "{e}");
    assert!(e.to_string().contains("max tokens per session"), "{e}");
    // Every refusal on arrival is the client's: InvalidArgument, but for
    // running past the session's length (a limit it asked for).
    for (s, code) in [
        (step(pb::Want::Sample, 1), Code::InvalidArgument),
        (pb::DecodeStep { position: 7, ..step(pb::Want::Argmax, 2) }, Code::ResourceExhausted),
    ] {
        assert_eq!(refused(s).code(), code);
    }
}

#[test]
fn drafts_are_checked_one_by_one() {
    use SessionError as E;
    let refused = |s: pb::DecodeStep| rules().check(&s).unwrap_err();
    let e = refused(verify(vec![draft(1), draft(2)], 0.0));
    assert!(matches!(e, E::DraftCount { drafts: 2, positions: 1 }), "{e}");
    assert!(e.to_string().contains("one draft per position"), "{e}");
    let e = refused(verify(vec![draft(VOCAB as u32 + 5)], 0.0));
    assert!(
        matches!(e, E::BadDraft { index: 0, error: DraftError::TokenOutsideVocab { token: 15, vocab: VOCAB } }),
        "{e}"
    );
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    // Sampled: the distribution must be one, hold the draft, and come with
    // uniform numbers in [0, 1].
    let sampled = |q_tokens: Vec<u32>, q_probs: Vec<f32>, u: f32| pb::Draft {
        token: 3,
        q_tokens,
        q_probs,
        accept_uniform: u,
        residual_uniform: 0.5,
        mask: None,
    };
    let draft_error = |d: pb::Draft| match refused(verify(vec![d], 0.8)) {
        E::BadDraft { index: 0, error } => error,
        e => panic!("not a draft error: {e}"),
    };
    assert_eq!(
        draft_error(sampled(vec![], vec![], 0.5)),
        DraftError::Distribution(SparseDistError::Lengths { tokens: 0, probs: 0 })
    );
    let e = refused(verify(vec![sampled(vec![3], vec![], 0.5)], 0.8)).to_string();
    assert!(e.contains("draft 0") && e.contains("as many probabilities"), "{e}");
    assert_eq!(
        draft_error(sampled(vec![3, 3], vec![0.5, 0.5], 0.5)),
        DraftError::Distribution(SparseDistError::Duplicate { token: 3 })
    );
    assert_eq!(draft_error(sampled(vec![4, 5], vec![0.5, 0.5], 0.5)), DraftError::NoProbability(3));
    assert_eq!(draft_error(sampled(vec![3], vec![1.0], 2.0)), DraftError::Uniform(2.0));
    let ok = check_drafts(&verify(vec![sampled(vec![3, 4], vec![0.75, 0.25], 0.5)], 0.8), 1, VOCAB).unwrap();
    assert_eq!(ok[0].q.as_ref().map(|q| q.prob(3)), Some(0.75));
    // Greedy verification ignores the distribution fields.
    assert!(check_drafts(&verify(vec![draft(3)], 0.0), 1, VOCAB).unwrap()[0].q.is_none());
    // Each draft is named by its index.
    let mut two = step(pb::Want::Verify, 2);
    two.drafts = vec![draft(1), draft(VOCAB as u32)];
    assert!(matches!(refused(two), E::BadDraft { index: 1, .. }));
}

#[test]
fn admission_holds_the_session_and_kv_limits_and_releases_on_drop() {
    let admission = Admission::new(&SessionLimits { max_sessions: 2, kv_budget: 1000, ..Default::default() });
    let a = admission.admit(400).unwrap();
    let b = admission.admit(400).unwrap();
    let e = admission.admit(1).err().unwrap();
    assert!(matches!(e, SessionError::TooManySessions(2)), "{e}");
    assert!(e.to_string().contains("maximum of 2 sessions (--max-sessions)"), "{e}");
    drop(b);
    let e = admission.admit(700).err().unwrap();
    assert!(matches!(e, SessionError::KvBudget { need: 700, reserved: 400, budget: 1000 }), "{e}");
    // A refusal leaves nothing behind.
    assert_eq!((admission.live.load(Ordering::Relaxed), admission.reserved.load(Ordering::Relaxed)), (1, 400));
    let c = admission.admit(600).unwrap();
    drop((a, c));
    assert_eq!((admission.live.load(Ordering::Relaxed), admission.reserved.load(Ordering::Relaxed)), (0, 0));
    let e = SessionError::KvBudget { need: 4096, reserved: 2048, budget: 5120 }.to_string();
    assert_eq!(e, "KV cache budget: the session needs 4 KiB, 2 of 5 KiB are reserved (--kv-budget)");
}

#[test]
fn a_session_asks_for_positions_within_the_context_and_the_limit() {
    assert_eq!(session_positions(0, "m", 512, 2048).unwrap(), 512);
    assert_eq!(session_positions(0, "m", 4096, 2048).unwrap(), 2048);
    assert_eq!(session_positions(100, "m", 512, 2048).unwrap(), 100);
    let e = session_positions(600, "m", 512, 2048).unwrap_err();
    assert!(matches!(&e, SessionError::ContextExceeded { asked: 600, model, context: 512 } if model == "m"), "{e}");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = session_positions(3000, "m", 4096, 2048).unwrap_err();
    assert!(matches!(e, SessionError::SessionTokenLimit { asked: 3000, limit: 2048 }), "{e}");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.to_string().contains("(--max-session-tokens)"), "{e}");
}

#[test]
fn session_errors_map_to_codes_as_the_classify_path_does() {
    use SessionError as E;
    let compute = || Arc::new(DecoderError::Tokenizer("x".into()));
    let table = [
        (E::NotOpened, Code::InvalidArgument),
        (E::AlreadyOpen, Code::InvalidArgument),
        (E::EmptyMessage, Code::InvalidArgument),
        (E::IdleTimeout(Duration::from_secs(1)), Code::ResourceExhausted),
        (E::EdgeGone, Code::Cancelled),
        (E::UnknownModel { model: "\"m\"".into(), serves: "a".into() }, Code::NotFound),
        (E::SplitNotHeld { model: "m".into(), split: 1, start: 3, end: 6, layers: 6 }, Code::FailedPrecondition),
        (
            E::FingerprintMismatch { model: "m".into(), split: 3, expected: "\"e\"".into(), held: "h".into() },
            Code::FailedPrecondition,
        ),
        (E::ContextExceeded { asked: 9, model: "m".into(), context: 8 }, Code::InvalidArgument),
        (E::SessionTokenLimit { asked: 9, limit: 8 }, Code::ResourceExhausted),
        (E::TooManySessions(1), Code::ResourceExhausted),
        (E::KvBudget { need: 1, reserved: 1, budget: 1 }, Code::ResourceExhausted),
        (E::UnknownWant(9), Code::InvalidArgument),
        (E::MissingTensor, Code::InvalidArgument),
        (E::PastSessionEnd { start: 0, end: 9, max_positions: 8 }, Code::ResourceExhausted),
        (E::BadDraft { index: 0, error: DraftError::Uniform(2.0) }, Code::InvalidArgument),
        (E::NotContiguous { position: 5, cached: 2 }, Code::InvalidArgument),
        (E::EngineStopped, Code::Unavailable),
        (E::Compute(compute()), Code::Internal),
        (E::Head(compute()), Code::Internal),
        (E::Overflow, Code::InvalidArgument),
    ];
    for (e, code) in table {
        assert_eq!(e.code(), code, "{e}");
        let message = e.to_string();
        let status = Status::from(e);
        assert_eq!((status.code(), status.message()), (code, message.as_str()));
    }
    // The same kinds of failure get the same codes on both paths.
    let pairs = [
        (CloudError::UnknownModel("m".into(), "a".into()).code(), Code::NotFound),
        (CloudError::FingerprintMismatch("x".into()).code(), Code::FailedPrecondition),
        (CloudError::SplitNotHeld { model: "m".into(), split: 1, start: 3, end: 6 }.code(), Code::FailedPrecondition),
        (CloudError::Overloaded(1).code(), Code::ResourceExhausted),
        (CloudError::Unavailable("draining").code(), Code::Unavailable),
        (CloudError::Internal("x".into()).code(), Code::Internal),
        (CloudError::MissingTensor.code(), Code::InvalidArgument),
    ];
    for (cloud, session) in pairs {
        assert_eq!(cloud, session);
    }
    // A broken inbound stream's status is passed on as it came.
    let status = Status::from(E::Inbound(Status::data_loss("the frame was cut")));
    assert_eq!((status.code(), status.message()), (Code::DataLoss, "the frame was cut"));
}

// Whole sessions on the tiny seeded decoder (6 layers), the cloud holding
// layers 3..6.

const SPLIT: usize = 3;

/// The cloud side of the tiny decoder at split 3, written once per process.
fn tiny_cloud_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use offramp_common::decoder::tiny::{write_tiny_gguf, TinySpec};
        let dir = std::env::temp_dir().join(format!("offramp-cloud-generation-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let gguf = dir.join("tiny.gguf");
        write_tiny_gguf(&gguf, TinySpec::default()).unwrap();
        let whole = DecoderBundle::import(&gguf, &dir.join("whole"), None, &[2, 4], 512).unwrap();
        let cloud = dir.join("cloud");
        whole.split(SPLIT, &dir.join("edge"), Some(&cloud)).unwrap();
        cloud
    })
}

fn generation(limits: SessionLimits) -> (Arc<Generation>, String, usize) {
    let slot = DecoderSlot::load(DecoderBundle::open(tiny_cloud_dir()).unwrap()).unwrap();
    let fingerprint = slot.fingerprints[&SPLIT].clone();
    let hidden = slot.bundle.config().hidden;
    let g = Generation::start(vec![slot], limits, 1 << 20, vec![pb::Encoding::F32]).unwrap();
    (Arc::new(g), fingerprint, hidden)
}

fn open(fingerprint: &str, split: u32, max_positions: u32) -> pb::GenerateRequest {
    pb::GenerateRequest {
        msg: Some(Msg::Open(pb::OpenSession {
            model_id: String::new(),
            model_fingerprint: fingerprint.into(),
            split,
            max_positions,
            edge_id: "t".into(),
        })),
    }
}

fn decode(id: u64, position: u32, t: usize, width: usize) -> pb::GenerateRequest {
    pb::GenerateRequest {
        msg: Some(Msg::Step(pb::DecodeStep {
            request_id: id,
            position,
            hidden: Some(codec::encode(&vec![0.1; t * width], &[t, width], pb::Encoding::F32)),
            want: pb::Want::Argmax as i32,
            ..Default::default()
        })),
    }
}

/// Serves `msgs` as one stream; everything the session answered.
async fn run(g: &Arc<Generation>, msgs: Vec<pb::GenerateRequest>) -> Vec<Result<pb::GenerateResponse, Status>> {
    let (tx, mut rx) = mpsc::channel(64);
    let inbound = futures::stream::iter(msgs.into_iter().map(Ok));
    g.clone().serve(crate::auth::Caller::default(), inbound, tx).await;
    let mut got = Vec::new();
    while let Some(m) = rx.recv().await {
        got.push(m);
    }
    got
}

fn final_status(got: &[Result<pb::GenerateResponse, Status>]) -> &Status {
    got.last().expect("an answer").as_ref().expect_err("the session ended with a status")
}

#[tokio::test]
async fn opening_refusals_name_what_is_wrong() {
    let (g, fp, hidden) = generation(SessionLimits::default());
    let cases: Vec<(Vec<pb::GenerateRequest>, Code, &str)> = vec![
        (vec![decode(1, 0, 1, hidden)], Code::InvalidArgument, "must open a session"),
        (vec![open(&fp, 1, 32)], Code::FailedPrecondition, "holds layers 3..6"),
        (vec![open("beef", SPLIT as u32, 32)], Code::FailedPrecondition, "fingerprint mismatch"),
        (vec![open(&fp, SPLIT as u32, 100_000)], Code::InvalidArgument, "has a context of 512"),
        (
            vec![pb::GenerateRequest {
                msg: Some(Msg::Open(pb::OpenSession { model_id: "nope".into(), ..Default::default() })),
            }],
            Code::NotFound,
            "unknown decoder \"nope\"",
        ),
    ];
    for (msgs, code, says) in cases {
        let got = run(&g, msgs).await;
        let s = final_status(&got);
        assert_eq!(s.code(), code, "{s:?}");
        assert!(s.message().contains(says), "{s:?} lacks {says:?}");
    }
    // Limits: tokens per session, the KV budget.
    let (g, fp, _) = generation(SessionLimits { max_tokens: 16, ..Default::default() });
    let s = final_status(&run(&g, vec![open(&fp, SPLIT as u32, 32)]).await).clone();
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(s.message().contains("the limit is 16 tokens per session"), "{s:?}");
    let (g, fp, _) = generation(SessionLimits { kv_budget: 1024, ..Default::default() });
    let s = final_status(&run(&g, vec![open(&fp, SPLIT as u32, 32)]).await).clone();
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(s.message().contains("KV cache budget"), "{s:?}");
    assert_eq!((g.live_sessions(), g.reserved_bytes()), (0, 0));
}

#[tokio::test]
async fn a_bad_step_is_refused_and_the_session_goes_on() {
    let (g, fp, hidden) = generation(SessionLimits::default());
    let got = run(
        &g,
        vec![
            open(&fp, SPLIT as u32, 32),
            decode(1, 0, 2, hidden + 1),
            decode(2, 0, 2, hidden),
            decode(3, 5, 1, hidden),
            decode(4, 2, 1, hidden),
        ],
    )
    .await;
    // Closed by the edge after its steps: every answer arrives, no status.
    let got: Vec<&pb::GenerateResponse> = got.iter().map(|m| m.as_ref().expect("no status")).collect();
    assert!(matches!(got[0].result, Some(pb::generate_response::Result::Opened(_))));
    let mut errors = Vec::new();
    let mut steps = Vec::new();
    for m in got {
        match &m.result {
            Some(pb::generate_response::Result::Error(e)) => errors.push((m.request_id, e.code, e.message.clone())),
            Some(pb::generate_response::Result::Step(s)) => steps.push((m.request_id, s.position, s.cached)),
            _ => {}
        }
    }
    errors.sort_by_key(|e| e.0);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!((errors[0].0, errors[0].1), (1, Code::InvalidArgument as i32));
    assert!(errors[0].2.contains(&format!("shape [2, {}]", hidden + 1)), "{errors:?}");
    assert_eq!((errors[1].0, errors[1].1), (3, Code::InvalidArgument as i32));
    assert!(errors[1].2.contains("position 5") && errors[1].2.contains("holds 2"), "{errors:?}");
    assert_eq!(steps, vec![(2, 2, 2), (4, 3, 3)]);
    assert_eq!((g.live_sessions(), g.reserved_bytes()), (0, 0));

    // A second open, or an empty message, ends the session.
    let got = run(&g, vec![open(&fp, SPLIT as u32, 32), open(&fp, SPLIT as u32, 32)]).await;
    let s = final_status(&got);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("already open; one session per stream"), "{s:?}");
    let got = run(&g, vec![open(&fp, SPLIT as u32, 32), pb::GenerateRequest { msg: None }]).await;
    let s = final_status(&got);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("neither open nor step"), "{s:?}");
}

#[tokio::test]
async fn a_session_over_the_limit_is_refused_and_an_idle_one_is_closed() {
    let limits = SessionLimits { max_sessions: 1, idle_ttl: Duration::from_millis(300), ..Default::default() };
    let (g, fp, _) = generation(limits);
    let (held_tx, held_rx) = mpsc::unbounded_channel();
    held_tx.send(Ok(open(&fp, SPLIT as u32, 32))).unwrap();
    let (tx, mut held) = mpsc::channel(8);
    let serving = tokio::spawn(g.clone().serve(
        crate::auth::Caller::default(),
        tokio_stream::wrappers::UnboundedReceiverStream::new(held_rx),
        tx,
    ));
    let opened = held.recv().await.unwrap().unwrap();
    assert!(matches!(opened.result, Some(pb::generate_response::Result::Opened(_))));
    assert_eq!(g.live_sessions(), 1);
    assert!(g.reserved_bytes() > 0);
    let s = final_status(&run(&g, vec![open(&fp, SPLIT as u32, 32)]).await).clone();
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(s.message().contains("maximum of 1 sessions"), "{s:?}");
    // The held session sends nothing and is closed, naming why.
    let s = held.recv().await.unwrap().unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(s.message().contains("idle for more than 300ms"), "{s:?}");
    serving.await.unwrap();
    drop(held_tx);
    assert_eq!((g.live_sessions(), g.reserved_bytes()), (0, 0));
}

#[test]
fn masks_biases_and_logprob_requests_are_read_and_bad_ones_refused_by_name() {
    use offramp_common::decoder::logits::LogitsError as L;
    use SessionError as E;
    let mask = |allow, deltas: Vec<u32>| Some(pb::TokenMask { allow, deltas });
    // A token step's mask, a verify step's per draft, a bias and logprobs.
    let s = rules()
        .check(&pb::DecodeStep {
            mask: mask(true, vec![2, 3]),
            bias_tokens: vec![1],
            bias_values: vec![-100.0],
            logprobs: true,
            top_logprobs: 5,
            ..step(pb::Want::Argmax, 1)
        })
        .unwrap();
    let m = s.masks[0].as_ref().unwrap();
    assert!(m.allows(2) && m.allows(5) && !m.allows(3), "ids 2 and 2 + 3");
    assert_eq!((s.bias.is_empty(), s.logprobs), (false, Some(5)));
    let masked = pb::Draft { mask: mask(false, vec![0]), ..draft(3) };
    let s = rules().check(&verify(vec![masked], 0.0)).unwrap();
    assert!(s.masks.len() == 1 && !s.masks[0].as_ref().unwrap().allows(0));
    let refused = |s: pb::DecodeStep| rules().check(&s).unwrap_err();
    let e = refused(pb::DecodeStep { mask: mask(true, vec![]), ..step(pb::Want::Argmax, 1) });
    assert!(matches!(e, E::Logits(L::MaskEmpty)), "{e}");
    let e = refused(pb::DecodeStep { mask: mask(true, vec![4, 9]), ..step(pb::Want::Argmax, 1) });
    assert!(matches!(e, E::Logits(L::MaskToken { token: 13, vocab: VOCAB })), "{e}");
    let e = refused(pb::DecodeStep { mask: mask(true, vec![1]), ..verify(vec![draft(1)], 0.0) });
    assert!(matches!(e, E::MaskOnVerify), "{e}");
    let e = refused(verify(vec![pb::Draft { mask: mask(true, vec![3, 0]), ..draft(3) }], 0.0));
    assert!(matches!(e, E::Logits(L::MaskOrder { after: 3 })), "{e}");
    let e = refused(pb::DecodeStep { bias_tokens: vec![1, 2], bias_values: vec![1.0], ..step(pb::Want::Argmax, 1) });
    assert!(matches!(e, E::Logits(L::BiasLengths { tokens: 2, values: 1 })), "{e}");
    let e = refused(pb::DecodeStep { bias_tokens: vec![1], bias_values: vec![f32::NAN], ..step(pb::Want::Argmax, 1) });
    assert!(e.to_string().contains("logit bias: the value for token 1"), "{e}");
    let e = refused(pb::DecodeStep { logprobs: true, top_logprobs: 21, ..step(pb::Want::Argmax, 1) });
    assert!(matches!(e, E::Logits(L::TopLogprobs(21))), "{e}");
    assert_eq!(e.code(), Code::InvalidArgument);
}
