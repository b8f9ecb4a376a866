"""Rows, and stores of them, whose answer is known: the nulls and planted positives experiments calibrate on.

* ``gaussian_like`` — a Gaussian with the rows' mean and covariance: no sparse structure, nothing beyond second
  moments.
* ``pc_shuffle`` — each principal-component coordinate of the rows permuted independently across rows. The
  variance along every principal axis is kept exactly and the covariance up to sampling error (the coordinates
  were uncorrelated and stay so), and so is every marginal along a principal axis (heavy tails included), but
  the coordinates no longer move together: a sparse feature, a direction where rows line up, is torn apart. A plain random rotation would *not* be a null — it keeps every sparse
  feature, only turned — which is why this surrogate shuffles instead.
* ``planted_superposition`` — ``n_features`` ≫ d unit atoms, each row a non-negative combination of ``k`` of
  them plus noise: superposition with a known truth.

``write_surrogate_store`` writes any of them as a one-layer store (same schema as a harvest, contexts of
``context_length`` rows) that every superpos command takes with ``--store FILE --layer L``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from superpos.errors import SuperposError

KINDS = ("gaussian", "pc-shuffle", "planted")


def gaussian_like(x_ND: np.ndarray, n: int | None = None, seed: int = 0) -> np.ndarray:
    """``n`` rows (default: as many as ``x_ND``) from a Gaussian with ``x_ND``'s mean and covariance."""
    x = np.asarray(x_ND, dtype=np.float64)
    mean = x.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(x, rowvar=False))
    root = evecs * np.sqrt(np.clip(evals, 0, None))  # cov = root rootᵀ
    z = np.random.default_rng(seed).standard_normal((n or len(x), x.shape[1]))
    return (mean + z @ root.T).astype(np.float32)


def pc_shuffle(x_ND: np.ndarray, seed: int = 0) -> np.ndarray:
    """``x_ND`` with each principal-component coordinate permuted independently across rows (same variance and
    marginal along every principal axis, covariance up to sampling error, no joint structure)."""
    x = np.asarray(x_ND, dtype=np.float64)
    mean = x.mean(0)
    _, _, Vt = np.linalg.svd(x - mean, full_matrices=False)
    coords = (x - mean) @ Vt.T
    rng = np.random.default_rng(seed)
    for j in range(coords.shape[1]):
        coords[:, j] = coords[rng.permutation(len(coords)), j]
    return (mean + coords @ Vt).astype(np.float32)


def planted_superposition(n: int, d: int, n_features: int, k: int, noise: float = 0.01, seed: int = 0,
                          magnitude: tuple[float, float] = (0.5, 1.5)) -> tuple[np.ndarray, np.ndarray]:
    """Rows = non-negative combinations of ``k`` of ``n_features`` random unit atoms (coefficients uniform in
    ``magnitude``) plus Gaussian noise of SD ``noise`` per coordinate. Returns (rows, atoms)."""
    if not 0 < k <= n_features:
        raise SuperposError(f"need 0 < k ({k}) <= n_features ({n_features})")
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((n_features, d)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    # drawn in blocks of rows: the same numbers as one draw of each array (a generator fills them in order), in
    # memory that does not grow with n × n_features or n × k × d
    rows = max(1, 2**24 // n_features)
    idx = np.concatenate([np.argsort(rng.random((min(rows, n - lo), n_features)), axis=1)[:, :k]
                          for lo in range(0, n, rows)]) if n else np.zeros((0, k), np.int64)
    coef = rng.uniform(*magnitude, (n, k)).astype(np.float32)
    x = np.empty((n, d), np.float32)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        x[lo:hi] = np.einsum("nk,nkd->nd", coef[lo:hi], atoms[idx[lo:hi]])
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        x[lo:hi] += noise * rng.standard_normal((hi - lo, d)).astype(np.float32)
    return x, atoms


def write_surrogate_store(x_ND: np.ndarray, out, layer: int, *, description: str, context_length: int = 256,
                          dtype: str = "float32"):
    """Write rows as a finished one-layer store at ``out`` (see ``write_store``)."""
    return write_store({layer: x_ND}, out, description=description, context_length=context_length, dtype=dtype)


def write_store(rows_by_layer: dict[int, np.ndarray], out, *, description: str, context_length: int = 256,
                dtype: str = "float32"):
    """Write equally long row arrays, one per layer, as a finished store at ``out`` (whole contexts of
    ``context_length`` rows, the rest dropped; token ids 0, positions 0..C-1). ``description`` is recorded as its
    model and corpus."""
    from superpos.store import ActivationStore

    xs = {layer: np.asarray(x, dtype=np.float32) for layer, x in sorted(rows_by_layer.items())}
    first = next(iter(xs.values()))
    n = (len(first) // context_length) * context_length
    if n == 0:
        raise SuperposError(f"{len(first)} rows are fewer than one context of {context_length}")
    out = Path(out)
    with ActivationStore.create(out, layers=list(xs), d_model=first.shape[1], n_rows=n, dtype=dtype,
                                attrs={"model": description, "corpus": description,
                                       "context_length": context_length}) as st:
        rows = np.arange(n)
        for lo in range(0, n, 8192):
            r = rows[lo:lo + 8192]
            st.write_rows(lo, {layer: x[r] for layer, x in xs.items()}, tokens=np.zeros(len(r), np.int32),
                          doc=(r // context_length).astype(np.int32), pos=(r % context_length).astype(np.int32),
                          next_logprob=np.zeros(len(r), np.float32), next_rank=np.zeros(len(r), np.int32))
        st.seal_content()
    return out


def surrogate_of_store(store, layers: int | list[int], kind: str, out, *, seed: int = 0, n_features_per_d: int = 4,
                       k: int | None = None, noise: float = 0.05):
    """A surrogate of ``store``'s ``layers`` (one or several) written to ``out``: ``gaussian`` or ``pc-shuffle`` of
    each layer's rows (position 0, the attention sink, left out), or ``planted`` superposition with the same number
    of rows and d (``n_features_per_d`` × d atoms, ``k`` active per row — default d/72, 8 at d = 576, at least 2 —
    rescaled to the layer's mean squared norm; fresh atoms per layer)."""
    if kind not in KINDS:
        raise SuperposError(f"unknown surrogate '{kind}' (expected one of {', '.join(KINDS)})")
    layers = [layers] if isinstance(layers, int) else list(layers)
    keep = store.row_mask(1)[slice(*store.row_range)]
    made, truth = {}, {}
    for layer in layers:
        x = store.to_numpy(layer)[keep]
        s = seed + 1000 * layer
        if kind == "gaussian":
            y = gaussian_like(x, seed=s)
        elif kind == "pc-shuffle":
            y = pc_shuffle(x, seed=s)
        else:
            d = x.shape[1]
            y, truth[layer] = planted_superposition(len(x), d, n_features_per_d * d, k or max(2, round(d / 72)),
                                                    noise=noise, seed=s)
            y *= np.sqrt((x.astype(np.float64) ** 2).sum(1).mean() / (y.astype(np.float64) ** 2).sum(1).mean())
        made[layer] = y
    if truth:
        save_truth(out, truth)
    C = int(store.attrs["context_length"]) - 1  # the sink rows are gone: contexts one row shorter
    where = ", ".join(map(str, layers))
    return write_store(made, out, description=f"{kind} surrogate of layer{'s' if len(layers) > 1 else ''} {where} "
                                               f"of {store.path}", context_length=C)


def truth_path(out) -> Path:
    """Where a planted surrogate store ``out`` keeps its planted atoms: ``<out stem>.truth.npz`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}.truth.npz")


def save_truth(out, atoms_by_layer: dict[int, np.ndarray]) -> None:
    """Record a planted surrogate's atoms per layer (``load_truth`` reads them back)."""
    np.savez(truth_path(out), **{f"L{layer}": a for layer, a in atoms_by_layer.items()})


def load_truth(out) -> dict[int, np.ndarray] | None:
    """The planted atoms per layer of surrogate store ``out``, or None for a surrogate without a planted truth."""
    p = truth_path(out)
    if not p.exists():
        return None
    with np.load(p) as z:
        return {int(k[1:]): z[k] for k in z.files}
