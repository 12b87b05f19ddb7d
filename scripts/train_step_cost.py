"""Seconds per training step (forward + backward + AdamW) of release-sized networks on this CPU, for the
arithmetic of docs/scale.md: DiT-S/2 (LIFM), STDiT-S/2 (LVFM) and avae-4f4 encoding (the latent cache).
Rounds alternate between the models; prints the median and range per model.

    OMP_NUM_THREADS=1 python scripts/train_step_cost.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from echoflow_models import lifm, lvfm, vae
from echoflow_models.train.common import make_adamw


def lifm_step(batch: int):
    model = lifm.SegDiTTransformer2DModel(lifm.SegDiTConfig(**{**lifm.RELEASE_LAYOUT, **lifm.SIZE_PRESETS["DiT-S/2"]}))
    opt = make_adamw(model.parameters(), 1e-4, 0.01)
    z, t = torch.randn(batch, 4, 28, 28), torch.rand(batch)
    view, mask = torch.zeros(batch, dtype=torch.long), torch.zeros(batch, 1, 28, 28)

    def step():
        model(z, t, view=view, mask=mask).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def lvfm_step(frames: int):
    cfg = lvfm.STDiTConfig(**{**lvfm.RELEASE_LAYOUT, **lvfm.SIZE_PRESETS["STDiT-S/2"], "input_size": [frames, 28, 28]})
    model = lvfm.DiffuserSTDiT(cfg)
    opt = make_adamw(model.parameters(), 1e-4, 0.01)
    z, cond, t, ef = torch.randn(1, 4, frames, 28, 28), torch.randn(1, 4, 28, 28), torch.rand(1), torch.rand(1)

    def step():
        model(z, t, ef, cond).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def encode_step(frames: int):
    cfg = vae.AutoencoderKLConfig(down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                                  norm_num_groups=32, sample_size=112, **vae.SIZE_PRESETS["avae-4f4"])
    model = vae.AutoencoderKL(cfg).eval()
    x = torch.rand(frames, 3, 112, 112) * 2 - 1

    @torch.no_grad()
    def step():
        return model.encode(x).mean
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lvfm-frames", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cases = {"lifm DiT-S/2 batch 4": lifm_step(4), f"lvfm STDiT-S/2 batch 1 x {args.lvfm_frames} frames": lvfm_step(args.lvfm_frames),
             "avae-4f4 encode 16 frames": encode_step(16)}
    for step in cases.values():  # warm-up
        step()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, step in cases.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        print(f"{name}: median {statistics.median(ts):.3f} s (range {min(ts):.3f}-{max(ts):.3f}, {len(ts)} rounds)")


if __name__ == "__main__":
    main()
