"""Harvest throughput vs a bare forward pass over the same batches, on the default model.

    python benchmarks/harvest_vs_forward.py [--tokens 8192] [--model default]

Prints tokens/s for both and their ratio (harvest time / bare forward time), measured in one run.
"""
import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from superpos.model.corpus import default_bos_id, load_corpus, pack_contexts
from superpos.model.harvest import HarvestConfig, bare_forward_time, harvest
from superpos.model.load import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    lm = load_model(args.model, device="cpu")
    packed = pack_contexts(lm.tokenizer, load_corpus(None), 256, default_bos_id(lm.tokenizer), args.tokens)
    n = packed.tokens_NC.size
    bare_forward_time(lm, pack_contexts(lm.tokenizer, load_corpus(None), 256, 1, 512), 2)  # warm-up
    bare = bare_forward_time(lm, packed, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = HarvestConfig(model=args.model, tokens=args.tokens, batch_size=args.batch_size, device="cpu")
        t0 = time.perf_counter()
        harvest(cfg, Path(tmp) / "h.h5", lm=lm, progress=False)
        full = time.perf_counter() - t0
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{lm.name}: {n} tokens, batch {args.batch_size}×256, default layers")
    print(f"bare forward  {n / bare:8.1f} tok/s")
    print(f"harvest       {n / full:8.1f} tok/s   ratio harvest/bare = {full / bare:.2f}")


if __name__ == "__main__":
    main()
