"""`echoflow train ef`: the EF regressor (`echoflow_models.efnet.EFRegressor`) on pixel videos.

Each training example is a `--clip-frames` window (default 64 frames at 32 fps, the LVFM's output) of a
video of the training split, resampled inside the model to `frames` x `size` x `size`. Augmentations that
keep EF: time reversal, horizontal flip, gain; opt-in: a random shorter window at a random start
(`--time-scale`: another heart rate and starting phase) and a random rotation / scale / shift
(`--rotate`, `--zoom`, `--shift`). Loss: smooth L1 on EF / ef_scale. The final summary holds
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
from .common import Run, add_common_args
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
    g.add_argument("--time-scale", default="1,1", metavar="LO,HI",
                   help="EF-preserving tempo and phase augmentation: each training clip spans U(LO, HI) x "
                        "--clip-frames frames of its video (as far as the video reaches) from a random start, "
                        "resampled to --frames, so the heart beats up to 1/LO slower or HI faster than "
                        "filmed and starts at any phase (1,1 = off)")
    g.add_argument("--rotate", type=float, default=0.0, help="random rotation of each clip, +- degrees")
    g.add_argument("--zoom", type=float, default=0.0, help="random scale of each clip, +- fraction")
    g.add_argument("--shift", type=float, default=0.0, help="random translation of each clip, +- fraction of its width")
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


def prepared_clips(model: EFRegressor, clips: list[torch.Tensor], chunk: int = 16,
                   keep_time: bool = False) -> torch.Tensor:
    """uint8 clips [T, H, W] -> the model's prepared input [N, 1, frames, size, size] (float16 to save RAM).

    `keep_time` resizes only spatially ([N, 1, T, size, size]), for `random_time_windows` to crop later."""
    out = []
    for i in range(0, len(clips), chunk):
        x = torch.stack(clips[i: i + chunk]).float()[:, None] / 128.0 - 1.0  # [b, 1, T, H, W]
        with torch.no_grad():
            if keep_time:
                size = model.config.size
                out.append(F.interpolate(x, size=(x.shape[2], size, size), mode="trilinear",
                                         align_corners=False).half())
            else:
                out.append(model.prepare(x).half())
    return torch.cat(out)


def random_time_windows(x: torch.Tensor, frames: int, lengths: tuple[float, float], gen: torch.Generator,
                        valid: torch.Tensor | None = None) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, C, frames, H, W]: per clip a window of L ~ U(lengths) source frames from a random
    start, linearly resampled to `frames`; the window stays inside the clip's first `valid[b]` frames (default
    all T: a clip cut from a short video ends in padding). EF does not depend on the heart rate or on the phase
    a clip starts at, so this teaches the regressor neither matters; with L = T it equals the model's own
    (trilinear, align_corners=False) temporal resampling of the whole clip, which is what it sees at test time."""
    b, t = x.shape[0], x.shape[2]
    avail = torch.full((b,), float(t)) if valid is None else valid.float().clamp(1.0, float(t))  # [B]
    lo, hi = lengths
    length = torch.minimum((lo + (hi - lo) * torch.rand(b, generator=gen)).clamp_min(1.0), avail)  # [B]
    start = (avail - length) * torch.rand(b, generator=gen)  # [B]
    pos = start[:, None] + (torch.arange(frames) + 0.5) * (length[:, None] / frames) - 0.5  # [B, frames]
    pos = torch.minimum(pos.clamp_min(0.0), avail[:, None] - 1.0)
    lo_idx = pos.floor().long()
    hi_idx = torch.minimum(lo_idx + 1, avail.long()[:, None] - 1)
    w = (pos - lo_idx).to(x.dtype)[:, None, :, None, None]  # [B, 1, frames, 1, 1]
    rows = torch.arange(b)[:, None]
    frames_first = x.transpose(1, 2)  # [B, T, C, H, W]
    first, second = frames_first[rows, lo_idx].transpose(1, 2), frames_first[rows, hi_idx].transpose(1, 2)
    return first * (1 - w) + second * w


def parse_time_scale(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"train ef: --time-scale must be LO,HI (two numbers), got {text!r}") from None
    if not 0.0 < lo <= hi:
        raise ValueError(f"train ef: --time-scale needs 0 < LO <= HI, got {text!r}")
    return lo, hi


def frames_at(rec, fps: float) -> int:
    """How many frames at `fps` the video of `rec` spans."""
    return int(math.floor((rec.number_of_frames - 1) * fps / (rec.fps or fps) + 1e-6)) + 1


def load_clip_set(model: EFRegressor, root, splits, clip_frames: int, fps: float, max_videos=None,
                  starts: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips of the videos long enough for a whole clip (all videos when none is)."""
    x, ef, _ = load_long_clip_set(model, root, splits, clip_frames, fps, max_videos, starts)
    return x, ef


def load_long_clip_set(model: EFRegressor, root, splits, clip_frames: int, fps: float, max_videos=None,
                       starts: int = 1, store_frames: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`load_clip_set`, with `store_frames` >= clip_frames: each clip keeps up to that many frames at full
    temporal length (only resized spatially, for `random_time_windows`), padded where its video is
    shorter; also returns each clip's real (unpadded) frame count. The videos chosen are the same."""
    records = select_records(root, splits, max_videos)
    long = [r for r in records if frames_at(r, fps) >= clip_frames]
    records = long or records
    keep_time = store_frames is not None
    length = max(store_frames, clip_frames) if keep_time else clip_frames
    clips, efs, valid = [], [], []
    for rec in records:
        for clip in video_clips(load_frames(root, rec), rec.fps, length, fps, starts):
            clips.append(clip)
            efs.append(rec.ef)
            valid.append(min(length, frames_at(rec, fps)))
    return (prepared_clips(model, clips, keep_time=keep_time), torch.tensor(efs, dtype=torch.float32),
            torch.tensor(valid))


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


def random_affine(x: torch.Tensor, gen: torch.Generator, rotate_deg: float, zoom: float, shift: float) -> torch.Tensor:
    """[B, C, T, H, W]: one random rotation / scale / translation per clip, the same for all its frames.
    The LV's area ratio, and so EF, is unchanged by a similarity transform; the regressor learns not to
    depend on where and how large the heart sits in the sector."""
    b, c, t, h, w = x.shape
    angle = torch.deg2rad(rotate_deg * (2 * torch.rand(b, generator=gen) - 1))
    scale = 1.0 + zoom * (2 * torch.rand(b, generator=gen) - 1)
    offset = 2 * shift * (2 * torch.rand(b, 2, generator=gen) - 1)  # normalised coordinates span 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, offset[:, 0]], 1), torch.stack([sin, cos, offset[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [b, c * t, h, w], align_corners=False)
    frames = x.reshape(b, c * t, h, w)
    out = F.grid_sample(frames + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
    return out.reshape(b, c, t, h, w)


def run(args: argparse.Namespace) -> dict:
    run_ = Run(args, "ef")
    cfg = EFRegressorConfig(frames=args.frames, size=args.size, channels=[int(c) for c in args.channels.split(",")],
                            clip_frames=args.clip_frames)
    model = EFRegressor(cfg)
    records = select_records(args.data, args.splits, args.max_videos)
    if not args.quiet:
        print(f"ef: reading {len(records)} videos from {args.data}")
    scale = parse_time_scale(args.time_scale)
    crop = scale != (1.0, 1.0)
    # with the tempo augmentation the stored clips are long enough for the longest window
    stored = math.ceil(args.clip_frames * max(scale[1], 1.0)) if crop else None
    x, ef, valid = load_long_clip_set(model, args.data, args.splits, args.clip_frames, args.fps, args.max_videos,
                                      starts=2, store_frames=stored)
    cfg.ef_mean = float(ef.mean())
    cfg.ef_scale = float(max(ef.std(unbiased=False), 1.0)) if len(ef) > 1 else 20.0
    opt = run_.optimizer(model.parameters())
    run_.track({"model": model}, {"opt": opt})
    device = run_.device
    for _ in run_.steps():
        for gen in run_.micro_batches():
            idx = torch.randint(len(x), (args.batch_size,), generator=gen)
            xb = x[idx].float()
            if crop:
                xb = random_time_windows(xb, cfg.frames, (scale[0] * args.clip_frames, scale[1] * args.clip_frames),
                                         gen, valid[idx])
            if args.rotate or args.zoom or args.shift:
                xb = random_affine(xb, gen, args.rotate, args.zoom, args.shift)
            xb = augment(xb, gen).to(device)
            target = ef[idx].to(device)
            with run_.autocast():
                pred = model.forward_prepared(xb)
            loss = F.smooth_l1_loss((pred.float() - target) / cfg.ef_scale, torch.zeros_like(target), beta=0.1)
            run_.backward(loss)
        gnorm = run_.step_optimizer(opt, model.parameters())
        run_.log(loss=run_.step_mean(), mae=(pred.detach().float() - target).abs().mean(), gnorm=gnorm)

    summary = {}
    if args.eval_split and run_.is_main:
        try:
            metrics = evaluate_ef(run_.export_model(), args.eval_data or args.data, args.eval_split,
                                  args.clip_frames, args.fps, device)
            summary = {f"{args.eval_split.lower()}_{k}": v for k, v in metrics.items()}
        except ValueError:
            pass
    return run_.finish(**{k: (float(v) if isinstance(v, float) and not math.isnan(v) else v) for k, v in summary.items()})
