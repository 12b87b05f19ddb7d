"""Building blocks shared by the EchoFlow networks.

Everything here reproduces the numerics of the layers the released checkpoints were trained with
(diffusers 0.30.3 for the A-VAE and LIFM, OpenSora-v1 for the LVFM), without importing those libraries.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------------
# Sin-cos position tables
# ----------------------------------------------------------------------------------------------------


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[sin(p * w_k) | cos(p * w_k)] with w_k = 1 / 10000^(k / (embed_dim / 2)).

    positions: any shape, flattened -> [P]. Returns float64 [P, embed_dim].
    """
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # [D/2]
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]  # [P, D/2]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(embed_dim: int, grid_h: int, grid_w: int, spacing: float = 1.0) -> torch.Tensor:
    """2-D table for a row-major grid of grid_h x grid_w tokens -> float32 [grid_h * grid_w, embed_dim].

    Both reference implementations build `meshgrid(w, h)`, so the first half of the channels follows the
    column coordinate and the second half the row coordinate; `spacing` divides the integer positions
    (diffusers' `base_size` / OpenSora's `scale` reduce to this for the grids EchoFlow uses).
    """
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {embed_dim}")
    rows = torch.arange(grid_h, dtype=torch.float64) / spacing
    cols = torch.arange(grid_w, dtype=torch.float64) / spacing
    row_grid, col_grid = torch.meshgrid(rows, cols, indexing="ij")  # [h, w] each
    first = sincos_1d(embed_dim // 2, col_grid)
    second = sincos_1d(embed_dim // 2, row_grid)
    return torch.cat([first, second], dim=1).to(torch.float32)


# ----------------------------------------------------------------------------------------------------
# Timestep features
# ----------------------------------------------------------------------------------------------------


def timestep_features(t: torch.Tensor, dim: int = 256, freq_shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal timestep features in [cos | sin] order -> float32 [B, dim].

    freq_shift=1 gives diffusers' `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)` (LIFM),
    freq_shift=0 gives OpenSora's GLIDE embedding (LVFM).
    """
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))  # [half]
    args = t.reshape(-1).float()[:, None] * freqs[None, :]  # [B, half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN modulation x * (1 + scale) + shift (shift/scale broadcast over tokens)."""
    return x * (1 + scale) + shift


def modulate_(normed: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, inplace: bool) -> torch.Tensor:
    """normed * (1 + scale) + shift in one pass (addcmul); written over `normed`, a fresh buffer the caller
    owns, when `inplace` (sampling without autograd)."""
    if inplace:
        return torch.addcmul(shift, normed, 1 + scale, out=normed)
    return torch.addcmul(shift, normed, 1 + scale)


def gated_add(x: torch.Tensor, gate: torch.Tensor, branch: torch.Tensor, inplace: bool) -> torch.Tensor:
    """x + gate * branch; in place on the residual stream when `inplace`."""
    return x.addcmul_(gate, branch) if inplace else torch.addcmul(x, gate, branch)


def gelu_tanh_(x: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    """tanh-GELU written over `x` (a buffer the caller owns); out of place where torch lacks the kernel."""
    inplace = getattr(torch._C._nn, "gelu_", None)
    return inplace(x, approximate=approximate) if inplace is not None else F.gelu(x, approximate=approximate)


class Mlp(nn.Module):
    """Two linear layers with tanh-GELU between them (timm `Mlp` key names: fc1, fc2)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, H*d] -> [B, H, N, d]."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)
