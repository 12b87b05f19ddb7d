"""`echoflow train seg`: the LV segmentation network (`echoflow_models.lvseg.LVSegNet`) on traced frames.

Training frames are the frames of the training split that carry an LV mask: `Masks/<FileName>.npz` (per-frame
masks, e.g. the phantom's, written by `echoflow train latents --phantom-masks` or `write_phantom_masks`)
or EchoNet-Dynamic's `VolumeTracings.csv` (the traced ED and ES frames). Up to `--frames-per-video` of
them per video are kept, spread over the video.

`--vae FOLDER` also passes every kept frame through that A-VAE (encode -> posterior mean -> decode), and a
training example is the reconstruction with probability `--p-vae`: generated videos are decoded by the same
A-VAE, so the instrument must read its look (softened speckle, its artefacts) as well as real frames.
Augmentations that keep the outline honest: one random rotation / scale / shift applied to frame and mask
together, horizontal flips, gain and gamma, Gaussian blur and noise (a blurred or noisy frame is what the EF
measurement must survive). Loss: binary cross-entropy + soft Dice. The final summary holds the Dice of the
`--eval-split` frames and the EF error by segmentation (`lv_ef.measure_ef`) of its videos against their
FileList EF, on the frames as stored and, with `--vae`, on their reconstructions.
"""

from __future__ import annotations

import argparse
import contextlib
import math

import torch
import torch.nn.functional as F

from .. import metrics
from ..checkpoint import load_model
from ..lv_ef import measure_ef
from ..lvseg import LVSegConfig, LVSegNet
from ..vae import model_range_to_frames
from .common import Run, add_common_args
from .data import MaskSource, encode_frames, load_frames, record_view, select_records


def add_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser, steps=2000, batch_size=16, lr=2e-3, warmup=50, ema=0.99)
    g = parser.add_argument_group("LV segmentation")
    g.add_argument("--splits", default="TRAIN")
    g.add_argument("--max-videos", type=int, default=None)
    g.add_argument("--frames-per-video", type=int, default=8, help="traced frames kept per video (spread out)")
    g.add_argument("--channels", default="16,32,64,96", help="U-Net widths, full resolution to 1/8")
    g.add_argument("--vae", default=None, help="A-VAE folder: also train on its reconstructions (see above)")
    g.add_argument("--p-vae", type=float, default=0.6, help="share of examples drawn from the reconstructions")
    g.add_argument("--rotate", type=float, default=10.0, help="random rotation, +- degrees")
    g.add_argument("--zoom", type=float, default=0.1, help="random scale, +- fraction")
    g.add_argument("--shift", type=float, default=0.06, help="random translation, +- fraction of the width")
    g.add_argument("--blur", type=float, default=1.5, help="max Gaussian blur sigma in pixels (drawn per example)")
    g.add_argument("--noise", type=float, default=0.15, help="max std of added Gaussian noise ([-1, 1] range)")
    g.add_argument("--eval-split", default="VAL")
    g.add_argument("--eval-videos", type=int, default=48, help="videos of --eval-split for the final EF check")


@torch.no_grad()
def reconstruct_frames(vae, frames: torch.Tensor, device: torch.device, chunk: int = 32,
                       bf16: bool = False) -> torch.Tensor:
    """uint8 [N, H, W] -> uint8 [N, H, W]: each frame through the A-VAE (posterior mean, decoded)."""
    means, _ = encode_frames(vae, frames, device, chunk, bf16=bf16)  # the latent cache's encoding
    out = []
    for part in means.split(chunk):
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            x = vae.decode(part.to(device))
        out.append(model_range_to_frames(x.float())[..., 0].cpu())
    return torch.cat(out)


def traced_frames(root, records, per_video: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 frames [N, 112, 112], bool masks [N, 112, 112]) of up to `per_video` traced frames per video."""
    source = MaskSource(root)
    frames, masks = [], []
    for rec in records:
        video = load_frames(root, rec)
        found = source.masks(rec, video.shape[0])
        if found is None:
            continue
        m, has = found
        idx = torch.nonzero(has).flatten()
        if len(idx) > per_video:
            idx = idx[torch.linspace(0, len(idx) - 1, per_video).round().long()]
        frames.append(video[idx])
        masks.append(m[idx])
    if not frames:
        raise SystemExit(f"error: no LV masks in {root}: `train seg` needs Masks/<FileName>.npz or "
                         "VolumeTracings.csv (for a phantom dataset: `echoflow train latents --phantom-masks` "
                         "writes them)")
    return torch.cat(frames), torch.cat(masks)


def augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, args: argparse.Namespace
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """x float [B, 1, H, W] in [-1, 1], y float [B, 1, H, W] in {0, 1} -> augmented pair (same geometry)."""
    b = x.shape[0]
    angle = torch.deg2rad(args.rotate * (2 * torch.rand(b, generator=gen) - 1))
    scale = 1.0 + args.zoom * (2 * torch.rand(b, generator=gen) - 1)
    offset = 2 * args.shift * (2 * torch.rand(b, 2, generator=gen) - 1)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, offset[:, 0]], 1),
                         torch.stack([sin * flip, cos, offset[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = (y > 0.5).float()
    # gain and gamma on [0, 1]
    unit = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    gain = 0.7 + 0.6 * torch.rand(b, 1, 1, 1, generator=gen)
    gamma = torch.exp(0.4 * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1))
    unit = (unit.pow(gamma) * gain).clamp(0.0, 1.0)
    x = unit * 2.0 - 1.0
    if args.blur > 0:
        x = _random_blur(x, args.blur * torch.rand(b, generator=gen))
    if args.noise > 0:
        x = x + args.noise * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return x.clamp(-1.0, 1.0), y


def _random_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-example separable Gaussian blur (sigma [B] in pixels; < 0.3 leaves the example unchanged)."""
    radius = 4
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)  # [B, K]
    kernel = torch.where(sigma[:, None] < 0.3, (offsets[None] == 0).float(), kernel)
    kernel = kernel / kernel.sum(1, keepdim=True)
    b = x.shape[0]
    rows = F.conv2d(F.pad(x.transpose(0, 1), (0, 0, radius, radius), mode="replicate"),
                    kernel[:, None, :, None], groups=b)
    cols = F.conv2d(F.pad(rows, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=b)
    return cols.transpose(0, 1)


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy + soft Dice (per example, averaged)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    dice = (2 * inter + 1.0) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1.0)
    return bce + (1.0 - dice).mean()


def dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean Dice of bool masks [N, H, W] (a frame with both masks empty counts as 1)."""
    inter = (pred & target).flatten(1).sum(1).float()
    total = (pred.flatten(1).sum(1) + target.flatten(1).sum(1)).float()
    return float(torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total)).mean())


@torch.no_grad()
def evaluate_seg(model: LVSegNet, root, split: str, max_videos: int, vae=None, device=None) -> dict:
    """Dice on the traced frames and EF-by-segmentation error of up to `max_videos` videos of `split`
    (all frames segmented), on the stored frames and, with `vae`, on their A-VAE reconstructions."""
    device = device or torch.device("cpu")
    records = select_records(root, split, max_videos)
    if not records:
        return {}
    source = MaskSource(root)
    out: dict = {}
    for variant in ("frames", "vae") if vae is not None else ("frames",):
        preds, trues, dices = [], [], []
        for rec in records:
            video = load_frames(root, rec)
            if variant == "vae":
                video = reconstruct_frames(vae, video, device)
            masks = model.segment(video)
            found = source.masks(rec, video.shape[0])
            if found is not None and found[1].any():
                dices.append(dice(masks[found[1]], found[0][found[1]]))
            preds.append(measure_ef(masks, rec.fps or 32.0, record_view(rec)).ef)
            trues.append(rec.ef)
        pred, true = torch.tensor(preds, dtype=torch.float64), torch.tensor(trues, dtype=torch.float64)
        ok = torch.isfinite(pred)
        reg = metrics.regression_metrics(true[ok], pred[ok]) if int(ok.sum()) > 1 else {}
        out[variant] = {"n": len(records), "unmeasured": int((~ok).sum()),
                        "dice": float(sum(dices) / len(dices)) if dices else None,
                        **{f"ef_{k}": float(v) for k, v in reg.items()}}
    return out


def run(args: argparse.Namespace) -> dict:
    if not 0.0 <= args.p_vae <= 1.0:
        raise SystemExit(f"error: --p-vae must be in [0, 1], got {args.p_vae}")
    run_ = Run(args, "seg")
    try:
        channels = [int(c) for c in str(args.channels).split(",")]
    except ValueError:
        raise SystemExit(f"error: --channels must be comma-separated integers, got {args.channels!r}") from None
    model = LVSegNet(LVSegConfig(channels=channels))
    device = run_.device
    records = select_records(args.data, args.splits, args.max_videos)
    frames, masks = traced_frames(args.data, records, args.frames_per_video)
    vae = load_model(args.vae, device=device).eval() if args.vae else None
    recon = reconstruct_frames(vae, frames, device, bf16=args.amp == "bf16") if vae is not None else None
    if not args.quiet:
        print(f"seg: {len(frames)} traced frames of {len(records)} videos"
              + (" (+ their A-VAE reconstructions)" if vae is not None else ""))
    opt = run_.optimizer(model.parameters())
    run_.track({"model": model}, {"opt": opt})
    for _ in run_.steps():
        for gen in run_.micro_batches():  # one per step unless --global-batch asks for accumulation
            idx = torch.randint(len(frames), (args.batch_size,), generator=gen)
            x = frames[idx]
            if recon is not None:
                use = torch.rand(len(idx), generator=gen) < args.p_vae
                x = torch.where(use[:, None, None], recon[idx], x)
            x = (x.float() / 128.0 - 1.0)[:, None]
            y = masks[idx].float()[:, None]
            x, y = augment(x, y, gen, args)
            with run_.autocast():
                logits = model(x.to(device))
            run_.backward(seg_loss(logits.float(), y.to(device)))
        gnorm = run_.step_optimizer(opt, model.parameters())
        run_.log(loss=run_.step_mean(), gnorm=gnorm)
    summary = {}
    if args.eval_split and args.eval_videos and run_.is_main:
        result = evaluate_seg(run_.export_model(), args.data, args.eval_split, args.eval_videos, vae, device)
        summary = {f"{args.eval_split.lower()}_{variant}_{k}": v for variant, vals in result.items()
                   for k, v in vals.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
    return run_.finish(**summary)
