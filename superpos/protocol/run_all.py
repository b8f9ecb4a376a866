"""``python -m superpos run all``: every experiment in sequence, then an index page linking their reports.

Each experiment runs from its registered config (``superpos.protocol.registry``: the same defaults as its command) into
``OUT/<name>``, with a ``--preset`` applied as ``dataclasses.replace(config, **experiment.presets[preset])``
(``quick``: a smoke run; ``replication``: the size of docs/results/replication.md); the tuned lens
trained by ``lenses`` is reused by ``repurposing``. An experiment that fails is recorded in the index with its
error and the rest still run.
"""
from __future__ import annotations

import html
import time
from pathlib import Path

from superpos.errors import SuperposError
from superpos.experiment.spec import command_line
from superpos.protocol.registry import EXPERIMENTS as REGISTRY

PRESETS = {"quick": "small settings for a smoke run (not for conclusions)",
           "replication": "the settings of docs/results/replication.md: 70-80 minutes per corpus for the default "
                          "model on one core of a 2-core CPU, several hours for gemma3-270m"}


def parse_only(text: str) -> list[str]:
    """``--only``'s comma list, checked against the registry and put in run order."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in REGISTRY]
    if bad or not names:
        raise SuperposError(f"unknown experiment '{bad[0] if bad else text}' (expected a comma list of "
                            f"{', '.join(REGISTRY)})")
    return [n for n in REGISTRY if n in names]


def experiment_config(name: str, out: Path, model: str | None, corpus: str | None, device: str, seed: int,
                      preset: str | None = None, lens: bool | None = None):
    """The config ``run all`` gives experiment ``name``: its defaults, the shared settings, and ``preset``'s.
    Repurposing reads the tuned lens of ``out/lenses`` when ``lens`` (default: when that lens is there)."""
    from dataclasses import replace

    e = REGISTRY[name]
    cfg = e.config()
    shared = {"out": str(out / name), "device": device, "seed": seed, "model": model}
    if corpus:
        shared["corpus"] = corpus
    if name == "repurposing" and (lens if lens is not None else (out / "lenses" / "tuned_lens").is_dir()):
        shared["lens"] = str(out / "lenses" / "tuned_lens")
    if preset and preset not in PRESETS:
        raise SuperposError(f"unknown preset '{preset}' (expected one of {', '.join(PRESETS)})")
    return replace(cfg, **shared, **(e.presets.get(preset, {}) if preset else {}))


def finished_rows(out: Path) -> dict[str, dict]:
    """The experiments an earlier ``run all`` into ``out`` finished (status ok, results.json present), by name."""
    import json

    try:
        rows = json.loads((out / "index.json").read_text()).get("experiments", [])
    except (OSError, ValueError):
        return {}
    return {r["name"]: r for r in rows if r.get("status") == "ok" and (out / r["folder"] / "results.json").is_file()}


def default_as_none(model: str | None, corpus: str | None) -> tuple[str | None, str | None]:
    """The default model and corpus as None, however named, so that one run gets one command whichever way it was
    asked for (``run all --corpus pydoc_data.topics`` and ``replicate`` resume each other)."""
    from superpos.model.corpus import DEFAULT_CORPUS_NAMES
    from superpos.model.files import DEFAULT_MODEL

    return (None if model == DEFAULT_MODEL else model), (None if corpus in DEFAULT_CORPUS_NAMES else corpus)


def run_all(names: list[str], out: Path, model: str | None, corpus: str | None, device: str, seed: int,
            preset: str | None = None, resume: bool = False) -> list[dict]:
    """Run ``names`` in order into ``out``, writing the index after each; returns the index rows. With ``resume``,
    an experiment that an earlier run into ``out`` finished with the very same command is kept, not run again, and
    the index also keeps listing the other experiments finished there (so ``--only`` runs into one folder add up)."""

    out.mkdir(parents=True, exist_ok=True)
    model, corpus = default_as_none(model, corpus)
    earlier = finished_rows(out) if resume else {}
    settings = {"model": model, "corpus": corpus, "preset": preset, "seed": seed}
    # The tuned lens's weights are not kept with committed results. A repurposing run finished with that lens
    # stays finished without them; one still to run needs them, so lenses runs again first.
    lens = None  # experiment_config looks for the lens itself
    if "lenses" in earlier and not (out / "lenses" / "tuned_lens").is_dir():
        with_lens = command_line("repurposing", experiment_config("repurposing", out, model, corpus, device, seed,
                                                                  preset, lens=True))
        if earlier.get("repurposing", {}).get("command") == with_lens:
            lens = True
        elif "repurposing" in names and "lenses" in names:
            del earlier["lenses"]
    rows = []
    for i, name in enumerate(names, 1):
        cfg = experiment_config(name, out, model, corpus, device, seed, preset, lens=lens)
        command = command_line(name, cfg)
        if name in earlier and earlier[name]["command"] == command:
            print(f"\n=== [{i}/{len(names)}] {name}: finished earlier with the same command; kept", flush=True)
            row = earlier[name]
        else:
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
        shown = rows  # written after each experiment: an interrupted run still has its index
        if resume:  # experiments outside ``names`` finished here (another --only run, perhaps still going) stay listed
            have = {r["name"] for r in rows}  # (an experiment of ``names`` not reached yet may be finished elsewhere)
            others = [r for n, r in finished_rows(out).items() if n not in have]
            shown = sorted(rows + others, key=lambda r: list(REGISTRY).index(r["name"]))
        write_index(out, shown, names, settings)
    return rows


def write_index(out: Path, rows: list[dict], names: list[str], settings: dict | None = None) -> None:
    """index.md, index.html and index.json (with ``settings``: model, corpus, preset, seed) for the experiments run
    so far."""
    from superpos.files import write_json_atomic

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
    write_json_atomic(out / "index.json", {"experiments": rows, "pending": pending, **(settings or {})})
