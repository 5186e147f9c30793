#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Whole-model parity of hearth's CUDA backend with transformers at real shapes
(issue 4): last-position logits for prompts of 1, 32 and 2048 tokens, and 64
greedy steps from the 2048-token prompt. Run on a GPU machine:

    python3 bench/make_random_model.py --shape 1b --out /tmp/m1b
    python3 tests/gpu/parity_real.py --model /tmp/m1b --hearth-run build-e2e/hearth-run

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
    a = ap.parse_args()
    m = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.bfloat16).cuda().eval()
    vocab = m.config.vocab_size
    rng = np.random.default_rng(7)
    res, ok = {}, True
    for n in (1, 32, 2048):
        toks = rng.integers(3, vocab, size=n).tolist()
        with torch.no_grad():
            ref = m(torch.tensor([toks], device="cuda")).logits[0, -1].float().cpu().numpy()
        steps = a.steps if n == 2048 else 0
        rows, gen = hearth(a.hearth_run, a.model, toks, steps, vocab)
        err = rel_l2(rows[0], ref)
        res[f"prompt{n}_rel_l2"] = err
        ok &= err <= BOUND
        print(f"prompt {n:5d}: relative L2 {err:.4f} (bound {BOUND})")
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
