"""`echoflow train lvfm`: the latent video flow (STDiT) conditioned on EF and a latent image.

Flow matching (spec 5.2) on random `frames`-long windows of cached latent videos resampled to 32 fps
(zero-padded and masked out of the loss where a video is shorter). Conditioning:
* the conditioning image = a random latent frame of the same video (`--cond-frame random`, the reference)
  or the window's first frame (`--cond-frame first`: the video continues from the image), plus
  `--noise-cond` Gaussian noise, zeroed with probability `--p-drop-cond`;
* EF / 100 as the one-token caption, swapped for the null caption (`drop_ef`, the STDiT's `y_embedding`)
  with probability `class_dropout_prob` (`--p-drop-ef`), so EF guidance has an unconditional branch.

`--ef-pairs` fills each batch with pairs of clips of the same heart (identity) that share the flow time and
the noise: within a pair only the EF and the motion it causes differ, so the gradient that ties the EF
token to the beat is no longer buried under the differences between hearts. Every clip is still a
uniformly drawn video with its own uniformly drawn t, so the objective is the same.
"""

from __future__ import annotations

import argparse

import torch

from ..lvfm import DiffuserSTDiT, STDiTConfig
from ..sampling import flow_matching_pair
from .common import add_common_args
from .data import COND_FRAMES, TARGET_FPS, shared_randn
from .lifm import sample_t
from .scaling_io import start_flow_stage


def add_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser, steps=3000, batch_size=4, lr=3e-4, warmup=100, ema=0.999, data_required=False)
    g = parser.add_argument_group("LVFM")
    g.add_argument("--latents", required=True, help="latent cache folder from `echoflow train latents`")
    g.add_argument("--scaling", default=None, help="scaling.pt (default: fitted on the cache's TRAIN latents)")
    g.add_argument("--frames", type=int, default=64, help="video length in frames (input_size T)")
    g.add_argument("--train-frames", type=int, default=None,
                   help="train on shorter windows (the temporal table is positional, so a model trained on "
                        "32 frames still has 64 positions); default --frames")
    g.add_argument("--fps", type=float, default=TARGET_FPS)
    g.add_argument("--hidden", type=int, default=128)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--depth", type=int, default=4)
    g.add_argument("--patch", default="2,4,4", help="T,H,W patch of the latent video")
    g.add_argument("--mlp-ratio", type=float, default=4.0)
    g.add_argument("--p-drop-ef", type=float, default=0.1, help="EF -> null caption (class_dropout_prob)")
    g.add_argument("--p-drop-cond", type=float, default=0.1, help="conditioning image -> zeros")
    g.add_argument("--noise-cond", type=float, default=0.05, help="noise added to the conditioning image")
    g.add_argument("--cond-frame", default="random", choices=COND_FRAMES,
                   help="which latent frame conditions a clip: a random frame of the video (the reference) "
                        "or the clip's first frame (the generated video then starts from the image)")
    g.add_argument("--sigma-min", type=float, default=1e-5)
    g.add_argument("--t-sampling", default="uniform", choices=["uniform", "logit-normal"],
                   help="how flow times are drawn: U(0, 1) (spec) or sigmoid(N(0, 1)) (SD3; mid-t emphasis)")
    g.add_argument("--temporal-weight", type=float, default=0.0,
                   help="extra weight on the frame-varying part of the flow-matching error (0 = plain MSE)")
    g.add_argument("--ef-init-std", type=float, default=1.0,
                   help="init std of the EF caption MLP's first layer (the STDiT default 0.02 is made for "
                        "4096-d text captions; a 1-d EF needs a larger one to be picked up in short runs)")
    g.add_argument("--null-ef", type=float, default=-1.0,
                   help="value of the null caption y_embedding (the EF token of dropped/unconditional "
                        "samples); outside [0, 1] so it cannot be mistaken for a real EF")
    g.add_argument("--caption-adaln", action="store_true",
                   help="also feed the EF embedding into the AdaLN modulation of every block (config key "
                        "caption_adaln, an extension of the released STDiT; see echoflow_models/lvfm.py)")
    g.add_argument("--ef-pairs", action="store_true",
                   help="batches of clip pairs of the same heart (at different EFs in a phantom LVFM set) "
                        "sharing flow time and noise; needs an even --batch-size")
    g.add_argument("--splits", default="TRAIN")
    g.add_argument("--sample-latents", action="store_true")


def build_lvfm(args: argparse.Namespace, latent_channels: int, latent_size: int) -> DiffuserSTDiT:
    patch = [int(p) for p in str(args.patch).split(",")]
    cfg = STDiTConfig(
        input_size=[args.frames, latent_size, latent_size],
        in_channels=2 * latent_channels,
        out_channels=latent_channels,
        patch_size=patch,
        hidden_size=args.hidden,
        depth=args.depth,
        num_heads=args.heads,
        mlp_ratio=args.mlp_ratio,
        class_dropout_prob=args.p_drop_ef,
        caption_channels=1,
        model_max_length=1,
        caption_adaln=bool(args.caption_adaln),
    )
    model = DiffuserSTDiT(cfg)
    model.initialize_weights()
    y = model.model.y_embedder
    if y is not None:
        torch.nn.init.normal_(y.y_proj.fc1.weight, std=args.ef_init_std)
        torch.nn.init.normal_(y.y_proj.fc1.bias, std=0.5 * args.ef_init_std)
        torch.nn.init.xavier_uniform_(y.y_proj.fc2.weight)
        with torch.no_grad():
            y.y_embedding.fill_(args.null_ef)
    return model


def masked_flow_loss(model, z0, cond, ef, drop_ef, valid, gen, sigma_min, device, autocast,
                     t_sampling: str = "uniform", temporal_weight: float = 0.0, share: int = 1):
    """Spec 5.2 flow matching, frames outside `valid` ([B, T]) excluded from the mean; each run of
    `share` consecutive samples uses one flow time and one noise draw (`--ef-pairs`: 2).

    `temporal_weight` w adds w x the squared error of the frame-varying part of the velocity error (the
    error minus its mean over the frames), normalised by 1 + w. Both terms are minimised by the same
    conditional expectation, so the optimum is unchanged; the extra term only gives the motion (a few per
    cent of a clip's variance, easily drowned by the static anatomy) a larger share of the gradient."""
    b = z0.shape[0]
    noise = shared_randn(z0.shape, gen, share).to(device)
    t = sample_t(b // share, t_sampling, gen).repeat_interleave(share).to(device)
    z_t, target = flow_matching_pair(z0, noise, t, sigma_min)
    with autocast:
        v = model(z_t, t, ef, cond, drop_ef=drop_ef)
    err = v.float() - target  # [B, C, T, h, w]
    w = valid[:, None, :, None, None].float().expand_as(err)
    denom = w.sum().clamp_min(1.0)
    loss = (err.pow(2) * w).sum() / denom
    if temporal_weight > 0:
        mean_t = (err * w).sum(2, keepdim=True) / w.sum(2, keepdim=True).clamp_min(1.0)
        loss = (loss + temporal_weight * ((err - mean_t).pow(2) * w).sum() / denom) / (1.0 + temporal_weight)
    return loss


def run(args: argparse.Namespace) -> dict:
    run_, data, model, opt = start_flow_stage(args, "lvfm", build_lvfm)
    device = run_.device
    frames = args.train_frames or args.frames
    if args.ef_pairs and args.batch_size % 2:
        raise SystemExit(f"error: --ef-pairs needs an even --batch-size, got {args.batch_size}")
    share = 2 if args.ef_pairs else 1  # the clips of a pair share flow time and noise
    for _ in run_.steps():
        for gen in run_.micro_batches():
            clip = data.sample_clips(args.batch_size, frames, gen, args.fps, args.noise_cond,
                                     args.cond_frame, args.ef_pairs)
            b = clip.video.shape[0]
            drop_cond = torch.rand(b, generator=gen) < args.p_drop_cond
            drop_ef = (torch.rand(b, generator=gen) < args.p_drop_ef).to(device)
            cond = clip.cond * (~drop_cond).float()[:, None, None, None]
            loss = masked_flow_loss(model, clip.video.to(device), cond.to(device), clip.ef.to(device), drop_ef,
                                    clip.valid.to(device), gen, args.sigma_min, device, run_.autocast(),
                                    args.t_sampling, args.temporal_weight, share)
            run_.backward(loss)
        gnorm = run_.step_optimizer(opt, model.parameters())
        run_.log(loss=run_.step_mean(), gnorm=gnorm, lr=opt.param_groups[0]["lr"])
    return run_.finish()
