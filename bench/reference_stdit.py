"""A textbook STDiT (EchoFlow's `DiffuserSTDiT`), the peer path of `python -m bench` for the LVFM.

Written from the architecture description in the project's spec (sections 2.4 and 3), on purpose without
any optimisation, the way the reference runs: float32, eager attention (scores materialised, softmax in
float32), the released attention layout (the `[B, heads, N, d]` output reshaped to `[B, N, heads*d]` with
no transpose), the caption cross-attention computed sample by sample with its query projection, and a
per-step Python loop for the fixed-grid Euler solver (`odeint(method="euler")` over
`linspace(1, 0, steps + 1)`), classifier-free guidance as two separate forwards per step.

It holds the same parameter and buffer names as `echoflow_models.lvfm.DiffuserSTDiT` (everything under
`model.`), so `ReferenceSTDiT(config).load_state_dict(ours.state_dict())` loads strictly. It is benchmark
code only: nothing in `echoflow_models` imports it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def glide_timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """[cos | sin] sinusoid of t with frequencies exp(-ln(max_period) * k / (dim / 2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine parameters, eps 1e-6."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


class TextbookMlp(nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim_out: int):
        super().__init__()
        self.fc1 = nn.Linear(dim_in, hidden)
        self.fc2 = nn.Linear(hidden, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = F.gelu(x, approximate="tanh")
        return self.fc2(x)


class EagerAttention(nn.Module):
    """q scaled by head_dim^-0.5, scores materialised, softmax in float32, released output layout."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, N, d] each
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        attn = attn.float().softmax(dim=-1).to(v.dtype)
        x = attn @ v  # [B, H, N, d]
        x = x.reshape(b, n, c)  # no transpose of heads and tokens: the layout the weights were trained with
        return self.proj(x)


class EagerCrossAttention(nn.Module):
    """Each sample's tokens attend to that sample's caption tokens (a block-diagonal mask in the reference,
    here one sample at a time)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: [B, N, C]; y: [B, L, C]."""
        b, n, c = x.shape
        outs = []
        for i in range(b):
            q = self.q_linear(x[i]).reshape(n, self.heads, self.head_dim).transpose(0, 1)  # [H, N, d]
            kv = self.kv_linear(y[i]).reshape(-1, 2, self.heads, self.head_dim)
            k, v = kv[:, 0].transpose(0, 1), kv[:, 1].transpose(0, 1)  # [H, L, d]
            attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            attn = attn.float().softmax(dim=-1).to(v.dtype)
            out = (attn @ v).transpose(0, 1).reshape(n, c)  # tokens-major, like the xformers output
            outs.append(out)
        return self.proj(torch.stack(outs))


class TextbookTimestepEmbedder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(glide_timestep_embedding(t).to(self.mlp[0].weight.dtype))


class TextbookCaptionEmbedder(nn.Module):
    def __init__(self, caption_channels: int, dim: int, max_length: int):
        super().__init__()
        self.y_proj = TextbookMlp(caption_channels, dim, dim)
        self.register_buffer("y_embedding", torch.zeros(max_length, caption_channels))

    def forward(self, caption: torch.Tensor, force_drop: bool = False) -> torch.Tensor:
        """caption: [B, 1, L, C_cap] (the wrapper's unsqueeze); force_drop -> the null caption."""
        if force_drop:
            caption = self.y_embedding[None, None].expand_as(caption).to(caption.dtype)
        return self.y_proj(caption)


class TextbookBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, has_caption: bool):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.zeros(6, dim))
        self.attn = EagerAttention(dim, heads)
        self.attn_temp = EagerAttention(dim, heads)
        self.cross_attn = EagerCrossAttention(dim, heads) if has_caption else None
        self.mlp = TextbookMlp(dim, int(dim * mlp_ratio), dim)

    def forward(self, x, t0, y, frames: int, tpe: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        s = n // frames
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + t0.reshape(b, 6, -1)
        ).chunk(6, dim=1)

        # spatial branch
        x_m = layer_norm(x) * (1 + scale_msa) + shift_msa
        x_s = x_m.reshape(b * frames, s, c)  # "B (T S) C -> (B T) S C"
        x_s = self.attn(x_s)
        x_s = x_s.reshape(b, n, c)
        x = x + gate_msa * x_s

        # temporal branch on the un-modulated tokens, same gate
        x_t = x.reshape(b, frames, s, c).permute(0, 2, 1, 3).reshape(b * s, frames, c)  # (B S) T C
        if tpe is not None:
            x_t = x_t + tpe
        x_t = self.attn_temp(x_t)
        x_t = x_t.reshape(b, s, frames, c).permute(0, 2, 1, 3).reshape(b, n, c)
        x = x + gate_msa * x_t

        if self.cross_attn is not None and y is not None:
            x = x + self.cross_attn(x, y)

        x_m = layer_norm(x) * (1 + scale_mlp) + shift_mlp
        x = x + gate_mlp * self.mlp(x_m)
        return x


class TextbookFinalLayer(nn.Module):
    def __init__(self, dim: int, out_features: int):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.zeros(2, dim))
        self.linear = nn.Linear(dim, out_features)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        return self.linear(layer_norm(x) * (1 + scale) + shift)


class TextbookPatchEmbed3D(nn.Module):
    def __init__(self, patch, in_ch: int, dim: int):
        super().__init__()
        self.patch = tuple(patch)
        self.proj = nn.Conv3d(in_ch, dim, kernel_size=self.patch, stride=self.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, t, h, w = x.shape
        pt, ph, pw = self.patch
        if w % pw:
            x = F.pad(x, (0, pw - w % pw))
        if h % ph:
            x = F.pad(x, (0, 0, 0, ph - h % ph))
        if t % pt:
            x = F.pad(x, (0, 0, 0, 0, 0, pt - t % pt))
        x = self.proj(x)  # [B, C, T', H', W']
        return x.flatten(2).transpose(1, 2)  # [B, T'H'W', C], token order (T, S)


class TextbookSTDiTCore(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        dim = cfg.hidden_size
        t, h, w = cfg.input_size
        pt, ph, pw = cfg.patch_size
        self.num_temporal = t // pt
        self.num_spatial = (h // ph) * (w // pw)
        self.x_embedder = TextbookPatchEmbed3D(cfg.patch_size, cfg.in_channels, dim)
        self.register_buffer("pos_embed", torch.zeros(1, self.num_spatial, dim))
        self.register_buffer("pos_embed_temporal", torch.zeros(1, self.num_temporal, dim))
        self.t_embedder = TextbookTimestepEmbedder(dim)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        has_caption = cfg.caption_channels > 0
        self.y_embedder = (
            TextbookCaptionEmbedder(cfg.caption_channels, dim, cfg.model_max_length) if has_caption else None
        )
        self.blocks = nn.ModuleList(
            TextbookBlock(dim, cfg.num_heads, cfg.mlp_ratio, has_caption) for _ in range(cfg.depth)
        )
        self.final_layer = TextbookFinalLayer(dim, pt * ph * pw * cfg.out_channels)

    def forward(self, x, timestep, y=None, force_drop: bool = False) -> torch.Tensor:
        b = x.shape[0]
        x = self.x_embedder(x)  # [B, N, C]
        c = x.shape[-1]
        x = x.reshape(b, self.num_temporal, self.num_spatial, c)
        x = x + self.pos_embed
        x = x.reshape(b, -1, c)

        t = self.t_embedder(timestep)
        t0 = self.t_block(t)
        yy = None
        if self.y_embedder is not None and y is not None:
            yy = self.y_embedder(y, force_drop)  # [B, 1, L, C]
            yy = yy.reshape(b, -1, c)  # per-sample caption tokens (y_lens = L for every sample)

        for i, block in enumerate(self.blocks):
            x = block(x, t0, yy, self.num_temporal, self.pos_embed_temporal if i == 0 else None)
        x = self.final_layer(x, t)
        return self.unpatchify(x)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        t, h, w = self.cfg.input_size
        pt, ph, pw = self.cfg.patch_size
        nt, nh, nw = t // pt, h // ph, w // pw
        c = self.cfg.out_channels
        x = x.reshape(x.shape[0], nt, nh, nw, pt, ph, pw, c)
        x = torch.einsum("bthwopqc->bctohpwq", x)
        return x.reshape(x.shape[0], c, nt * pt, nh * ph, nw * pw)


class ReferenceSTDiT(nn.Module):
    """The `DiffuserSTDiT` wrapper: `(x, timestep, encoder_hidden_states, cond_image) -> velocity`."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = TextbookSTDiTCore(config)

    def forward(self, x, timestep, encoder_hidden_states=None, cond_image=None, force_drop: bool = False):
        b = x.shape[0]
        if timestep.ndim == 0:
            timestep = timestep.reshape(1).repeat(b)
        y = encoder_hidden_states.unsqueeze(1) if encoder_hidden_states is not None else None
        if cond_image is not None:
            assert cond_image.shape == x.shape
            x = torch.cat([x, cond_image], dim=1)
        return self.model(x, timestep, y, force_drop)


@torch.no_grad()
def reference_euler(velocity, z: torch.Tensor, steps: int, callback=None) -> torch.Tensor:
    """Fixed-grid Euler over linspace(1, 0, steps + 1), one Python iteration per step, as torchdiffeq's
    `odeint(method="euler")` runs it: velocity(t, z) with a 0-d t; callback(step, steps, z) after each step
    (raising in it stops the loop)."""
    grid = torch.linspace(1.0, 0.0, steps + 1, device=z.device).to(z.dtype)
    for k in range(steps):
        t0, t1 = grid[k], grid[k + 1]
        z = z + (t1 - t0) * velocity(t0, z)
        if callback is not None:
            callback(k + 1, steps, z)
    return z


def reference_lvfm_velocity(model: ReferenceSTDiT, ef: torch.Tensor, cond: torch.Tensor, guidance: float = 1.0):
    """The demo's `f(t, y)`: ef is [B, 1, 1] (EF / 100), cond the [B, C, T, H, W] repeated latent image.
    With guidance != 1, a second forward with the null caption, combined as v_u + s (v_c - v_u)."""

    def f(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        v_c = model(z, t, encoder_hidden_states=ef, cond_image=cond)
        if guidance == 1.0:
            return v_c
        v_u = model(z, t, encoder_hidden_states=ef, cond_image=cond, force_drop=True)
        return v_u + guidance * (v_c - v_u)

    return f
