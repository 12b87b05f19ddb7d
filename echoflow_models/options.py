"""Command-line option helpers shared by every sub-command: checks that run before any model loads, threads.

A user error is a `UsageError`: `echoflow` prints it as one line naming the option and the fix, and exits
with status 2, before anything is computed or written.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

import torch


class UsageError(ValueError):
    """A command-line option that cannot work; the message names it and says what to do instead."""


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse `argv` and run the chosen sub-command's `func(args)`, the same way for every entry point
    (`echoflow`, `python -m headless|bench|research`): a user error or unusable weights/files is one line on
    stderr and status 2 (`UsageError` before any compute), Ctrl-C is status 130, never a traceback."""
    import sys

    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UsageError, OSError, ValueError, KeyError, RuntimeError) as exc:
        # RuntimeError: CheckpointError, PrivacyGateError's kin, ... carry their own explanation
        print(f"error: {exc}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------------------- numbers
def require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def check_count(value: int, option: str, low: int = 1, high: int | None = None) -> int:
    ok = low <= value and (high is None or value <= high)
    require(ok, f"{option} must be >= {low}" + (f" and <= {high}" if high is not None else "") + f", got {value}")
    return value


def check_positive(value: float, option: str, high: float | None = None) -> float:
    ok = math.isfinite(value) and value > 0 and (high is None or value <= high)
    require(ok, f"{option} must be a positive number" + (f" up to {high:g}" if high else "") + f", got {value:g}")
    return value


def check_sampling_options(args: argparse.Namespace) -> None:
    """--image-steps, --video-steps, --guidance and --fps, as `generate` and `generate-dataset` share them."""
    from .checkpoint import MAX_GUIDANCE
    from .sampling import MAX_STEPS

    check_count(args.image_steps, "--image-steps", 1, MAX_STEPS)
    check_count(args.video_steps, "--video-steps", 1, MAX_STEPS)
    if args.guidance is not None:
        require(math.isfinite(args.guidance) and 0 <= args.guidance <= MAX_GUIDANCE,
                f"--guidance must be in [0, {MAX_GUIDANCE:g}] (1 = off), got {args.guidance:g}")
    if args.fps is not None:
        check_positive(args.fps, "--fps", 240)


# ------------------------------------------------------------------------------------------- outputs
def check_output_file(path: str | os.PathLike, option: str, suffixes: tuple[str, ...], overwrite: bool) -> Path:
    """An output file that can be written: supported suffix, not a folder, not there yet (or `overwrite`),
    its folder creatable and writable. Checked by writing and removing a probe file of our own."""
    out = Path(path).expanduser()
    require(out.suffix.lower() in suffixes,
            f"{option} {str(path)!r}: the file name must end in {' or '.join(suffixes)} (that decides the format)")
    require(not out.is_dir(), f"{option} {str(path)!r} is a folder; give a file name such as {out / ('video' + suffixes[0])}")
    require(overwrite or not os.path.lexists(out), f"{option} {str(path)!r} exists; pass --overwrite to replace it or "
            "choose another name")
    require(not (out.is_symlink() and not out.exists()), f"{option} {str(path)!r} is a broken symbolic link; remove it "
            "or choose another name")
    check_writable_target(out.parent, option)
    return out


def check_writable_target(folder: str | os.PathLike, option: str) -> Path:
    """Prove that `folder` can be written, or created, without creating anything: the nearest existing
    folder on its path must accept a file (a probe of our own, removed at once)."""
    folder = Path(folder).expanduser()
    existing = folder
    while not existing.exists():
        if existing.is_symlink() or existing.parent == existing:
            raise UsageError(f"{option}: {folder} cannot be created ({existing} is a broken link or missing root)")
        existing = existing.parent
    require(existing.is_dir(), f"{option}: cannot write into {folder} ({existing} is a file, not a folder); choose "
            "another location")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".echoflow-write-check-"):
            pass
    except OSError as exc:
        raise UsageError(f"{option}: cannot write into {folder} ({exc.strerror or exc}); choose a writable "
                         "location") from None
    return folder


# ------------------------------------------------------------------------------------- device, tau
def pick_device(name: str) -> torch.device:
    """`conventions.pick_device`, its refusal as a usage error (exit status 2, before any compute)."""
    try:
        from .conventions import pick_device as choose

        return choose(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def check_tau_option(args: argparse.Namespace, views: list[str]) -> None:
    """--tau / --allow-looser-tau against the weights' calibrated tau, by the one rule (`privacy.decide_tau`),
    before anything loads. The pipeline applies the same rule again when it builds the gates."""
    from .privacy import GateConfigError, calibrated_tau, decide_tau
    from .weights import default_weights_root

    root = Path(args.weights).expanduser() if args.weights else default_weights_root()
    for view in views:
        calibrated, source = calibrated_tau(root if root.is_dir() else None, view)
        try:
            decide_tau(args.tau, calibrated, allow_looser=args.allow_looser_tau, calibrated_source=source,
                       option="--tau", opt_in="--allow-looser-tau")
        except GateConfigError as exc:
            if args.tau is None:
                raise  # the weights' own gates.json is broken: reported as a weights error
            raise UsageError(str(exc)) from None


# ------------------------------------------------------------------------------------------- threads
def physical_cores() -> int:
    """Physical CPU cores this process may run on: hyper-threads are not counted, and a CPU affinity
    (taskset, Slurm, a container's cpuset) limits the count. Falls back to the allowed logical CPUs."""
    try:
        allowed = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    try:
        processor = physical = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "processor":
                processor = int(value)
            elif key == "physical id":
                physical = value.strip()
            elif key == "core id":
                core = value.strip()
            elif not line.strip():
                if processor in allowed and core is not None:
                    cores.add((physical, core))
                processor = physical = core = None
    except (OSError, ValueError):
        cores = set()
    return max(1, min(len(cores), len(allowed))) if cores else max(1, len(allowed))


def add_threads_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N",
        help=f"CPU threads for torch (default: the physical cores, {physical_cores()} here). On a machine "
             "shared with other work use 1: OpenMP threads spin-wait, and under contention 2 threads ran "
             "3-9x slower than 1",
    )


def apply_threads(args: argparse.Namespace) -> int:
    """Set torch's CPU threads from `--threads` (validated); returns the number used. Only the CLI calls
    this: the library never changes torch's global settings on its own."""
    threads = getattr(args, "threads", None)
    if threads is None:
        threads = physical_cores()
    check_count(threads, "--threads", 1, 1024)
    torch.set_num_threads(threads)
    return threads
