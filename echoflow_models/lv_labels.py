"""LV segmentation labels in the EchoNet-Dynamic layout, from per-frame LV masks.

A synthetic dataset that carries LV labels can train segmentation models, which no released synthetic echo
dataset offers. Two label files, both read back by `echoflow_models.train.data.MaskSource`:

* ``VolumeTracings.csv`` (EchoNet-Dynamic's own file): columns ``FileName,X1,Y1,X2,Y2,Frame``; for each traced
  frame (ES and ED of one beat) a first line along the long axis, then `CHORDS` chords perpendicular to it
  whose ends lie on the cavity border. X is the column and Y the row, in the video's pixels, pixel centres at
  whole numbers (as EchoNet-Dynamic's reader, a polygon over the rounded coordinates, takes them). The traced frames
  of a video are written smallest cavity first, because EchoNet-Dynamic's reader takes the last traced frame
  of a video as its large (end-diastolic) trace.
* ``Masks/<FileName>.npz``: ``masks`` bool ``[T, 112, 112]`` (every frame) and ``has_mask`` bool ``[T]``.

`write_lv_labels` writes both for one video: the npz atomically (a hidden temporary file, then a rename that
never replaces an existing file) and the tracing rows appended under an exclusive lock on the CSV, never
touching other rows. Calling it again for the same video and masks changes nothing, so a writer interrupted
between the two files completes them on the next call.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .conventions import IMAGE_SIZE
from .video_io import PARTIAL_MARKER, make_folder

TRACINGS_NAME = "VolumeTracings.csv"
TRACING_COLUMNS = ("FileName", "X1", "Y1", "X2", "Y2", "Frame")
MASKS_DIR = "Masks"  # the folder `train.data.MaskSource` reads
CHORDS = 20  # EchoNet-Dynamic's tracings: a long axis + 20 perpendicular chords per traced frame
_STEP_PX = 0.25  # sampling step along the axis and the chords (a quarter pixel: sub-pixel chord ends)


class LVLabelError(ValueError):
    """Masks or a dataset folder that cannot take LV labels; the message says which and what to do."""


@dataclass
class LVLabelFiles:
    """What `write_lv_labels` did for one video."""

    masks_path: Path
    tracings_path: Path
    traced_frames: list[int]  # in the order written: smallest cavity (ES) first
    wrote_masks: bool  # False: an identical mask file was already there
    wrote_tracings: bool  # False: the CSV already held this video's tracings


# ---------------------------------------------------------------------------------------- tracing geometry
def _as_bool_masks(masks, what: str = "masks") -> np.ndarray:
    m = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if m.ndim != 3:
        raise LVLabelError(f"{what} must be [T, H, W] (one LV mask per frame), got shape {m.shape}")
    return m.astype(bool)


def _inside(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Whether the points (row, col) fall in a mask pixel (nearest pixel; outside the image = False)."""
    r, c = np.rint(rows).astype(int), np.rint(cols).astype(int)
    ok = (r >= 0) & (r < mask.shape[0]) & (c >= 0) & (c < mask.shape[1])
    out = np.zeros(r.shape, dtype=bool)
    out[ok] = mask[r[ok], c[ok]]
    return out


def trace_mask(mask, chords: int = CHORDS) -> list[tuple[float, float, float, float]]:
    """One frame's LV mask (bool [H, W]) -> EchoNet tracing lines ``(x1, y1, x2, y2)``: the long axis, then
    `chords` chords perpendicular to it, evenly spaced from one end of the cavity to the other.

    The long axis is the cavity's principal axis through its centroid; each chord spans the cavity where it
    crosses the chord's line (its first and last inside point, sampled finely enough to reach the pixel edge). The first
    and last chords sit at the cavity's ends, so the polygon of the chord ends (what EchoNet's readers fill)
    covers the apex and the mitral plane. X1,Y1 of every chord are on one side of the axis, X2,Y2 on the other.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise LVLabelError(f"trace_mask: a mask must be [H, W], got shape {m.shape}")
    if chords < 2:
        raise LVLabelError(f"trace_mask: chords must be >= 2, got {chords}")
    rows, cols = np.nonzero(m)
    if len(rows) < 3:
        raise LVLabelError(f"trace_mask: the mask has {len(rows)} pixel(s); an LV tracing needs a cavity")
    pts = np.stack([rows, cols], axis=1).astype(np.float64)
    centre = pts.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov((pts - centre).T) if len(pts) > 1 else np.eye(2))
    long_axis, short_axis = vecs[:, -1], vecs[:, 0]
    if long_axis[0] < 0:  # the axis points down the image (apex at the top in EchoNet's A4C orientation)
        long_axis = -long_axis
    if short_axis[1] < 0:  # X1 is the chord end to the left of the axis
        short_axis = -short_axis
    reach = float(np.hypot(*m.shape))
    t = np.arange(-reach, reach + _STEP_PX, _STEP_PX)
    along_hits = t[_inside(m, centre[0] + t * long_axis[0], centre[1] + t * long_axis[1])]
    proj = (pts - centre) @ long_axis  # the cavity's extent along the axis, also where the axis misses it
    # sampled points reach the pixel edges (nearest-pixel lookup); pixel centres are half a pixel inside them
    lo = min(float(proj.min()) - 0.5, float(along_hits.min()) if len(along_hits) else np.inf)
    hi = max(float(proj.max()) + 0.5, float(along_hits.max()) if len(along_hits) else -np.inf)
    lines = [(centre[1] + lo * long_axis[1], centre[0] + lo * long_axis[0],
              centre[1] + hi * long_axis[1], centre[0] + hi * long_axis[0])]
    # the end chords run through the centres of the cavity's first and last pixels along the axis (at the
    # very edge a chord would catch no pixel), so the outline covers the apex and the mitral plane
    across = (pts - centre) @ short_axis
    for s in np.linspace(lo + 0.5, hi - 0.5, chords):
        base = centre + s * long_axis
        hits = t[_inside(m, base[0] + t * short_axis[0], base[1] + t * short_axis[1])]
        if len(hits):
            a, b = float(hits.min()), float(hits.max())
        else:  # the line misses the cavity (a bent or broken mask): the pixels of this slab, else a point
            slab = np.abs(proj - s) <= 0.5
            a, b = (float(across[slab].min()) - 0.5, float(across[slab].max()) + 0.5) if slab.any() else (0.0, 0.0)
        p1, p2 = base + a * short_axis, base + b * short_axis
        lines.append((p1[1], p1[0], p2[1], p2[0]))
    return [tuple(round(float(v), 4) for v in line) for line in lines]


def tracing_polygon(lines: list[tuple[float, float, float, float]]) -> list[tuple[float, float]]:
    """The cavity outline ``[(x, y), ...]`` of tracing lines (the chords' ends, one side then back), as
    EchoNet-Dynamic and `train.data` read it."""
    chords = lines[1:] if len(lines) > 2 else lines
    return [(x1, y1) for x1, y1, _, _ in chords] + [(x2, y2) for _, _, x2, y2 in reversed(chords)]


def traced_frames(volumes, ed_frames: list[int], es_frames: list[int]) -> tuple[int, int]:
    """(ED frame, ES frame) of one beat to trace, EchoNet-style: the first ES with an ED before it and that ED
    (else the first of each; without any, the largest and smallest volume)."""
    v = np.asarray(volumes, dtype=np.float64)
    for es in es_frames:
        before = [ed for ed in ed_frames if ed < es]
        if before:
            return int(before[-1]), int(es)
    if ed_frames and es_frames:
        return int(ed_frames[0]), int(es_frames[0])
    if not len(v):
        raise LVLabelError("traced_frames: an empty volume curve has no ED or ES frame")
    return int(np.argmax(v)), int(np.argmin(v))


def tracing_rows(file_name: str, masks, frames: list[int], chords: int = CHORDS) -> list[list[str]]:
    """VolumeTracings.csv rows for the given frames of one video, smallest cavity first (see the module doc)."""
    m = _as_bool_masks(masks)
    for f in frames:
        if not 0 <= int(f) < len(m):
            raise LVLabelError(f"traced frame {f} is outside the video's {len(m)} frames")
    ordered = sorted(dict.fromkeys(int(f) for f in frames), key=lambda f: (int(m[f].sum()), f))
    rows = []
    for f in ordered:
        if m[f].sum() < 3:
            raise LVLabelError(f"{file_name}: frame {f} has no LV cavity in its mask; it cannot be traced")
        for x1, y1, x2, y2 in trace_mask(m[f], chords):
            # EchoNet-Dynamic's VolumeTracings.csv names the video file (FileList.csv names it without .avi)
            rows.append([f"{file_name}.avi", f"{x1:g}", f"{y1:g}", f"{x2:g}", f"{y2:g}", str(f)])
    return rows


# ------------------------------------------------------------------------------------------------ writing
def _check_file_name(file_name: str) -> str:
    name = str(file_name)
    if not name or name != Path(name).name or name.startswith(".") or any(c in name for c in ",\n\r\"/\\"):
        raise LVLabelError(f"file name {file_name!r}: use the FileList's FileName (no folder, comma or quote)")
    return name


def _npz_bytes(masks: np.ndarray, has_mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, masks=masks, has_mask=has_mask)
    return buf.getvalue()


def _same_masks(path: Path, masks: np.ndarray, has_mask: np.ndarray) -> bool:
    try:
        with np.load(path) as data:
            return (np.array_equal(data["masks"].astype(bool), masks)
                    and np.array_equal(data["has_mask"].astype(bool), has_mask))
    except (OSError, KeyError, ValueError):
        return False


def _write_masks(target: Path, masks: np.ndarray, has_mask: np.ndarray) -> bool:
    """Write the npz through a hidden temporary file and a rename that never replaces a file (a hard link,
    or os.replace after a last check where links are unsupported). False when an identical one exists."""
    if target.exists():
        if _same_masks(target, masks, has_mask):
            return False
        raise LVLabelError(f"{target} already exists with other masks; it is left alone (remove it yourself "
                           "if it is stale, or write this video under another name)")
    make_folder(target.parent, "write_lv_labels")
    tmp = target.with_name(f".{target.stem}{PARTIAL_MARKER}{os.getpid()}-{secrets.token_hex(3)}.npz")
    try:
        with open(tmp, "wb") as fh:
            fh.write(_npz_bytes(masks, has_mask))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, target)
        except FileExistsError:
            if _same_masks(target, masks, has_mask):
                return False
            raise LVLabelError(f"{target} appeared with other masks while writing; it is left alone") from None
        except OSError:  # a file system without hard links
            if target.exists():
                raise LVLabelError(f"{target} appeared while writing; it is left alone") from None
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return True


def _lock(fh) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory lock
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # waits: appends from other processes are short
    except OSError:  # a file system without advisory locks (ENOLCK): one writer per file is then the caller's rule
        return


def _check_header(path: Path, header: tuple[str, ...]) -> None:
    if header != TRACING_COLUMNS:
        raise LVLabelError(f"{path}: its header is {','.join(header)}, not EchoNet-Dynamic's "
                           f"{','.join(TRACING_COLUMNS)}; it is left alone (use another dataset folder)")


def check_tracings_file(root: str | os.PathLike) -> None:
    """Read-only preflight: an existing ``VolumeTracings.csv`` in `root` must have EchoNet-Dynamic's header
    (so labels can be appended to it); a missing one is fine (it will be created)."""
    path = Path(root).expanduser() / TRACINGS_NAME
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8-sig") as fh:
        first = next(csv.reader(fh), None)
    if first is not None:
        _check_header(path, tuple(c.strip() for c in first))


def _append_tracings(path: Path, file_name: str, rows: list[list[str]]) -> bool:
    """Append one video's `rows` (see `_append_videos`); False when the CSV has tracings of it already."""
    return bool(_append_videos(path, {file_name: rows}))


def _append_videos(path: Path, rows_by_name: dict[str, list[list[str]]]) -> list[str]:
    """Append the rows of every video in `rows_by_name` that the CSV has no tracings of yet, under an exclusive
    lock, creating the CSV with its header if missing; returns the videos added. Other rows are never
    rewritten, and an existing CSV whose header is not EchoNet's is refused."""
    with open(path, "a+", newline="", encoding="utf-8") as fh:
        _lock(fh)
        fh.seek(0)
        text = fh.read().removeprefix("\ufeff")
        existing = list(csv.reader(io.StringIO(text)))
        if existing:
            _check_header(path, tuple(c.strip() for c in existing[0]))
        have = {r[0].strip().removesuffix(".avi") for r in existing[1:] if r}
        new = [name for name in rows_by_name if name not in have]
        if not new:
            return []
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if not existing:
            writer.writerow(TRACING_COLUMNS)
        for name in new:
            writer.writerows(rows_by_name[name])
        prefix = "\n" if text and not text.endswith(("\n", "\r")) else ""  # a last line without its newline
        fh.write(prefix + out.getvalue())
        fh.flush()
        os.fsync(fh.fileno())
    return new


def write_lv_labels(root: str | os.PathLike, file_name: str, masks, ed_frame: int, es_frame: int,
                    has_mask=None, chords: int = CHORDS, tracings_file: str | os.PathLike | None = None
                    ) -> LVLabelFiles:
    """Write one video's LV labels into an EchoNet-layout folder: ``Masks/<file_name>.npz`` and its ED/ES
    tracings appended to ``VolumeTracings.csv`` (created with its header if missing).

    `masks` bool ``[T, 112, 112]`` (one per frame; a torch tensor or numpy array); `has_mask` bool ``[T]``
    marks frames whose mask is a label (default: all). Everything is checked before any file is touched.
    Idempotent: an identical npz or existing tracings of `file_name` are kept as they are. The tracings are
    appended first and the npz published last, so an existing npz means the video's labels are complete.
    `tracings_file`: append there instead (a rank's own file, folded in later by `fold_tracings`)."""
    name = _check_file_name(file_name)
    m = _as_bool_masks(masks)
    if m.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise LVLabelError(f"masks are {m.shape[1]}x{m.shape[2]}; EchoNet-layout labels are {IMAGE_SIZE}x"
                           f"{IMAGE_SIZE} like its videos: resize the frames to {IMAGE_SIZE}x{IMAGE_SIZE} first")
    has = np.ones(len(m), dtype=bool) if has_mask is None else _as_flags(has_mask, len(m))
    rows = tracing_rows(name, m, [int(ed_frame), int(es_frame)], chords)  # checks the frames' cavities
    root = Path(root).expanduser()
    if not root.is_dir():
        raise LVLabelError(f"dataset folder {root} does not exist; write the video's FileList row first")
    target = root / MASKS_DIR / f"{name}.npz"
    if target.exists() and not _same_masks(target, m, has):
        raise LVLabelError(f"{target} already exists with other masks; it is left alone (remove it yourself "
                           "if it is stale, or write this video under another name)")
    tracings = Path(tracings_file) if tracings_file is not None else root / TRACINGS_NAME
    wrote_tracings = _append_tracings(tracings, name, rows)
    wrote_masks = _write_masks(target, m, has)
    order = list(dict.fromkeys(int(r[5]) for r in rows))
    return LVLabelFiles(target, tracings, order, wrote_masks, wrote_tracings)


def _as_flags(has_mask, frames: int) -> np.ndarray:
    h = has_mask.detach().cpu().numpy() if isinstance(has_mask, torch.Tensor) else np.asarray(has_mask)
    if h.shape != (frames,):
        raise LVLabelError(f"has_mask must be [T] = [{frames}], got shape {h.shape}")
    return h.astype(bool)


def fold_tracings(root: str | os.PathLike, sources: list[Path], names: set[str]) -> int:
    """Append to ``VolumeTracings.csv`` the rows of `sources` (ranks' own tracing files) for the videos in
    `names` that it has no rows for yet, in one locked append; returns how many videos were added. Rows
    already there, of any video, are never rewritten."""
    root = Path(root)
    pending: dict[str, list[list[str]]] = {}
    for src in sources:
        with open(src, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                continue
            _check_header(src, tuple(c.strip() for c in header))
            for row in reader:
                name = row[0].strip().removesuffix(".avi") if row else ""
                if len(row) == len(TRACING_COLUMNS) and name in names:
                    pending.setdefault(name, []).append(row)
    return len(_append_videos(root / TRACINGS_NAME, dict(sorted(pending.items()))))
