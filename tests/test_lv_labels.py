"""LV labels in the EchoNet-Dynamic layout: tracings that the project's reader turns back into the masks,
the per-frame mask file, and a writer that never rewrites what is already in the dataset folder."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from echoflow_models.echonet import EchoNetRecord
from echoflow_models.lv_ef import measure_ef
from echoflow_models.lv_labels import (
    CHORDS,
    TRACING_COLUMNS,
    LVLabelError,
    trace_mask,
    traced_frames,
    tracing_polygon,
    tracing_rows,
    write_lv_labels,
)
from echoflow_models.phantom import PatientAnatomy, render_video
from echoflow_models.train.data import MaskSource, _rasterize, _tracing_polygons


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _record(name: str, frames: int) -> EchoNetRecord:
    return EchoNetRecord(name, 50.0, float("nan"), float("nan"), 112, 112, 32.0, frames, "TRAIN")


@pytest.fixture(scope="module")
def video():
    return render_video(PatientAnatomy.sample(5, "A4C"), 60.0, num_frames=40)


@pytest.mark.parametrize("view", ["A4C", "PLAX", "PSAX"])
@pytest.mark.parametrize("ef", [20.0, 80.0])
def test_tracings_rasterize_back_to_the_phantom_masks(view, ef):
    phantom = render_video(PatientAnatomy.sample(3, view), ef, num_frames=24)
    for frame in range(0, 24, 4):
        mask = phantom.lv_masks[frame]
        lines = trace_mask(mask)
        assert len(lines) == 1 + CHORDS
        # the chord ends lie on the cavity border: inside the mask's bounding box, give or take a pixel
        rows, cols = np.nonzero(mask)
        ends = np.array([(x, y) for x1, y1, x2, y2 in lines[1:] for x, y in ((x1, y1), (x2, y2))])
        assert ends[:, 0].min() >= cols.min() - 1 and ends[:, 0].max() <= cols.max() + 1
        assert ends[:, 1].min() >= rows.min() - 1 and ends[:, 1].max() <= rows.max() + 1
        assert _dice(_rasterize(tracing_polygon(lines)), mask) >= 0.9, (view, ef, frame)


def test_written_labels_are_read_back_by_mask_source(video, tmp_path):
    ed, es = traced_frames(measure_ef(video.lv_masks).volumes, video.ed_frames, video.es_frames)
    assert ed in video.ed_frames and es in video.es_frames and ed < es
    files = write_lv_labels(tmp_path, "synth_00001", video.lv_masks, ed, es)
    assert files.wrote_masks and files.wrote_tracings
    assert files.traced_frames == [es, ed]  # smallest cavity first: EchoNet reads the last as the ED trace
    with np.load(tmp_path / "Masks" / "synth_00001.npz") as data:
        assert data["masks"].dtype == bool and data["masks"].shape == (40, 112, 112)
        assert np.array_equal(data["masks"], video.lv_masks) and data["has_mask"].all()
    with open(tmp_path / "VolumeTracings.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == TRACING_COLUMNS and len(rows) == 1 + 2 * (1 + CHORDS)
    assert [int(r[5]) for r in rows[1:]] == [es] * (1 + CHORDS) + [ed] * (1 + CHORDS)
    polys = _tracing_polygons(tmp_path)["synth_00001"]
    for frame in (ed, es):
        assert _dice(_rasterize(polys[frame]), video.lv_masks[frame]) >= 0.9
    # npz first: MaskSource takes every frame's mask from it
    masks, has = MaskSource(tmp_path).masks(_record("synth_00001", 40), 40)
    assert has.all() and np.array_equal(masks.numpy(), video.lv_masks)
    # tracings alone (a dataset that ships only VolumeTracings.csv): the two traced frames
    (tmp_path / "Masks" / "synth_00001.npz").unlink()
    masks, has = MaskSource(tmp_path).masks(_record("synth_00001", 40), 40)
    assert has.nonzero().flatten().tolist() == sorted([ed, es])
    assert _dice(masks[ed].numpy(), video.lv_masks[ed]) >= 0.9


def test_appending_keeps_other_rows_and_is_idempotent(video, tmp_path):
    tracings = tmp_path / "VolumeTracings.csv"
    original = "FileName,X1,Y1,X2,Y2,Frame\nreal_0001.avi,1,2,3,4,7"  # a user's row, no final newline
    tracings.write_text(original)
    first = write_lv_labels(tmp_path, "synth_00001", video.lv_masks, video.ed_frames[0], video.es_frames[0])
    text = tracings.read_text()
    assert text.startswith(original + "\n") and first.wrote_tracings
    assert text.count("\nsynth_00001.avi,") == 2 * (1 + CHORDS)
    npz = (tmp_path / "Masks" / "synth_00001.npz").read_bytes()
    again = write_lv_labels(tmp_path, "synth_00001", video.lv_masks, video.ed_frames[0], video.es_frames[0])
    assert not again.wrote_masks and not again.wrote_tracings
    assert tracings.read_text() == text and (tmp_path / "Masks" / "synth_00001.npz").read_bytes() == npz
    second = write_lv_labels(tmp_path, "synth_00002", video.lv_masks[:20], 0, 10, has_mask=np.arange(20) < 12)
    assert second.wrote_tracings and tracings.read_text().startswith(text)
    with np.load(second.masks_path) as data:
        assert data["has_mask"].sum() == 12
    assert not list((tmp_path / "Masks").glob(".*"))  # no temporary file left behind


def test_existing_labels_are_never_replaced(video, tmp_path):
    write_lv_labels(tmp_path, "synth_00001", video.lv_masks, video.ed_frames[0], video.es_frames[0])
    npz = (tmp_path / "Masks" / "synth_00001.npz").read_bytes()
    other = video.lv_masks.copy()
    other[3] = False
    with pytest.raises(LVLabelError, match="already exists with other masks; it is left alone"):
        write_lv_labels(tmp_path, "synth_00001", other, video.ed_frames[0], video.es_frames[0])
    assert (tmp_path / "Masks" / "synth_00001.npz").read_bytes() == npz
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "VolumeTracings.csv").write_text("Name,A,B\nx,1,2\n")
    with pytest.raises(LVLabelError, match="not EchoNet-Dynamic's FileName,X1,Y1,X2,Y2,Frame"):
        write_lv_labels(foreign, "synth_00001", video.lv_masks, video.ed_frames[0], video.es_frames[0])
    assert (foreign / "VolumeTracings.csv").read_text() == "Name,A,B\nx,1,2\n"


def test_bad_labels_are_refused_before_any_file_is_written(video, tmp_path):
    masks = video.lv_masks
    cases = [
        (dict(masks=masks[:, :64, :64]), "resize the frames to 112x112"),
        (dict(masks=masks[0]), r"\[T, H, W\]"),
        (dict(ed_frame=40), "frame 40 is outside the video's 40 frames"),
        (dict(file_name="../x"), "no folder"),
        (dict(file_name="a,b"), "no folder, comma"),
        (dict(masks=np.zeros_like(masks)), "has no LV cavity"),
        (dict(has_mask=np.ones(3, bool)), r"has_mask must be \[T\] = \[40\]"),
    ]
    for change, message in cases:
        args = dict(root=tmp_path, file_name="synth_00001", masks=masks, ed_frame=0, es_frame=10)
        args.update(change)
        with pytest.raises(LVLabelError, match=message):
            write_lv_labels(**args)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(LVLabelError, match="does not exist"):
        write_lv_labels(tmp_path / "missing", "synth_00001", masks, 0, 10)


def test_traced_frames_pick_one_beat():
    volumes = np.array([5, 9, 7, 3, 6, 10, 4], float)
    assert traced_frames(volumes, [1, 5], [3, 6]) == (1, 3)
    assert traced_frames(volumes, [5], [3]) == (5, 3)  # no ED before the ES: the first of each
    assert traced_frames(volumes, [], []) == (5, 3)  # no beat found: the largest and smallest volume
    rows = tracing_rows("v", np.ones((2, 112, 112), bool), [1, 1])
    assert len(rows) == 1 + CHORDS  # a frame named twice is traced once


def test_labels_are_written_where_file_locks_are_unsupported(video, tmp_path, monkeypatch):
    """Some network file systems refuse advisory locks (ENOLCK): the labels are still written, whole."""
    import errno
    import fcntl

    def no_locks(*_args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    files = write_lv_labels(tmp_path, "synth_00001", video.lv_masks, video.ed_frames[0], video.es_frames[0])
    assert files.wrote_masks and files.wrote_tracings
    assert (tmp_path / "VolumeTracings.csv").read_text().count("\nsynth_00001.avi,") == 2 * (1 + CHORDS)
