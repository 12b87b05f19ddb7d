"""`LVSegNet`: a small 2-D U-Net that outlines the left-ventricular cavity in every frame of an echo video.

It is the project's second EF instrument: EF read from the LV's own motion (segment every frame, volume
curve, ED/ES, EDV/ESV; `echoflow_models.lv_ef`), the EchoNet-Dynamic way, independent of the 3-D EF
regressor (`efnet`), which can be fooled by texture cues a generator learns to attach to the EF.

`model(x)` with x `[B, 1, H, W]` (or `[B, H, W]`) in [-1, 1] -> LV logits `[B, 1, H, W]`; frames of another
size than `config.size` are resized in and the logits resized back. `model.segment(frames)` takes uint8
frames `[T, H, W(, C)]` and returns bool masks `[T, H, W]`: the largest connected region, holes filled, so
one speckle blob or a gap in the wall does not change the area much.

Loadable like the release's networks: `save_model(model, folder)` writes `config.json`
(`_class_name: LVSegNet`) + `diffusion_pytorch_model.safetensors` under `seg/<name>/` of a weights root.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import register_model_class
from .conventions import IMAGE_SIZE


@dataclass
class LVSegConfig:
    size: int = IMAGE_SIZE  # frames are resized to size x size
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 96])  # per resolution, full to 1/8
    norm_groups: int = 8
    threshold: float = 0.5  # probability above which a pixel is LV cavity

    def validate(self) -> None:
        if len(self.channels) < 2:
            raise ValueError(f"LVSegNet config: channels needs >= 2 entries, got {self.channels}")
        if any(c % self.norm_groups for c in self.channels):
            raise ValueError(f"LVSegNet config: channels {self.channels} must be multiples of norm_groups")
        levels = len(self.channels) - 1
        if self.size % (2**levels):
            raise ValueError(f"LVSegNet config: size {self.size} must be divisible by 2^{levels}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"LVSegNet config: threshold must be in (0, 1), got {self.threshold}")


def _block(cin: int, cout: int, groups: int) -> nn.Sequential:
    """Two 3x3 conv -> GroupNorm -> SiLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.SiLU(),
    )


class LVSegNet(nn.Module):
    config_class = LVSegConfig
    class_name = "LVSegNet"
    kind = "seg"  # the folder it lives under in a weights root: seg/<name>/

    def __init__(self, config: LVSegConfig):
        super().__init__()
        config.validate()
        self.config = config
        c, g = config.channels, config.norm_groups
        self.down = nn.ModuleList([_block(1, c[0], g)] + [_block(c[i], c[i + 1], g) for i in range(len(c) - 1)])
        self.up = nn.ModuleList(_block(c[i + 1] + c[i], c[i], g) for i in reversed(range(len(c) - 1)))
        self.head = nn.Conv2d(c[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"LVSegNet expects gray frames [B, 1, H, W] in [-1, 1], got {tuple(x.shape)}")
        size_in = tuple(x.shape[-2:])
        s = self.config.size
        dtype = self.head.weight.dtype
        h = x.to(dtype)
        if size_in != (s, s):
            h = F.interpolate(h, size=(s, s), mode="bilinear", align_corners=False)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else F.max_pool2d(h, 2))  # [B, c_i, s / 2^i, s / 2^i]
            skips.append(h)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1))
        logits = self.head(h).float()  # [B, 1, s, s]
        if size_in != (s, s):
            logits = F.interpolate(logits, size=size_in, mode="bilinear", align_corners=False)
        return logits

    @torch.no_grad()
    def segment(self, frames, chunk: int = 32) -> torch.Tensor:
        """uint8 frames [T, H, W(, C)] -> bool LV masks [T, H, W] on the CPU (largest region, holes filled)."""
        from .vae import frames_to_gray

        gray = frames_to_gray(frames)
        if gray.ndim == 2:
            gray = gray[None]
        if gray.ndim != 3:
            raise ValueError(f"LVSegNet.segment: frames must be [T, H, W(, C)], got {tuple(gray.shape)}")
        device = self.head.weight.device
        was_training = self.training
        self.eval()
        out = []
        for part in gray.split(chunk):
            x = (part.float() / 128.0 - 1.0)[:, None].to(device)
            out.append((torch.sigmoid(self(x)) > self.config.threshold)[:, 0].cpu())
        self.train(was_training)
        return clean_masks(torch.cat(out))


CROSS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))  # a pixel and its 4-neighbourhood


def largest_region(masks: torch.Tensor) -> torch.Tensor:
    """bool [T, H, W] -> the largest 4-connected region of each frame (empty frames stay empty).

    Labels spread by repeated 3x3 max-pooling restricted to the mask (each pixel ends with the highest
    index of its region), so it runs as a few tensor ops per iteration instead of a Python flood fill."""
    t, h, w = masks.shape
    if not masks.any():
        return masks.clone()
    inside = masks[:, None].float()
    labels = (torch.arange(1, h * w + 1, dtype=torch.float32).reshape(1, 1, h, w) * inside)
    for _ in range(h * w):
        # the maximum over each pixel and its 4 neighbours (shifted views of a padded copy), inside the mask
        padded = F.pad(labels, (1, 1, 1, 1))
        nxt = torch.stack([padded[..., 1 + dy: 1 + dy + h, 1 + dx: 1 + dx + w] for dy, dx in CROSS], 0).amax(0)
        nxt = nxt * inside
        if torch.equal(nxt, labels):
            break
        labels = nxt
    labels = labels[:, 0].long()  # [T, H, W]
    keep = torch.zeros_like(masks)
    for i in range(t):
        ids, counts = torch.unique(labels[i][labels[i] > 0], return_counts=True)
        if len(ids):
            keep[i] = labels[i] == ids[counts.argmax()]
    return keep


def fill_holes(masks: torch.Tensor) -> torch.Tensor:
    """bool [T, H, W] -> the masks with every background region not reachable from the border filled."""
    return ~border_connected(~masks)  # the mask plus every background pocket the border cannot reach


def border_connected(background: torch.Tensor) -> torch.Tensor:
    """bool [T, H, W]: the background pixels connected (4-neighbourhood) to the image border."""
    reach = torch.zeros_like(background)
    reach[:, 0, :] = background[:, 0, :]
    reach[:, -1, :] = background[:, -1, :]
    reach[:, :, 0] = background[:, :, 0]
    reach[:, :, -1] = background[:, :, -1]
    for _ in range(background.shape[1] * background.shape[2]):
        grown = reach.clone()
        grown[:, 1:, :] |= reach[:, :-1, :]
        grown[:, :-1, :] |= reach[:, 1:, :]
        grown[:, :, 1:] |= reach[:, :, :-1]
        grown[:, :, :-1] |= reach[:, :, 1:]
        grown &= background
        if torch.equal(grown, reach):
            break
        reach = grown
    return reach


def clean_masks(masks: torch.Tensor) -> torch.Tensor:
    """The largest region of each frame with its holes filled."""
    return fill_holes(largest_region(masks))


register_model_class(LVSegNet)
