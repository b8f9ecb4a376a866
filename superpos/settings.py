"""Settings as documented dataclass fields: one default per setting, written once.

A config dataclass (an experiment's, ``HarvestConfig``) declares each field with ``setting(default, help, parse=,
flag=)``. The CLI builds its flags from ``settings(ConfigClass)`` (flag name, type, help ending in the default),
reproduce lines are written from it (``format_value``), and a ``ConfigError`` raised for a field is shown by the
CLI with that field's flag. Nothing here imports the CLI or argparse.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable

#: planted controls of the repurposing experiment (superpos.hypotheses.mechanisms describes each)
CONTROL_KINDS = ("none", "positive", "negative", "gamma", "subspace", "consistent", "attn", "mlp", "gated", "anti")


def setting(default=None, help: str = "", *, parse: str | Callable[[str], Any] | None = None, flag: str | None = None,
            factory=None):
    """A config field: its one default, its help text, and optionally its parser (a name in PARSERS, or the parser
    itself) and flag name."""
    meta = {"help": help, "parse": parse, "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------ parsers for flag values (raise ValueError)
#: the largest whole number a flag takes (beyond it no count, size or seed means anything)
MAX_INT = 2**63 - 1


def parse_int(text: str) -> int:
    """A whole number as typed: ``12``, ``1_000``, ``1e6``, ``2.5e3`` (exactly, with no rounding); refused
    (ValueError) when it is not a number, not whole (``1.5``, ``1e-3``), not finite or past ``MAX_INT``."""
    from decimal import Decimal, InvalidOperation

    try:
        value = int(text)
    except (ValueError, TypeError):
        try:
            d = Decimal(text.strip()) if isinstance(text, str) else None
        except (InvalidOperation, ValueError):
            d = None
        if d is None or not d.is_finite():
            raise ValueError(f"expected a number, got {text!r}") from None
        if d.adjusted() > 18:  # (before the whole-number test: that would build the number's every digit)
            raise ValueError(f"expected a number at most {MAX_INT:.2e}, got {text!r}") from None
        if d != d.to_integral_value():
            raise ValueError(f"expected a whole number, got {text!r}") from None
        value = int(d)
    if abs(value) > MAX_INT:
        raise ValueError(f"expected a number at most {MAX_INT:.2e}, got {text!r}")
    return value


def parse_float(text: str) -> float:
    """A finite number as typed (``0.5``, ``1e-3``); refused (ValueError) when it is not one (``nan``, ``inf``
    too: no setting means anything with them)."""
    try:
        value = float(text)
    except (ValueError, TypeError):
        raise ValueError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


def _number(kind):
    return parse_int if kind is int else parse_float


def _checked(parse, ok, what: str):
    def check(text: str):
        value = parse(text)
        if not ok(value):
            raise ValueError(f"expected {what}, got {text!r}")
        return value
    return check


def _list(parse, ok, what: str):
    def parse_list(text: str):
        try:
            values = [parse(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"expected a comma list of numbers, got {text!r}") from None
        if not values or not all(ok(v) for v in values):
            raise ValueError(f"expected {what}, got {text!r}")
        return values
    return parse_list


def choice(*options: str):
    """The parser of a flag that takes one of ``options`` (kept as its ``options``)."""
    def parse(text: str):
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {text!r}")
        return text
    parse.options = options
    return parse


def _choice_list(*options: str):
    def parse(text: str):
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not values or any(v not in options for v in values):
            raise ValueError(f"expected a comma list of {', '.join(options)}, got {text!r}")
        return values
    return parse


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"expected I/N like 0/4, got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"need 0 <= I < N, got {text!r}")
    return i, n


PARSERS: dict[str, Callable[[str], Any]] = {
    "int": _number(int),
    "float": _number(float),
    "positive_int": _checked(_number(int), lambda v: v > 0, "a positive integer"),
    "nonneg_int": _checked(_number(int), lambda v: v >= 0, "a non-negative integer"),
    "positive_float": _checked(_number(float), lambda v: v > 0, "a positive number"),
    "probability": _checked(_number(float), lambda v: 0 < v < 1, "a probability in (0, 1)"),
    "unit": _checked(_number(float), lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "int_list": _list(parse_int, lambda v: v > 0, "positive integers"),
    "unit_list": _list(parse_float, lambda v: 0 < v <= 1, "numbers in (0, 1]"),
    "layer_list": _list(parse_int, lambda v: v >= 0, "layer numbers (0 or more)"),
    "positive_float_list": _list(parse_float, lambda v: v > 0, "positive numbers"),
    "offset_list": _list(parse_int, lambda v: abs(v) <= 16, "offsets between -16 and 16"),
    "name_list": _list(str.strip, bool, "a comma list of names"),
    "control": choice(*CONTROL_KINDS),
    "token_basis": choice("output", "unembedding"),
    "surrogate": choice("none", "gaussian", "pc-shuffle", "planted", "realistic"),
    "store_dtype": choice("auto", "float16", "float32"),
    "model_dtype": choice("auto", "float32", "bfloat16", "float16"),
    "compression": choice("none", "lzf", "gzip"),
    "reinject_targets": _choice_list("mean", "embedding"),
    "shard": _shard,
}


# ------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Setting:
    """One config field as the CLI and the reproduce line see it."""

    name: str  # the dataclass field
    flag: str  # --flag-name
    default: Any
    help: str
    parse: Callable[[str], Any]

    def help_text(self) -> str:
        """The help line, ending with the default (the field's, written once); switches have no default to show."""
        if isinstance(self.default, bool):
            return self.help
        return f"{self.help} (default {'not set' if self.default is None else format_value(self.default)})"


def flag_for(config_cls, name: str) -> str:
    """The command-line flag of field ``name`` of ``config_cls`` (``--no-NAME`` for a switch that is on by
    default)."""
    for s in settings(config_cls):
        if s.name == name:
            return s.flag
    raise KeyError(name)


def format_value(value) -> str:
    """A setting's value as typed on the command line (``empty`` for None)."""
    if value is None:
        return "empty"
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def settings(config_cls) -> list[Setting]:
    """The settings of a config dataclass, in field order."""
    out = []
    for f in fields(config_cls):
        default = f.default_factory() if f.default is MISSING else f.default
        parse = f.metadata.get("parse") or str
        parse = PARSERS[parse] if isinstance(parse, str) else parse
        flag = "--" + (f.metadata.get("flag") or f.name).replace("_", "-")
        if default is True:  # a switch that is on by default is turned off with --no-NAME
            flag = "--no-" + flag[2:]
        out.append(Setting(f.name, flag, default, f.metadata.get("help", ""), parse))
    return out


