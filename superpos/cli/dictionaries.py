"""CLI subcommands for dictionaries: fit, evaluate, and the demo (README's main job)."""
from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

from superpos.cli.common import positive as _positive
from superpos.dictionaries.fitting import fit_dictionary
from superpos.dictionaries.train_run import DEFAULT_LR
from superpos.errors import SuperposError

# CLI flag → estimator parameter (only passed when given, so config files and class defaults apply). The
# "(default …)" of each help line is read from the estimators' signatures (``_default_text``), not written here.
PARAM_FLAGS = {
    "n_components": ("--n-components", int, "number of atoms (default: expansion × d_model; for pca: --k)"),
    "expansion": ("--expansion", float, "atoms per d_model dimension"),
    "k": ("--k", int, "active latents per token for topk/batchtopk, most non-zeros per code for nmf/seminmf (default "
                      "there: dense); also PCA's default size"),
    "n_tokens": ("--tokens", int, "training tokens (default: until the held-out FVU stops improving; a store "
                                  "whose training rows fit in 2 GiB as float32 is read into memory, a larger one "
                                  "streamed with whole contexts held out)"),
    "batch_size": ("--batch-size", int, "rows per step"),
    "lr": ("--lr", float, f"Adam learning rate for SAEs (default {DEFAULT_LR:g})"),
    "l1_coeff": ("--l1-coeff", float, "relu: L1 penalty, in normalised input units"),
    "l0_coeff": ("--l0-coeff", float, "jumprelu: L0 penalty"),
    "target_l0": ("--target-l0", float, "jumprelu, relu: steer the sparsity penalty toward this L0 while training"),
    "dead_after_tokens": ("--dead-after", int, "tokens without firing before a latent counts as dead"),
    "seed": ("--seed", int, "random seed"),
    "min_pos": ("--min-pos", int, "leave out positions below this (1 drops the BOS/attention-sink row)"),
}


def _default_text(name: str) -> str:
    """`` (default …)`` for estimator parameter ``name``, from the signatures of the kinds that take it."""
    from superpos.dictionaries import KINDS

    by_value: dict = {}
    for kind, cls in sorted(KINDS.items()):
        p = inspect.signature(cls.__init__).parameters.get(name)
        if p is not None and p.default is not None:
            by_value.setdefault(p.default, []).append(kind)
    if not by_value:
        return ""
    if len(by_value) == 1:
        return f" (default {next(iter(by_value)):g})"
    return " (default " + "; ".join(f"{', '.join(kinds)}: {v:g}" for v, kinds in by_value.items()) + ")"


def _read_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SuperposError(f"config file {p} does not exist")
    try:
        if p.suffix == ".toml":
            import tomllib

            params = tomllib.loads(p.read_text())
        else:
            params = json.loads(p.read_text())
    except Exception as e:
        raise SuperposError(f"config file {p} is not valid {'TOML' if p.suffix == '.toml' else 'JSON'} ({e})") from None
    if not isinstance(params, dict):
        raise SuperposError(f"config file {p} must hold an object of parameters (name: value), not a "
                            f"{type(params).__name__}")
    return params


def _budgets(text: str) -> tuple[int, ...]:
    """``--save-at 400000,1200000`` → (400000, 1200000)."""
    try:
        budgets = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts, got {text!r}") from None
    if not budgets or min(budgets) < 1:
        raise argparse.ArgumentTypeError(f"token budgets must be positive, got {text!r}")
    return budgets


def add_fit(sub) -> None:
    """Add ``superpos fit``."""
    from superpos.dictionaries import KINDS

    p = sub.add_parser("fit", help="learn a dictionary (SAE / NMF / PCA) on one layer of a store",
                       description="Fit a dictionary on one layer of an activation store and save it as a folder "
                                   "(config.json + weights.safetensors + metrics.json). Re-running the same command "
                                   "after an interruption resumes from the last checkpoint.")
    p.add_argument("--store", required=True, help="activation store (.h5) from `superpos harvest`")
    p.add_argument("--layer", type=int, required=True, help="residual layer to fit (must be in the store)")
    p.add_argument("--kind", choices=sorted(KINDS), default="topk", help="dictionary kind (default topk)")
    for name, (flag, kind, help_) in PARAM_FLAGS.items():
        p.add_argument(flag, dest=name, type=_positive(kind, zero=name in ("seed", "min_pos")), default=None,
                       help=help_ + ("" if "(default" in help_ else _default_text(name)))
    p.add_argument("--precision", choices=["float32", "bfloat16"], default=None,
                   help="SAE compute precision (fp32 master weights either way): bfloat16 takes TopK/BatchTopK's "
                        "encoder product in bfloat16 (1.5-1.7x faster steps on a CPU with AVX512-BF16, same FVU) and "
                        "autocasts the other kinds' step; default float32")
    p.add_argument("--save-at", dest="save_at", type=_budgets, default=None,
                   help="comma-separated token budgets below --tokens: one run also saves a dictionary at each, "
                        "after its own decay branch, in OUT/tokens_B/ (warmup-stable-decay)")
    defaults = {n: q.default for n, q in inspect.signature(fit_dictionary).parameters.items()}
    p.add_argument("--train-frac", type=float, default=defaults["train_frac"], help="fraction of contexts used for "
                   f"training; the rest is held out for `evaluate` (default {defaults['train_frac']:g})")
    p.add_argument("--config", default=None, help="JSON or TOML file of parameters (flags override it)")
    p.add_argument("--checkpoint-every", type=_positive(int), default=defaults["checkpoint_every"],
                   help=f"steps between checkpoints (default {defaults['checkpoint_every']})")
    p.add_argument("--device", default=defaults["device"], help=f"auto, cpu, cuda or cuda:N (default {defaults['device']})")
    p.add_argument("--overwrite", action="store_true", help="replace a finished dictionary in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_fit)


def cmd_fit(args) -> int:
    """``superpos fit``: fit one dictionary on a store layer and save it."""
    from superpos import distributed

    params = _read_config_file(args.config) if args.config else {}
    params.update({name: getattr(args, name) for name in [*PARAM_FLAGS, "precision", "save_at"] if getattr(args, name) is not None})
    device = distributed.init_from_env(args.device)  # under torchrun: join the group, one device per rank
    try:
        est, seconds = fit_dictionary(args.store, args.layer, args.kind, args.out, params, args.train_frac, device,
                                      args.checkpoint_every, args.overwrite, progress=not args.no_progress)
    finally:
        rank, ranks = distributed.world()
        distributed.shutdown()
    if rank != 0:
        return 0
    tokens = getattr(est, "n_tokens_seen_", None)
    speed = f", {tokens / seconds:,.0f} tokens/s" if tokens else ""
    on = f" on {ranks} ranks" if ranks > 1 else ""
    print(f"saved {type(est).__name__} ({est.n_components_} atoms × {est.d_model_}) to {args.out} in {seconds:.1f} s"
          f"{speed}{on}")
    return 0


def add_evaluate(sub) -> None:
    """Add ``superpos evaluate``."""
    p = sub.add_parser("evaluate", help="metrics of one or more dictionaries on a store (FVU, L0, CE recovered…)",
                       description="Evaluate dictionaries on a store layer: FVU, explained variance, cosine, L0, "
                                   "dead/dense fractions, and (with the model) CE-loss recovered and KL by "
                                   "splicing reconstructions into the model. Prints a table and writes JSON.")
    p.add_argument("dirs", nargs="+", help="dictionary folders (superpos or SAELens format)")
    p.add_argument("--store", required=True, help="activation store (.h5)")
    p.add_argument("--layer", type=int, default=None, help="layer (default: the one the first dictionary was fit on)")
    p.add_argument("--rows", choices=["holdout", "train", "all"], default="holdout",
                   help="which rows to evaluate on (default: the rows held out from training)")
    p.add_argument("--max-rows", type=_positive(int), default=None, help="cap on evaluated rows")
    p.add_argument("--model", default=None, help="model for CE-loss recovered (default: the store's model)")
    p.add_argument("--ce-contexts", type=int, default=16, help="contexts for CE splicing; 0 skips it (default 16)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--json", default=None, help="write results here (default: DIR/eval.json of the first dictionary)")
    p.set_defaults(func=cmd_evaluate)


def evaluate_folders(dirs, store_path, layer=None, rows="holdout", max_rows=None, model=None, ce_contexts=16,
                     device="auto", lm=None, progress=True):
    """Reconstruction metrics (and CE loss recovered) of saved dictionaries on a store's held-out rows."""
    from superpos.dictionaries import load_dictionary
    from superpos.dictionaries.metrics import check_width, evaluate_dictionaries
    from superpos.model.load import load_model
    from superpos.store import ActivationStore

    dicts = {}
    for d in dirs:
        name = Path(d).name
        if name in dicts:
            name = str(d)
        dicts[name] = load_dictionary(d, device=device)
    first = next(iter(dicts.values()))
    meta = getattr(first, "meta_", {}) or {}
    layer = layer if layer is not None else meta.get("layer")
    if layer is None:
        raise SuperposError("--layer is needed: the dictionary does not record the layer it was fit on")
    with ActivationStore(store_path) as store:
        store.check_layer(layer)
        if rows == "all":
            view = store
        else:
            lo, hi = meta.get("holdout_rows", [store.n_rows, store.n_rows])
            if rows == "train":
                lo, hi = meta.get("train_rows", [0, store.n_rows])
            if hi <= lo:
                raise SuperposError(f"no {rows} rows recorded for {dirs[0]}; use --rows all")
            view = store.restrict(lo, hi)
        for dictionary in dicts.values():  # before the model is loaded (or fetched)
            check_width(dictionary, store)
        if lm is None and ce_contexts > 0:
            lm = load_model(model or store.attrs.get("model_spec", "default"), device=device)
        return evaluate_dictionaries(dicts, view, layer, lm=lm, n_rows=max_rows, ce_contexts=ce_contexts,
                                     progress=progress), layer


def cmd_evaluate(args) -> int:
    """``superpos evaluate``: the metrics table of one or more dictionaries."""
    from superpos.dictionaries.metrics import format_table
    from superpos.files import write_json_atomic

    results, layer = evaluate_folders(args.dirs, args.store, args.layer, args.rows, args.max_rows, args.model,
                                      args.ce_contexts, args.device)
    print(f"layer {layer}, {args.rows} rows of {args.store}")
    print(format_table(results))
    out = Path(args.json) if args.json else Path(args.dirs[0]) / "eval.json"
    write_json_atomic(out, {"store": str(args.store), "layer": layer, "rows": args.rows,
                            "results": [r.as_dict() for r in results]})
    print(f"wrote {out}")
    return 0


def add_demo(sub) -> None:
    """Add ``superpos demo``."""
    p = sub.add_parser("demo", help="the main job: harvest the default model, fit a TopK SAE and a PCA baseline, "
                       "compare them", description="Harvest SmolLM2-135M over CPython's docs, fit a TopK SAE on a "
                       "middle layer and a PCA baseline with as many components as the SAE's k, and print their "
                       "metrics side by side. Every step resumes if interrupted.")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--model", default=None, help="model (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--corpus", default=None, help="corpus (default: pydoc_data.topics)")
    p.add_argument("--harvest-tokens", type=_positive(int), default=None, help="cap on harvested tokens (default: whole corpus)")
    p.add_argument("--layer", type=int, default=None, help="layer for the SAE (default: middle layer)")
    p.add_argument("--expansion", type=_positive(float), default=16.0, help="SAE expansion (default 16)")
    p.add_argument("--k", type=_positive(int), default=32, help="SAE k and PCA components (default 32)")
    p.add_argument("--fit-tokens", type=_positive(int), default=1_000_000, help="SAE training tokens (default 1M)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    """``superpos demo``: the README's main job (harvest, fit TopK and PCA, compare)."""
    from superpos.dictionaries.io import CONFIG
    from superpos.dictionaries.metrics import format_table
    from superpos.files import write_json_atomic
    from superpos.model.harvest import HarvestConfig, harvest
    from superpos.model.load import load_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lm = load_model(args.model, device=args.device)
    layer = args.layer if args.layer is not None else lm.n_layers // 2
    layers = sorted({0, lm.n_layers // 4, layer, 3 * lm.n_layers // 4, lm.n_layers})
    store = out / "acts.h5"
    cfg = HarvestConfig(model=args.model, corpus=args.corpus, layers=",".join(map(str, layers)),
                        tokens=args.harvest_tokens, device=args.device)
    th = time.perf_counter()
    harvest(cfg, store, lm=lm)
    t_harvest = time.perf_counter() - th
    timings = {"harvest_s": t_harvest}
    for kind, params in (("topk", {"k": args.k, "expansion": args.expansion, "n_tokens": args.fit_tokens}),
                         ("pca", {"n_components": args.k})):
        folder = out / kind
        if (folder / CONFIG).exists():
            print(f"superpos: reusing {folder}", file=sys.stderr)
            continue
        _, secs = fit_dictionary(store, layer, kind, folder, params, device=args.device)
        timings[f"fit_{kind}_s"] = secs
    results, _ = evaluate_folders([out / "topk", out / "pca"], store, layer, lm=lm, device=args.device)
    timings["total_s"] = time.perf_counter() - t0
    print(f"\n{lm.name}, residual layer {layer}, held-out rows of {store}")
    print(format_table(results))
    write_json_atomic(out / "results.json", {"model": lm.name, "layer": layer, "timings": timings,
                                             "results": [r.as_dict() for r in results]})
    print(f"wrote {out / 'results.json'} ({timings['total_s']:.0f} s in all)")
    return 0


def add_export(sub) -> None:
    """Add ``superpos export``."""
    p = sub.add_parser("export", help="write a saved SAE in SAELens' folder format",
                       description="Export a superpos SAE folder to SAELens' format (cfg.json + "
                                   "sae_weights.safetensors). `load_dictionary` and `evaluate` read such folders back.")
    p.add_argument("dir", help="superpos dictionary folder (topk, batchtopk, jumprelu or relu)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--hook-name", default=None, help="hook name recorded in cfg.json (default: resid_layer_L)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    """``superpos export``: a dictionary in SAELens' folder format."""
    from superpos.dictionaries import load_dictionary
    from superpos.dictionaries.external import export_saelens

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SuperposError(f"--out {out} exists and is not an empty folder")
    export_saelens(load_dictionary(args.dir, device="cpu"), out, hook_name=args.hook_name)
    print(f"wrote SAELens folder {out}")
    return 0


def register(sub) -> None:
    """Add the dictionary subcommands (fit, evaluate, demo, export)."""
    add_fit(sub)
    add_evaluate(sub)
    add_export(sub)
    add_demo(sub)
