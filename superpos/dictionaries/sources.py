"""Where a dictionary's training rows come from: one small protocol for arrays, tensors and stores.

``rows_from(X, layer)`` turns what ``fit``/``partial_fit`` were given into a ``RowSource``: ``TensorRows`` for a
numpy array or torch tensor (in memory), ``StoreRows`` for an ``ActivationStore`` and a layer (out of core,
shuffled streaming, NaN/inf refused as rows are read). Estimators only talk to the protocol, so a new source (a
sharded store, a live model) is one new class here, not a branch in every estimator.
"""
from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np
import torch

from superpos.errors import SuperposError
from superpos.store import ActivationStore


class RowSource(Protocol):
    """Rows of width ``d_model`` to train on."""

    d_model: int
    in_memory: bool  # True: ``tensor()`` holds every row
    where: str  # how errors name the data

    def n_rows(self, min_pos: int = 1) -> int:
        """Rows used for training (a store leaves out positions below ``min_pos``)."""

    def batches(self, batch_size: int, device, *, seed: int = 0, start_batch: int = 0, min_pos: int = 1,
                epochs: int | None = None) -> Iterator[torch.Tensor]:
        """Shuffled batches, endlessly over epochs (or for ``epochs``), resumable at ``start_batch``."""

    def sample(self, n: int, seed: int = 0, min_pos: int = 1) -> torch.Tensor:
        """Up to ``n`` rows drawn without replacement (all of them when there are fewer)."""

    def chunks(self, batch_size: int, min_pos: int = 1) -> Iterator[np.ndarray]:
        """Every training row once, in order, as float arrays."""


class TensorRows:
    """Rows held in memory (an array or a tensor); ``min_pos`` does not apply (rows carry no positions)."""

    in_memory = True
    where = "training data"

    def __init__(self, X):
        if not isinstance(X, torch.Tensor):
            X = np.asarray(X)
            X = torch.from_numpy(X if X.flags.writeable else X.copy())  # torch wants writable memory
        self.x = X
        if self.x.ndim != 2:
            raise SuperposError(f"expected a 2-D array (rows × d_model), got shape {tuple(self.x.shape)}")
        self.d_model = int(self.x.shape[1])

    def tensor(self, dtype=torch.float32) -> torch.Tensor:
        """Every row as one tensor."""
        return self.x.to(dtype=dtype)

    def n_rows(self, min_pos: int = 1) -> int:
        """Every row (``min_pos`` does not apply)."""
        return len(self.x)

    def batches(self, batch_size, device, *, seed=0, start_batch=0, min_pos=1, epochs=None):
        """A fresh permutation per epoch (seeded by ``seed`` and the epoch), cut into whole batches."""
        x = self.tensor()
        n = len(x)
        if n == 0:
            raise SuperposError("cannot fit on zero rows")
        bs = min(batch_size, n)
        per_epoch = n // bs
        epoch, i = divmod(start_batch, per_epoch)
        while epochs is None or epoch < epochs:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
            for j in range(i, per_epoch):
                yield x[perm[j * bs:(j + 1) * bs]].to(device)
            i = 0
            epoch += 1

    def sample(self, n, seed=0, min_pos=1):
        """``n`` rows at random (all rows when there are fewer)."""
        x = self.tensor()
        if len(x) <= n:
            return x
        return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]

    def chunks(self, batch_size, min_pos=1):
        """All rows as one array."""
        yield self.x.detach().cpu().numpy()


class StoreRows:
    """One layer of an activation store (or of a restricted view of one), read out of core."""

    in_memory = False

    def __init__(self, store: ActivationStore, layer: int | None):
        if layer is None:
            raise SuperposError("fitting on an ActivationStore needs layer=...")
        self.store, self.layer = store, store.check_layer(layer)
        self.d_model = store.d_model
        self.where = f"layer {layer} of store {store.path}"

    def n_rows(self, min_pos: int = 1) -> int:
        """The store's training rows at positions ≥ ``min_pos`` (inside its view)."""
        return self.store.n_train_rows(min_pos)

    def batches(self, batch_size, device, *, seed=0, start_batch=0, min_pos=1, epochs=None):
        """The store's shuffled, resumable stream (``ActivationStore.stream``)."""
        yield from self.store.stream(self.layer, batch_size, seed=seed, start_batch=start_batch, min_pos=min_pos,
                                     epochs=epochs, device=device)

    def sample(self, n, seed=0, min_pos=1):
        """``ActivationStore.sample`` as a tensor."""
        return torch.from_numpy(self.store.sample(self.layer, n, seed=seed, min_pos=min_pos))

    def hold_out(self, fraction: float, seed: int, min_pos: int, max_rows: int) -> tuple["StoreRows", torch.Tensor]:
        """Whole contexts held out (chosen by ``seed``) until they hold ``fraction`` of the training rows (at least
        one row; their rows read into memory, at most ``max_rows``): (the store without those contexts, the
        held-out rows). At least one context is left to train on; the held-out contexts are never streamed."""
        ctxs = self.store.contexts()
        mask = self.store.row_mask(min_pos)
        counts = np.array([int(mask[a:b].sum()) for a, b in ctxs], dtype=np.int64)
        usable = np.flatnonzero(counts)
        if len(usable) < 2:
            raise SuperposError(f"{self.where}: need at least 2 contexts to hold one out for convergence, got "
                                f"{len(usable)} (or pass n_tokens)")
        target = min(max_rows, max(1, round(fraction * int(counts.sum()))))
        order = usable[np.random.default_rng([seed, 7919]).permutation(len(usable))]
        taken, got = [], 0
        for i in order[:-1]:  # the last one always trains
            if got >= target:
                break
            taken.append(i)
            got += int(counts[i])
        dropped = np.concatenate([np.arange(*ctxs[i]) for i in sorted(taken)])
        val_rows = dropped[mask[dropped]][:max_rows]
        held = torch.from_numpy(self.store.to_numpy(self.layer, val_rows))
        train = StoreRows(self.store.without_rows(dropped), self.layer)
        train.where = self.where
        return train, held

    def chunks(self, batch_size, min_pos=1):
        """``ActivationStore.iter_rows``' activations, in file order."""
        for _, acts in self.store.iter_rows(self.layer, batch_size, min_pos=min_pos):
            yield acts


def in_memory_if_small(src: RowSource, min_pos: int, max_bytes: int) -> RowSource:
    """``src`` read into memory (its training rows at positions ≥ ``min_pos``, in file order) when it is a store
    whose rows take at most ``max_bytes`` as float32; otherwise ``src`` itself."""
    if src.in_memory or src.n_rows(min_pos) * src.d_model * 4 > max_bytes:
        return src
    rows = TensorRows(np.concatenate(list(src.chunks(65536, min_pos))).astype(np.float32, copy=False))
    rows.where = src.where
    return rows


def rows_from(X, layer: int | None = None) -> RowSource:
    """The row source for ``fit(X, layer=...)``: a store needs ``layer``; arrays and tensors are validated
    (``validate_rows``) and held as a tensor."""
    from superpos.dictionaries.base import validate_rows

    X = validate_rows(X)
    if isinstance(X, ActivationStore):
        return StoreRows(X, layer)
    return TensorRows(X)
