"""`python -m bench ...` from the repository root: time every stage against the peer code."""

from __future__ import annotations

import argparse
import sys

from echoflow_models.options import run_command

from .suite import add_subcommands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    add_subcommands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return run_command(parser, ["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
