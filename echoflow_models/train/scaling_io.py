"""Where a trainer's latent scaling comes from: a given scaling.pt, or fitted on the cache's TRAIN split."""

from __future__ import annotations

from pathlib import Path

from ..scaling import LatentScaler
from .data import LatentSet, fit_scaling
from .distributed import is_main_process
from .latent_cache import LatentCache, load_latent_cache


def load_or_fit_scaler(cache: LatentCache, scaling: str | None, out: Path | None = None) -> LatentScaler:
    """`scaling` (a scaling.pt path) if given, else per-channel statistics of the TRAIN latents; a fitted
    scaler is also written to OUT/training/scaling.pt so the run records what it trained on."""
    if scaling:
        scaler = LatentScaler.load(scaling)
    else:
        scaler = fit_scaling(cache, ("TRAIN",))
        if out is not None and is_main_process():
            (Path(out) / "training").mkdir(parents=True, exist_ok=True)
            scaler.save(Path(out) / "training" / "scaling.pt")
    channels = cache["mean"].shape[1]
    if scaler.channels != channels:
        raise SystemExit(f"error: scaling.pt has {scaler.channels} channels but the latents have {channels}")
    return scaler


def open_latent_set(latents: str, scaling: str | None, splits, out: Path | None,
                    sample_latents: bool = False) -> tuple[LatentCache, LatentScaler, LatentSet]:
    """The latent cache (opened lazily), its scaler (`load_or_fit_scaler`) and the scaled `LatentSet` of `splits`: what the
    LIFM, LVFM and ReID stages train on."""
    cache = load_latent_cache(latents)
    scaler = load_or_fit_scaler(cache, scaling, out)
    return cache, scaler, LatentSet(cache, splits, scaler, sample_latents)


def start_flow_stage(args, kind: str, build) -> tuple:
    """What the LIFM and LVFM stages begin with: the run, the scaled latent set, the network built for its
    latent shape by `build(args, channels, size)`, its optimizer, all tracked for checkpoints and resume."""
    from .common import Run

    run_ = Run(args, kind)
    _, _, data = open_latent_set(args.latents, args.scaling, args.splits, run_.out, args.sample_latents)
    c, h, _ = data.mean.shape[1:]
    model = build(args, c, h)
    opt = run_.optimizer(model.parameters())
    run_.track({"model": model}, {"opt": opt})
    return run_, data, model, opt
