"""``python -m superpos run EXPERIMENT``: the hypothesis experiments, each printing a verdict and writing a report."""
from __future__ import annotations

import argparse

from .cli import positive


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got '{text}'") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got '{text}'")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of numbers, got '{text}'") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected numbers in (0, 1], got '{text}'")
    return values


def register(sub) -> None:
    run = sub.add_parser("run", help="run an experiment (prints a verdict, writes report.md/.html + figures)",
                         description="Run one of superpos's hypothesis experiments on a model.")
    exp = run.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    p = exp.add_parser("orthogonality", help="exp(N_emb) near-orthogonality of token directions and dictionaries",
                       description="Hypothesis 1: does the residual stream hold far more than d nearly orthogonal "
                                   "directions? Token-embedding geometry vs random nulls and bounds, a sweep of TopK "
                                   "SAE sizes, and atom–token alignment. See docs/orthogonality.md.")
    p.add_argument("--out", default="runs/orthogonality", help="output folder (default runs/orthogonality)")
    p.add_argument("--model", default=None, help="model (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--store", default=None, help="existing store holding --layer (default: harvest one into --out)")
    p.add_argument("--layer", type=int, default=None, help="residual layer for the dictionary sweep (default: middle)")
    p.add_argument("--harvest-tokens", type=positive(int), default=65536, help="tokens to harvest when no --store (default 65536)")
    p.add_argument("--expansions", type=_int_list, default=[1, 2, 4, 8, 16, 32],
                   help="dictionary sizes in multiples of d_model (default 1,2,4,8,16,32)")
    p.add_argument("--k", type=positive(int), default=32, help="TopK k, and PCA's size for the baseline (default 32)")
    p.add_argument("--fit-tokens", type=positive(int), default=400_000, help="training tokens per SAE (default 400000)")
    p.add_argument("--eps", type=_float_list, default=[0.1, 0.2, 0.3, 0.4, 0.5], help="ε grid for capacity curves")
    p.add_argument("--capacity-sample", type=positive(int), default=16384, help="token directions used for capacity (default 16384)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.set_defaults(func=cmd_orthogonality)


def cmd_orthogonality(args) -> int:
    from .hypotheses.orthogonality import OrthogonalityConfig, run

    cfg = OrthogonalityConfig(model=args.model, store=args.store, layer=args.layer, harvest_tokens=args.harvest_tokens,
                              expansions=args.expansions, k=args.k, fit_tokens=args.fit_tokens, eps_grid=args.eps,
                              capacity_sample=args.capacity_sample, seed=args.seed, device=args.device, out=args.out)
    res = run(cfg)
    v = res["verdict"]
    print(v["headline"])
    for line in v["criteria"]:
        print("  " + line)
    print("  " + v["context"])
    print(f"report: {args.out}/report.md")
    return 0
