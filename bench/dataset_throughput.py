"""Dataset generation throughput per candidate at several batch sizes, through `generate-dataset`'s own loop.

    python -m bench.dataset_throughput --threads 1 --batch-sizes 1,8 --candidates 8 --rounds 3

Each round makes `--candidates` videos (the whole chain: image model, privacy gate, video model, decoder,
AVI file and shard row) into a fresh folder once per batch size, the batch sizes in a rotated order each
round so that a disturbed stretch of a shared machine does not fall on one of them. The models load once,
before the first round, and one untimed warm-up run at each batch size precedes the rounds. Reports, per
batch size, the median seconds per candidate over rounds with the min-max, and the speed-up over the first
batch size given (median of the per-round ratios, with their min-max).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from echoflow_models import dataset_maker
from echoflow_models.cli import build_parser
from echoflow_models.options import apply_threads, run_command


def one_run(pipe, argv: list[str], out: Path, batch: int) -> float:
    args = build_parser().parse_args(["generate-dataset", *argv, "--out", str(out), "--quiet"])
    settings = dataset_maker.run_settings(args, pipe)
    start = time.perf_counter()
    code = dataset_maker.generate_slots(args, pipe, settings, out, 0, 1, batch, lambda message: None)
    elapsed = time.perf_counter() - start
    if code:
        raise RuntimeError(f"generate-dataset stopped with status {code} (the gate rejected too many candidates)")
    return elapsed


def cmd_throughput(args: argparse.Namespace) -> int:
    from echoflow_models.pipeline import EchoFlowPipeline

    apply_threads(args)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    pipe = EchoFlowPipeline.from_folder(args.weights, views=["A4C"])
    argv = ["--count", str(args.candidates), "--image-steps", str(args.image_steps), "--video-steps",
            str(args.video_steps), "--threads", str(args.threads or 1)]
    per_candidate: dict[int, list[float]] = {b: [] for b in sizes}
    with tempfile.TemporaryDirectory() as scratch:
        folder = iter(Path(scratch) / f"run{i}" for i in range(10**6))
        for b in sizes:  # warm-up: first-call allocations, oneDNN kernels for this batch shape
            one_run(pipe, ["--count", str(b), *argv[2:]], next(folder), b)
        for r in range(args.rounds):
            order = sizes[r % len(sizes):] + sizes[: r % len(sizes)]
            for b in order:
                seconds = one_run(pipe, argv, next(folder), b)
                per_candidate[b].append(seconds / args.candidates)
                print(f"round {r} batch {b}: {seconds / args.candidates:.2f} s per candidate", file=sys.stderr)
    base = per_candidate[sizes[0]]
    print(f"{args.candidates} candidates per run, {args.image_steps} + {args.video_steps} steps, {args.rounds} rounds")
    for b in sizes:
        values = per_candidate[b]
        ratios = [x / y for x, y in zip(base, values, strict=True)]
        print(f"batch {b}: {statistics.median(values):.2f} s per candidate ({min(values):.2f}-{max(values):.2f}); "
              f"x{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) vs batch {sizes[0]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dataset_throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("throughput")
    p.add_argument("--weights", default=None, help="weights root (default: the bundled demo weights)")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated; the first is the baseline")
    p.add_argument("--candidates", type=int, default=8, help="videos per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--image-steps", type=int, default=50)
    p.add_argument("--video-steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_throughput)
    return run_command(parser, ["throughput", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
