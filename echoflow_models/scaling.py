"""Per-channel latent scaling from `scaling.pt` (`{"mean": [C], "std": [C]}`).

The generative models work on scaled latents z_s = (z - mean) / std; `unscale` is the reference's
`unscale_latents` (z * std + mean), for image latents [B, C, H, W] and video latents [B, C, T, H, W].
"""

from __future__ import annotations

from pathlib import Path

import torch


class LatentScaler:
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        mean, std = torch.as_tensor(mean).float().reshape(-1), torch.as_tensor(std).float().reshape(-1)
        if mean.shape != std.shape:
            raise ValueError(f"scaling mean {tuple(mean.shape)} and std {tuple(std.shape)} differ in shape")
        if not torch.isfinite(mean).all() or not torch.isfinite(std).all() or (std <= 0).any():
            raise ValueError("scaling std must be finite and positive, and mean finite")
        self.mean, self.std = mean, std

    @classmethod
    def load(cls, path: str | Path) -> LatentScaler:
        from .checkpoint import load_tensor_asset

        data = load_tensor_asset(path)
        if not isinstance(data, dict) or not {"mean", "std"} <= set(data):
            raise ValueError(f"{path}: scaling.pt must hold a dict with 'mean' and 'std' tensors")
        try:
            return cls(data["mean"], data["std"])
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ValueError(f"{path}: {exc}; the file is corrupt, download it again") from None

    @classmethod
    def fit(cls, latents: torch.Tensor) -> LatentScaler:
        """Per-channel statistics of unscaled latents [N, C, ...]."""
        per_channel = latents.transpose(0, 1).reshape(latents.shape[1], -1).double()
        return cls(per_channel.mean(1), per_channel.std(1).clamp_min(1e-6))

    def save(self, path: str | Path) -> None:
        torch.save({"mean": self.mean.clone(), "std": self.std.clone()}, str(path))

    @property
    def channels(self) -> int:
        return self.mean.numel()

    def _view(self, stat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if z.ndim not in (4, 5) or z.shape[1] != self.channels:
            raise ValueError(
                f"latents must be [B, {self.channels}, H, W] or [B, {self.channels}, T, H, W] for this "
                f"scaling.pt, got {tuple(z.shape)}"
            )
        return stat.to(device=z.device, dtype=z.dtype).view(1, -1, *([1] * (z.ndim - 2)))

    def scale(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self._view(self.mean, z)) / self._view(self.std, z)

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        return z * self._view(self.std, z) + self._view(self.mean, z)
