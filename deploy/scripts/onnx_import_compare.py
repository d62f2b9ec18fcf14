#!/usr/bin/env python3
"""Times ONNX Runtime on the subgraphs of a bundle made by `offramp import onnx`,
beside `offramp bench blocks --json` on the same bundle (tract).

Each block and exit head of an imported bundle is a complete ONNX model, stored
as a u8 tensor (`blocks.{b}.graph`, `exits.{e}.0.graph`) in its
model.safetensors: this script runs exactly those bytes in onnxruntime, with
the methodology of `offramp bench blocks` and deploy/scripts/onnx_compare.py
(a warm-up, then timed calls, the median per call), on the activations the
previous blocks give, at batch 1 and 32. With `--onnx`, the original whole
graph (every exit an output) is timed too, as "full".

    deploy/scripts/ort_env.sh
    target/ort-venv/bin/python deploy/scripts/onnx_import_compare.py --model BUNDLE \
        [--onnx MODEL.onnx] [--rust-json bench.json] [--threads 1] [--iters 2000] [--json]
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(__file__))
from onnx_compare import time_us  # noqa: E402  (same timing loop as the B-LeNet comparison)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a bundle written by `offramp import onnx`")
    ap.add_argument("--onnx", help="the original .onnx, timed whole as `full`")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (1: single-threaded)")
    ap.add_argument("--rust-json", help="output of `offramp bench blocks --json` on the same bundle")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    manifest = json.load(open(os.path.join(args.model, "manifest.json")))
    tensors = load_file(os.path.join(args.model, manifest.get("weights", "model.safetensors")))
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = lambda graph: ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    results = {}
    macs = {}  # multiply-adds per sample of each piece, from the manifest (the inspect profile)
    for batch in (1, 32):
        iters = args.iters if batch == 1 else max(args.iters // 8, 50)
        x = rng.random((batch, *manifest["input"]["shape"]), dtype=np.float32)
        pieces = []
        for b, block in enumerate(manifest["blocks"]):
            pieces.append((f"block {b} ({block['name']})", tensors[f"blocks.{b}.graph"].tobytes(), True))
            macs[pieces[-1][0]] = block["macs"]
            for e, ex in enumerate(manifest["exits"]):
                if ex["after_block"] == b and ex["layers"]:
                    pieces.append((f"exit {e} ({ex['name']})", tensors[f"exits.{e}.0.graph"].tobytes(), False))
                    macs[pieces[-1][0]] = ex["layers"][0]["macs"]
        h = x
        for name, graph, advances in pieces:
            s = session(graph)
            feed = {s.get_inputs()[0].name: h}
            out = s.run(None, feed)[0]
            us = time_us(iters, lambda: s.run(None, feed))
            results.setdefault(name, {})[f"batch_{batch}"] = {"p50_us": us, "samples_per_s": batch / us * 1e6}
            if advances:
                h = out
        if args.onnx:
            s = session(open(args.onnx, "rb").read())
            feed = {s.get_inputs()[0].name: x}
            us = time_us(iters, lambda: s.run(None, feed))
            results.setdefault("full", {})[f"batch_{batch}"] = {"p50_us": us, "samples_per_s": batch / us * 1e6}

    rust = {}
    if args.rust_json:
        r = json.load(open(args.rust_json))
        for batch in (1, 32):
            for p in r[f"batch_{batch}"]["per_block"]:
                rust.setdefault(p["name"], {})[batch] = p["us"]["p50"]
            rust.setdefault("full", {})[batch] = r[f"batch_{batch}"]["bare"]["p50"]
    if args.json:
        print(json.dumps({"onnxruntime": ort.__version__, "threads": args.threads, "ort": results, "tract": rust}))
        return
    print(f"onnxruntime {ort.__version__}, intra-op threads {args.threads}, bundle {args.model}")
    # ratio: tract time / ORT time (below 1: tract faster). ns/MAC at batch
    # 32: measured time per multiply-add of the profile (the planner's cost
    # model assumes it is about constant across blocks).
    head = f"{'':<34} {'MMAC':>7} {'ORT b1 µs':>10} {'b32 µs':>10}"
    if rust:
        head += f" {'tract b1 µs':>12} {'b32 µs':>10} {'b1 ratio':>9} {'b32 ratio':>10} {'ns/MAC b32':>11}"
    print(head)
    for name, r in results.items():
        b1, b32 = r["batch_1"]["p50_us"], r["batch_32"]["p50_us"]
        m = macs.get(name)
        mmac = f"{m / 1e6:>7.3f}" if m is not None else f"{'-':>7}"
        row = f"{name:<34} {mmac} {b1:>10.1f} {b32:>10.1f}"
        if name in rust:
            t1, t32 = rust[name][1], rust[name][32]
            per_mac = f"{t32 * 1e3 / (32 * m):>11.3f}" if m else f"{'-':>11}"
            row += f" {t1:>12.1f} {t32:>10.1f} {t1 / b1:>8.2f}x {t32 / b32:>9.2f}x {per_mac}"
        print(row)


if __name__ == "__main__":
    main()
