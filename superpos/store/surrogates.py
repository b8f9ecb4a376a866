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


CHUNK_ROWS = 8192  # rows made and written at a time


class Moments:
    """Mean and covariance of rows streamed in chunks (float64 sums), and the root of the covariance."""

    def __init__(self, chunks):
        self.n, s1, s2 = 0, 0.0, 0.0
        for x in chunks:
            x = np.asarray(x, dtype=np.float64)
            self.n += len(x)
            s1 = s1 + x.sum(0)
            s2 = s2 + x.T @ x
        self.mean = s1 / self.n
        self.cov = s2 / self.n - np.outer(self.mean, self.mean)

    @property
    def mean_sq_norm(self) -> float:
        """E‖x‖² of the rows."""
        return float(np.trace(self.cov) + self.mean @ self.mean)

    def root(self) -> np.ndarray:
        """R with cov = R Rᵀ."""
        evals, evecs = np.linalg.eigh(self.cov)
        return evecs * np.sqrt(np.clip(evals, 0, None))


def array_chunks(x_ND: np.ndarray):
    """``x_ND`` in blocks of ``CHUNK_ROWS`` rows."""
    return (x_ND[lo:lo + CHUNK_ROWS] for lo in range(0, len(x_ND), CHUNK_ROWS))


def gaussian_maker(m: Moments, seed: int = 0):
    """Rows ``lo..hi`` of a Gaussian with moments ``m``: ``f(lo, hi)``; block ``lo``'s draws depend on (seed, lo)
    only, so the rows are the same whatever order or block size they are asked in."""
    root = m.root()

    def rows(lo: int, hi: int) -> np.ndarray:
        z = np.random.default_rng([seed, lo]).standard_normal((hi - lo, len(m.mean)))
        return (m.mean + z @ root.T).astype(np.float32)
    return rows


def pc_shuffle_maker(chunks, m: Moments, seed: int = 0):
    """Rows ``lo..hi`` of the PC shuffle of the rows ``chunks`` yields (their moments ``m``): ``f(lo, hi)``. Holds
    the rows' principal coordinates, float32, once."""
    _, V = np.linalg.eigh(m.cov)  # columns: the principal axes
    coords = np.empty((m.n, len(m.mean)), np.float32)
    lo = 0
    for x in chunks:
        coords[lo:lo + len(x)] = (np.asarray(x, np.float64) - m.mean) @ V
        lo += len(x)
    rng = np.random.default_rng(seed)
    for j in range(coords.shape[1]):
        coords[:, j] = coords[rng.permutation(m.n), j]
    return lambda lo, hi: (m.mean + coords[lo:hi].astype(np.float64) @ V.T).astype(np.float32)


def _made(maker, n: int) -> np.ndarray:
    return np.concatenate([maker(lo, min(n, lo + CHUNK_ROWS)) for lo in range(0, n, CHUNK_ROWS)])


def gaussian_like(x_ND: np.ndarray, n: int | None = None, seed: int = 0) -> np.ndarray:
    """``n`` rows (default: as many as ``x_ND``) from a Gaussian with ``x_ND``'s mean and covariance."""
    return _made(gaussian_maker(Moments(array_chunks(x_ND)), seed), n or len(x_ND))


def pc_shuffle(x_ND: np.ndarray, seed: int = 0) -> np.ndarray:
    """``x_ND`` with each principal-component coordinate permuted independently across rows (same variance and
    marginal along every principal axis, covariance up to sampling error, no joint structure)."""
    return _made(pc_shuffle_maker(array_chunks(x_ND), Moments(array_chunks(x_ND)), seed), len(x_ND))


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


def write_store(rows_by_layer: dict, out, *, description: str, context_length: int = 256,
                dtype: str = "float32", n_rows: int | None = None):
    """Write rows, one source per layer, as a finished store at ``out`` (whole contexts of ``context_length``
    rows, the rest dropped; token ids 0, positions 0..C-1). A source is an array of rows or a function
    ``f(lo, hi)`` giving rows ``lo..hi`` as they are written (so a surrogate of a million-row store never holds
    its layers in memory); ``n_rows`` is their count (default: the first array's length). ``description`` is
    recorded as its model and corpus."""
    from superpos.store import ActivationStore

    sources = dict(sorted(rows_by_layer.items()))
    arrays = [x for x in sources.values() if not callable(x)]
    total = n_rows if n_rows is not None else len(arrays[0])
    makers = {layer: x if callable(x) else (lambda lo, hi, x=x: np.asarray(x[lo:hi], dtype=np.float32))
              for layer, x in sources.items()}
    n = (total // context_length) * context_length
    if n == 0:
        raise SuperposError(f"{total} rows are fewer than one context of {context_length}")
    d = len(next(iter(makers.values()))(0, 1)[0])
    out = Path(out)
    with ActivationStore.create(out, layers=list(makers), d_model=d, n_rows=n, dtype=dtype,
                                attrs={"model": description, "corpus": description,
                                       "context_length": context_length}) as st:
        for lo in range(0, n, CHUNK_ROWS):
            r = np.arange(lo, min(n, lo + CHUNK_ROWS))
            st.write_rows(lo, {layer: f(lo, lo + len(r)) for layer, f in makers.items()},
                          tokens=np.zeros(len(r), np.int32), doc=(r // context_length).astype(np.int32),
                          pos=(r % context_length).astype(np.int32), next_logprob=np.zeros(len(r), np.float32),
                          next_rank=np.zeros(len(r), np.int32))
        st.seal_content()
    return out


def surrogate_of_store(store, layers: int | list[int], kind: str, out, *, seed: int = 0, n_features_per_d: int = 4,
                       k: int | None = None, noise: float = 0.05):
    """A surrogate of ``store``'s ``layers`` (one or several) written to ``out``: ``gaussian`` or ``pc-shuffle`` of
    each layer's rows (position 0, the attention sink, left out), or ``planted`` superposition with the same number
    of rows and d (``n_features_per_d`` × d atoms, ``k`` active per row — default d/72, 8 at d = 576, at least 2 —
    rescaled to the layer's mean squared norm; fresh atoms per layer). The layers are read in chunks; a
    PC shuffle or planted layer is held once in float32, a Gaussian one not at all."""
    if kind not in KINDS:
        raise SuperposError(f"unknown surrogate '{kind}' (expected one of {', '.join(KINDS)})")
    layers = [layers] if isinstance(layers, int) else list(layers)
    made, truth = {}, {}

    def chunks(layer):
        return (x for _, x in store.iter_rows(layer, CHUNK_ROWS, min_pos=1))
    for layer in layers:
        m = Moments(chunks(layer))
        s = seed + 1000 * layer
        if kind == "gaussian":
            made[layer] = gaussian_maker(m, seed=s)
        elif kind == "pc-shuffle":
            made[layer] = pc_shuffle_maker(chunks(layer), m, seed=s)
        else:
            d = len(m.mean)
            y, truth[layer] = planted_superposition(m.n, d, n_features_per_d * d, k or max(2, round(d / 72)),
                                                    noise=noise, seed=s)
            y *= np.sqrt(m.mean_sq_norm * len(y) / sum((c.astype(np.float64) ** 2).sum() for c in array_chunks(y)))
            made[layer] = y
    if truth:
        save_truth(out, truth)
    C = int(store.attrs["context_length"]) - 1  # the sink rows are gone: contexts one row shorter
    where = ", ".join(map(str, layers))
    return write_store(made, out, description=f"{kind} surrogate of layer{'s' if len(layers) > 1 else ''} {where} "
                                               f"of {store.path}", context_length=C, n_rows=m.n)


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
