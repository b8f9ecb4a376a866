"""``python -m superpos run EXPERIMENT``: the hypothesis experiments, each printing a verdict and writing a report."""
from __future__ import annotations

import argparse

from .cli import positive


def _list_of(kind, ok, what: str):
    """argparse type: a comma list of ``kind`` values, each passing ``ok`` (else: expected ``what``)."""
    def parse(text: str):
        try:
            values = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma list of numbers, got '{text}'") from None
        if not values or not all(ok(v) for v in values):
            raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'")
        return values
    return parse


_int_list = _list_of(int, lambda v: v > 0, "positive integers")
_float_list = _list_of(float, lambda v: 0 < v <= 1, "numbers in (0, 1]")
_positive_floats = _list_of(float, lambda v: v > 0, "positive numbers")
_offset_list = _list_of(int, lambda v: abs(v) <= 16, "offsets between -16 and 16")


def register(sub) -> None:
    run = sub.add_parser("run", help="run an experiment (prints a verdict, writes report.md/.html + figures)",
                         description="Run one of superpos's hypothesis experiments on a model.")
    exp = run.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    p = exp.add_parser("all", help="every experiment in sequence, then an index page linking the reports",
                       description="Run orthogonality, lenses, repurposing, probes, lookahead, donation and reinject "
                                   "with their defaults into OUT/<name>, then write OUT/index.html and OUT/index.md "
                                   "with each verdict and a link to its report. --corpus goes to every experiment but "
                                   "orthogonality, which harvests its own store from the default corpus. Hours on a "
                                   "CPU with the default model; --quick is a smoke run.")
    p.add_argument("--out", default="runs/all", help="output folder (default runs/all)")
    _model_corpus_args(p)
    p.add_argument("--only", type=_experiments, default=None, help="comma list of experiments to run (default: all)")
    p.add_argument("--quick", action="store_true", help="small settings for a smoke run (not for conclusions)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.set_defaults(func=cmd_all)

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

    p = exp.add_parser("repurposing", help="unlikely-token repurposing, with logit and tuned lens",
                       description="Hypothesis 2: are directions of tokens that are near-impossible in context used "
                                   "mid-stack and removed before the output? Per-layer effect with nulls (Gaussian with "
                                   "the layer's covariance, random directions, shuffled contexts, same tokens where "
                                   "likely), the logit/tuned-lens view, and optionally a dictionary view. See "
                                   "docs/repurposing.md.")
    p.add_argument("--out", default="runs/repurposing", help="output folder (default runs/repurposing)")
    _model_corpus_args(p)
    p.add_argument("--contexts", type=positive(int), default=64, help="contexts to read (default 64)")
    p.add_argument("--context-length", type=positive(int), default=256, help="tokens per context (default 256)")
    p.add_argument("--per-context", type=positive(int), default=48, help="positions sampled per context (default 48)")
    p.add_argument("--unlikely", type=_probability, default=1e-6,
                   help="final probability below which a token is near-impossible (default 1e-6)")
    p.add_argument("--likely", type=_probability, default=1e-2, help="final probability for 'likely' (default 1e-2)")
    p.add_argument("--exclude-recent", type=int, default=8,
                   help="leave the last N input tokens out of the near-impossible group (default 8)")
    p.add_argument("--z-high", type=float, default=5.0, help="z threshold for counting strong pushes (default 5)")
    p.add_argument("--lens", default=None, help="folder of a saved tuned lens (default: train one into OUT/tuned_lens)")
    p.add_argument("--lens-steps", type=positive(int), default=300, help="tuned-lens training steps (default 300)")
    p.add_argument("--dictionary", default=None, help="SAE folder for the dictionary view (layer from its metadata)")
    p.add_argument("--control", choices=["none", "positive", "negative"], default="none",
                   help="plant a control: token directions (positive) or random directions (negative) written "
                        "at layer n/3 and removed at 2n/3 (default none)")
    p.add_argument("--control-alpha", type=positive(float), default=1.0,
                   help="size of the planted vector, as a multiple of the residual norm (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.set_defaults(func=cmd_repurposing)

    p = exp.add_parser("lenses", help="logit lens vs tuned lens per layer (trains and saves a tuned lens)",
                       description="Train a tuned lens (one affine translator per layer) and compare it with the "
                                   "logit lens on held-out contexts: KL to the final output, top-1 agreement and CE "
                                   "per layer. The lens is saved to OUT/tuned_lens and can be passed to "
                                   "`run repurposing --lens`.")
    p.add_argument("--out", default="runs/lenses", help="output folder (default runs/lenses)")
    _model_corpus_args(p)
    p.add_argument("--contexts", type=positive(int), default=64, help="contexts to read (default 64)")
    p.add_argument("--context-length", type=positive(int), default=256, help="tokens per context (default 256)")
    p.add_argument("--per-context", type=positive(int), default=48, help="positions sampled per context (default 48)")
    p.add_argument("--steps", type=positive(int), default=300, help="training steps (default 300)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.set_defaults(func=cmd_lenses)

    for name, help_, desc, default_offsets in (
            ("probes", "linear probes for the input (and previous) token by depth, vs the embedding matrix",
             "Per layer, held-out accuracy of linear probes that recover the current and the previous input token; "
             "the probe matrix against the embedding matrix (same-token cosine, Procrustes, shuffled-token null) and "
             "where its weight sits in PCA / NMF / coordinate bases of the embedding. See docs/probes.md.", "0,-1"),
            ("lookahead", "probes at position i for the tokens at i+1, i+2, i+3, vs current-token baselines",
             "Per layer, held-out accuracy of probes from position i for tokens i+k, against what the current token "
             "alone predicts (a bigram table and a probe on its embedding). See docs/probes.md.", "1,2,3")):
        p = exp.add_parser(name, help=help_, description=desc)
        p.add_argument("--out", default=f"runs/{name}", help=f"output folder (default runs/{name})")
        _model_corpus_args(p)
        p.add_argument("--contexts", type=positive(int), default=96, help="contexts to read (default 96)")
        p.add_argument("--context-length", type=positive(int), default=256, help="tokens per context (default 256)")
        p.add_argument("--per-context", type=positive(int), default=96, help="positions sampled per context (default 96)")
        p.add_argument("--classes", type=positive(int), default=1024,
                       help="probe the N most frequent tokens (default 1024; coverage is reported)")
        p.add_argument("--ridge", type=positive(float), default=1e-2, help="ridge strength (default 0.01)")
        p.add_argument("--offsets", type=_offset_list, default=_offset_list(default_offsets),
                       help=f"target token offsets from the probed position (default {default_offsets})")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
        p.set_defaults(func=cmd_probes if name == "probes" else cmd_lookahead)

    p = exp.add_parser("donation", help="share of the gradient on keys/values donated by later positions' losses",
                       description="Per layer, the gradient on a position's keys and values from the losses of later "
                                   "positions vs its own loss, by context length, averaged over real text. See "
                                   "docs/probes.md.")
    p.add_argument("--out", default="runs/donation", help="output folder (default runs/donation)")
    _model_corpus_args(p)
    p.add_argument("--contexts", type=positive(int), default=8, help="contexts to average over (default 8)")
    p.add_argument("--context-length", type=positive(int), default=64,
                   help="longest context N; shorter lengths are prefixes (default 64; memory grows like N²)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.set_defaults(func=cmd_donation)

    p = exp.add_parser("reinject", help="re-inject the true token's embedding into late layers",
                       description="Teacher-forced on real text: add α × the embedding of the token at position p "
                                   "into late layers at p, and measure the change in loss on token p+1, stratified "
                                   "by how surprising token p was. Sampling with the intervention: "
                                   "superpos.hypotheses.reinject.generate. See docs/probes.md.")
    p.add_argument("--out", default="runs/reinject", help="output folder (default runs/reinject)")
    _model_corpus_args(p)
    p.add_argument("--contexts", type=positive(int), default=48, help="contexts (default 48)")
    p.add_argument("--context-length", type=positive(int), default=256, help="tokens per context (default 256)")
    p.add_argument("--layers", type=_int_list, default=None,
                   help="residual layers to inject into (default: every other block output of the last quarter, "
                        "not the final residual)")
    p.add_argument("--alphas", type=_positive_floats, default=[0.5, 2.0, 8.0],
                   help="α values (× the raw embedding, whose norm is ≈ 3 on SmolLM2; default 0.5,2,8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.set_defaults(func=cmd_reinject)


def _experiments(text: str) -> list[str]:
    from .run_all import parse_only

    try:
        return parse_only(text)
    except Exception as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_all(args) -> int:
    from pathlib import Path

    from .run_all import EXPERIMENTS, run_all

    out = Path(args.out)
    rows = run_all(args.only or EXPERIMENTS, out, args.model, args.corpus, args.device, args.seed, args.quick)
    print()
    for r in rows:
        print(f"{r['name']:>14}  {r['status']:<6} {r['seconds']:>7.0f} s  {r['headline'][:100]}")
    print(f"index: {out / 'index.html'}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def _model_corpus_args(p) -> None:
    p.add_argument("--model", default=None, help="model (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--corpus", default=None,
                   help="text: .txt/.jsonl file, folder or dataset name (default: pydoc_data.topics)")


def _probability(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability, got '{text}'") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1), got '{text}'")
    return v


def _print_verdict(v: dict, out: str) -> None:
    print(v["headline"])
    for line in v["criteria"]:
        print("  " + line)
    if v.get("context"):
        print("  " + v["context"])
    print(f"report: {out}/report.md")


def cmd_repurposing(args) -> int:
    from .hypotheses.repurposing import RepurposingConfig, run

    cfg = RepurposingConfig(model=args.model, corpus=args.corpus, contexts=args.contexts,
                            context_length=args.context_length, per_context=args.per_context, unlikely=args.unlikely,
                            likely=args.likely, exclude_recent=args.exclude_recent, z_high=args.z_high, lens=args.lens,
                            lens_steps=args.lens_steps, dictionary=args.dictionary, control=args.control,
                            control_alpha=args.control_alpha, seed=args.seed, device=args.device, out=args.out)
    _print_verdict(run(cfg)["verdict"], args.out)
    return 0


def cmd_lenses(args) -> int:
    from .hypotheses.lenses import run_lenses

    res = run_lenses(model=args.model, corpus=args.corpus, contexts=args.contexts, context_length=args.context_length,
                     per_context=args.per_context, steps=args.steps, seed=args.seed, device=args.device, out=args.out)
    for line in res["summary"]:
        print(line)
    print(f"report: {args.out}/report.md")
    return 0


def cmd_orthogonality(args) -> int:
    from .hypotheses.orthogonality import OrthogonalityConfig, run

    cfg = OrthogonalityConfig(model=args.model, store=args.store, layer=args.layer, harvest_tokens=args.harvest_tokens,
                              expansions=args.expansions, k=args.k, fit_tokens=args.fit_tokens, eps_grid=args.eps,
                              capacity_sample=args.capacity_sample, seed=args.seed, device=args.device, out=args.out)
    _print_verdict(run(cfg)["verdict"], args.out)
    return 0


def _probe_kwargs(args) -> dict:
    return dict(model=args.model, corpus=args.corpus, contexts=args.contexts, context_length=args.context_length,
                per_context=args.per_context, n_classes=args.classes, ridge=args.ridge, offsets=args.offsets,
                seed=args.seed, device=args.device, out=args.out)


def cmd_probes(args) -> int:
    from .errors import SuperposError
    from .hypotheses.probes import ProbeConfig, run_probes

    if 0 not in args.offsets or any(o > 0 for o in args.offsets):
        raise SuperposError("run probes needs offset 0 (the current token) and no positive offsets (use run lookahead)")
    _print_verdict(run_probes(ProbeConfig(**_probe_kwargs(args)))["verdict"], args.out)
    return 0


def cmd_lookahead(args) -> int:
    from .errors import SuperposError
    from .hypotheses.probes import LookaheadConfig, run_lookahead

    if any(o <= 0 for o in args.offsets):
        raise SuperposError("run lookahead takes positive offsets (tokens after the probed position)")
    _print_verdict(run_lookahead(LookaheadConfig(**_probe_kwargs(args)))["verdict"], args.out)
    return 0


def cmd_donation(args) -> int:
    from .hypotheses.donation import DonationConfig, run_donation

    cfg = DonationConfig(model=args.model, corpus=args.corpus, contexts=args.contexts,
                         context_length=args.context_length, seed=args.seed, device=args.device, out=args.out)
    _print_verdict(run_donation(cfg)["verdict"], args.out)
    return 0


def cmd_reinject(args) -> int:
    from .hypotheses.reinject import ReinjectConfig, run_reinject

    cfg = ReinjectConfig(model=args.model, corpus=args.corpus, contexts=args.contexts,
                         context_length=args.context_length, layers=args.layers, alphas=args.alphas, seed=args.seed,
                         device=args.device, out=args.out)
    _print_verdict(run_reinject(cfg)["verdict"], args.out)
    return 0
