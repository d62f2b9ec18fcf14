#!/usr/bin/env python3
"""ONNX Runtime peer benchmark for the Rust BERT encoder.

Reads a Hugging Face BERT checkpoint (DIR/config.json + DIR/model.safetensors;
tensor names with or without a "bert." prefix), builds the post-LN BERT
encoder as an ONNX graph by hand with the `onnx` helper API (opset 17, the
weights as initializers), checks it against a plain numpy forward pass of the
same math, and times onnxruntime on the CPU.

Graphs:

- full: inputs input_ids int64 [B,T] and attention_mask float32 [B,T]
  (1 = token, 0 = padding); word + position (0..T-1) + token_type(0)
  embeddings, LayerNorm, then every encoder layer; output
  last_hidden_state [B,T,H]. No pooler.
- layer: one encoder layer (layer 0's weights); inputs hidden float32
  [B,T,H] and attention_mask; output hidden [B,T,H].

Each layer: Q/K/V = x @ W.T + b (W.T stored as the initializer), split into
heads, scores = Q K^T / sqrt(d) + (1 - mask) * -1e9 (broadcast [B,1,1,T]),
Softmax(-1), context, output dense + residual + LayerNorm, intermediate dense
+ exact GELU 0.5*x*(1+erf(x/sqrt 2)), output dense + residual + LayerNorm.

Timing (CPUExecutionProvider, intra_op_num_threads=--threads,
inter_op_num_threads=1, sequential execution, ORT_ENABLE_ALL): batch 1 at
each T in --lengths for the full model and for one layer, and batch --batch
at T=32 for the full model. 10 warm-up runs, then --reps timed runs
(default 200 at batch 1, 20 for the batch; --reps sets both unless
--batch-reps is given). p50/p90/p99 in microseconds.

Not used by the tests. Needs onnx, onnxruntime, numpy, safetensors
(deploy/scripts/ort_env.sh makes target/ort-venv with them):

    target/ort-venv/bin/python deploy/scripts/ort_encoder_bench.py \\
        --model models/pretrained/all-minilm-l6-v2 [--threads 1] \\
        [--lengths 16,32,64] [--batch 32] [--reps N] [--json]
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

OPSET = 17
WARMUP = 10


# --------------------------------------------------------------------------
# checkpoint


def load_checkpoint(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    raw = load_file(os.path.join(model_dir, "model.safetensors"))
    has_prefix = any(k.startswith("bert.") for k in raw)
    w = {}
    for k, v in raw.items():
        # "bert.embeddings..." -> "embeddings..."; heads outside the encoder
        # (cls.*, classifier.*) keep their names and are not used
        w[k[len("bert."):] if k.startswith("bert.") else k] = v
    need = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
            "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight",
            "embeddings.LayerNorm.bias"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for s in ["attention.self.query", "attention.self.key", "attention.self.value",
                  "attention.output.dense", "intermediate.dense", "output.dense"]:
            need += [p + s + ".weight", p + s + ".bias"]
        for s in ["attention.output.LayerNorm", "output.LayerNorm"]:
            need += [p + s + ".weight", p + s + ".bias"]
    missing = [k for k in need if k not in w]
    if missing:
        sys.exit(f"missing tensors in {model_dir}/model.safetensors: {missing[:5]}...")
    for k in need:
        w[k] = np.ascontiguousarray(w[k], dtype=np.float32)
    if cfg.get("hidden_act", "gelu") != "gelu":
        print(f"warning: hidden_act={cfg['hidden_act']}, graph uses exact gelu", file=sys.stderr)
    return cfg, w, ("bert." if has_prefix else "")


# --------------------------------------------------------------------------
# ONNX graph


class Builder:
    def __init__(self):
        self.nodes = []
        self.inits = []
        self.names = set()
        self.n = 0

    def fresh(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def init(self, name, arr):
        assert name not in self.names, name
        self.names.add(name)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def const(self, base, arr):
        return self.init(self.fresh(base), arr)

    def op(self, op_type, inputs, base=None, **attrs):
        out = self.fresh(base or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def layer_norm(b, x, w, prefix, eps):
    return b.op("LayerNormalization",
                [x, b.init(prefix + ".weight", w[prefix + ".weight"]),
                 b.init(prefix + ".bias", w[prefix + ".bias"])],
                base="ln", axis=-1, epsilon=float(eps))


def linear(b, x, w, prefix):
    wt = b.init(prefix + ".weight_t", w[prefix + ".weight"].T)  # HF Linear: [out,in]
    bias = b.init(prefix + ".bias", w[prefix + ".bias"])
    return b.op("Add", [b.op("MatMul", [x, wt]), bias])


def mask_bias(b, mask):
    one = b.const("one", np.array(1.0, dtype=np.float32))
    neg = b.const("neg_big", np.array(-1e9, dtype=np.float32))
    m = b.op("Mul", [b.op("Sub", [one, mask]), neg])
    axes = b.const("axes12", np.array([1, 2], dtype=np.int64))
    return b.op("Unsqueeze", [m, axes], base="mask_bias")  # [B,1,1,T]


def encoder_layer(b, x, bias, w, cfg, i, shapes):
    p = f"encoder.layer.{i}."
    nh = cfg["num_attention_heads"]
    dh = cfg["hidden_size"] // nh
    eps = cfg["layer_norm_eps"]

    def heads(t, perm):
        return b.op("Transpose", [b.op("Reshape", [t, shapes["heads"]])], perm=perm)

    q = heads(linear(b, x, w, p + "attention.self.query"), [0, 2, 1, 3])  # [B,nh,T,dh]
    kt = heads(linear(b, x, w, p + "attention.self.key"), [0, 2, 3, 1])   # [B,nh,dh,T]
    v = heads(linear(b, x, w, p + "attention.self.value"), [0, 2, 1, 3])  # [B,nh,T,dh]
    scale = b.const("scale", np.array(1.0 / math.sqrt(dh), dtype=np.float32))
    scores = b.op("Add", [b.op("Mul", [b.op("MatMul", [q, kt]), scale]), bias])
    probs = b.op("Softmax", [scores], axis=-1)
    ctx = b.op("MatMul", [probs, v])
    ctx = b.op("Reshape", [b.op("Transpose", [ctx], perm=[0, 2, 1, 3]), shapes["merge"]])
    attn = linear(b, ctx, w, p + "attention.output.dense")
    h1 = layer_norm(b, b.op("Add", [attn, x]), w, p + "attention.output.LayerNorm", eps)

    inter = linear(b, h1, w, p + "intermediate.dense")
    sqrt2 = b.const("sqrt2", np.array(math.sqrt(2.0), dtype=np.float32))
    one = b.const("one", np.array(1.0, dtype=np.float32))
    half = b.const("half", np.array(0.5, dtype=np.float32))
    erf = b.op("Erf", [b.op("Div", [inter, sqrt2])])
    gelu = b.op("Mul", [b.op("Mul", [inter, b.op("Add", [erf, one])]), half], base="gelu")
    out = linear(b, gelu, w, p + "output.dense")
    return layer_norm(b, b.op("Add", [out, h1]), w, p + "output.LayerNorm", eps)


def shape_consts(b, cfg):
    nh = cfg["num_attention_heads"]
    dh = cfg["hidden_size"] // nh
    return {
        "heads": b.init("shape_heads", np.array([0, 0, nh, dh], dtype=np.int64)),
        "merge": b.init("shape_merge", np.array([0, 0, nh * dh], dtype=np.int64)),
    }


def finish(b, name, inputs, out, cfg):
    H = cfg["hidden_size"]
    oname = "last_hidden_state" if name == "full" else "output"
    b.nodes.append(helper.make_node("Identity", [out], [oname], name=oname))
    outputs = [helper.make_tensor_value_info(oname, TensorProto.FLOAT, ["B", "T", H])]
    graph = helper.make_graph(b.nodes, f"bert_{name}", inputs, outputs, initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="offramp-ort-encoder-bench")
    model.ir_version = min(model.ir_version, 8)
    onnx.checker.check_model(model)
    return model


def build_full(cfg, w):
    b = Builder()
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "T"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, ["B", "T"])
    shapes = shape_consts(b, cfg)
    word = b.op("Gather", [b.init("word_embeddings", w["embeddings.word_embeddings.weight"]),
                           "input_ids"], axis=0)                           # [B,T,H]
    t = b.op("Shape", ["input_ids"], start=1, end=2)                        # [T]
    zero = b.const("zero", np.array([0], dtype=np.int64))
    ax0 = b.const("axis0", np.array([0], dtype=np.int64))
    pos = b.op("Slice", [b.init("position_embeddings",
                                w["embeddings.position_embeddings.weight"]), zero, t, ax0])
    tok = b.init("token_type_0", w["embeddings.token_type_embeddings.weight"][0])
    emb = b.op("Add", [b.op("Add", [word, pos]), tok])
    x = layer_norm(b, emb, w, "embeddings.LayerNorm", cfg["layer_norm_eps"])
    bias = mask_bias(b, "attention_mask")
    for i in range(cfg["num_hidden_layers"]):
        x = encoder_layer(b, x, bias, w, cfg, i, shapes)
    return finish(b, "full", [ids, mask], x, cfg)


def build_layer(cfg, w, i=0):
    b = Builder()
    hid = helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["B", "T", cfg["hidden_size"]])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, ["B", "T"])
    shapes = shape_consts(b, cfg)
    x = encoder_layer(b, "hidden", mask_bias(b, "attention_mask"), w, cfg, i, shapes)
    return finish(b, "layer", [hid, mask], x, cfg)


# --------------------------------------------------------------------------
# numpy reference

_erf = np.vectorize(math.erf, otypes=[np.float64])


def np_ln(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def np_layer(x, mask, w, cfg, i):
    p = f"encoder.layer.{i}."
    B, T, H = x.shape
    nh = cfg["num_attention_heads"]
    dh = H // nh
    eps = cfg["layer_norm_eps"]

    def lin(t, name):
        return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

    def heads(t):
        return t.reshape(B, T, nh, dh).transpose(0, 2, 1, 3)

    q, k, v = (heads(lin(x, "attention.self." + n)) for n in ("query", "key", "value"))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh) + ((1.0 - mask) * -1e9)[:, None, None, :]
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    probs = e / e.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(B, T, H)
    h1 = np_ln(lin(ctx, "attention.output.dense") + x,
               w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
    inter = lin(h1, "intermediate.dense")
    gelu = 0.5 * inter * (1.0 + _erf(inter / math.sqrt(2.0)))
    return np_ln(lin(gelu, "output.dense") + h1,
                 w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)


def np_full(ids, mask, w, cfg):
    T = ids.shape[1]
    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][:T][None]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = np_ln(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], cfg["layer_norm_eps"])
    for i in range(cfg["num_hidden_layers"]):
        x = np_layer(x, mask, w, cfg, i)
    return x


# --------------------------------------------------------------------------
# timing


def session(model, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def time_runs(sess, feeds, reps):
    for _ in range(WARMUP):
        sess.run(None, feeds)
    us = np.empty(reps)
    for r in range(reps):
        t0 = time.perf_counter_ns()
        sess.run(None, feeds)
        us[r] = (time.perf_counter_ns() - t0) / 1e3
    p50, p90, p99 = np.percentile(us, [50, 90, 99])
    return {"p50_us": round(float(p50), 1), "p90_us": round(float(p90), 1),
            "p99_us": round(float(p99), 1)}


def random_ids(rng, b, t, vocab):
    ids = rng.integers(1000, vocab, size=(b, t), dtype=np.int64)
    ids[:, 0] = 101  # [CLS]
    ids[:, -1] = 102  # [SEP]
    return ids


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="HF BERT dir (config.json, model.safetensors)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lengths", default="16,32,64")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=None,
                    help="timed runs (default 200 at batch 1, 20 for the batch)")
    ap.add_argument("--batch-reps", type=int, default=None,
                    help="timed runs for the batch (default: --reps, else 20)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--save-onnx", metavar="DIR", help="also write full.onnx and layer.onnx here")
    args = ap.parse_args()
    lengths = [int(s) for s in args.lengths.split(",") if s]
    reps_b1 = args.reps if args.reps is not None else 200
    reps_bn = args.batch_reps if args.batch_reps is not None else (
        args.reps if args.reps is not None else 20)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    cfg, w, prefix = load_checkpoint(args.model)
    H, V = cfg["hidden_size"], cfg["vocab_size"]
    if max(lengths + [32]) > cfg["max_position_embeddings"]:
        sys.exit("a length exceeds max_position_embeddings")
    full, layer = build_full(cfg, w), build_layer(cfg, w)
    if args.save_onnx:
        os.makedirs(args.save_onnx, exist_ok=True)
        onnx.save(full, os.path.join(args.save_onnx, "full.onnx"))
        onnx.save(layer, os.path.join(args.save_onnx, "layer.onnx"))
    sf, sl = session(full, args.threads), session(layer, args.threads)
    log(f"model {args.model}: {cfg['num_hidden_layers']} layers, hidden {H}, "
        f"{cfg['num_attention_heads']} heads, intermediate {cfg['intermediate_size']}, "
        f"tensor prefix {prefix or 'none'!r}")

    # correctness: one random sequence of length 20, all tokens valid
    rng = np.random.default_rng(0)
    ids = random_ids(rng, 1, 20, V)
    mask = np.ones((1, 20), dtype=np.float32)
    ref = np_full(ids, mask, w, cfg)
    got = sf.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    diff = float(np.abs(got - ref).max())
    # extra checks: a padded batch (row 1 has its last 6 positions masked), one layer
    ids2 = random_ids(rng, 2, 20, V)
    mask2 = np.ones((2, 20), dtype=np.float32)
    mask2[1, 14:] = 0.0
    diff_masked = float(np.abs(
        sf.run(None, {"input_ids": ids2, "attention_mask": mask2})[0]
        - np_full(ids2, mask2, w, cfg)).max())
    hid = rng.standard_normal((2, 20, H)).astype(np.float32)
    diff_layer = float(np.abs(
        sl.run(None, {"hidden": hid, "attention_mask": mask2})[0]
        - np_layer(hid, mask2, w, cfg, 0)).max())
    log(f"numpy vs ORT max abs diff: full T=20 {diff:.3g}, "
        f"padded batch {diff_masked:.3g}, one layer {diff_layer:.3g}")

    res = {"ort_version": ort.__version__, "threads": args.threads,
           "full_b1": {}, "layer_b1": {}}
    for t in lengths:
        ids = random_ids(rng, 1, t, V)
        m = np.ones((1, t), dtype=np.float32)
        res["full_b1"][str(t)] = time_runs(sf, {"input_ids": ids, "attention_mask": m}, reps_b1)
        hid = rng.standard_normal((1, t, H)).astype(np.float32)
        res["layer_b1"][str(t)] = time_runs(sl, {"hidden": hid, "attention_mask": m}, reps_b1)
    ids = random_ids(rng, args.batch, 32, V)
    m = np.ones((args.batch, 32), dtype=np.float32)
    bn = time_runs(sf, {"input_ids": ids, "attention_mask": m}, reps_bn)
    bn["batch"] = args.batch
    bn["seq_per_s"] = round(args.batch / (bn["p50_us"] / 1e6), 1)
    res[f"full_b{args.batch}_t32"] = bn
    res["numpy_max_abs_diff"] = diff
    res["numpy_max_abs_diff_padded"] = diff_masked
    res["layer_numpy_max_abs_diff"] = diff_layer
    res["reps_b1"], res["reps_batch"] = reps_b1, reps_bn

    if args.json:
        print(json.dumps(res))
        return
    print(f"onnxruntime {ort.__version__}, CPUExecutionProvider, threads {args.threads}, "
          f"ORT_ENABLE_ALL, {WARMUP} warm-up + {reps_b1} timed runs (batch 1)")
    print(f"{'T':>4} | {'full p50':>10} {'p90':>10} {'p99':>10} | "
          f"{'layer p50':>10} {'p90':>10} {'p99':>10}   (us, batch 1)")
    for t in lengths:
        f, l = res["full_b1"][str(t)], res["layer_b1"][str(t)]
        print(f"{t:>4} | {f['p50_us']:>10.1f} {f['p90_us']:>10.1f} {f['p99_us']:>10.1f} | "
              f"{l['p50_us']:>10.1f} {l['p90_us']:>10.1f} {l['p99_us']:>10.1f}")
    print(f"full, batch {args.batch} x T=32, {reps_bn} runs: p50 {bn['p50_us']:.1f} us, "
          f"p90 {bn['p90_us']:.1f}, p99 {bn['p99_us']:.1f} -> {bn['seq_per_s']:.1f} seq/s")


if __name__ == "__main__":
    main()
