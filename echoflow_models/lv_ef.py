"""EF read from the LV's motion: per-frame LV masks -> volume curve -> ED/ES frames -> EDV, ESV, EF.

The EchoNet-Dynamic way of measuring EF, used as the instrument that shares none of a generator's
shortcuts: the EF regressor (`efnet`) reads whatever cue correlates with EF (texture flicker included);
this reads only how much the outlined cavity shrinks through the beat.

Volumes (mL, pixel spacing `phantom.PIXEL_SPACING_CM` unless given):
* ``area-length`` (apical / long-axis views): V = 8 A^2 / (3 pi L), A the cavity area, L its extent along
  its principal axis (apex to mitral plane);
* ``discs`` (single-plane method of discs, Simpson's rule): the cavity sliced into `DISCS` slabs
  perpendicular to its principal axis, each a cylinder whose diameter is the cavity's width there;
* short-axis views (PSAX) show no long axis, so their volume is taken as proportional to A^(3/2) (a cavity
  that keeps its shape), which is exact for EF when the long axis shortens as much as the short axes.

ED/ES: the curve is first cleaned (single-frame dropouts and spikes, e.g. a blurred or noisy frame whose
mask collapses, are replaced by the median of their neighbours), then beats are found as the largest
volume (ED) and smallest volume (ES) in windows one expected period long; EF is the median over beats of
(EDV - ESV) / EDV, so one bad beat does not move it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .conventions import VIEWS
from .phantom import PIXEL_SPACING_CM

VOLUME_METHODS = ("area-length", "discs")
DISCS = 20
DEFAULT_HEART_RATE_BPM = 75.0


@dataclass
class LVMeasurement:
    """EF by segmentation of one video."""

    ef: float  # percent, median over beats
    edv: float  # mL, median over beats
    esv: float  # mL
    volumes: np.ndarray  # [T] mL, cleaned curve
    raw_volumes: np.ndarray  # [T] mL, before cleaning
    areas: np.ndarray  # [T] cm^2
    ed_frames: list[int]
    es_frames: list[int]
    beat_efs: list[float]
    method: str
    repaired_frames: list[int] = field(default_factory=list)  # frames whose volume was replaced

    def as_dict(self) -> dict:
        return {"ef": self.ef, "edv": self.edv, "esv": self.esv, "method": self.method,
                "ed_frames": self.ed_frames, "es_frames": self.es_frames, "beat_efs": self.beat_efs,
                "repaired_frames": self.repaired_frames, "volumes": [round(float(v), 3) for v in self.volumes]}


def _principal_axis(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(pixel coordinates [N, 2] centred, long-axis unit vector [2], short-axis unit vector [2])."""
    rows, cols = np.nonzero(mask)
    if len(rows) < 3:
        return None
    pts = np.stack([rows, cols], axis=1).astype(np.float64)
    centred = pts - pts.mean(axis=0)
    _, vecs = np.linalg.eigh(centred.T @ centred / len(pts))
    return centred, vecs[:, -1], vecs[:, 0]


def volume_area_length(mask: np.ndarray, pixel_spacing_cm: float = PIXEL_SPACING_CM) -> float:
    """8 A^2 / (3 pi L) in mL (0 for an empty mask)."""
    axis = _principal_axis(mask)
    if axis is None:
        return 0.0
    centred, long_axis, _ = axis
    proj = centred @ long_axis
    length = (proj.max() - proj.min() + 1.0) * pixel_spacing_cm
    area = len(centred) * pixel_spacing_cm**2
    return float(8.0 * area**2 / (3.0 * math.pi * length))


def volume_discs(mask: np.ndarray, pixel_spacing_cm: float = PIXEL_SPACING_CM, discs: int = DISCS) -> float:
    """Single-plane method of discs in mL: sum over `discs` slabs of pi (w / 2)^2 h (0 for an empty mask)."""
    axis = _principal_axis(mask)
    if axis is None:
        return 0.0
    centred, long_axis, _ = axis
    along = centred @ long_axis
    lo, hi = along.min() - 0.5, along.max() + 0.5
    height = (hi - lo) / discs
    slab = np.minimum(((along - lo) / height).astype(int), discs - 1)
    # a slab's width = its pixel count / its height (the area it covers), robust to ragged edges
    counts = np.bincount(slab, minlength=discs).astype(np.float64)
    width = counts / height
    radius_cm = 0.5 * width * pixel_spacing_cm
    return float(np.sum(math.pi * radius_cm**2 * height * pixel_spacing_cm))


def volume_curve(masks, view: str = "A4C", method: str = "area-length",
                 pixel_spacing_cm: float = PIXEL_SPACING_CM) -> tuple[np.ndarray, np.ndarray]:
    """bool masks [T, H, W] -> (volumes [T] in mL (or A^1.5 units for PSAX), areas [T] in cm^2)."""
    if method not in VOLUME_METHODS:
        raise ValueError(f"volume method must be one of {VOLUME_METHODS}, got {method!r}")
    m = masks.numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"LV masks must be [T, H, W], got shape {m.shape}")
    m = m.astype(bool)
    areas = m.reshape(len(m), -1).sum(1) * pixel_spacing_cm**2
    if view == "PSAX":
        return areas**1.5, areas
    fn = volume_area_length if method == "area-length" else volume_discs
    return np.array([fn(frame, pixel_spacing_cm) for frame in m]), areas


def repair_curve(volumes: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Replace single-frame failures by the median of the 2 frames on each side: an empty mask (volume 0, which
    no heart has) or a volume outside its neighbours' range by more than that range (at least 10 % of their
    median). A real ES or ED frame lies just beyond its neighbours (the curve turns there), by less than the
    neighbours' own spread, so it is kept even at low frame rates and high EF; a frame segmented as nothing
    or as everything is not."""
    v = np.asarray(volumes, dtype=np.float64).copy()
    n = len(v)
    repaired: list[int] = []
    if n < 3:
        return v, repaired
    out = v.copy()
    for i in range(n):
        neighbours = np.concatenate([v[max(0, i - 2):i], v[i + 1:min(n, i + 3)]])
        local = float(np.median(neighbours))
        if local <= 0:
            continue
        if i in (0, n - 1) and n >= 4:
            # an end frame has neighbours on one side only: compare it with the line through the next two,
            # since the curve may be rising or falling steeply there
            a, b = (v[1], v[2]) if i == 0 else (v[n - 2], v[n - 3])
            expected, spread = 2 * a - b, max(abs(a - b), 0.1 * local)
            failed = v[i] <= 0 or abs(v[i] - expected) > 2 * spread
            replacement = max(expected, 0.0) if expected > 0 else local
        else:
            lo, hi = float(neighbours.min()), float(neighbours.max())
            spread = max(hi - lo, 0.1 * local)
            failed = v[i] <= 0 or v[i] < lo - spread or v[i] > hi + spread
            replacement = local
        if failed:
            out[i] = replacement
            repaired.append(i)
    return out, repaired


def _smooth(v: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or len(v) < width:
        return v
    kernel = np.hanning(width + 2)[1:-1]
    kernel /= kernel.sum()
    padded = np.pad(v, width // 2, mode="edge")
    return np.convolve(padded, kernel, mode="valid")[: len(v)]


def find_beats(volumes: np.ndarray, fps: float, heart_rate_bpm: float | None = None
               ) -> tuple[list[int], list[int]]:
    """(ED frames, ES frames): turning points of the smoothed curve, the largest / smallest volume within
    +-0.4 of a period, at least that far apart.

    A turning point needs frames on both sides that move away from it (by 2 % of the curve's range), so the
    first and last frames of a clip that starts or ends mid-beat are never taken for ED or ES (a half beat
    would read as a smaller EF). The period is `heart_rate_bpm` when known, else estimated from the curve's
    autocorrelation (within 40-150 bpm), else 75 bpm."""
    n = len(volumes)
    if n < 3:
        return [int(np.argmax(volumes))], [int(np.argmin(volumes))]
    period = _period_frames(volumes, fps, heart_rate_bpm)
    smooth = _smooth(volumes, max(1, int(round(period / 8))))
    half = max(2, int(round(period * 0.4)))

    tol = 0.02 * float(smooth.max() - smooth.min())

    def extrema(sign: float) -> list[int]:
        picked = []
        for i in range(n):
            lo, hi = max(0, i - half), min(n, i + half + 1)
            value = sign * smooth[i]
            if value < (sign * smooth[lo:hi]).max():
                continue
            left, right = sign * smooth[lo:i], sign * smooth[i + 1:hi]
            turning = len(left) and len(right) and value - left.min() > tol and value - right.min() > tol
            if turning and (not picked or i - picked[-1] > half):
                picked.append(i)
        return picked

    return extrema(1.0), extrema(-1.0)


def _period_frames(volumes: np.ndarray, fps: float, heart_rate_bpm: float | None) -> float:
    if heart_rate_bpm:
        return 60.0 / heart_rate_bpm * fps
    v = volumes - volumes.mean()
    lo, hi = int(fps * 60.0 / 150.0), int(fps * 60.0 / 40.0)
    if len(v) > lo + 2 and v.std() > 0:
        ac = np.correlate(v, v, mode="full")[len(v) - 1:]
        ac = ac / ac[0]
        hi = min(hi, len(v) - 2)
        if hi > lo:
            lag = lo + int(np.argmax(ac[lo: hi + 1]))
            if ac[lag] > 0.2:
                return float(lag)
    return 60.0 / DEFAULT_HEART_RATE_BPM * fps


def ef_from_curve(volumes: np.ndarray, ed: list[int], es: list[int]) -> tuple[float, float, float, list[float]]:
    """(EF, EDV, ESV, per-beat EFs): each ES paired with the larger of the ED volumes on either side of it
    (the beat it ends); medians over beats. Without a full beat, the curve's 95th/5th percentiles."""
    beats = []
    for s in es:
        before = [d for d in ed if d < s]
        after = [d for d in ed if d > s]
        candidates = ([before[-1]] if before else []) + ([after[0]] if after else [])
        if not candidates:
            continue
        d = max(candidates, key=lambda k: volumes[k])
        if volumes[d] > 0 and volumes[d] > volumes[s]:
            beats.append((float(volumes[d]), float(volumes[s])))
    if not beats:
        edv, esv = float(np.percentile(volumes, 95)), float(np.percentile(volumes, 5))
        beats = [(edv, esv)] if edv > 0 else []
    if not beats:
        return float("nan"), 0.0, 0.0, []
    efs = [100.0 * (d - s) / d for d, s in beats]
    return float(np.median(efs)), float(np.median([d for d, _ in beats])), float(np.median([s for _, s in beats])), efs


def measure_ef(masks, fps: float = 32.0, view: str = "A4C", method: str = "area-length",
               heart_rate_bpm: float | None = None, pixel_spacing_cm: float = PIXEL_SPACING_CM) -> LVMeasurement:
    """EF of one video from its per-frame LV masks (bool [T, H, W])."""
    for value, name in ((fps, "fps"), (pixel_spacing_cm, "pixel_spacing_cm"),
                        (1.0 if heart_rate_bpm is None else heart_rate_bpm, "heart_rate_bpm")):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"measure_ef: {name} must be a finite number > 0, got {value!r}")
    if view not in VIEWS:
        raise ValueError(f"measure_ef: view must be one of {', '.join(VIEWS)} (upper case), got {view!r}")
    raw, areas = volume_curve(masks, view, method, pixel_spacing_cm)
    volumes, repaired = repair_curve(raw)
    ed, es = find_beats(volumes, fps, heart_rate_bpm)
    ef, edv, esv, beat_efs = ef_from_curve(volumes, ed, es)
    return LVMeasurement(ef=ef, edv=edv, esv=esv, volumes=volumes, raw_volumes=raw, areas=areas,
                         ed_frames=[int(i) for i in ed], es_frames=[int(i) for i in es],
                         beat_efs=[float(e) for e in beat_efs], method=method, repaired_frames=repaired)


def segment_and_measure(model, frames, fps: float = 32.0, view: str = "A4C", method: str = "area-length",
                        heart_rate_bpm: float | None = None) -> tuple[torch.Tensor, LVMeasurement]:
    """uint8 frames [T, H, W(, C)] -> (bool masks [T, H, W], EF measurement) with an `LVSegNet`."""
    if getattr(model, "kind", None) != "seg":
        raise TypeError(f"segment_and_measure needs an LV segmentation model (seg/<name>/), got "
                        f"{type(model).__name__}")
    masks = model.segment(frames)
    return masks, measure_ef(masks, fps, view, method, heart_rate_bpm)
