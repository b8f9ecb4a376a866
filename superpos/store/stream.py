"""Shuffled streaming of a store's rows for training (chunk-level shuffle + an in-memory mixing buffer)."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from superpos.errors import SuperposError
from superpos.store.schema import DEFAULT_MIX_ROWS, layer_key


def _to_device(rows: np.ndarray, device, dtype: torch.dtype) -> torch.Tensor:
    """Host rows to a tensor on ``device``; CUDA copies go through pinned memory, asynchronously."""
    t = torch.from_numpy(np.ascontiguousarray(rows))
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device=device, dtype=dtype, non_blocking=True)
    return t.to(dtype=dtype)


class StoreStreamer:
    """``ActivationStore``'s shuffled readers (mixed into it)."""

    def _epoch_groups(self, layer: int, seed: int, epoch: int, min_pos: int, mix_rows: int,
                      skip_rows: int = 0) -> Iterator[np.ndarray]:
        """One epoch as shuffled row groups: chunks in random order, rows mixed within groups of chunks.

        Deterministic in (seed, epoch). Groups wholly before ``skip_rows`` (counted in training
        rows) are skipped without reading; the caller trims the rest.
        """
        ds = self.file[layer_key(layer)]
        chunk = self.chunk_rows
        mask = self.row_mask(min_pos)
        n = self.n_rows
        n_chunks = -(-n // chunk)
        counts = np.add.reduceat(mask.astype(np.int64), np.arange(0, n, chunk)) if n else np.zeros(0, np.int64)
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n_chunks)
        per_group = max(1, mix_rows // chunk)
        seen = 0
        for g in range(0, n_chunks, per_group):
            group = order[g:g + per_group]
            size = int(counts[group].sum())
            perm_seed = rng.integers(2**63)  # drawn even when skipped, so skipping does not change later groups
            if seen + size <= skip_rows:
                seen += size
                continue
            parts = []
            for c in group:
                if counts[c] == 0:
                    continue
                lo, hi = c * chunk, min((c + 1) * chunk, n)
                parts.append(self._check_finite(ds[lo:hi][mask[lo:hi]], layer, np.flatnonzero(mask[lo:hi]) + lo))
            rows = np.concatenate(parts) if parts else np.zeros((0, self.d_model), ds.dtype)
            rows = rows[np.random.default_rng(perm_seed).permutation(len(rows))]
            if seen < skip_rows:
                rows = rows[skip_rows - seen:]
            seen += size
            yield rows

    def stream(self, layer: int, batch_size: int, *, seed: int = 0, start_batch: int = 0, min_pos: int = 1,
               mix_rows: int = DEFAULT_MIX_ROWS, epochs: int | None = None, drop_last: bool = True,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
        """Shuffled (batch, d_model) tensors, endlessly across epochs (or for ``epochs``).

        The stream is the concatenation of epoch 0, 1, ... row orders; batch ``i`` is rows
        ``[i*B, (i+1)*B)`` of it, so every row appears exactly once per epoch and ``start_batch``
        resumes the exact sequence. Memory is bounded by ``mix_rows`` rows.
        """
        layer = self.check_layer(layer)
        per_epoch = self.n_train_rows(min_pos)
        if per_epoch == 0:
            raise SuperposError(f"store {self.path} has no rows at positions ≥ {min_pos}")
        start_row = start_batch * batch_size
        epoch, skip = divmod(start_row, per_epoch)
        buf: list[np.ndarray] = []
        have = 0
        while epochs is None or epoch < epochs:
            for rows in self._epoch_groups(layer, seed, epoch, min_pos, mix_rows, skip_rows=skip):
                buf.append(rows)
                have += len(rows)
                while have >= batch_size:
                    cat = np.concatenate(buf)
                    yield _to_device(cat[:batch_size], device, dtype)
                    rest = cat[batch_size:]
                    buf, have = [rest], len(rest)
            skip = 0
            epoch += 1
        if have and not drop_last:
            yield _to_device(np.concatenate(buf), device, dtype)

    def batches(self, layer: int, batch_size: int, *, shuffle: bool = True, seed: int = 0, min_pos: int = 1,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
        """One epoch of batches: every training row exactly once (the last batch may be short)."""
        if not shuffle:
            for _, acts in self.iter_rows(layer, batch_size, min_pos=min_pos):
                yield _to_device(acts, device, dtype)
            return
        yield from self.stream(layer, batch_size, seed=seed, min_pos=min_pos, epochs=1, drop_last=False,
                               device=device, dtype=dtype)
