"""The CLI reference page (docs/cli.md), generated from the argparse definitions so that it cannot drift.

``python -m superpos.cli.reference > docs/cli.md`` rewrites it; a test checks that the committed page
matches.
"""
from __future__ import annotations

import argparse


def _commands(parser: argparse.ArgumentParser, path: list[str]):
    """(path, parser) for every command that does something, depth first, in definition order."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    helps = {c.dest: c.help for c in subs[0]._choices_actions}
    for name, sub in subs[0].choices.items():
        sub._superpos_help = helps.get(name, "")
        yield from _commands(sub, path + [name])


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def reference() -> str:
    """docs/cli.md's text, generated from the parser."""
    from superpos.cli.main import build_parser

    root = build_parser()
    out = ["# Command-line reference", "",
           "Generated from the argparse definitions by `python -m superpos.cli.reference`; every command also "
           "answers `--help`. Every bad input prints one line `superpos: error: …` and exits 2 (see "
           "[errors](errors.md)); Ctrl-C exits 130 and says how to resume. `--debug` (before the command) shows "
           "tracebacks.", ""]
    commands = list(_commands(root, ["superpos"]))
    out += [f"- [`{' '.join(p)}`](#{'-'.join(p[1:])}) — {_cell(sub._superpos_help)}" for p, sub in commands]
    for path, sub in commands:
        sub.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
        out += ["", f"## {' '.join(path[1:])}", ""]
        if sub.description:
            out += [_cell(sub.description), ""]
        out += ["```", sub.format_usage().strip(), "```", "",
                "| argument | meaning | default |", "|---|---|---|"]
        for a in sub._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            name = ", ".join(a.option_strings) or a.dest
            if a.option_strings and a.nargs != 0:
                name += " " + (a.metavar or a.dest.upper())
            default = "" if a.default in (None, False, argparse.SUPPRESS) or a.required else a.default
            if isinstance(default, list):
                default = ",".join(map(str, default))
            choices = f" (one of: {', '.join(map(str, a.choices))})" if a.choices else ""
            req = " **required**" if a.required and a.option_strings else ""
            out.append(f"| `{name}` | {_cell((a.help or '').replace('%%', '%'))}{choices}{req} | {_cell(default)} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
