"""The harvest against what it must do: tokens/s for a few layer sets, against the bare whole-model forward and
against the FLOP bound of the blocks each set needs (this machine's own GEMM rate), in float32 and bfloat16.

"Today's harvest" is the harvest as it was before it stopped at the deepest block: the whole model with its LM head
(``--token-stats``), default layers. The bound counts the matrix products a layer set cannot avoid — every linear
layer of the blocks up to its deepest layer and the causal attention products (plus the LM head for the whole-model
rows) — at the GEMM rate measured here on a (rows × d_model) · (d_model × d_ff) product of the same shape.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

LAYER_SETS = {"{5}": "5", "{15}": "15", "{5, 15, 25}": "5,15,25", "{all}": "all"}
REPEATS = 2  # timed harvests per row


def gemm_rate(dtype: torch.dtype, rows: int, d: int, f: int, device: str = "cpu", reps: int = 5) -> float:
    """FLOP/s of (rows × d) · (d × f) in ``dtype``: the faster of ``torch.mm`` and ``F.linear`` (the kernel the
    model's layers call; on a CPU without bfloat16 hardware only it has a fast bfloat16 path), best of ``reps``
    after a warm-up."""
    a, b = torch.randn(rows, d, dtype=dtype, device=device), torch.randn(d, f, dtype=dtype, device=device)
    w = b.T.contiguous()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = float("inf")
    for fn in (lambda: torch.mm(a, b), lambda: torch.nn.functional.linear(a, w)):
        fn()
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - t0)
    return 2 * rows * d * f / best


def block_flops_per_token(lm, context: int) -> tuple[float, float]:
    """(FLOPs of one block, FLOPs of the LM head) per token: 2 × every linear weight of the block, plus the causal
    attention products QKᵀ and AV (on average (context + 1) / 2 keys per query)."""
    block = lm.blocks[0]
    linear = sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear))
    cfg = lm.model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    attn = 2 * 2 * heads * head_dim * (context + 1) / 2
    return 2 * linear + attn, 2 * lm.W_U_VD.numel()


def where_time_goes(lm, n: int, batch: int, device: str, dtype: str, rate: float, per_block: float) -> dict:
    """Where the time of one layer-15 harvest goes, by torch's profiler: the matrix products (and the rate they
    run at, against the GEMM rate above), the attention kernel, every other op, and what is not a torch op (the
    store's writes, Python)."""
    from torch.profiler import ProfilerActivity, profile

    from superpos.model.harvest import HarvestConfig, harvest

    with tempfile.TemporaryDirectory() as tmp, profile(activities=[ProfilerActivity.CPU]) as prof:
        cfg = HarvestConfig(tokens=n, layers="15", batch_size=batch, device=device, model_dtype=dtype)
        t0 = time.perf_counter()
        harvest(cfg, Path(tmp) / "h.h5", lm=lm, progress=False)
        secs = time.perf_counter() - t0
    ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    mm = sum(v for k, v in ops.items() if k in ("aten::mm", "aten::addmm", "aten::bmm"))
    attn = sum(v for k, v in ops.items() if "scaled_dot_product" in k)
    attn_flops = n * 15 * (per_block - 2 * sum(m.weight.numel() for m in lm.blocks[0].modules()
                                              if isinstance(m, torch.nn.Linear)))
    return {"seconds": secs, "matmul": mm / secs, "matmul_of_gemm_rate": (n * 15 * per_block - attn_flops) / rate / mm,
            "attention": attn / secs, "attention_gflops": attn_flops / attn / 1e9 if attn else 0.0,
            "other_ops": (sum(ops.values()) - mm - attn) / secs}


def run_harvest(quick: bool, device: str = "cpu") -> dict:
    from superpos.device import native_bfloat16
    from superpos.model.corpus import default_bos_id, load_corpus, pack_contexts
    from superpos.model.harvest import HarvestConfig, bare_forward_time, harvest
    from superpos.model.load import load_model

    gpu = device.startswith("cuda")
    context, batch = 256, 64 if gpu else 8
    out = {"context": context, "batch": batch, "device": device, "dtypes": {}}
    sizes = (65536, 65536) if gpu else (2048, 1024) if quick else (8192, 4096)
    for dtype, tokens in zip(("float32", "bfloat16"), sizes):
        lm = load_model(None, device=device, dtype=getattr(torch, dtype))
        packed = pack_contexts(lm.tokenizer, load_corpus(None), context, default_bos_id(lm.tokenizer), tokens)
        n = packed.tokens_NC.size
        bare_forward_time(lm, pack_contexts(lm.tokenizer, load_corpus(None), context, 1, 512), 2)  # warm-up
        bare = min(bare_forward_time(lm, packed, batch) for _ in range(REPEATS))
        d_ff = getattr(lm.model.config, "intermediate_size", 4 * lm.d_model)
        rate = gemm_rate(getattr(torch, dtype), batch * context, lm.d_model, d_ff, device)
        per_block, head = block_flops_per_token(lm, context)
        rows = {}
        runs = [("today: default layers + LM head", "default", True)] + [(k, v, False) for k, v in LAYER_SETS.items()]
        for label, layers, stats in runs:
            secs = float("inf")
            for _ in range(REPEATS):  # the best of REPEATS: the least disturbed by the rest of a shared machine
                with tempfile.TemporaryDirectory() as tmp:
                    cfg = HarvestConfig(tokens=tokens, layers=layers, batch_size=batch, device=device,
                                        model_dtype=dtype, token_stats=stats)
                    t0 = time.perf_counter()
                    harvest(cfg, Path(tmp) / "h.h5", lm=lm, progress=False)
                    secs = min(secs, time.perf_counter() - t0)
            deepest = lm.n_layers if stats or layers in ("all", "default") else max(map(int, layers.split(",")))
            flops = n * (deepest * per_block + (head if stats else 0))
            rows[label] = {"tok_s": n / secs, "blocks": deepest, "lm_head": stats, "bound_tok_s": n * rate / flops,
                           "of_bound": (flops / rate) / secs}
            print(f"[harvest {dtype}] {label}: {n / secs:,.0f} tok/s, {100 * rows[label]['of_bound']:.0f} % of its "
                  f"bound ({rows[label]['bound_tok_s']:,.0f} tok/s)", flush=True)
        split = where_time_goes(lm, int(n), batch, device, dtype, rate, per_block)
        today = rows["today: default layers + LM head"]["tok_s"]
        for r in rows.values():
            r["vs_today"] = r["tok_s"] / today
        out["dtypes"][dtype] = {"tokens": int(n), "native": dtype == "float32" or native_bfloat16(torch.device(device)), "bare_tok_s": n / bare, "gemm_tflops": rate / 1e12,
                                "block_mflop_per_token": per_block / 1e6, "head_mflop_per_token": head / 1e6,
                                "rows": rows, "split": split}
        del lm
    return out


def harvest_section(r: dict) -> list[str]:
    L = [f"## Harvest: only the blocks it reads ({r.get('device', 'cpu')})", "",
         f"Default model (SmolLM2-135M, 30 blocks), batches of {r['batch']} × {r['context']} tokens, stored float16 "
         "(uncompressed, the default). Each row: the best of two timed `harvest` runs of the layers named, against the bare whole-model forward (LM head included) "
         "over the same batches and against its own bound, the FLOPs of the blocks it needs (and the LM head where "
         "it runs) at this machine's GEMM rate. \"today\" is what a harvest did before it learned to stop at the "
         "deepest block — the whole model, its LM head and the token statistics, whatever layers are asked for — "
         "run with this code (`--token-stats`, default layers), so it shares every later speed-up of the rest.", ""]
    for dtype, d in r["dtypes"].items():
        emulated = "" if d.get("native", True) else (" — emulated on this machine (no bfloat16 in hardware), "
                                                      "so `--model-dtype auto` picks float32 here")
        L += [f"**{dtype}**{emulated}: {d['tokens']:,} tokens; bare forward {d['bare_tok_s']:,.0f} tok/s; GEMM "
              f"{d['gemm_tflops'] * 1e3:,.0f} GFLOP/s; a block {d['block_mflop_per_token']:.1f} MFLOP/token, the LM "
              f"head {d['head_mflop_per_token']:.1f}.", "",
              "| layers | blocks run | LM head | tok/s | × today | × bare forward | bound tok/s | of bound |",
              "|---|---|---|---|---|---|---|---|"]
        for label, x in d["rows"].items():
            L.append(f"| {label} | {x['blocks']} | {'yes' if x['lm_head'] else 'no'} | {x['tok_s']:,.0f} | "
                     f"{x['vs_today']:.2f} | {x['tok_s'] / d['bare_tok_s']:.2f} | {x['bound_tok_s']:,.0f} | "
                     f"{x['of_bound']:.2f} |")
        if "split" in d:
            x = d["split"]
            other = max(0.0, 1 - x["matmul"] - x["attention"] - x["other_ops"])
            L += ["", f"Where the {{15}} harvest's time goes ({dtype}, torch's profiler): matrix products "
                  f"{x['matmul']:.0%} (running at {x['matmul_of_gemm_rate']:.2f} of the GEMM rate above), the attention "
                  f"kernel {x['attention']:.0%} ({x['attention_gflops']:.0f} GFLOP/s on its causal products), every "
                  f"other torch op (norms, rotary, SiLU, casts) {x['other_ops']:.0%}, and {other:.0%} outside torch "
                  "(the store's writes, Python)."]
        L.append("")
    return L


def harvest_targets(r: dict) -> list[list]:
    rows = []
    for dtype, d in r["dtypes"].items():
        if not d.get("native", True):  # an emulated dtype is never what auto picks: nothing to hold it to
            continue
        x = d["rows"]
        rows.append([f"harvest layer 5 alone ≥ 4 × today's ({dtype})", f"{x['{5}']['vs_today']:.2f}",
                     x["{5}"]["vs_today"] >= 4])
        rows.append([f"harvest layer 15 alone ≥ 2 × today's ({dtype})", f"{x['{15}']['vs_today']:.2f}",
                     x["{15}"]["vs_today"] >= 2])
        worst = min(x.values(), key=lambda v: v["of_bound"])
        rows.append([f"every harvest ≥ 0.7 of its own FLOP bound ({dtype})", f"{worst['of_bound']:.2f} (lowest)",
                     worst["of_bound"] >= 0.7])
    return rows
