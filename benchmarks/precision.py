"""How far a bfloat16 forward's stored rows are from a float32 forward's, on the default model and corpus.

    python benchmarks/precision.py [--tokens 16384] [--out benchmarks/precision.md]

Harvests the same contexts twice (model in float32, then in bfloat16; rows stored as float32 either way) and
reports, per layer, the relative error ‖x_bf16 − x_f32‖ / ‖x_f32‖ over the rows an SAE trains on (position ≥ 1) and
over the attention-sink rows apart, beside the error float16 storage alone adds to the float32 rows (what every
default harvest already accepts). Then one TopK SAE is trained on each store's layer-15 rows (same seed and
settings) and both are scored on the same held-out float32 contexts.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from superpos.dictionaries import TopKSAE
from superpos.model.harvest import HarvestConfig, harvest
from superpos.model.load import load_model
from superpos.store import ActivationStore

LAYERS = (0, 5, 10, 15, 20, 25, 30)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--sae-tokens", type=int, default=400_000)
    ap.add_argument("--seeds", type=int, default=3, help="SAE seeds per store: the bfloat16 gap against seed spread")
    ap.add_argument("--out", default=str(Path(__file__).with_name("precision.md")))
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for dtype in ("float32", "bfloat16"):
            lm = load_model(None, device="cpu", dtype=getattr(torch, dtype))
            cfg = HarvestConfig(tokens=args.tokens, layers=",".join(map(str, LAYERS)), dtype="float32", device="cpu",
                                model_dtype=dtype)
            paths[dtype] = harvest(cfg, Path(tmp) / f"{dtype}.h5", lm=lm, progress=False)
            del lm
        with ActivationStore(paths["float32"]) as a, ActivationStore(paths["bfloat16"]) as b:
            pos = a.row_field("pos")
            body, sink = pos >= 1, pos == 0
            rows = []
            for layer in LAYERS:
                x, y = a.to_numpy(layer), b.to_numpy(layer)
                f16 = x.astype(np.float16).astype(np.float32)
                rows.append((layer, rel(x[body], y[body]), rel(x[sink], y[sink]), rel(x[body], f16[body])))
            # one SAE on each store's layer-15 rows (the first 3/4 of the contexts), scored on the rest in float32
            C = int(a.attrs["context_length"])
            n_ctx = len(pos) // C
            cut = (3 * n_ctx // 4) * C
            train, test = np.arange(cut), np.arange(cut, len(pos))
            test = test[pos[test] >= 1]
            x_test = a.to_numpy(15, test)
            fvu = {}
            tr = train[pos[train] >= 1]
            for name, st in (("float32", a), ("bfloat16", b)):
                x_train = st.to_numpy(15, tr)
                fvu[name] = np.array([1 - TopKSAE(expansion=4, k=32, n_tokens=args.sae_tokens, batch_size=1024,
                                                  seed=seed, progress=False).fit(x_train).score(x_test)
                                      for seed in range(args.seeds)])
    L = ["# bfloat16 forward against float32", "",
         f"Written by `python benchmarks/precision.py --tokens {args.tokens}` on "
         f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads, torch {torch.__version__}), "
         f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - t0:.0f} s. SmolLM2-135M, "
         f"pydoc_data.topics, {args.tokens:,} tokens in contexts of 256.", "",
         "| layer | bfloat16 vs float32, rows at position ≥ 1 | the same, sink rows (position 0) | "
         "float16 storage alone, position ≥ 1 |", "|---|---|---|---|"]
    L += [f"| {layer} | {b_:.4f} | {s_:.4f} | {f_:.5f} |" for layer, b_, s_, f_ in rows]
    f32, b16 = fvu["float32"], fvu["bfloat16"]
    L += ["", f"TopK SAEs (4×, k 32, {args.sae_tokens:,} tokens, seeds 0–{args.seeds - 1}) trained on each store's "
          f"layer-15 rows of the first three quarters of the contexts, scored on the last quarter's float32 rows: "
          f"held-out FVU {f32.mean():.4f} (seeds {', '.join(f'{v:.4f}' for v in f32)}) on float32 rows against "
          f"{b16.mean():.4f} ({', '.join(f'{v:.4f}' for v in b16)}) on bfloat16 rows; the gap of the means is "
          f"{b16.mean() - f32.mean():+.4f} against a seed-to-seed spread (largest minus smallest) of "
          f"{max(np.ptp(f32), np.ptp(b16)):.4f}.", ""]
    Path(args.out).write_text("\n".join(L))
    print("\n".join(L))


if __name__ == "__main__":
    main()
