"""Reading the files users hand over (dictionary, tuned-lens and SAELens folders, checkpoints) without assuming
what is in them.

Whatever is found where a file, a key or a value was expected — a folder where a file belongs, a JSON list where
an object belongs, a string where a number belongs, a tensor too many or too few, integer weights — is a
``SuperposError`` with one line naming the file, the key and what was expected, never a ``KeyError``,
``TypeError`` or ``AttributeError`` from deep inside a loader.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from superpos.errors import SuperposError

_MISSING = object()


def shown(value) -> str:
    """A found value, short, with its JSON type (for messages)."""
    text = json.dumps(value, default=repr) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return (text if len(text) <= 40 else text[:37] + "...") + f" ({json_type(value)})"


def json_type(value) -> str:
    """The JSON name of a value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def expect_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a Path, refused in one line when it does not exist or is not a regular file."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise SuperposError(f"{path} is missing (expected {what})")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "a dangling link" if path.is_symlink() else "not a regular file"
        raise SuperposError(f"{path} is {kind}, expected {what}")
    return path


def read_json_object(path: str | os.PathLike) -> dict:
    """The JSON object in file ``path``: refused in one line when it is missing, not a file, unreadable, not UTF-8
    JSON, or JSON of another type than an object."""
    path = expect_file(path, "a JSON file")
    try:
        value = json.loads(path.read_bytes())
    except OSError as e:
        raise SuperposError(f"{path} is unreadable ({e.strerror or type(e).__name__})") from None
    except json.JSONDecodeError as e:
        raise SuperposError(f"{path} is not valid JSON ({e.msg})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SuperposError(f"{path} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(value, dict):
        raise SuperposError(f"{path}: expected a JSON object, found {json_type(value)}")
    return value


def field(obj: dict, key: str, kind: str, where, default=_MISSING, minimum: float | None = None):
    """``obj[key]`` checked against ``kind``, in one line naming ``where`` and ``key`` when it is not.

    kinds: ``int`` (an integer, not a boolean; an integral float like ``4.0`` is taken as 4), ``number`` (a finite
    int or float, not a boolean), ``str``, ``bool``, ``object`` (a dict), ``list``; any of them ending in ``?`` also
    takes null. ``minimum`` bounds numbers from below. Without ``default`` the key is required."""
    if key not in obj:
        if default is _MISSING:
            raise SuperposError(f"{where}: missing {key!r}")
        return default
    return check_value(obj[key], kind, f"{where}: {key!r}", minimum)


def check_value(value, kind: str, what: str, minimum: float | None = None):
    """``value`` checked against ``kind`` (see ``field``); ``what`` names it in the message."""
    if kind.endswith("?"):
        if value is None:
            return None
        kind = kind[:-1]
    expected = {"int": "an integer", "number": "a number", "str": "a string", "bool": "true or false",
                "object": "a JSON object", "list": "a list"}[kind]
    ok = {"int": isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer()),
          "number": isinstance(value, (int, float)) and math.isfinite(value),
          "str": isinstance(value, str), "bool": isinstance(value, bool), "object": isinstance(value, dict),
          "list": isinstance(value, list)}[kind] and (kind == "bool" or not isinstance(value, bool))
    if not ok:
        raise SuperposError(f"{what} is {shown(value)}, expected {expected}")
    if kind == "int":
        value = int(value)
    if minimum is not None and value < minimum:
        raise SuperposError(f"{what} is {value}, expected at least {minimum:g}")
    return value


def read_tensors(path: str | os.PathLike, required, optional=(), floating: bool = True) -> dict:
    """The tensors of safetensors file ``path`` (torch, on CPU), which must hold every name in ``required`` and
    nothing outside ``required`` and ``optional``; with ``floating`` every tensor must be floating point and is
    returned as float32. Anything else is refused in one line naming the tensor."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = expect_file(path, "a safetensors file")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, KeyError, OverflowError) as e:
        brief = " ".join(str(e).split())[:80] or type(e).__name__
        raise SuperposError(f"{path} is unreadable as safetensors ({brief})") from None
    names, allowed = set(state), set(required) | set(optional)
    missing = sorted(set(required) - names)
    if missing:
        raise SuperposError(f"{path} lacks tensor {missing[0]!r} (expected {', '.join(sorted(required))})")
    extra = sorted(names - allowed)
    if extra:
        raise SuperposError(f"{path} holds an unexpected tensor {extra[0]!r} (expected "
                            f"{', '.join(sorted(allowed))})")
    if floating:
        for name in sorted(state):
            if not state[name].is_floating_point():
                raise SuperposError(f"{path}: tensor {name!r} is {str(state[name].dtype).removeprefix('torch.')}, "
                                    f"expected floating point")
        state = {k: v.to(torch.float32) for k, v in state.items()}
    return state


def expect_shape(tensors: dict, name: str, shape: tuple, where) -> None:
    """Refuse (one line) tensor ``name`` unless its shape is ``shape``."""
    got = tuple(tensors[name].shape)
    if got != tuple(shape):
        raise SuperposError(f"{where}: tensor {name!r} has shape {got}, expected {tuple(shape)}")
