"""Results side by side: one table per experiment with each run's verdict and headline numbers
(``superpos replicate``, docs/results/replication.md).

A run is a ``run all`` output folder (one model × corpus); its label is the folder's name. A missing or failed
experiment shows as such; the numbers come from each experiment's typed result (``verdicts.numbers``).
"""
from __future__ import annotations

from pathlib import Path

from .errors import SuperposError


def _said(verdict) -> str:
    if verdict.supported is None:  # a descriptive experiment: its headline's first clause
        text = verdict.headline.split(" — ")[0].split(" (")[0].split(";")[0].strip()
        return text if len(text) <= 90 else text[:89] + "…"
    return "SUPPORTED" if verdict.supported else "NOT SUPPORTED"


def replication_markdown(runs: list[Path]) -> str:
    """The tables for ``runs`` (``run all`` folders), one per experiment that any of them ran."""
    from .hypotheses.verdicts import numbers
    from .protocol import EXPERIMENTS

    runs = [Path(r) for r in runs]
    for r in runs:
        if not (r / "index.json").is_file():
            raise SuperposError(f"{r} is not a `run all` output folder (no index.json)")
    labels = [r.name for r in runs]
    md = ["# Replication", "", "Each column is one `python -m superpos run all` output folder (model × corpus); "
          "each cell is that run's verdict and the numbers it rests on.", ""]
    for name, e in EXPERIMENTS.items():
        cells: dict[str, dict[str, str]] = {}
        for label, r in zip(labels, runs):
            if (r / name / "results.json").is_file():
                res = e.read(r / name)
                cells[label] = {"verdict": _said(res.verdict), "model": res.model, **numbers(name, res)}
        if not cells:
            continue
        keys = list(dict.fromkeys(k for c in cells.values() for k in c))
        md += [f"## {name}", "", "| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        md += [f"| {k.replace('|', '/')} | " + " | ".join(cells.get(lab, {}).get(k, "not run").replace("|", "/")
                                                       for lab in labels) + " |" for k in keys]
        md.append("")
    return "\n".join(md)


def write_replication(runs: list[Path], out: Path) -> Path:
    """Write ``replication_markdown(runs)`` to ``out`` (atomically)."""
    import os

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(replication_markdown(runs))
    os.replace(tmp, out)
    return out
