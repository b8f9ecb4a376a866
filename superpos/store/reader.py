"""``ActivationStore``: open, validate and read a store (writing, streaming and checks are mixed in from
``writer``, ``stream`` and ``check``). The schema is in ``schema.py`` and docs/store.md."""
from __future__ import annotations

import errno
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from superpos.errors import SuperposError
from superpos.store.schema import (
    LIVE_RETRIES,
    REQUIRED_ATTRS,
    ROW_FIELDS,
    SCHEMA_VERSION,
    TOKEN_STATS,
    attrs_digest,
    layer_key,
    present_fields,
)
from superpos.store.stream import StoreStreamer
from superpos.store.validate import StoreChecker, check_global_heaps, hdf5_object, int_attr, layers_attr
from superpos.store.writer import StoreWriter, repair_eof


def _text(v):
    """A string attribute as ``str`` (``None`` for anything that is not one)."""
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    return v if isinstance(v, str) else None


class ActivationStore(StoreWriter, StoreStreamer, StoreChecker):
    """Read (and, for harvests, append to) an activation file. Opening validates it."""

    def __init__(self, path: str | os.PathLike, mode: str = "r", live: bool = False):
        """``live=True`` opens a store that a harvest may still be writing: read-only, without HDF5 file
        locking, retrying while the writer is mid-flush, and frozen at the rows complete at opening
        (the writer flushes rows before it advances the counter, never rewrites a written chunk, and
        every chunk carries a Fletcher-32 checksum, so a reader sees a consistent prefix or an error,
        never torn rows)."""
        self.path = Path(path)
        if mode not in ("r", "r+"):
            raise ValueError("mode must be 'r' or 'r+'")
        if live and mode != "r":
            raise ValueError("live stores are read-only")
        if not self.path.exists():
            raise SuperposError(f"store {self.path} does not exist")
        if not self.path.is_file():
            raise SuperposError(f"store {self.path} is not a file")
        if not h5py.is_hdf5(self.path):
            raise SuperposError(f"{self.path} is not an HDF5 file")
        self._frozen: int | None = None
        if mode == "r+" and repair_eof(self.path):
            print(f"superpos: {self.path} was cut short by a failed write; extended it to its recorded size "
                  f"(rows past the counter will be rewritten)", file=sys.stderr)
        counter = None
        for attempt in range(LIVE_RETRIES if live else 1):
            file = None
            try:
                # a writer writes whole chunks: without a chunk cache each goes straight to the file (a cached
                # checksummed chunk costs a second pass at every flush; docs/store.md, "Write path")
                extra = {"locking": False} if live else {"rdcc_nbytes": 0} if mode == "r+" else {}
                file = h5py.File(self.path, mode, **extra)
                if live:
                    counter = file.attrs["n_rows_complete"]  # the rows this reader will see (checked below)
                self.file = file
                break
            except (OSError, KeyError) as e:
                if file is not None:
                    file.close()
                if attempt + 1 >= (LIVE_RETRIES if live else 1):
                    raise SuperposError(f"cannot open store {self.path}: truncated or corrupted HDF5 "
                                        f"({(str(e).splitlines() or [type(e).__name__])[0]})") from None
                time.sleep(0.05)
        try:
            if live:
                self._frozen = int_attr({"n_rows_complete": counter}, "n_rows_complete", self.path, minimum=0)
            self._validate()
        except SuperposError:
            self.file.close()
            raise
        except (KeyError, OSError, RuntimeError, ValueError, TypeError) as e:  # damaged HDF5 structure
            self.file.close()
            raise SuperposError(f"{self.path}: its HDF5 structure is damaged ({' '.join(str(e).split())[:120]})") from None
        self._pos: np.ndarray | None = None
        self._writers: dict | None = None
        self._digests: dict | None = None  # running sha256 per dataset of a store written from row 0 (writer.py)
        self._limit: tuple[int, int] | None = None
        self._dropped: np.ndarray | None = None  # file rows a view leaves out (``without_rows``)

    def restrict(self, start: int, stop: int) -> "ActivationStore":
        """A view of rows [start, stop) of this store (or of this view): every reader — ``to_numpy``,
        ``row_field``, ``sample``, ``iter_rows``, ``stream``, ``batches``, ``n_train_rows`` — sees those rows
        only. Row indices keep meaning the file's rows, so results from a view line up with the whole store."""
        import copy

        lo, hi = self.row_range
        start = min(max(lo, int(start)), hi)
        view = copy.copy(self)
        view._limit = (start, min(max(start, int(stop)), hi))
        return view

    def without_rows(self, rows: np.ndarray) -> "ActivationStore":
        """A view of this store (or view) that leaves out the file rows ``rows`` (for instance held-out contexts):
        ``row_mask`` — so ``stream``, ``sample``, ``iter_rows`` and ``n_train_rows`` — never sees them."""
        import copy

        view = copy.copy(self)
        dropped = np.asarray(rows, dtype=np.int64)
        view._dropped = dropped if self._dropped is None else np.union1d(self._dropped, dropped)
        return view

    def contexts(self) -> list[tuple[int, int]]:
        """The contexts inside this store (or view) as file-row ranges [start, stop): a context starts where the
        position does not grow."""
        lo, hi = self.row_range
        pos = self.pos[lo:hi]
        starts = np.flatnonzero(np.diff(pos) <= 0) + 1 if len(pos) else np.zeros(0, np.int64)
        bounds = np.concatenate([[0], starts, [len(pos)]]).astype(np.int64) + lo
        return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]

    @property
    def row_range(self) -> tuple[int, int]:
        """The rows this store (or view) reads: [first, stop)."""
        if self._limit is None:
            return 0, self.n_rows
        return self._limit[0], min(self._limit[1], self.n_rows)

    def split_row(self, train_frac: float) -> int:
        """First row of the held-out tail when the first ``train_frac`` of whole contexts are for training."""
        C = int(self.file.attrs["context_length"])
        n_ctx = self.n_rows // C
        return int(round(n_ctx * train_frac)) * C

    # ------------------------------------------------------------------ creation

    def _validate(self) -> None:
        """The schema checked against what the file holds, each HDF5 object taken for what it is (validate.py)."""
        f, p = self.file, self.path
        missing = [a for a in REQUIRED_ATTRS if a not in f.attrs]
        if missing:
            raise SuperposError(f"{p} is not a superpos store (missing attribute '{missing[0]}')")
        check_global_heaps(f, p)  # before any text attribute is read: a damaged heap can make libhdf5 loop
        version = int_attr(f.attrs, "schema_version", p)
        if version != SCHEMA_VERSION:
            raise SuperposError(f"{p} has store schema version {version}; this superpos reads version {SCHEMA_VERSION}")
        if "attrs_sha256" in f.attrs and attrs_digest(f.attrs) != _text(f.attrs["attrs_sha256"]):
            raise SuperposError(f"{p}: its metadata is damaged (the attributes do not match their checksum)")
        n_total = int_attr(f.attrs, "n_rows_total", p, minimum=0)
        n_done = int_attr(f.attrs, "n_rows_complete", p)
        if not 0 <= n_done <= n_total:
            raise SuperposError(f"{p}: row counter {n_done} outside 0..{n_total}")
        d = int_attr(f.attrs, "d_model", p, minimum=1)
        int_attr(f.attrs, "context_length", p, minimum=1)
        layers = layers_attr(f.attrs, p)
        for name, dt in self.row_fields.items():
            ds = hdf5_object(f, name, h5py.Dataset, p)
            if ds.shape != (n_total,):
                raise SuperposError(f"{p}: dataset '/{name}' has shape {ds.shape}, expected ({n_total},)")
            if ds.dtype != np.dtype(dt):
                raise SuperposError(f"{p}: dataset '/{name}' has type {ds.dtype}, expected {np.dtype(dt)}")
        for layer in layers:
            key = layer_key(layer)
            ds = hdf5_object(f, key, h5py.Dataset, p)
            if ds.shape != (n_total, d):
                raise SuperposError(f"{p}: dataset '/{key}' has shape {ds.shape}, expected ({n_total}, {d})")
            if ds.dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
                raise SuperposError(f"{p}: dataset '/{key}' has type {ds.dtype}, expected float16 or float32")

    # ------------------------------------------------------------------ properties
    @property
    def has_token_stats(self) -> bool:
        """Whether the store holds the model's next-token statistics (``--token-stats``; stores written before the
        flag existed always do)."""
        flag = self.file.attrs.get("token_stats")
        if flag is None:
            return all(name in self.file for name in TOKEN_STATS)
        if not isinstance(flag, (int, np.integer)) or int(flag) not in (0, 1):
            raise SuperposError(f"{self.path}: attribute 'token_stats' is {flag!r}, expected 0 or 1")
        return bool(flag)

    @property
    def row_fields(self) -> dict:
        """The per-row fields this store holds, with their dtypes."""
        return present_fields(self.has_token_stats)

    @property
    def attrs(self) -> dict:
        """The file's attributes as plain Python values."""
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.file.attrs.items()}

    @property
    def layers(self) -> list[int]:
        """The stored residual layers."""
        return [int(x) for x in np.atleast_1d(self.file.attrs["layers"])]

    @property
    def layer_dtypes(self) -> dict[int, str]:
        """Each layer's storage dtype (``float16`` or ``float32``)."""
        return {layer: str(self.file[layer_key(layer)].dtype) for layer in self.layers}

    @property
    def d_model(self) -> int:
        """Width of the stored rows."""
        return int(self.file.attrs["d_model"])

    @property
    def n_rows(self) -> int:
        """Rows complete and readable."""
        if self._frozen is not None:
            return self._frozen
        return int(self.file.attrs["n_rows_complete"])

    @property
    def n_rows_total(self) -> int:
        """Rows the finished file holds."""
        return int(self.file.attrs["n_rows_total"])

    @property
    def complete(self) -> bool:
        """True when every row is written."""
        return self.n_rows == self.n_rows_total

    @property
    def chunk_rows(self) -> int:
        """Rows per HDF5 chunk."""
        if "chunk_rows" in self.file.attrs:  # also set on merged (virtual, unchunked) stores
            return int(self.file.attrs["chunk_rows"])
        return int(self.file[layer_key(self.layers[0])].chunks[0])

    def check_layer(self, layer: int) -> int:
        """``layer``, refused in one line when the store does not hold it or has no complete rows."""
        layer = int(layer)
        if layer not in self.layers:
            raise SuperposError(f"layer {layer} is not in store {self.path} (it has layers {self.layers})")
        if self.n_rows == 0:
            raise SuperposError(f"store {self.path} has no complete rows yet")
        return layer

    # ------------------------------------------------------------------ writing

    # ------------------------------------------------------------------ reading
    def _check_live(self, ds) -> None:
        """A live reader's view of the chunk index can lag behind the row counter it read on opening (HDF5 reads
        index blocks lazily). Chunks are written in order, so if the chunk holding the last complete row is
        allocated in this view, every earlier one is; if not, reading would return fill values: refuse instead."""
        if self._frozen is None or not self._frozen or ds.chunks is None:
            return
        coord = ((self._frozen - 1) // ds.chunks[0] * ds.chunks[0],) + (0,) * (ds.ndim - 1)
        try:
            allocated = ds.id.get_chunk_info_by_coord(coord).byte_offset is not None
        except RuntimeError:  # the index moved under us mid-read
            allocated = False
        if not allocated:
            raise OSError(errno.EAGAIN, f"{self.path}: the writer is between flushes; open it again")

    def row_field(self, name: str, rows: slice | None = None) -> np.ndarray:
        """A per-row field (tokens, doc, pos, next_logprob, next_rank) of ``rows`` (a slice of file rows; default:
        every row of this store or view)."""
        if name not in ROW_FIELDS:
            raise SuperposError(f"unknown row field '{name}' (expected one of {', '.join(ROW_FIELDS)})")
        if name not in self.row_fields:
            raise SuperposError(f"{self.path} has no token statistics ({name}): it was harvested without "
                                "--token-stats (the forward stopped before the LM head); harvest again with it")
        ds = self.file[name]
        self._check_live(ds)
        start, stop = self._slice_in_view(rows)
        return ds[start:stop]

    def _slice_in_view(self, rows: slice | None) -> tuple[int, int]:
        lo, hi = self.row_range
        if rows is None:
            return lo, hi
        if rows.step not in (None, 1):
            raise SuperposError("row slices must have step 1")
        start = lo if rows.start is None else rows.start
        stop = hi if rows.stop is None else rows.stop
        if not lo <= start <= stop <= hi:
            raise SuperposError(f"rows {start}..{stop - 1} are outside this store's rows {lo}..{hi - 1}")
        return start, stop

    @property
    def pos(self) -> np.ndarray:
        """Every complete row's position in its context, indexed by file row (cached)."""
        if self._pos is None:
            ds = self.file["pos"]
            self._check_live(ds)
            self._pos = ds[: self.n_rows]
        return self._pos

    def row_mask(self, min_pos: int = 1) -> np.ndarray:
        """Rows used for training and statistics: position ≥ ``min_pos`` (0 keeps the BOS/sink rows)."""
        mask = self.pos >= min_pos
        lo, hi = self.row_range
        mask[:lo] = False
        mask[hi:] = False
        if self._dropped is not None:
            mask[self._dropped] = False
        return mask

    def to_numpy(self, layer: int, rows=None) -> np.ndarray:
        """Activations of ``layer`` as float32 for ``rows``: a slice or integer indices (sorted or not) of file
        rows inside this store or view; default: all of its rows."""
        ds = self.file[layer_key(self.check_layer(layer))]
        self._check_live(ds)
        if rows is None or isinstance(rows, slice):
            start, stop = self._slice_in_view(rows)
            return self._check_finite(ds[start:stop], layer, np.arange(start, stop)).astype(np.float32)
        rows = np.asarray(rows, dtype=np.int64)
        lo, hi = self.row_range
        if rows.size and (rows.min() < lo or rows.max() >= hi):
            raise SuperposError(f"row index out of range {lo}..{hi - 1}")
        uniq, inverse = np.unique(rows, return_inverse=True)  # h5py wants sorted, distinct indices
        return self._check_finite(ds[uniq], layer, uniq).astype(np.float32)[inverse]

    def sample(self, layer: int, n: int, seed: int = 0, min_pos: int = 1) -> np.ndarray:
        """``n`` rows drawn without replacement from the training rows (sink rows left out)."""
        idx = np.flatnonzero(self.row_mask(min_pos))
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False))
        return self.to_numpy(layer, idx)

    def n_train_rows(self, min_pos: int = 1) -> int:
        """Rows used for training and statistics (position ≥ ``min_pos``)."""
        return int(self.row_mask(min_pos).sum())

    def iter_rows(self, layer: int, batch_size: int = 8192, min_pos: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Sequential reader: yields ``(row_indices, acts)`` in file order (float32)."""
        ds = self.file[layer_key(self.check_layer(layer))]
        mask = self.row_mask(min_pos)
        lo, hi = self.row_range
        for start in range(lo, hi, batch_size):
            stop = min(start + batch_size, hi)
            keep = mask[start:stop]
            rows = np.arange(start, stop)[keep]
            if len(rows):
                yield rows, self._check_finite(ds[start:stop][keep], layer, rows).astype(np.float32)

    # ------------------------------------------------------------------ misc
    def summary(self) -> str:
        """The lines ``superpos info`` prints about the store."""
        a = self.attrs
        size = self.path.stat().st_size
        lines = [
            f"store          {self.path}  ({size / 2**20:.1f} MiB)",
            f"schema         v{a['schema_version']} (superpos {a.get('superpos_version', '?')})",
            f"model          {a['model']}  rev {str(a.get('model_revision', ''))[:12] or '-'}",
            f"corpus         {a.get('corpus', '?')}",
            f"rows           {self.n_rows:,} / {self.n_rows_total:,} complete"
            + ("" if self.complete else "  (PARTIAL: re-run the same harvest command to resume)"),
            f"context        {a['context_length']} tokens, BOS id {a.get('bos_token_id', -1)}",
            f"layers         {self.layers} of 0..{a.get('n_model_layers', '?')}",
            f"d_model        {self.d_model}, stored as {self._dtype_text()}",
        ]
        if not self.has_token_stats:
            lines.append("token stats    none (harvested without --token-stats)")
        elif self.n_rows:
            lp = self.row_field("next_logprob")
            lp = lp[np.isfinite(lp)]
            if len(lp):
                lines.append(f"next-token CE  {-lp.mean():.3f} nats/token over {len(lp):,} predictions")
        return "\n".join(lines)

    def _dtype_text(self) -> str:
        per = self.layer_dtypes
        kinds = sorted(set(per.values()))
        if len(kinds) == 1:
            return kinds[0]
        return ", ".join(f"{k} (layers {','.join(str(x) for x in per if per[x] == k)})" for k in kinds)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self.file.id.valid:
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, rows={self.n_rows}, layers={self.layers}, d_model={self.d_model})"
