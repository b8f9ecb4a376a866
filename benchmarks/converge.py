"""A converging fit streamed from a store larger than memory allows to read in: epochs, stopping point, the
held-out FVU curve, wall time and the peak resident memory of the fitting process.

    python benchmarks/converge.py --store runs/shakespeare-1m/acts.h5 --layer 15

runs ``python -m superpos fit --store STORE --layer L --kind topk --expansion 16`` with no ``--tokens`` (train
until the held-out objective stops improving) in a child process, measures its peak RSS
(``getrusage(RUSAGE_CHILDREN)``), reads the dictionary's metrics.json and writes the section between the
``converge`` markers of benchmarks/RESULTS.md (with ``--results``) and a figure beside it.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from results_md import CONVERGE  # beside this script
from run import machine

from superpos.dictionaries.train_run import OUTLIER_NORM

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = CONVERGE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="activation store (.h5)")
    ap.add_argument("--layer", type=int, default=15, help="layer to fit (default 15)")
    ap.add_argument("--out", default=None, help="dictionary folder (default: beside the store, topk16-L<layer>)")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"),
                    help="RESULTS.md whose converge section is rewritten (empty: print only)")
    args = ap.parse_args()
    out = Path(args.out or Path(args.store).with_name(f"topk16-L{args.layer}"))
    cmd = [sys.executable, "-m", "superpos", "fit", "--store", args.store, "--layer", str(args.layer), "--kind", "topk",
           "--expansion", "16", "--no-progress", "--out", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 2**30  # Linux: KiB
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    val = metrics["validation_history"]
    per_epoch = metrics["steps_per_epoch"]
    batch = int(config["params"]["batch_size"])
    from superpos.dictionaries import load_dictionary
    from superpos.store import ActivationStore

    with ActivationStore(args.store) as st:  # the final dictionary on the held-out contexts (after the split)
        rows, d, layers, store_gib = st.n_rows, st.d_model, st.layers, Path(args.store).stat().st_size / 2**30
        split = config["meta"]["train_rows"][1]
        held = np.arange(split, min(st.n_rows, split + 65536))
        x = st.to_numpy(args.layer, held[st.row_field("pos")[held] >= 1])
    D = load_dictionary(out)
    final_fvu = 1 - D.score(x)
    norms = np.linalg.norm(x, axis=1)
    typical = norms <= OUTLIER_NORM * np.median(norms)
    outliers, final_typical = int((~typical).sum()), 1 - D.score(x[typical])
    dead = metrics["history"][-1]["dead"] if metrics.get("history") else float("nan")
    streams = split * d * 4 > 2 * 2**30
    fig = Path(args.results).with_name("converge.png") if args.results else None
    if fig:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig_, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([v["step"] / per_epoch for v in val], [v["val_fvu"] for v in val], "o-", label="typical rows")
        ax.plot([v["step"] / per_epoch for v in val], [v.get("val_fvu_all", np.nan) for v in val], "s--",
                label="every row")
        ax.legend()
        ax.set_xlabel("epoch over the training rows")
        ax.set_ylabel("held-out FVU")
        ax.set_title(f"TopK 16× on layer {args.layer}, streamed from {rows:,} rows")
        fig_.tight_layout()
        fig_.savefig(fig, dpi=110)
    m = machine()
    L = [BEGIN, f"## Converging fit from a {rows / 1e6:.2f}M-row store", "",
         f"`{' '.join(['python', '-m', 'superpos', *cmd[3:]])}` on {m['cpu']} ({m['cores']} cores, "
         f"{m['memory_gib']} GiB, torch {m['torch']}; {m['date']}): a store of {rows:,} rows "
         f"({store_gib:.1f} GiB on disk, layers {', '.join(map(str, layers))}), the first "
         f"{split:,} rows' contexts for training (whole contexts of them held out to decide when to stop), "
         f"{'streamed: too large to read in (over 2 GiB as float32)' if streams else 'read into memory'}.", "",
         f"- wall time {wall / 60:.1f} min; peak resident memory of the fitting process **{peak_gib:.2f} GiB**",
         f"- {len(val)} held-out measurements ({per_epoch:,} steps of {batch:,} rows make an epoch); "
         f"{'the held-out objective stopped improving' if metrics.get('converged') else 'max_epochs reached'} at "
         f"epoch {val[-1]['step'] / per_epoch:.1f}, then the final decay; {config['n_iter_']:,} steps in all "
         f"({config['n_iter_'] * batch / (per_epoch * batch):.1f} epochs)",
         f"- held-out FVU of the final dictionary on {len(x):,} rows of the contexts after the split: "
         f"**{final_fvu:.4f}** (typical rows, the {outliers} above 5× the median norm left out: "
         f"**{final_typical:.4f}**); dead latents {100 * dead:.1f} % at the end", "",
         "The stopping rule watches the held-out FVU on typical rows (the few above 5× the median norm left out: "
         "docs/dictionaries.md, \"The SAE trainer\"); the FVU over every held-out row is beside it.", "",
         "| epoch | step | held-out FVU, typical rows | held-out FVU, every row |", "|---|---|---|---|"]
    L += [f"| {v['step'] / per_epoch:.1f} | {v['step']:,} | {v['val_fvu']:.4f} | "
          f"{v['val_fvu_all']:.4f} |" if 'val_fvu_all' in v else
          f"| {v['step'] / per_epoch:.1f} | {v['step']:,} | {v['val_fvu']:.4f} | |" for v in val]
    L += ["", f"![held-out FVU by epoch]({fig.name})" if fig else "", END]
    text = "\n".join(L)
    print(text)
    if args.results:
        page = Path(args.results).read_text()
        if BEGIN in page:
            page = page[:page.index(BEGIN)] + text + page[page.index(END) + len(END):]
        else:
            page = page.rstrip("\n") + "\n\n" + text + "\n"
        Path(args.results).write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
