"""Regenerate docs/results/{probes,lookahead,donation,reinject} on the default model (the four seed questions).

    python scripts/probes_and_interventions.py [probes lookahead donation reinject]
"""
import sys

from superpos.cli.main import main

ALL = ["probes", "lookahead", "donation", "reinject"]

if __name__ == "__main__":
    for name in sys.argv[1:] or ALL:
        if name not in ALL:
            sys.exit(f"unknown experiment '{name}' (choose from {', '.join(ALL)})")
        rc = main(["run", name, "--out", f"docs/results/{name}"])
        if rc:
            sys.exit(rc)
