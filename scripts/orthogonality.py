"""Hypothesis 1, exp(N_emb) near-orthogonality: the same as `python -m superpos run orthogonality`.

    python scripts/orthogonality.py [--out docs/results/orthogonality] [--layer 15] ...
"""
import sys

from superpos.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["run", "orthogonality", *sys.argv[1:]]))
