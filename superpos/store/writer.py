"""Writing a store: laying it out, appending checked rows, sealing its contents, and the disk-space and
cut-short-file handling that keeps committed rows safe (the writing half of ``ActivationStore``)."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

from superpos.errors import SuperposError
from superpos.interrupts import crash_point
from superpos.store.schema import (
    AUTO_HEADROOM,
    DEFAULT_CHUNK_BYTES,
    SCHEMA_VERSION,
    STORAGE_DTYPES,
    attrs_digest,
    layer_key,
    nonfinite_index,
    present_fields,
)


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
        lo, hi = torch.aminmax(torch.from_numpy(np.ascontiguousarray(a))) if a.size else (0.0, 0.0)
        peak = max(-float(lo), float(hi))  # a NaN anywhere makes both lo and hi NaN
        if not np.isfinite(peak):
            bad = int(nonfinite_index(a)[0])
            raise SuperposError(f"the model produced NaN/inf at layer {layer} (row {first_row + bad:,}); nothing of "
                                f"this batch was written to {path} ({first_row:,} rows are safe) — check the model "
                                f"and --model-dtype")
        limit = float(np.finfo(dtypes[layer]).max)
        if peak > limit:
            raise SuperposError(f"layer {layer} reaches |a| = {peak:,.0f}, beyond {dtypes[layer]}'s largest value "
                                f"{limit:,.0f}; nothing of this batch was written to {path} ({first_row:,} rows are "
                                f"safe) — harvest into a new --out with --dtype auto or --dtype float32")


def _cast(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` in the storage dtype, rounded to nearest as numpy does; torch's cast uses every core."""
    if a.dtype == dtype:
        return a
    return torch.from_numpy(np.ascontiguousarray(a)).to(getattr(torch, dtype)).numpy()


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


class StoreWriter:
    """``ActivationStore``'s writing methods (mixed into it)."""

    @classmethod
    def create(cls, path: str | os.PathLike, *, layers, d_model: int, n_rows: int, dtype: str | dict = "float16",
               attrs: dict | None = None, compression: str | None = "none", chunk_rows: int | None = None,
               token_stats: bool = True):
        """Create an empty store with every dataset laid out (atomically: temp file, then rename), and return it
        opened for writing.

        ``dtype`` is one storage dtype for every layer, or a ``{layer: dtype}`` map (``harvest --dtype auto``);
        the attribute ``dtype`` then reads ``auto`` and ``layer_dtypes`` lists each layer's. ``token_stats=False``
        lays out no ``next_logprob``/``next_rank`` (a harvest that does not run the LM head).
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
                for name, dt in present_fields(token_stats).items():
                    f.create_dataset(name, shape=(n_rows,), dtype=dt, chunks=(chunk_rows,), compression=compression,
                                     fletcher32=True)
                from superpos import __version__

                f.attrs.update({k: v for k, v in (attrs or {}).items() if v is not None})
                f.attrs.update(schema_version=SCHEMA_VERSION, superpos_version=__version__, d_model=int(d_model),
                               layers=np.asarray(layers, dtype=np.int32),
                               dtype=dtype if isinstance(dtype, str) else "auto",
                               layer_dtypes=np.array([per_layer[x] for x in layers], dtype=h5py.string_dtype()),
                               n_rows_total=int(n_rows), chunk_rows=int(chunk_rows), token_stats=int(token_stats))
                f.attrs["attrs_sha256"] = attrs_digest(f.attrs)
                f.attrs["n_rows_complete"] = 0
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise SuperposError(f"cannot write store {path}: {e.strerror or e}") from None
        store = cls(path, "r+")
        # every row is appended in order from row 0 by this handle: the content seal is hashed as it is written
        store._digests = {name: hashlib.sha256() for name in [*map(layer_key, layers), *present_fields(token_stats)]}
        return store

    # ------------------------------------------------------------------ validation

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
        if set(acts) != set(self.layers) or set(fields) != set(self.row_fields):
            raise ValueError(f"write_rows needs every layer and the row fields {', '.join(self.row_fields)}")
        dtypes = self.layer_dtypes
        check_representable(acts, dtypes, start, self.path)
        acts = {layer: _cast(a, dtypes[layer]) for layer, a in acts.items()}
        need = sum(a.nbytes for a in acts.values()) + sum(a.nbytes for a in fields.values())
        check_space(self.path, 2 * need + (1 << 20), start)
        _quiet_hdf5_write_echoes()
        if self._writers is None:  # held open: a dataset freed after a failed write would retry its flush noisily
            self._writers = {name: self.file[name] for name in [*map(layer_key, self.layers), *self.row_fields]}
        try:
            for layer, a in acts.items():
                self._writers[layer_key(layer)][start:start + n] = a
            for name, a in fields.items():
                self._writers[name][start:start + n] = a
            crash_point("store.written", start + n)  # a test's kill: rows handed to HDF5, nothing flushed
            self.file.flush()
            crash_point("store.flushed", start + n)  # a test's kill: rows on disk, the counter not yet moved
            self.file.attrs["n_rows_complete"] = start + n
            self.file.flush()
            if self._digests is not None:
                for layer, a in acts.items():
                    self._digests[layer_key(layer)].update(np.ascontiguousarray(a))
                for name, a in fields.items():
                    self._digests[name].update(np.ascontiguousarray(a, dtype=self._writers[name].dtype))
        except (OSError, RuntimeError) as e:  # h5py reports a failed flush as RuntimeError
            import re

            code = getattr(e, "errno", None) or int((re.search(r"errno = (\d+)", str(e)) or [0, 0])[1])
            raise OSError(code, os.strerror(code) if code else " ".join(str(e).split())[:200]) from None
        self._pos = None

    def seal_content(self) -> None:
        """Record the sha256 of every dataset of a complete store (``content_sha256``; info verifies it): hashed as
        the rows were written when this handle wrote them all, else read back from the file."""
        import json

        if not self.complete:
            raise ValueError("only a complete store is sealed")
        if self._digests is not None:
            digests = {name: h.hexdigest() for name, h in self._digests.items()}
        else:  # resumed, or never written through this handle
            digests, _ = self._scan()
        self.file.attrs["content_sha256"] = json.dumps(digests, sort_keys=True)
        self.file.attrs["attrs_sha256"] = attrs_digest(self.file.attrs)
        self.file.flush()
