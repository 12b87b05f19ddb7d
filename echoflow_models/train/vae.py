"""`echoflow train vae`: the A-VAE (diffusers AutoencoderKL layout) on 112x112 echo frames.

Objective (spec 5.1, without the pretrained LPIPS: nothing is downloaded):
    L_G = |x - x^|_1 + kl_weight * KL / pixels + [step >= disc_start] * disc_weight * lambda * (-D(x^))
    L_D = 1/2 (relu(1 - D(x)) + relu(1 + D(x^)))          (hinge, PatchGAN discriminator)
with lambda the taming-transformers adaptive weight |grad L_rec| / |grad L_adv| at the decoder's last
layer, and the reconstruction through a posterior sample. The discriminator is not shipped.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..vae import AutoencoderKL, AutoencoderKLConfig, frames_to_model_range, model_range_to_frames
from .common import Run, add_common_args
from .data import frame_table, load_video_table, select_records


def add_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser, steps=2000, batch_size=8, lr=5e-4, warmup=100)
    g = parser.add_argument_group("A-VAE")
    g.add_argument("--channels", default="32,64,64",
                   help="block_out_channels; len-1 downsamplings (3 levels: 112 -> 28, the 4f4 layout)")
    g.add_argument("--layers-per-block", type=int, default=1)
    g.add_argument("--latent-channels", type=int, default=4)
    g.add_argument("--norm-groups", type=int, default=16)
    g.add_argument("--mid-attention", action=argparse.BooleanOptionalAction, default=True,
                   help="self-attention in the mid blocks (the release has it)")
    g.add_argument("--kl-weight", type=float, default=1e-5, help="KL weight (KL summed over latent / pixels)")
    g.add_argument("--disc-weight", type=float, default=0.5, help="adversarial weight (x adaptive lambda)")
    g.add_argument("--disc-start", type=float, default=0.5,
                   help="discriminator on from this point: a fraction < 1 of the run's progress (steps or "
                        "--max-minutes, whichever is further), or a step number >= 1")
    g.add_argument("--disc-channels", type=int, default=32)
    g.add_argument("--disc-lr", type=float, default=None, help="default: --lr")
    g.add_argument("--frames-per-video", type=int, default=32, help="frames kept per video (0 = all)")
    g.add_argument("--splits", default="TRAIN", help="which splits to train on")
    g.add_argument("--max-videos", type=int, default=None)
    g.add_argument("--eval-split", default="VAL", help="split for the final PSNR (empty: skip)")


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix) with GroupNorm: 112x112 -> a grid of real/fake logits."""

    def __init__(self, in_channels: int = 3, width: int = 32, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = width
        for i in range(1, layers):
            out = width * min(2**i, 8)
            stride = 2 if i < layers - 1 else 1
            mods += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.GroupNorm(8, out), nn.LeakyReLU(0.2)]
            ch = out
        mods += [nn.Conv2d(ch, 1, 4, 1, 1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_vae(args: argparse.Namespace) -> AutoencoderKL:
    chans = [int(c) for c in str(args.channels).split(",")]
    cfg = AutoencoderKLConfig(
        down_block_types=["DownEncoderBlock2D"] * len(chans),
        up_block_types=["UpDecoderBlock2D"] * len(chans),
        block_out_channels=chans,
        layers_per_block=args.layers_per_block,
        latent_channels=args.latent_channels,
        norm_num_groups=args.norm_groups,
        sample_size=112,
        mid_block_add_attention=bool(args.mid_attention),
    )
    return AutoencoderKL(cfg)


def psnr_uint8(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return 10.0 * math.log10(255.0**2 / max(mse, 1e-10))


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKL, frames: torch.Tensor, device: torch.device, chunk: int = 32) -> float:
    """PSNR (dB) of uint8 frames [N, 112, 112] through encode (mean) -> decode, in the demo's uint8 space."""
    vae.eval()
    outs = []
    for part in frames.split(chunk):
        x = frames_to_model_range(part).to(device)
        outs.append(model_range_to_frames(vae.decode(vae.encode(x).mean)).cpu()[..., 0])
    return psnr_uint8(torch.cat(outs), frames)


def adaptive_weight(rec: torch.Tensor, adv: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def run(args: argparse.Namespace) -> dict:
    run_ = Run(args, "vae")
    records = select_records(args.data, args.splits, args.max_videos)
    if not args.quiet:
        print(f"vae: reading {len(records)} videos from {args.data}")
    frames = frame_table(load_video_table(args.data, records), args.frames_per_video or None)
    eval_frames = None
    if args.eval_split:
        try:
            eval_recs = select_records(args.data, args.eval_split, 16)
            eval_frames = frame_table(load_video_table(args.data, eval_recs), 4)
        except ValueError:
            eval_frames = None

    vae = build_vae(args)
    disc = PatchDiscriminator(3, args.disc_channels)
    opt_g = run_.optimizer(vae.parameters())
    opt_d = run_.optimizer(disc.parameters(), lr=args.disc_lr or args.lr, betas=(0.5, 0.9))
    run_.track({"model": vae, "disc": disc}, {"gen": opt_g, "disc": opt_d}, save="model")
    device = run_.device
    pixels = 3 * frames.shape[-1] * frames.shape[-2]
    last_layer = vae.decoder.conv_out.weight

    for step in run_.steps():
        started = run_.progress() >= args.disc_start if args.disc_start < 1 else step >= args.disc_start
        use_disc = started and args.disc_weight > 0
        for gen in run_.micro_batches():
            idx = torch.randint(len(frames), (args.batch_size,), generator=gen)
            x = frames_to_model_range(frames[idx]).to(device)
            noise_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
            with run_.autocast():
                post = vae.encode(x)
                rec_x = vae.decode(post.sample(noise_gen))
                rec = (x - rec_x.float()).abs().mean()
                kl = post.kl().float().mean() / pixels
                loss = rec + args.kl_weight * kl
                adv = torch.zeros((), device=device)
                lam = torch.zeros((), device=device)
                if use_disc:
                    disc.requires_grad_(False)
                    adv = -disc(rec_x).float().mean()
                    lam = adaptive_weight(rec, adv, last_layer)
                    loss = loss + args.disc_weight * lam * adv
                    disc.requires_grad_(True)
            run_.backward(loss)
            d_loss = torch.zeros(())
            if use_disc:  # the discriminator sees this micro-batch's reconstructions, detached
                with run_.autocast():
                    real = disc(x).float()
                    fake = disc(rec_x.detach()).float()
                    d_loss = 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
                run_.backward(d_loss, key="d")
        gnorm = run_.step_optimizer(opt_g, vae.parameters())
        if use_disc:
            run_.step_optimizer(opt_d, disc.parameters())
        d_mean = run_.step_mean("d") if use_disc else d_loss
        run_.log(rec=rec, kl=kl, adv=adv, lam=lam, d=d_mean, gnorm=gnorm, lr=opt_g.param_groups[0]["lr"])

    summary = {}
    if not run_.is_main:  # the final PSNRs are measured once, by rank 0
        return run_.finish()
    if eval_frames is not None:
        summary["val_psnr_db"] = reconstruction_psnr(run_.export_model(), eval_frames, device)
    summary["train_psnr_db"] = reconstruction_psnr(run_.export_model(), frames[: len(frames): max(1, len(frames) // 64)],
                                                   device)
    return run_.finish(**summary)
