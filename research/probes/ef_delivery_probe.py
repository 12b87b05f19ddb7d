"""How well the video model delivers the EF it is asked for over the synthetic training range (10-85 %).

    python -m research.probes.ef_delivery_probe --guidance 3,4,5                 # LIFM images, as `evaluate` makes them
    python -m research.probes.ef_delivery_probe --guidance 3 --images phantom    # real end-diastolic phantom frames

`evaluate`'s EF fidelity asks for 20-80 %; the synthetic training set of its synthetic-vs-real experiment asks
for U(10, 85), where the compression at both ends shows. Each of `--videos` conditioning images is animated
once, at EFs evenly spread over `--ef-range`, with video noise seed `--seed + i`, decoded and read by the
weights' EF regressor. Printed per guidance: MAE from the request, Pearson r, the least-squares slope of
measured vs requested EF (1 ideal), the mean bias, and the residual scatter about that line (what no
calibration of the request can remove).

`--images lifm` samples the conditioning images with the LIFM (seed `--seed + i`, no privacy gate: the gate
does not change an image, only whether it is kept); `--images phantom` encodes the end-diastolic frame of new
phantom patients (rendered at 75 bpm from phase 0, like the LVFM's clips; patient seeds `--seed + i`: the
demo training set's patient seeds, hashed from its dataset seed and index, are all above 8 million), so the
difference between the two is what the generated images add to the scatter.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from echoflow_models.checkpoint import load_model
from echoflow_models.metrics import regression_metrics
from echoflow_models.phantom import PatientAnatomy, render_video
from echoflow_models.pipeline import EchoFlowPipeline
from echoflow_models.weights import default_weights_root
from research.evaluate import _gray, ef_regressor_folder, predict_ef

# Disjoint from the seeds `evaluate`, `tune-guidance` (50_000 + i) and latent_jitter_vs_ef.py (90_000 +) use.
DEFAULT_SEED = 70_000


def phantom_end_diastolic_frames(view: str, count: int, seed: int) -> np.ndarray:
    """uint8 [count, 112, 112]: frame 0 (end-diastole) of new phantom patients at 75 bpm, phase 0."""
    frames = []
    for i in range(count):
        anatomy = PatientAnatomy.sample(seed + i, view)
        frames.append(render_video(anatomy, ef=50.0, num_frames=16, heart_rate=75.0, phase=0.0, seed=seed + i).frames[0])
    return np.stack(frames)


def delivery_stats(requested: np.ndarray, measured: np.ndarray) -> dict:
    """`regression_metrics`' MAE and Pearson r (as `evaluate` reports them), plus the slope and bias of
    measured vs requested EF and the residual scatter about that least-squares line."""
    metrics = regression_metrics(torch.from_numpy(requested), torch.from_numpy(measured))
    slope, intercept = np.polyfit(requested, measured, 1)
    residual = measured - (slope * requested + intercept)
    return {"mae": metrics["mae"], "pearson_r": metrics["pearson_r"], "slope": float(slope),
            "bias": float((measured - requested).mean()), "residual_sd": float(residual.std()),
            "measured": measured.round(2).tolist()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="weights root (default: $ECHOFLOW_WEIGHTS or the bundled demo)")
    parser.add_argument("--view", default="A4C")
    parser.add_argument("--images", choices=["lifm", "phantom"], default="lifm")
    parser.add_argument("--guidance", default="3", help="comma-separated EF guidance values")
    parser.add_argument("--videos", type=int, default=24, help="videos per guidance (>= 3)")
    parser.add_argument("--ef-range", default="10,85", help="LO,HI requested EF in percent")
    parser.add_argument("--steps", type=int, default=50, help="Euler steps of the image and the video")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.videos < 3:
        raise SystemExit(f"error: --videos must be >= 3 for a correlation and a slope, got {args.videos}")
    try:
        lo, hi = (float(x) for x in args.ef_range.split(","))
        guidances = [float(g) for g in args.guidance.split(",")]
    except ValueError:
        raise SystemExit(f"error: --ef-range wants LO,HI and --guidance numbers, got {args.ef_range!r}, "
                         f"{args.guidance!r}") from None
    if not 0 <= lo < hi <= 100:
        raise SystemExit(f"error: --ef-range must satisfy 0 <= LO < HI <= 100, got {args.ef_range}")
    if args.threads:
        torch.set_num_threads(args.threads)

    root = Path(args.weights) if args.weights else default_weights_root()
    pipe = EchoFlowPipeline.from_folder(root, views=[args.view], device="cpu")
    regressor = load_model(ef_regressor_folder(root), "cpu", torch.float32).eval()
    requested = np.linspace(lo, hi, args.videos)
    if args.images == "lifm":
        images = torch.cat([pipe.sample_images(args.view, None, args.steps, "euler", args.seed + i, 1)
                            for i in range(args.videos)])
    else:
        images = pipe.encode(phantom_end_diastolic_frames(args.view, args.videos, args.seed))

    report = {"weights": str(root), "images": args.images, "view": args.view, "seed": args.seed,
              "requested": requested.round(2).tolist(), "guidance": {}}
    for g in guidances:
        videos = []
        for i, ef in enumerate(requested):
            latents = pipe.animate(images[i:i + 1], float(ef), args.steps, "euler", g, seed=args.seed + i)
            videos.append(_gray(pipe.decode(latents)[0]))
        stats = delivery_stats(requested, predict_ef(regressor, videos))
        report["guidance"][f"{g:g}"] = stats
        print(f"guidance {g:g} ({args.images} images, EF {lo:g}-{hi:g}, {args.videos} videos): "
              f"MAE {stats['mae']:.2f}, r {stats['pearson_r']:.3f}, slope {stats['slope']:.2f}, "
              f"bias {stats['bias']:+.2f}, residual sd {stats['residual_sd']:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
