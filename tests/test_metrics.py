from __future__ import annotations

import math

import pytest
import torch

from echoflow_models.metrics import psnr, regression_metrics, ssim, temporal_flicker


def test_psnr_of_a_known_error():
    a = torch.zeros(2, 16, 16, dtype=torch.uint8)
    b = a.clone()
    b[0, 0, 0] = 16  # MSE = 256 / 512 = 0.5
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 0.5))
    assert psnr(a, a) == float("inf")


def test_ssim_identity_noise_and_contrast():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 40, 40, generator=g) * 255).round()
    assert ssim(x, x) == pytest.approx(1.0)
    noisy = (x + torch.randn(3, 40, 40, generator=g) * 40).clamp(0, 255)
    worse = (x + torch.randn(3, 40, 40, generator=g) * 80).clamp(0, 255)
    assert 1.0 > ssim(x, noisy) > ssim(x, worse) > 0.0
    # a constant image against itself shifted in brightness: structure term stays 1, luminance drops
    flat = torch.full((1, 20, 20), 100.0)
    assert 0.9 < ssim(flat, flat + 20) < 1.0


def test_regression_metrics():
    y = torch.tensor([10.0, 20.0, 30.0, 40.0])
    m = regression_metrics(y, y + torch.tensor([1.0, -1.0, 1.0, -1.0]))
    assert m["mae"] == pytest.approx(1.0) and m["rmse"] == pytest.approx(1.0)
    assert m["r2"] == pytest.approx(1 - 4 / 500)
    assert regression_metrics(y, 2 * y + 3)["pearson_r"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="matching 1-D"):
        regression_metrics(y, y[:3])


def test_temporal_flicker_ignores_slow_change_and_reads_frame_to_frame_flicker():
    t = torch.arange(16, dtype=torch.float64)[:, None, None]
    static = torch.full((16, 8, 8), 90.0)
    ramp = 50.0 + 4.0 * t.expand(16, 8, 8)  # a linear brightening: a moving average follows it exactly
    alternating = 100.0 + 10.0 * (-1.0) ** t.expand(16, 8, 8)  # +-10 every frame
    assert temporal_flicker(static) == 0.0
    assert temporal_flicker(ramp) == pytest.approx(0.0, abs=1e-9)
    # 5-frame average of +-10 alternation is +-2, so every centre frame is 8 grey levels off it
    assert temporal_flicker(alternating) == pytest.approx(8.0)
    rgb = alternating[..., None].expand(16, 8, 8, 3).to(torch.uint8)
    assert temporal_flicker(rgb) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="T >= window"):
        temporal_flicker(static[:3])
