"""LIFM: latent image flow matching with `SegDiTTransformer2DModel` (a diffusers DiT plus an LV-mask channel).

noise -> latent image, conditioned on the echo view (a class label with a null row for guidance) and an
optional binary LV mask concatenated to the latent before patch embedding. Keys and numerics follow the
reference (diffusers 0.30.3 `DiTTransformer2DModel` blocks), so `lifm/<name>/` loads unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import gated_add, gelu_tanh_, modulate_, sincos_2d, split_heads, timestep_features

# Transformer sizes by name (`python -m bench` builds these; `{**RELEASE_LAYOUT, **SIZE_PRESETS[name]}` is a
# full config). DiT-S/2 and DiT-B/2 are the DiT paper's S and B models (Peebles & Xie 2023, table 1: 12
# layers of width 384 = 6 heads x 64, and of width 768 = 12 heads x 64; "/2" is the patch size). The
# released LIFM's size is not published (spec 2.2); DiT-S/2 is the plausible one whose state-dict keys
# tests/fixtures/echoflow-reference/manifests.json lists. DiT-tiny is the size of the reference fixture
# lifm/tiny.
SIZE_PRESETS: dict[str, dict[str, int]] = {
    "DiT-S/2": {"num_attention_heads": 6, "attention_head_dim": 64, "num_layers": 12},
    "DiT-B/2": {"num_attention_heads": 12, "attention_head_dim": 64, "num_layers": 12},
    "DiT-tiny": {"num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 2},
}
# The latent layout of the release (spec 2.2): a 4x28x28 avae-4f4 latent plus the 1-channel LV mask in,
# the velocity out, patch 2, three views (A4C, PSAX, PLAX).
RELEASE_LAYOUT: dict[str, int] = {
    "in_channels": 5, "out_channels": 4, "sample_size": 28, "patch_size": 2, "num_embeds_ada_norm": 3,
}


@dataclass
class SegDiTConfig:
    """The reference's `register_to_config` keys (spec 2.2). Values this code does not implement are refused
    by `validate`; the fields marked below are accepted whatever their value, for the reason given."""

    num_attention_heads: int = 16
    attention_head_dim: int = 72
    in_channels: int = 4
    out_channels: int | None = None
    num_layers: int = 28
    # Training only: diffusers drops attention/MLP activations in train mode; inference never does, and the
    # trainer here builds its configs with 0.0. Accepted so released configs load whatever they record.
    dropout: float = 0.0
    norm_num_groups: int = 32  # unused by the reference DiT too (it has no GroupNorm); kept so configs round-trip
    attention_bias: bool = True
    sample_size: int = 32
    patch_size: int = 2
    activation_fn: str = "gelu-approximate"
    num_embeds_ada_norm: int = 1000
    # A precision knob of diffusers' pre-PyTorch-2 attention (`get_attention_scores`); the scaled-dot-product
    # processor diffusers uses on PyTorch 2 ignores it, as this code does, and in float32 it changes
    # nothing either way. Accepted, not refused: the reference computes the same thing with either value.
    upcast_attention: bool = False
    norm_type: str = "ada_norm_zero"
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-5

    def validate(self) -> None:
        implemented = {
            "norm_type": (self.norm_type, "ada_norm_zero", "the AdaLN-Zero blocks of DiT are the only ones built"),
            "activation_fn": (self.activation_fn, "gelu-approximate", "the feed-forward uses the tanh GELU"),
            "norm_elementwise_affine": (self.norm_elementwise_affine, False,
                                        "the MLP LayerNorm is built without weight and bias"),
        }
        for name, (value, supported, why) in implemented.items():
            if value != supported:
                raise ValueError(
                    f"SegDiT config: {name}={value!r} is not supported; only {supported!r} is implemented ({why})"
                )
        if self.sample_size % self.patch_size:
            raise ValueError(f"SegDiT config: sample_size {self.sample_size} not divisible by patch_size")

    @property
    def latent_channels(self) -> int:
        return self.out_channels or self.in_channels


class PatchEmbed(nn.Module):
    """Conv patchify + fixed 2-D sin-cos table (non-persistent: recomputed, never stored)."""

    def __init__(self, sample_size: int, patch: int, in_ch: int, dim: int):
        super().__init__()
        self.patch = patch
        self.base_grid = sample_size // patch
        self.proj = nn.Conv2d(in_ch, dim, patch, stride=patch)
        self.register_buffer("pos_embed", sincos_2d(dim, self.base_grid, self.base_grid)[None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gh, gw = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # [B, gh*gw, D]
        if (gh, gw) == (self.base_grid, self.base_grid):
            table = self.pos_embed
        else:  # diffusers keeps the native grid's spacing for other sizes
            table = sincos_2d(tokens.shape[-1], gh, gw, spacing=gh / self.base_grid)[None].to(x.device)
        return (tokens + table).to(tokens.dtype)


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(256, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(feats)))


class LabelEmbedding(nn.Module):
    """Class table with one extra row, the null class, used for guidance and label dropout."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class TimestepLabelEmbedding(nn.Module):
    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(dim)
        self.class_embedder = LabelEmbedding(num_classes, dim)

    def forward(
        self, t: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype, feats: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`feats`: `timestep_features(t)` when the caller already has them (one per forward, not per block)."""
        if feats is None:
            feats = timestep_features(t, 256, freq_shift=1.0)
        return self.timestep_embedder(feats.to(dtype)) + self.class_embedder(labels)


class AdaLayerNormZero(nn.Module):
    """Per-block conditioning -> (shift, scale, gate) for attention and MLP."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.emb = TimestepLabelEmbedding(num_classes, dim)
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(
        self, t: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype, feats: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.linear(F.silu(self.emb(t, labels, dtype, feats)))  # [B, 6D]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(dim, dim, bias=bias)
        self.to_v = nn.Linear(dim, dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self._qkv_cache: tuple | None = None

    def _fused_qkv(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The q/k/v projections as one cached [3D, D] weight, for inference (one GEMM instead of three).

        Rebuilt whenever a projection's storage, version (in-place updates, `load_state_dict`), dtype or
        device changes; never used while gradients flow into the weights (training keeps the three layers).
        The cache is a plain attribute, so state-dict keys are unchanged."""
        projs = (self.to_q, self.to_k, self.to_v)
        if _is_compiling():  # traced: no Python-side cache (freezing folds the concatenation)
            bias = torch.cat([p.bias for p in projs]) if self.to_q.bias is not None else None
            return torch.cat([p.weight for p in projs]), bias
        if any(p.weight.is_inference() for p in projs) or (
            torch.is_grad_enabled() and any(p.weight.requires_grad for p in projs)
        ):
            return None
        key = tuple((p.weight.data_ptr(), p.weight._version, p.weight.dtype, p.weight.device) for p in projs)
        if self._qkv_cache is None or self._qkv_cache[0] != key:
            weight = torch.cat([p.weight for p in projs])
            bias = torch.cat([p.bias for p in projs]) if self.to_q.bias is not None else None
            self._qkv_cache = (key, weight, bias)
        return self._qkv_cache[1], self._qkv_cache[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        fused = self._fused_qkv()
        if fused is not None:
            q, k, v = F.linear(x, *fused).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = (split_heads(proj(x), self.heads) for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, d]
        return self.to_out[0](out.transpose(1, 2).reshape(b, n, c))


class GeluProj(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # the projection's output is ours: no second hidden-sized buffer
            return gelu_tanh_(self.proj(x), approximate="tanh")
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # index 1 is the (parameter-free) dropout in diffusers; kept so key names stay `net.0` / `net.2`
        self.net = nn.ModuleList([GeluProj(dim, mult * dim), nn.Identity(), nn.Linear(mult * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class DiTBlock(nn.Module):
    def __init__(self, cfg: SegDiTConfig):
        super().__init__()
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        self.norm1 = AdaLayerNormZero(dim, cfg.num_embeds_ada_norm)
        self.attn1 = SelfAttention(dim, cfg.num_attention_heads, cfg.attention_bias)
        self.ff = FeedForward(dim)
        self.norm_eps = cfg.norm_eps

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, feats: torch.Tensor | None = None
    ) -> torch.Tensor:
        mods = self.norm1(t, labels, x.dtype, feats)[:, None]  # [B, 1, 6D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=-1)
        # Modulation and gated residuals each in one pass (addcmul); without autograd (sampling) they
        # write over buffers this block owns (the residual stream, fresh norm outputs) instead of
        # allocating new token-sized ones.
        inplace = not torch.is_grad_enabled()
        h = modulate_(F.layer_norm(x, x.shape[-1:], eps=1e-6), shift_msa, scale_msa, inplace)
        x = gated_add(x, gate_msa, self.attn1(h), inplace)
        h = modulate_(F.layer_norm(x, x.shape[-1:], eps=self.norm_eps), shift_mlp, scale_mlp, inplace)
        return gated_add(x, gate_mlp, self.ff(h), inplace)


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_compiling", lambda: False)())


class SegDiTTransformer2DModel(nn.Module):
    """`lifm(x, t, view, mask=None)` -> velocity.

    x: [B, C, H, W] scaled latent; t: [B] (or scalar) flow time in [0, 1]; view: [B] long (0 A4C, 1 PSAX,
    2 PLAX; `num_classes` is the null class); mask: [B, 1, H, W] in {0, 1} at latent size, zeros when None
    (as the reference demo passes) -> velocity [B, out_channels, H, W].
    """

    config_class = SegDiTConfig
    class_name = "SegDiTTransformer2DModel"
    kind = "lifm"  # the folder it lives under in a weights root: lifm/<name>/

    def __init__(self, config: SegDiTConfig):
        super().__init__()
        config.validate()
        self.config = config
        dim = config.num_attention_heads * config.attention_head_dim
        self.patch = config.patch_size
        self.out_channels = config.latent_channels
        self.pos_embed = PatchEmbed(config.sample_size, config.patch_size, config.in_channels, dim)
        self.transformer_blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.num_layers))
        self.proj_out_1 = nn.Linear(dim, 2 * dim)
        self.proj_out_2 = nn.Linear(dim, config.patch_size**2 * self.out_channels)

    @property
    def num_classes(self) -> int:
        return self.config.num_embeds_ada_norm

    @property
    def mask_channels(self) -> int:
        return self.config.in_channels - self.out_channels

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, view: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, _, h, w = x.shape
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(b)
        view = torch.as_tensor(view, device=x.device).reshape(-1).expand(b)
        if self.mask_channels:
            if mask is None:
                mask = x.new_zeros(b, self.mask_channels, h, w)
            x = torch.cat([x, mask.to(x.dtype)], dim=1)
        elif mask is not None:
            raise ValueError("this LIFM was built without a mask channel (in_channels == out_channels)")
        tokens = self.pos_embed(x)  # [B, N, D]
        feats = timestep_features(t, 256, freq_shift=1.0)  # once, shared by every block's embedder
        for block in self.transformer_blocks:
            tokens = block(tokens, t, view, feats)
        cond = self.transformer_blocks[0].norm1.emb(t, view, tokens.dtype, feats)
        shift, scale = self.proj_out_1(F.silu(cond))[:, None].chunk(2, dim=-1)
        tokens = F.layer_norm(tokens, tokens.shape[-1:], eps=1e-6) * (1 + scale) + shift
        return self.unpatchify(self.proj_out_2(tokens), h // self.patch, w // self.patch)

    def unpatchify(self, tokens: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        """[B, gh*gw, p*p*C] -> [B, C, gh*p, gw*p]."""
        p, c = self.patch, self.out_channels
        x = tokens.reshape(-1, gh, gw, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(-1, c, gh * p, gw * p)

    def initialize_weights(self) -> None:
        """DiT-paper initialisation for training from scratch: zeroed AdaLN-Zero and output layers."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        proj = self.pos_embed.proj.weight
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        for block in self.transformer_blocks:
            nn.init.normal_(block.norm1.emb.class_embedder.embedding_table.weight, std=0.02)
            nn.init.normal_(block.norm1.emb.timestep_embedder.linear_1.weight, std=0.02)
            nn.init.normal_(block.norm1.emb.timestep_embedder.linear_2.weight, std=0.02)
            nn.init.zeros_(block.norm1.linear.weight)
        nn.init.zeros_(self.proj_out_1.weight)
        nn.init.zeros_(self.proj_out_2.weight)
