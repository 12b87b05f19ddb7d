"""Video files through the ffmpeg binary bundled with ``imageio-ffmpeg``.

* :func:`write_mp4`: H.264 (libx264, yuv420p, ``-crf 18``, ``+faststart``) for viewing and sharing; an
  optional JSON ``metadata`` dict goes into the container's ``comment`` tag (:func:`read_metadata`).
* :func:`write_avi`: EchoNet-Dynamic style AVI, MJPEG at ``-q:v 2`` (the dataset's own codec) or lossless
  FFV1 (``codec="ffv1"``).
* :func:`read_video`: ``(frames uint8 [T, H, W, 3], fps)``.

Writes go to a hidden temporary file next to the target (name containing :data:`PARTIAL_MARKER`) that is
renamed into place only once ffmpeg has finished, so a crash never leaves a truncated video under the real
name. An existing file is never replaced unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = [
    "PARTIAL_MARKER",
    "VideoIOError",
    "is_partial_file",
    "read_metadata",
    "read_video",
    "write_avi",
    "write_mp4",
]

PARTIAL_MARKER = ".partial-"


class VideoIOError(RuntimeError):
    """A video could not be written or read (the message names the file and the fix)."""


def is_partial_file(path: str | os.PathLike) -> bool:
    """True for the hidden temporary files this module writes before renaming (safe to delete)."""
    name = Path(path).name
    return name.startswith(".") and PARTIAL_MARKER in name


def _ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise VideoIOError("video I/O needs the 'imageio-ffmpeg' package: pip install imageio-ffmpeg") from e
    return imageio_ffmpeg.get_ffmpeg_exe()


def _check_frames(frames, where: str) -> np.ndarray:
    """Validate uint8 [T, H, W] or [T, H, W, 3] frames; returns a C-contiguous array."""
    if not isinstance(frames, np.ndarray):
        if hasattr(frames, "detach") and hasattr(frames, "cpu"):  # a torch tensor
            frames = frames.detach().cpu().numpy()
        else:
            raise TypeError(f"{where}: frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise TypeError(
            f"{where}: frames must be uint8, got {frames.dtype}; convert with "
            "np.clip(x, 0, 255).astype(np.uint8) (or (x + 1) * 127.5 first for [-1, 1] model output)"
        )
    if frames.ndim == 4 and frames.shape[-1] == 1:
        frames = frames[..., 0]
    if not (frames.ndim == 3 or (frames.ndim == 4 and frames.shape[-1] == 3)):
        raise ValueError(
            f"{where}: frames must be [T, H, W] or [T, H, W, 3], got shape {tuple(frames.shape)}"
        )
    if frames.shape[0] == 0:
        raise ValueError(f"{where}: no frames to write (T = 0)")
    if frames.shape[1] < 2 or frames.shape[2] < 2:
        raise ValueError(
            f"{where}: frames must be at least 2x2 pixels, got {frames.shape[1]}x{frames.shape[2]}"
        )
    return np.ascontiguousarray(frames)


def _check_fps(fps, where: str) -> Fraction:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: fps must be a number, got {fps!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{where}: fps must be a positive finite number, got {fps!r}")
    return Fraction(value).limit_denominator(1001)


def make_folder(folder: Path, where: str) -> Path:
    """Create `folder` (and its parents), or a PermissionError saying which folder and what to do."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(
            f"{where}: cannot create the folder {folder} ({e.strerror or e}); choose a writable location"
        ) from e
    return folder


def _prepare_target(path, overwrite: bool, where: str) -> Path:
    path = Path(path).expanduser()
    if path.name in ("", ".", ".."):
        raise ValueError(f"{where}: {str(path)!r} is not a file name")
    if path.is_dir():
        raise IsADirectoryError(
            f"{where}: {path} is a directory; give a file name such as {path / 'video.mp4'}"
        )
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{where}: {path} already exists; pass overwrite=True to replace it or choose another name"
        )
    make_folder(path.parent, where)
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{where}: the folder {path.parent} is not writable; choose a writable location"
        )
    return path


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}{PARTIAL_MARKER}{os.getpid()}-{secrets.token_hex(3)}{path.suffix}")


def _encode(
    path,
    frames: np.ndarray,
    fps,
    *,
    codec: str,
    pix_fmt_out: str,
    fmt: str,
    extra: list[str],
    overwrite: bool,
    where: str,
    pad_even: bool,
) -> Path:
    frames = _check_frames(frames, where)
    rate = _check_fps(fps, where)
    target = _prepare_target(path, overwrite, where)
    if pad_even and (frames.shape[1] % 2 or frames.shape[2] % 2):
        pad = [(0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2)] + [(0, 0)] * (frames.ndim - 3)
        frames = np.ascontiguousarray(np.pad(frames, pad))
    _, h, w = frames.shape[:3]
    pix_fmt_in = "gray" if frames.ndim == 3 else "rgb24"
    if codec == "ffv1":
        pix_fmt_out = "gray" if frames.ndim == 3 else "bgr0"
    tmp = _temp_name(target)

    import imageio_ffmpeg

    try:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (w, h),
            pix_fmt_in=pix_fmt_in,
            pix_fmt_out=pix_fmt_out,
            fps=rate,
            quality=None,
            codec=codec,
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=extra + ["-f", fmt],
        )
        writer.send(None)
        for frame in frames:
            writer.send(frame)
        writer.close()
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise VideoIOError("ffmpeg produced no output")
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # fails if the target appeared meanwhile: never clobber
            except FileExistsError:
                raise FileExistsError(
                    f"{where}: {target} appeared while writing; pass overwrite=True or choose another name"
                ) from None
            except OSError:  # file system without hard links
                if target.exists():
                    raise FileExistsError(f"{where}: {target} already exists; pass overwrite=True") from None
                os.replace(tmp, target)
    except (FileExistsError, PermissionError):
        raise
    except Exception as e:
        if isinstance(e, VideoIOError):
            raise VideoIOError(f"{where}: writing {target} failed: {e}") from e
        raise VideoIOError(f"{where}: ffmpeg ({codec}) failed writing {target}: {e}") from e
    finally:
        if tmp.exists():
            try:
                tmp.unlink()
            except OSError:
                pass
    return target


def write_mp4(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    metadata: dict | None = None,
    *,
    crf: int = 18,
    overwrite: bool = False,
) -> Path:
    """Write uint8 ``frames`` [T, H, W] (gray) or [T, H, W, 3] (RGB) as H.264 MP4; returns the path.

    Odd heights/widths get one black row/column (yuv420p needs even sizes). ``metadata`` (a JSON-able dict)
    is stored as the ``comment`` tag. Refuses to replace an existing file unless ``overwrite=True``.
    """
    extra = ["-crf", str(int(crf)), "-preset", "medium", "-movflags", "+faststart"]
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise TypeError(f"write_mp4: metadata must be a dict or None, got {type(metadata).__name__}")
        try:
            text = json.dumps(metadata, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise TypeError(f"write_mp4: metadata must be JSON-serialisable ({e})") from e
        extra += ["-metadata", f"comment={text}"]
    return _encode(
        path,
        frames,
        fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        fmt="mp4",
        extra=extra,
        overwrite=overwrite,
        where="write_mp4",
        pad_even=True,
    )


def write_avi(
    path: str | os.PathLike, frames: np.ndarray, fps: float, *, codec: str = "mjpeg", overwrite: bool = False
) -> Path:
    """Write uint8 ``frames`` [T, H, W] or [T, H, W, 3] as an EchoNet-Dynamic style AVI; returns the path.

    ``codec="mjpeg"`` (as in EchoNet-Dynamic, ``-q:v 2``) or ``"ffv1"`` (lossless). Refuses to replace an
    existing file unless ``overwrite=True``.
    """
    if codec not in AVI_CODECS:
        raise ValueError(f"write_avi: codec must be 'mjpeg' or 'ffv1', got {codec!r}")
    pix_fmt, extra = AVI_CODECS[codec]
    return _encode(path, frames, fps, codec=codec, pix_fmt_out=pix_fmt, fmt="avi", extra=list(extra),
                   overwrite=overwrite, where="write_avi", pad_even=False)


# AVI codec -> (output pixel format, encoder options): MJPEG at EchoNet-Dynamic's quality, or lossless FFV1.
AVI_CODECS = {"mjpeg": ("yuvj444p", ("-q:v", "2")), "ffv1": ("gray", ("-level", "3"))}


def read_video(path: str | os.PathLike, *, gray: bool = False) -> tuple[np.ndarray, float]:
    """Read a video: ``(frames, fps)`` with frames uint8 [T, H, W, 3] ([T, H, W] with ``gray=True``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        hint = " (it is a directory)" if path.is_dir() else ""
        raise FileNotFoundError(f"read_video: no video file at {path}{hint}")
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        w, h = meta["size"]
        chunks = [np.frombuffer(buf, dtype=np.uint8) for buf in reader]
    except Exception as e:
        raise VideoIOError(f"read_video: ffmpeg could not decode {path}: {e}") from e
    if not chunks:
        raise VideoIOError(f"read_video: {path} has no video frames")
    frames = np.stack(chunks).reshape(len(chunks), h, w, 3)
    fps = float(meta.get("fps") or 0.0)
    if gray:
        frames = np.ascontiguousarray(frames[..., 0])
    return frames, fps


_META_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


def read_metadata(path: str | os.PathLike) -> dict | None:
    """The JSON dict :func:`write_mp4` stored in the ``comment`` tag, or None if there is none."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"read_metadata: no video file at {path}")
    cmd = [_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"]
    proc = subprocess.run(cmd, capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise VideoIOError(
            f"read_metadata: ffmpeg could not read {path}: {proc.stderr.decode(errors='replace')}"
        )
    text = proc.stdout.decode("utf-8", errors="replace")
    # ffmetadata escapes '=', ';', '#', '\' and newlines with a backslash.
    lines, cur = [], ""
    for line in text.split("\n"):
        cur += line
        if cur.endswith("\\") and not cur.endswith("\\\\"):
            cur = cur[:-1] + "\n"
            continue
        lines.append(cur)
        cur = ""
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip().lower() == "comment":
            raw = _META_UNESCAPE.sub(lambda m: m.group(1), value)
            try:
                data = json.loads(raw)
            except json.JSONDecodeError:
                return None
            return data if isinstance(data, dict) else None
    return None
