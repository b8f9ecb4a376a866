"""Fit one dictionary on one layer of a store and save it: the workflow behind `superpos fit`, `demo` and the
orthogonality experiment (the library's, so that none of them needs the CLI)."""
from __future__ import annotations

import time
from pathlib import Path

from superpos.errors import ConfigError


def fit_dictionary(store_path, layer: int, kind: str, out, params: dict, train_frac: float = 0.9,
                   device: str = "auto", checkpoint_every: int = 500, overwrite: bool = False, progress: bool = True):
    """Fit and save one dictionary on rows [0, split) of ``store_path``'s ``layer`` (whole contexts, the first
    ``train_frac`` of them); returns (dictionary, seconds). SAEs checkpoint into ``out`` and resume from it."""
    from superpos.dictionaries.io import CONFIG, save_dictionary
    from superpos.dictionaries.kinds import KINDS
    from superpos.store import ActivationStore

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{{field}} {out} exists and is not a folder")
    if (out / CONFIG).exists() and not overwrite:
        raise ConfigError("out", f"{out} already holds a finished dictionary (choose another {{field}}, or replace it: --overwrite / overwrite=True)")
    if not 0 < train_frac <= 1:
        raise ConfigError("train_frac", f"{{field}} must be in (0, 1], got {train_frac}")
    est = KINDS[kind].from_params(params, device=device, progress=progress)
    if getattr(est, "save_at", ()):  # nested budgets refused before anything is written
        from superpos.dictionaries.branches import check_save_at

        est._validate_params()
        check_save_at(est)
    resume = {"checkpoint_dir": out, "checkpoint_every": checkpoint_every} if est.resumable else {}
    with ActivationStore(store_path) as store:
        layer = store.check_layer(layer)
        split = store.split_row(train_frac)
        if split == 0:
            raise ConfigError("train_frac", f"{{field}} {train_frac} leaves no whole context for training")
        train = store.restrict(0, split)
        t0 = time.perf_counter()
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        try:
            est.fit(train, layer=layer, **resume)
        except BaseException:
            if created and not any(out.iterdir()):  # leave nothing behind for a fit that never got going
                out.rmdir()
            raise
        seconds = time.perf_counter() - t0
        a = store.attrs
        meta = {"store": str(Path(store_path).resolve()), "layer": layer, "model": a["model"],
                "model_spec": a.get("model_spec", "default"), "corpus": a.get("corpus"),
                "hook_name": f"resid_layer_{layer}", "train_rows": [0, split], "holdout_rows": [split, store.n_rows],
                "train_seconds": seconds}
    from superpos import distributed

    if distributed.is_main():  # under torchrun every rank holds the same result; one writes it
        meta["world_size"] = distributed.world()[1]
        save_dictionary(est, out, meta=meta)
        for tokens, branch in sorted(getattr(est, "branches_", {}).items()):  # nested budgets: OUT/tokens_B/
            save_dictionary(branch, out / f"tokens_{tokens}", meta=meta)
        (out / "checkpoint.pt").unlink(missing_ok=True)
    return est, seconds
