"""Results side by side: one table per experiment with each run's verdict and headline numbers
(``superpos replicate``, docs/results/replication.md), and the ``run all`` per model × corpus behind them.

A run is a ``run all`` output folder (one model × corpus); its label is the folder's name. A missing or failed
experiment shows as such; the numbers come from each experiment's typed result (each experiment's ``numbers``).
"""
from __future__ import annotations

import json
from pathlib import Path

from superpos.errors import SuperposError
from superpos.model.files import DEFAULT_MODEL, KNOWN_MODELS
from superpos.model.known_corpora import KNOWN_CORPORA

DEFAULT_MODELS = tuple(KNOWN_MODELS)  # every known model
DEFAULT_CORPORA = ("pydoc_data.topics", *KNOWN_CORPORA)  # the default corpus and the known ones


def _cell(text: str) -> str:
    """Text for a markdown table cell (its pipes escaped)."""
    return text.replace("|", "\\|")


def _said(verdict) -> str:
    if verdict.insufficient_power:  # "not found" by a run that could not have found it
        return "INSUFFICIENT POWER"
    if verdict.supported is None:  # a descriptive experiment: its headline's first clause
        text = verdict.headline.split(" — ")[0].split(" (")[0].split(";")[0].strip()
        answer = text.rpartition(": ")[2]
        if answer != text and answer.replace(" ", "").isalpha() and answer.isupper():  # "Question: YES"
            return answer
        return text if len(text) <= 90 else text[:89] + "…"
    said = "SUPPORTED" if verdict.supported else "NOT SUPPORTED"
    if getattr(verdict, "premise_met", None) is not None:  # reinject answers two questions
        return f"premise {'MET' if verdict.premise_met else 'NOT MET'}; re-injection {said}"
    return said


def pair_folder(root: Path, model: str, corpus: str) -> Path:
    """The ``run all`` folder of one model × corpus under ``root``: ``MODEL+CORPUS`` (a path's file name)."""
    return Path(root) / f"{Path(model).name}+{Path(corpus).name}"


def run_pairs(models: list[str], corpora: list[str], root: Path, preset: str | None, device: str = "auto",
              seed: int = 0) -> list[Path]:
    """``run all`` for every model × corpus into ``pair_folder(root, …)``, resuming: an experiment already
    finished there with the same command is kept (an interrupted replication goes on where it stopped); returns
    the folders."""
    from superpos.protocol.registry import EXPERIMENTS
    from superpos.protocol.run_all import run_all

    folders = []
    for model in models:
        for corpus in corpora:
            folder = pair_folder(root, model, corpus)
            print(f"\n##### {model} × {corpus} → {folder}", flush=True)
            # the defaults go as no --model / --corpus (run_all's default_as_none): a plain `run all`'s commands
            run_all(list(EXPERIMENTS), folder, model, corpus, device, seed, preset, resume=True)
            folders.append(folder)
    return folders


def _runs_table(runs: list[Path], labels: list[str]) -> list[str]:
    """Who each column is: model, corpus, preset and wall time, from each folder's index.json."""
    from superpos.protocol.registry import EXPERIMENTS

    md = ["| run | model | corpus | preset | wall time | experiments ok |", "|---|---|---|---|---|---|"]
    for label, r in zip(labels, runs):
        ix = json.loads((r / "index.json").read_text())
        rows = ix.get("experiments", [])
        ok = sum(x["status"] == "ok" for x in rows)
        md.append(f"| {label} | {ix.get('model') or DEFAULT_MODEL} | {ix.get('corpus') or DEFAULT_CORPORA[0]} | "
                  f"{ix.get('preset') or 'defaults'} | {sum(x['seconds'] for x in rows) / 60:.0f} min | "
                  f"{ok} of {len(EXPERIMENTS)} |")
    return md


def replication_markdown(runs: list[Path], command: str | None = None, reading: str | None = None) -> str:
    """The tables for ``runs`` (``run all`` folders), one per experiment that any of them ran; ``command`` (what
    regenerates it) and ``reading`` (hand-written markdown) go at the top."""
    from superpos.protocol.registry import EXPERIMENTS

    runs = [Path(r) for r in runs]
    for r in runs:
        if not (r / "index.json").is_file():
            raise SuperposError(f"{r} is not a `run all` output folder (no index.json)")
    labels = [r.name for r in runs]
    md = ["# Replication", ""]
    if command:
        md += ["Written by", "", "```bash", command, "```", ""]
    if reading:
        md += [reading.strip(), ""]
    md += ["## The runs", ""] + _runs_table(runs, labels) + [""]
    md += ["Each column below is one `python -m superpos run all` output folder (model × corpus); each cell is that "
           "run's verdict and the numbers it rests on.", ""]
    for name, e in EXPERIMENTS.items():
        cells: dict[str, dict[str, str]] = {}
        for label, r in zip(labels, runs):
            if (r / name / "results.json").is_file():
                res = e.read(r / name)
                cells[label] = {"verdict": _said(res.verdict), "model": res.model, **e.numbers(res)}
        if not cells:
            continue
        keys = list(dict.fromkeys(k for c in cells.values() for k in c))
        md += [f"## {name}", "", "| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        md += [f"| {_cell(k)} | " + " | ".join(_cell(cells.get(lab, {}).get(k, "not run")) for lab in labels) + " |"
               for k in keys]
        md.append("")
    return "\n".join(md)


def write_replication(runs: list[Path], out: Path, command: str | None = None, reading: str | None = None) -> Path:
    """Write ``replication_markdown(runs, command, reading)`` to ``out`` (atomically)."""
    import os

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(replication_markdown(runs, command, reading))
    os.replace(tmp, out)
    return out
