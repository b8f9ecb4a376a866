"""Estimator parameters, each declared once: ``Param(default, doc, check)``.

A dictionary class lists the parameters it adds in ``_params = Params(name=Param(...), ...)``; a kind's table is its
bases' tables merged along the MRO, a later declaration of a name replacing an earlier one (a kind that needs
another default or doc for a shared parameter redeclares it). ``BaseDictionary.__init_subclass__`` calls
:func:`declare`, and from that one table come:

* **the signature's defaults.** ``__init__(self, *, k=..., ...)`` names every parameter, keyword-only, and
  writes ``...`` for each default; :func:`declare` puts the declared defaults in their place (the function's
  ``__kwdefaults__``), so ``inspect.signature``, scikit-learn's ``get_params``/``clone`` and ``help()`` see the
  real ones. A signature whose names differ from the table, a positional parameter, or a default written out in
  the source is refused when the class is defined, so the two cannot drift.
* **the numpydoc "Parameters" section**, appended to the class docstring.
* **the validation**: ``fit`` and ``partial_fit`` begin with ``_validate_params()`` (scikit-learn checks at fit,
  never in ``__init__``), which raises :class:`InvalidParameterError` for the first value its check refuses.
"""
from __future__ import annotations

import inspect
import numbers
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from superpos.errors import SuperposError


class InvalidParameterError(SuperposError, ValueError, TypeError):
    """A hyperparameter a dictionary cannot use: the ValueError (and TypeError, as scikit-learn's) that
    estimators raise for a bad parameter, and a SuperposError, so the CLI prints it in one line and exits 2."""


class Check:
    """A constraint on one parameter's value: ``ok(value)``; ``type`` is how the docs write it (numpydoc),
    ``text`` how an error message does."""

    none: bool = False  # None is accepted too
    type: str = "object"
    text: str = "anything"

    def ok(self, value) -> bool:  # pragma: no cover
        raise NotImplementedError

    def _or_none(self, s: str) -> str:
        return f"{s} or None" if self.none else s


def _bound(v) -> str:
    return format(v, "g") if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Number(Check):
    """An int (``integer=True``; bools refused) or a real number between ``low`` and ``high`` (None: unbounded);
    ``closed`` says which ends are included: "both", "left", "right" or "neither" (as scikit-learn's Interval)."""

    integer: bool
    low: float | None = None
    high: float | None = None
    closed: str = "both"
    none: bool = False

    def ok(self, value) -> bool:
        if value is None:
            return self.none
        kind = numbers.Integral if self.integer else numbers.Real
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, kind):
            return False
        lo_in, hi_in = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.low is not None and not (value >= self.low if lo_in else value > self.low):
            return False
        return self.high is None or (value <= self.high if hi_in else value < self.high)

    @property
    def type(self) -> str:
        return self._or_none("int" if self.integer else "float")

    @property
    def text(self) -> str:
        what = "an integer" if self.integer else "a number"
        lo_in, hi_in = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.low is not None and self.high is not None:
            where = f" in {'[' if lo_in else '('}{_bound(self.low)}, {_bound(self.high)}{']' if hi_in else ')'}"
        elif self.low is not None:
            where = f" {'≥' if lo_in else '>'} {_bound(self.low)}"
        elif self.high is not None:
            where = f" {'≤' if hi_in else '<'} {_bound(self.high)}"
        else:
            where = ""
        return self._or_none(what + where)


def Int(low: int | None = None, high: int | None = None, *, none: bool = False) -> Number:
    """An integer in [low, high]."""
    return Number(True, low, high, "both", none)


def Real(low: float | None = None, high: float | None = None, closed: str = "both", *, none: bool = False) -> Number:
    """A real number between ``low`` and ``high`` (``closed`` as in :class:`Number`)."""
    return Number(False, low, high, closed, none)


@dataclass(frozen=True)
class OneOf(Check):
    """One of a few strings."""

    values: tuple[str, ...]

    def ok(self, value) -> bool:
        return isinstance(value, str) and value in self.values

    @property
    def type(self) -> str:
        return "{" + ", ".join(repr(v) for v in self.values) + "}"

    @property
    def text(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class Bool(Check):
    """True or False."""

    type = "bool"
    text = "True or False"

    def ok(self, value) -> bool:
        return isinstance(value, (bool, np.bool_))


class Budgets(Check):
    """A tuple (or list) of positive token counts, possibly empty."""

    type = "tuple of int"
    text = "a tuple of positive token counts"

    def ok(self, value) -> bool:
        return isinstance(value, (tuple, list)) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)


@dataclass(frozen=True)
class Device(Check):
    """A device name ("auto", "cpu", "cuda", "cuda:N", resolved at fit) or a torch.device."""

    type = "str or torch.device"
    text = "a device name ('auto', 'cpu', 'cuda', 'cuda:N') or a torch.device"

    def ok(self, value) -> bool:
        return isinstance(value, (str, torch.device))


@dataclass(frozen=True)
class Param:
    """One parameter's declaration: its ``default``, its ``doc`` (one paragraph, for the Parameters section) and
    the ``check`` its value must pass at fit; ``shown`` is how the docs write the default when ``repr`` would not
    do (``1/32``)."""

    default: Any
    doc: str
    check: Check
    shown: str | None = None

    def __post_init__(self):
        if not self.check.ok(self.default):
            raise TypeError(f"the default {self.default!r} fails its own check ({self.check.text})")


class Params(Mapping):
    """A class's own declarations, by name, in order (read-only: every instance of the class shares it)."""

    def __init__(self, **declared: Param):
        self._declared = declared

    def __getitem__(self, name: str) -> Param:
        return self._declared[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._declared)

    def __len__(self) -> int:
        return len(self._declared)

    def __repr__(self) -> str:
        return f"Params({', '.join(self._declared)})"


def _merged(cls) -> dict[str, Param]:
    table: dict[str, Param] = {}
    for klass in reversed(cls.__mro__):
        table.update(vars(klass).get("_params", {}))
    return table


def declare(cls) -> None:
    """Give ``cls`` its merged table (``cls._all_params``, in signature order), its signature's defaults and its
    docstring's Parameters section, after checking that ``__init__`` names exactly the declared parameters."""
    table = _merged(cls)
    init = cls.__init__
    if init is object.__init__:  # an abstract base without a signature of its own: the table is all there is
        cls._all_params = table
    else:
        params = list(inspect.signature(init).parameters.values())[1:]
        where = f"{cls.__qualname__}.__init__"
        positional = [p.name for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        if positional:
            raise TypeError(f"{where}: parameters must be keyword-only (after `*`): {', '.join(positional)}")
        names = [p.name for p in params]
        if set(names) != set(table):
            raise TypeError(f"{where} names {sorted(set(names) - set(table))} without a declaration and declares "
                            f"{sorted(set(table) - set(names))} it does not take")
        defaults = {n: table[n].default for n in names}
        if "__init__" in vars(cls):
            written = [n for n, v in (init.__kwdefaults__ or {}).items() if v is not ...]
            if written or len(init.__kwdefaults__ or {}) != len(names):
                raise TypeError(f"{where}: write `...` for every default, the declaration holds it "
                                f"({', '.join(written) or 'a parameter without one'})")
            init.__kwdefaults__ = defaults
        elif init.__kwdefaults__ != defaults:  # an inherited __init__ carries its own class's defaults
            raise TypeError(f"{cls.__qualname__} redeclares a default of its base: give it its own __init__")
        cls._all_params = {n: table[n] for n in names}
    doc = inspect.cleandoc(vars(cls).get("__doc__") or "")
    if "\nParameters\n---" in "\n" + doc:
        raise TypeError(f"{cls.__qualname__}: the Parameters section is generated from the declarations; "
                        "do not write one")
    if cls._all_params:
        cls.__doc__ = (doc + "\n\n" if doc else "") + parameters_section(cls._all_params)


def parameters_section(params: dict[str, Param], width: int = 100) -> str:
    """The numpydoc "Parameters" section of ``params``."""
    lines = ["Parameters", "----------"]
    for name, p in params.items():
        default = p.shown if p.shown is not None else repr(p.default)
        lines.append(f"{name} : {p.check.type}, default={default}")
        lines += textwrap.wrap(p.doc, width, initial_indent="    ", subsequent_indent="    ", break_on_hyphens=False)
    return "\n".join(lines)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(est) -> None:
    """Check every declared parameter of ``est``; raise :class:`InvalidParameterError` for the first it refuses."""
    for name, p in type(est)._all_params.items():
        value = getattr(est, name)
        if not p.check.ok(value):
            raise InvalidParameterError(f"{type(est).__name__}: {name} must be {p.check.text}, got {_show(value)}")
