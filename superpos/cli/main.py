"""``python -m superpos``: harvest, info, fit, evaluate, demo, run.

Every user error prints one line ``superpos: error: ...`` on stderr and exits 2 (``--debug`` shows
the traceback). Ctrl-C exits 130 after saying how to resume.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from superpos.cli.common import Parser, add_settings, config_from_args, one_line, positive
from superpos.errors import SuperposError


def _add_harvest(sub) -> None:
    p = sub.add_parser("harvest", help="run a model over a corpus and store residual activations (HDF5)",
                       description="Run a causal LM over a text corpus and write residual-stream activations, "
                                   "token ids and positions (and, with --token-stats, next-token log-probs and "
                                   "ranks) to one HDF5 file. The forward runs only the blocks up to the deepest "
                                   "layer asked for. Re-running the same command on an interrupted file resumes "
                                   "where it stopped.")
    from superpos.model.harvest import HarvestConfig

    add_settings(p, HarvestConfig)
    p.add_argument("--out", required=True, help="output .h5 file (resumed if it is a partial harvest with the same settings)")
    p.set_defaults(func=_cmd_harvest)


def _add_merge(sub) -> None:
    p = sub.add_parser("merge", help="join shard stores into one store (HDF5 virtual datasets, no copy)",
                       description="Join the files of a sharded harvest (`harvest --shard I/N`) into one store that "
                                   "the rest of superpos reads as a single file. The rows are not copied: the merged "
                                   "file maps each dataset onto the shards (HDF5 virtual datasets), so keep the shard "
                                   "files beside it.")
    p.add_argument("shards", nargs="+", help="the N shard files, in any order")
    p.add_argument("--out", required=True, help="merged store to write (.h5)")
    p.set_defaults(func=_cmd_merge)


def _cmd_merge(args) -> int:
    from superpos.store import ActivationStore
    from superpos.store.merge import merge_shards

    out = merge_shards(args.shards, args.out)
    with ActivationStore(out) as store:
        print(store.summary())
    return 0


def _cmd_harvest(args) -> int:
    from superpos.model.harvest import HarvestConfig, harvest

    out = harvest(config_from_args(HarvestConfig, args), args.out)
    from superpos.store import ActivationStore

    with ActivationStore(out) as store:
        print(store.summary())
    return 0


def _add_plan(sub) -> None:
    p = sub.add_parser("plan", help="memory per rank for training a TopK SAE (before you ask for GPUs)",
                       description="Predict the device memory per rank for TopK SAE training: parameters, gradients, "
                                   "Adam moments and activations. Data parallelism replicates the model on every "
                                   "rank; only the batch per rank shrinks. See docs/scaling.md.")
    p.add_argument("--d-model", type=positive(int), required=True, help="width of the residual stream")
    p.add_argument("--expansion", type=positive(int), default=16, help="latents per d_model dimension (default 16)")
    p.add_argument("--k", type=positive(int), default=32, help="active latents per token (default 32)")
    p.add_argument("--batch-size", type=positive(int), default=4096, help="global batch (default 4096)")
    p.add_argument("--world-size", type=positive(int), default=1, help="number of ranks (default 1)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="compute dtype of the activations (default float32)")
    p.set_defaults(func=_cmd_plan)


def _cmd_plan(args) -> int:
    from superpos.dictionaries.plan import plan_memory

    if args.batch_size % args.world_size:
        raise SuperposError(f"--batch-size {args.batch_size} must be divisible by --world-size {args.world_size}")
    print(plan_memory(args.d_model, args.d_model * args.expansion, args.k, args.batch_size, args.world_size,
                      args.dtype).table())
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="summarise (and check) a store, a dictionary or a tuned-lens folder",
                       description="Print a summary of an activation store (.h5), a saved dictionary folder or a "
                                   "tuned-lens folder (their checksums verified). "
                                   "For a store it reads every complete row (verifying the Fletcher-32 checksums) "
                                   "and reports rows holding NaN/inf, which no fit or experiment will read.")
    p.add_argument("path", help="store file or dictionary folder")
    p.add_argument("--no-scan", action="store_true", help="skip the full read of a store (metadata only)")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args) -> int:
    from pathlib import Path

    path = Path(args.path)
    if path.is_dir() and (path / "lens.json").exists():
        from superpos.hypotheses.lenses.lens import TunedLens

        print(TunedLens.load(path).summary())
        return 0
    if path.is_dir():
        from superpos.dictionaries.io import load_dictionary

        print(load_dictionary(path).summary())
        return 0
    from superpos.store import ActivationStore

    with ActivationStore(path, live=True) as store:  # works while a harvest is still writing it
        print(store.summary())
        if not args.no_scan:
            print(store.scan_text())
    return 0


def _add_surrogate(sub) -> None:
    from superpos.store.surrogates import KINDS

    p = sub.add_parser("surrogate", help="write a null or planted-superposition store shaped like a store's layer",
                       description="Write a one-layer store with a known answer, shaped like LAYER of STORE (same d, "
                                   "about the same rows): gaussian (the layer's mean and covariance, nothing else), "
                                   "pc-shuffle (each principal-component coordinate permuted across rows: same "
                                   "spectrum and marginals, no joint structure) or planted (sparse superposition of "
                                   "4×d known atoms, d/72 of them per row: 8 at d = 576). Experiments and fits take it with --store OUT "
                                   "--layer LAYER, to calibrate a verdict on a null and a planted positive.")
    p.add_argument("--store", required=True, help="activation store (.h5) whose layer the surrogate copies")
    p.add_argument("--layer", type=int, required=True, help="residual layer (must be in the store)")
    p.add_argument("--kind", required=True, choices=KINDS, help="which surrogate")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="new store to write (.h5)")
    p.set_defaults(func=_cmd_surrogate)


def _cmd_surrogate(args) -> int:
    from pathlib import Path

    from superpos.store import ActivationStore
    from superpos.store.surrogates import surrogate_of_store

    if Path(args.out).exists():
        raise SuperposError(f"--out {args.out} exists; surrogate writes a new file")
    with ActivationStore(args.store) as store:
        store.check_layer(args.layer)
        out = surrogate_of_store(store, args.layer, args.kind, args.out, seed=args.seed)
    with ActivationStore(out) as st:
        print(st.summary())
    return 0


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the models superpos can fetch by name, and whether they are cached",
                       description="List the known model names (for --model): size, architecture, licence, and "
                                   "whether the GGUF is already in the cache ($SUPERPOS_CACHE). Any other model is "
                                   "given by path (.gguf file or model folder) or local Hugging Face name.")
    p.set_defaults(func=_cmd_models)


def _cmd_models(args) -> int:
    from superpos.model.load import DEFAULT_MODEL, KNOWN_MODELS, cache_dir

    for km in KNOWN_MODELS.values():
        cached = (cache_dir() / "models" / km.gguf).exists()
        print(f"{km.name}{' (default)' if km.name == DEFAULT_MODEL else ''}: {km.title}, {km.size}\n"
              f"    {km.architecture}\n    licence: {km.licence}\n"
              f"    {'cached in ' + str(cache_dir() / 'models') if cached else 'not cached: fetched on first use'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every subcommand and its flags."""
    parser = Parser(prog="superpos", description="Sparse dictionaries over transformer residual "
                                     "streams, and experiments on superposition.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_harvest(sub)
    _add_merge(sub)
    _add_info(sub)
    _add_models(sub)
    _add_plan(sub)
    _add_surrogate(sub)
    import superpos.cli.browse as cli_browse
    import superpos.cli.dictionaries as cli_dictionaries
    import superpos.cli.experiments as cli_experiments

    cli_dictionaries.register(sub)
    cli_browse.register(sub)
    cli_experiments.register(sub)
    cli_experiments.register_replicate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv``; returns the exit code (2 for a user error, 130 for Ctrl-C)."""
    args = argparse.Namespace(debug=False)
    try:
        args = build_parser().parse_args(argv)
        return args.func(args) or 0
    except SuperposError as e:
        if args.debug:
            traceback.print_exc()
        print(one_line(f"superpos: error: {_as_flags(e, args)}"), file=sys.stderr)
        if getattr(e, "exit_now", False):  # an HDF5 file could not be flushed (disk full): skip its teardown
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(2)
        return 2
    except OSError as e:  # disk full, permissions, a file vanishing under us: one line, not a traceback
        if args.debug:
            traceback.print_exc()
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(one_line(f"superpos: error: {e.strerror or e}{where}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("superpos: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def _as_flags(e: SuperposError, args) -> str:
    """A library error as the CLI says it: a config field's name replaced by the flag that sets it."""
    from superpos.errors import ConfigError
    from superpos.settings import flag_for

    if not isinstance(e, ConfigError):
        return str(e)
    if getattr(args, "config_class", None) is not None:
        try:
            return e.naming(flag_for(args.config_class, e.field))
        except KeyError:
            pass
    if hasattr(args, e.field):  # a hand-written flag whose dest is the field: --field-name
        return e.naming("--" + e.field.replace("_", "-"))
    return str(e)


if __name__ == "__main__":
    sys.exit(main())
