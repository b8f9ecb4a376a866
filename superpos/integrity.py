"""Checksums for what superpos writes outside HDF5, so that damage is refused instead of read as data.

* Folders (dictionaries, tuned lenses) carry ``checksums.json``: the sha256 of every file superpos wrote there,
  plus the sha256 of that list itself, so a damaged manifest is caught too. ``verify`` checks a folder before it
  is read; a folder without a manifest (written by an older superpos, or by hand) is read as before.
* Training checkpoints are one file: a header line ``SUPERPOS-CKPT1 <sha256>`` followed by the ``torch.save``
  bytes it covers, written to a temporary name and renamed, so a checkpoint is whole and intact or refused.

Stores are covered inside HDF5: Fletcher-32 on every chunk and ``attrs_sha256`` on the attributes (store.py).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import torch

from superpos.errors import SuperposError
from superpos.interrupts import crash_point

MANIFEST = "checksums.json"
CKPT_MAGIC = b"SUPERPOS-CKPT1 "


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _list_digest(files: dict) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def seal(folder: str | os.PathLike, names) -> None:
    """Write ``folder/checksums.json`` covering the files ``names`` (those that exist)."""
    folder = Path(folder)
    files = {name: sha256_file(folder / name) for name in sorted(names) if (folder / name).is_file()}
    (folder / MANIFEST).write_text(json.dumps({"files": files, "sha256": _list_digest(files)}, indent=2) + "\n")


def verify(folder: str | os.PathLike) -> None:
    """Refuse (SuperposError) a folder whose files do not match its ``checksums.json``; no manifest: no check."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        return
    try:
        manifest = json.loads(path.read_bytes())
        files = manifest["files"]
        ok = isinstance(files, dict) and manifest["sha256"] == _list_digest(files)
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise SuperposError(f"{path} is damaged (it does not match its own checksum)")
    for name, digest in files.items():
        if not (folder / name).is_file():
            found = "is missing" if not (folder / name).exists() else "is not a file"
            raise SuperposError(f"{folder / name} {found} (listed in {MANIFEST})")
        if sha256_file(folder / name) != digest:
            raise SuperposError(f"{folder / name} is damaged (its sha256 does not match {MANIFEST})")


def save_checkpoint(obj, path: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` behind a checksummed header, atomically (temp file, then rename)."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(CKPT_MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n")
        f.write(data)
    crash_point("checkpoint.renaming")  # a test's kill: the nth checkpoint written to its temp name, not renamed
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location=None):
    """Read a checkpoint written by ``save_checkpoint`` (or a plain ``torch.save`` file from older versions),
    refusing one whose bytes do not match its checksum."""
    from superpos.readers import expect_file

    path = expect_file(path, "a checkpoint file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SuperposError(f"checkpoint {path} is unreadable ({e.strerror or type(e).__name__})") from None
    damaged = SuperposError(f"checkpoint {path} is damaged (checksum mismatch); delete it to start the fit over")
    if raw.startswith(CKPT_MAGIC):
        head, _, data = raw.partition(b"\n")
        if hashlib.sha256(data).hexdigest().encode() != head[len(CKPT_MAGIC):]:
            raise damaged
    elif raw.startswith(b"PK"):  # a plain torch.save zip (superpos < 0.2)
        data = raw
    else:
        raise damaged
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as e:  # only reachable for unchecked legacy files
        raise SuperposError(f"checkpoint {path} is unreadable ({type(e).__name__}); delete it to start the fit "
                            f"over") from None
