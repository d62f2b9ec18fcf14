//! `offramp codec-eval`: what each hidden-state encoding costs on the wire,
//! in accuracy and in CPU time, on real hidden states.
//!
//! The edge half runs blocks `[0, K)` of the model with its policy on a
//! dataset split (batched, [`Executor::run`]); every sample that no edge exit
//! answered is encoded as the edge would send it, decoded as the cloud would
//! receive it, and the cloud half runs `[K, N)` on the decoded states with
//! the same policy and the edge's exit histories. Per encoding:
//!
//! - bytes per offloaded request: `encoded_len` of the protobuf
//!   `InferRequest` the edge would send (tensor plus the fixed fields: model
//!   id, fingerprint, history, policy), and the tensor payload alone;
//! - the same with `--compression lz4` (the payload LZ4-compressed when that
//!   makes it smaller, exactly as the edge does), to see whether lossless
//!   compression on top of the encoding pays;
//! - accuracy over the whole split (edge and cloud answers) and its change
//!   against f32 in percentage points, and how many offloaded samples get the
//!   f32 path's prediction;
//! - the largest reconstruction error relative to the sample's largest |x|;
//! - encode and decode speed in GB/s of f32 data (medians over repetitions),
//!   with and without LZ4.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use offramp_common::model::{Observation, SplitSide};
use offramp_common::policy::history_to_wire;
use offramp_common::{codec, Executor, Policy};
use offramp_proto as pb;
use prost::Message;
use serde::Serialize;

use crate::eval::{load_model, subset_name, DataArgs};

/// Bytes, accuracy and speed of each hidden-state encoding at split K.
#[derive(Debug, Clone, clap::Args)]
pub struct CodecEvalArgs {
    /// Model bundle directory (the whole model).
    #[arg(long, env = "OFFRAMP_MODEL", default_value = "models/b-lenet-mnist")]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Split point K: the edge runs blocks [0, K), the cloud [K, N).
    #[arg(long, env = "OFFRAMP_SPLIT")]
    pub split: usize,
    /// Exit policy file (default: the bundle's policy.toml, else final exit only).
    #[arg(long, env = "OFFRAMP_POLICY")]
    pub policy: Option<PathBuf>,
    /// Offload every sample: no early exit before K (the cloud side keeps
    /// the policy). With a calibrated policy few samples reach the cloud;
    /// this measures the codec on every sample's hidden state.
    #[arg(long)]
    pub offload_all: bool,
    /// Encodings to evaluate (f32 is always evaluated as the reference).
    #[arg(long, value_delimiter = ',', default_value = "f32,f16,bf16,int8", value_parser = codec::parse_encoding)]
    pub encodings: Vec<pb::Encoding>,
    /// Batch size of the model passes.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Repetitions of the speed measurements (the median is reported).
    #[arg(long, default_value_t = 15)]
    pub speed_reps: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One encoding's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct EncodingReport {
    pub encoding: String,
    /// Mean `InferRequest::encoded_len` per offloaded sample.
    pub bytes_per_request: f64,
    /// Mean tensor payload (`Tensor.data`) per offloaded sample.
    pub payload_bytes: f64,
    /// `bytes_per_request` over f32's.
    pub ratio_to_f32: f64,
    /// Mean request size with `--compression lz4` (the payload LZ4-compressed
    /// when that makes it smaller, as the edge does).
    pub lz4_bytes_per_request: f64,
    /// Mean LZ4-compressed payload.
    pub lz4_payload_bytes: f64,
    /// `lz4_bytes_per_request` over f32's uncompressed request.
    pub lz4_ratio_to_f32: f64,
    /// Accuracy over the whole split (edge and cloud answers).
    pub accuracy: f64,
    /// Accuracy minus f32's, in percentage points.
    pub accuracy_delta_pts: f64,
    /// Share of offloaded samples whose prediction equals the f32 path's.
    pub agreement_with_f32: f64,
    /// Largest |decoded − original| / max |original| over samples.
    pub max_relative_error: f64,
    /// Median encode speed, GB/s of f32 data.
    pub encode_gbps: f64,
    /// Median decode (with validation) speed, GB/s of f32 data.
    pub decode_gbps: f64,
    /// Median encode + LZ4 and LZ4 + decode speed, GB/s of f32 data.
    pub lz4_encode_gbps: f64,
    pub lz4_decode_gbps: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CodecEvalReport {
    pub model: String,
    pub model_dir: String,
    pub subset: String,
    pub samples: usize,
    pub split: usize,
    pub num_blocks: usize,
    pub hidden_shape: Vec<usize>,
    /// Samples answered by an edge exit (not offloaded).
    pub edge_answers: usize,
    pub offloaded: usize,
    /// `--offload-all`: no early exit before K.
    pub offload_all: bool,
    pub speed_reps: usize,
    pub encodings: Vec<EncodingReport>,
}

/// A sample the edge could not answer.
struct Offload {
    index: usize,
    hidden: Vec<f32>,
    /// The hidden state's shape (a token sequence: its real tokens).
    shape: Vec<usize>,
    history: Vec<Observation>,
}

impl CodecEvalReport {
    pub fn render(&self) -> String {
        render(self)
    }
}

// Long on purpose: one sweep of codecs x splits over the same data and
// model, filling one report.
pub fn evaluate(args: &CodecEvalArgs) -> Result<CodecEvalReport> {
    let bundle = load_model(&args.model)?;
    let (n, k) = (bundle.num_blocks(), args.split);
    if k >= n {
        bail!(
            "--split {k}: model {} has {n} blocks, so K must be in 0..{n} for anything to be offloaded",
            bundle.model_id()
        );
    }
    let data = args.data.load(&bundle)?;
    let (policy, _) = Policy::for_bundle(args.policy.as_deref(), &bundle).context("loading the policy")?;
    let edge_policy = if args.offload_all { Policy::never(bundle.num_exits()) } else { policy.clone() };
    let shape = bundle.shape_at(k)?.to_vec();
    let exec = Executor::new(Arc::new(bundle.clone()));
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    anyhow::ensure!(args.speed_reps > 0, "--speed-reps must be at least 1");
    let batch = args.batch_size;
    let labels: Vec<usize> = data.labels.iter().map(|&l| l as usize).collect();
    let (edge_pred, offloads) = edge_half(&exec, &data, k, &edge_policy, batch)?;
    if offloads.is_empty() {
        bail!("no sample was offloaded at K = {k}: every one left at an edge exit");
    }
    let edge_answers = data.len() - offloads.len();

    // What the edge sends besides the tensor.
    let template = pb::InferRequest {
        request_id: 0,
        model_id: bundle.model_id().to_string(),
        model_fingerprint: bundle.fingerprint(SplitSide::Cloud, k).unwrap_or_default(),
        split: k as u32,
        hidden: None,
        history: None,
        want_probabilities: false,
        edge_id: "edge".into(),
        policy: policy.to_wire(&bundle.exits_in(k..n)),
        timeout_us: 0,
        cancel: false,
    };
    let mut encodings = vec![pb::Encoding::F32];
    encodings.extend(args.encodings.iter().copied().filter(|&e| e != pb::Encoding::F32));

    let mut reports: Vec<EncodingReport> = Vec::new();
    let mut f32_preds: Vec<usize> = Vec::new();
    for encoding in encodings {
        let (mut req_bytes, mut payload, mut lz4_req, mut lz4_payload) = (0usize, 0usize, 0usize, 0usize);
        let mut max_rel = 0f64;
        let mut decoded: Vec<Vec<f32>> = Vec::with_capacity(offloads.len());
        let mut tensors = Vec::with_capacity(offloads.len());
        let mut packed = Vec::with_capacity(offloads.len());
        for (id, o) in offloads.iter().enumerate() {
            let t = codec::encode(&o.hidden, &o.shape, encoding);
            let mut req = template.clone();
            req.request_id = id as u64;
            req.history = Some(history_to_wire(&o.history));
            req.hidden = Some(t.clone());
            req_bytes += req.encoded_len();
            payload += t.data.len();
            let mut lz4 = t.clone();
            codec::compress(&mut lz4, pb::Compression::Lz4);
            lz4_payload += lz4.data.len();
            req.hidden = Some(lz4);
            lz4_req += req.encoded_len();
            packed.push(req.hidden.take().expect("just set"));
            let (_, values) = codec::decode(&t, usize::MAX).context("decoding what was just encoded")?;
            let scale = o.hidden.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE) as f64;
            let err = o.hidden.iter().zip(&values).fold(0f32, |m, (a, b)| m.max((a - b).abs())) as f64;
            max_rel = max_rel.max(err / scale);
            decoded.push(values);
            tensors.push(t);
        }

        let preds = cloud_half(&exec, &decoded, &offloads, k..n, &policy, batch)?;
        let mut correct = edge_pred.iter().zip(&labels).filter(|(p, l)| p.as_ref() == Some(l)).count();
        correct += offloads.iter().zip(&preds).filter(|(o, &p)| labels[o.index] == p).count();
        let accuracy = correct as f64 / data.len() as f64;
        if encoding == pb::Encoding::F32 {
            f32_preds = preds.clone();
        }
        let agree = preds.iter().zip(&f32_preds).filter(|(a, b)| a == b).count();

        let speed = CodecSpeed::measure(&offloads, &tensors, &packed, encoding, args.speed_reps);
        let m = offloads.len() as f64;
        let f32_req = reports.first().map_or(req_bytes as f64 / m, |r| r.bytes_per_request);
        let f32_acc = reports.first().map_or(accuracy, |r| r.accuracy);
        reports.push(EncodingReport {
            encoding: codec::encoding_name(encoding).to_string(),
            bytes_per_request: req_bytes as f64 / m,
            payload_bytes: payload as f64 / m,
            ratio_to_f32: req_bytes as f64 / m / f32_req,
            lz4_bytes_per_request: lz4_req as f64 / m,
            lz4_payload_bytes: lz4_payload as f64 / m,
            lz4_ratio_to_f32: lz4_req as f64 / m / f32_req,
            accuracy,
            accuracy_delta_pts: (accuracy - f32_acc) * 100.0,
            agreement_with_f32: agree as f64 / m,
            max_relative_error: max_rel,
            encode_gbps: speed.encode,
            decode_gbps: speed.decode,
            lz4_encode_gbps: speed.lz4_encode,
            lz4_decode_gbps: speed.lz4_decode,
        });
    }
    Ok(CodecEvalReport {
        model: bundle.model_id().to_string(),
        model_dir: args.model.display().to_string(),
        subset: subset_name(args.data.subset),
        samples: data.len(),
        split: k,
        num_blocks: n,
        hidden_shape: shape,
        edge_answers,
        offloaded: offloads.len(),
        offload_all: args.offload_all,
        speed_reps: args.speed_reps,
        encodings: reports,
    })
}

/// The report as a table.
pub fn render(r: &CodecEvalReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "model {} ({}), {} split: {} samples, K = {} of {} blocks, hidden state {:?} ({} values)",
        r.model,
        r.model_dir,
        r.subset,
        r.samples,
        r.split,
        r.num_blocks,
        r.hidden_shape,
        r.hidden_shape.iter().product::<usize>()
    );
    let _ = writeln!(
        s,
        "edge exits answered {} ({:.1}%), offloaded {} ({:.1}%){}",
        r.edge_answers,
        100.0 * r.edge_answers as f64 / r.samples as f64,
        r.offloaded,
        100.0 * r.offloaded as f64 / r.samples as f64,
        if r.offload_all { " (--offload-all: no early exit before K)" } else { "" }
    );
    let _ = writeln!(
        s,
        "\n{:<8} {:>9} {:>7} {:>9} {:>11} {:>7} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "encoding",
        "B/request",
        "×f32",
        "payload B",
        "+lz4 B/req",
        "×f32",
        "accuracy",
        "Δ pts",
        "agree",
        "max rel e",
        "enc GB/s",
        "dec GB/s",
        "+lz4 enc",
        "+lz4 dec"
    );
    for e in &r.encodings {
        let _ = writeln!(
            s,
            "{:<8} {:>9.1} {:>7.3} {:>9.1} {:>11.1} {:>7.3} {:>8.2}% {:>+8.2} {:>7.2}% {:>9.2e} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            e.encoding,
            e.bytes_per_request,
            e.ratio_to_f32,
            e.payload_bytes,
            e.lz4_bytes_per_request,
            e.lz4_ratio_to_f32,
            100.0 * e.accuracy,
            e.accuracy_delta_pts,
            100.0 * e.agreement_with_f32,
            e.max_relative_error,
            e.encode_gbps,
            e.decode_gbps,
            e.lz4_encode_gbps,
            e.lz4_decode_gbps
        );
    }
    let _ = writeln!(
        s,
        "\nB/request: protobuf InferRequest size per offloaded sample; +lz4: the same with --compression lz4 \
         (payload LZ4-compressed where that makes it smaller); Δ pts: accuracy change against f32 (percentage points); agree: offloaded samples with \
         f32's prediction; speeds: GB/s of f32 data, median of {} repetitions.",
        r.speed_reps
    );
    s
}

/// The edge half at K over the whole dataset: each sample's edge
/// prediction (when it exited) and the samples to offload.
fn edge_half(
    exec: &Executor,
    data: &offramp_common::data::Dataset,
    k: usize,
    policy: &Policy,
    batch: usize,
) -> Result<(Vec<Option<usize>>, Vec<Offload>)> {
    let mut edge_pred: Vec<Option<usize>> = vec![None; data.len()];
    let mut offloads = Vec::new();
    for start in (0..data.len()).step_by(batch) {
        let b = batch.min(data.len() - start);
        let x = exec.batch_of(0, &data.rows(start..start + b))?;
        let out = exec.run(x, 0..k, policy, vec![vec![]; b])?;
        for (i, r) in out.exited.iter().enumerate() {
            if let Some(r) = r {
                edge_pred[start + i] = Some(r.prediction);
            }
        }
        for (row, &i) in out.remaining.iter().enumerate() {
            let (hidden, shape) = out.hidden_row(row)?;
            offloads.push(Offload { index: start + i, hidden, shape, history: out.histories[i].clone() });
        }
    }
    Ok((edge_pred, offloads))
}

/// The cloud half (`blocks`) on the decoded hidden states: one prediction
/// per offload.
fn cloud_half(
    exec: &Executor,
    decoded: &[Vec<f32>],
    offloads: &[Offload],
    blocks: std::ops::Range<usize>,
    policy: &Policy,
    batch: usize,
) -> Result<Vec<usize>> {
    let mut preds = Vec::with_capacity(offloads.len());
    for (chunk_i, chunk) in decoded.chunks(batch).enumerate() {
        let rows: Vec<&[f32]> = chunk.iter().map(Vec::as_slice).collect();
        let x = exec.batch_of(blocks.start, &rows)?;
        let histories =
            offloads[chunk_i * batch..chunk_i * batch + chunk.len()].iter().map(|o| o.history.clone()).collect();
        let out = exec.run(x, blocks.clone(), policy, histories)?;
        for r in out.exited {
            preds.push(r.context("the final exit always answers")?.prediction);
        }
    }
    Ok(preds)
}

/// Codec speed in GB/s of f32 hidden state (median over repetitions, each
/// over every offloaded sample).
struct CodecSpeed {
    encode: f64,
    decode: f64,
    lz4_encode: f64,
    lz4_decode: f64,
}

impl CodecSpeed {
    fn measure(
        offloads: &[Offload],
        tensors: &[pb::Tensor],
        packed: &[pb::Tensor],
        encoding: pb::Encoding,
        reps: usize,
    ) -> Self {
        let f32_bytes = offloads.iter().map(|o| o.hidden.len() * 4).sum::<usize>() as f64;
        let gbps = |mut f: Box<dyn FnMut() + '_>| -> f64 {
            f(); // warm-up
            let mut rates: Vec<f64> = (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    f32_bytes / t.elapsed().as_secs_f64() / 1e9
                })
                .collect();
            rates.sort_by(|a, b| a.total_cmp(b));
            rates[rates.len() / 2]
        };
        Self {
            encode: gbps(Box::new(|| {
                for o in offloads {
                    black_box(codec::encode(black_box(&o.hidden), &o.shape, encoding));
                }
            })),
            decode: gbps(Box::new(|| {
                for t in tensors {
                    black_box(codec::decode(black_box(t), usize::MAX).expect("valid"));
                }
            })),
            lz4_encode: gbps(Box::new(|| {
                for o in offloads {
                    let mut t = codec::encode(black_box(&o.hidden), &o.shape, encoding);
                    codec::compress(&mut t, pb::Compression::Lz4);
                    black_box(t);
                }
            })),
            lz4_decode: gbps(Box::new(|| {
                for p in packed {
                    black_box(codec::decode(black_box(p), usize::MAX).expect("valid"));
                }
            })),
        }
    }
}
