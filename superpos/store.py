"""ActivationStore: residual-stream activations in one HDF5 file per harvest run.

Schema (version 1, documented in docs/store.md)::

    /acts/L{layer}   (n_rows, d_model) float16|float32, chunked by rows, compressed
    /tokens          (n_rows,) int32    token id at this position
    /doc             (n_rows,) int32    document index within the corpus
    /pos             (n_rows,) int32    position within the context (0 = BOS / attention sink)
    /next_logprob    (n_rows,) float32  model log-prob of the actual next token (NaN at the last position)
    /next_rank       (n_rows,) int32    rank of the actual next token (0 = top-1; -1 at the last position)
    attrs: schema_version, superpos_version, model, model_revision, d_model, n_model_layers, layers,
           dtype, layer_dtypes, corpus, corpus_sha256, context_length, bos_token_id, n_rows_total,
           n_rows_complete, attrs_sha256, content_sha256 (once complete)

Rows ``[0, n_rows_complete)`` are complete. The counter is advanced only after those rows are
flushed to disk, so a crash never exposes half-written rows and a resumed harvest continues from it.

Nothing is stored that the file cannot hold: ``write_rows`` takes float32 rows, refuses NaN/inf and values
beyond the layer's storage dtype before anything is written, and only then casts. Readers refuse a layer
that holds non-finite values anyway (a store from elsewhere, or older than this check) with one line.
``attrs_sha256`` covers every attribute but the row counter, so damaged metadata is refused, not read.
"""
from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import torch

from .errors import SuperposError

STORAGE_DTYPES = ("float16", "float32")

SCHEMA_VERSION = 1
ROW_FIELDS = {"tokens": np.int32, "doc": np.int32, "pos": np.int32, "next_logprob": np.float32, "next_rank": np.int32}
REQUIRED_ATTRS = ("schema_version", "model", "d_model", "layers", "dtype", "context_length", "n_rows_total",
                  "n_rows_complete")
DEFAULT_CHUNK_BYTES = 1 << 20
LIVE_RETRIES = 40  # × 50 ms: how long a live reader waits out a writer's flush
DEFAULT_MIX_ROWS = 32768


def layer_key(layer: int) -> str:
    return f"acts/L{int(layer)}"


def _to_device(rows: np.ndarray, device, dtype: torch.dtype) -> torch.Tensor:
    """Host rows to a tensor on ``device``; CUDA copies go through pinned memory, asynchronously."""
    t = torch.from_numpy(np.ascontiguousarray(rows))
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device=device, dtype=dtype, non_blocking=True)
    return t.to(dtype=dtype)


def attrs_digest(attrs) -> str:
    """sha256 over every attribute except the row counter and the digest itself (names and values)."""
    import hashlib

    h = hashlib.sha256()
    for key in sorted(k for k in attrs.keys() if k not in ("n_rows_complete", "attrs_sha256")):
        v = attrs[key]
        v = v.tolist() if isinstance(v, np.ndarray) else v
        h.update(repr((key, v.decode() if isinstance(v, bytes) else v)).encode())
    return h.hexdigest()


AUTO_HEADROOM = 2  # --dtype auto: float16 only where the calibration batch peaks at most half float16's max


def choose_dtypes(policy: str, acts: dict[int, np.ndarray]) -> dict[int, str]:
    """Storage dtype per layer. ``auto``: float16 where the calibration rows' peak |a| is at most
    65,504 / AUTO_HEADROOM (32,752), else float32; ``float16``/``float32``: that dtype everywhere."""
    if policy not in ("auto", *STORAGE_DTYPES):
        raise SuperposError(f"--dtype must be auto, float16 or float32, got {policy}")
    if policy != "auto":
        return dict.fromkeys(acts, policy)
    f16 = float(np.finfo(np.float16).max) / AUTO_HEADROOM
    return {layer: "float16" if float(np.abs(a).max()) <= f16 else "float32" for layer, a in acts.items()}


def check_representable(acts: dict[int, np.ndarray], dtypes: dict[int, str], first_row: int, path) -> None:
    """Refuse (one line) rows holding NaN/inf or a value beyond the layer's storage dtype, before any write."""
    for layer, a in acts.items():
        peak = float(np.abs(a).max()) if a.size else 0.0
        if not np.isfinite(peak):
            bad = int(np.flatnonzero(~np.isfinite(a).all(axis=1))[0])
            raise SuperposError(f"the model produced NaN/inf at layer {layer} (row {first_row + bad:,}); nothing of "
                                f"this batch was written to {path} ({first_row:,} rows are safe) — check the model "
                                f"and --model-dtype")
        limit = float(np.finfo(dtypes[layer]).max)
        if peak > limit:
            raise SuperposError(f"layer {layer} reaches |a| = {peak:,.0f}, beyond {dtypes[layer]}'s largest value "
                                f"{limit:,.0f}; nothing of this batch was written to {path} ({first_row:,} rows are "
                                f"safe) — harvest into a new --out with --dtype auto or --dtype float32")


def check_space(path: Path, need: int, committed: int) -> None:
    """Raise a SuperposError when the disk (or RLIMIT_FSIZE) cannot take ``need`` more bytes."""
    import resource
    import shutil

    if os.environ.get("SUPERPOS_NO_SPACE_CHECK"):  # tests use it to reach the hard failure path
        return
    free = shutil.disk_usage(path.parent).free
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        free = min(free, limit - path.stat().st_size)
    if free < need:
        raise SuperposError(f"not enough space to write {path} ({free / 2**20:,.1f} MiB free, the next batch needs "
                            f"{need / 2**20:,.1f} MiB); {committed:,} rows are safe — free space and re-run the same "
                            f"command to resume")


_QUIET = False


def _quiet_hdf5_write_echoes() -> None:
    """After a failed write HDF5 cannot flush its caches, and every h5py object freed afterwards repeats
    the write error from its deallocator ("Exception ignored in ... __dealloc__"). The real error is
    raised once; keep those echoes off stderr. Installed once, filters nothing else."""
    global _QUIET
    if _QUIET:
        return
    previous = sys.unraisablehook

    def hook(u):
        text = str(u.exc_value)
        if isinstance(u.exc_value, RuntimeError) and ("write failed" in text or "extend file" in text):
            return
        previous(u)
    sys.unraisablehook = hook
    _QUIET = True


def stored_eof(path: Path) -> int | None:
    """End-of-file address recorded in a version-0 HDF5 superblock (h5py's default), or None."""
    with open(path, "rb") as f:
        head = f.read(56)
    if len(head) < 56 or head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] != 0 or head[13] != 8:
        return None
    return int.from_bytes(head[40:48], "little")


def repair_eof(path: Path) -> bool:
    """If a failed write left the file shorter than its superblock says, extend it with zeros.

    Every byte of the committed rows and of the metadata that describes them was flushed before the
    counter moved; what is missing is space HDF5 had reserved for the failed batch. Extending the file
    makes it open again; the rows past the counter are rewritten by the resumed harvest (and a read of
    a zero chunk would fail its Fletcher-32 checksum, not return zeros). Returns True when it extended.
    """
    eof = stored_eof(path)
    if eof is None or path.stat().st_size >= eof:
        return False
    os.truncate(path, eof)
    return True


class ActivationStore:
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
        for attempt in range(LIVE_RETRIES if live else 1):
            try:
                self.file = h5py.File(self.path, mode, locking=False) if live else h5py.File(self.path, mode)
                if live:
                    self._frozen = int(self.file.attrs["n_rows_complete"])
                break
            except (OSError, KeyError) as e:
                if attempt + 1 >= (LIVE_RETRIES if live else 1):
                    raise SuperposError(f"cannot open store {self.path}: truncated or corrupted HDF5 "
                                        f"({str(e).splitlines()[0]})") from None
                time.sleep(0.05)
        try:
            self._validate()
        except SuperposError:
            self.file.close()
            raise
        except (KeyError, OSError, RuntimeError, ValueError, TypeError) as e:  # damaged HDF5 structure
            self.file.close()
            raise SuperposError(f"{self.path}: its HDF5 structure is damaged ({' '.join(str(e).split())[:120]})") from None
        self._pos: np.ndarray | None = None
        self._writers: dict | None = None
        self._limit: tuple[int, int] | None = None

    def restrict(self, start: int, stop: int) -> "ActivationStore":
        """A view whose training/statistics readers (stream, batches, sample, iter_rows) see rows [start, stop) only."""
        import copy

        view = copy.copy(self)
        view._limit = (max(0, int(start)), min(int(stop), self.n_rows))
        return view

    def split_row(self, train_frac: float) -> int:
        """First row of the held-out tail when the first ``train_frac`` of whole contexts are for training."""
        C = int(self.file.attrs["context_length"])
        n_ctx = self.n_rows // C
        return int(round(n_ctx * train_frac)) * C

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, path: str | os.PathLike, *, layers, d_model: int, n_rows: int, dtype: str | dict = "float16",
               attrs: dict | None = None, compression: str | None = "lzf", chunk_rows: int | None = None) -> "ActivationStore":
        """Create an empty store with every dataset laid out (atomically: temp file, then rename).

        ``dtype`` is one storage dtype for every layer, or a ``{layer: dtype}`` map (``harvest --dtype auto``);
        the attribute ``dtype`` then reads ``auto`` and ``layer_dtypes`` lists each layer's.
        """
        path = Path(path)
        layers = sorted(int(x) for x in layers)
        per_layer = {int(k): v for k, v in dtype.items()} if isinstance(dtype, dict) else dict.fromkeys(layers, dtype)
        bad = sorted({v for v in per_layer.values() if v not in STORAGE_DTYPES})
        if bad or set(per_layer) != set(layers):
            raise SuperposError(f"store dtype must be float16 or float32 for every layer, got {bad or per_layer}")
        if compression not in (None, "none", "lzf", "gzip"):
            raise SuperposError(f"compression must be lzf, gzip or none, got {compression}")
        compression = None if compression == "none" else compression
        itemsize = max(np.dtype(v).itemsize for v in per_layer.values())
        chunk_rows = chunk_rows or max(64, min(n_rows, DEFAULT_CHUNK_BYTES // (d_model * itemsize)))
        chunk_rows = max(1, min(chunk_rows, n_rows))
        tmp = path.with_name(path.name + ".tmp")
        try:
            with h5py.File(tmp, "w") as f:  # default superblock: no consistency flags to block reopening after a kill
                for layer in layers:
                    f.create_dataset(layer_key(layer), shape=(n_rows, d_model), dtype=per_layer[layer],
                                     chunks=(chunk_rows, d_model), compression=compression, fletcher32=True)
                # same row chunking everywhere: a writer that writes whole chunks never rewrites a committed one
                for name, dt in ROW_FIELDS.items():
                    f.create_dataset(name, shape=(n_rows,), dtype=dt, chunks=(chunk_rows,), compression=compression,
                                     fletcher32=True)
                from . import __version__

                f.attrs.update({k: v for k, v in (attrs or {}).items() if v is not None})
                f.attrs.update(schema_version=SCHEMA_VERSION, superpos_version=__version__, d_model=int(d_model),
                               layers=np.asarray(layers, dtype=np.int32),
                               dtype=dtype if isinstance(dtype, str) else "auto",
                               layer_dtypes=np.array([per_layer[x] for x in layers], dtype=h5py.string_dtype()),
                               n_rows_total=int(n_rows), chunk_rows=int(chunk_rows))
                f.attrs["attrs_sha256"] = attrs_digest(f.attrs)
                f.attrs["n_rows_complete"] = 0
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise SuperposError(f"cannot write store {path}: {e.strerror or e}") from None
        return cls(path, "r+")

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        f, p = self.file, self.path
        missing = [a for a in REQUIRED_ATTRS if a not in f.attrs]
        if missing:
            raise SuperposError(f"{p} is not a superpos store (missing attribute '{missing[0]}')")
        version = int(f.attrs["schema_version"])
        if version != SCHEMA_VERSION:
            raise SuperposError(f"{p} has store schema version {version}; this superpos reads version {SCHEMA_VERSION}")
        if "attrs_sha256" in f.attrs and attrs_digest(f.attrs) != f.attrs["attrs_sha256"]:
            raise SuperposError(f"{p}: its metadata is damaged (the attributes do not match their checksum)")
        n_total, n_done = int(f.attrs["n_rows_total"]), int(f.attrs["n_rows_complete"])
        if not 0 <= n_done <= n_total:
            raise SuperposError(f"{p}: row counter {n_done} outside 0..{n_total}")
        for name in ROW_FIELDS:
            if name not in f:
                raise SuperposError(f"{p}: missing dataset '/{name}'")
            if f[name].shape != (n_total,):
                raise SuperposError(f"{p}: dataset '/{name}' has shape {f[name].shape}, expected ({n_total},)")
        d = int(f.attrs["d_model"])
        for layer in self.layers:
            key = layer_key(layer)
            if key not in f:
                raise SuperposError(f"{p}: missing dataset '/{key}' for listed layer {layer}")
            if f[key].shape != (n_total, d):
                raise SuperposError(f"{p}: dataset '/{key}' has shape {f[key].shape}, expected ({n_total}, {d})")
            if f[key].dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
                raise SuperposError(f"{p}: dataset '/{key}' has type {f[key].dtype}, expected float16 or float32")
        for name, dt in ROW_FIELDS.items():
            if f[name].dtype != np.dtype(dt):
                raise SuperposError(f"{p}: dataset '/{name}' has type {f[name].dtype}, expected {np.dtype(dt)}")

    # ------------------------------------------------------------------ properties
    @property
    def attrs(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.file.attrs.items()}

    @property
    def layers(self) -> list[int]:
        return [int(x) for x in np.atleast_1d(self.file.attrs["layers"])]

    @property
    def layer_dtypes(self) -> dict[int, str]:
        """Each layer's storage dtype (``float16`` or ``float32``)."""
        return {layer: str(self.file[layer_key(layer)].dtype) for layer in self.layers}

    @property
    def d_model(self) -> int:
        return int(self.file.attrs["d_model"])

    @property
    def n_rows(self) -> int:
        """Rows complete and readable."""
        if self._frozen is not None:
            return self._frozen
        return int(self.file.attrs["n_rows_complete"])

    @property
    def n_rows_total(self) -> int:
        return int(self.file.attrs["n_rows_total"])

    @property
    def complete(self) -> bool:
        return self.n_rows == self.n_rows_total

    @property
    def chunk_rows(self) -> int:
        if "chunk_rows" in self.file.attrs:  # also set on merged (virtual, unchunked) stores
            return int(self.file.attrs["chunk_rows"])
        return int(self.file[layer_key(self.layers[0])].chunks[0])

    def check_layer(self, layer: int) -> int:
        layer = int(layer)
        if layer not in self.layers:
            raise SuperposError(f"layer {layer} is not in store {self.path} (it has layers {self.layers})")
        if self.n_rows == 0:
            raise SuperposError(f"store {self.path} has no complete rows yet")
        return layer

    # ------------------------------------------------------------------ writing
    def write_rows(self, start: int, acts: dict[int, np.ndarray], **fields: np.ndarray) -> None:
        """Write rows ``[start, start+n)`` of every layer and row field, flush, then advance the counter.

        ``acts`` are float32 (or any float) rows; a batch holding NaN/inf or a value its layer's storage dtype
        cannot represent is refused whole with a SuperposError before anything is written
        (``check_representable``), then each layer is cast to its storage dtype.

        Before writing, the free space (and any file-size limit) must hold twice the batch plus 1 MiB;
        otherwise a SuperposError leaves the file closed-clean at the last commit. If a write fails
        anyway, the committed rows stay valid on disk: see ``repair_eof``.
        """
        n = len(fields["tokens"])
        if start != self.n_rows:
            raise ValueError(f"rows must be appended in order: counter is {self.n_rows}, write starts at {start}")
        if set(acts) != set(self.layers) or set(fields) != set(ROW_FIELDS):
            raise ValueError("write_rows needs every layer and every row field")
        dtypes = self.layer_dtypes
        check_representable(acts, dtypes, start, self.path)
        acts = {layer: np.asarray(a, dtype=dtypes[layer]) for layer, a in acts.items()}
        need = sum(a.nbytes for a in acts.values()) + sum(a.nbytes for a in fields.values())
        check_space(self.path, 2 * need + (1 << 20), start)
        _quiet_hdf5_write_echoes()
        if self._writers is None:  # held open: a dataset freed after a failed write would retry its flush noisily
            self._writers = {name: self.file[name] for name in [*map(layer_key, self.layers), *ROW_FIELDS]}
        try:
            for layer, a in acts.items():
                self._writers[layer_key(layer)][start:start + n] = a
            for name, a in fields.items():
                self._writers[name][start:start + n] = a
            self.file.flush()
            self.file.attrs["n_rows_complete"] = start + n
            self.file.flush()
        except (OSError, RuntimeError) as e:  # h5py reports a failed flush as RuntimeError
            import re

            code = getattr(e, "errno", None) or int((re.search(r"errno = (\d+)", str(e)) or [0, 0])[1])
            raise OSError(code, os.strerror(code) if code else " ".join(str(e).split())[:200]) from None
        self._pos = None

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

    def _check_finite(self, rows: np.ndarray, layer: int, row_ids=None) -> np.ndarray:
        """Refuse (one line) rows of ``layer`` that hold NaN/inf; return them unchanged otherwise."""
        if rows.size and not np.isfinite(rows).all():
            bad = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
            where = f"row {int(row_ids[bad]):,}" if row_ids is not None else "a row"
            raise SuperposError(f"{self.path}: layer {layer} holds NaN/inf values ({where}); they cannot be used for "
                                f"training or statistics — `superpos info {self.path}` lists them; re-harvest with "
                                f"--dtype auto")
        return rows

    def nonfinite_rows(self, layer: int, block_rows: int = 1 << 16) -> np.ndarray:
        """Indices of complete rows of ``layer`` holding NaN or inf (a full read of the layer)."""
        ds = self.file[layer_key(self.check_layer(layer))]
        self._check_live(ds)
        bad = [start + np.flatnonzero(~np.isfinite(ds[start:min(start + block_rows, self.n_rows)]).all(axis=1))
               for start in range(0, self.n_rows, block_rows)]
        return np.concatenate(bad) if bad else np.zeros(0, np.int64)

    def row_field(self, name: str) -> np.ndarray:
        if name not in ROW_FIELDS:
            raise SuperposError(f"unknown row field '{name}' (expected one of {', '.join(ROW_FIELDS)})")
        ds = self.file[name]
        self._check_live(ds)
        return ds[: self.n_rows]

    @property
    def pos(self) -> np.ndarray:
        if self._pos is None:
            self._pos = self.row_field("pos")
        return self._pos

    def row_mask(self, min_pos: int = 1) -> np.ndarray:
        """Rows used for training and statistics: position ≥ ``min_pos`` (0 keeps the BOS/sink rows)."""
        mask = self.pos >= min_pos
        if self._limit is not None:
            mask[: self._limit[0]] = False
            mask[self._limit[1]:] = False
        return mask

    def to_numpy(self, layer: int, rows=None) -> np.ndarray:
        """Activations of ``layer`` for ``rows`` (a slice, or sorted/unsorted integer indices) as float32."""
        ds = self.file[layer_key(self.check_layer(layer))]
        self._check_live(ds)
        if rows is None:
            rows = slice(0, self.n_rows)
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.n_rows)
            return self._check_finite(ds[start:stop:step], layer, np.arange(start, stop, step)).astype(np.float32)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise SuperposError(f"row index out of range 0..{self.n_rows - 1}")
        uniq, inverse = np.unique(rows, return_inverse=True)  # h5py wants sorted, distinct indices
        return self._check_finite(ds[uniq], layer, uniq).astype(np.float32)[inverse]

    def sample(self, layer: int, n: int, seed: int = 0, min_pos: int = 1) -> np.ndarray:
        """``n`` rows drawn without replacement from the training rows (sink rows left out)."""
        idx = np.flatnonzero(self.row_mask(min_pos))
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False))
        return self.to_numpy(layer, idx)

    def n_train_rows(self, min_pos: int = 1) -> int:
        return int(self.row_mask(min_pos).sum())

    def iter_rows(self, layer: int, batch_size: int = 8192, min_pos: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Sequential reader: yields ``(row_indices, acts)`` in file order (float32)."""
        ds = self.file[layer_key(self.check_layer(layer))]
        mask = self.row_mask(min_pos)
        lo, hi = self._limit or (0, self.n_rows)
        for start in range(lo, hi, batch_size):
            stop = min(start + batch_size, hi)
            keep = mask[start:stop]
            rows = np.arange(start, stop)[keep]
            if len(rows):
                yield rows, self._check_finite(ds[start:stop][keep], layer, rows).astype(np.float32)

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

    # ------------------------------------------------------------------ misc
    def summary(self) -> str:
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
        if self.n_rows:
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

    def _scan(self, block_rows: int = 1 << 16) -> tuple[dict[str, str], dict[int, np.ndarray]]:
        """One pass over every dataset's complete rows: their sha256, and each layer's rows holding NaN/inf."""
        import hashlib

        digests, bad = {}, {}
        n = self.n_rows
        for layer, name in [*((x, layer_key(x)) for x in self.layers), *((None, f) for f in ROW_FIELDS)]:
            ds = self.file[name]
            self._check_live(ds)
            h, rows = hashlib.sha256(), []
            try:
                for start in range(0, n, block_rows):
                    a = ds[start:min(start + block_rows, n)]
                    h.update(np.ascontiguousarray(a).tobytes())
                    if layer is not None:
                        rows.append(start + np.flatnonzero(~np.isfinite(a).all(axis=1)))
            except OSError as e:
                raise SuperposError(f"{self.path}: dataset '/{name}' is unreadable (a damaged chunk: "
                                    f"{' '.join(str(e).split())[:100]})") from None
            digests[name] = h.hexdigest()
            if layer is not None and rows and sum(map(len, rows)):
                bad[layer] = np.concatenate(rows)
        return digests, bad

    def seal_content(self) -> None:
        """Record the sha256 of every dataset of a complete store (``content_sha256``; info verifies it)."""
        import json

        if not self.complete:
            raise ValueError("only a complete store is sealed")
        digests, _ = self._scan()
        self.file.attrs["content_sha256"] = json.dumps(digests, sort_keys=True)
        self.file.attrs["attrs_sha256"] = attrs_digest(self.file.attrs)
        self.file.flush()

    def scan_text(self) -> str:
        """``info``'s full check: every chunk read (Fletcher-32 verified), the contents against ``content_sha256``
        when the harvest recorded it, and the non-finite rows of each layer."""
        import json

        digests, bad = self._scan() if self.n_rows else ({}, {})
        sealed = self.file.attrs.get("content_sha256")
        if sealed is not None and self.complete:
            damaged = sorted(k for k, v in json.loads(sealed).items() if digests.get(k) != v)
            if damaged:
                raise SuperposError(f"{self.path}: '/{damaged[0]}' does not match the checksum recorded when the store "
                                    f"was finished ({len(damaged)} dataset(s) damaged)")
        if not bad:
            check = ", contents match their checksums" if sealed is not None and self.complete else ""
            return f"non-finite     none (all {self.n_rows:,} rows × {len(self.layers)} layers read{check})"
        parts = [f"L{layer}: {len(rows):,} rows (first {int(rows[0]):,})" for layer, rows in bad.items()]
        return ("non-finite     " + "; ".join(parts) + " — NOT USABLE for training or statistics; re-harvest with "
                "--dtype auto")

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, rows={self.n_rows}, layers={self.layers}, d_model={self.d_model})"
