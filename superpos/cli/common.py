"""Pieces every CLI module shares: argparse types and the parser with one-line errors."""
from __future__ import annotations

import argparse
import re
import sys


def positive(kind=int, zero: bool = False):
    """argparse type: a positive int (``1e6`` accepted, exactly; ``1.5`` refused; 0 too with ``zero``) or a
    non-negative finite float."""
    from superpos.settings import parse_float, parse_int

    def parse(text: str):
        try:
            value = parse_int(text) if kind is int else parse_float(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if value < 0 or (value == 0 and kind is int and not zero):
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    return parse


#: characters that would break the one line (str.splitlines cuts at all of these) or hide in a terminal
_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(message: str) -> str:
    """``message`` on one line: line breaks and control characters, e.g. in a value the user typed and the message
    quotes, written as escapes (``\\n``, ``\\x1c``)."""
    return _BREAKS.sub(lambda m: m.group().encode("unicode_escape").decode(), str(message))


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``superpos: error: ...``, exit 2); subcommand parsers inherit it."""

    def error(self, message):
        """Print one line ``superpos: error: ...`` and exit 2."""
        sub = self.prog.removeprefix("superpos").strip()
        print(one_line(f"superpos: error: {sub + ': ' if sub else ''}{message} (see {self.prog} --help)"),
              file=sys.stderr)
        sys.exit(2)


def _arg_type(parse):
    """A settings parser (raises ValueError) as an argparse type (one-line error naming the flag)."""
    def arg(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    arg.__name__ = getattr(parse, "__name__", "value")
    return arg


def add_settings(p: argparse.ArgumentParser, config_cls) -> None:
    """One flag per field of a settings dataclass (``superpos.settings``), its help ending in the field's default;
    ``config_from_args`` builds the config back, and a ``ConfigError`` for a field is shown with its flag."""
    from superpos.settings import settings

    for s in settings(config_cls):
        help = s.help_text().replace("%", "%%")  # argparse formats help with %: a literal "90 %" must be escaped
        if isinstance(s.default, bool):
            p.add_argument(s.flag, dest=s.name, action="store_false" if s.default else "store_true", help=help)
        else:
            p.add_argument(s.flag, dest=s.name, type=_arg_type(s.parse), default=s.default, help=help,
                           metavar=s.flag.removeprefix("--").upper().replace("-", "_"))
    p.set_defaults(config_class=config_cls)


def config_from_args(config_cls, args):
    """The config dataclass from the flags ``add_settings`` made."""
    from dataclasses import fields

    return config_cls(**{f.name: getattr(args, f.name) for f in fields(config_cls)})
