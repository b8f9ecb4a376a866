"""Checking a store: its HDF5 objects taken for what they are (``hdf5_object``), its attributes for the types the
schema gives them (``int_attr``, ``layers_attr``), rows holding NaN/inf, and every dataset against its recorded
sha256.

A damaged or hand-made file can hold anything where the schema names a dataset: a group, a named datatype, a
soft link (perhaps dangling), an external link into another file. Nothing here assumes; each object is looked at
through its link and its class first, and anything else than what the schema names is one line naming the path
and what was expected."""
from __future__ import annotations

import numbers
from pathlib import Path

import h5py
import numpy as np

from superpos.errors import SuperposError
from superpos.store.schema import layer_key, nonfinite_index

_KINDS = {h5py.Dataset: "a dataset", h5py.Group: "a group", h5py.Datatype: "a named datatype"}


def _brief(e: BaseException) -> str:
    return " ".join(str(e).split())[:100] or type(e).__name__


def hdf5_object(file: h5py.File, name: str, want: type, where) -> h5py.Dataset | h5py.Group:
    """The object at ``name`` (e.g. ``acts/L3``), which must be a hard-linked ``want`` (``h5py.Dataset`` or
    ``h5py.Group``) under hard-linked groups; anything else — nothing there, a soft or external link, a named
    datatype, a group where a dataset belongs or the reverse, an unreadable object header — is refused in one line
    naming the path and what was expected."""
    parts = name.strip("/").split("/")
    node: h5py.Group = file
    for i, part in enumerate(parts):
        path = "/" + "/".join(parts[:i + 1])
        expected = _KINDS[want] if i == len(parts) - 1 else "a group"
        try:
            link = node.get(part, getlink=True)
        except (KeyError, OSError, RuntimeError, ValueError, TypeError) as e:
            raise SuperposError(f"{where}: '{path}' is unreadable, expected {expected} (damaged HDF5 structure: "
                                f"{_brief(e)})") from None
        if link is None:
            noun = "group" if want is h5py.Group else "dataset"
            inside = "" if i == len(parts) - 1 else f" (no group '{path}')"
            raise SuperposError(f"{where}: missing {noun} '/{'/'.join(parts)}'{inside}")
        if isinstance(link, h5py.SoftLink):
            raise SuperposError(f"{where}: '{path}' is a soft link to '{link.path}', expected {expected}")
        if isinstance(link, h5py.ExternalLink):
            raise SuperposError(f"{where}: '{path}' is an external link to {link.filename}:{link.path}, expected "
                                f"{expected}")
        if not isinstance(link, h5py.HardLink):
            raise SuperposError(f"{where}: '{path}' is a {type(link).__name__}, expected {expected}")
        try:
            cls = node.get(part, getclass=True)
            obj = node[part] if cls in _KINDS else None
        except (KeyError, OSError, RuntimeError, ValueError, TypeError) as e:
            raise SuperposError(f"{where}: '{path}' is unreadable, expected {expected} (damaged HDF5 structure: "
                                f"{_brief(e)})") from None
        if cls is not (want if i == len(parts) - 1 else h5py.Group) or not isinstance(obj, cls):
            found = _KINDS.get(cls, f"an object of unknown type ({getattr(cls, '__name__', cls)})")
            raise SuperposError(f"{where}: '{path}' is {found}, expected {expected}")
        node = obj
    return node


GCOL, GCOL_HEADER, GCOL_OBJECT_HEADER = b"GCOL", 16, 16  # an HDF5 global heap collection (file format spec III.E)


def _data_ranges(file: h5py.File) -> list[tuple[int, int]]:
    """(start, end) byte ranges of every dataset's stored data: what is not metadata."""
    out = []

    def visit(_, obj):
        if not isinstance(obj, h5py.Dataset) or obj.is_virtual:
            return
        dsid = obj.id
        if obj.chunks is None:
            offset = dsid.get_offset()
            if offset is not None:
                out.append((offset, offset + dsid.get_storage_size()))
            return
        for i in range(dsid.get_num_chunks()):
            info = dsid.get_chunk_info(i)
            if info.byte_offset is not None:
                out.append((info.byte_offset, info.byte_offset + info.size))

    try:
        file.visititems(visit)
    except (KeyError, OSError, RuntimeError, ValueError):
        return []  # structure damaged in a way the schema check names; nothing to add here
    return sorted(out)


def check_global_heaps(file: h5py.File, where) -> None:
    """Refuse, in one line, a store whose HDF5 global heap (where variable-length strings such as its text
    attributes live) is damaged in a way that makes libhdf5 loop forever instead of failing: a free-space entry
    of size 0, or an entry running past its collection (found by the corruption fuzz: a zeroed block in the heap
    made `superpos info` hang). The metadata outside the datasets' data is searched for collections, each walked
    entry by entry as libhdf5 walks it."""
    import struct

    path = Path(file.filename)
    size = path.stat().st_size
    gaps, at = [], 0
    for lo, hi in _data_ranges(file):
        lo, hi = min(lo, size), min(hi, size)  # a damaged chunk index can point past the end of the file
        if lo > at:
            gaps.append((at, lo))
        at = max(at, hi)
    gaps.append((at, size))
    with open(path, "rb") as fh:
        for lo, hi in gaps:
            fh.seek(lo)
            blob = fh.read(hi - lo)
            i = blob.find(GCOL)
            while i >= 0:
                if len(blob) - i >= GCOL_HEADER and blob[i + 4] == 1:  # version 1: a collection header
                    end = i + struct.unpack_from("<Q", blob, i + 8)[0]
                    p = i + GCOL_HEADER
                    while p + GCOL_OBJECT_HEADER <= min(end, len(blob)):
                        index = struct.unpack_from("<H", blob, p)[0]
                        n = struct.unpack_from("<Q", blob, p + 8)[0]
                        step = n if index == 0 else GCOL_OBJECT_HEADER + (n + 7) // 8 * 8
                        if (index == 0 and n < GCOL_OBJECT_HEADER) or p + step > end:
                            raise SuperposError(f"{where}: its HDF5 metadata is damaged (the global heap at byte "
                                                f"{lo + i} holds an entry of impossible size)")
                        if index == 0:
                            break
                        p += step
                i = blob.find(GCOL, i + 1)


def int_attr(attrs, name: str, where, minimum: int | None = None) -> int:
    """Integer attribute ``name``: a whole number (a NumPy or Python integer, or a one-element array of one),
    at least ``minimum``; anything else (a string, a float, a list, a boolean) is refused in one line."""
    try:
        raw = attrs[name]
    except KeyError:
        raise SuperposError(f"{where} is not a superpos store (missing attribute '{name}')") from None
    v = raw.reshape(-1)[0] if isinstance(raw, np.ndarray) and raw.size == 1 else raw
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise SuperposError(f"{where}: attribute '{name}' is {_shown(raw)}, expected an integer")
    if minimum is not None and int(v) < minimum:
        raise SuperposError(f"{where}: attribute '{name}' is {int(v)}, expected at least {minimum}")
    return int(v)


def layers_attr(attrs, where) -> list[int]:
    """The ``layers`` attribute: distinct non-negative integers (a scalar is one layer)."""
    raw = attrs["layers"]
    values = np.atleast_1d(raw)
    if values.ndim != 1 or not values.size or values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.integer):
        raise SuperposError(f"{where}: attribute 'layers' is {_shown(raw)}, expected a list of layer numbers")
    layers = [int(x) for x in values]
    if min(layers) < 0 or len(set(layers)) != len(layers):
        raise SuperposError(f"{where}: attribute 'layers' is {layers}, expected distinct layer numbers ≥ 0")
    return layers


def _shown(v) -> str:
    """An attribute's value and type, short, for a message."""
    plain = v.tolist() if isinstance(v, (np.ndarray, np.generic)) else v
    text = repr(plain.decode(errors="replace") if isinstance(plain, bytes) else plain)
    return (text if len(text) <= 40 else text[:37] + "...") + f" ({type(v).__name__})"


class StoreChecker:
    """``ActivationStore``'s content checks (mixed into it)."""

    def _check_finite(self, rows: np.ndarray, layer: int, row_ids=None) -> np.ndarray:
        """Refuse (one line) rows of ``layer`` that hold NaN/inf; return them unchanged otherwise."""
        if rows.size and not np.isfinite(rows).all():
            bad = int(nonfinite_index(rows)[0])
            where = f"row {int(row_ids[bad]):,}" if row_ids is not None else "a row"
            raise SuperposError(f"{self.path}: layer {layer} holds NaN/inf values ({where}); they cannot be used for "
                                f"training or statistics — `superpos info {self.path}` lists them; re-harvest with "
                                f"--dtype auto")
        return rows

    def nonfinite_rows(self, layer: int, block_rows: int = 1 << 16) -> np.ndarray:
        """Indices of complete rows of ``layer`` holding NaN or inf (a full read of the layer)."""
        ds = hdf5_object(self.file, layer_key(self.check_layer(layer)), h5py.Dataset, self.path)
        self._check_live(ds)
        bad = [start + nonfinite_index(ds[start:min(start + block_rows, self.n_rows)])
               for start in range(0, self.n_rows, block_rows)]
        return np.concatenate(bad) if bad else np.zeros(0, np.int64)

    def _scan(self, block_rows: int = 1 << 16) -> tuple[dict[str, str], dict[int, np.ndarray]]:
        """One pass over every dataset's complete rows: their sha256, and each layer's rows holding NaN/inf."""
        import hashlib

        digests, bad = {}, {}
        try:  # every object of the file, as plain h5py readers walk it, not only the datasets superpos reads
            if self.complete:  # (a partial store may have a writer moving its metadata under a live reader)
                self.file.visititems(lambda name, obj: None)
        except (KeyError, OSError, RuntimeError, ValueError) as e:
            raise SuperposError(f"{self.path}: its HDF5 structure is damaged ({' '.join(str(e).split())[:100]})") from None
        n = self.n_rows
        for layer, name in [*((x, layer_key(x)) for x in self.layers), *((None, f) for f in self.row_fields)]:
            ds = hdf5_object(self.file, name, h5py.Dataset, self.path)
            self._check_live(ds)
            h, rows = hashlib.sha256(), []
            try:
                for start in range(0, n, block_rows):
                    a = ds[start:min(start + block_rows, n)]
                    h.update(np.ascontiguousarray(a))  # the buffer itself, no copy
                    if layer is not None:
                        rows.append(start + nonfinite_index(a))
            except OSError as e:
                raise SuperposError(f"{self.path}: dataset '/{name}' is unreadable (a damaged chunk: "
                                    f"{' '.join(str(e).split())[:100]})") from None
            digests[name] = h.hexdigest()
            if layer is not None and rows and sum(map(len, rows)):
                bad[layer] = np.concatenate(rows)
        return digests, bad

    def scan_text(self) -> str:
        """``info``'s full check: every chunk read (Fletcher-32 verified), the contents against ``content_sha256``
        when the harvest recorded it, and the non-finite rows of each layer."""
        import json

        digests, bad = self._scan() if self.n_rows else ({}, {})
        sealed = self.file.attrs.get("content_sha256")
        if sealed is not None and self.complete:
            try:
                recorded = json.loads(sealed)
            except (TypeError, ValueError):
                recorded = None
            if not isinstance(recorded, dict):
                raise SuperposError(f"{self.path}: attribute 'content_sha256' is {_shown(sealed)}, expected a JSON "
                                    f"object of sha256s")
            damaged = sorted(k for k, v in recorded.items() if digests.get(k) != v)
            if damaged:
                raise SuperposError(f"{self.path}: '/{damaged[0]}' does not match the checksum recorded when the store "
                                    f"was finished ({len(damaged)} dataset(s) damaged)")
        if not bad:
            check = ", contents match their checksums" if sealed is not None and self.complete else ""
            return f"non-finite     none (all {self.n_rows:,} rows × {len(self.layers)} layers read{check})"
        parts = [f"L{layer}: {len(rows):,} rows (first {int(rows[0]):,})" for layer, rows in bad.items()]
        return ("non-finite     " + "; ".join(parts) + " — NOT USABLE for training or statistics; re-harvest with "
                "--dtype auto")
