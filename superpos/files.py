"""Atomic file and folder writes: a reader never sees a half-written JSON file or dictionary folder."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def _json_default(o):
    """Tensors and arrays as lists; anything else JSON cannot hold (paths, enums) as its string."""
    return o.tolist() if hasattr(o, "tolist") else str(o)


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temp file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def replace_folder(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` folder to ``path``, replacing an older one only after it is complete."""
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
