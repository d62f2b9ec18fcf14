#!/usr/bin/env python3
"""llama.cpp CPU decode-speed baseline (through llama-cpp-python).

Loads a GGUF model (made for SmolLM2-135M-Instruct.Q4_1.gguf, which
deploy/scripts/llamacpp_setup.sh unpacks) with
llama_cpp.Llama(n_threads=N, n_threads_batch=N, n_ctx=512, verbose=False)
and, per run:

- prompt: PROMPT_TEXT below tokenized with add_bos=False, special=False, the
  token list repeated and cut to exactly --prompt-tokens ids;
- prefill: one llm.eval(prompt) (the whole prompt in one batch, logits of the
  last position only), timed with time.perf_counter;
- time to first token: prefill + argmax of the last logits (read with
  llama_get_logits_ith(ctx, -1));
- decode: --new-tokens greedy steps, each = argmax over the current logits
  (EOS ignored) then llm.eval([tok]), so exactly --new-tokens single-token
  forward passes are timed (as llama-bench's tg test counts them);
  decode tokens/s = new_tokens / decode seconds.

Each run also records other_cpu_busy_frac: the share of all CPUs' time
that other processes used during it (/proc/stat less this process's own
CPU time); runs far above 0 were measured on a contended machine.

The KV cache is reset (llm.reset(); eval drops cache entries past n_tokens)
before each run. --warmup untimed runs go first. The greedy ids of the first
32 generated tokens are printed (and checked equal across runs) so another
implementation can compare outputs.

Usage:
  $VENV/bin/python deploy/scripts/llamacpp_decode.py \
      --model /work/models-cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
      --threads 1 --runs 3 [--json]
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import llama_cpp

PROMPT_TEXT = (
    "The history of the printing press begins in the fifteenth century, when "
    "Johannes Gutenberg combined movable metal type, oil-based ink and a "
    "wooden screw press into a system that could produce books quickly and "
    "cheaply. Within a few decades, printing shops had spread to every major "
    "city in Europe, and the number of books in circulation grew from "
    "thousands to millions. Scholars could now share ideas faster than ever "
    "before, and ordinary people began to learn to read."
)

N_GREEDY_IDS = 32


def build_prompt(llm, n):
    base = llm.tokenize(PROMPT_TEXT.encode("utf-8"), add_bos=False, special=False)
    if not base:
        raise SystemExit("prompt text tokenized to nothing")
    toks = []
    while len(toks) < n:
        toks.extend(base)
    return toks[:n]


def last_logits(llm):
    # Logits of the last evaluated position, read straight from the llama.cpp
    # context (llama_get_logits_ith(ctx, -1)): since llama-cpp-python 0.3.x,
    # Llama.eval no longer copies them into llm.scores unless logits_all=True.
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def cpu_snapshot():
    """(busy, total) jiffies of the whole machine from /proc/stat, and this
    process's CPU seconds; None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    t = os.times()
    return sum(v[:8]) - idle, sum(v[:8]), t.user + t.system


def other_busy(a, b):
    """Fraction of all CPUs' time used by other processes between snapshots
    (0 = the machine had nothing else running): a benchmark on a shared
    2-core box is only trustworthy when this stays near 0."""
    if a is None or b is None or b[1] == a[1]:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    own = (b[2] - a[2]) * hz
    return max(0.0, (b[0] - a[0] - own) / (b[1] - a[1]))


def one_run(llm, prompt, new_tokens):
    llm.reset()
    snap0 = cpu_snapshot()
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    tok = int(np.argmax(last_logits(llm)))
    t_first = time.perf_counter()
    generated = []
    t2 = time.perf_counter()
    for i in range(new_tokens):
        if i > 0:
            tok = int(np.argmax(last_logits(llm)))
        generated.append(tok)
        llm.eval([tok])
    t3 = time.perf_counter()
    snap1 = cpu_snapshot()
    prefill_s = t1 - t0
    decode_s = t3 - t2
    return {
        "prefill_s": prefill_s,
        "prefill_tokens_per_s": len(prompt) / prefill_s,
        "time_to_first_token_ms": (t_first - t0) * 1e3,
        "decode_s": decode_s,
        "decode_tokens_per_s": new_tokens / decode_s,
        "decode_ms_per_token": decode_s * 1e3 / new_tokens,
        "other_cpu_busy_frac": other_busy(snap0, snap1),
        "generated": generated,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="path of the GGUF file")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args()
    if a.prompt_tokens < 1 or a.new_tokens < 1 or a.runs < 1:
        ap.error("--prompt-tokens, --new-tokens and --runs must be >= 1")
    if a.prompt_tokens + a.new_tokens > a.n_ctx:
        ap.error("--prompt-tokens + --new-tokens exceeds --n-ctx")

    llm = llama_cpp.Llama(
        model_path=a.model,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        n_ctx=a.n_ctx,
        n_batch=max(512, a.prompt_tokens),
        verbose=False,
    )
    prompt = build_prompt(llm, a.prompt_tokens)

    for _ in range(a.warmup):
        one_run(llm, prompt, a.new_tokens)
    runs = [one_run(llm, prompt, a.new_tokens) for _ in range(a.runs)]

    greedy = runs[0]["generated"][:N_GREEDY_IDS]
    consistent = all(r["generated"] == runs[0]["generated"] for r in runs)
    greedy_text = llm.detokenize(runs[0]["generated"][:N_GREEDY_IDS]).decode(
        "utf-8", errors="replace")
    med = lambda k: statistics.median(r[k] for r in runs)
    out = {
        "engine": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
        "model": a.model,
        "threads": a.threads,
        "n_ctx": a.n_ctx,
        "prompt_tokens": a.prompt_tokens,
        "new_tokens": a.new_tokens,
        "warmup_runs": a.warmup,
        "decode_tokens_per_s_median": med("decode_tokens_per_s"),
        "decode_ms_per_token_median": med("decode_ms_per_token"),
        "prefill_tokens_per_s_median": med("prefill_tokens_per_s"),
        "time_to_first_token_ms_median": med("time_to_first_token_ms"),
        "runs": [{k: v for k, v in r.items() if k != "generated"} for r in runs],
        "prompt_text": PROMPT_TEXT,
        "prompt_ids": prompt,
        "greedy_ids": greedy,
        "greedy_text": greedy_text,
        "greedy_consistent_across_runs": consistent,
        "system_info": llama_cpp.llama_print_system_info().decode(
            "utf-8", errors="replace").strip(),
    }
    if a.json:
        print(json.dumps(out))
        return
    print(f"llama.cpp (llama-cpp-python {out['llama_cpp_python']}) {a.model}")
    print(f"threads={a.threads} prompt_tokens={a.prompt_tokens} "
          f"new_tokens={a.new_tokens} warmup={a.warmup}")
    for i, r in enumerate(out["runs"]):
        print(f"run {i + 1}: decode {r['decode_tokens_per_s']:.1f} tok/s "
              f"({r['decode_ms_per_token']:.2f} ms/tok)  prefill "
              f"{r['prefill_tokens_per_s']:.1f} tok/s  TTFT "
              f"{r['time_to_first_token_ms']:.1f} ms"
              + ("" if r["other_cpu_busy_frac"] is None else
                 f"  other-CPU {100 * r['other_cpu_busy_frac']:.0f}%"))
    print(f"median: decode {out['decode_tokens_per_s_median']:.1f} tok/s  "
          f"prefill {out['prefill_tokens_per_s_median']:.1f} tok/s  TTFT "
          f"{out['time_to_first_token_ms_median']:.1f} ms")
    print(f"prompt ids: {prompt}")
    print(f"greedy ids (first {N_GREEDY_IDS}): {greedy}"
          + ("" if consistent else "  (WARNING: runs differ)"))
    print(f"greedy text: {greedy_text!r}")


if __name__ == "__main__":
    sys.exit(main())
