"""Video I/O: MP4 / AVI round trips, metadata, refusals."""

from __future__ import annotations

import os

import numpy as np
import pytest

from echoflow_models.video_io import (
    PARTIAL_MARKER,
    VideoIOError,
    is_partial_file,
    read_metadata,
    read_video,
    write_avi,
    write_mp4,
)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """uint8 [12, 112, 112]: smooth moving blobs plus mild noise (compresses like echo)."""
    rng = np.random.default_rng(0)
    r, c = np.mgrid[0:112, 0:112]
    frames = []
    for t in range(12):
        img = 120 + 80 * np.sin(r / 9.0 + t / 3.0) * np.cos(c / 13.0 - t / 5.0)
        img += rng.normal(0, 2, img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(frames)


def test_mp4_round_trip_with_metadata(tmp_path, clip):
    meta = {"ef": 55.5, "view": "A4C", "note": "a=b; #c"}
    out = write_mp4(tmp_path / "v.mp4", clip, 32.0, metadata=meta)
    assert out == tmp_path / "v.mp4" and out.stat().st_size > 0
    frames, fps = read_video(out)
    assert frames.dtype == np.uint8 and frames.shape == (12, 112, 112, 3)
    assert fps == pytest.approx(32.0)
    assert np.abs(frames[..., 0].astype(int) - clip).mean() < 3.0
    assert read_metadata(out) == meta
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temporary left behind


def test_mp4_rgb_and_odd_sizes(tmp_path):
    rgb = np.zeros((3, 11, 13, 3), np.uint8)
    rgb[..., 0] = 200
    frames, fps = read_video(write_mp4(tmp_path / "odd.mp4", rgb, 29.97))
    assert frames.shape == (3, 12, 14, 3)  # padded to even for yuv420p
    assert fps == pytest.approx(29.97, abs=0.01)
    assert abs(int(frames[0, 5, 5, 0]) - 200) < 8 and frames[0, 5, 5, 2] < 20
    assert read_metadata(tmp_path / "odd.mp4") is None


@pytest.mark.parametrize("codec, tol", [("mjpeg", 3.0), ("ffv1", 0.0)])
def test_avi_round_trip(tmp_path, clip, codec, tol):
    out = write_avi(tmp_path / "v.avi", clip, 50.0, codec=codec)
    frames, fps = read_video(out)
    assert frames.shape == (12, 112, 112, 3) and fps == pytest.approx(50.0)
    assert np.abs(frames[..., 0].astype(int) - clip).mean() <= tol
    gray, _ = read_video(out, gray=True)
    assert gray.shape == (12, 112, 112) and np.array_equal(gray, frames[..., 0])


def test_never_overwrites_unless_asked(tmp_path, clip):
    path = tmp_path / "v.avi"
    write_avi(path, clip, 32.0, codec="ffv1")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_avi(path, clip[:3], 32.0)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_mp4(path, clip[:3], 32.0)
    assert path.read_bytes() == before
    write_avi(path, clip[:3], 32.0, codec="ffv1", overwrite=True)
    assert read_video(path)[0].shape[0] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.avi"]


def test_refuses_bad_input(tmp_path, clip):
    with pytest.raises(ValueError, match="no frames"):
        write_mp4(tmp_path / "a.mp4", np.zeros((0, 8, 8), np.uint8), 30)
    with pytest.raises(TypeError, match="uint8"):
        write_mp4(tmp_path / "a.mp4", clip.astype(np.float32), 30)
    with pytest.raises(ValueError, match=r"\[T, H, W\]"):
        write_avi(tmp_path / "a.avi", clip[0], 30)
    with pytest.raises(ValueError, match=r"\[T, H, W\]"):
        write_avi(tmp_path / "a.avi", np.zeros((2, 8, 8, 4), np.uint8), 30)
    with pytest.raises(ValueError, match="fps"):
        write_avi(tmp_path / "a.avi", clip, 0)
    with pytest.raises(ValueError, match="codec"):
        write_avi(tmp_path / "a.avi", clip, 30, codec="h265")
    with pytest.raises(TypeError, match="JSON"):
        write_mp4(tmp_path / "a.mp4", clip, 30, metadata={"x": object()})
    with pytest.raises(TypeError, match="numpy"):
        write_mp4(tmp_path / "a.mp4", [[1]], 30)
    with pytest.raises(IsADirectoryError, match="directory"):
        write_mp4(tmp_path, clip, 30)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_unwritable_folder(tmp_path, clip):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="writable"):
            write_avi(ro / "a.avi", clip, 30)
    finally:
        ro.chmod(0o700)


def test_unwritable_parent_is_named(tmp_path, clip):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="cannot create the folder"):
        write_avi(blocker / "sub" / "a.avi", clip, 30)


def test_read_errors_and_partial_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="no video file"):
        read_video(tmp_path / "missing.avi")
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(VideoIOError, match="junk.avi"):
        read_video(junk)
    assert is_partial_file(tmp_path / f".x{PARTIAL_MARKER}12-ab.avi")
    assert not is_partial_file(tmp_path / "x.avi")
