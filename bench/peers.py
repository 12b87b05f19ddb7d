"""Peer implementations for `python -m bench`, built with the same weights as this project's models.

* LIFM: diffusers' `DiTTransformer2DModel` (the reference `SegDiTTransformer2DModel` is that class with the
  LV-mask channel concatenated before patch embedding, so a DiT with `in_channels = 5` holds the same state
  dict), driven by a per-step Python Euler loop like the reference's fixed-grid `odeint`.
* A-VAE: diffusers' `AutoencoderKL` (the class the released A-VAE folders name), decoding all frames of a
  video in one call as the reference demo does.
* LVFM: the textbook STDiT of `reference_stdit.py` (diffusers has no STDiT).
* ReID: plain PyTorch as a user would write it: the bank centred and normalised once, the whole batch
  embedded in one call, Pearson correlation as one matrix product.

diffusers is a bench-only dependency (`pip install -e ".[bench]"`); this module is loaded by path from
`bench.suite` and is never imported by the runtime package.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def diffusers_version() -> str | None:
    try:
        import diffusers
    except Exception:  # noqa: BLE001 - absent or broken (e.g. an incompatible huggingface_hub)
        return None
    return diffusers.__version__


def diffusers_problem() -> str | None:
    """None when diffusers' DiT and AutoencoderKL import; otherwise why not (shown as the skip reason)."""
    try:
        from diffusers import AutoencoderKL, DiTTransformer2DModel  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return (f"diffusers is not usable here ({type(exc).__name__}: {exc}); install the bench extra: "
                "pip install -e '.[bench]'")
    return None


def load_reference_stdit():
    name = "echoflow_bench_reference_stdit"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "reference_stdit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------
# LIFM: diffusers DiT
# ----------------------------------------------------------------------------------------------------


def diffusers_dit(ours: torch.nn.Module, device, dtype) -> torch.nn.Module:
    """A `DiTTransformer2DModel` holding exactly our SegDiT's weights (strict load)."""
    from diffusers import DiTTransformer2DModel

    cfg = ours.config
    peer = DiTTransformer2DModel(
        num_attention_heads=cfg.num_attention_heads,
        attention_head_dim=cfg.attention_head_dim,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        num_layers=cfg.num_layers,
        dropout=cfg.dropout,
        norm_num_groups=cfg.norm_num_groups,
        attention_bias=cfg.attention_bias,
        sample_size=cfg.sample_size,
        patch_size=cfg.patch_size,
        activation_fn=cfg.activation_fn,
        num_embeds_ada_norm=cfg.num_embeds_ada_norm,
        upcast_attention=cfg.upcast_attention,
        norm_type=cfg.norm_type,
        norm_elementwise_affine=cfg.norm_elementwise_affine,
        norm_eps=cfg.norm_eps,
    )
    state = {k: v.detach().float().cpu() for k, v in ours.state_dict().items()}
    peer.load_state_dict(state, strict=True)
    return peer.to(device=device, dtype=dtype).eval().requires_grad_(False)


def dit_velocity(peer: torch.nn.Module, labels: torch.Tensor, mask: torch.Tensor | None):
    """The demo's `f(t, y)`: the mask (zeros without one) concatenated on channels, t broadcast to [B]."""

    def f(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        seg = mask if mask is not None else torch.zeros_like(z[:, :1])
        return peer(torch.cat([z, seg], dim=1), timestep=t.expand(z.shape[0]), class_labels=labels).sample

    return f


# ----------------------------------------------------------------------------------------------------
# A-VAE: diffusers AutoencoderKL
# ----------------------------------------------------------------------------------------------------


def diffusers_vae(ours: torch.nn.Module, device, dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    cfg = ours.config
    peer = AutoencoderKL(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        act_fn=cfg.act_fn,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.sample_size,
        scaling_factor=cfg.scaling_factor,
        force_upcast=cfg.force_upcast,
        use_quant_conv=cfg.use_quant_conv,
        use_post_quant_conv=cfg.use_post_quant_conv,
        mid_block_add_attention=cfg.mid_block_add_attention,
    )
    state = {k: v.detach().float().cpu() for k, v in ours.state_dict().items()}
    peer.load_state_dict(state, strict=True)
    return peer.to(device=device, dtype=dtype).eval().requires_grad_(False)


@torch.no_grad()
def vae_decode_frames(peer: torch.nn.Module, latents: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
    """The demo's decode: unscale, `vae.decode(z).sample` on all frames at once, `(x + 1) * 128` to uint8.

    latents: scaled [N, C, h, w] -> uint8 [N, H, W, 3]."""
    dtype = next(peer.parameters()).dtype
    z = latents.float() * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)
    x = peer.decode(z.to(dtype)).sample
    pixels = ((x.float() + 1.0) * 128.0).clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous()


# ----------------------------------------------------------------------------------------------------
# ReID: batched, plain PyTorch
# ----------------------------------------------------------------------------------------------------


class BatchedReID:
    """Pearson similarity of a batch of latents to every bank row, written the direct way: the bank rows
    centred and scaled to unit norm once (when the bank is loaded), then per call one forward of the
    whole batch, sigmoid, centre and normalise the embeddings, one matrix product and a max over rows."""

    def __init__(self, reid: torch.nn.Module, bank: torch.Tensor):
        self.reid = reid
        rows = bank.float() - bank.float().mean(dim=1, keepdim=True)
        self.rows = rows / rows.norm(dim=1, keepdim=True)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """latents [B, C, h, w] -> (max similarity [B], nearest bank index [B]), on the CPU."""
        emb = torch.sigmoid(self.reid(latents).float())
        emb = emb - emb.mean(dim=1, keepdim=True)
        emb = emb / emb.norm(dim=1, keepdim=True)
        best, index = (emb @ self.rows.T).max(dim=1)
        return best.cpu(), index.cpu()
