"""The adversarial VAE (A-VAE): the diffusers `AutoencoderKL` layout, for any configuration the release uses.

112x112 echo frames in [-1, 1] <-> latents (4x28x28 for `avae-4f4`, 16x14x14 for `avae-16f8`).
State-dict keys follow diffusers 0.30.3 exactly, so `vae/<name>/diffusion_pytorch_model.safetensors` loads
unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_DOWN_BLOCKS = ("DownEncoderBlock2D",)
SUPPORTED_UP_BLOCKS = ("UpDecoderBlock2D",)

# Encoder/decoder sizes by name (`python -m bench` builds these, one Down/UpEncoderBlock2D per width).
# avae-16f8: the released vae/avae-16f8/config.json (spec 1.2). avae-4f4: its widths are not published
# (spec 1.2); three levels of the same family (f = 4: 112 -> 28) are assumed. avae-tiny: the size of the
# reference fixture vae/tiny.
SIZE_PRESETS: dict[str, dict] = {
    "avae-4f4": {"block_out_channels": [128, 256, 512], "latent_channels": 4, "layers_per_block": 2},
    "avae-16f8": {"block_out_channels": [128, 256, 256, 512], "latent_channels": 16, "layers_per_block": 2},
    "avae-tiny": {"block_out_channels": [32, 64, 64], "latent_channels": 4, "layers_per_block": 1},
}


@dataclass
class AutoencoderKLConfig:
    in_channels: int = 3
    out_channels: int = 3
    down_block_types: list[str] = field(default_factory=lambda: ["DownEncoderBlock2D"])
    up_block_types: list[str] = field(default_factory=lambda: ["UpDecoderBlock2D"])
    block_out_channels: list[int] = field(default_factory=lambda: [64])
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    # diffusers' tile size when tiling is switched on; this code never tiles (only the memory estimate reads it)
    sample_size: int = 32
    # Latent statistics for pipelines; diffusers' AutoencoderKL itself never reads them, and EchoFlow scales
    # latents with its own per-channel scaling.pt instead (spec 1.2). Accepted so configs round-trip.
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: list[float] | None = None
    latents_std: list[float] | None = None
    force_upcast: bool = True  # read by the pipeline and the loader node: float16 requests run in float32
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def validate(self) -> None:
        levels = len(self.block_out_channels)
        if len(self.down_block_types) != levels or len(self.up_block_types) != levels:
            raise ValueError(
                f"AutoencoderKL config: {levels} block_out_channels but {len(self.down_block_types)} "
                f"down and {len(self.up_block_types)} up block types; they must match"
            )
        bad = [b for b in self.down_block_types if b not in SUPPORTED_DOWN_BLOCKS]
        bad += [b for b in self.up_block_types if b not in SUPPORTED_UP_BLOCKS]
        if bad:
            raise ValueError(
                f"AutoencoderKL config: block types {sorted(set(bad))} are not supported; only "
                f"down_block_types {list(SUPPORTED_DOWN_BLOCKS)} and up_block_types {list(SUPPORTED_UP_BLOCKS)}"
            )
        if self.act_fn != "silu":
            raise ValueError(f"AutoencoderKL config: act_fn={self.act_fn!r} is not supported; only 'silu'")


class DiagonalGaussian:
    """The encoder posterior N(mean, std^2); logvar clamped to [-30, 20] as diffusers does."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # Noise is drawn on the generator's device, then moved: seeded results don't depend on the device.
        gen_device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=gen_device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(N(mean, std) || N(0, 1)) summed over C, H, W -> [B]."""
        var = self.std.pow(2)
        return 0.5 * (self.mean.pow(2) + var - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a 1x1 shortcut when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=1e-6)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=1e-6)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Without autograd the activations and the residual sum reuse the buffers just produced (fewer
        # image-sized allocations: on the CPU large ones are fresh pages every time).
        inplace = not torch.is_grad_enabled()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h = self.conv2(F.silu(self.norm2(h), inplace=inplace))
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return h.add_(skip) if inplace else skip + h


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over H*W positions with a GroupNorm in front and a residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)  # [B, HW, C] (any memory format)
        q = self.to_q(tokens)[:, None]  # [B, 1, HW, C]
        k = self.to_k(tokens)[:, None]
        v = self.to_v(tokens)[:, None]
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]  # [B, HW, C]
        out = self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)
        return out + x


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, add_attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([SpatialSelfAttention(channels, groups)] if add_attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Downsample(nn.Module):
    """Pad right/bottom by one, then a stride-2 3x3 conv (diffusers `Downsample2D`, padding=0)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16:
            # Nearest upsampling of bf16 is unsupported on some backends; it is exact in float32.
            return self.conv(F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(x.dtype))
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EncoderBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(layers)]
        )
        self.downsamplers = nn.ModuleList([Downsample(out_ch)] if downsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resnets:
            x = block(x)
        for down in self.downsamplers:
            x = down(x)
        return x


class DecoderBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(layers)]
        )
        self.upsamplers = nn.ModuleList([Upsample(out_ch)] if upsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resnets:
            x = block(x)
        for up in self.upsamplers:
            x = up(x)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderKLConfig):
        super().__init__()
        chans, groups = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            EncoderBlock(chans[max(i - 1, 0)], c, cfg.layers_per_block, groups, i < len(chans) - 1)
            for i, c in enumerate(chans)
        )
        self.mid_block = MidBlock(chans[-1], groups, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, chans[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(chans[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderKLConfig):
        super().__init__()
        chans, groups = list(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, chans[0], 3, padding=1)
        self.mid_block = MidBlock(chans[0], groups, cfg.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            DecoderBlock(chans[max(i - 1, 0)], c, cfg.layers_per_block + 1, groups, i < len(chans) - 1)
            for i, c in enumerate(chans)
        )
        self.conv_norm_out = nn.GroupNorm(groups, chans[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(chans[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x), inplace=not torch.is_grad_enabled()))


class AutoencoderKL(nn.Module):
    """`encode(x)` -> `DiagonalGaussian`; `decode(z)` -> image in [-1, 1] (unclamped)."""

    config_class = AutoencoderKLConfig
    class_name = "AutoencoderKL"
    kind = "vae"  # the folder it lives under in a weights root: vae/<name>/

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        config.validate()
        self.config = config
        latent = config.latent_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if config.use_post_quant_conv else None

    @property
    def downscale_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x: [B, 3, H, W] in [-1, 1] -> posterior over [B, L, H/f, W/f]."""
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: [B, L, h, w] (unscaled latent) -> [B, 3, h*f, w*f]."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruction through a posterior sample (used in training)."""
        return self.decode(self.encode(x).sample(generator))


# ----------------------------------------------------------------------------------------------------
# Pixel conventions of the reference demo
# ----------------------------------------------------------------------------------------------------


def frames_to_gray(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 frames [..., H, W] or [..., H, W, 1|3] -> uint8 [..., H, W]: the one rule for colour input,
    everywhere (VAE, EF regressor, nodes, evaluation): echo is grayscale, so colour frames are read by the
    rounded mean of their channels (decoded EchoFlow frames have three equal channels and stay as they are)."""
    frames = torch.as_tensor(np.asarray(frames)) if not torch.is_tensor(frames) else frames
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8 (0..255), got {frames.dtype}; convert with (x * 255).round()")
    if frames.ndim >= 3 and frames.shape[-1] in (1, 3):
        if frames.shape[-1] == 1:
            return frames[..., 0]
        return frames.float().mean(-1).round().to(torch.uint8)
    if frames.ndim < 2:
        raise ValueError(f"frames must be [..., H, W] or [..., H, W, C], got shape {tuple(frames.shape)}")
    return frames


def frames_to_model_range(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames [..., H, W] or [..., H, W, 1|3] -> float [N, 3, H, W] in [-1, 1] (x / 128 - 1).

    Gray (`frames_to_gray`) replicated to three channels; leading dimensions are flattened into N.
    """
    gray = frames_to_gray(frames)
    x = gray.reshape(-1, 1, *gray.shape[-2:]).expand(-1, 3, -1, -1)
    return x.float() / 128.0 - 1.0


def model_range_to_frames(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in about [-1, 1] -> uint8 [N, H, W, 3] with the demo's (x + 1) * 128, clamped."""
    pixels = ((x.float() + 1.0) * 128.0).clamp(0, 255).to(torch.uint8)
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return pixels.permute(0, 2, 3, 1).contiguous()
