"""`echoflow train latents`: encode a dataset once with a trained A-VAE; fit scaling.pt on TRAIN latents."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..checkpoint import load_model
from ..progress import ProgressBar
from .common import resolve_device
from .data import build_latent_cache, cache_summary, fit_scaling, write_phantom_masks


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="EchoNet-Dynamic layout folder")
    parser.add_argument("--vae", required=True, help="A-VAE model folder (config.json + safetensors)")
    parser.add_argument("--out", required=True, help="latent cache file to write (.pt)")
    parser.add_argument("--scaling-out", default=None,
                        help="also write scaling.pt fitted on the TRAIN latents here")
    parser.add_argument("--splits", default="TRAIN,VAL,TEST")
    parser.add_argument("--with-std", action="store_true", help="also store posterior stds (for --sample-latents)")
    parser.add_argument("--phantom-masks", action="store_true",
                        help="first write Masks/*.npz for a phantom dataset (re-rendered, verified)")
    parser.add_argument("--max-videos", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: the physical cores)")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                        help="encode under bf16 autocast (auto: on for CUDA, off on CPU)")
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(int(args.threads))
    device = resolve_device(args.device)
    if args.phantom_masks:
        bar = ProgressBar("phantom masks", enabled=not args.quiet)
        write_phantom_masks(args.data, "TRAIN", progress=bar.update)
    vae = load_model(args.vae, device=device)
    bar = ProgressBar("encode", enabled=not args.quiet)
    bf16 = args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda")
    cache = build_latent_cache(vae, args.data, args.out, args.splits, device, args.with_std, args.max_videos,
                               progress=bar.update, bf16=bf16)
    info = {"cache": str(args.out), "summary": cache_summary(cache)}
    if args.scaling_out:
        scaler = fit_scaling(cache, ("TRAIN",))
        Path(args.scaling_out).parent.mkdir(parents=True, exist_ok=True)
        scaler.save(args.scaling_out)
        info["scaling"] = {"path": str(args.scaling_out), "mean": scaler.mean.tolist(), "std": scaler.std.tolist()}
    if not args.quiet:
        print(f"latents: {info['summary']} -> {args.out}")
    return info
