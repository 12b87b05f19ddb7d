"""How much memory one forward pass needs beyond the weights: what a model manager (ComfyUI's
`load_models_gpu(memory_required=...)`) reserves before running, so it frees or offloads other models first.

Estimates are upper bounds from the configs: the widest tensors alive at once in the heaviest block, the
attention scores counted as if materialised (the CPU path and some GPUs do), times a 25 % margin.
"""

from __future__ import annotations

import torch
from torch import nn

MARGIN = 1.25


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _transformer_block(batch: int, tokens: int, hidden: int, heads: int, mlp_ratio: float, score_elems: int) -> int:
    """Elements alive in one pre-norm transformer block: input, normed copy, q/k/v, attention output, the MLP's
    hidden layer (with its activation) and the attention scores."""
    return batch * (tokens * hidden * (6 + 2 * mlp_ratio) + score_elems)


def activation_bytes(model: nn.Module, batch: int, dtype: torch.dtype = torch.float32) -> int:
    """Peak activation bytes of `model` on `batch` items: latent images for the LIFM and the ReID, latent
    videos for the LVFM (count both guidance branches in `batch`), frames to decode for the VAE, videos for
    the EF regressor, frames for the LV segmentation network."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    size = _bytes(dtype)
    name = getattr(model, "class_name", type(model).__name__)
    cfg = getattr(model, "config", None)
    if name == "SegDiTTransformer2DModel":
        tokens = (cfg.sample_size // cfg.patch_size) ** 2
        heads = cfg.num_attention_heads
        elems = _transformer_block(batch, tokens, heads * cfg.attention_head_dim, heads, 4.0, heads * tokens * tokens)
    elif name == "DiffuserSTDiT":
        frames, height, width = cfg.input_size
        pt, ph, pw = cfg.patch_size
        space, time = (height // ph) * (width // pw), frames // pt
        heads = cfg.num_heads
        scores = max(time * heads * space * space, space * heads * time * time)  # spatial vs temporal attention
        elems = _transformer_block(batch, space * time, cfg.hidden_size, heads, cfg.mlp_ratio, scores)
    elif name == "AutoencoderKL":
        side = getattr(cfg, "sample_size", 112) or 112
        side = max(side, 112)
        # the decoder's last stage runs at full resolution with the first block's channels: input, two convs'
        # outputs, the norm and the skip are alive together
        elems = batch * cfg.block_out_channels[0] * side * side * 5
    elif name == "EFRegressor":  # the stem runs on the resampled clip with the first stage's channels
        elems = batch * cfg.frames * cfg.size * cfg.size * cfg.channels[0] * 6
    elif name == "LVSegNet":  # frames at full resolution: the first and last blocks' convs, norms, the skip
        elems = batch * cfg.size * cfg.size * cfg.channels[0] * 8
    elif name == "ReID":  # a ResNet18 on [C, 28, 28] latents: its stem at the latent's resolution dominates
        elems = batch * cfg.width * 28 * 28 * 6
    else:
        raise ValueError(f"no activation-memory estimate for {name}; add one to echoflow_models/memory.py")
    return int(elems * size * MARGIN)
