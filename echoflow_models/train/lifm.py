"""`echoflow train lifm`: the latent image flow (SegDiT) on cached VAE latents.

Flow matching (spec 5.2) with sigma_min: z_t = (1 - t) z_0 + (sigma_min + (1 - sigma_min) t) eps, target
(1 - sigma_min) eps - z_0, t ~ U(0, 1). Conditioning: the view label, replaced by the null class
(index = num_classes) with probability --p-drop-view, and the LV mask at latent size, replaced by zeros
(what the demo feeds when no mask is given) with probability --p-drop-mask and wherever a frame has no mask.
`--frames first` learns only each video's first frame (one cardiac phase when the clips all start there).
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from ..lifm import SegDiTConfig, SegDiTTransformer2DModel
from ..sampling import flow_matching_loss
from .common import add_common_args
from .data import IMAGE_FRAMES
from .scaling_io import start_flow_stage


def add_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser, steps=3000, batch_size=32, lr=3e-4, warmup=100, ema=0.999, data_required=False)
    g = parser.add_argument_group("LIFM")
    g.add_argument("--latents", required=True, help="latent cache folder from `echoflow train latents`")
    g.add_argument("--scaling", default=None,
                   help="scaling.pt (default: fitted on the cache's TRAIN latents and written to OUT/scaling.pt)")
    g.add_argument("--hidden", type=int, default=128, help="transformer width (heads x head dim)")
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--patch", type=int, default=2)
    g.add_argument("--p-drop-view", type=float, default=0.1, help="view label -> null class")
    g.add_argument("--p-drop-mask", type=float, default=0.5, help="LV mask -> zeros")
    g.add_argument("--sigma-min", type=float, default=1e-5)
    g.add_argument("--t-sampling", default="uniform", choices=["uniform", "logit-normal"],
                   help="how flow times are drawn: U(0, 1) (spec) or sigmoid(N(0, 1)) (SD3; mid-t emphasis)")
    g.add_argument("--label-init-std", type=float, default=0.02,
                   help="std of the view-embedding init (DiT: 0.02; larger lets short runs pick up the view sooner)")
    g.add_argument("--frames", default="all", choices=IMAGE_FRAMES,
                   help="learn every frame (all) or only each video's first frame (first: with clips that all "
                        "start at end-diastole, e.g. `train dataset --phase 0`, the LIFM generates ED frames, "
                        "which an LVFM trained with --cond-frame first on such clips animates)")
    g.add_argument("--splits", default="TRAIN")
    g.add_argument("--sample-latents", action="store_true", help="sample z = mean + std eps (cache needs std)")


def build_lifm(args: argparse.Namespace, latent_channels: int, latent_size: int) -> SegDiTTransformer2DModel:
    if args.hidden % args.heads:
        raise SystemExit(f"error: --hidden {args.hidden} is not divisible by --heads {args.heads}")
    cfg = SegDiTConfig(
        num_attention_heads=args.heads,
        attention_head_dim=args.hidden // args.heads,
        in_channels=latent_channels + 1,
        out_channels=latent_channels,
        num_layers=args.layers,
        sample_size=latent_size,
        patch_size=args.patch,
        num_embeds_ada_norm=3,
    )
    model = SegDiTTransformer2DModel(cfg)
    model.initialize_weights()
    std = getattr(args, "label_init_std", 0.02)
    if std != 0.02:
        for block in model.transformer_blocks:
            torch.nn.init.normal_(block.norm1.emb.class_embedder.embedding_table.weight, std=std)
    return model


def sample_t(n: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "logit-normal":
        return torch.sigmoid(torch.randn(n, generator=gen))
    return torch.rand(n, generator=gen)


def run(args: argparse.Namespace) -> dict:
    run_, data, model, opt = start_flow_stage(args, "lifm", build_lifm)
    device = run_.device
    null = model.num_classes
    for _ in run_.steps():
        for gen in run_.micro_batches():
            z0, views, masks, has_mask = data.sample_images(args.batch_size, gen, args.frames)
            drop_view = torch.rand(len(views), generator=gen) < args.p_drop_view
            drop_mask = (torch.rand(len(views), generator=gen) < args.p_drop_mask) | ~has_mask
            views = torch.where(drop_view, torch.full_like(views, null), views)
            masks = masks * (~drop_mask).float()[:, None, None, None]
            z0, views, masks = z0.to(device), views.to(device), masks.to(device)
            noise = torch.randn(z0.shape, generator=gen).to(device)
            t = sample_t(len(z0), args.t_sampling, gen).to(device)
            with run_.autocast():
                loss = flow_matching_loss(partial(model, view=views, mask=masks), z0, sigma_min=args.sigma_min,
                                          noise=noise, t=t)
            run_.backward(loss)
        gnorm = run_.step_optimizer(opt, model.parameters())
        run_.log(loss=run_.step_mean(), gnorm=gnorm, lr=opt.param_groups[0]["lr"])
    return run_.finish()
