"""Causal attention at the harvest's shape, against the bound the harvest benchmark charges it at.

The harvest bound (benchmarks/harvest_bench.py) counts attention's two causal products at the GEMM rate. This
times, at the default model's shape (SmolLM2-135M: 9 query heads, 3 key/value heads, head size 64; batches of
8 × 256 tokens), every way torch offers to compute it — the fused SDPA kernel the model runs (with the key/value
heads repeated, and with ``enable_gqa``), and unfused: the two products with a softmax in between — and each
part of the unfused path alone, so that the distance of the fastest to the bound is visible.

    python benchmarks/attention.py

GFLOP/s count the useful causal work: 2 · 2 · B · H · T² · D / 2 (both products, half the square).
"""
from __future__ import annotations

import platform
import time

import torch
import torch.nn.functional as F
from harvest_bench import gemm_rate

B, T, H, HKV, D = 8, 256, 9, 3, 64
REPS = 30


def seconds(fn) -> float:
    """Mean seconds per call over REPS calls, after two warm-up calls."""
    fn(), fn()
    t0 = time.perf_counter()
    for _ in range(REPS):
        fn()
    return (time.perf_counter() - t0) / REPS


def main() -> None:
    torch.manual_seed(0)
    useful = 2 * 2 * B * H * T * T * D / 2
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; B {B}, T {T}, heads {H} (kv {HKV}), head size {D}")
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(B, H, T, D, dtype=dtype)
        k, v = torch.randn(B, HKV, T, D, dtype=dtype), torch.randn(B, HKV, T, D, dtype=dtype)
        k_full, v_full = k.repeat_interleave(H // HKV, 1), v.repeat_interleave(H // HKV, 1)
        above = torch.ones(T, T, dtype=torch.bool).triu(1)
        scores = q @ k_full.transpose(-1, -2)
        ref = F.scaled_dot_product_attention(q, k_full, v_full, is_causal=True).float()

        def unfused(softmax_dtype):
            s = (q @ k_full.transpose(-1, -2)).mul_(D ** -0.5).masked_fill_(above, float("-inf"))
            return torch.softmax(s, -1, dtype=softmax_dtype).to(dtype) @ v_full

        ways = {
            "SDPA, causal (what the model runs)": lambda: F.scaled_dot_product_attention(q, k_full, v_full,
                                                                                         is_causal=True),
            "SDPA, causal, enable_gqa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                               enable_gqa=True),
            f"unfused, softmax in {str(dtype).split('.')[1]}": lambda: unfused(dtype),
            "unfused, softmax in float32": lambda: unfused(torch.float32),
        }
        parts = {"  part: Q·Kᵀ (full square)": lambda: q @ k_full.transpose(-1, -2),
                 "  part: softmax (full square)": lambda: torch.softmax(scores, -1),
                 "  part: scale and mask (full square)": lambda: scores.mul(D ** -0.5).masked_fill_(above, 0.0)}
        rate = gemm_rate(dtype, B * T, 576, 1536)
        print(f"\n{str(dtype).split('.')[1]}: GEMM rate {rate / 1e9:,.0f} GFLOP/s; both causal products at that rate: "
              f"{useful / rate * 1e3:.2f} ms")
        print("| way | ms | GFLOP/s (causal work) | of the bound | max abs error vs SDPA |\n|---|---|---|---|---|")
        for name, fn in {**ways, **parts}.items():
            s = seconds(fn)
            out = fn()
            err = f"{(out.float() - ref).abs().max().item():.2g}" if out.shape == ref.shape else "—"
            print(f"| {name} | {s * 1e3:.2f} | {useful / s / 1e9:,.0f} | {useful / rate / s:.2f} | {err} |")


if __name__ == "__main__":
    main()
