//! The committed default model, the bundled sample digits, split bundles,
//! the test policy, and requests carrying real hidden states.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use offramp_common::data::{Dataset, Subset};
use offramp_common::model::SplitSide;
use offramp_common::{codec, Bundle, Executor, Policy};
use offramp_proto as pb;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn default_model() -> PathBuf {
    repo().join("models/b-lenet-mnist")
}

/// The default model, loaded (with its directory, so its own policy.toml
/// is found where a test leaves the policy to the bundle).
pub fn default_bundle() -> Bundle {
    Bundle::load(default_model()).expect("the committed default model loads")
}

/// The first `n` digits of the bundled validation sample.
pub fn sample(n: usize) -> Dataset {
    let mut d = Dataset::mnist(&repo().join("models/mnist-sample"), Subset::Sample, 0).expect("bundled sample");
    d.truncate(n);
    d
}

/// `n` inputs cycling through the bundled sample, with distinct ids.
pub fn inputs(n: usize) -> Dataset {
    let s = sample(1000);
    let mut d = Dataset {
        images: Vec::with_capacity(n * 784),
        labels: Vec::with_capacity(n),
        shape: s.shape.clone(),
        offset: 0,
        offsets: None,
        texts: vec![],
    };
    for i in 0..n {
        d.images.extend_from_slice(s.image(i % s.len()));
        d.labels.push(s.labels[i % s.len()]);
    }
    d
}

/// The policy the tests use: max-prob 0.999 at the branch, so that about a
/// third of the sample digits need the cloud (the calibrated policy of the
/// default model answers 99.7% at the edge, too few offloads to test with).
pub const TEST_POLICY: &str = "default = { rule = \"max-prob\", threshold = 0.999 }\n";

/// [`TEST_POLICY`] for `bundle`'s exits, as a value (what in-process edges
/// and clouds take).
pub fn test_policy(bundle: &Bundle) -> Policy {
    Policy::parse(TEST_POLICY, bundle.num_exits(), "test policy").expect("the test policy parses")
}

/// Writes [`TEST_POLICY`] into `dir/policy.toml` and returns its path (for
/// processes and containers, which read files).
pub fn test_policy_file(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("policy.toml");
    std::fs::write(&p, TEST_POLICY).unwrap();
    p
}

/// The default model split at `k`, in memory: (edge side, cloud side).
pub fn split_bundles(k: usize) -> (Bundle, Bundle) {
    default_bundle().split(k).expect("the default model splits")
}

/// Splits the default model at `k` into `dir/edge` and `dir/cloud`, each
/// with the test policy as its own `policy.toml`: for processes, which take
/// bundle directories.
pub fn split_default(k: usize, dir: &Path) -> (PathBuf, PathBuf) {
    let (e, c) = split_bundles(k);
    let (ed, cd) = (dir.join("edge"), dir.join("cloud"));
    e.save(&ed).unwrap();
    c.save(&cd).unwrap();
    test_policy_file(&ed);
    test_policy_file(&cd);
    (ed, cd)
}

/// Requests carrying the real hidden states at split `k` of the first `n`
/// sample digits (ids `0..n`, f32, probabilities wanted, no `edge_id`: a
/// test that authenticates sets the one its token proves).
pub fn requests(full: &Bundle, k: usize, n: usize) -> Vec<pb::InferRequest> {
    let data = sample(n);
    let exec = Executor::new(Arc::new(full.clone()));
    let x = exec.batch_at(0, &data.images, n).unwrap();
    let hidden = exec.forward_blocks(&x, 0..k).unwrap();
    (0..n)
        .map(|i| {
            let h = hidden.get(i).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            pb::InferRequest {
                request_id: i as u64,
                model_id: full.model_id().into(),
                model_fingerprint: full.fingerprint(SplitSide::Cloud, k).unwrap(),
                split: k as u32,
                hidden: Some(codec::encode(&h, full.shape_at(k).unwrap(), pb::Encoding::F32)),
                want_probabilities: true,
                ..Default::default()
            }
        })
        .collect()
}

/// The request for the first sample digit at split `k`, with id `id`.
pub fn request(full: &Bundle, k: usize, id: u64) -> pb::InferRequest {
    let mut r = requests(full, k, 1).pop().unwrap();
    r.request_id = id;
    r
}

/// A sample digit whose branch exit is unsure under [`TEST_POLICY`], so an
/// edge split at K = 1 with that policy always offloads it.
pub fn input_needing_cloud() -> Vec<f32> {
    let data = sample(1000);
    let full = default_bundle();
    let policy = test_policy(&full);
    let exec = Executor::new(Arc::new(full));
    let hard = (0..data.len())
        .find(|&i| {
            let x = exec.batch_at(0, data.image(i), 1).unwrap();
            exec.run(&x, 0..1, &policy, vec![vec![]]).unwrap().exited[0].is_none()
        })
        .expect("some digit needs the cloud");
    data.image(hard).to_vec()
}

/// An edge for `bundle` at split `k` with the test policy (as a value) and
/// the defaults otherwise: the edge most tests start.
pub fn edge_config(bundle: Bundle, k: usize, clouds: Vec<String>) -> offramp_edge::EdgeConfig {
    let policy = test_policy(&bundle);
    let mut c = offramp_edge::EdgeConfig::new(bundle, Some(k), clouds);
    c.policy = Some(policy);
    c
}

/// The tiny seeded decoder (6 layers, exits after layers 2 and 4) imported
/// as a whole-model bundle in `dir/whole`, with its edge and cloud sides for
/// split `k` in `dir/edge-K` and `dir/cloud-K` when asked.
pub fn tiny_decoder(dir: &Path) -> PathBuf {
    tiny_decoder_with(dir, offramp_common::decoder::tiny::TinySpec::default())
}

/// [`tiny_decoder`] with another shape or weight scale.
pub fn tiny_decoder_with(dir: &Path, spec: offramp_common::decoder::tiny::TinySpec) -> PathBuf {
    use offramp_common::decoder::tiny::write_tiny_gguf;
    let gguf = dir.join("tiny.gguf");
    write_tiny_gguf(&gguf, spec).expect("tiny GGUF");
    let whole = dir.join("whole");
    offramp_common::decoder::DecoderBundle::import(&gguf, &whole, None, &[2, 4], 512).expect("import tiny");
    whole
}

/// The sides of split `k` of a decoder bundle: `(edge, cloud)` directories.
pub fn split_decoder(whole: &Path, k: usize) -> (PathBuf, PathBuf) {
    let parent = whole.parent().unwrap();
    let (e, c) = (parent.join(format!("edge-{k}")), parent.join(format!("cloud-{k}")));
    let b = offramp_common::decoder::DecoderBundle::open(whole).unwrap();
    b.split(k, &e, Some(&c)).expect("split the decoder");
    (e, c)
}

/// Prompts the decoder tests generate after.
pub const DECODER_PROMPTS: [&str; 3] = ["the answer is", "in 1999 there were 42 cats", "re: on the"];

/// A whole-model decoder bundle's model: the reference.
pub fn whole_model(whole: &Path) -> offramp_common::decoder::DecoderModel {
    offramp_common::decoder::DecoderBundle::open(whole).unwrap().model().unwrap()
}

/// The whole model's logits after each prefix of `sequence` (row `i`: the
/// next token after position `i`).
pub fn full_logits(model: &offramp_common::decoder::DecoderModel, sequence: &[u32]) -> Vec<Vec<f32>> {
    use offramp_common::decoder::{model::rows, KvCache, SessionStep};
    let mut cache = KvCache::new(model.config(), model.holds());
    let mut steps = [SessionStep { cache: &mut cache, x: model.embed(sequence).unwrap(), pos: 0 }];
    model.run(model.holds(), &mut steps, &[]).unwrap();
    let [s] = steps;
    rows(&model.logits(&s.x).unwrap()).unwrap()
}

/// A decoder edge on bundle `dir` in `mode` at split `k`, settings tuned.
pub fn decoder_edge(
    dir: &Path,
    mode: offramp_edge::generate::Mode,
    k: usize,
    clouds: Vec<String>,
    tune: impl FnOnce(&mut offramp_edge::generate::GenerateConfig),
) -> offramp_edge::generate::DecoderEdge {
    let mut c = offramp_edge::generate::GenerateConfig::new(mode, k, clouds);
    tune(&mut c);
    offramp_edge::generate::DecoderEdge::new(offramp_common::decoder::DecoderBundle::open(dir).unwrap(), c).unwrap()
}

/// Greedy generation of `n` tokens, past end-of-turn.
pub fn greedy(n: usize) -> offramp_edge::generate::GenOptions {
    offramp_edge::generate::GenOptions { max_tokens: n, ignore_eos: true, ..Default::default() }
}
