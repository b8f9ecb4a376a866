"""The command line (``python -m superpos``): argparse built from the library's declarations; nothing in the
library imports it."""
from superpos.cli.main import main

__all__ = ["main"]
