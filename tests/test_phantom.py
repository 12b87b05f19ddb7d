"""Procedural echo phantom: determinism, EF ground truth, anatomy, image statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from echoflow_models.phantom import (
    IMAGE_SIZE,
    LONG_AXIS_SHORTENING,
    VIEWS,
    PatientAnatomy,
    PhantomVideo,
    cardiac_cycle,
    ejection_fraction,
    fan_mask,
    lv_volume_area_length,
    lv_volume_short_axis,
    render_frame,
    render_video,
)

HR = 75.0  # 0.8 s beat: at 32 fps ED is frame 0 and ES frame 8 or 9 (phase 0)


def _video(patient: int = 1, view: str = "A4C", ef: float = 55.0, n: int = 12, **kw) -> PhantomVideo:
    return render_video(PatientAnatomy.sample(patient, view), ef, num_frames=n, heart_rate=HR, **kw)


def _ellipse_mask(a_px: float, b_px: float, size: int = 112) -> np.ndarray:
    r, c = np.mgrid[0:size, 0:size]
    return ((r - 55.5) / a_px) ** 2 + ((c - 55.5) / b_px) ** 2 <= 1.0


# ------------------------------------------------------------------------------------------------- #
# Formulas
# ------------------------------------------------------------------------------------------------- #
def test_ejection_fraction_formula():
    assert ejection_fraction(100.0, 40.0) == pytest.approx(60.0)
    assert ejection_fraction(120.0, 120.0) == 0.0
    with pytest.raises(ValueError, match="EDV"):
        ejection_fraction(0.0, 0.0)
    with pytest.raises(ValueError, match="ESV"):
        ejection_fraction(10.0, -1.0)


def test_area_length_volume_on_known_shapes():
    # Rectangle 40 x 10 px at 0.1 cm: A = 4 cm^2, L = 4 cm -> V = 8 * 16 / (3 pi 4).
    m = np.zeros((112, 112), dtype=bool)
    m[20:60, 50:60] = True
    assert lv_volume_area_length(m, 0.1) == pytest.approx(8 * 16 / (3 * math.pi * 4), rel=1e-9)
    # An ellipse section of a prolate ellipsoid gives the ellipsoid's volume, 4/3 pi a b^2.
    a_px, b_px, ps = 40.0, 18.0, 0.1
    expected = 4.0 / 3.0 * math.pi * (a_px * ps) * (b_px * ps) ** 2
    assert lv_volume_area_length(_ellipse_mask(a_px, b_px), ps) == pytest.approx(expected, rel=0.03)
    # Short-axis (PSAX) form: 2/3 * A_sax * L for the same ellipsoid.
    sax = _ellipse_mask(b_px, b_px)
    assert lv_volume_short_axis(sax, 2 * a_px * ps, ps) == pytest.approx(expected, rel=0.03)
    assert lv_volume_area_length(np.zeros((8, 8), bool), 0.1) == 0.0
    with pytest.raises(ValueError, match="2-D"):
        lv_volume_area_length(np.zeros((2, 8, 8), bool), 0.1)


# ------------------------------------------------------------------------------------------------- #
# Determinism and identity
# ------------------------------------------------------------------------------------------------- #
def test_same_arguments_give_identical_bytes():
    a = _video(3, n=6, seed=5, phase=0.2)
    b = _video(3, n=6, seed=5, phase=0.2)
    assert a.frames.dtype == np.uint8 and a.frames.shape == (6, IMAGE_SIZE, IMAGE_SIZE)
    assert a.lv_masks.dtype == bool and a.lv_masks.shape == (6, IMAGE_SIZE, IMAGE_SIZE)
    assert a.frames.tobytes() == b.frames.tobytes()
    assert np.array_equal(a.lv_masks, b.lv_masks)
    assert a.ef == b.ef and a.edv == b.edv
    assert PatientAnatomy.sample(3, "A4C") == PatientAnatomy.sample(3, "A4C")


def test_different_patients_differ_and_noise_seed_only_changes_noise():
    p1, p2 = PatientAnatomy.sample(1, "A4C"), PatientAnatomy.sample(2, "A4C")
    assert p1 != p2
    f1, m1 = render_frame(p1, 55.0)
    f2, m2 = render_frame(p2, 55.0)
    assert np.abs(f1.astype(int) - f2).mean() > 10
    assert (m1 ^ m2).sum() > 100  # different hearts: size / position / orientation
    g1, n1 = render_frame(p1, 55.0, seed=9)
    assert np.array_equal(m1, n1)  # the noise seed does not move the anatomy
    assert 0 < np.abs(f1.astype(int) - g1).mean() < np.abs(f1.astype(int) - f2).mean()


def test_same_patient_shares_identity_across_views():
    a, p = PatientAnatomy.sample(4, "A4C"), PatientAnatomy.sample(4, "PLAX")
    for name in ("size", "wall_thickness", "speckle_seed", "tissue_brightness", "gain", "heart_rate"):
        assert getattr(a, name) == getattr(p, name)
    assert (a.rotation_deg, a.offset_x) != (p.rotation_deg, p.offset_x)
    with pytest.raises(ValueError, match="view"):
        PatientAnatomy.sample(1, "A2C")


# ------------------------------------------------------------------------------------------------- #
# EF ground truth
# ------------------------------------------------------------------------------------------------- #
def _ef_from_masks(video: PhantomVideo, anatomy: PatientAnatomy) -> float:
    ed, es = video.lv_masks[video.ed_frames[0]], video.lv_masks[video.es_frames[0]]
    if anatomy.view == "PSAX":
        from echoflow_models.phantom import _geometry

        length = _geometry(anatomy).long_axis_ed_cm
        edv = lv_volume_short_axis(ed, length)
        esv = lv_volume_short_axis(es, length * (1 - LONG_AXIS_SHORTENING * video.contraction))
    else:
        edv, esv = lv_volume_area_length(ed), lv_volume_area_length(es)
    return ejection_fraction(edv, esv)


@pytest.mark.parametrize("view", VIEWS)
def test_requested_ef_matches_ef_measured_on_rendered_masks(view):
    anatomy = PatientAnatomy.sample(11, view)
    for ef in (10.0, 25.0, 40.0, 55.0, 70.0, 85.0):
        v = render_video(anatomy, ef, num_frames=10, heart_rate=HR)
        assert v.ed_frames[0] == 0 and v.es_frames[0] in (8, 9)
        measured = _ef_from_masks(v, anatomy)
        assert measured == pytest.approx(v.ef, abs=1e-9)  # ed/es frames show exactly the EF masks
        assert abs(measured - ef) < 1.5, (view, ef, measured)
        assert v.edv > v.esv > 0


def test_ed_es_frames_volumes_and_cycle():
    v = _video(2, n=64, ef=60.0)
    assert len(v.lv_volumes) == 64
    assert v.ed_frames[:2] == [0, round(60 / HR * 32)]
    for i in v.ed_frames:
        assert v.lv_volumes[i] == pytest.approx(v.edv)
        assert v.lv_masks[i].sum() > v.lv_masks[v.es_frames[0]].sum()
    for i in v.es_frames:
        assert v.lv_volumes[i] == pytest.approx(v.esv)
    # other frames lie between, up to pixel-discretisation noise of the measurement
    assert v.lv_volumes.max() < 1.01 * v.edv and v.lv_volumes.min() > 0.99 * v.esv
    assert 40 < v.edv < 200 and v.heart_rate == HR and v.fps == 32.0
    f, av, sl = cardiac_cycle(np.linspace(0, 3, 500), 60.0)
    assert f.min() == 0.0 and f.max() == 1.0 and 0 <= av.min() and av.max() <= 1 and sl.max() <= 1
    # mitral valve closed while the aortic valve is open
    assert np.all(av[sl > 0.5] == 0)


def test_lv_contracts_between_ed_and_es_in_every_view():
    for view in VIEWS:
        v = _video(5, view, ef=65.0, n=10)
        ed, es = v.lv_masks[0], v.lv_masks[v.es_frames[0]]
        assert ed.sum() > 1.5 * es.sum(), view
        # the LV at ES sits inside the dilated ED cavity (it contracts, does not jump)
        assert (es & ~ed).sum() < 0.1 * es.sum()


# ------------------------------------------------------------------------------------------------- #
# Image
# ------------------------------------------------------------------------------------------------- #
def test_outside_sector_is_black_and_masks_inside():
    fan = fan_mask()
    assert fan.shape == (IMAGE_SIZE, IMAGE_SIZE) and 0.4 < fan.mean() < 0.8
    assert not fan[0, 0] and not fan[0, -1] and not fan[-1, 0] and fan[60, 56]
    for view in VIEWS:
        v = _video(7, view, n=4)
        assert (v.frames[:, ~fan] == 0).all()
        assert not (v.lv_masks & ~fan).any()
        assert v.frames[:, fan].mean() > 20


def test_views_differ():
    frames = {view: render_frame(PatientAnatomy.sample(8, view), 55.0) for view in VIEWS}
    for i, va in enumerate(VIEWS):
        for vb in VIEWS[i + 1 :]:
            fa, ma = frames[va]
            fb, mb = frames[vb]
            assert np.abs(fa.astype(int) - fb).mean() > 12, (va, vb)
            inter = (ma & mb).sum() / (ma | mb).sum()
            assert inter < 0.6, (va, vb, inter)


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    grown = mask.copy()
    for _ in range(width):
        grown = (
            grown
            | np.roll(grown, 1, 0)
            | np.roll(grown, -1, 0)
            | np.roll(grown, 1, 1)
            | np.roll(grown, -1, 1)
        )
    return grown


@pytest.mark.parametrize("view", VIEWS)
def test_plausible_statistics(view):
    for seed in (0, 1, 2):
        frame, mask = render_frame(PatientAnatomy.sample(seed, view), 55.0)
        inside = frame[fan_mask()].astype(float)
        assert 25 < inside.mean() < 150, (view, seed, inside.mean())
        assert inside.std() > 20  # speckle and anatomy, not a flat image
        # wall: a band 2-5 px outside the endocardium; the blood pool well inside the cavity
        wall = _ring(mask, 5) & ~_ring(mask, 2)
        core = mask & ~_ring(~mask, 3)
        blood, myo = frame[core].mean(), frame[wall].mean()
        assert blood + 25 < myo, (view, seed, blood, myo)


def test_speckle_persists_within_patient_and_moves_with_tissue():
    v = _video(6, n=3, ef=50.0, phase=0.5)  # mid-diastole: little motion between frames
    a, b = v.frames[0].astype(float), v.frames[1].astype(float)
    other = render_frame(PatientAnatomy.sample(16, "A4C"), 50.0, phase=0.5)[0].astype(float)
    fan = fan_mask()
    same = np.corrcoef(a[fan], b[fan])[0, 1]
    diff = np.corrcoef(a[fan], other[fan])[0, 1]
    assert same > 0.8 and same > diff + 0.2


def test_render_is_cached_per_patient_and_validates_arguments():
    """Speed is the benchmarks' business; here: a full-length render after the per-patient caches are warm
    gives the same video as a cold one, and bad arguments are refused."""
    anatomy = PatientAnatomy.sample(21, "A4C")
    cold = render_video(PatientAnatomy.sample(22, "A4C"), 50.0, num_frames=64)
    render_video(anatomy, 50.0, num_frames=2)  # another patient in between
    warm = render_video(PatientAnatomy.sample(22, "A4C"), 50.0, num_frames=64)
    assert warm.frames.shape == (64, 112, 112)
    assert warm.frames.tobytes() == cold.frames.tobytes() and np.array_equal(warm.lv_masks, cold.lv_masks)
    with pytest.raises(ValueError, match="ef"):
        render_video(anatomy, 95.0)
    with pytest.raises(ValueError, match="num_frames"):
        render_video(anatomy, 50.0, num_frames=0)
    with pytest.raises(ValueError, match="heart_rate"):
        render_video(anatomy, 50.0, heart_rate=5.0)
    with pytest.raises(TypeError):
        render_video("A4C", 50.0)
