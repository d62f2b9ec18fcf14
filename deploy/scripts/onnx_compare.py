#!/usr/bin/env python3
"""Times ONNX Runtime on the same weights as `offramp bench blocks`.

Exports a bundle (manifest.json + model.safetensors) to ONNX graphs built with
the `onnx` helper API, checks each graph against a plain numpy forward pass,
and times onnxruntime with the methodology of `offramp bench blocks`: a
warm-up, then `--iters` timed calls, reporting the median (p50) per call.

Graphs timed (B-LeNet names; any bundle of conv2d / linear / flatten layers
works):

- each block, and each exit head on its block's output;
- `edge K`: blocks [0, K) and the exits after them (outputs: the hidden state
  at K and those exits' logits);
- `cloud K`: blocks [K, N) and their exits, from the hidden state at K;
- `full`: every block and every exit (what the executor computes when no
  sample leaves early).

Batch 1: latency per call. Batch 32: throughput = 32 / p50.

Not used by the tests or the README's commands. Needs
`pip install onnx onnxruntime safetensors numpy`.

    python3 deploy/scripts/onnx_compare.py --model models/b-lenet-mnist [--split 1] \
        [--iters 2000] [--threads 1] [--rust-json bench.json]

`--rust-json` takes the output of `offramp bench blocks --json` from the same
session and prints both side by side.
"""

import argparse
import json
import os
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file


def layer_nodes(spec, prefix, x, weights, wname, nodes, inits):
    """Appends the ONNX nodes of one manifest layer; returns the output name."""
    kind = spec["kind"]
    if kind == "conv2d":
        w, b = weights[wname("weight")], weights[wname("bias")]
        inits += [numpy_helper.from_array(w, prefix + "_w"), numpy_helper.from_array(b, prefix + "_b")]
        k, s, p = spec["kernel"], spec.get("stride", 1), spec.get("padding", 0)
        y = prefix + "_conv"
        nodes.append(
            helper.make_node(
                "Conv", [x, prefix + "_w", prefix + "_b"], [y], kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p]
            )
        )
        if spec.get("relu", False):
            nodes.append(helper.make_node("Relu", [y], [prefix + "_relu"]))
            y = prefix + "_relu"
        if spec.get("pool"):
            q = spec["pool"]
            nodes.append(helper.make_node("MaxPool", [y], [prefix + "_pool"], kernel_shape=[q, q], strides=[q, q]))
            y = prefix + "_pool"
        return y
    if kind == "linear":
        w, b = weights[wname("weight")], weights[wname("bias")]
        inits += [numpy_helper.from_array(w, prefix + "_w"), numpy_helper.from_array(b, prefix + "_b")]
        y = prefix + "_gemm"
        nodes.append(helper.make_node("Gemm", [x, prefix + "_w", prefix + "_b"], [y], transB=1))
        if spec.get("relu", False):
            nodes.append(helper.make_node("Relu", [y], [prefix + "_relu"]))
            y = prefix + "_relu"
        return y
    if kind == "flatten":
        y = prefix + "_flat"
        nodes.append(helper.make_node("Flatten", [x], [y], axis=1))
        return y
    raise SystemExit(f"layer kind {kind!r} is not supported by this script")


def shapes_through(manifest):
    """shape[k] entering block k (batch excluded), like Bundle::shape_at."""
    shape = list(manifest["input"]["shape"])
    out = [shape]
    for block in manifest["blocks"]:
        shape = out_shape(block, shape)
        out.append(shape)
    return out


def out_shape(spec, shape):
    if spec["kind"] == "conv2d":
        c, h, w = shape
        k, s, p = spec["kernel"], spec.get("stride", 1), spec.get("padding", 0)
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if spec.get("pool"):
            oh, ow = oh // spec["pool"], ow // spec["pool"]
        return [spec["out_channels"], oh, ow]
    if spec["kind"] == "linear":
        return [spec["out_features"]]
    return [int(np.prod(shape))]


def build(manifest, weights, blocks, exits, with_hidden):
    """A graph running `blocks` (a range) and the exit heads in `exits`."""
    shapes = shapes_through(manifest)
    nodes, inits, outputs = [], [], []
    x = "input"
    inp = helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch"] + shapes[blocks.start])
    for b in blocks:
        spec = manifest["blocks"][b]
        x = layer_nodes(spec, f"b{b}", x, weights, lambda s, b=b: f"blocks.{b}.{s}", nodes, inits)
        for e, ex in enumerate(manifest["exits"]):
            if ex["after_block"] == b and e in exits:
                h = x
                for l, spec in enumerate(ex["layers"]):
                    h = layer_nodes(spec, f"e{e}_{l}", h, weights, lambda s, e=e, l=l: f"exits.{e}.{l}.{s}", nodes, inits)
                outputs.append(helper.make_tensor_value_info(h, TensorProto.FLOAT, ["batch", len(manifest["labels"])]))
    if with_hidden or not outputs:
        outputs.insert(0, helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch"] + shapes[blocks.stop]))
    graph = helper.make_graph(nodes, "offramp", [inp], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def np_layer(spec, x, w, b):
    """Reference forward of one layer in numpy (to check the export)."""
    if spec["kind"] == "conv2d":
        k, s, p = spec["kernel"], spec.get("stride", 1), spec.get("padding", 0)
        n, c, h, wd = x.shape
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        oh, ow = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
        cols = np.empty((n, c, k, k, oh, ow), np.float64)
        for i in range(k):
            for j in range(k):
                cols[:, :, i, j] = xp[:, :, i : i + s * (oh - 1) + 1 : s, j : j + s * (ow - 1) + 1 : s]
        y = np.einsum("ocij,ncijhw->nohw", w.astype(np.float64), cols) + b[None, :, None, None]
        if spec.get("relu", False):
            y = np.maximum(y, 0)
        if spec.get("pool"):
            q = spec["pool"]
            ph, pw = y.shape[2] // q, y.shape[3] // q
            y = y[:, :, : ph * q, : pw * q].reshape(n, y.shape[1], ph, q, pw, q).max(axis=(3, 5))
        return y
    if spec["kind"] == "linear":
        y = x @ w.T.astype(np.float64) + b
        return np.maximum(y, 0) if spec.get("relu", False) else y
    return x.reshape(x.shape[0], -1)


def np_forward(manifest, weights, blocks, exits, x):
    outs = []
    x = x.astype(np.float64)
    for b in blocks:
        spec = manifest["blocks"][b]
        x = np_layer(spec, x, weights.get(f"blocks.{b}.weight"), weights.get(f"blocks.{b}.bias"))
        for e, ex in enumerate(manifest["exits"]):
            if ex["after_block"] == b and e in exits:
                h = x
                for l, spec in enumerate(ex["layers"]):
                    h = np_layer(spec, h, weights.get(f"exits.{e}.{l}.weight"), weights.get(f"exits.{e}.{l}.bias"))
                outs.append(h)
    return x, outs


def time_us(iters, f):
    """Same as deploy/src/bench.rs: warm-up max(iters/10, 3) calls, then p50 of `iters` timed calls."""
    for _ in range(max((iters + 9) // 10, 3)):
        f()
    v = []
    for _ in range(iters):
        t = time.perf_counter_ns()
        f()
        v.append((time.perf_counter_ns() - t) / 1e3)
    return statistics.median(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/b-lenet-mnist")
    ap.add_argument("--split", type=int, default=1)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (1: single-threaded)")
    ap.add_argument("--save", help="also write the full graph to this .onnx file")
    ap.add_argument("--rust-json", help="output of `offramp bench blocks --json` to print alongside")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()

    manifest = json.load(open(os.path.join(args.model, "manifest.json")))
    weights = load_file(os.path.join(args.model, manifest.get("weights", "model.safetensors")))
    n, k = len(manifest["blocks"]), args.split
    all_exits = set(range(len(manifest["exits"])))
    exits_in = lambda r: {e for e, ex in enumerate(manifest["exits"]) if ex["after_block"] in r}
    graphs = {}
    for b in range(n):
        graphs[f"block {b} ({manifest['blocks'][b]['name']})"] = (range(b, b + 1), set(), True)
    for e, ex in enumerate(manifest["exits"]):
        # The exit head alone, on its block's output: a one-block graph minus that block.
        graphs[f"exit {e} ({ex['name']})"] = ("head", e)
    graphs[f"edge K={k}"] = (range(0, k), exits_in(range(0, k)), True)
    graphs[f"cloud K={k}"] = (range(k, n), exits_in(range(k, n)), False)
    graphs["full"] = (range(0, n), all_exits, False)

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    shapes = shapes_through(manifest)
    rng = np.random.default_rng(0)
    results = {}
    for name, g in graphs.items():
        if g[0] == "head":
            e = g[1]
            ex = manifest["exits"][e]
            nodes, inits = [], []
            h = "input"
            for l, spec in enumerate(ex["layers"]):
                h = layer_nodes(spec, f"e{e}_{l}", h, weights, lambda s, l=l: f"exits.{e}.{l}.{s}", nodes, inits)
            shape_in = shapes[ex["after_block"] + 1]
            graph = helper.make_graph(
                nodes,
                "head",
                [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch"] + shape_in)],
                [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["batch", len(manifest["labels"])])],
                inits,
            )
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            model.ir_version = 8
            check = None
        else:
            blocks, exits, hidden = g
            model = build(manifest, weights, blocks, exits, hidden)
            shape_in = shapes[blocks.start]
            check = (blocks, exits, hidden)
        if name == "full" and args.save:
            onnx.save(model, args.save)
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        results[name] = {}
        for batch in (1, 32):
            x = rng.random((batch, *shape_in), dtype=np.float32)
            feed = {"input": x}
            if check is not None:
                got = sess.run(None, feed)
                hid, outs = np_forward(manifest, weights, check[0], check[1], x)
                want = ([hid] if check[2] or not outs else []) + outs
                for a, b in zip(got, want):
                    err = np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b)))
                    assert err < 1e-4, f"{name}: ONNX export differs from numpy by {err}"
            us = time_us(args.iters if batch == 1 else max(args.iters // 8, 50), lambda: sess.run(None, feed))
            results[name][f"batch_{batch}"] = {"p50_us": us, "samples_per_s": batch / us * 1e6}

    print(f"onnxruntime {ort.__version__}, intra-op threads {args.threads}, model {args.model}")
    print(f"{'':<22} {'batch 1 p50 µs':>15} {'batch 32 p50 µs':>16} {'batch 32 samples/s':>19}")
    for name, r in results.items():
        b1, b32 = r["batch_1"], r["batch_32"]
        print(f"{name:<22} {b1['p50_us']:>15.1f} {b32['p50_us']:>16.1f} {b32['samples_per_s']:>19.0f}")

    if args.rust_json:
        rust = json.load(open(args.rust_json))
        cmp = rust.get("compare")
        if cmp is None:
            raise SystemExit(f"{args.rust_json} has no `compare` section (run `offramp bench blocks --json`)")
        print()
        print("batch 1 latency (p50 µs) and batch 32 throughput (samples/s), same session:")
        print(
            f"{'':<22} {'candle':>9} {'offramp':>9} {'onnxrt':>9} {'cand/off':>9} {'off/ort':>8}"
            f" | {'candle':>9} {'offramp':>9} {'onnxrt':>9} {'off/ort':>8}"
        )
        for row in cmp:
            name = row["name"]
            if name not in results:
                continue
            o1, o32 = results[name]["batch_1"]["p50_us"], results[name]["batch_32"]["samples_per_s"]
            c1, f1 = row["batch_1"]["candle_us"], row["batch_1"]["offramp_us"]
            c32, f32 = row["batch_32"]["candle_samples_per_s"], row["batch_32"]["offramp_samples_per_s"]
            print(
                f"{name:<22} {c1:>9.1f} {f1:>9.1f} {o1:>9.1f} {c1 / f1:>8.1f}x {f1 / o1:>7.2f}x"
                f" | {c32:>9.0f} {f32:>9.0f} {o32:>9.0f} {f32 / o32:>7.2f}x"
            )
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
