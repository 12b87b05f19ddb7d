"""How much the frame-to-frame jitter of latent videos follows the EF: real clips vs generated ones.

    python -m research evaluate --work WORK ...     # keeps WORK/real (phantom videos with EF labels)
    python -m research.probes.latent_jitter_vs_ef WORK --guidance 1,3 --videos 16

Jitter is `metrics.temporal_flicker` on the scaled latents (the mean absolute difference between a frame and
the 5-frame moving average around it), so it reads what the video model produces before the decoder. The
real side encodes the TRAIN videos of WORK/real with the weights' A-VAE (each video's first 64 frames);
the generated side animates `--videos` LIFM images at EFs evenly spread over 20-80 % for each guidance.
Prints the mean jitter, its Pearson r with the EF and the least-squares slope per 10 EF points relative
to the mean (in real phantom videos the jitter is set by the speckle, not by the EF).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from echoflow_models.echonet import load_echonet_videos
from echoflow_models.metrics import temporal_flicker
from echoflow_models.pipeline import EchoFlowPipeline
from echoflow_models.weights import default_weights_root
from research.evaluate import flicker_coupling

# Seeds disjoint from those `evaluate` and `tune-guidance` use.
IMAGE_SEED = 90_000
NOISE_SEED = 95_000


def as_frames(latents: torch.Tensor) -> torch.Tensor:
    """[T, C, h, w] latents -> [T, C * h, w]: every channel counts (`temporal_flicker` reads [T, H, W])."""
    t, c, h, w = latents.shape
    return latents.reshape(t, c * h, w)


def summary(jitter: np.ndarray, ef: np.ndarray) -> str:
    c = flicker_coupling(jitter, ef)
    relative_slope = c["slope_per_10_ef"] / c["flicker_mean"]
    return (f"mean {c['flicker_mean']:.4f}, r with EF {c['pearson_r_ef']:+.2f}, "
            f"slope {100 * relative_slope:+.1f} % per 10 EF points")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path, help="an `evaluate --work` folder (reads WORK/real)")
    parser.add_argument("--weights", default=None, help="weights folder (default: the bundled demo)")
    parser.add_argument("--guidance", default="1,3", help="comma-separated EF guidance values")
    parser.add_argument("--videos", type=int, default=16, help="generated videos per guidance (>= 3)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.videos < 3:
        raise SystemExit(f"error: --videos must be >= 3 for a correlation, got {args.videos}")
    real = args.work / "real"
    if not (real / "FileList.csv").is_file():
        raise SystemExit(f"error: {real}/FileList.csv not found; run `python -m research evaluate --work {args.work}` first")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = EchoFlowPipeline.from_folder(args.weights or default_weights_root(), views=["A4C"], device="cpu")
    frames = pipe.lvfm.num_frames

    jitter, ef = [], []
    for rec, video in load_echonet_videos(real, split="TRAIN"):
        latents = pipe.encode(video[:frames])  # [T, C, h, w]
        jitter.append(temporal_flicker(as_frames(latents)))
        ef.append(rec.ef)
    print(f"real latents ({len(ef)} videos): {summary(np.array(jitter), np.array(ef))}")

    requested = np.linspace(20.0, 80.0, args.videos)
    images = pipe.sample_images("A4C", steps=50, seed=IMAGE_SEED, batch_size=args.videos)
    for guidance in (float(g) for g in args.guidance.split(",")):
        jitter = []
        for i, value in enumerate(requested):
            video = pipe.animate(images[i : i + 1], float(value), 50, "euler", guidance, seed=NOISE_SEED + i)[0]
            jitter.append(temporal_flicker(as_frames(video.transpose(0, 1))))
        print(f"generated latents, guidance {guidance:g} ({args.videos} videos): "
              f"{summary(np.array(jitter), requested)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
