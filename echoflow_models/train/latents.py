"""`echoflow train latents`: encode a dataset once with a trained A-VAE into a latent cache folder (shards,
see `latent_cache`); fit scaling.pt on the TRAIN latents.

Resumable: run the same command again after an interruption and the shards already written are kept.
Parallel: under ``torchrun --nproc-per-node N`` each rank encodes its own shards. ``--convert OLD.pt``
turns a v1 cache (one ``.pt`` file) into a shard folder without re-encoding.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..checkpoint import load_model
from ..progress import ProgressBar
from .common import resolve_device
from .data import fit_scaling, write_phantom_masks
from .distributed import barrier, init_distributed, launched_world, rank_device
from .latent_cache import DEFAULT_SHARD_VIDEOS, build_latent_cache, cache_summary, convert_v1_cache


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help="EchoNet-Dynamic layout folder (required unless --convert)")
    parser.add_argument("--vae", default=None, help="A-VAE model folder (required unless --convert)")
    parser.add_argument("--out", required=True, help="latent cache folder to write (shards + index.json)")
    parser.add_argument("--convert", default=None, metavar="OLD.pt",
                        help="convert a v1 latent cache file into the --out folder (no encoding)")
    parser.add_argument("--scaling-out", default=None,
                        help="also write scaling.pt fitted on the TRAIN latents here")
    parser.add_argument("--splits", default="TRAIN,VAL,TEST")
    parser.add_argument("--with-std", action="store_true", help="also store posterior stds (for --sample-latents)")
    parser.add_argument("--phantom-masks", action="store_true",
                        help="first write Masks/*.npz for a phantom dataset (re-rendered, verified)")
    parser.add_argument("--max-videos", type=int, default=None)
    parser.add_argument("--shard-videos", type=int, default=DEFAULT_SHARD_VIDEOS,
                        help=f"videos per shard file (default {DEFAULT_SHARD_VIDEOS}: about 70 MB of EchoNet-Dynamic "
                             "latents; the unit of resume and of the work split between ranks)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: the physical cores)")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                        help="encode under bf16 autocast (auto: on for CUDA, off on CPU)")
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> dict:
    if args.shard_videos < 1:
        raise SystemExit(f"error: --shard-videos must be at least 1, got {args.shard_videos}")
    if args.convert:
        if launched_world().distributed:
            raise SystemExit("error: --convert runs in one process; run it without torchrun")
        cache = convert_v1_cache(args.convert, args.out, args.shard_videos)
    else:
        missing = [o for o in ("data", "vae") if not getattr(args, o)]
        if missing:
            raise SystemExit(f"error: train latents needs {' and '.join('--' + m for m in missing)} "
                             "(or --convert OLD.pt to convert a v1 cache)")
        if args.threads:
            torch.set_num_threads(int(args.threads))
        device = resolve_device(rank_device(args.device, launched_world()))
        world = init_distributed(device)
        if args.phantom_masks:
            if world.is_main:  # one writer; the other ranks wait for the masks
                bar = ProgressBar("phantom masks", enabled=not args.quiet)
                write_phantom_masks(args.data, "TRAIN", progress=bar.update)
            barrier()
        vae = load_model(args.vae, device=device)
        bar = ProgressBar("encode", enabled=not args.quiet and world.is_main)
        bf16 = args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda")
        cache = build_latent_cache(vae, args.data, args.out, args.splits, device, args.with_std, args.max_videos,
                                   progress=bar.update, bf16=bf16, shard_videos=args.shard_videos)
        if not world.is_main:
            return {"cache": str(args.out)}
    info = {"cache": str(args.out), "summary": cache_summary(cache)}
    if args.scaling_out:
        scaler = fit_scaling(cache, ("TRAIN",))
        Path(args.scaling_out).parent.mkdir(parents=True, exist_ok=True)
        scaler.save(args.scaling_out)
        info["scaling"] = {"path": str(args.scaling_out), "mean": scaler.mean.tolist(), "std": scaler.std.tolist()}
    if not args.quiet:
        print(f"latents: {info['summary']} -> {args.out}")
    return info
