"""The superpos dictionary folder, written and read back for a known estimator class (``io`` picks the class).

A dictionary folder holds ``config.json`` ({"kind", "class", "params", "d_model", "n_components",
"superpos_version", "meta"}), ``weights.safetensors`` (every fitted tensor, raw input space) and, when
training produced them, ``metrics.json``, sealed by ``checksums.json`` (their sha256s, verified on load).
Folders are written to a temporary sibling and renamed. This module sits below the estimators (a training run
saves its nested-budget branches with it); ``io`` adds the kind registry and other toolkits' formats.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from superpos import integrity
from superpos.errors import SuperposError
from superpos.files import replace_folder, write_json_atomic
from superpos.readers import check_value, field, read_json_object, read_tensors, shown

CONFIG, WEIGHTS, METRICS = "config.json", "weights.safetensors", "metrics.json"


def save_dictionary(dictionary, path: str | os.PathLike, meta: dict | None = None, metrics: dict | None = None) -> Path:
    """Write ``dictionary`` to folder ``path`` atomically; returns the path."""
    path = Path(path)
    state = dictionary.state_dict()
    config = {
        "kind": dictionary.kind,
        "class": type(dictionary).__name__,
        "params": dictionary.get_params(),
        "d_model": int(state["components_"].shape[1]),
        "n_components": int(state["components_"].shape[0]),
        "superpos_version": __import__("superpos").__version__,
        "meta": meta or {},
    }
    for attr in ("n_iter_", "n_tokens_seen_", "warmup_steps_"):
        if hasattr(dictionary, attr):
            config[attr] = int(getattr(dictionary, attr))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(state, str(tmp / WEIGHTS))
        write_json_atomic(tmp / CONFIG, config)
        # the training log, and while converging the held-out curve and whether it flattened (or hit max_epochs)
        logs = {key: getattr(dictionary, attr) for key, attr in (("history", "history_"),
                ("validation_history", "validation_history_"), ("converged", "converged_"),
                ("steps_per_epoch", "steps_per_epoch_"))
                if getattr(dictionary, attr, None) not in (None, [])}
        if metrics or logs:
            write_json_atomic(tmp / METRICS, {**(metrics or {}), **logs})
        integrity.seal(tmp, (WEIGHTS, CONFIG, METRICS))
        for extra in (path / "checkpoint.pt",):  # keep the training checkpoint beside the result
            if extra.exists():
                shutil.copy2(extra, tmp / extra.name)
        replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_config(path: Path) -> dict:
    """A dictionary folder's config.json, refused in one line when it is not a JSON object."""
    return read_json_object(path / CONFIG)


#: the fitted tensors' shapes in atoms (n) and width (d); a tensor not listed is checked by a forward pass
_SHAPES = {"components_": [("n", "d")], "W_enc_": [("n", "d")], "b_enc_": [("n",)], "b_dec_": [("d",)],
           "threshold_": [("n",), (1,)], "atom_norms_": [("n",)], "mean_": [("d",)],
           "explained_variance_": [("n",)], "explained_variance_ratio_": [("n",)]}


#: parameters whose default is unset (None) that count something: a whole number when set
_UNSET_COUNTS = {"n_components", "n_tokens", "warmup_steps", "aux_k", "k"}


def checked_params(cls, params: dict, where=None) -> dict:
    """``params`` for ``cls``: known names only, each of the type its default has (an integer where the default is
    an integer, a number where it is a float or unset, a string, a boolean); one line naming the first that is
    not. A name the folder lacks takes the class default, as in ``cls()``. Ranges are the estimator's to check."""
    import inspect

    sig = {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
           if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    out, prefix = {}, f"{where}: " if where else ""
    for name, value in params.items():
        if name not in sig:
            raise SuperposError(f"{prefix}unknown parameter {name!r} for {cls.__name__}")
        default = sig[name].default
        if isinstance(default, tuple) and isinstance(value, list):  # JSON keeps a tuple as a list
            value = tuple(value)
        kind = ("bool" if isinstance(default, bool) else "int" if isinstance(default, int) else
                "number" if isinstance(default, float) else "str" if isinstance(default, str) else
                ("int?" if name in _UNSET_COUNTS else "number?") if default is None else None)
        out[name] = value if kind is None else check_value(value, kind, f"{prefix}parameter {name!r}")
    return out


def _check_meta(meta: dict, where) -> dict:
    """The meta fields superpos reads back (the layer, the train and held-out row ranges), checked."""
    field(meta, "layer", "int?", f"{where}: meta", default=None, minimum=0)
    for key in ("train_rows", "holdout_rows"):
        rows = field(meta, key, "list", f"{where}: meta", default=None)
        if rows is not None and (len(rows) != 2 or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0
                                                            for r in rows) or rows[0] > rows[1]):
            raise SuperposError(f"{where}: meta '{key}' is {shown(rows)}, expected [first, stop) row numbers")
    return meta


def _check_fits(est, state: dict, n: int, d: int, kind: str, where) -> None:
    """Each fitted tensor's shape against the folder's (n atoms, d width), and one forward pass through the loaded
    dictionary, so that tensors which do not fit together are refused here, not in the first use."""
    sizes = {"n": n, "d": d}
    for name, tensor in sorted(state.items()):
        allowed = [tuple(sizes.get(x, x) for x in shape) for shape in _SHAPES.get(name, [])]
        if allowed and tuple(tensor.shape) not in allowed:
            raise SuperposError(f"{where}: tensor '{name}' has shape {tuple(tensor.shape)}, expected "
                                f"{' or '.join(map(str, allowed))}")
    k = getattr(est, "k", None)
    if k is not None and not 1 <= k <= n:
        raise SuperposError(f"{where}: parameter 'k' is {k}, expected 1..{n} (the number of atoms)")
    try:
        est.reconstruct(torch.zeros(2, d, device=est.device_))
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        raise SuperposError(f"{where}: its tensors do not fit a {kind} dictionary "
                            f"({' '.join(str(e).split())[:100]})") from None


def read_dictionary(path: Path, classes: dict, device: str = "auto"):
    """The dictionary in superpos folder ``path`` (its checksums verified, every field checked), as the class
    ``classes`` maps its kind to."""
    integrity.verify(path)
    config = read_config(path)
    where = path / CONFIG
    kind = config.get("kind")
    if not isinstance(kind, str) or kind not in classes:
        raise SuperposError(f"{where}: unknown dictionary kind {kind!r}")
    cls = classes[kind]
    params = checked_params(cls, field(config, "params", "object", where), where)
    d = field(config, "d_model", "int", where, minimum=1)
    n = field(config, "n_components", "int", where, minimum=1)
    counters = {attr: field(config, attr, "int?", where, default=None, minimum=0)
                for attr in ("n_iter_", "n_tokens_seen_", "warmup_steps_")}
    meta = _check_meta(field(config, "meta", "object", where, default={}), where)
    try:
        est = cls(**{**params, "device": device})
    except (TypeError, ValueError) as e:
        raise SuperposError(f"{where}: parameters do not match {cls.__name__} ({e})") from None
    state = read_tensors(path / WEIGHTS, {"components_", *cls._state_names})
    comp = state["components_"]
    if tuple(comp.shape) != (n, d):
        raise SuperposError(f"{path / WEIGHTS}: components_ has shape {tuple(comp.shape)}, config says ({n}, {d})")
    est.load_state_dict(state)
    for attr, value in counters.items():
        if value is not None:
            setattr(est, attr, value)
    est.meta_ = meta
    _check_fits(est, state, n, d, kind, path / WEIGHTS)
    return est
