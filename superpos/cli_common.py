"""Pieces every CLI module shares: argparse types and the parser with one-line errors."""
from __future__ import annotations

import argparse
import sys


def positive(kind=int, zero: bool = False):
    """argparse type: a positive int (``1e6`` accepted; 0 too with ``zero``) or a non-negative float."""
    def parse(text: str):
        try:
            value = kind(float(text)) if kind is int else kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        if value < 0 or (value == 0 and kind is int and not zero):
            raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'")
        return value
    return parse


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``superpos: error: ...``, exit 2); subcommand parsers inherit it."""

    def error(self, message):
        """Print one line ``superpos: error: ...`` and exit 2."""
        sub = self.prog.removeprefix("superpos").strip()
        print(f"superpos: error: {sub + ': ' if sub else ''}{message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
