"""The realistic plant: a surrogate of a real layer whose sparse truth is a dictionary trained on that layer.

Each real row x (the attention-sink position left out) is encoded by the trained dictionary D; the plant's row is
D's reconstruction of it, codes · atoms + b_dec, plus Gaussian noise with the mean and covariance of the residual
x − x̂. So the plant keeps what D found in the layer — its atoms, how often each fires (Zipf-like, not uniform),
the real L0, which atoms fire together, the magnitudes of outlier rows and the massive dimensions that b_dec and the
atoms carry — and replaces what D did not explain by structureless noise of the same size. Its truth, the atoms
that fire at least once in the plant, is known, so a census on it says how many of them the same budget recovers.
The easy plant (``surrogates.planted_superposition``: uniform frequencies, isotropic atoms) is the other control.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CHUNK_ROWS = 8192  # rows encoded at a time


def realistic_plant(store, layers: list[int], dictionaries: dict[int, str], out, *, seed: int = 0,
                    device: str = "cpu") -> Path:
    """Write the realistic plant of ``store``'s ``layers`` to ``out`` (a finished store, contexts one row shorter
    than the store's: the sink rows left out, as every surrogate) and its truth beside it (``load_truth``): for
    each layer, the atoms of ``dictionaries[layer]`` (a dictionary folder) that fire on the plant's rows."""
    import torch

    from superpos.dictionaries import load_dictionary
    from superpos.store.surrogates import save_truth, write_store

    keep = store.row_mask(1)[slice(*store.row_range)]
    made, truth = {}, {}
    for layer in layers:
        D = load_dictionary(dictionaries[layer], device=device)
        x = store.to_numpy(layer)[keep]
        y = np.empty_like(x, dtype=np.float32)
        fired = torch.zeros(D.n_components_, dtype=torch.bool)
        s1 = np.zeros(x.shape[1])
        s2 = np.zeros((x.shape[1], x.shape[1]))
        with torch.no_grad():
            for lo in range(0, len(x), CHUNK_ROWS):
                xb = torch.from_numpy(np.ascontiguousarray(x[lo:lo + CHUNK_ROWS], dtype=np.float32)).to(D.device_)
                codes = D.encode(xb)
                fired |= (codes != 0).any(0).cpu()
                x_hat = D.decode(codes)
                y[lo:lo + len(xb)] = x_hat.cpu().numpy()
                r = (xb - x_hat).double().cpu().numpy()
                s1 += r.sum(0)
                s2 += r.T @ r
        n = len(x)
        mean = s1 / n
        cov = s2 / n - np.outer(mean, mean)
        evals, evecs = np.linalg.eigh(cov)
        root = evecs * np.sqrt(np.clip(evals, 0, None))  # cov = root rootᵀ
        rng = np.random.default_rng(seed + 1000 * layer)
        for lo in range(0, n, CHUNK_ROWS):
            hi = min(n, lo + CHUNK_ROWS)
            y[lo:hi] += (mean + rng.standard_normal((hi - lo, len(mean))) @ root.T).astype(np.float32)
        made[layer] = y
        truth[layer] = D.components_.detach().cpu().numpy()[fired.numpy()]
    save_truth(out, truth)
    C = int(store.attrs["context_length"]) - 1
    return write_store(made, out, description=f"realistic plant of layers {', '.join(map(str, layers))} of "
                                              f"{store.path}", context_length=C)
