"""EF by LV segmentation: the volume formulas, the beat finder, the curve repair, the U-Net and its training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from echoflow_models import load_model, save_model
from echoflow_models.lv_ef import measure_ef, repair_curve, volume_area_length, volume_curve, volume_discs
from echoflow_models.lvseg import LVSegConfig, LVSegNet, clean_masks, fill_holes, largest_region
from echoflow_models.phantom import PIXEL_SPACING_CM, PatientAnatomy, render_video


def _ellipse(a_px: float, b_px: float, size: int = 112) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - size / 2) / a_px) ** 2 + ((xx - size / 2) / b_px) ** 2 <= 1.0


def test_volumes_of_an_ellipse_match_the_prolate_ellipsoid():
    # semi-axes 30 and 12 px: prolate ellipsoid volume 4/3 pi a b^2
    mask = _ellipse(30, 12)
    a, b = 30 * PIXEL_SPACING_CM, 12 * PIXEL_SPACING_CM
    expected = 4.0 / 3.0 * math.pi * a * b * b
    assert volume_area_length(mask) == pytest.approx(expected, rel=0.05)
    assert volume_discs(mask) == pytest.approx(expected, rel=0.05)
    assert volume_area_length(np.zeros((112, 112), bool)) == 0.0


@pytest.mark.parametrize("view", ["A4C", "PLAX"])
@pytest.mark.parametrize("ef", [20.0, 50.0, 80.0])
def test_true_phantom_masks_give_the_phantom_ef(view, ef):
    video = render_video(PatientAnatomy.sample(11, view), ef, num_frames=64)
    result = measure_ef(video.lv_masks, fps=32.0, view=view)
    assert result.ef == pytest.approx(video.ef, abs=0.5)
    # ES is a short plateau in the phantom: the frame found may be its neighbour
    assert len(result.es_frames) == len(video.es_frames)
    assert all(min(abs(s - f) for f in result.es_frames) <= 1 for s in video.es_frames)
    # ED at the clip's first frame is not a turning point the curve shows; every later one is found
    assert all(min(abs(d - f) for f in result.ed_frames) <= 1 for d in video.ed_frames if d > 0)
    discs = measure_ef(video.lv_masks, fps=32.0, view=view, method="discs")
    assert discs.ef == pytest.approx(video.ef, abs=2.0)


@pytest.mark.parametrize(("heart_rate", "phase", "fps", "ef"),
                         [(80, 0.6, 32.0, 80.0), (50, 0.5, 32.0, 80.0), (110, 0.3, 16.0, 80.0), (95, 0.85, 16.0, 20.0)])
def test_clips_that_start_mid_beat_and_low_frame_rates_read_the_true_ef(heart_rate, phase, fps, ef):
    """The clip's first and last frames are not turning points (a half beat would read as a smaller EF), and
    a real end-systole at 16 fps and 110 bpm is not mistaken for a failed frame."""
    video = render_video(PatientAnatomy.sample(5, "A4C"), ef, num_frames=int(2 * fps), fps=fps,
                         heart_rate=heart_rate, phase=phase)
    result = measure_ef(video.lv_masks, fps=fps)
    assert result.ef == pytest.approx(video.ef, abs=1.5)
    assert result.repaired_frames == []
    assert 0 not in result.es_frames + result.ed_frames and len(video.lv_masks) - 1 not in result.es_frames


def test_measure_ef_refuses_what_it_cannot_read():
    masks = np.repeat(_ellipse(30, 12)[None], 8, 0)
    for kwargs, match in (({"fps": float("inf")}, "fps"), ({"fps": 0}, "fps"), ({"heart_rate_bpm": -75}, "heart_rate"),
                          ({"pixel_spacing_cm": -1.0}, "pixel_spacing"), ({"view": "a4c"}, "view")):
        with pytest.raises(ValueError, match=match):
            measure_ef(masks, **kwargs)


def test_a_lost_or_spiking_frame_does_not_move_the_ef():
    video = render_video(PatientAnatomy.sample(12, "A4C"), 60.0, num_frames=64)
    clean = measure_ef(video.lv_masks).ef
    broken = video.lv_masks.copy()
    broken[video.es_frames[1]] = False  # a blurred frame whose mask vanished, at end-systole
    broken[20] = np.ones_like(broken[20])  # a noisy frame segmented as everything
    result = measure_ef(broken)
    assert {video.es_frames[1], 20} <= set(result.repaired_frames)
    assert result.ef == pytest.approx(clean, abs=1.5)
    repaired, where = repair_curve(np.array([10.0, 10.2, 0.0, 10.4, 10.6]))
    assert where == [2] and repaired[2] == pytest.approx(10.3)


def test_ef_from_a_curve_without_any_motion_is_zero_and_an_empty_video_is_nan():
    still = np.repeat(_ellipse(30, 12)[None], 32, 0)
    assert measure_ef(still).ef == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(measure_ef(np.zeros((32, 112, 112), bool)).ef)
    with pytest.raises(ValueError, match="method"):
        volume_curve(still, method="simpson")
    with pytest.raises(ValueError, match=r"\[T, H, W\]"):
        volume_curve(still[0])


def test_largest_region_and_hole_filling():
    m = torch.zeros(2, 20, 20, dtype=torch.bool)
    m[0, 2:10, 2:10] = True  # 64 px
    m[0, 14:17, 14:17] = True  # 9 px speck
    m[0, 5, 5] = False  # a hole
    kept = largest_region(m)
    assert int(kept[0].sum()) == 63 and not kept[0, 15, 15]
    assert not kept[1].any()
    filled = fill_holes(kept)
    assert bool(filled[0, 5, 5]) and int(filled[0].sum()) == 64
    assert torch.equal(clean_masks(m)[0], filled[0])


def test_lvsegnet_shapes_save_load_and_segment(tmp_path):
    torch.manual_seed(0)
    model = LVSegNet(LVSegConfig(channels=[8, 16, 16]))
    x = torch.rand(3, 1, 112, 112) * 2 - 1
    assert model(x).shape == (3, 1, 112, 112)
    assert model(torch.rand(2, 1, 64, 80)).shape == (2, 1, 64, 80)  # other sizes resized in and back
    save_model(model, tmp_path / "seg" / "tiny")
    again = load_model(tmp_path / "seg" / "tiny")
    assert isinstance(again, LVSegNet) and again.kind == "seg"
    torch.testing.assert_close(again(x), model(x))
    masks = again.segment(torch.randint(0, 255, (4, 112, 112, 3), dtype=torch.uint8))
    assert masks.shape == (4, 112, 112) and masks.dtype == torch.bool
    with pytest.raises(ValueError, match="gray frames"):
        model(torch.rand(2, 3, 112, 112))
    with pytest.raises(ValueError, match="divisible"):
        LVSegConfig(size=100, channels=[8, 16, 16, 16]).validate()


@pytest.mark.slow
def test_train_seg_learns_the_phantom_lv(tmp_path):
    from echoflow_models.train import train
    from echoflow_models.train.data import write_phantom_masks

    data = tmp_path / "ds"
    train("dataset", out=str(data), patients=4, seed=3, frames=8, split="0.75,0.25,0.0", quiet=True)
    write_phantom_masks(data, ("TRAIN", "VAL"), max_frames=None)
    summary = train("seg", data=str(data), out=str(tmp_path / "seg"), steps=30, batch_size=8, channels="8,16,16",
                    lr=5e-3, threads=1, quiet=True, eval_videos=2, warmup=5)
    assert summary["val_frames_n"] == 2
    # 30 steps on 9 videos: far from converged, but the cavity is found (an untrained net scores ~0.1)
    assert summary["val_frames_dice"] > 0.5
    assert isinstance(load_model(tmp_path / "seg"), LVSegNet)


def test_train_seg_runs_end_to_end_on_a_small_folder(tmp_path):
    """The reduced form of the slow test: a few steps, through the A-VAE, with the VAL evaluation."""
    from echoflow_models.train import train
    from echoflow_models.train.data import write_phantom_masks
    from echoflow_models.weights import default_weights_root

    data = tmp_path / "ds"
    train("dataset", out=str(data), patients=2, seed=4, frames=4, split="0.5,0.5,0.0", quiet=True)
    assert write_phantom_masks(data, ("TRAIN", "VAL"), max_frames=None) > 0
    summary = train("seg", data=str(data), out=str(tmp_path / "seg"), steps=2, batch_size=2, channels="8,8",
                    threads=1, quiet=True, eval_videos=1, vae=str(default_weights_root() / "vae" / "phantom-4f4"))
    assert summary["steps"] == 2
    assert summary["val_frames_n"] == 1 and summary["val_vae_n"] == 1
    assert 0.0 <= summary["val_vae_dice"] <= 1.0
    assert isinstance(load_model(tmp_path / "seg"), LVSegNet)


def test_train_seg_without_masks_is_a_clear_error(tmp_path):
    from echoflow_models.train import train

    data = tmp_path / "ds"
    train("dataset", out=str(data), patients=2, seed=3, frames=8, split="1,0,0", quiet=True)
    with pytest.raises(SystemExit, match="no LV masks"):
        train("seg", data=str(data), out=str(tmp_path / "seg"), steps=2, threads=1, quiet=True)
