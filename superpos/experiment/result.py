"""Typed experiment results: the pieces every experiment shares and their JSON round trip.

Each experiment's ``run(config)`` returns a ``Result`` dataclass (each experiment folder's ``result.py`` holds
its own); ``save`` writes it to ``results.json`` and ``read`` builds the same typed object back from that file,
checking every field against the dataclass (an unknown or missing field is an error, not a silent ``KeyError``
later). Dict keys that are not identifiers ("logit lens", "+2", 0.5) stay dict keys; a field whose JSON name
differs from its Python name says so in ``metadata={"json": ...}``.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from superpos.errors import SuperposError
from superpos.stats import Band, Interval  # noqa: F401 (result fields' types)

RESULTS = "results.json"


@dataclass(kw_only=True)
class Verdict:
    """An experiment's answer: one headline, the criteria behind it, (for a test with a yes/no answer) whether the
    hypothesis is supported, and whether a "not found" comes from a run that could not have found what the question
    needs (``insufficient_power``: the run's own minimum detectable effect is larger, by the rule each experiment's
    docs page writes down; tables then say INSUFFICIENT POWER instead of a verdict)."""

    headline: str
    criteria: list[str]
    supported: bool | None = None
    insufficient_power: bool = False


@dataclass(kw_only=True)
class Result:
    """What every experiment's run returns: its settings, the model, the verdict and the timings."""

    config: Any
    model: str
    verdict: Verdict | None = None  # None until judged (the verdict is a function of the rest)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The result as plain JSON-ready values."""
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, data: dict):
        """The typed result from ``to_dict``'s output (or a results.json), checking every field."""
        return from_jsonable(cls, data, cls.__name__)

    def save(self, folder) -> Path:
        """Write ``folder/results.json`` atomically."""
        from superpos.files import write_json_atomic

        path = Path(folder) / RESULTS
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def read(cls, path):
        """The typed result stored in ``path`` (a results.json or the folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / RESULTS
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SuperposError(f"no results at {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SuperposError(f"{path} is not valid JSON ({e})") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise SuperposError(f"{path} does not hold a {cls.__name__}: {e}") from None


def _json_name(f: dataclasses.Field) -> str:
    return f.metadata.get("json", f.name)


def to_jsonable(obj):
    """Dataclasses, dicts, lists and numpy values as plain JSON values (dataclass fields under their JSON name)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {_json_name(f): to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def from_jsonable(tp, value, where: str):
    """``value`` (parsed JSON) as type ``tp``: dataclasses field by field, ``list[X]``, ``dict[K, X]`` (keys
    converted back from JSON strings), ``X | None``, and plain values checked by kind."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for a in options:
            try:
                return from_jsonable(a, value, where)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise TypeError(errors[0] if len(errors) == 1 else f"{where}: none of {options} fits ({'; '.join(errors)})")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected an object for {tp.__name__}, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        by_json = {_json_name(f): f for f in dataclasses.fields(tp) if f.init}
        unknown = [k for k in value if k not in by_json]
        if unknown:
            raise ValueError(f"{where}: unknown field '{unknown[0]}' for {tp.__name__}")
        kwargs = {}
        for key, f in by_json.items():
            if key in value:
                kwargs[f.name] = from_jsonable(hints[f.name], value[key], f"{where}.{key}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where}: missing field '{key}' of {tp.__name__}")
        return tp(**kwargs)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise TypeError(f"{where}: expected a list, got {type(value).__name__}")
        item = args[0] if args else Any
        return [from_jsonable(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected an object, got {type(value).__name__}")
        key_tp, item = args if args else (str, Any)
        return {_key(key_tp, k, where): from_jsonable(item, v, f"{where}[{k!r}]") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int or tp is bool or tp is str:
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise TypeError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def _key(tp, key: str, where: str):
    try:
        return tp(key)
    except ValueError:
        raise ValueError(f"{where}: key {key!r} is not a {tp.__name__}") from None
