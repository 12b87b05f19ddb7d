"""Train the synthetic-vs-real experiment's two arms again with another EF-regressor recipe.

    python -m research evaluate --work WORK ...          # keeps WORK/real and WORK/synthetic
    python -m research.probes.compare_regressor_recipes WORK --seeds 0,1 --set time_scale=0.6,1 --set rotate=10

Each `--set NAME=VALUE` is a `train ef` option (underscores, as in `echoflow train ef --help`); the rest of
the recipe and the sizes are the evaluation's (600 steps). Prints each arm's MAE / r / bias per seed on the
held-out real videos (WORK/real, TEST split) and the ratio of the mean MAEs. The regressors go to
WORK/recipes/.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import numpy as np
import torch

from echoflow_models.checkpoint import load_model
from echoflow_models.metrics import regression_metrics
from echoflow_models.train import ef as train_ef
from echoflow_models.train.common import namespace_for
from research.evaluate import predict_ef, test_set


def parse_option(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"error: --set needs NAME=VALUE, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return name.replace("-", "_"), value if isinstance(parsed, tuple) else parsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path, help="an `evaluate --work` folder (with real/ and synthetic/)")
    parser.add_argument("--seeds", default="0", help="comma-separated regressor seeds")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--arms", default="real,synthetic")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = dict(parse_option(t) for t in args.set)
    videos, target = test_set(args.work / "real")
    maes: dict[str, list[float]] = {}
    for arm in args.arms.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            out = args.work / "recipes" / f"{arm}_s{seed}"
            run = namespace_for(train_ef.add_args, data=str(args.work / arm), out=str(out), steps=args.steps,
                                seed=seed, splits="TRAIN", quiet=True, overwrite=True, device="cpu", **options)
            train_ef.run(run)
            pred = predict_ef(load_model(out), videos)
            m = regression_metrics(torch.from_numpy(target), torch.from_numpy(pred))
            maes.setdefault(arm, []).append(m["mae"])
            print(f"{arm:10s} seed {seed}: MAE {m['mae']:.2f}, r {m['pearson_r']:.3f}, "
                  f"bias {float(np.mean(pred - target)):+.2f}", flush=True)
    for arm, values in maes.items():
        print(f"{arm:10s} mean MAE {np.mean(values):.2f} (sd {np.std(values):.2f}, {len(values)} seeds)")
    if {"real", "synthetic"} <= maes.keys():
        print(f"synthetic / real MAE: {np.mean(maes['synthetic']) / np.mean(maes['real']):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
