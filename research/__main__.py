"""`python -m research ...` from the repository root: evaluate, tune-guidance, relabel-dataset."""

from __future__ import annotations

import argparse
import sys

from echoflow_models.options import run_command

from .evaluate import add_subcommands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research", description=__doc__)
    add_subcommands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return run_command(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
