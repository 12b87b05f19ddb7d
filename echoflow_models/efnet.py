"""`EFRegressor`: a small 3-D CNN that reads the ejection fraction off a pixel video (for evaluation).

`model(frames)` with frames `[B, 3, T, H, W]` (or `[B, T, H, W]`) in [-1, 1] -> EF in percent `[B]`. The
video is averaged to grayscale and resampled inside the model to `frames` x `size` x `size` (trilinear), so
any clip works; it is meant for 2-second clips (64 frames at 32 fps, what the LVFM generates). Spatially
pooled features are summarised over time by their mean and standard deviation, so the head sees how much
the picture changes through the beat, which is what EF is about.

Loadable like the release's networks: `save_model(model, folder)` writes `config.json`
(`_class_name: EFRegressor`) + `diffusion_pytorch_model.safetensors`, and `load_model(folder)` reads it back
(importing `echoflow_models` registers the class).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import register_model_class


@dataclass
class EFRegressorConfig:
    frames: int = 32  # temporal size the clip is resampled to
    # frames (at 32 fps) of the clips it was trained on; a longer input is cut to its middle clip_frames
    # first, so the model sees the heart rate it learned. 0: the whole input, whatever its length
    clip_frames: int = 0
    size: int = 56  # spatial size the clip is resampled to
    channels: list[int] = field(default_factory=lambda: [16, 24, 48, 96])
    temporal_strides: list[int] = field(default_factory=lambda: [1, 2, 2])  # of the three stages after the stem
    head_hidden: int = 64
    norm_groups: int = 8
    ef_mean: float = 50.0  # output = ef_mean + ef_scale * raw
    ef_scale: float = 20.0

    def validate(self) -> None:
        if len(self.channels) != 4 or len(self.temporal_strides) != 3:
            raise ValueError("EFRegressor config: channels needs 4 entries (stem + 3 stages), temporal_strides 3")
        if any(c % self.norm_groups for c in self.channels):
            raise ValueError(f"EFRegressor config: channels {self.channels} must be multiples of norm_groups")
        if self.clip_frames < 0:
            raise ValueError(f"EFRegressor config: clip_frames must be >= 0, got {self.clip_frames}")
        if self.frames < 2 or self.size < 8:
            raise ValueError("EFRegressor config: frames must be >= 2 and size >= 8")


def _conv(cin: int, cout: int, groups: int, stride=(1, 1, 1), kernel=(3, 3, 3)) -> nn.Sequential:
    pad = tuple(k // 2 for k in kernel)
    return nn.Sequential(nn.Conv3d(cin, cout, kernel, stride, pad, bias=False), nn.GroupNorm(groups, cout), nn.SiLU())


class EFRegressor(nn.Module):
    config_class = EFRegressorConfig
    class_name = "EFRegressor"
    kind = "ef"  # the folder it lives under in a weights root: ef/<name>/

    def __init__(self, config: EFRegressorConfig):
        super().__init__()
        config.validate()
        self.config = config
        c, g = config.channels, config.norm_groups
        self.stem = _conv(1, c[0], g, stride=(1, 2, 2), kernel=(3, 5, 5))
        self.stages = nn.ModuleList(
            nn.Sequential(_conv(c[i], c[i + 1], g, stride=(config.temporal_strides[i], 2, 2)),
                          _conv(c[i + 1], c[i + 1], g))
            for i in range(3)
        )
        self.head = nn.Sequential(nn.Linear(2 * c[-1], config.head_hidden), nn.SiLU(), nn.Linear(config.head_hidden, 1))

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] / [B, 1, T, H, W] / [B, T, H, W] in [-1, 1] -> [B, 1, frames, size, size]."""
        if frames.ndim == 4:
            frames = frames[:, None]
        if frames.ndim != 5:
            raise ValueError(f"EFRegressor expects [B, 3, T, H, W] frames in [-1, 1], got {tuple(frames.shape)}")
        x = frames.float().mean(1, keepdim=True)
        t, clip = x.shape[2], self.config.clip_frames
        if 0 < clip < t:
            start = (t - clip) // 2
            x = x[:, :, start: start + clip]
        size = (self.config.frames, self.config.size, self.config.size)
        if tuple(x.shape[-3:]) != size:
            x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
        return x

    def forward_prepared(self, x: torch.Tensor) -> torch.Tensor:
        # Autocast is switched off: EF is read from the small temporal spread of the features, which
        # bfloat16 rounds away (a bf16-autocast regressor does not learn). The network is small anyway.
        with torch.autocast(device_type=x.device.type, enabled=False):
            dtype = self.head[0].weight.dtype
            h = self.stem(x.to(dtype))
            for stage in self.stages:
                h = stage(h)
            h = h.float().mean(dim=(3, 4))  # [B, C, T']
            feats = torch.cat([h.mean(2), h.std(2, unbiased=False)], dim=1)
            raw = self.head(feats.to(dtype)).squeeze(-1)
        return self.config.ef_mean + self.config.ef_scale * raw.float()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.forward_prepared(self.prepare(frames))


def video_to_input(frames) -> torch.Tensor:
    """uint8 video(s) [T, H, W(, C)] or [B, T, H, W(, C)] -> float [B, 3, T, H, W] in [-1, 1]: the one way a
    video reaches the EF regressor (evaluation, relabelling and the Estimate EF node). Colour is read as gray
    (`vae.frames_to_gray`), the pixel range as everywhere (x / 128 - 1)."""
    from .vae import frames_to_gray

    x = frames_to_gray(frames)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"a video for the EF regressor is [T, H, W(, C)] or [B, T, H, W(, C)], got {tuple(x.shape)}")
    return (x.float() / 128.0 - 1.0)[:, None].expand(-1, 3, -1, -1, -1)


register_model_class(EFRegressor)
