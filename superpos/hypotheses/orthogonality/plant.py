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


def realistic_plant(store, layers: list[int], dictionaries: dict[int, str], out, *, seed: int = 0,
                    device: str = "cpu") -> Path:
    """Write the realistic plant of ``store``'s ``layers`` to ``out`` (a finished store, contexts one row shorter
    than the store's: the sink rows left out, as every surrogate) and its truth beside it (``load_truth``): for
    each layer, the atoms of ``dictionaries[layer]`` (a dictionary folder) that fire on the plant's rows.

    Two passes over the rows in chunks, nothing held per row: the first finds the atoms that fire and the
    residual's mean and covariance, the second encodes each chunk again as it is written."""
    import torch

    from superpos.dictionaries import load_dictionary
    from superpos.store.surrogates import CHUNK_ROWS, Moments, gaussian_maker, save_truth, write_store

    kept = np.flatnonzero(store.row_mask(1))  # file rows of the plant's rows, sinks left out
    made, truth = {}, {}
    for layer in layers:
        D = load_dictionary(dictionaries[layer], device=device)
        fired = torch.zeros(D.n_components_, dtype=torch.bool)

        def reconstruct(x, D=D):
            with torch.no_grad():
                xb = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(D.device_)
                codes = D.encode(xb)
                return xb, codes, D.decode(codes)

        def residuals(layer=layer, reconstruct=reconstruct, fired=fired):
            for _, x in store.iter_rows(layer, CHUNK_ROWS, min_pos=1):
                xb, codes, x_hat = reconstruct(x)
                fired |= (codes != 0).any(0).cpu()
                yield (xb - x_hat).double().cpu().numpy()
        noise = gaussian_maker(Moments(residuals()), seed=seed + 1000 * layer)

        def rows(lo, hi, layer=layer, reconstruct=reconstruct, noise=noise):
            idx = kept[lo:hi]
            x = store.to_numpy(layer, slice(idx[0], idx[-1] + 1))[idx - idx[0]]
            return reconstruct(x)[2].cpu().numpy() + noise(lo, hi)
        made[layer] = rows
        truth[layer] = D.components_.detach().cpu().numpy()[fired.numpy()]
    save_truth(out, truth)
    C = int(store.attrs["context_length"]) - 1
    return write_store(made, out, description=f"realistic plant of layers {', '.join(map(str, layers))} of "
                                              f"{store.path}", context_length=C, n_rows=len(kept))
