"""LVFM: latent video flow matching with `DiffuserSTDiT` (OpenSora-v1 STDiT as modified by EchoFlow).

Animates a latent image into a latent video conditioned on the ejection fraction. Three details of the
reference are load-bearing for the released weights and reproduced here on purpose:

* self-attention reshapes its `[B, heads, N, d]` output straight to `[B, N, heads*d]` (no head/token
  transpose), so heads and tokens are mixed in the projection input;
* the temporal branch reuses the spatial branch's `gate_msa` and runs on the un-normalised tokens;
* the EF is a one-token "caption" with one channel (EF / 100) attended by every token.

One extension, off unless a config asks for it: `caption_adaln: true` also adds the caption embedding to
the timestep embedding, so the EF drives every block's AdaLN shift/scale/gate and the final layer (how DiT
conditions on a class). With a single caption token, cross-attention can only add one vector to every
token; a small model trained briefly on the CPU learns little from that (the bundled demo LVFM uses the
extension; released configs lack the key and run the reference forward).

All weights live under `model.` as in the released `lvfm/<name>/diffusion_pytorch_model.safetensors`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    Mlp,
    gated_add,
    gelu_tanh_,
    modulate,
    modulate_,
    sincos_1d,
    sincos_2d,
    split_heads,
    timestep_features,
)

log = logging.getLogger(__name__)

# Transformer sizes by name (`python -m bench` builds these; `{**RELEASE_LAYOUT, **SIZE_PRESETS[name]}` is a
# full config). S/2 and B/2 are the STDiT configs of EchoFlow's own codebase (spec 2.4, from its
# `lvfm/configs/*.yaml`: S = hidden 384, depth 12, 6 heads; B = 768 / 12 / 12; "/2" the spatial patch).
# The released LVFM's size is not published; STDiT-S/2 is the plausible one whose state-dict keys
# tests/fixtures/echoflow-reference/manifests.json lists. STDiT-tiny is the size of the reference fixture
# lvfm/tiny.
SIZE_PRESETS: dict[str, dict[str, int]] = {
    "STDiT-S/2": {"hidden_size": 384, "depth": 12, "num_heads": 6},
    "STDiT-B/2": {"hidden_size": 768, "depth": 12, "num_heads": 12},
    "STDiT-tiny": {"hidden_size": 64, "depth": 2, "num_heads": 4},
}
# The latent layout of the release (spec 2.4): 64 frames of 4x28x28 avae-4f4 latents plus the conditioning
# latent image in (8 channels), the velocity out, patch [1, 2, 2], the EF as one one-channel caption token.
RELEASE_LAYOUT: dict = {
    "input_size": [64, 28, 28], "in_channels": 8, "out_channels": 4, "patch_size": [1, 2, 2],
    "caption_channels": 1, "model_max_length": 1,
}


@dataclass
class STDiTConfig:
    input_size: list[int] = field(default_factory=lambda: [1, 32, 32])  # T, H, W of the latent video
    in_channels: int = 4
    out_channels: int = 4
    patch_size: list[int] = field(default_factory=lambda: [1, 2, 2])
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    # Training only: the share of steps whose EF is swapped for the null caption. Inference never drops it
    # (guidance asks for the null caption explicitly); the trainer reads its own --p-drop-ef.
    class_dropout_prob: float = 0.1
    drop_path: float = 0.0
    # Accepted and ignored on purpose: the reference STDiT (spec 2.4, "unused") stores this flag but always
    # adds the temporal position embedding in block 0, and so does this code. Refusing True would refuse a
    # config the reference runs; honouring it would compute something the released weights never saw.
    # `validate` logs a warning so the mismatch is not silent.
    no_temporal_pos_emb: bool = False
    caption_channels: int = 4096
    model_max_length: int = 120
    space_scale: float = 1.0
    time_scale: float = 1.0
    enable_flashattn: bool = False  # the reference's xformers switch; SDPA is always used here
    # Extension (not in the release): the caption embedding, averaged over its tokens, is added to the
    # timestep embedding that drives AdaLN. The null caption (dropped EF) takes the same path.
    caption_adaln: bool = False

    def validate(self) -> None:
        if len(self.input_size) != 3 or len(self.patch_size) != 3:
            raise ValueError("STDiT config: input_size and patch_size must be [T, H, W]")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"STDiT config: hidden_size {self.hidden_size} not divisible by num_heads")
        if self.drop_path:
            raise ValueError(
                f"STDiT config: drop_path={self.drop_path!r} is not supported; only 0.0 is implemented "
                "(no stochastic depth: every block always runs)"
            )
        if self.no_temporal_pos_emb:
            log.warning(
                "STDiT config: no_temporal_pos_emb=True is ignored, as the reference STDiT ignores it: the "
                "temporal position embedding is always added (in the first block)"
            )

    @property
    def frames(self) -> int:
        return self.input_size[0]


class QuirkAttention(nn.Module):
    """Multi-head self-attention whose output is reshaped without transposing heads and tokens."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, d]
        return self.proj(out.reshape(b, n, c))  # the released weights expect this layout


class CaptionCrossAttention(nn.Module):
    """Each sample's tokens attend to that sample's caption tokens only."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, caption: torch.Tensor) -> torch.Tensor:
        """x: [B, N, C]; caption: [B, L, C] -> [B, N, C]."""
        b, n, c = x.shape
        k, v = self.kv_linear(caption).chunk(2, dim=-1)  # [B, L, C] each
        if caption.shape[1] == 1:
            # softmax over a single key is exactly 1: every token receives that token's value.
            return self.proj(v).expand(b, n, c)
        q = split_heads(self.q_linear(x), self.heads)
        out = F.scaled_dot_product_attention(q, split_heads(k, self.heads), split_heads(v, self.heads))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.mlp(timestep_features(t, 256, freq_shift=0.0).to(dtype))


class CaptionEmbedder(nn.Module):
    """EF token(s) -> hidden; `y_embedding` is the learned-as-buffer null caption used for dropout/guidance."""

    def __init__(self, caption_channels: int, dim: int, max_length: int):
        super().__init__()
        self.y_proj = Mlp(caption_channels, dim, dim)
        self.register_buffer("y_embedding", torch.randn(max_length, caption_channels) / caption_channels**0.5)

    def forward(self, caption: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """caption: [B, L, caption_channels]; drop: [B] bool, True -> null caption -> [B, L, dim]."""
        if drop is not None:
            caption = torch.where(drop[:, None, None], self.y_embedding.to(caption.dtype), caption)
        return self.y_proj(caption)


class STDiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, has_caption: bool):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)
        self.attn = QuirkAttention(dim, heads)
        self.attn_temp = QuirkAttention(dim, heads)
        self.cross_attn = CaptionCrossAttention(dim, heads) if has_caption else None
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)

    def forward(
        self,
        x: torch.Tensor,
        t0: torch.Tensor,
        caption: torch.Tensor | None,
        frames: int,
        temporal_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, T*S, C]; t0: [B, 6C]; caption: [B, L, C].

        Without autograd (sampling) the residual stream is updated in place and the temporal branch's
        result is added back through a strided view, so a block allocates few token-sized buffers; with
        autograd every step is out of place. Both compute the same thing.
        """
        b, n, c = x.shape
        s = n // frames
        mods = self.scale_shift_table[None] + t0.reshape(b, 6, c)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=1)  # [B, 1, C]
        inplace = not torch.is_grad_enabled()

        # spatial attention within each frame
        x_s = modulate_(F.layer_norm(x, (c,), eps=1e-6), shift_msa, scale_msa, inplace)
        x_s = self.attn(x_s.reshape(b * frames, s, c)).reshape(b, n, c)
        x = gated_add(x, gate_msa, x_s, inplace)

        # temporal attention at each position, on the un-modulated tokens, with the same gate; the tokens
        # are made contiguous in (B S) T C order so its projections run as plain 2-D GEMMs
        x_t = x.reshape(b, frames, s, c).transpose(1, 2).contiguous().reshape(b * s, frames, c)
        if temporal_pos is not None:
            x_t = x_t + temporal_pos
        x_t = self.attn_temp(x_t).reshape(b, s, frames, c).transpose(1, 2)  # [B, T, S, C], strided
        if inplace:
            x.view(b, frames, s, c).addcmul_(gate_msa[:, None], x_t)
        else:
            x = x + gate_msa * x_t.reshape(b, n, c)

        if self.cross_attn is not None and caption is not None:
            cross = self.cross_attn(x, caption)
            x = x.add_(cross) if inplace else x + cross

        h = modulate_(F.layer_norm(x, (c,), eps=1e-6), shift_mlp, scale_mlp, inplace)
        if inplace:
            h = self.mlp.fc2(gelu_tanh_(self.mlp.fc1(h), approximate="tanh"))
        else:
            h = self.mlp(h)
        return gated_add(x, gate_mlp, h, inplace)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_features: int):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.linear = nn.Linear(dim, out_features)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)  # [B, 1, C]
        return self.linear(modulate(F.layer_norm(x, x.shape[-1:], eps=1e-6), shift, scale))


class PatchEmbed3D(nn.Module):
    def __init__(self, patch: list[int], in_ch: int, dim: int):
        super().__init__()
        self.patch = tuple(patch)
        self.proj = nn.Conv3d(in_ch, dim, kernel_size=self.patch, stride=self.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pt, ph, pw = self.patch
        _, _, t, h, w = x.shape
        pad = (0, (-w) % pw, 0, (-h) % ph, 0, (-t) % pt)
        if any(pad):
            x = F.pad(x, pad)
        return self.proj(x)  # [B, C, T', H', W']


class STDiT(nn.Module):
    def __init__(self, cfg: STDiTConfig):
        super().__init__()
        self.cfg = cfg
        dim, (pt, ph, pw) = cfg.hidden_size, cfg.patch_size
        t, h, w = cfg.input_size
        self.x_embedder = PatchEmbed3D(cfg.patch_size, cfg.in_channels, dim)
        # Both tables are persistent buffers in the released checkpoints.
        self.register_buffer("pos_embed", sincos_2d(dim, h // ph, w // pw, spacing=cfg.space_scale)[None])
        temporal = sincos_1d(dim, torch.arange(t // pt, dtype=torch.float64) / cfg.time_scale)
        self.register_buffer("pos_embed_temporal", temporal.to(torch.float32)[None])
        self.t_embedder = TimestepEmbedder(dim)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        has_caption = cfg.caption_channels > 0
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, dim, cfg.model_max_length) if has_caption else None
        self.blocks = nn.ModuleList(
            STDiTBlock(dim, cfg.num_heads, cfg.mlp_ratio, has_caption) for _ in range(cfg.depth)
        )
        self.final_layer = FinalLayer(dim, pt * ph * pw * cfg.out_channels)

    def _spatial_table(self, gh: int, gw: int, like: torch.Tensor) -> torch.Tensor:
        if self.pos_embed.shape[1] == gh * gw:
            return self.pos_embed.to(like.dtype)
        return sincos_2d(like.shape[-1], gh, gw, spacing=self.cfg.space_scale)[None].to(like)

    def _temporal_table(self, frames: int, like: torch.Tensor) -> torch.Tensor:
        if self.pos_embed_temporal.shape[1] == frames:
            return self.pos_embed_temporal.to(like.dtype)
        positions = torch.arange(frames, dtype=torch.float64) / self.cfg.time_scale
        return sincos_1d(like.shape[-1], positions)[None].to(like)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        caption: torch.Tensor | None,
        drop_caption: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, C_in, T, H, W]; t: [B]; caption: [B, L, caption_channels] -> [B, C_out, T, H, W]."""
        b = x.shape[0]
        tokens = self.x_embedder(x)  # [B, C, Nt, Nh, Nw]
        _, c, nt, nh, nw = tokens.shape
        tokens = tokens.flatten(3).permute(0, 2, 3, 1)  # [B, Nt, S, C]
        tokens = (tokens + self._spatial_table(nh, nw, tokens)).reshape(b, nt * nh * nw, c)

        y = None
        if self.y_embedder is not None and caption is not None:
            y = self.y_embedder(caption.to(tokens.dtype), drop_caption)  # [B, L, C]
        t_emb = self.t_embedder(t, tokens.dtype)  # [B, C]
        if self.cfg.caption_adaln and y is not None:
            t_emb = t_emb + y.mean(1)  # the caption also modulates every block (see STDiTConfig)
        t0 = self.t_block(t_emb)  # [B, 6C]

        temporal = self._temporal_table(nt, tokens)
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, t0, y, nt, temporal if i == 0 else None)
        out = self.final_layer(tokens, t_emb)  # [B, N, pt*ph*pw*C_out]
        return self.unpatchify(out, nt, nh, nw)

    def unpatchify(self, x: torch.Tensor, nt: int, nh: int, nw: int) -> torch.Tensor:
        pt, ph, pw = self.cfg.patch_size
        c = self.cfg.out_channels
        x = x.reshape(x.shape[0], nt, nh, nw, pt, ph, pw, c)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # B C Nt pt Nh ph Nw pw
        return x.reshape(x.shape[0], c, nt * pt, nh * ph, nw * pw)


class DiffuserSTDiT(nn.Module):
    """`lvfm(x, t, ef, cond)` -> velocity.

    x: [B, C, T, H, W] scaled noisy latent video; t: [B] (or scalar) flow time in [0, 1];
    ef: [B] ejection fraction as a fraction (0.55 for 55 %), or [B, L, caption_channels];
    cond: the conditioning latent image [B, C, H, W] (repeated over T) or [B, C, T, H, W];
    drop_ef: optional [B] bool selecting the null caption (classifier-free guidance / EF dropout)
    -> velocity [B, out_channels, T, H, W].
    """

    config_class = STDiTConfig
    class_name = "DiffuserSTDiT"
    kind = "lvfm"  # the folder it lives under in a weights root: lvfm/<name>/

    def __init__(self, config: STDiTConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.model = STDiT(config)

    @property
    def latent_channels(self) -> int:
        return self.config.out_channels

    @property
    def num_frames(self) -> int:
        return self.config.frames

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        ef: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        drop_ef: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype).reshape(-1).expand(b)
        caption = None
        if ef is not None:
            ef = torch.as_tensor(ef, device=x.device, dtype=x.dtype)
            caption = ef.reshape(b, 1, 1) if ef.numel() == b else ef.reshape(b, -1, self.config.caption_channels)
        if cond is not None:
            if cond.ndim == 4:
                cond = cond[:, :, None].expand(-1, -1, x.shape[2], -1, -1)
            if cond.shape != x.shape:
                raise ValueError(
                    f"LVFM conditioning latent has shape {tuple(cond.shape)}, expected {tuple(x.shape)} "
                    "or the same without the frame axis"
                )
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        expected = self.config.in_channels
        if x.shape[1] != expected:
            raise ValueError(
                f"LVFM expects {expected} input channels (noisy latent + conditioning image), got {x.shape[1]}; "
                "pass cond= with the latent image"
            )
        return self.model(x, t, caption, drop_ef)

    def initialize_weights(self) -> None:
        """The reference STDiT initialisation, for training from scratch."""
        m = self.model
        for module in m.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = m.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(m.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(m.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(m.t_block[1].weight, std=0.02)
        if m.y_embedder is not None:
            nn.init.normal_(m.y_embedder.y_proj.fc1.weight, std=0.02)
            nn.init.normal_(m.y_embedder.y_proj.fc2.weight, std=0.02)
        for block in m.blocks:
            nn.init.zeros_(block.attn_temp.proj.weight)
            nn.init.zeros_(block.attn_temp.proj.bias)
            if block.cross_attn is not None:
                nn.init.zeros_(block.cross_attn.proj.weight)
                nn.init.zeros_(block.cross_attn.proj.bias)
        nn.init.zeros_(m.final_layer.linear.weight)
        nn.init.zeros_(m.final_layer.linear.bias)
