"""The README's first screen: its two commands are what CI runs and what the CLI accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def two_commands() -> list[str]:
    """The command lines (comments dropped) of the first bash block under '## The two commands'."""
    section = README.split("## The two commands", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_readme_opens_with_the_two_commands():
    assert README.index("## The two commands") < 1500  # the first screen
    run, test = two_commands()
    assert run.startswith("pip install torch==2.13.0 && pip install -e . && echoflow generate ")
    assert test == 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest -q'


def test_ci_runs_the_readme_test_command_verbatim():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if not line.startswith("#")]
    assert two_commands()[1] in ci
    # CI installs exactly the torch the README installs
    pins = {m for line in ci for m in re.findall(r"torch==[\w.+]+", line)}
    assert pins == {"torch==2.13.0"}


def test_the_generate_command_parses_and_is_privacy_checked():
    from echoflow_models.cli import build_parser

    run = two_commands()[0]
    argv = shlex.split(run.split("&& echoflow ", 1)[1])
    args = build_parser().parse_args(argv)
    assert argv[0] == "generate" and args.view == "A4C" and args.ef == 55 and args.seed == 0
    assert args.out == "out.mp4"
    assert "--tau" not in argv  # the release's gate threshold, not a loosened one


def test_no_text_sends_a_user_to_a_command_that_no_longer_exists():
    """`run`, `evaluate`, `bench`, `tune-guidance` and `relabel-dataset` left the `echoflow` command (they
    live in headless/, bench/ and research/); nothing a user reads may still offer them there."""
    import re

    gone = re.compile(r"(?<![\w/-])echoflow (run|evaluate|bench|tune-guidance|relabel-dataset)\b")
    places = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("workflows/*.json"),
              *ROOT.rglob("echoflow_models/**/*.py"), *ROOT.glob("nodes/**/*.py"), *ROOT.glob("headless/*.py")]
    offenders = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in places for m in gone.finditer(p.read_text())]
    assert not offenders, offenders
