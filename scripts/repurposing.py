"""Hypothesis 2, unlikely-token repurposing: the same as `python -m superpos run repurposing`.

Regenerates docs/results/repurposing (the main run) when called without arguments:

    python scripts/repurposing.py      # -> docs/results/repurposing (6 power draws per size, 32 held-out contexts
                                           #    for the planted controls, the ablation and the write decomposition)
    python scripts/repurposing.py --control positive --lens docs/results/repurposing/tuned_lens --out ...
"""
import sys

from superpos.cli.main import main

if __name__ == "__main__":
    args = sys.argv[1:] or ["--out", "docs/results/repurposing", "--power-draws", "6", "--mechanism-contexts", "32",
                            "--ablation-contexts", "32", "--write-contexts", "32"]
    sys.exit(main(["run", "repurposing", *args]))
