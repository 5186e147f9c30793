#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Whole-model parity of hearth's CUDA backend with transformers at real shapes
(issue 4): last-position logits for prompts of 1, 32 and 2048 tokens, and 64
greedy steps from the 2048-token prompt. Run on a GPU machine:

    python3 bench/make_random_model.py --shape 1b --out /tmp/m1b   # or 8b, qwen1.5b
    python3 tests/gpu/parity_real.py --model /tmp/m1b --hearth-run build-e2e/hearth-run

Besides hearth against transformers in bf16 (the issue's bound), it reports both
against transformers in fp32 (the same weights upcast): how far transformers' own
bf16 rounding is from the exact result tells what bound a different but equally
precise bf16 implementation can meet. --no-fp32 skips that (it needs 4 bytes per
parameter of GPU memory more).

Prints one line per check and a final PARITY {json}; exits 1 when a bound fails.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from transformers import AutoModelForCausalLM

BOUND = 2e-2


def rel_l2(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def hearth(run, model, tokens, n_gen, vocab):
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        cmd = [run, "--backend", "cuda", "--model", model, "--tokens",
               " ".join(map(str, tokens)), "--generate", str(n_gen), "--logits", f.name]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"hearth-run failed: {out.stderr}")
        rows = np.fromfile(f.name, dtype="<f4").reshape(-1, vocab)
    gen = [int(t) for t in out.stdout.split("output")[1].split("\n")[0].split()] if n_gen else []
    return rows, gen


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--hearth-run", required=True)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--prompts", default="1,32,2048")
    ap.add_argument("--no-fp32", action="store_true")
    a = ap.parse_args()
    m = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.bfloat16).cuda().eval()
    m32 = None
    if not a.no_fp32:
        m32 = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32).cuda().eval()
    vocab = m.config.vocab_size
    rng = np.random.default_rng(7)
    res, ok = {}, True
    prompts = [int(x) for x in a.prompts.split(",")]
    for n in prompts:
        toks = rng.integers(3, vocab, size=n).tolist()
        with torch.no_grad():
            ref = m(torch.tensor([toks], device="cuda")).logits[0, -1].float().cpu().numpy()
        steps = a.steps if n == max(prompts) else 0
        rows, gen = hearth(a.hearth_run, a.model, toks, steps, vocab)
        err = rel_l2(rows[0], ref)
        res[f"prompt{n}_rel_l2"] = err
        ok &= err <= BOUND
        line = f"prompt {n:5d}: relative L2 {err:.4f} against transformers bf16 (bound {BOUND})"
        if m32 is not None:
            with torch.no_grad():
                r32 = m32(torch.tensor([toks], device="cuda")).logits[0, -1].float().cpu().numpy()
            e_h, e_t = rel_l2(rows[0], r32), rel_l2(ref, r32)
            res[f"prompt{n}_hearth_vs_fp32"] = e_h
            res[f"prompt{n}_bf16_vs_fp32"] = e_t
            line += f"; against fp32: hearth {e_h:.4f}, transformers bf16 {e_t:.4f}"
        print(line, flush=True)
        if not steps:
            continue
        # Greedy: transformers' own continuation with its KV cache.
        with torch.no_grad():
            out = m.generate(torch.tensor([toks], device="cuda"), max_new_tokens=steps,
                             do_sample=False, output_scores=True, return_dict_in_generate=True)
        ref_gen = out.sequences[0, n:].tolist()
        scores = [s[0].float().cpu().numpy() for s in out.scores]
        errs, checked, agree = [], 0, 0
        for i in range(min(len(gen), len(ref_gen))):
            if gen[:i] != ref_gen[:i]:
                break  # the contexts differ from here on
            e = rel_l2(rows[i], scores[i])
            errs.append(e)
            top2 = np.sort(scores[i])[-2:]
            margin = (top2[1] - top2[0]) / max(np.abs(scores[i]).max(), 1e-30)
            if margin > e:
                checked += 1
                agree += gen[i] == ref_gen[i]
        res.update(greedy_max_rel_l2=max(errs), greedy_checked=checked, greedy_agree=agree,
                   greedy_same_prefix=len(errs))
        ok &= max(errs) <= BOUND and agree == checked
        print(f"greedy: {len(errs)} steps on identical contexts, max relative L2 "
              f"{max(errs):.4f}; tokens identical at {agree}/{checked} steps whose top-2 "
              f"margin exceeds the error")
    res["ok"] = bool(ok)
    print("PARITY " + json.dumps(res))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
