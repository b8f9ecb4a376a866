"""Data the benchmarks train and search on: synthetic residual-like rows and stores, clustered atoms, and the
default model's real layer-15 activations (harvested once into the benchmark cache)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def synthetic_stream(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Rows that look like residuals to an SAE: sparse non-negative mixtures of 4d unit atoms, plus noise."""
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((4 * d, d)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    idx = rng.integers(0, len(atoms), size=(n, 16))
    coef = rng.exponential(1.0, size=(n, 16)).astype(np.float32)
    x = np.einsum("nk,nkd->nd", coef, atoms[idx]) + 0.05 * rng.standard_normal((n, d)).astype(np.float32)
    return torch.from_numpy(x)


def clustered_atoms(n: int, d: int, per_cluster: int = 32, seed: int = 2) -> np.ndarray:
    """Atoms with the structure of a large SAE's decoder: groups of related directions (|cos| ≈ 0.5–0.8
    within a group) around n / per_cluster random centres, so that nearest neighbours are meaningful."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // per_cluster + 1, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    V = centres[np.arange(n) // per_cluster] + rng.uniform(0.03, 0.08, (n, 1)).astype(np.float32) * \
        rng.standard_normal((n, d)).astype(np.float32)
    return V / np.linalg.norm(V, axis=1, keepdims=True)


def real_store(layer: int = 15, tokens: int = 65536) -> Path:
    """A store of the default model's layer ``layer`` over the default corpus, harvested once into the benchmark
    cache (the real activations the peer and frontier sections train on)."""
    from superpos.model.harvest import HarvestConfig, harvest

    path = Path.home() / ".cache" / "superpos" / "bench-data" / f"smollm2_L{layer}_{tokens}.h5"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        harvest(HarvestConfig(layers=str(layer), tokens=tokens), path)
    return path


def real_layer_rows(layer: int = 15) -> np.ndarray:
    """Layer-``layer`` rows of ``real_store``, position 0 (the attention sink) left out, in corpus order: the last
    rows are the last contexts."""
    import h5py

    with h5py.File(real_store(layer), "r") as f:
        keep = f["pos"][:] >= 1
        return f[f"acts/L{layer}"][:][keep].astype(np.float32)


def synthetic_store(path: Path, rows: int, d: int) -> Path:
    """A one-layer store (layer 15) of ``rows`` ``synthetic_stream`` rows in 256-token contexts, float16."""
    from superpos.store import ActivationStore

    chunk = 8 * 256
    st = ActivationStore.create(path, layers=[15], d_model=d, n_rows=rows, attrs={"model": "bench", "context_length": 256},
                                chunk_rows=chunk)
    x = synthetic_stream(rows, d).numpy().astype(np.float16)
    for lo in range(0, rows, chunk):
        n = min(chunk, rows - lo)
        r = np.arange(lo, lo + n)
        st.write_rows(lo, {15: x[lo:lo + n]}, tokens=r.astype(np.int32), doc=(r // 256).astype(np.int32),
                      pos=(r % 256).astype(np.int32), next_logprob=np.zeros(n, np.float32), next_rank=np.zeros(n, np.int32))
    st.close()
    return path
