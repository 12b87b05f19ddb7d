"""Procedural echocardiogram phantom: B-mode-looking 112x112 videos with exact LV masks and EF.

Everything here is numpy; a 64-frame video renders in a few tens of milliseconds on one core.

Geometry
--------
* Frames are ``IMAGE_SIZE`` = 112 pixels square, ``PIXEL_SPACING_CM`` = 0.15 cm per pixel (16.8 cm of depth,
  a usual apical depth setting). Volumes in mL use that spacing.
* The ultrasound sector has its apex at the top centre (row ``FAN_APEX[0]``, column ``FAN_APEX[1]``), an
  opening of ``2 * FAN_HALF_ANGLE_DEG`` = 76 degrees and a radius of ``FAN_RADIUS`` = 110 px, so its arc
  ends at the bottom row and its straight edges leave the frame at the sides, like EchoNet-Dynamic.
  Pixels outside the sector are exactly 0.
* The heart is described in "heart coordinates" ``(a, b)``: ``a`` is depth (down), ``b`` lateral (right),
  pixels of a size-1 heart. A patient's size, rotation and offset map them to the image;
  :meth:`PatientAnatomy.sample` pulls rotation and offset toward neutral until the end-diastolic LV lies
  inside the sector, as a sonographer would.

Anatomy and motion
------------------
Chambers are (possibly truncated) ellipses with a wall thickness; blood pools are dark, walls bright, a
pericardial rim brighter. The reference (end-diastolic) anatomy is drawn in reference coordinates and every
frame is that same anatomy seen through a deformation: for each chamber a radial, direction-preserving map
about an anchor point scales the cavity by ``s`` and moves the tissue outside it so that the wall area is
kept (``r0**2 - B**2 = r**2 - (s * B)**2`` along each ray, with ``B`` the cavity radius on that ray). That
thickens the walls in systole, keeps the LV apex almost still (the LV anchor sits near the apex), pulls the
AV plane toward the apex, and makes the tissue speckle move with the tissue. The LV short axis shortens by
``c`` and the long axis by ``LONG_AXIS_SHORTENING * c``, with ``c`` scaled by the contraction curve
``f(t)`` in [0, 1] (0 at end-diastole, 1 at end-systole).

Cardiac cycle
-------------
One beat lasts ``60 / heart_rate`` s; systole (ED -> ES) is a third of it. ED and ES each sit on a short
plateau (isovolumic contraction / relaxation) at least 1.1 frame intervals wide, so the frame nearest each
ED/ES instant shows exactly the ED/ES anatomy and ``lv_masks[ed_frames]`` / ``lv_masks[es_frames]`` are
exactly the masks EF is measured on (guaranteed while ``fps >= 0.11 * heart_rate``, i.e. 6.6 fps at
60 bpm; below that the plateaus are capped at a twelfth of the beat and the nearest frame is only close).
``lv_volumes`` of the other frames lie between ESV and EDV up to ~1 % of pixel-discretisation noise.

EF
--
A4C and PLAX: single-plane area-length volumes, ``V = 8 A^2 / (3 pi L)``, with ``A`` the mask area and ``L``
the mask's extent along its principal axis (:func:`lv_volume_area_length`). PSAX has no long axis in the
image; the LV is the same prolate ellipsoid, so ``V = 2/3 * A_sax * L`` (exact for an ellipsoid) with the
short-axis mask area ``A_sax`` and the model's long-axis length ``L`` at that phase, which shortens with
``c`` exactly as in the apical views (:func:`lv_volume_short_axis`). The ES contraction ``c`` is found by
bisection on the EF measured from the *rendered* ED and ES masks, so the reported EF is a measurement of
the masks and matches the requested EF to a fraction of a point.

Longer than 600 lines: it is one physical model (anatomy, cardiac motion, speckle and the scan-converted
rendering), whose parts share the same geometry; split by part, every file would import every other.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .conventions import IMAGE_SIZE, VIEWS  # noqa: F401  (VIEWS re-exported: phantom.VIEWS)

__all__ = [
    "FAN_APEX",
    "FAN_HALF_ANGLE_DEG",
    "FAN_RADIUS",
    "IMAGE_SIZE",
    "LONG_AXIS_SHORTENING",
    "PIXEL_SPACING_CM",
    "VIEWS",
    "PatientAnatomy",
    "PhantomVideo",
    "cardiac_cycle",
    "ejection_fraction",
    "fan_mask",
    "lv_volume_area_length",
    "lv_volume_short_axis",
    "render_frame",
    "render_video",
]

PIXEL_SPACING_CM = 0.15
FAN_APEX = (1.0, 55.5)  # (row, column) in pixels
FAN_HALF_ANGLE_DEG = 38.0
FAN_RADIUS = 110.0
LONG_AXIS_SHORTENING = 0.45  # long-axis fractional shortening per unit of short-axis shortening
EF_RANGE = (10.0, 85.0)
HEART_RATE_RANGE = (20.0, 240.0)  # bpm accepted by render_video

# Heart coordinates (a, b) map to the image as row = a + _HEART_ROW0, column = b + _HEART_COL0 for an
# un-rotated size-1 heart; size and rotation act about _PIVOT (heart coordinates).
_HEART_ROW0 = 14.0
_HEART_COL0 = 55.5
_PIVOT = (45.0, 0.0)
_TEX_N = 256  # speckle texture grid (pixels of a size-1 heart), centred on the pivot

# Reflectivities (linear power); the display maps amplitude through log compression.
_R_MYO = 0.02
_R_BG = 0.0008
_R_BLOOD = 0.00004
_R_PERI = 0.09
_R_VALVE = 0.1
_R_NEAR = 0.08
_DYNAMIC_RANGE_DB = 45.0


# --------------------------------------------------------------------------------------------------- #
# Measurements
# --------------------------------------------------------------------------------------------------- #
def _principal_length_px(mask: np.ndarray) -> float:
    """Extent of a 2-D mask along its first principal axis, in pixels (pixel centres + one pixel)."""
    rows, cols = np.nonzero(mask)
    pts = np.stack([rows, cols], axis=1).astype(np.float64)  # [N, 2]
    if len(pts) < 2:
        return float(len(pts))
    centred = pts - pts.mean(axis=0)
    cov = centred.T @ centred / len(pts)
    _, vecs = np.linalg.eigh(cov)
    proj = centred @ vecs[:, -1]
    return float(proj.max() - proj.min() + 1.0)


def lv_volume_area_length(mask: np.ndarray, pixel_spacing_cm: float = PIXEL_SPACING_CM) -> float:
    """Single-plane area-length LV volume in mL: ``8 A^2 / (3 pi L)``.

    ``mask``: bool [H, W] LV cavity. ``A`` is its area (cm^2) and ``L`` its extent along its principal
    axis (cm), i.e. apex to mitral plane for an apical or long-axis view. Returns 0 for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"lv_volume_area_length: mask must be 2-D [H, W], got shape {mask.shape}")
    count = int(mask.sum())
    if count == 0:
        return 0.0
    area = count * pixel_spacing_cm**2
    length = _principal_length_px(mask) * pixel_spacing_cm
    return float(8.0 * area**2 / (3.0 * math.pi * length))


def lv_volume_short_axis(
    mask: np.ndarray, long_axis_cm: float, pixel_spacing_cm: float = PIXEL_SPACING_CM
) -> float:
    """Prolate-ellipsoid LV volume in mL from a mid-ventricular short-axis mask: ``2/3 * A * L``.

    ``mask``: bool [H, W]; ``long_axis_cm``: the LV long-axis length at the same phase (not visible in a
    short-axis view; the phantom supplies it from its 3-D model). Equals ``8 A_la^2 / (3 pi L)`` of the
    apical view of the same ellipsoid.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"lv_volume_short_axis: mask must be 2-D [H, W], got shape {mask.shape}")
    area = float(mask.sum()) * pixel_spacing_cm**2
    return 2.0 / 3.0 * area * float(long_axis_cm)


def ejection_fraction(edv: float, esv: float) -> float:
    """EF in percent, ``100 * (EDV - ESV) / EDV``. Raises ``ValueError`` for EDV <= 0 or a negative ESV."""
    if not edv > 0:
        raise ValueError(f"ejection_fraction: EDV must be > 0 mL, got {edv}")
    if esv < 0:
        raise ValueError(f"ejection_fraction: ESV must be >= 0 mL, got {esv}")
    return 100.0 * (float(edv) - float(esv)) / float(edv)


# --------------------------------------------------------------------------------------------------- #
# Sector geometry
# --------------------------------------------------------------------------------------------------- #
@functools.lru_cache(maxsize=1)
def _fan_geometry() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mask bool [H, W], flat indices [N], range px [N], angle rad [N], edge weight [N]) of the sector."""
    rows, cols = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)
    dy = rows - FAN_APEX[0]
    dx = cols - FAN_APEX[1]
    rng = np.hypot(dx, dy)
    ang = np.arctan2(dx, dy)  # 0 straight down
    half = math.radians(FAN_HALF_ANGLE_DEG)
    mask = (dy > 0) & (np.abs(ang) <= half) & (rng <= FAN_RADIUS)
    idx = np.flatnonzero(mask)
    r = rng.ravel()[idx]
    th = ang.ravel()[idx]
    # Soft roll-off over the last ~1.5 px of the edges and the last 2 px of the arc (inside stays > 0).
    lateral_px = (half - np.abs(th)) * r
    edge = np.clip(0.35 + lateral_px / 2.0, 0.35, 1.0) * np.clip(0.35 + (FAN_RADIUS - r) / 3.0, 0.35, 1.0)
    for arr in (mask, idx, r, th, edge):
        arr.setflags(write=False)
    return mask, idx, r, th, edge


def fan_mask() -> np.ndarray:
    """bool [112, 112]: True inside the ultrasound sector."""
    return _fan_geometry()[0].copy()


# --------------------------------------------------------------------------------------------------- #
# Patient
# --------------------------------------------------------------------------------------------------- #
@dataclass(frozen=True)
class PatientAnatomy:
    """One synthetic patient seen in one view. ``sample`` draws it from a patient seed.

    Patient-level fields (size, walls, chamber proportions, texture, gain, heart rate) depend only on
    ``patient_seed``, so the same patient looks like the same heart in every view; the probe placement
    (``rotation_deg``, ``offset_x``, ``offset_y``) depends on the seed and the view.
    """

    patient_seed: int
    view: str = "A4C"
    size: float = 1.0  # heart scale (1.0 -> LV EDV about 100 mL in A4C)
    rotation_deg: float = 0.0  # heart rotation inside the sector; positive tilts the base to the right
    offset_x: float = 0.0  # px, right
    offset_y: float = 0.0  # px, down
    wall_thickness: float = 7.0  # LV wall at end-diastole, px of a size-1 heart
    lv_width: float = 1.0  # LV short-axis multiplier (sphericity)
    rv_size: float = 1.0
    atrial_size: float = 1.0
    rv_contraction: float = 0.3  # RV fractional shortening at ES
    atrial_expansion: float = 0.12  # atrial stretch at ES
    speckle_seed: int = 0
    speckle_size: float = 1.0  # speckle grain multiplier
    speckle_persistence: float = 0.85  # share of tissue speckle power that moves with the tissue
    tissue_brightness: float = 1.0  # myocardium reflectivity multiplier
    blood_level: float = 1.0  # blood-pool reflectivity multiplier
    background_level: float = 1.0  # extracardiac tissue reflectivity multiplier
    gain: float = 1.0  # overall amplitude gain
    attenuation_db_cm: float = 0.5  # residual depth attenuation after TGC, dB per cm
    heart_rate: float = 70.0  # bpm, used when render_video gets heart_rate=None

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"PatientAnatomy: view must be one of {VIEWS}, got {self.view!r}")

    @classmethod
    def sample(cls, patient_seed: int, view: str = "A4C") -> PatientAnatomy:
        """Draw patient ``patient_seed`` seen in ``view`` (deterministic)."""
        if view not in VIEWS:
            raise ValueError(f"PatientAnatomy.sample: view must be one of {VIEWS}, got {view!r}")
        seed = int(patient_seed)
        if seed < 0:
            raise ValueError(f"PatientAnatomy.sample: patient_seed must be >= 0, got {patient_seed}")
        p = np.random.default_rng([seed, 0xEC40])
        v = np.random.default_rng([seed, 0xEC41, VIEWS.index(view)])
        an = cls(
            patient_seed=seed,
            view=view,
            size=float(p.uniform(0.86, 1.10)),
            wall_thickness=float(p.uniform(5.5, 8.5)),
            lv_width=float(p.uniform(0.88, 1.12)),
            rv_size=float(p.uniform(0.85, 1.15)),
            atrial_size=float(p.uniform(0.88, 1.15)),
            rv_contraction=float(p.uniform(0.2, 0.35)),
            atrial_expansion=float(p.uniform(0.08, 0.16)),
            speckle_seed=int(p.integers(0, 2**31 - 1)),
            speckle_size=float(p.uniform(0.85, 1.25)),
            speckle_persistence=float(p.uniform(0.75, 0.9)),
            tissue_brightness=float(p.uniform(0.6, 1.4)),
            blood_level=float(p.uniform(0.4, 2.5)),
            background_level=float(p.uniform(0.8, 1.8)),
            gain=float(p.uniform(0.75, 1.25)),
            attenuation_db_cm=float(p.uniform(0.2, 1.0)),
            heart_rate=float(p.uniform(55.0, 95.0)),
            rotation_deg=float(v.uniform(-10.0, 10.0)),
            offset_x=float(v.uniform(-4.0, 4.0)),
            offset_y=float(v.uniform(-3.0, 4.0)),
        )
        # A sonographer keeps the whole LV in the sector: pull the probe placement toward neutral if not.
        for _ in range(8):
            if _lv_inside_sector(an):
                break
            an = replace(
                an, rotation_deg=0.6 * an.rotation_deg, offset_x=0.6 * an.offset_x, offset_y=0.6 * an.offset_y
            )
        return an

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-friendly)."""
        return asdict(self)


@dataclass
class PhantomVideo:
    """A rendered phantom video and its ground truth."""

    frames: np.ndarray  # uint8 [T, 112, 112]
    lv_masks: np.ndarray  # bool [T, 112, 112]
    ef: float  # percent, measured from the rendered ED and ES masks
    edv: float  # mL
    esv: float  # mL
    fps: float
    ed_frames: list[int]  # frame indices at end-diastole
    es_frames: list[int]  # frame indices at end-systole
    heart_rate: float  # bpm
    lv_volumes: np.ndarray = field(default_factory=lambda: np.zeros(0))  # float [T] mL, same method as EF
    view: str = "A4C"
    requested_ef: float = float("nan")
    contraction: float = 0.0  # solved LV short-axis shortening at ES (0..1)


# --------------------------------------------------------------------------------------------------- #
# Shapes
# --------------------------------------------------------------------------------------------------- #
@dataclass(frozen=True)
class _Ellipse:
    ca: float  # centre, heart coordinates
    cb: float
    phi: float  # radians: u axis direction is (cos phi, sin phi) in (a, b)
    A: float  # semi-axis along u
    B: float  # semi-axis along v
    u_max: float = math.inf  # truncation planes, local u (px)
    u_min: float = -math.inf

    def local(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.phi), math.sin(self.phi)
        da = a - self.ca
        db = b - self.cb
        return da * c + db * s, db * c - da * s

    def point(self, u, v):
        c, s = math.cos(self.phi), math.sin(self.phi)
        return self.ca + u * c - v * s, self.cb + u * s + v * c

    def sdf(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Approximate signed distance (px), exact on the axes and close near the boundary."""
        u, v = self.local(a, b)
        k0 = np.sqrt((u / self.A) ** 2 + (v / self.B) ** 2)
        k1 = np.sqrt((u / self.A**2) ** 2 + (v / self.B**2) ** 2)
        d = k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)
        d = np.where(k0 < 1e-6, -min(self.A, self.B), d)
        if math.isfinite(self.u_max):
            d = np.maximum(d, u - self.u_max)
        if math.isfinite(self.u_min):
            d = np.maximum(d, self.u_min - u)
        return d

    def half_width(self, u: float) -> float:
        return self.B * math.sqrt(max(0.0, 1.0 - (u / self.A) ** 2))

    def ray_length(self, u0: float, du: np.ndarray, dv: np.ndarray) -> np.ndarray:
        """Distance from the interior point (u0, 0) to the boundary along unit directions (du, dv)."""
        al = (du / self.A) ** 2 + (dv / self.B) ** 2
        be = u0 * du / self.A**2
        ga = (u0 / self.A) ** 2 - 1.0
        t = (-be + np.sqrt(np.maximum(be * be - al * ga, 0.0))) / al
        if math.isfinite(self.u_max):
            t = np.where(du > 1e-9, np.minimum(t, (self.u_max - u0) / np.maximum(du, 1e-9)), t)
        if math.isfinite(self.u_min):
            t = np.where(du < -1e-9, np.minimum(t, (self.u_min - u0) / np.minimum(du, -1e-9)), t)
        return t


def _box_sdf(a, b, ca, cb, phi, hu, hv):
    c, s = math.cos(phi), math.sin(phi)
    da = a - ca
    db = b - cb
    u = da * c + db * s
    v = db * c - da * s
    return np.maximum(np.abs(u) - hu, np.abs(v) - hv)


def _segment_dist(a, b, p0, p1):
    pa, pb = p0
    qa, qb = p1
    va, vb = qa - pa, qb - pb
    ll = va * va + vb * vb + 1e-12
    t = np.clip(((a - pa) * va + (b - pb) * vb) / ll, 0.0, 1.0)
    return np.hypot(a - (pa + t * va), b - (pb + t * vb))


@dataclass(frozen=True)
class _Chamber:
    name: str
    shape: _Ellipse
    wall: float
    wall_gain: float = 1.0
    cut: tuple[str, float] | None = None  # (chamber name, margin): subtract that chamber's tissue
    pericardium: bool = True


@dataclass(frozen=True)
class _Warp:
    shape: _Ellipse
    anchor_u: float
    kind: str  # "lv" | "rv" | "atrium" | "vessel"


@dataclass(frozen=True)
class _Valve:
    hinge0: tuple[float, float]
    hinge1: tuple[float, float]
    into: tuple[float, float]  # unit vector pointing to where the leaflets open to
    lengths: tuple[float, float]
    kind: str  # "av" (open in diastole) | "sl" (open in ejection)


@dataclass(frozen=True)
class _Geometry:
    view: str
    chambers: tuple[_Chamber, ...]
    warps: tuple[_Warp, ...]
    orifices: tuple[tuple[float, float, float, float, float], ...]  # boxes (ca, cb, phi, hu, hv), blood
    blobs: tuple[tuple[float, float, float], ...]  # papillary muscles (ca, cb, radius), tissue in blood
    valves: tuple[_Valve, ...]
    long_axis_ed_cm: float  # LV long axis at ED (3-D model), used for PSAX volumes


def _unit(a: float, b: float) -> tuple[float, float]:
    n = math.hypot(a, b)
    return a / n, b / n


def _valve_on_plane(
    shape: _Ellipse, u: float, v0: float, v1: float, into_sign: float, frac: float, kind: str
):
    """Valve whose hinges sit on the local line u=const between v0 and v1 of ``shape``."""
    h0 = shape.point(u, v0)
    h1 = shape.point(u, v1)
    ia, ib = _unit(*(np.subtract(shape.point(u + into_sign, 0.0), shape.point(u, 0.0))))
    span = abs(v1 - v0)
    return _Valve(h0, h1, (ia, ib), (frac * span, (1.0 - frac) * span + 0.6), kind)


def _orifice(shape: _Ellipse, u: float, v0: float, v1: float, depth_lo: float, depth_hi: float):
    """Blood box on local line u between v0 and v1, from u - depth_lo to u + depth_hi."""
    uc = u + 0.5 * (depth_hi - depth_lo)
    vc = 0.5 * (v0 + v1)
    ca, cb = shape.point(uc, vc)
    return (ca, cb, shape.phi, 0.5 * (depth_hi + depth_lo), 0.5 * abs(v1 - v0) - 1.2)


@functools.lru_cache(maxsize=32)
def _geometry(an: PatientAnatomy) -> _Geometry:
    w = an.wall_thickness
    rvs = an.rv_size
    ats = an.atrial_size
    lvw = an.lv_width
    lv_a = 31.0
    long_axis_ed_cm = 1.8 * lv_a * an.size * PIXEL_SPACING_CM
    deg = math.radians
    if an.view == "A4C":
        lv = _Ellipse(38.0, 11.5 + 2 * (lvw - 1), deg(18.0), lv_a, 15.0 * lvw, u_max=0.8 * lv_a)
        lv_left = lv.cb - math.hypot(lv.A * math.sin(lv.phi), lv.B * math.cos(lv.phi))
        # the septum is about one LV wall thick
        rv = _Ellipse(
            37.0, lv_left - (w + 1.0) - 9.5 * rvs, deg(-10.0), 26.0 * rvs, 9.5 * rvs, u_max=0.8 * 26 * rvs
        )
        mv_a, mv_b = lv.point(lv.u_max, 0.0)
        tv_a, tv_b = rv.point(rv.u_max, 0.0)
        la_A, la_B = 12.0 * ats, 15.0 * ats
        ra_A, ra_B = 11.0 * ats, 13.5 * ats
        # atria side by side under their valves, with a thin interatrial septum in between
        crux_b = 0.5 * (mv_b + tv_b)
        la = _Ellipse(mv_a + la_A + 3.0, crux_b + 2.5 + la_B, deg(4.0), la_A, la_B)
        ra = _Ellipse(tv_a + ra_A + 3.0, crux_b - 2.5 - ra_B, deg(-4.0), ra_A, ra_B)
        chambers = (
            _Chamber("lv", lv, w, 1.0),
            _Chamber("rv", rv, 0.5 * w, 0.9),
            _Chamber("la", la, 3.0, 0.8, pericardium=False),
            _Chamber("ra", ra, 2.8, 0.8, pericardium=False),
        )
        warps = (
            _Warp(la, 0.0, "atrium"),
            _Warp(ra, 0.0, "atrium"),
            _Warp(rv, -0.4 * rv.A, "rv"),
            _Warp(lv, -0.55 * lv.A, "lv"),
        )
        hv_lv = lv.half_width(lv.u_max)
        hv_rv = rv.half_width(rv.u_max)
        orifices = (
            _orifice(lv, lv.u_max, -hv_lv, hv_lv, 1.0, 6.0),
            _orifice(rv, rv.u_max, -hv_rv, hv_rv, 1.0, 6.0),
        )
        # Mitral: anterior leaflet (septal side, v<0) longer. Tricuspid: septal leaflet shorter.
        valves = (
            _valve_on_plane(lv, lv.u_max + 1.0, -hv_lv + 0.8, hv_lv - 0.8, -1.0, 0.6, "av"),
            _valve_on_plane(rv, rv.u_max + 1.0, hv_rv - 0.8, -hv_rv + 0.8, -1.0, 0.45, "av"),
        )
        blobs: tuple = ()
    elif an.view == "PSAX":
        r_lv = 16.5 * lvw
        lv = _Ellipse(46.0, 6.0, 0.0, r_lv, r_lv)
        rv = _Ellipse(34.0, -12.0, deg(-35.0), 25.0 * rvs, 19.0 * rvs)
        chambers = (
            _Chamber("lv", lv, w, 1.0),
            _Chamber("rv", rv, 0.5 * w, 0.9, cut=("lv", w + 0.5)),
        )
        # The RV moves about the middle of its crescent, not about the disk it is cut from.
        to_rv = _unit(rv.ca - lv.ca, rv.cb - lv.cb)
        mid = 0.5 * (r_lv + w + 45.0 * rvs - 2.0)
        crescent = _Ellipse(
            lv.ca + mid * to_rv[0], lv.cb + mid * to_rv[1], math.atan2(to_rv[0], -to_rv[1]), 18.0, 7.0
        )
        warps = (
            _Warp(crescent, 0.0, "rv"),
            _Warp(lv, 0.0, "lv"),
        )
        orifices = ()
        pr = 3.0 * lvw
        blobs = tuple(
            (46.0 + (r_lv - pr + 0.8) * math.cos(t), 6.0 + (r_lv - pr + 0.8) * math.sin(t), pr)
            for t in (deg(62.0), deg(-68.0))
        )
        valves = ()
    else:  # PLAX
        phi = deg(102.0)
        lv = _Ellipse(48.0, -6.0, phi, 29.0, 12.5 * lvw, u_max=0.62 * 29.0)
        hv = lv.half_width(lv.u_max)
        # v axis of this ellipse points up (toward the transducer): aorta anterior (+v), LA posterior (-v).
        rv_off = lv.B + w + 6.5 * rvs
        rvc = lv.point(4.0, rv_off)
        rv = _Ellipse(rvc[0], rvc[1], phi, 22.0, 6.5 * rvs)
        ao_A, ao_B = 15.0, 7.5 * (0.9 + 0.1 * an.size)
        aoc = lv.point(lv.u_max + ao_A + 1.0, hv - ao_B + 0.5)
        ao = _Ellipse(aoc[0], aoc[1], phi - deg(8.0), ao_A, ao_B, u_min=-0.8 * ao_A)
        la_r = 12.0 * ats
        lac = lv.point(lv.u_max + la_r + 4.0, -hv + 1.0 - 0.35 * la_r)
        la = _Ellipse(lac[0], lac[1], phi, la_r, la_r * 0.95)
        dac = lv.point(lv.u_max + 2.0, -hv - la_r - 8.0)
        dao = _Ellipse(dac[0], dac[1], 0.0, 4.5, 4.5)
        chambers = (
            _Chamber("lv", lv, w, 1.0),
            _Chamber("rv", rv, 0.5 * w, 0.9),
            _Chamber("ao", ao, 2.6, 1.1),
            _Chamber("la", la, 3.0, 0.8, pericardium=False),
            _Chamber("dao", dao, 2.2, 1.2, pericardium=False),
        )
        warps = (
            _Warp(la, 0.0, "atrium"),
            _Warp(ao, 0.0, "vessel"),
            _Warp(rv, 0.0, "rv"),
            _Warp(lv, -0.5 * lv.A, "lv"),
        )
        # LVOT to the aorta (upper half of the base) and mitral orifice (lower half).
        orifices = (
            _orifice(lv, lv.u_max, 0.0, hv, 1.0, 8.0),
            _orifice(lv, lv.u_max, -hv, 0.5, 1.0, 7.0),
        )
        ao_u = -0.8 * ao_A + 1.5
        ao_hv = ao.half_width(ao_u) - 0.6
        valves = (
            _valve_on_plane(lv, lv.u_max + 1.5, 0.5, -hv + 0.8, -1.0, 0.62, "av"),
            _valve_on_plane(ao, ao_u, -ao_hv, ao_hv, 1.0, 0.5, "sl"),
        )
        blobs = ()
    return _Geometry(an.view, chambers, warps, orifices, blobs, valves, long_axis_ed_cm)


# --------------------------------------------------------------------------------------------------- #
# Textures
# --------------------------------------------------------------------------------------------------- #
def _gauss_filter_fft(x: np.ndarray, sig_row: float, sig_col: float) -> np.ndarray:
    """Periodic Gaussian blur over the last two axes."""
    h, w = x.shape[-2:]
    fr = np.fft.fftfreq(h)[:, None]
    fc = np.fft.rfftfreq(w)[None, :]
    g = np.exp(-2.0 * math.pi**2 * ((sig_row * fr) ** 2 + (sig_col * fc) ** 2))
    return np.fft.irfft2(np.fft.rfft2(x) * g, s=(h, w))


@dataclass(frozen=True)
class _Textures:
    speckle_re: np.ndarray  # float [N, N] unit-power complex field (real part)
    speckle_im: np.ndarray
    myo_mod: np.ndarray  # float [N, N] smooth multiplicative modulation ~1
    bg_mod: np.ndarray


@functools.lru_cache(maxsize=32)
def _textures(speckle_seed: int, speckle_size: float) -> _Textures:
    rng = np.random.default_rng([speckle_seed, 0x5BEC])
    n = _TEX_N
    z = rng.standard_normal((2, n, n))
    z = _gauss_filter_fft(z, 0.7 * speckle_size, 1.2 * speckle_size)
    z /= np.sqrt(np.mean(z[0] ** 2 + z[1] ** 2))
    lf = _gauss_filter_fft(rng.standard_normal((2, n, n)), 6.0, 6.0)
    lf /= lf.std(axis=(1, 2), keepdims=True)
    myo = np.exp(0.35 * lf[0])
    bgf = _gauss_filter_fft(rng.standard_normal((n, n)), 3.0, 5.0)
    bgf /= bgf.std()
    bg = np.exp(0.45 * lf[1] + 0.35 * bgf)
    return _Textures(z[0], z[1], myo, bg)


def _bilinear(tex: tuple[np.ndarray, ...], r: np.ndarray, c: np.ndarray) -> list[np.ndarray]:
    n = tex[0].shape[0]
    r = np.clip(r, 0.0, n - 1.001)
    c = np.clip(c, 0.0, n - 1.001)
    r0 = r.astype(np.intp)
    c0 = c.astype(np.intp)
    fr = r - r0
    fc = c - c0
    w00 = (1 - fr) * (1 - fc)
    w01 = (1 - fr) * fc
    w10 = fr * (1 - fc)
    w11 = fr * fc
    i00 = r0 * n + c0
    out = []
    for t in tex:
        f = t.ravel()
        out.append(f[i00] * w00 + f[i00 + 1] * w01 + f[i00 + n] * w10 + f[i00 + n + 1] * w11)
    return out


# --------------------------------------------------------------------------------------------------- #
# Cardiac cycle
# --------------------------------------------------------------------------------------------------- #
def _ease(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(math.pi * x)


def _plateau_half_width(period: float, fps: float) -> float:
    return min(max(0.55 / fps, 0.025), period / 12.0)


def cardiac_cycle(
    times_s: np.ndarray, heart_rate: float, fps: float = 32.0, phase: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contraction curve and valve openings at ``times_s`` (seconds).

    ``phase`` is the cycle fraction at t=0 (0 = end-diastole). Returns float arrays like ``times_s``:
    ``f`` (0 at ED, 1 at ES; LV volume goes down as f goes up), ``av_open`` (mitral/tricuspid, open in
    diastole) and ``sl_open`` (aortic, open during ejection), all in [0, 1].
    """
    t = np.asarray(times_s, dtype=np.float64)
    period = 60.0 / float(heart_rate)
    h = _plateau_half_width(period, fps)
    t_es = period / 3.0
    tau = np.mod(t + phase * period, period)
    f = np.zeros_like(tau)
    ej = (tau >= h) & (tau < t_es - h)
    f = np.where(ej, _ease((tau - h) / (t_es - 2 * h)), f)
    f = np.where((tau >= t_es - h) & (tau <= t_es + h), 1.0, f)
    fill0, fill1 = t_es + h, period - h
    dur = fill1 - fill0
    x = (tau - fill0) / dur
    rapid, diast = 0.35, 0.75
    fill = np.where(
        x < rapid,
        1.0 - 0.72 * _ease(x / rapid),
        np.where(
            x < diast,
            0.28 - 0.10 * _ease((x - rapid) / (diast - rapid)),
            0.18 * (1.0 - _ease((x - diast) / (1 - diast))),
        ),
    )
    f = np.where((tau > t_es + h) & (tau < fill1), fill, f)
    ramp = min(0.04, 0.25 * dur)
    av = np.clip((tau - fill0) / ramp, 0, 1) * np.clip((fill1 - tau) / ramp, 0, 1)
    av = np.where((tau > fill0) & (tau < fill1), av, 0.0)
    av = av * (1.0 - 0.45 * np.exp(-(((x - 0.6) / 0.12) ** 2)))
    ej_dur = t_es - 2 * h
    ramp_s = min(0.03, 0.3 * ej_dur)
    sl = np.clip((tau - h) / ramp_s, 0, 1) * np.clip((t_es - h - tau) / ramp_s, 0, 1)
    sl = np.where(ej, sl, 0.0)
    return f, _ease(av), _ease(sl)


def _cycle_instants(num_frames: int, fps: float, period: float, phase: float, offset: float) -> list[int]:
    """Frame indices nearest the instants (k + offset - phase) * period inside the video."""
    out = []
    k = math.floor(phase - offset) - 1
    while True:
        t = (k + offset - phase) * period
        i = int(round(t * fps))
        if i >= num_frames:
            break
        if i >= 0 and (not out or out[-1] != i):
            out.append(i)
        k += 1
    return out


# --------------------------------------------------------------------------------------------------- #
# Rendering
# --------------------------------------------------------------------------------------------------- #
@dataclass(frozen=True)
class _State:
    c: float  # LV short-axis shortening at ES
    f: float  # contraction curve value
    av: float = 0.0
    sl: float = 0.0


def _pixel_heart_coords(an: PatientAnatomy, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Heart coordinates (a, b) of the in-sector pixels (or of flat pixel indices ``idx``), float [N] each."""
    if idx is None:
        idx = _fan_geometry()[1]
    rows = (idx // IMAGE_SIZE).astype(np.float64)
    cols = (idx % IMAGE_SIZE).astype(np.float64)
    pa, pb = _PIVOT
    y = rows - (pa + _HEART_ROW0) - an.offset_y
    x = cols - (pb + _HEART_COL0) - an.offset_x
    th = math.radians(an.rotation_deg)
    c, s = math.cos(th), math.sin(th)
    # The heart's a axis points along (row, col) = (cos, sin): invert that rotation on the offsets.
    a = (c * y + s * x) / an.size + pa
    b = (-s * y + c * x) / an.size + pb
    return a, b


@functools.lru_cache(maxsize=1)
def _sector_interior() -> np.ndarray:
    """Flat indices of pixels outside the sector eroded by one pixel."""
    fan = _fan_geometry()[0]
    inner = fan & np.roll(fan, 1, 0) & np.roll(fan, -1, 0) & np.roll(fan, 1, 1) & np.roll(fan, -1, 1)
    return np.flatnonzero(~inner)


def _lv_inside_sector(an: PatientAnatomy) -> bool:
    """True when the end-diastolic LV cavity lies at least one pixel inside the sector."""
    outside = _sector_interior()
    a, b = _pixel_heart_coords(an, outside)
    return not bool((_geometry(an).chambers[0].shape.sdf(a, b) < 0.5).any())


def _warp_scales(an: PatientAnatomy, kind: str, st: _State) -> tuple[float, float]:
    if kind == "lv":
        return 1.0 - LONG_AXIS_SHORTENING * st.c * st.f, 1.0 - st.c * st.f
    if kind == "rv":
        s = 1.0 - an.rv_contraction * st.f
        return 1.0 - 0.6 * an.rv_contraction * st.f, s
    if kind == "atrium":
        s = 1.0 + an.atrial_expansion * st.f
        return s, s
    if kind == "vessel":
        s = 1.0 + 0.05 * st.f * min(1.0, st.c * 3)
        return s, s
    raise ValueError(kind)


def _apply_warp(wp: _Warp, a: np.ndarray, b: np.ndarray, s_long: float, s_short: float):
    """Inverse map of one chamber's deformation: current (a, b) -> reference (a, b)."""
    if s_long == 1.0 and s_short == 1.0:
        return a, b
    u, v = wp.shape.local(a, b)
    qu = u - wp.anchor_u
    r = np.hypot(qu, v) + 1e-9
    du = qu / r
    dv = v / r
    s = s_long * du * du + s_short * dv * dv
    bl = wp.shape.ray_length(wp.anchor_u, du, dv)
    inside = r <= s * bl
    r0 = np.where(inside, r / s, np.sqrt(np.maximum(r * r + (1.0 - s * s) * bl * bl, 0.0)))
    # Let the far field fade out so the chest wall barely moves (monotone along each ray).
    far = np.clip((r - 1.8 * bl) / (1.6 * bl), 0.0, None)
    r0 = r + (r0 - r) * np.exp(-far * far)
    return wp.shape.point(wp.anchor_u + du * r0, dv * r0)


def _reference_coords(geom: _Geometry, an: PatientAnatomy, a: np.ndarray, b: np.ndarray, st: _State):
    for wp in geom.warps:
        sl, ss = _warp_scales(an, wp.kind, st)
        a, b = _apply_warp(wp, a, b, sl, ss)
    return a, b


def _lv_mask_flat(
    geom: _Geometry, an: PatientAnatomy, a: np.ndarray, b: np.ndarray, st: _State
) -> np.ndarray:
    ra, rb = _reference_coords(geom, an, a, b, st)
    return geom.chambers[0].shape.sdf(ra, rb) < 0.0


def _blur3(x: np.ndarray) -> np.ndarray:
    """[.., H, W] separable [1, 2, 1] / 4 blur (edges replicated)."""
    p = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    y = 0.25 * p[..., :-2, :] + 0.5 * p[..., 1:-1, :] + 0.25 * p[..., 2:, :]
    return 0.25 * y[..., :-2] + 0.5 * y[..., 1:-1] + 0.25 * y[..., 2:]


def _sig(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(x)


def _render_state(
    geom: _Geometry, an: PatientAnatomy, tex: _Textures, a: np.ndarray, b: np.ndarray, st: _State
):
    """Reflectivity, blood weight, tissue speckle (re, im) and the LV mask of the in-sector pixels."""
    ra, rb = _reference_coords(geom, an, a, b, st)
    dists = {}
    tissue = np.zeros_like(ra)
    blood = np.zeros_like(ra)
    outer = np.full_like(ra, np.inf)
    wall_gain = np.ones_like(ra)
    for ch in geom.chambers:
        d = ch.shape.sdf(ra, rb)
        dists[ch.name] = d
        if ch.cut is not None:
            name, margin = ch.cut
            d = np.maximum(d, margin - dists[name])
        t_w = _sig((ch.wall - d) / 0.6)
        b_w = _sig(-d / 0.6)
        wall_gain = np.where(t_w > tissue, ch.wall_gain, wall_gain)
        tissue = np.maximum(tissue, t_w)
        blood = np.maximum(blood, b_w)
        if ch.pericardium:
            outer = np.minimum(outer, d - ch.wall)
    for ca, cb, phi, hu, hv in geom.orifices:
        blood = np.maximum(blood, _sig(-_box_sdf(ra, rb, ca, cb, phi, hu, hv) / 0.6))
    for ca, cb, rad in geom.blobs:
        pap = _sig((rad - np.hypot(ra - ca, rb - cb)) / 0.7)
        blood = blood * (1.0 - pap)
    pc = _TEX_N / 2.0
    tr = (ra - _PIVOT[0]) * an.size + pc
    tc = (rb - _PIVOT[1]) * an.size + pc
    zr, zi, myo_mod, bg_mod = _bilinear((tex.speckle_re, tex.speckle_im, tex.myo_mod, tex.bg_mod), tr, tc)
    myo = _R_MYO * an.tissue_brightness * wall_gain * myo_mod
    refl = _R_BG * an.background_level * bg_mod * (1.0 - tissue) + myo * tissue
    peri = np.exp(-(((outer - 1.2) / 1.0) ** 2)) * (outer > -0.5)
    refl = np.maximum(refl, _R_PERI * an.tissue_brightness * peri * myo_mod)
    refl = refl * (1.0 - blood) + _R_BLOOD * an.blood_level * blood
    if geom.valves:
        leaf = np.zeros_like(ra)
        for vv in geom.valves:
            o = st.av if vv.kind == "av" else st.sl
            h0, h1 = np.array(vv.hinge0), np.array(vv.hinge1)
            into = np.array(vv.into)
            across = h1 - h0
            across = across / np.linalg.norm(across)
            for hinge, other_dir, length in ((h0, across, vv.lengths[0]), (h1, -across, vv.lengths[1])):
                closed = other_dir - 0.25 * into
                opened = into + 0.15 * other_dir
                dvec = (1 - o) * closed / np.linalg.norm(closed) + o * opened / np.linalg.norm(opened)
                dvec = dvec / np.linalg.norm(dvec)
                tip = hinge + length * dvec
                dd = _segment_dist(ra, rb, hinge, tip)
                leaf = np.maximum(leaf, _sig((0.9 - dd) / 0.45))
        refl = refl + (_R_VALVE * an.tissue_brightness - refl) * leaf
        blood = blood * (1.0 - leaf)
    mask = dists["lv"] < 0.0
    return refl, blood, zr, zi, mask


def _solve_contraction(geom: _Geometry, an: PatientAnatomy, a, b, ef_target: float):
    """Bisection on c so that the EF measured on the rendered masks hits ``ef_target``."""
    _, idx, _, _, _ = _fan_geometry()

    def volume(c: float, f: float) -> tuple[float, np.ndarray]:
        flat = _lv_mask_flat(geom, an, a, b, _State(c, f))
        m = np.zeros(IMAGE_SIZE * IMAGE_SIZE, dtype=bool)
        m[idx] = flat
        m = m.reshape(IMAGE_SIZE, IMAGE_SIZE)
        if geom.view == "PSAX":
            length = geom.long_axis_ed_cm * (1.0 - LONG_AXIS_SHORTENING * c * f)
            return lv_volume_short_axis(m, length), m
        return lv_volume_area_length(m), m

    edv, _ = volume(0.0, 0.0)
    if edv <= 0:
        raise RuntimeError("phantom: the LV is outside the sector for this anatomy")

    def ef_of(c: float) -> float:
        return ejection_fraction(edv, volume(c, 1.0)[0])

    lo, hi = -0.2, 0.95  # c < 0 only if the other chambers' motion alone already shrinks the LV
    ef_lo, ef_hi = 0.0, ef_of(hi)
    for _ in range(22):
        mid = 0.5 * (lo + hi)
        e = ef_of(mid)
        if e < ef_target:
            lo, ef_lo = mid, e
        else:
            hi, ef_hi = mid, e
        if hi - lo < 1e-5:
            break
    c = lo if abs(ef_lo - ef_target) <= abs(ef_hi - ef_target) else hi
    esv = volume(c, 1.0)[0]
    return c, edv, esv


def _volume_of_mask(geom: _Geometry, mask: np.ndarray, c: float, f: float) -> float:
    if geom.view == "PSAX":
        return lv_volume_short_axis(mask, geom.long_axis_ed_cm * (1.0 - LONG_AXIS_SHORTENING * c * f))
    return lv_volume_area_length(mask)


def render_video(
    anatomy: PatientAnatomy,
    ef: float,
    num_frames: int = 64,
    fps: float = 32.0,
    heart_rate: float | None = None,
    phase: float = 0.0,
    seed: int = 0,
) -> PhantomVideo:
    """Render ``num_frames`` frames of ``anatomy`` beating with ejection fraction ``ef`` (percent, 10..85).

    ``heart_rate`` in bpm (default: the patient's), ``phase`` the cycle fraction at frame 0 (0 = ED),
    ``seed`` the per-frame noise (the tissue speckle pattern belongs to the patient). Deterministic.
    """
    if not isinstance(anatomy, PatientAnatomy):
        raise TypeError(f"render_video: anatomy must be a PatientAnatomy, got {type(anatomy).__name__}")
    ef = float(ef)
    if not (EF_RANGE[0] <= ef <= EF_RANGE[1]):
        raise ValueError(f"render_video: ef must be in [{EF_RANGE[0]:g}, {EF_RANGE[1]:g}] percent, got {ef}")
    if int(num_frames) < 1:
        raise ValueError(f"render_video: num_frames must be >= 1, got {num_frames}")
    if not fps > 0:
        raise ValueError(f"render_video: fps must be > 0, got {fps}")
    hr = float(anatomy.heart_rate if heart_rate is None else heart_rate)
    lo, hi = HEART_RATE_RANGE
    if not (lo <= hr <= hi):
        raise ValueError(f"render_video: heart_rate must be in [{lo:g}, {hi:g}] bpm, got {hr}")
    num_frames = int(num_frames)
    fps = float(fps)

    geom = _geometry(anatomy)
    tex = _textures(anatomy.speckle_seed, round(anatomy.speckle_size, 6))
    _, idx, rng_px, theta, edge = _fan_geometry()
    a, b = _pixel_heart_coords(anatomy)
    c, edv, esv = _solve_contraction(geom, anatomy, a, b, ef)

    times = np.arange(num_frames) / fps
    f_t, av_t, sl_t = cardiac_cycle(times, hr, fps, phase)

    # Per-frame speckle and noise (complex, correlated like the tissue speckle).
    rng = np.random.default_rng([int(seed), anatomy.patient_seed, VIEWS.index(anatomy.view), 0xF7A3])
    noise = rng.standard_normal((num_frames, 2, IMAGE_SIZE, IMAGE_SIZE))
    noise = _gauss_filter_fft(noise, 0.7 * anatomy.speckle_size, 1.2 * anatomy.speckle_size)
    noise /= np.sqrt(np.mean(noise[:, 0] ** 2 + noise[:, 1] ** 2))
    noise = noise.reshape(num_frames, 2, -1)[:, :, idx]  # [T, 2, N]

    depth_cm = rng_px * PIXEL_SPACING_CM
    lateral = np.clip(1.0 - 0.5 * (np.abs(theta) / math.radians(FAN_HALF_ANGLE_DEG)) ** 4, 0.0, 1.0)
    # Intensity (power) gain: overall gain, residual depth attenuation, lateral beam fall-off, edge roll-off.
    pow_gain = (anatomy.gain**2) * 10.0 ** (-anatomy.attenuation_db_cm * depth_cm / 10.0) * lateral * edge
    near = _R_NEAR * (np.exp(-rng_px / 4.0) + 0.08 * np.exp(-rng_px / 15.0))  # chest-wall clutter
    persist = anatomy.speckle_persistence

    intensity = np.zeros((num_frames, IMAGE_SIZE * IMAGE_SIZE), dtype=np.float64)
    masks = np.zeros((num_frames, IMAGE_SIZE * IMAGE_SIZE), dtype=bool)
    cache: dict = {}
    for i in range(num_frames):
        st = _State(c, float(f_t[i]), float(av_t[i]), float(sl_t[i]))
        if st not in cache:
            cache = {st: _render_state(geom, anatomy, tex, a, b, st)}
        refl, blood, zr, zi, m = cache[st]
        alpha = (1.0 - persist) + persist * blood  # blood decorrelates every frame
        ka = np.sqrt(1.0 - alpha)
        kb = np.sqrt(alpha)
        re = ka * zr + kb * noise[i, 0]
        im = ka * zi + kb * noise[i, 1]
        intensity[i, idx] = (refl + near) * (re * re + im * im) * pow_gain
        masks[i, idx] = m
    intensity = intensity.reshape(num_frames, IMAGE_SIZE, IMAGE_SIZE)
    # A little blur, as the 112-px EchoNet frames are downsampled from the scanner's resolution.
    intensity = _blur3(intensity)
    db = 10.0 * np.log10(intensity + 1e-12)
    gray = np.clip((db + _DYNAMIC_RANGE_DB) * (255.0 / _DYNAMIC_RANGE_DB), 0.0, 255.0)
    gray *= _fan_geometry()[0]
    frames = np.rint(gray).astype(np.uint8)
    masks = masks.reshape(num_frames, IMAGE_SIZE, IMAGE_SIZE)

    period = 60.0 / hr
    ed_frames = _cycle_instants(num_frames, fps, period, phase, 0.0)
    es_frames = _cycle_instants(num_frames, fps, period, phase, 1.0 / 3.0)
    vols = np.array([_volume_of_mask(geom, masks[i], c, float(f_t[i])) for i in range(num_frames)])
    return PhantomVideo(
        frames=frames,
        lv_masks=masks,
        ef=ejection_fraction(edv, esv),
        edv=edv,
        esv=esv,
        fps=fps,
        ed_frames=ed_frames,
        es_frames=es_frames,
        heart_rate=hr,
        lv_volumes=vols,
        view=anatomy.view,
        requested_ef=ef,
        contraction=c,
    )


def render_frame(
    anatomy: PatientAnatomy, ef: float = 60.0, phase: float = 0.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One still frame at cycle fraction ``phase`` (0 = ED, 1/3 = ES): (uint8 [112, 112], bool [112, 112])."""
    video = render_video(anatomy, ef, num_frames=1, phase=phase, seed=seed)
    return video.frames[0], video.lv_masks[0]
