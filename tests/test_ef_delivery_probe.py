"""research/probes/ef_delivery_probe.py: the statistics it prints and its phantom conditioning frames."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "research" / "probes" / "ef_delivery_probe.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("ef_delivery_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_delivery_stats_perfect_model(probe):
    requested = np.linspace(10, 85, 6)
    stats = probe.delivery_stats(requested, requested.copy())
    assert stats["mae"] == pytest.approx(0.0, abs=1e-9)
    assert stats["slope"] == pytest.approx(1.0)
    assert stats["residual_sd"] == pytest.approx(0.0, abs=1e-9)


def test_delivery_stats_separates_compression_from_scatter(probe):
    requested = np.linspace(10, 85, 8)
    # pulled halfway toward 50 at both ends, plus +-3 points of alternating scatter
    scatter = np.array([3.0, -3.0] * 4)
    measured = 50 + 0.5 * (requested - 50) + scatter
    stats = probe.delivery_stats(requested, measured)
    line = np.polyfit(requested, scatter, 1)  # the part of the scatter a line through the points absorbs
    assert stats["slope"] == pytest.approx(0.5 + line[0])
    assert stats["bias"] == pytest.approx(np.mean(measured - requested))
    assert 2.5 < stats["residual_sd"] < 3.0
    assert stats["mae"] > stats["residual_sd"]  # the compression adds to the error, not to the scatter


def test_phantom_frames_are_deterministic_end_diastolic_images(probe):
    a = probe.phantom_end_diastolic_frames("A4C", 2, seed=123)
    b = probe.phantom_end_diastolic_frames("A4C", 2, seed=123)
    assert a.shape == (2, 112, 112) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])  # two patients
