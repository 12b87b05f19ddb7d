"""Image and regression metrics for the evaluation report (no SciPy / scikit-image needed)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _as_gray_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 or float frames [N, H, W] / [N, H, W, C] -> float64 [N, 1, H, W] in 0..255 (channel mean)."""
    x = torch.as_tensor(frames).double()
    if x.ndim == 4:
        x = x.mean(dim=-1)
    if x.ndim != 3:
        raise ValueError(f"frames must be [N, H, W] or [N, H, W, C], got {tuple(x.shape)}")
    return x[:, None]


def psnr(reference: torch.Tensor, test: torch.Tensor, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB over all frames (one MSE over the whole set)."""
    a, b = _as_gray_float(reference), _as_gray_float(test)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = torch.mean((a - b) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # [1, 1, size, size]


def ssim(reference: torch.Tensor, test: torch.Tensor, data_range: float = 255.0) -> float:
    """Mean structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03),
    computed on valid windows of each grayscale frame and averaged."""
    a, b = _as_gray_float(reference), _as_gray_float(test)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    window = _gaussian_window()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def regression_metrics(target: torch.Tensor, prediction: torch.Tensor) -> dict[str, float]:
    """MAE, RMSE, R^2 and Pearson r of predictions against targets (1-D)."""
    y = torch.as_tensor(target, dtype=torch.float64).reshape(-1)
    p = torch.as_tensor(prediction, dtype=torch.float64).reshape(-1)
    if y.numel() != p.numel() or y.numel() < 2:
        raise ValueError(f"need matching 1-D targets and predictions of length >= 2, got {y.numel()}, {p.numel()}")
    err = p - y
    ss_res = torch.sum(err**2)
    ss_tot = torch.sum((y - y.mean()) ** 2)
    yc, pc = y - y.mean(), p - p.mean()
    denom = torch.sqrt(torch.sum(yc**2) * torch.sum(pc**2))
    return {
        "mae": float(err.abs().mean()),
        "rmse": float(torch.sqrt(torch.mean(err**2))),
        "r2": float(1 - ss_res / ss_tot) if ss_tot > 0 else float("nan"),
        "pearson_r": float(torch.sum(yc * pc) / denom) if denom > 0 else float("nan"),
    }


def temporal_flicker(frames: torch.Tensor, window: int = 5) -> float:
    """Mean absolute frame-to-frame texture change that a `window`-frame moving average does not follow.

    uint8/float video [T, H, W] (or [T, H, W, C], first channel) -> grey levels. The heartbeat (about 1 Hz at
    32 fps) survives a 5-frame average; speckle decorrelation between frames does not, so this reads how much
    the texture flickers. On phantom videos it is set by the patient's speckle persistence, not by the EF.
    """
    x = torch.as_tensor(frames)
    if x.ndim == 4:
        x = x[..., 0]
    if x.ndim != 3 or window < 2 or x.shape[0] < window:
        raise ValueError(f"temporal_flicker expects a video [T, H, W] with T >= window >= 2, got "
                         f"{tuple(x.shape)} and window {window}")
    rows = x.to(torch.float64).reshape(x.shape[0], -1)  # [T, H*W]
    smooth = F.avg_pool1d(rows.T[:, None], window, stride=1)[:, 0].T  # [T - window + 1, H*W]
    half = window // 2
    centre = rows[half: half + smooth.shape[0]]
    return float((centre - smooth).abs().mean())
