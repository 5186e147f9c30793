#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Write a random-weight model of a real shape with transformers, for benchmarks
and GPU parity runs (a test tool: torch and transformers are not runtime
dependencies of hearth).

    python3 bench/make_random_model.py --shape 1b --out /tmp/m1b [--device cuda]
"""
import argparse
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

SHAPES = {
    # Llama-3.2-1B
    "1b": dict(cls=(LlamaConfig, LlamaForCausalLM), hidden_size=2048, intermediate_size=8192,
               num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
               vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
               max_position_embeddings=131072,
               rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    # Llama-3.1-8B
    "8b": dict(cls=(LlamaConfig, LlamaForCausalLM), hidden_size=4096, intermediate_size=14336,
               num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
               vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
               max_position_embeddings=131072,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    # A Qwen2 shape with q/k/v bias (Qwen2.5-1.5B)
    "qwen1.5b": dict(cls=(Qwen2Config, Qwen2ForCausalLM), hidden_size=1536, intermediate_size=8960,
                     num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                     vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
                     max_position_embeddings=32768),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=SHAPES, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    spec = dict(SHAPES[a.shape])
    cfg_cls, model_cls = spec.pop("cls")
    cfg = cfg_cls(**spec, torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)
    torch.manual_seed(a.seed)
    with torch.device(a.device):
        model = model_cls(cfg).to(torch.bfloat16)
        # Non-trivial biases where the architecture has them.
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(a.out, safe_serialization=True, max_shard_size="5GB")
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {a.out}: {a.shape}, {n / 1e9:.2f} B parameters, bf16", file=sys.stderr)


if __name__ == "__main__":
    main()
