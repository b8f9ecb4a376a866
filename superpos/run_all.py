"""``python -m superpos run all``: every experiment in sequence, then an index page linking their reports.

Each experiment runs from its registered config (``superpos.protocol``: the same defaults as its command) into
``OUT/<name>``, with ``--quick`` applied as ``dataclasses.replace(config, **experiment.quick)``; the tuned lens
trained by ``lenses`` is reused by ``repurposing``. An experiment that fails is recorded in the index with its
error and the rest still run.
"""
from __future__ import annotations

import html
import time
from pathlib import Path

from .errors import SuperposError
from .protocol import EXPERIMENTS as REGISTRY
from .protocol import command_line

EXPERIMENTS = list(REGISTRY)


def parse_only(text: str) -> list[str]:
    """``--only``'s comma list, checked against the registry and put in run order."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in EXPERIMENTS]
    if bad or not names:
        raise SuperposError(f"unknown experiment '{bad[0] if bad else text}' (expected a comma list of "
                            f"{', '.join(EXPERIMENTS)})")
    return [n for n in EXPERIMENTS if n in names]


def experiment_config(name: str, out: Path, model: str | None, corpus: str | None, device: str, seed: int,
                      quick: bool):
    """The config ``run all`` gives experiment ``name``: its defaults, the shared settings, and --quick's."""
    from dataclasses import fields, replace

    e = REGISTRY[name]
    cfg = e.config()
    names = {f.name for f in fields(cfg)}
    shared = {"out": str(out / name), "device": device, "seed": seed, "model": model}
    if corpus and "corpus" in names:  # orthogonality harvests the default corpus for its store
        shared["corpus"] = corpus
    if name == "repurposing" and (out / "lenses" / "tuned_lens").is_dir():
        shared["lens"] = str(out / "lenses" / "tuned_lens")
    return replace(cfg, **shared, **(e.quick if quick else {}))


def run_all(names: list[str], out: Path, model: str | None, corpus: str | None, device: str, seed: int,
            quick: bool) -> list[dict]:
    """Run ``names`` in order into ``out``, writing the index after each; returns the index rows."""
    from dataclasses import asdict

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, name in enumerate(names, 1):
        cfg = experiment_config(name, out, model, corpus, device, seed, quick)
        command = command_line(name, asdict(cfg))
        print(f"\n=== [{i}/{len(names)}] {command}", flush=True)
        t0 = time.perf_counter()
        row = {"name": name, "command": command, "folder": name}
        try:
            res = REGISTRY[name].run(cfg)
            row.update(status="ok", headline=res.verdict.headline)
        except SuperposError as e:
            row.update(status="failed", headline=f"error: {e}")
            print(f"superpos: error: {name}: {e}", flush=True)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        write_index(out, rows, names)  # after each experiment: an interrupted run still has its index
    return rows


def write_index(out: Path, rows: list[dict], names: list[str]) -> None:
    """index.md, index.html and index.json for the experiments run so far."""
    from .dictionaries.io import write_json_atomic

    done = {r["name"] for r in rows}
    pending = [n for n in names if n not in done]
    md = ["# superpos experiments", "", "| experiment | verdict | time | report |", "|---|---|---|---|"]
    md += [f"| {r['name']} | {r['headline'].replace('|', '/')} | {r['seconds']:.0f} s | "
           f"[report]({r['folder']}/report.md) |" for r in rows]
    md += [f"| {n} | not run yet | | |" for n in pending]
    md += ["", "Commands:", "", "```"] + [r["command"] for r in rows] + ["```", ""]
    (out / "index.md").write_text("\n".join(md))
    cells = "".join(
        f"<tr><td><a href='{html.escape(r['folder'])}/report.html'>{html.escape(r['name'])}</a></td>"
        f"<td class='{r['status']}'>{html.escape(r['headline'])}</td><td>{r['seconds']:.0f} s</td>"
        f"<td><code>{html.escape(r['command'])}</code></td></tr>" for r in rows)
    cells += "".join(f"<tr><td>{html.escape(n)}</td><td>not run yet</td><td></td><td></td></tr>" for n in pending)
    (out / "index.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>superpos experiments</title><style>"
        "body{font-family:sans-serif;max-width:72em;margin:auto;padding:1em}table{border-collapse:collapse}"
        "td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}"
        ".failed{color:#b00}code{font-size:.85em}</style></head><body><h1>superpos experiments</h1>"
        "<table><tr><th>experiment</th><th>verdict</th><th>time</th><th>command</th></tr>" + cells +
        "</table></body></html>")
    write_json_atomic(out / "index.json", {"experiments": rows, "pending": pending})
