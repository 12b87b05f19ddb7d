"""`echoflow train ef`: the EF regressor (`echoflow_models.efnet.EFRegressor`) on pixel videos.

Each training example is a `--clip-frames` window (default 64 frames at 32 fps, the LVFM's output) of a
video of the training split, resampled inside the model to `frames` x `size` x `size`. Augmentations that
keep EF: time reversal, horizontal flip, gain. Loss: smooth L1 on EF / ef_scale. The final summary holds
MAE / RMSE / R2 / Pearson r on `--eval-split` (of `--eval-data`, default the training folder).
"""

from __future__ import annotations

import argparse
import math
import os

import torch
import torch.nn.functional as F

from .. import metrics
from ..efnet import EFRegressor, EFRegressorConfig
from .common import Run, add_common_args, clip_and_step
from .data import TARGET_FPS, load_frames, select_records


def add_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser, steps=1500, batch_size=8, lr=1e-3, warmup=50, ema=0.99)
    g = parser.add_argument_group("EF regressor")
    g.add_argument("--splits", default="TRAIN")
    g.add_argument("--max-videos", type=int, default=None)
    g.add_argument("--clip-frames", type=int, default=64, help="clip length at --fps fed to the model")
    g.add_argument("--fps", type=float, default=TARGET_FPS)
    g.add_argument("--frames", type=int, default=32, help="model's temporal size (clips are resampled)")
    g.add_argument("--size", type=int, default=56, help="model's spatial size")
    g.add_argument("--channels", default="16,24,48,96")
    g.add_argument("--eval-data", default=None, help="dataset for the final metrics (default: --data)")
    g.add_argument("--eval-split", default="VAL")


def video_clips(frames: torch.Tensor, fps: float, clip_frames: int, target_fps: float,
                starts: int = 1) -> list[torch.Tensor]:
    """uint8 [T, H, W] -> `starts` clips of `clip_frames` frames at `target_fps` (evenly spread starts;
    a short video is padded by repeating its last frame)."""
    n = frames.shape[0]
    step = (fps or target_fps) / target_fps
    span = (clip_frames - 1) * step
    room = max(n - 1 - span, 0.0)
    out = []
    for k in range(starts):
        start = room * (k + 0.5) / starts if starts > 1 else room / 2
        pos = (start + torch.arange(clip_frames) * step).round().long().clamp_max(n - 1)
        out.append(frames[pos])
    return out


def prepared_clips(model: EFRegressor, clips: list[torch.Tensor], chunk: int = 16) -> torch.Tensor:
    """uint8 clips [T, H, W] -> the model's prepared input [N, 1, frames, size, size] (float16 to save RAM)."""
    out = []
    for i in range(0, len(clips), chunk):
        x = torch.stack(clips[i: i + chunk]).float() / 128.0 - 1.0  # [b, T, H, W]
        with torch.no_grad():
            out.append(model.prepare(x[:, None]).half())
    return torch.cat(out)


def load_clip_set(model: EFRegressor, root, splits, clip_frames: int, fps: float, max_videos=None,
                  starts: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips of the videos long enough for a whole clip (all videos when none is)."""
    records = select_records(root, splits, max_videos)
    long = [r for r in records if (r.number_of_frames - 1) * fps / (r.fps or fps) + 1 >= clip_frames - 1e-6]
    records = long or records
    clips, efs = [], []
    for rec in records:
        for clip in video_clips(load_frames(root, rec), rec.fps, clip_frames, fps, starts):
            clips.append(clip)
            efs.append(rec.ef)
    return prepared_clips(model, clips), torch.tensor(efs, dtype=torch.float32)


def regression_metrics(pred: torch.Tensor, true: torch.Tensor) -> dict:
    """MAE / RMSE / R2 / Pearson r (echoflow_models.metrics) plus the count; NaN where undefined."""
    if len(pred) < 2:
        err = (pred.double() - true.double()).abs()
        return {"mae": float(err.mean()), "rmse": float(err.pow(2).mean().sqrt()), "r2": float("nan"),
                "pearson_r": float("nan"), "n": int(len(pred))}
    return {**metrics.regression_metrics(true, pred), "n": int(len(pred))}


@torch.no_grad()
def predict_prepared(model: EFRegressor, x: torch.Tensor, device, chunk: int = 32) -> torch.Tensor:
    model.eval()
    return torch.cat([model.forward_prepared(part.float().to(device)).cpu() for part in x.split(chunk)])


@torch.no_grad()
def evaluate_ef(model: EFRegressor, root: str | os.PathLike, split: str = "TEST", clip_frames: int = 64,
                fps: float = TARGET_FPS, device: str | torch.device = "cpu", max_videos: int | None = None) -> dict:
    """MAE / RMSE / R2 / Pearson r of `model` on the videos of one split of an EchoNet-layout folder."""
    x, ef = load_clip_set(model, root, split, clip_frames, fps, max_videos)
    return regression_metrics(predict_prepared(model, x, torch.device(device)), ef)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """EF-preserving: time reversal, horizontal flip, gain (on [-1, 1] grayscale [B, 1, T, H, W])."""
    b = x.shape[0]
    rev = torch.rand(b, generator=gen) < 0.5
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(rev[:, None, None, None, None], x.flip(2), x)
    x = torch.where(flip[:, None, None, None, None], x.flip(4), x)
    gain = 0.8 + 0.4 * torch.rand(b, generator=gen)
    return ((x + 1.0) * gain[:, None, None, None, None] - 1.0).clamp(-1.0, 1.0)


def run(args: argparse.Namespace) -> dict:
    run_ = Run(args, "ef")
    cfg = EFRegressorConfig(frames=args.frames, size=args.size, channels=[int(c) for c in args.channels.split(",")])
    model = EFRegressor(cfg)
    records = select_records(args.data, args.splits, args.max_videos)
    if not args.quiet:
        print(f"ef: reading {len(records)} videos from {args.data}")
    x, ef = load_clip_set(model, args.data, args.splits, args.clip_frames, args.fps, args.max_videos, starts=2)
    cfg.ef_mean = float(ef.mean())
    cfg.ef_scale = float(max(ef.std(unbiased=False), 1.0)) if len(ef) > 1 else 20.0
    opt = run_.optimizer(model.parameters())
    run_.track({"model": model}, {"opt": opt})
    device = run_.device
    for _ in run_.steps():
        idx = torch.randint(len(x), (args.batch_size,), generator=run_.gen)
        xb = augment(x[idx].float(), run_.gen).to(device)
        target = ef[idx].to(device)
        with run_.autocast():
            pred = model.forward_prepared(xb)
        loss = F.smooth_l1_loss((pred.float() - target) / cfg.ef_scale, torch.zeros_like(target), beta=0.1)
        gnorm = clip_and_step(loss, opt, model.parameters(), args.grad_clip)
        run_.log(loss=loss, mae=(pred.detach().float() - target).abs().mean(), gnorm=gnorm)

    summary = {}
    if args.eval_split:
        try:
            metrics = evaluate_ef(run_.export_model(), args.eval_data or args.data, args.eval_split,
                                  args.clip_frames, args.fps, device)
            summary = {f"{args.eval_split.lower()}_{k}": v for k, v in metrics.items()}
        except ValueError:
            pass
    return run_.finish(**{k: (float(v) if isinstance(v, float) and not math.isnan(v) else v) for k, v in summary.items()})
