"""Comma's entry point: no argument opens the window; subcommands work without one (see --help)."""

import sys

from app.cli import run

if __name__ == "__main__":
    sys.exit(run())
