"""Experiment reports: markdown + HTML with PNG figures (matplotlib, Agg), written atomically."""
from __future__ import annotations

import html
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def band(ax, x, c, label: str, **kw):
    """Plot a ``Band``'s mean over x with its [lo, hi] confidence band in the line's colour."""
    line, = ax.plot(x, c.mean, label=label, **kw)
    ax.fill_between(x, c.lo, c.hi, alpha=0.2, color=line.get_color())
    return line


class Report:
    """Collects sections; ``save(folder)`` writes report.md, report.html and the figures beside them."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple[str, object]] = []
        self.figures: dict[str, object] = {}

    def heading(self, text: str) -> None:
        """Add a section heading."""
        self.blocks.append(("h2", text))

    def text(self, text: str) -> None:
        """Add a paragraph."""
        self.blocks.append(("p", text))

    def code(self, text: str) -> None:
        """Add a code block."""
        self.blocks.append(("pre", text))

    def table(self, header: list[str], rows: list[list]) -> None:
        """Add a table (numbers formatted)."""
        self.blocks.append(("table", (header, [[_fmt(c) for c in r] for r in rows])))

    def figure(self, fig, name: str, caption: str) -> None:
        """Add a matplotlib figure, saved as ``name`` beside the report."""
        self.figures[name] = fig
        self.blocks.append(("img", (name, caption)))

    def markdown(self) -> str:
        """The report as markdown."""
        out = [f"# {self.title}", ""]
        for kind, body in self.blocks:
            if kind == "h2":
                out += [f"## {body}", ""]
            elif kind == "p":
                out += [body, ""]
            elif kind == "pre":
                out += ["```", body, "```", ""]
            elif kind == "table":
                header, rows = body
                cell = lambda c: c.replace("|", "\\|")  # noqa: E731  a literal | (as in |cos|) must not split the cell
                out += ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
                out += ["| " + " | ".join(map(cell, r)) + " |" for r in rows] + [""]
            elif kind == "img":
                name, caption = body
                out += [f"![{caption}]({name})", "", f"*{caption}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        """The report as a standalone HTML page."""
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
                 "<style>body{font-family:sans-serif;max-width:60em;margin:auto;padding:1em}table{border-collapse:"
                 "collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}"
                 "pre{background:#f4f4f4;padding:.5em;overflow-x:auto}</style></head><body>",
                 f"<h1>{html.escape(self.title)}</h1>"]
        for kind, body in self.blocks:
            if kind == "h2":
                parts.append(f"<h2>{html.escape(body)}</h2>")
            elif kind == "p":
                parts.append(f"<p>{html.escape(body)}</p>")
            elif kind == "pre":
                parts.append(f"<pre>{html.escape(body)}</pre>")
            elif kind == "table":
                header, rows = body
                parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
                parts.append("</table>")
            elif kind == "img":
                name, caption = body
                parts.append(f"<figure><img src='{name}' alt='{html.escape(caption)}'><figcaption>"
                             f"{html.escape(caption)}</figcaption></figure>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def verdict(self, verdict, res=None) -> None:
        """The opening section every experiment report has: the verdict's headline and its criteria; with the
        result ``res``, first the scope the numbers hold for (its model and corpus)."""
        self.heading("Verdict")
        if res is not None:
            corpus = getattr(res.config, "corpus", None) or "pydoc_data.topics (the default corpus)"
            self.text(f"Scope: {res.model} over {corpus}. Every number below was measured on this model and this "
                      f"corpus only.")
        if verdict.insufficient_power:
            self.text("**INSUFFICIENT POWER**: this run could not have detected the effect the question needs (its "
                      "own minimum detectable effect is larger, by the rule on the experiment's docs page), so what it "
                      "did not find is no answer either way.")
        self.text(verdict.headline)
        for line in verdict.criteria:
            self.text(line)

    def reproduce(self, experiment: str, config, calibrate: bool = False) -> None:
        """The closing sections every experiment report has: all its settings, and the command that
        reproduces it (every flag that differs from its default, from the experiment's config dataclass; with
        ``calibrate``, the run with its controls)."""
        from dataclasses import asdict

        from superpos.experiment.spec import command_line

        self.heading("Settings")
        self.table(["setting", "value"], [[k, _setting(v)] for k, v in asdict(config).items()])
        self.heading("Reproduce")
        self.code(command_line(experiment, config) + (" --calibrate" if calibrate else ""))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write report.md, report.html and the figures into ``folder`` (each atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, fig in self.figures.items():
            tmp = folder / f".{name}.tmp.png"
            fig.savefig(tmp, dpi=90, bbox_inches="tight")
            plt.close(fig)
            os.replace(tmp, folder / name)
        for name, text in (("report.md", self.markdown()), ("report.html", self.html())):
            tmp = folder / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, folder / name)
        return folder / "report.md"


def _setting(v) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return "(default)" if v is None else str(v)


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.4g}"
    return str(c)
